"""Propagation through the real daemon: `dagster dev` and the webhook receiver, as a user runs them.

One workspace selected by alias sends webhooks (ws_b), one selected by stage is polled (ws_a). Every
promotion and rollback in one day is served by a run of its own; a delivery lost while the receiver
is down is caught by the poll; an event recorded while the daemon is down is served after its
restart; a burst of events asks for a bounded number of runs; and a consumer subscribed to the
marketplace's own webhooks hears the rollback.
"""

from __future__ import annotations

import datetime as dt
import secrets
import time
import uuid

import dagster as dg
import pytest

from harness.local_dagster import ensure_instance
from harness.local_servers import free_port
from harness.seeding import register_version
from marketplace.webhooks import WEBHOOK_NAME
from marketplace_dagster.sensors import PENDING_TAG, TRIGGER_TAG
from marketplace_tests.testing.deployments import TODAY
from marketplace_tests.testing.driving import ALIAS, CHAMPION, STAGE, copy_of
from marketplace_tests.testing.propagation import (
    BURST,
    BURST_RUN_BOUND,
    CHANGE_TIMEOUT,
    IN_FLIGHT,
    POLL_SECONDS,
    WEBHOOK_LATENCY_BOUND,
    Consumer,
    Live,
    Workspace,
    other,
    wait_for,
)
from marketplace_tests.testing.webhooks import SECRET_ENV


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
        # Each alias change was delivered; where the tick that asked for its run was the first to
        # begin after the delivery was recorded, that tick read it (a full poll may see the change
        # before it is delivered, and a tick that read it while the previous run still ran asks
        # for nothing: the next poll does).
        triggers = []
        tick_starts = [tick.timestamp for tick in live.ticks(limit=1000)]
        for (version, at, before), run in zip(windows[hooked], runs[hooked]):
            recorded = live.alias_deliveries(hooked, at, version, before)
            assert recorded, f"no delivery recorded for v{version} at {at}"
            triggers.append(run.dagster_run.tags[TRIGGER_TAG])
            asked = live.requested_at(run)
            if min(recorded) < asked and not any(min(recorded) <= s < asked for s in tick_starts):
                assert triggers[-1] == "webhook", (version, recorded, asked)
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
