"""A backfill of the last N days x W workspaces, launched through GraphQL; wall time and runs.

Run `make demo` first, then: .venv/bin/python -m benchmarks.backfill DAYS [WORKSPACES]
Without WORKSPACES, the demo's three workspaces into the demo marketplace. With it, that many
workspaces spread round robin over the demo's source servers, into a marketplace server and
external storage of its own (the demo's marketplace is left alone). Each attempt starts its own
`dagster dev` (webserver and daemon) with a temporary DAGSTER_HOME, whose run queue allows
`--max-concurrent-runs` runs at once (Dagster's default is 10).

`make bench` runs the same through `bench_backfill`, on servers and models of its own.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import tempfile
import time
from pathlib import Path

import yaml

from benchmarks.demo_workspaces import demo_workspaces
from benchmarks.environment import Bench, today, write_config
from harness.local_dagster import DagsterDev
from harness.local_servers import LocalServer, free_port, start, stop
from harness.seeding import model_names, seed_production
from marketplace.config import load_config
from marketplace_dagster.keys import CHAIN


def _many_workspaces(count: int, folder: Path, marketplace_uri: str) -> Path:
    raw = {
        "start_date": (dt.datetime.now(dt.UTC).date() - dt.timedelta(days=60)).isoformat(),
        "external_storage": {"uri": str(folder / "external")},
        "marketplace": {"tracking_uri": marketplace_uri},
        "sensor": {"default_status": "stopped"},
        "schedule": {"default_status": "stopped"},
        "automation": {"default_status": "stopped"},
        "workspaces": demo_workspaces(count),
    }
    path = folder / f"backfill-{count}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def main(days: int, workspaces: int | None, max_concurrent_runs: int) -> None:
    with tempfile.TemporaryDirectory(prefix="marketplace-backfill-") as tmp:
        folder = Path(tmp)
        market = None
        if workspaces:
            market = LocalServer("backfill_market", folder / "market", free_port())
            start(market)
            config = load_config(_many_workspaces(workspaces, folder, market.uri))
        else:
            config = load_config()
        today = dt.datetime.now(dt.UTC).date()
        dates = [today - dt.timedelta(days=n) for n in range(days - 1, -1, -1)]
        partitions = [f"{d.isoformat()}|{w.name}" for d in dates for w in config.workspaces]
        home = folder / "dagster_home"
        home.mkdir()
        (home / "dagster.yaml").write_text(
            "telemetry:\n  enabled: false\nconcurrency:\n  runs:\n    max_concurrent_runs: "
            f"{max_concurrent_runs}\n"
        )
        dev = DagsterDev(config.path, home, cwd=config.base_dir)
        try:
            dev.wait_until_loaded()
            for attempt in ("first", "again"):
                started = time.perf_counter()
                status = dev.backfill(partitions, [k.path for k in CHAIN])
                elapsed = time.perf_counter() - started
                statuses = sorted({r["status"] for r in status["runs"]})
                print(
                    f"{attempt}: {len(dates)} days x {len(config.workspaces)} workspaces = "
                    f"{len(partitions)} partitions, at most {max_concurrent_runs} runs at once: "
                    f"{elapsed:.0f} s wall, {len(status['runs'])} runs ({', '.join(statuses)}), "
                    f"backfill {status['status']}",
                    flush=True,
                )
        finally:
            dev.stop()
            if market is not None:
                stop(market)


def bench_backfill(bench: Bench, days: int, folder: Path) -> dict:
    """`make bench`'s backfill: days x 3 workspaces of its own, launched through GraphQL and run by
    the daemon."""
    servers = [bench.server(f"bf_src{k}") for k in range(3)]
    market = bench.server("bf_market")
    bench.start_all(servers + [market])
    for server in servers:
        seed_production(server.uri, model_names(2))
    stopped = {"default_status": "stopped"}
    config = write_config(
        folder / "backfill.yaml",
        folder / "bf_storage",
        market,
        [
            {"name": f"bf{k}", "tracking_uri": s.uri, "production": {"stage": "Production"}}
            for k, s in enumerate(servers)
        ],
        schedule=stopped,
        freshness=stopped,
        checks=stopped,
        housekeeping=stopped,
        automation=stopped,
    )
    day = today()  # after seeding: a partition does not see versions registered after its day
    dates = [day - dt.timedelta(days=n) for n in range(days - 1, -1, -1)]
    partitions = [f"{d.isoformat()}|bf{k}" for d in dates for k in range(3)]
    dev = DagsterDev(config, folder / "bf_home", cwd=folder)
    try:
        dev.wait_until_loaded()
        started = time.perf_counter()
        status = dev.backfill(partitions, [k.path for k in CHAIN])
        wall = time.perf_counter() - started
    finally:
        dev.stop()
    row = {
        "days": days,
        "workspaces": 3,
        "partitions": len(partitions),
        "wall_seconds": round(wall, 1),
        "runs": len(status["runs"]),
        "status": status["status"],
    }
    print(
        f"  backfill {days} x 3: {wall:.0f} s, {row['runs']} runs", file=sys.__stdout__, flush=True
    )
    bench.stop_all()
    return row


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("days", type=int, nargs="?", default=30)
    parser.add_argument("workspaces", type=int, nargs="?", default=None)
    parser.add_argument("--max-concurrent-runs", type=int, default=10)
    args = parser.parse_args()
    main(args.days, args.workspaces, args.max_concurrent_runs)
