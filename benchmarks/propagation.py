"""Item 8 of `make bench`: how soon a promotion or a rollback at a source is served by the
marketplace's @production, with `dagster dev` (webserver and daemon) and the webhook receiver
running as `make dev` runs them; and what the default full poll costs the registries.

`python -m benchmarks.propagation --changes 4` runs it alone and prints its results.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import secrets
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from benchmarks.environment import Bench, write_config
from harness.local_dagster import DagsterDev, WebhookReceiver
from harness.local_servers import free_port
from harness.seeding import seed_production
from marketplace.config import MarketplaceConfig, load_config
from marketplace.polling import poll_workspaces
from marketplace.provenance import TAG_SOURCE_VERSION
from marketplace.registries import MarketplaceRegistry
from marketplace.source_webhooks import inspect_webhook
from marketplace_dagster.sensors import TICK_BUDGET_SECONDS

ALIAS, STAGE = "alias_webhooks", "stage_polling"
TARGET_P95_SECONDS = {ALIAS: 15, STAGE: 45}
WORKSPACE = {ALIAS: "by_alias", STAGE: "by_stage"}
MODEL = {ALIAS: "aliased_model", STAGE: "staged_model"}
KINDS = ("promotion", "rollback")
SOURCE_ALIAS = "champion"
SECRET_ENV = "MARKETPLACE_BENCH_WEBHOOK_SECRET"
# How often the marketplace's @production is read while a change propagates.
LOOK_EVERY_SECONDS = 0.25
# Dagster's daemon evaluates sensors in a loop of this period.
DAEMON_LOOP_SECONDS = 5
SERVED_WITHIN_SECONDS = 240
FIRST_SYNC_WITHIN_SECONDS = 600
LOAD_WORKSPACES = 65


def bench_propagation(bench: Bench, changes: int, folder: Path, *, rng_seed: int = 0) -> dict:
    """`changes` (2 or more) per mode, alternating a promotion of a new version and a rollback to
    the one before: by alias with the receiver (webhooks), then by stage (polling, no webhook)."""
    # One source registry for both workspaces, as teams share one: the webhook also reports the
    # stage workspace's changes, but only as polls of the alias workspace.
    began = time.monotonic()
    source, market = bench.server("prop_src"), bench.server("prop_market")
    bench.start_all([source, market])
    listen = f"127.0.0.1:{free_port()}"
    stopped = {"default_status": "stopped"}
    # The sensor running at its default poll interval; everything else that could start a run,
    # stopped.
    config_path = write_config(
        folder / "propagation.yaml",
        folder / "prop_storage",
        market,
        [
            {
                "name": WORKSPACE[ALIAS],
                "tracking_uri": source.uri,
                "production": {"alias": SOURCE_ALIAS},
                "include": [MODEL[ALIAS]],
                "webhook": {"secret_env": SECRET_ENV},
            },
            {
                "name": WORKSPACE[STAGE],
                "tracking_uri": source.uri,
                "production": {"stage": "Production"},
                "include": [MODEL[STAGE]],
            },
        ],
        sensor={"default_status": "running"},
        webhooks={"listen": listen},
        schedule=stopped,
        freshness=stopped,
        checks=stopped,
        housekeeping=stopped,
        automation=stopped,
    )
    config = load_config(config_path)
    home = folder / "prop_home"
    with contextlib.ExitStack() as running:
        dev = DagsterDev(
            config_path, home, cwd=folder
        )  # writes home/dagster.yaml before the receiver reads it
        running.callback(dev.stop)
        receiver = WebhookReceiver(
            config_path,
            home,
            f"http://{listen}",
            env={SECRET_ENV: secrets.token_hex(16)},
            cwd=folder,
        )
        running.callback(receiver.stop)
        # Seeded while dagster dev loads: a full poll after it finds version 1 of each.
        seed_production(source.uri, list(MODEL.values()))
        MlflowClient(source.uri).set_registered_model_alias(MODEL[ALIAS], SOURCE_ALIAS, "1")
        receiver.wait_until_up()
        dev.wait_until_loaded()
        _wait_registered(config, config.workspaces[0])
        watch = _Watch(config, dev, receiver)
        for mode in (ALIAS, STAGE):
            watch.until_served(mode, "1", began, FIRST_SYNC_WITHIN_SECONDS)
        print(
            "  servers, dagster dev, the receiver and the first sync: "
            f"{time.monotonic() - began:.0f} s",
            file=sys.__stdout__,
            flush=True,
        )
        rng = random.Random(rng_seed)
        result = {"poll_interval_seconds": config.sensor.minimum_interval_seconds}
        for mode in (ALIAS, STAGE):
            # What starts a sync: the daemon's next loop for a webhook event, the next full poll
            # otherwise.
            period = (
                DAEMON_LOOP_SECONDS if mode == ALIAS else config.sensor.minimum_interval_seconds
            )
            result[mode] = _measure(mode, MlflowClient(source.uri), watch, changes, rng, period)
            print(
                f"  {mode}: "
                + "; ".join(
                    f"{kind}s p50 {result[mode][kind]['p50_seconds']} s, "
                    f"p95 {result[mode][kind]['p95_seconds']} s"
                    for kind in KINDS
                ),
                file=sys.__stdout__,
                flush=True,
            )
        result.update(poll_load(config, LOAD_WORKSPACES))
    bench.stop_all()
    return result


def _measure(
    mode: str, source: MlflowClient, watch: _Watch, changes: int, rng: random.Random, period: float
) -> dict:
    """Seconds from each registry call until the marketplace serves it, by kind; p50 and p95.
    Each change starts at a random point of `period` after the last was served: a change served
    at the end of a run keeps the phase of the poll that started it, and a shorter offset would
    start every next change at nearly the same point of the next interval."""
    seconds: dict[str, list[float]] = {kind: [] for kind in KINDS}
    not_served = 0
    for i in range(changes):
        kind = KINDS[i % 2]
        # A promotion is of a version registered before the change, as a team registers then
        # promotes.
        target = _new_version(source, MODEL[mode]) if kind == "promotion" else "1"
        time.sleep(rng.uniform(0, period))
        started = time.monotonic()
        _make_production(source, mode, target)
        took = watch.until_served(mode, target, started, SERVED_WITHIN_SECONDS, strict=False)
        not_served += took is None
        seconds[kind].append(round(took if took is not None else SERVED_WITHIN_SECONDS, 2))
    row: dict = {
        "changes": changes,
        "not_served": not_served,
        "target_p95_seconds": TARGET_P95_SECONDS[mode],
        "start_offset_max_seconds": period,
    }
    for kind, found in seconds.items():
        row[kind] = {"changes": len(found), **_percentiles(found), "seconds": found}
    row["met"] = not_served == 0 and all(
        row[k]["p95_seconds"] <= TARGET_P95_SECONDS[mode] for k in KINDS
    )
    return row


def _percentiles(seconds: list[float]) -> dict:
    p50, p95 = np.percentile(seconds, [50, 95])  # linear between the nearest samples
    return {"p50_seconds": round(float(p50), 2), "p95_seconds": round(float(p95), 2)}


def _new_version(source: MlflowClient, model: str) -> str:
    first = source.get_model_version(model, "1")
    # Read over REST, a version carries no model_id; its source (models:/<id>) names the logged
    # model.
    model_id = first.model_id or first.source.removeprefix("models:/")
    return source.create_model_version(
        model, first.source, run_id=first.run_id, model_id=model_id
    ).version


def _make_production(source: MlflowClient, mode: str, version: str) -> None:
    if mode == ALIAS:
        source.set_registered_model_alias(MODEL[mode], SOURCE_ALIAS, version)
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # stages are deprecated, still served
        source.transition_model_version_stage(
            MODEL[mode], version, "Production", archive_existing_versions=True
        )


class _Watch:
    """Reads the marketplace's @production of a workspace's model until it is a given source
    version."""

    def __init__(self, config: MarketplaceConfig, dev: DagsterDev, receiver: WebhookReceiver):
        registry = MarketplaceRegistry(config)
        self.client, self.alias, self.name = (
            MlflowClient(registry.tracking_uri),
            registry.alias,
            registry.model_name,
        )
        self.dev, self.receiver = dev, receiver

    def serving(self, mode: str) -> str | None:
        try:
            found = self.client.get_model_version_by_alias(
                self.name(WORKSPACE[mode], MODEL[mode]), self.alias
            )
        except MlflowException:
            return None  # not in the marketplace yet
        return (found.tags or {}).get(TAG_SOURCE_VERSION)

    def until_served(
        self, mode: str, version: str, started: float, within: float, strict: bool = True
    ) -> float | None:
        """Seconds since `started` until @production serves `version`; None (or raise, if
        `strict`) when it does not within `within` seconds."""
        while time.monotonic() - started < within:
            if self.serving(mode) == str(version):
                return time.monotonic() - started
            time.sleep(LOOK_EVERY_SECONDS)
        if strict:
            raise TimeoutError(
                f"{WORKSPACE[mode]}: the marketplace did not serve v{version} within {within} s\n"
                f"dagster dev:\n{self.dev.log.read_text()[-3000:]}\n"
                f"receiver:\n{self.receiver.log.read_text()[-2000:]}"
            )
        return None


def _wait_registered(config: MarketplaceConfig, workspace, timeout: float = 60) -> None:
    """The receiver registers `marketplace-sync` on the source as it starts; wait for it."""
    deadline = time.monotonic() + timeout
    while not (state := inspect_webhook(workspace, config.webhooks.base_url)).registered:
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"webhook of {workspace.name} not registered: {state.action} {state.detail}"
            )
        time.sleep(0.5)


def poll_load(config: MarketplaceConfig, count: int) -> dict:
    """The registry requests of one full poll (the sensor's poll_workspaces) of `count`
    workspaces spread round robin over the configured ones, and what the default interval
    makes of it: requests per second per workspace."""
    workspaces = [
        config.workspaces[i % len(config.workspaces)].model_copy(update={"name": f"load{i:02d}"})
        for i in range(count)
    ]
    polled = poll_workspaces(
        workspaces, max_workers=config.sensor.max_workers, deadline_seconds=TICK_BUDGET_SECONDS
    )
    if failed := [p.error for p in polled.values() if p.error]:
        raise RuntimeError(f"{len(failed)} of {count} workspaces not polled: {failed[0]}")
    calls = sum(p.calls for p in polled.values())
    return {
        "poll_load_workspaces": count,
        "poll_requests": calls,
        "poll_requests_per_second_per_workspace": round(
            calls / count / config.sensor.minimum_interval_seconds, 4
        ),
    }


def table(result: dict) -> list[dict]:
    """BENCHMARKS.md's rows: one per mode and kind."""
    return [
        {
            "mode": mode,
            "kind": kind,
            "changes": result[mode][kind]["changes"],
            "p50_seconds": result[mode][kind]["p50_seconds"],
            "p95_seconds": result[mode][kind]["p95_seconds"],
            "target_p95_seconds": result[mode]["target_p95_seconds"],
            "met": result[mode][kind]["p95_seconds"] <= result[mode]["target_p95_seconds"],
        }
        for mode in (ALIAS, STAGE)
        for kind in KINDS
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--changes",
        type=int,
        default=10,
        help="changes per mode, alternating promotion and rollback",
    )
    parser.add_argument("--seed", type=int, default=0, help="of the random offsets between changes")
    args = parser.parse_args(argv)
    if args.changes < 2:
        parser.error("--changes: at least 2, a promotion and a rollback")
    with tempfile.TemporaryDirectory(prefix="marketplace-propagation-") as tmp:
        bench = Bench(Path(tmp))
        try:
            result = bench_propagation(bench, args.changes, Path(tmp), rng_seed=args.seed)
        finally:
            bench.close()
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
