"""The embedded default: local MLflow servers, demo models, a sync of today's partitions, a summary.

Used by `make demo`, `make demo-rollback`, `make dev` and `make stop`:
    python -m harness.demo up | seed | sync | webhooks | summary | rollback | dev | stop
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import signal
import sys
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlparse

from harness.local_servers import LocalServer, start, stop
from marketplace.config import MarketplaceConfig, load_config

STATE_DIR_ENV = "MARKETPLACE_STATE_DIR"
# Where the demo's own lines go while Dagster's, MLflow's and the export library's logs go to a
# file.
_terminal = None


def say(text: str = "") -> None:
    stream = _terminal or sys.stdout
    stream.write(f"{text}\n")
    stream.flush()


@contextlib.contextmanager
def logs_to(path: Path) -> Iterator[None]:
    """Send everything written to stdout and stderr (by this process and its children) to `path`,
    keeping `say` on the terminal."""
    global _terminal
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    _terminal = os.fdopen(os.dup(saved[0]), "w")
    try:
        with open(path, "a", encoding="utf-8") as log:
            os.dup2(log.fileno(), 1)
            os.dup2(log.fileno(), 2)
            try:
                yield
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os.dup2(saved[0], 1)
                os.dup2(saved[1], 2)
    finally:
        _terminal.close()
        _terminal = None
        for fd in saved:
            os.close(fd)


def state_dir(config: MarketplaceConfig) -> Path:
    return Path(os.environ.get(STATE_DIR_ENV) or config.base_dir / ".marketplace").resolve()


def local_servers(config: MarketplaceConfig) -> list[LocalServer]:
    """A local server for every configured registry on this machine's loopback."""
    servers = []
    for name, uri in [("marketplace", config.marketplace.tracking_uri)] + [
        (w.name, w.tracking_uri) for w in config.workspaces
    ]:
        parsed = urlparse(uri)
        if parsed.hostname in ("127.0.0.1", "localhost") and parsed.port:
            servers.append(LocalServer(name, state_dir(config) / "servers" / name, parsed.port))
    return servers


def up(config: MarketplaceConfig) -> None:
    servers = local_servers(config)
    with ThreadPoolExecutor(max(1, len(servers))) as pool:
        started = list(pool.map(start, servers))
    for server, process in zip(servers, started):
        say(
            f"  {server.name:<12} {server.uri}  {'started' if process else 'already running'}  "
            f"(log: {server.log_path})"
        )


def down(config: MarketplaceConfig) -> None:
    for server in local_servers(config):
        say(f"  {server.name:<12} {'stopped' if stop(server) else 'was not running'}")


# What each demo model predicts and who owns it, as its registered model says (its card shows it).
DEMO_DESCRIPTIONS = {
    "iris_classifier": (
        (
            "Predicts the species of an iris flower (setosa, versicolor, virginica) from its "
            "sepal and petal measurements in centimetres."
        ),
        "flora-team",
    ),
    "churn_model": (
        "Flags customers likely to leave; still in development, with no version in production.",
        "growth-ml",
    ),
    "diabetes_regressor": (
        (
            "Predicts a quantitative measure of diabetes progression one year after baseline, "
            "from age, sex, BMI, blood pressure and six blood serum measurements."
        ),
        "health-ml",
    ),
    "wine_classifier": (
        (
            "Predicts which of three cultivars a wine comes from, from 13 results of its chemical "
            "analysis."
        ),
        "cellar-analytics",
    ),
    "scratch_experiment": (
        "A scratch experiment; dev03's exclude pattern keeps it out of the marketplace.",
        "cellar-analytics",
    ),
}

# workspace -> [(model, kind of harness.seeding.fit, [what to do with each version])]; a version
# is promoted by the workspace's own production setting ("prod"), archived ("archived") or left
# alone ("none").
DEMO_MODELS = {
    "dev01": [
        ("iris_classifier", "iris", ["archived", "prod"]),
        ("churn_model", "iris", ["none"]),
    ],
    "dev02": [("diabetes_regressor", "diabetes", ["prod"])],
    "dev03": [
        ("wine_classifier", "wine", ["prod"]),
        ("scratch_experiment", "wine", ["prod"]),
    ],
}


def seed_workspace(tracking_uri: str, production, models) -> list[str]:
    """Register the demo models in one workspace; existing models are left as they are."""
    from mlflow import MlflowClient

    from harness.seeding import dataset, fit, log_model, sklearn_requirements

    client = MlflowClient(tracking_uri=tracking_uri)
    created = []
    for model_name, kind, plan in models:
        if client.search_registered_models(filter_string=f"name='{model_name}'"):
            continue
        for index, action in enumerate(plan, start=1):
            fitted, example = fit(kind, index)
            params = {k: v for k, v in fitted.get_params().items() if k in ("C", "max_iter")}
            version = log_model(
                tracking_uri,
                fitted,
                experiment=f"/demo/{model_name}",
                example=example,
                registered_model_name=model_name,
                requirements=sklearn_requirements(),
                run_name=f"{model_name}-v{index}",
                params={"dataset": kind, "estimator": type(fitted).__name__, **params},
                metrics={"training_score": fitted.score(*dataset(kind))},
            ).registered_model_version
            if index == 1:
                about, owner = DEMO_DESCRIPTIONS[model_name]
                client.update_registered_model(model_name, description=about)
                client.set_registered_model_tag(model_name, "owner", owner)
            client.update_model_version(
                model_name, version, description=f"Demo {kind} model, version {index}."
            )
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                if action == "archived":
                    client.transition_model_version_stage(model_name, version, "Archived")
                elif action == "prod" and production.stage:
                    client.transition_model_version_stage(model_name, version, production.stage)
                elif action == "prod":
                    client.set_registered_model_alias(model_name, production.alias, version)
        created.append(model_name)
    return created


def seed(config: MarketplaceConfig) -> None:
    for workspace in config.workspaces:
        models = DEMO_MODELS.get(workspace.name)
        if models is None:
            continue
        created = seed_workspace(workspace.tracking_uri, workspace.production, models)
        say(
            f"  {workspace.name:<12} "
            f"{'seeded ' + ', '.join(created) if created else 'demo models already there'}"
        )


def sync(config: MarketplaceConfig, only: str | None = None) -> int:
    """Run marketplace_sync_job for today's partition of every workspace (or `only` one) on the
    persistent instance."""
    import dagster as dg

    from marketplace_dagster.definitions import build_definitions
    from marketplace_dagster.keys import CATALOG
    from marketplace_dagster.partitions import partition_key

    home = Path(os.environ.setdefault("DAGSTER_HOME", str(state_dir(config) / "dagster_home")))
    home.mkdir(parents=True, exist_ok=True)
    defs = build_definitions(config)
    job = defs.resolve_job_def("marketplace_sync_job")
    today = dt.datetime.now(dt.UTC).date()
    failures = 0
    with dg.DagsterInstance.get() as instance:
        for workspace in config.workspaces:
            if only is not None and workspace.name != only:
                continue
            key = partition_key(today, workspace.name)
            result = job.execute_in_process(
                instance=instance,
                partition_key=key,
                raise_on_error=False,
                tags={"marketplace/launched_by": "make demo"},
            )
            counts = _counts(result)
            status = "ok" if result.success else "FAILED"
            news = (
                ", ".join(f"{name.replace('_', ' ')} {n}" for name, n in counts.items() if n)
                or "nothing new"
            )
            say(f"  {key}: {status}  {news}  (run {result.run_id[:8]})")
            for event in result.all_events:
                if event.is_step_failure and event.event_specific_data.error:
                    say(
                        f"      {event.step_key}: {event.event_specific_data.error.message.strip()}"
                    )
            failures += not result.success
        # What the automation sensor does after any sync under `make dev`.
        catalog = defs.resolve_implicit_global_asset_job_def().get_subset(asset_selection={CATALOG})
        result = catalog.execute_in_process(
            instance=instance, raise_on_error=False, tags={"marketplace/launched_by": "make demo"}
        )
        materialized = [
            e.step_materialization_data.materialization
            for e in result.get_asset_materialization_events()
        ]
        if result.success and materialized:
            metadata = materialized[0].metadata
            say(
                f"  catalog: ok  {metadata['models'].value} model(s), "
                f"{metadata['rows_updated'].value} changed, {metadata['rows_inserted'].value} new  "
                f"(run {result.run_id[:8]})"
            )
        else:
            say(f"  catalog: FAILED  (run {result.run_id[:8]})")
        failures += not result.success
    return failures


def webhooks(config: MarketplaceConfig) -> int:
    """Create or update each workspace's `marketplace-sync` webhook (what the receiver does at
    start)."""
    from marketplace.registry import configure_http
    from marketplace.source_webhooks import register_webhooks

    configure_http(config.sensor.request_timeout_seconds, 0)
    states = register_webhooks(config.workspaces, config.webhooks.base_url, os.environ)
    for state in states:
        say(
            f"  {state.workspace:<12} {state.action}"
            + (f" ({state.detail})" if state.detail else "")
            + (
                f" -> {config.webhooks.base_url}/mlflow/{state.workspace}"
                if state.registered
                else ""
            )
        )
    if not states:
        say("  no workspace has a webhook configured: the sensor polls every workspace")
    return 0  # a source without webhooks still syncs, by polling


def dev(config: MarketplaceConfig) -> int:
    """`make dev`: the webhook receiver beside `dagster dev` (webserver, daemon, code server)."""
    import subprocess

    from harness.local_dagster import DAGSTER, WebhookReceiver, default_interrupt, stop_group

    home = Path(os.environ.setdefault("DAGSTER_HOME", str(state_dir(config) / "dagster_home")))
    receiver = WebhookReceiver(
        config.path, home, f"http://{config.webhooks.listen}", cwd=Path.cwd()
    )
    try:
        receiver.wait_until_up()
        say(f"Webhook receiver on {config.webhooks.listen} (log: {receiver.log})")
    except (RuntimeError, TimeoutError) as exc:
        say(f"Webhook receiver not started; the sensor still polls: {str(exc).splitlines()[0]}")
    # Its own process group, so that stopping it reaches its webserver, daemon and code server
    # however this process was stopped (Ctrl-C, or a `kill` of this process alone).
    process = subprocess.Popen(
        [str(DAGSTER), "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", "3000"],
        start_new_session=True,
        preexec_fn=default_interrupt,  # noqa: PLW1509 - only resets SIGINT in the child; deliberate
    )
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    try:
        return process.wait()
    except KeyboardInterrupt:
        stop_group(process)
        return 0
    finally:
        receiver.stop()


def _interrupt(*_) -> None:
    raise KeyboardInterrupt


ROLLBACK_WORKSPACE, ROLLBACK_MODEL = "dev01", "iris_classifier"


def rollback(config: MarketplaceConfig) -> int:
    """Move the demo's dev01/iris_classifier back to its previous version in its workspace (or,
    once rolled back to v1, forward to its newest again), sync dev01, and show what changed."""
    from mlflow import MlflowClient

    from marketplace.registry import newest_production_version

    workspace = next((w for w in config.workspaces if w.name == ROLLBACK_WORKSPACE), None)
    if workspace is None or workspace.production.stage is None:
        say(
            f"  the demo rollback needs workspace {ROLLBACK_WORKSPACE} selecting production by "
            "stage"
        )
        return 1
    client = MlflowClient(tracking_uri=workspace.tracking_uri)
    stage = workspace.production.stage
    current = newest_production_version(client, ROLLBACK_MODEL, stage=stage, alias=None)
    newest = max(int(v.version) for v in client.search_model_versions(f"name='{ROLLBACK_MODEL}'"))
    now = int(current.version) if current else newest
    target = now - 1 if now > 1 else newest
    say(f"\nBefore, {ROLLBACK_WORKSPACE}/{ROLLBACK_MODEL} has v{now} in {stage}:")
    summary(config, history=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        client.transition_model_version_stage(
            ROLLBACK_MODEL, str(target), stage, archive_existing_versions=True
        )
    say(
        f"\n{'Rolled back' if target < now else 'Rolled forward'}: "
        f"{ROLLBACK_WORKSPACE}/{ROLLBACK_MODEL} v{target} is in {stage} now (v{now} archived). "
        f"Syncing {ROLLBACK_WORKSPACE}:"
    )
    failures = sync(config, only=ROLLBACK_WORKSPACE)
    say("\nAfter:")
    summary(config, history=True)
    return failures


COUNTED = ("exported", "imported", "quarantined", "promoted", "rolled_back", "retired", "restored")


def _counts(result) -> dict[str, int]:
    counts = dict.fromkeys(COUNTED, 0)
    for event in result.get_asset_materialization_events():
        materialization = event.step_materialization_data.materialization
        for name in counts:
            if name in materialization.metadata:
                counts[name] += materialization.metadata[name].value
    return counts


def summary(config: MarketplaceConfig, history: bool = False) -> None:
    from mlflow import MlflowClient

    from marketplace.external import configured_storage
    from marketplace.layout import CATALOG_PAGE
    from marketplace.production_marker import TAG_STATUS, TAG_STATUS_CHANGED_AT
    from marketplace.provenance import TAG_SOURCE_MODEL, TAG_SOURCE_VERSION, TAG_SOURCE_WORKSPACE
    from marketplace.summary import CATALOG, PRODUCTION_HISTORY, TABLES, read_rows

    client = MlflowClient(tracking_uri=config.marketplace.tracking_uri)
    alias = config.marketplace.alias
    say(f"\nThe marketplace ({config.marketplace.tracking_uri}):")
    for model in sorted(client.search_registered_models(), key=lambda m: m.name):
        versions = client.search_model_versions(f"name='{model.name}'")
        try:
            aliased = client.get_model_version_by_alias(model.name, alias)
            tags = aliased.tags
            where = f"@{alias} = v{aliased.version}"
        except Exception:  # noqa: BLE001 - a model without the alias is still listed
            tags, where = {}, f"no @{alias}"
        status = (model.tags or {}).get(TAG_STATUS, "active")
        if status != "active":
            where = f"{status} since {(model.tags or {}).get(TAG_STATUS_CHANGED_AT, '?')[:19]}"
            source = (
                f"from {(model.tags or {}).get(TAG_SOURCE_WORKSPACE)}/"
                f"{(model.tags or {}).get(TAG_SOURCE_MODEL)}"
            )
        else:
            source = (
                f"the copy of {tags.get(TAG_SOURCE_WORKSPACE)}/{tags.get(TAG_SOURCE_MODEL)} "
                f"v{tags.get(TAG_SOURCE_VERSION)}"
            )
        say(f"  {model.name:<32} {len(versions)} version(s), {where:<18} {source}")
        if status == "active":
            say(f"      load it: mlflow.pyfunc.load_model('models:/{model.name}@{alias}')")
    say("\nDelta tables:")
    storage = configured_storage(config)
    for table in (*TABLES, CATALOG):
        uri = storage.location(table)
        say(f"  {table:<18} {len(read_rows(uri, storage.delta_options()))} row(s) at {uri}")
    if history:
        rows = read_rows(storage.location(PRODUCTION_HISTORY), storage.delta_options())
        say("\nProduction history (newest last):")
        for row in sorted(rows, key=lambda r: r["changed_at"]):
            previous = row["previous_source_version"]
            say(
                f"  {row['changed_at']:%Y-%m-%d %H:%M:%S}  {row['marketplace_name']:<28} "
                f"{row['change']:<12} source "
                f"v{row['source_version'] if row['source_version'] is not None else '-'} (was "
                f"v{previous if previous is not None else '-'})"
            )
        return
    say("\nUIs:")
    say(
        f"  catalog page:       {storage.location(CATALOG_PAGE)} (open it in a browser; it needs "
        "no network)"
    )
    say(f"  marketplace MLflow: {config.marketplace.tracking_uri}")
    for workspace in config.workspaces:
        say(f"  {workspace.name} MLflow:      {workspace.tracking_uri}")
    say("  Dagster:            make dev, then http://127.0.0.1:3000")
    say("  Stop the servers:   make stop")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.demo", description=__doc__)
    parser.add_argument(
        "command",
        choices=["up", "seed", "sync", "webhooks", "summary", "rollback", "dev", "stop", "all"],
    )
    args = parser.parse_args(argv)
    config = load_config()
    if args.command == "dev":
        return dev(config)
    steps = (
        ["up", "seed", "sync", "webhooks", "summary"] if args.command == "all" else [args.command]
    )
    log = state_dir(config) / "demo.log"
    failures = 0
    with logs_to(log):
        for step in steps:
            say(
                {
                    "up": "MLflow servers:",
                    "seed": "Demo models:",
                    "sync": "Syncing today's partitions:",
                    "webhooks": "Webhooks on the demo's servers:",
                    "summary": "",
                    "rollback": "Rolling a demo model back in its workspace:",
                    "stop": "MLflow servers:",
                }[step]
            )
            if step == "up":
                up(config)
            elif step == "seed":
                seed(config)
            elif step == "sync":
                failures += sync(config)
            elif step == "webhooks":
                failures += webhooks(config)
            elif step == "summary":
                summary(config)
            elif step == "rollback":
                failures += rollback(config)
            else:
                down(config)
    if {"sync", "rollback"} & set(steps):
        say(f"\nDagster's, MLflow's and mlflow-export-import's logs: {log}")
    return 1 if failures else 0


if __name__ == "__main__":
    code = main()
    from marketplace.databricks import remove_profiles

    remove_profiles()  # os._exit skips atexit
    sys.stdout.flush()
    sys.stderr.flush()
    # All work is done and closed by now. Seen once in a fresh clone: a native library's thread
    # pool aborting interpreter teardown ("terminate called without an active exception"),
    # which turned a finished demo into a failed `make demo`. Skip the teardown.
    os._exit(code)
