"""Propagation through the real daemon: `dagster dev` and the webhook receiver, as a user runs them.

One workspace selected by alias sends webhooks (ws_b), one selected by stage is polled (ws_a). Every
promotion and rollback in one day is served by a run of its own; a delivery lost while the receiver
is down is caught by the poll; an event recorded while the daemon is down is served after its
restart; a burst of events asks for a bounded number of runs; and a consumer subscribed to the
marketplace's own webhooks hears the rollback.
"""

from __future__ import annotations

import datetime as dt
import http.server
import json
import secrets
import shutil
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg
import pytest
import yaml
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from harness.local_dagster import DagsterDev, WebhookReceiver, ensure_instance
from harness.local_servers import free_port
from marketplace.config import load_config
from marketplace.provenance import TAG_SOURCE_VERSION
from marketplace.source_webhooks import inspect_webhook
from marketplace.webhooks import WEBHOOK_NAME
from marketplace_dagster.keys import DELIVERY_ID, PRODUCTION_MODELS
from marketplace_dagster.sensors import PENDING_TAG, TRIGGER_TAG, WORKSPACE_TAG
from marketplace_tests.testing.deployments import TODAY
from marketplace_tests.testing.driving import ALIAS, CHAMPION, SENSOR, STAGE, copy_of, promote
from marketplace_tests.testing.seeding import register_version

SECRET_ENV = "MARKETPLACE_TEST_WEBHOOK_SECRET"
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


@pytest.fixture(scope="module")
def live(servers, tmp_path_factory):
    """Two workspaces seeded with two versions each, the receiver and `dagster dev` started, and
    both workspaces served at v1 by the sensor's first runs."""
    folder = tmp_path_factory.mktemp("propagation")
    uid = "t" + uuid.uuid4().hex[:8]
    hooked = Workspace(f"a{uid}", "ws_b", CHAMPION, f"{uid}_hooked")
    polled = Workspace(f"s{uid}", "ws_a", STAGE, f"{uid}_polled")
    register_version(servers[hooked.server].uri, hooked.model, alias=CHAMPION["alias"])
    register_version(servers[hooked.server].uri, hooked.model)
    register_version(servers[polled.server].uri, polled.model, stage=STAGE["stage"])
    register_version(servers[polled.server].uri, polled.model)
    listen = f"127.0.0.1:{free_port()}"
    stopped = {"default_status": "stopped"}
    raw = {
        "start_date": (TODAY - dt.timedelta(days=3)).isoformat(),
        "external_storage": {"uri": str(folder / "external")},
        "marketplace": {"tracking_uri": servers["marketplace"].uri},
        "client": {"timeout_seconds": 5, "max_retries": 0},
        "workspaces": [
            {
                "name": hooked.name,
                "tracking_uri": servers[hooked.server].uri,
                "production": hooked.production,
                "include": [f"{uid}_*"],
                "webhook": {"secret_env": SECRET_ENV},
            },
            {
                "name": polled.name,
                "tracking_uri": servers[polled.server].uri,
                "production": polled.production,
                "include": [f"{uid}_*"],
            },
        ],
        "sensor": {
            "minimum_interval_seconds": POLL_SECONDS,
            "default_status": "running",
            "retry_backoff_seconds": 0,
        },
        "webhooks": {"listen": listen},
        "automation": stopped,
        "schedule": stopped,
        "freshness": stopped,
        "checks": stopped,
        "housekeeping": stopped,
    }
    home = folder / "dagster_home"
    ensure_instance(home)
    # The receiver and the daemon both create the instance's storage on first use; racing first uses
    # collide.
    dg.DagsterInstance.from_config(str(home)).dispose()
    system = Live(
        folder / "marketplace.yaml", raw, home, f"http://{listen}", hooked, polled, servers
    )
    system.write_config()
    with pytest.MonkeyPatch.context() as env:
        # The receiver verifies with it and the daemon's processes inherit it: from the environment
        # only.
        env.setenv(SECRET_ENV, secrets.token_hex(24))
        try:
            system.start_dev(wait=False)  # it loads for half a minute: start the receiver meanwhile
            system.start_receiver()
            system.dev.wait_until_loaded()
            system.wait_served({hooked: "1", polled: "1"}, time.time(), timeout=240)
            system.wait_idle()
            yield system
        finally:
            system.stop_receiver()
            system.stop_dev()
            for hook in system.source(hooked).list_webhooks(max_results=100):
                if hook.name == WEBHOOK_NAME and hook.url.startswith(system.listen_url):
                    system.source(hooked).delete_webhook(hook.webhook_id)
            for workspace, seen in system.latencies.items():
                print(f"{workspace}: " + ", ".join(f"{s:.1f} s" for s in seen))


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


def test_every_promotion_and_rollback_in_one_day_is_served_by_its_own_run_and_consumers_hear_the_rollback(  # noqa: E501 - the test's name alone is longer than a line
    live,
):
    hooked, polled = live.hooked, live.polled
    consumer = Consumer()
    market = live.market
    subscription = market.create_webhook(
        f"{hooked.name}-consumer", consumer.url, ["model_version_alias.created"]
    )
    try:
        changes: dict[Workspace, list[tuple[str, float]]] = {hooked: [], polled: []}
        latencies: dict[Workspace, list[float]] = {hooked: [], polled: []}
        for version in ("2", "1", "2", "1"):  # promote, roll back, promote, roll back
            at = {w: live.change(w, version) for w in (hooked, polled)}
            served = live.wait_served({hooked: version, polled: version}, min(at.values()))
            for workspace in (hooked, polled):
                changes[workspace].append((version, at[workspace]))
                latencies[workspace].append(served[workspace] - (at[workspace] - min(at.values())))
            # The next change starts from a quiet system: its latency and its run are its own.
            live.wait_idle()
        live.latencies.update(
            {
                f"{hooked.name} (alias, webhook)": latencies[hooked],
                f"{polled.name} (stage, poll)": latencies[polled],
            }
        )
        assert all(seconds < WEBHOOK_LATENCY_BOUND for seconds in latencies[hooked]), latencies[
            hooked
        ]

        # Each change asked for and got a successful run of its own, under a key of its own.
        windows = {
            w: [
                (version, at, following)
                for (version, at), following in zip(made, [a for _, a in made[1:]] + [None])
            ]
            for w, made in changes.items()
        }  # each change, and when the next one came
        runs = {
            w: [live.serving_run(w, version, at, before) for version, at, before in found]
            for w, found in windows.items()
        }
        keys = [r.dagster_run.tags["dagster/run_key"] for found in runs.values() for r in found]
        assert len(set(keys)) == 8, keys
        assert {r.dagster_run.tags[TRIGGER_TAG] for r in runs[polled]} == {"poll"}
        # Each alias change was delivered; where its delivery was recorded before the tick that
        # asked for its run began, that tick read it (a full poll may see the change before it is
        # delivered).
        triggers = []
        for (version, at, before), run in zip(windows[hooked], runs[hooked]):
            recorded = live.alias_deliveries(hooked, at, version, before)
            assert recorded, f"no delivery recorded for v{version} at {at}"
            triggers.append(run.dagster_run.tags[TRIGGER_TAG])
            if min(recorded) < live.requested_at(run):
                assert triggers[-1] == "webhook", (version, recorded, live.requested_at(run))
        print(f"alias changes triggered by: {triggers}")

        # The marketplace's own alias webhook told the consumer of each rollback (to the copy of
        # v1).
        rolled_back_to = {w: copy_of(market, w.marketplace_name, 1) for w in (hooked, polled)}

        def heard() -> bool:
            return all(
                any(
                    e["data"].get("name") == w.marketplace_name
                    and str(e["data"].get("version")) == copy
                    and e["data"].get("alias") == ALIAS
                    for e in consumer.received
                )
                for w, copy in rolled_back_to.items()
            )

        wait_for(heard, 30, lambda: f"consumer heard {consumer.received}")
        assert {e["entity"] + "." + e["action"] for e in consumer.received} == {
            "model_version_alias.created"
        }
    finally:
        market.delete_webhook(subscription.webhook_id)
        consumer.close()


def test_a_delivery_lost_while_the_receiver_is_down_is_served_by_the_poll(live):
    hooked = live.hooked
    live.wait_served({hooked: live.source_production(hooked)}, time.time())
    live.wait_idle()
    target = other(live.source_production(hooked))
    live.stop_receiver()
    try:
        at = live.change(hooked, target)
        served = live.wait_served({hooked: target}, at)
    finally:
        live.start_receiver()
    live.latencies[f"{hooked.name} (alias, delivery lost)"] = [served[hooked]]
    run = live.serving_run(hooked, target, at)
    assert run.dagster_run.tags[TRIGGER_TAG] == "poll"
    assert live.alias_deliveries(hooked, at) == []


def test_events_alone_serve_a_change_made_while_the_daemon_was_down_and_bound_a_burst(live):
    """With the full poll pushed out to an hour, only webhook events can ask for these runs."""
    hooked = live.hooked
    live.wait_served({hooked: live.source_production(hooked)}, time.time())
    live.wait_idle()
    live.stop_dev()
    live.write_config(minimum_interval_seconds=3600)

    target = other(live.source_production(hooked))
    at = live.change(hooked, target)
    # Recorded with no daemon running: the event waits in the instance.
    wait_for(
        lambda: live.alias_deliveries(hooked, at, target),
        30,
        lambda: f"no delivery recorded for v{target}\n{live.logs()}",
    )
    assert live.production(hooked) != target
    live.start_dev()
    served = live.wait_served({hooked: target}, at, timeout=CHANGE_TIMEOUT + 60)
    live.latencies[f"{hooked.name} (alias, across a daemon restart)"] = [served[hooked]]
    run = live.serving_run(hooked, target, at)
    assert run.dagster_run.tags[TRIGGER_TAG] == "webhook"

    # A burst: the alias flips 50 times in a few seconds and ends on the version not served now.
    live.wait_idle()
    start, final = live.production(hooked), other(live.production(hooked))
    burst_at = time.time()
    source = live.source(hooked)
    for i in range(BURST):
        source.set_registered_model_alias(
            hooked.model, CHAMPION["alias"], final if i % 2 else start
        )
    burst_seconds = time.time() - burst_at
    assert live.source_production(hooked) == final
    served = live.wait_served({hooked: final}, burst_at, timeout=CHANGE_TIMEOUT + 30)
    live.latencies[f"{hooked.name} (alias, end of a {BURST}-event burst)"] = [served[hooked]]

    # Settled: every burst run finished and a later tick asked for nothing more.
    def settled() -> bool:
        runs = [r for r in live.runs(hooked) if r.create_timestamp.timestamp() >= burst_at]
        if not runs or any(r.dagster_run.status in IN_FLIGHT for r in runs):
            return False
        ended = max(r.end_time or 0 for r in runs)
        return any(t.timestamp > ended + 1 and t.status.value == "SKIPPED" for t in live.ticks())

    wait_for(settled, 120, lambda: f"the burst's runs did not settle\n{live.logs()}")
    burst_runs = [r for r in live.runs(hooked) if r.create_timestamp.timestamp() >= burst_at]
    delivered = live.alias_deliveries(hooked, burst_at)
    print(
        f"burst of {BURST} events in {burst_seconds:.1f} s: {len(delivered)} delivered, "
        f"{len(burst_runs)} run(s) "
        f"{[(r.dagster_run.status.value, r.dagster_run.tags.get(PENDING_TAG)) for r in burst_runs]}"
    )
    assert len(delivered) == BURST
    assert 1 <= len(burst_runs) <= BURST_RUN_BOUND, [
        r.dagster_run.tags.get(PENDING_TAG) for r in burst_runs
    ]
    assert burst_runs[-1].dagster_run.status == dg.DagsterRunStatus.SUCCESS
    assert live.production(hooked) == final
