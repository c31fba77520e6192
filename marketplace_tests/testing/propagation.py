"""The running system the propagation tests drive: a configuration with one workspace sending
webhooks and one polled, its instance home, the webhook receiver and `dagster dev` (`Live`), with
waits on the runs they launch, and a consumer of the marketplace's own webhooks (`Consumer`)."""

from __future__ import annotations

import datetime as dt
import http.server
import json
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg
import yaml
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from harness.local_dagster import DagsterDev, WebhookReceiver
from marketplace.config import load_config
from marketplace.provenance import TAG_SOURCE_VERSION
from marketplace.source_webhooks import inspect_webhook
from marketplace.webhooks import WEBHOOK_NAME
from marketplace_dagster.keys import DELIVERY_ID, PRODUCTION_MODELS
from marketplace_dagster.partitions import WORKSPACE_TAG
from marketplace_dagster.sensors import PENDING_TAG
from marketplace_tests.testing.driving import ALIAS, SENSOR, promote

POLL_SECONDS = 10
# Generous for CI on two cores; `make bench` measures the real numbers.
WEBHOOK_LATENCY_BOUND = 60
# A sync run's launch alone took 10-50 s on a loaded two-core machine.
CHANGE_TIMEOUT = 120
BURST = 50
BURST_RUN_BOUND = 6
IN_FLIGHT = {
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
}


@dataclass(frozen=True, eq=False)  # a key by identity: its production selector is a dict
class Workspace:
    name: str
    server: str  # the session server that holds it
    production: dict
    model: str

    @property
    def marketplace_name(self) -> str:
        return f"{self.name}.{self.model}"


@dataclass
class Live:
    """The running system: its configuration, instance home, receiver and `dagster dev`."""

    config_path: Path
    raw: dict
    home: Path
    listen_url: str
    hooked: Workspace
    polled: Workspace
    servers: dict
    receiver: WebhookReceiver | None = None
    dev: DagsterDev | None = None
    latencies: dict[str, list[float]] = field(default_factory=dict)

    @property
    def market(self) -> MlflowClient:
        return MlflowClient(self.servers["marketplace"].uri)

    def source(self, workspace: Workspace) -> MlflowClient:
        return MlflowClient(self.servers[workspace.server].uri)

    def start_receiver(self) -> None:
        self.receiver = WebhookReceiver(self.config_path, self.home, self.listen_url)
        self.receiver.wait_until_up()
        config = load_config(self.config_path)
        workspace = next(w for w in config.workspaces if w.name == self.hooked.name)
        wait_for(
            lambda: inspect_webhook(workspace, config.webhooks.base_url).registered,
            60,
            lambda: f"{WEBHOOK_NAME} not registered on {self.hooked.server}:\n{self.logs()}",
        )
        # The source re-reads its webhook list every second (local_servers.webhook_env).
        time.sleep(1.5)

    def stop_receiver(self) -> None:
        if self.receiver is not None:
            self.receiver.stop()
            self.receiver = None

    def start_dev(self, wait: bool = True) -> None:
        self.dev = DagsterDev(self.config_path, self.home)
        if wait:
            self.dev.wait_until_loaded()

    def stop_dev(self) -> None:
        if self.dev is not None:
            self.dev.stop()
            # The next `dagster dev` on this home starts its log afresh; keep this one to read.
            log = self.home / "dagster_dev.log"
            if log.exists():
                shutil.copy(log, self.home / f"dagster_dev.{time.time():.0f}.log")
            self.dev = None

    def write_config(self, **sensor) -> None:
        self.raw["sensor"] = {**self.raw["sensor"], **sensor}
        self.config_path.write_text(yaml.safe_dump(self.raw))

    def production(self, workspace: Workspace) -> str | None:
        """The source version the marketplace's @production is the copy of; None without one."""
        try:
            return self.market.get_model_version_by_alias(
                workspace.marketplace_name, ALIAS
            ).tags.get(TAG_SOURCE_VERSION)
        except MlflowException:
            return None

    def source_production(self, workspace: Workspace) -> str:
        client = self.source(workspace)
        if "alias" in workspace.production:
            return client.get_model_version_by_alias(
                workspace.model, workspace.production["alias"]
            ).version
        (version,) = [
            v.version
            for v in client.search_model_versions(f"name='{workspace.model}'")
            if v.current_stage == "Production"
        ]
        return version

    def runs(self, workspace: Workspace) -> list:
        """The sync runs the sensor asked for this workspace, oldest first."""
        instance = dg.DagsterInstance.from_config(str(self.home))
        try:
            records = instance.get_run_records(
                filters=dg.RunsFilter(
                    job_name="marketplace_sync_job", tags={WORKSPACE_TAG: workspace.name}
                )
            )
        finally:
            instance.dispose()
        return sorted(records, key=lambda r: r.create_timestamp)

    def deliveries(self, workspace: Workspace, after: float) -> list[tuple[float, dict]]:
        """The webhook events recorded for this workspace's model since `after`: when each was
        recorded, and its metadata."""
        instance = dg.DagsterInstance.from_config(str(self.home))
        try:
            records = instance.fetch_observations(
                dg.AssetRecordsFilter(asset_key=PRODUCTION_MODELS, after_timestamp=after),
                limit=10_000,
            ).records
        finally:
            instance.dispose()
        found = []
        for record in records:
            metadata = {k: v.value for k, v in record.asset_observation.metadata.items()}
            if (
                DELIVERY_ID in metadata
                and metadata.get("workspace") == workspace.name
                and (metadata.get("model") == workspace.model)
            ):
                found.append((record.timestamp, metadata))
        return found

    def alias_deliveries(
        self,
        workspace: Workspace,
        after: float,
        version: str | None = None,
        before: float | None = None,
    ) -> list[float]:
        """When each delivery of the alias moving (to `version`) in [after, before) was recorded."""
        return [
            at
            for at, event in self.deliveries(workspace, after)
            if event["event"] == "model_version_alias.created"
            and at < (before or float("inf"))
            and version in (None, event.get("version"))
        ]

    def ticks(self, limit: int = 10) -> list:
        """The sensor's newest ticks, newest first."""
        instance = dg.DagsterInstance.from_config(str(self.home))
        try:
            states = [s for s in instance.all_instigator_state() if s.instigator_name == SENSOR]
            return [
                tick
                for state in states
                for tick in instance.get_ticks(
                    state.instigator_origin_id, state.selector_id, limit=limit
                )
            ]
        finally:
            instance.dispose()

    def requested_at(self, run) -> float:
        """When the sensor tick that asked for `run` began (before it read the webhook events)."""
        (tick,) = [t for t in self.ticks(limit=1000) if run.dagster_run.run_id in t.run_ids]
        return tick.timestamp

    def logs(self) -> str:
        parts = []
        for name in ("dagster_dev.log", "webhooks.log"):
            path = self.home / name
            if path.exists():
                parts.append(f"--- {name}\n" + path.read_text(errors="replace")[-4000:])
        try:
            parts.append(
                "--- sensor ticks\n"
                + "\n".join(
                    f"{dt.datetime.fromtimestamp(t.timestamp):%H:%M:%S} {t.status.value} "
                    f"{t.run_ids} {t.skip_reason or ''} "
                    f"{t.error.message[:300] if t.error else ''}"
                    for t in sorted(self.ticks(8), key=lambda t: t.timestamp)
                )
            )
        except Exception as exc:  # noqa: BLE001 - diagnostics only
            parts.append(f"--- sensor ticks not read: {exc}")
        return "\n".join(parts)

    def change(self, workspace: Workspace, version: str) -> float:
        """Make `version` the source's production version; returns when (wall clock) the call was
        made."""
        at = time.time()
        promote(self.servers[workspace.server].uri, workspace.model, version, workspace.production)
        return at

    def wait_served(
        self,
        wanted: dict[Workspace, str],
        since: float,
        timeout: float = CHANGE_TIMEOUT,
    ) -> dict[Workspace, float]:
        """Wait until the marketplace serves each workspace's wanted source version; the seconds
        from `since` (wall clock) to when each was first seen served."""
        seen: dict[Workspace, float] = {}
        deadline = time.monotonic() + timeout
        while len(seen) < len(wanted):
            for workspace, version in wanted.items():
                if workspace not in seen and self.production(workspace) == str(version):
                    seen[workspace] = time.time() - since
            if len(seen) == len(wanted):
                break
            if time.monotonic() > deadline:
                missing = {
                    w.name: (v, self.production(w)) for w, v in wanted.items() if w not in seen
                }
                raise AssertionError(
                    f"not served within {timeout:.0f} s (workspace: (wanted, serving)): "
                    f"{missing}\n{self.logs()}"
                )
            time.sleep(0.5)
        return seen

    def wait_idle(self, timeout: float = 120) -> None:
        """Until no sync run is queued or running (so `dagster dev` can stop without taking one
        down)."""

        def idle() -> bool:
            return not any(
                r.dagster_run.status in IN_FLIGHT
                for w in (self.hooked, self.polled)
                for r in self.runs(w)
            )

        wait_for(
            idle, timeout, lambda: f"sync runs still in flight after {timeout:.0f} s\n{self.logs()}"
        )

    def serving_run(
        self, workspace: Workspace, version: str, after: float, before: float | None = None
    ):
        """The one successful run created in [after, before) that was asked to sync `version`."""
        wanted = f"{workspace.model}@{version}"

        def matching() -> list:
            return [
                r
                for r in self.runs(workspace)
                if after <= r.create_timestamp.timestamp() < (before or float("inf"))
                and wanted in r.dagster_run.tags.get(PENDING_TAG, "").split(", ")
            ]

        def finished() -> bool:
            return bool(matching()) and not any(
                r.dagster_run.status in IN_FLIGHT for r in matching()
            )

        wait_for(
            finished, 120, lambda: f"no finished run for {wanted} after {after}:\n{self.logs()}"
        )
        succeeded = [r for r in matching() if r.dagster_run.status == dg.DagsterRunStatus.SUCCESS]
        assert len(succeeded) == 1, (
            wanted,
            [(r.dagster_run.run_id, r.dagster_run.status) for r in matching()],
        )
        return succeeded[0]


def wait_for(
    condition: Callable[[], bool], timeout: float, why: Callable[[], str], every: float = 0.5
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(why())
        time.sleep(every)


def other(version: str) -> str:
    return "2" if str(version) == "1" else "1"


class Consumer:
    """A tiny HTTP endpoint that keeps every JSON body POSTed to it."""

    def __init__(self):
        received = self.received = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                received.append(json.loads(body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/marketplace-events"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
