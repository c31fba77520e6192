"""Time one production_version_sensor tick over N workspaces spread over the demo's servers.

Run `make demo` first, then: .venv/bin/python -m benchmarks.sensor_tick 3 30 65
Several workspaces share one tracking server here (round robin over dev01..dev03).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import dagster as dg
import yaml

from benchmarks.demo_workspaces import demo_workspaces
from marketplace.config import load_config
from marketplace_dagster.definitions import build_definitions


def tick_seconds(count: int, folder: Path) -> tuple[float, int]:
    demo = load_config()
    raw = {
        "external_storage": {"uri": demo.storage_root},
        "marketplace": {"tracking_uri": demo.marketplace.tracking_uri},
        "workspaces": demo_workspaces(count),
    }
    path = folder / f"tick-{count}.yaml"
    path.write_text(yaml.safe_dump(raw))
    sensor = build_definitions(load_config(path)).resolve_sensor_def("production_version_sensor")
    with dg.DagsterInstance.ephemeral() as instance:
        started = time.perf_counter()
        result = sensor(dg.build_sensor_context(instance=instance))
        elapsed = time.perf_counter() - started
    return elapsed, len(result.run_requests or [])


def main(counts: list[int]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tick_seconds(1, Path(tmp))  # warm up imports and connections
        print("| workspaces | tick (s) | per workspace (ms) | run requests |")
        print("|---|---|---|---|")
        for count in counts:
            elapsed, requests = tick_seconds(count, Path(tmp))
            print(f"| {count} | {elapsed:.2f} | {1000 * elapsed / count:.1f} | {requests} |")


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [3, 30, 65])
