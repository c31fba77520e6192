"""A backfill of the last N days x every demo workspace, launched through GraphQL; wall time and runs.

Run `make demo` first, then: .venv/bin/python -m benchmarks.backfill 30
It starts its own `dagster dev` (webserver and daemon) with a temporary DAGSTER_HOME.
"""

from __future__ import annotations

import datetime as dt
import sys
import tempfile
import time
from pathlib import Path

from marketplace.assets import CHAIN
from marketplace.config import load_config
from marketplace.local_dagster import DagsterDev



def main(days: int) -> None:
    config = load_config()
    today = dt.datetime.now(dt.timezone.utc).date()
    dates = [today - dt.timedelta(days=n) for n in range(days - 1, -1, -1)]
    partitions = [f"{d.isoformat()}|{w.name}" for d in dates for w in config.workspaces]
    with tempfile.TemporaryDirectory() as tmp:
        dev = DagsterDev(config.path, Path(tmp) / "dagster_home", cwd=config.path.parent)
        try:
            dev.wait_until_loaded()
            for attempt in ("first", "again"):
                started = time.perf_counter()
                status = dev.backfill(partitions, [k.path for k in CHAIN])
                elapsed = time.perf_counter() - started
                statuses = sorted({r["status"] for r in status["runs"]})
                print(
                    f"{attempt}: {len(dates)} days x {len(config.workspaces)} workspaces = {len(partitions)} partitions: "
                    f"{elapsed:.0f} s wall, {len(status['runs'])} runs ({', '.join(statuses)}), backfill {status['status']}"
                )
        finally:
            dev.stop()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 30)
