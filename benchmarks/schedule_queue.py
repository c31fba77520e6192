"""The daily schedule's workspaces on the production instance: deploy/dagster.yaml as shipped (on
PostgreSQL, a run queue of at most 8 runs and one per workspace), the real scheduler daemon, into
a marketplace registry on PostgreSQL with several workers. Wall time, runs per minute, and how
long runs waited in the queue."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from unittest import mock

import dagster as dg

from benchmarks.environment import ROOT, Bench, write_config
from benchmarks.workspaces import spread_sources, spread_workspaces
from harness.local_dagster import DagsterServices
from harness.local_servers import LocalServer
from marketplace_dagster.partitions import WORKSPACE_TAG

SCHEDULE = "daily_marketplace_schedule"
RUNS = """
query($tags: [ExecutionTag!]) {
  runsOrError(filter: {tags: $tags}, limit: 1000) {
    __typename
    ... on Runs { results { runId status creationTime startTime endTime tags { key value } } }
    ... on PythonError { message }
  }
}"""
FINISHED = {"SUCCESS", "FAILURE", "CANCELED"}
# Long enough for the webserver and daemon to load the code location on a busy machine.
FIRST_TICK_AFTER = dt.timedelta(minutes=3)
STOPPED = {"default_status": "stopped"}


def bench_schedule_queue(
    bench: Bench,
    sources: list[LocalServer],
    count: int,
    models_per_workspace: int,
    folder: Path,
    timeout: float = 3600,
) -> dict:
    """One tick of the daily schedule over `count` workspaces, every run through the queue; the row
    of the report. The schedule stays daily, its minute moved to a few minutes from now: Dagster
    dedupes a schedule's run keys per tick only, so a cron of every minute would ask again for
    every workspace each minute."""
    market = bench.server("sched_market", postgres=True)
    bench.start_all([market])
    postgres = bench.postgres()
    database = "dagster_schedule"
    postgres.create_database(database)
    home = folder / "sched_home"
    home.mkdir()
    shutil.copy(ROOT / "deploy" / "dagster.yaml", home / "dagster.yaml")
    config = write_config(
        folder / "schedule.yaml",
        folder / "sched_storage",
        market,
        spread_workspaces("s", count, sources, models_per_workspace),
        schedule={"cron": _daily_cron_in(FIRST_TICK_AFTER), "default_status": "running"},
        sensor=STOPPED,
        freshness=STOPPED,
        checks=STOPPED,
        housekeeping=STOPPED,
        automation=STOPPED,
    )
    services = DagsterServices(config, home, env=postgres.dagster_env(database))
    try:
        services.wait_until_loaded()
        runs = _wait_for_one_tick(services, count, timeout)
    finally:
        services.stop()
    _attach_dequeued(home, postgres.dagster_env(database), runs)
    row = {"workspaces": count, "registry": f"postgresql, {market.workers} workers", **_row(runs)}
    print(
        f"  schedule over {count} workspaces: {row['wall_seconds']:.0f} s, "
        f"{row['runs_per_minute']} runs/min, queue wait p50 {row['queue_wait_p50_seconds']} s",
        file=sys.__stdout__,
        flush=True,
    )
    bench.stop_all()
    return row


def _wait_for_one_tick(services: DagsterServices, count: int, timeout: float) -> list[dict]:
    """The runs of the schedule's one tick, once each workspace has a successful run and none is
    still queued or running (a retried run counts with its retry)."""
    deadline = time.monotonic() + timeout
    while True:
        found = services.query(
            RUNS, {"tags": [{"key": "dagster/schedule_name", "value": SCHEDULE}]}
        )
        runs = found["runsOrError"].get("results")
        if runs is None:
            raise RuntimeError(f"the runs could not be read: {found['runsOrError']}")
        for run in runs:
            run["tags"] = {t["key"]: t["value"] for t in run["tags"]}
        # One tick: the cron is daily, and this waits at most an hour.
        succeeded = {r["tags"][WORKSPACE_TAG] for r in runs if r["status"] == "SUCCESS"}
        pending = [r for r in runs if r["status"] not in FINISHED]
        if len(succeeded) == count and not pending:
            return runs
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"after {timeout:.0f} s, {len(succeeded)} of {count} workspaces synced, "
                f"{len(pending)} runs pending; daemon log:\n"
                f"{services.daemon_log.read_text(errors='replace')[-3000:]}"
            )
        time.sleep(2)


def _attach_dequeued(home: Path, env: dict[str, str], runs: list[dict]) -> None:
    """When the queue let each run go: its RUN_STARTING event, which the daemon reports as it hands
    the run to the launcher."""
    # deploy/dagster.yaml reads its connection from the environment as it loads.
    with mock.patch.dict(os.environ, env), dg.DagsterInstance.from_config(str(home)) as instance:
        for run in runs:
            found = instance.get_records_for_run(
                run["runId"], of_type=dg.DagsterEventType.RUN_STARTING, limit=1
            ).records
            run["dequeuedTime"] = found[0].timestamp if found else None


def _daily_cron_in(delay: dt.timedelta) -> str:
    """A daily cron at the minute `delay` from now (UTC)."""
    at = dt.datetime.now(dt.UTC) + delay
    return f"{at.minute} {at.hour} * * *"


def _row(runs: list[dict]) -> dict:
    """Wall time from the first run's creation to the last one's end, throughput, the queue's
    wait (creation to dequeue), each run process's start (dequeue to start), and the queue's
    limits as they held."""
    created = min(r["creationTime"] for r in runs)
    wall = max(r["endTime"] for r in runs) - created
    waits = sorted(r["dequeuedTime"] - r["creationTime"] for r in runs if r["dequeuedTime"])
    launches = [
        r["startTime"] - r["dequeuedTime"] for r in runs if r["dequeuedTime"] and r["startTime"]
    ]
    by_workspace = defaultdict(list)
    for run in runs:
        by_workspace[run["tags"][WORKSPACE_TAG]].append(run)
    return {
        "runs": len(runs),
        "failed_runs": sum(r["status"] != "SUCCESS" for r in runs),
        "wall_seconds": round(wall, 1),
        "runs_per_minute": round(len(runs) / (wall / 60), 1),
        # How long the scheduler took to ask for every run of its tick.
        "submit_seconds": round(max(r["creationTime"] for r in runs) - created, 1),
        "queue_wait_p50_seconds": round(statistics.median(waits), 1),
        "queue_wait_p95_seconds": round(waits[int(0.95 * (len(waits) - 1))], 1),
        "queue_wait_max_seconds": round(waits[-1], 1),
        # The run launcher's new process, from dequeue until the run's first event.
        "process_start_p50_seconds": round(statistics.median(launches), 1),
        "run_seconds_p50": round(
            statistics.median(r["endTime"] - r["startTime"] for r in runs if r["startTime"]), 1
        ),
        "most_runs_at_once": _most_at_once(runs),
        "most_runs_of_one_workspace_at_once": max(
            _most_at_once(rs) for rs in by_workspace.values()
        ),
    }


def _most_at_once(runs: list[dict]) -> int:
    """The most of `runs` running at one moment, from their start and end times."""
    events = sorted(
        [(r["startTime"], 1) for r in runs if r["startTime"]]
        + [(r["endTime"], -1) for r in runs if r["startTime"]]
    )  # at a tie, an end (-1) sorts before a start: back-to-back runs do not overlap
    most = running = 0
    for _, step in events:
        running += step
        most = max(most, running)
    return most


def main(argv: list[str] | None = None) -> int:
    """`python -m benchmarks.schedule_queue [WORKSPACES]`: this item alone, on its own servers."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workspaces", type=int, nargs="?", default=65)
    parser.add_argument("--models-per-workspace", type=int, default=3)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="marketplace-bench-") as tmp:
        bench = Bench(Path(tmp))
        try:
            sources = spread_sources(bench, args.workspaces, args.models_per_workspace)
            row = bench_schedule_queue(
                bench, sources, args.workspaces, args.models_per_workspace, Path(tmp)
            )
        finally:
            bench.close()
    print(json.dumps(row, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
