"""Where a sync's time goes: one workspace's partition synced in this process under cProfile,
against fresh local servers, then the top costs per model.

    .venv/bin/python -m benchmarks.profile_sync [MODELS] [--out FILE.pstats] [--idle]

Prints the functions with the most time of their own, and the time spent per area (our code,
MLflow, mlflow-export-import, Dagster, Delta, HTTP and sockets, the rest), each per model. The
run process's start-up (a few seconds a run) is not in it: this is the steps' own work.
cProfile sees the main thread only: work in a step's thread pools (registration's calls) shows
as the main thread's wait for them ("builtins").
"""

from __future__ import annotations

import argparse
import cProfile
import datetime as dt
import pstats
import re
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import dagster as dg
import requests
import requests.adapters

from benchmarks.environment import Bench, write_config
from harness.seeding import model_names, seed_production
from marketplace.config import load_config
from marketplace_dagster.definitions import build_definitions
from marketplace_dagster.partitions import partition_key

AREAS = [  # first match wins: a path fragment, and the area it counts for
    ("/marketplace/", "marketplace"),
    ("/marketplace_dagster/", "marketplace_dagster"),
    ("mlflow_export_import", "mlflow-export-import"),
    ("/mlflow/", "mlflow"),
    ("/dagster", "dagster"),
    ("deltalake", "delta-rs"),
    ("pyarrow", "pyarrow"),
    ("modelscan", "modelscan"),
    ("model_signing", "signing"),
    ("urllib3", "http"),
    ("requests", "http"),
    ("socket", "http"),
    ("ssl", "http"),
    ("sklearn", "scikit-learn"),
]


def area_of(filename: str) -> str:
    if filename.startswith(("~", "<")):
        return "builtins (C calls, sleeps, waits)"
    return next((area for fragment, area in AREAS if fragment in filename), "other Python")


def _endpoint(request) -> str:
    """`GET /api/2.0/mlflow/runs/get`: a request's method and path, artifact paths cut short."""
    path = request.path_url.split("?", 1)[0]
    path = re.sub(r"/mlflow-artifacts/artifacts/.*", "/mlflow-artifacts/artifacts/...", path)
    path = re.sub(r"/logged-models/m-[0-9a-f]+", "/logged-models/{id}", path)
    return f"{request.method} {path}"


def _caller() -> str:
    """The innermost function of ours on the stack: who made a request."""
    frame = sys._getframe(2)
    while frame is not None:
        name = frame.f_code.co_filename
        if (
            "/marketplace/" in name or "/marketplace_dagster/" in name
        ) and "telemetry.py" not in name:
            return f"{Path(name).stem}.{frame.f_code.co_name}"
        frame = frame.f_back
    return "?"


class _Requests:
    """Every HTTP request this process sends (all threads), counted and timed by endpoint. With
    one worker the time is the server's answer; with more it includes the wait for a turn."""

    def __init__(self):
        self.counts: dict[str, int] = defaultdict(int)
        self.seconds: dict[str, float] = defaultdict(float)
        self.callers: dict[str, int] = defaultdict(int)
        self._send = requests.adapters.HTTPAdapter.send

    def __enter__(self):
        counts, seconds, callers, send = self.counts, self.seconds, self.callers, self._send

        def counted(adapter, request, *args, **kwargs):
            endpoint = _endpoint(request)
            counts[endpoint] += 1
            callers[f"{endpoint} <- {_caller()}"] += 1
            started = time.perf_counter()
            try:
                return send(adapter, request, *args, **kwargs)
            finally:
                seconds[endpoint] += time.perf_counter() - started

        requests.adapters.HTTPAdapter.send = counted
        return self

    def __exit__(self, *exc):
        requests.adapters.HTTPAdapter.send = self._send


def profile(
    models: int,
    folder: Path,
    out: Path | None = None,
    workers: int = 4,
    plain: bool = False,
    on_disk: bool = False,
    idle: bool = False,
) -> dict:
    bench = Bench(folder)
    try:
        market, source = bench.server("market"), bench.server("ws")
        bench.start_all([market, source])
        seed_production(source.uri, model_names(models))
        config = load_config(
            write_config(
                folder / "marketplace.yaml",
                folder / "storage",
                market,
                [{"name": "ws", "tracking_uri": source.uri, "production": {"stage": "Production"}}],
                client={"max_workers": workers},
            )
        )
        job = build_definitions(config).resolve_job_def("marketplace_sync_job")
        today = dt.datetime.now(dt.UTC).date()
        (folder / "dagster_home").mkdir(exist_ok=True)
        with (
            dg.DagsterInstance.local_temp(str(folder / "dagster_home"))
            if on_disk
            else dg.DagsterInstance.ephemeral()
        ) as instance:
            if (
                idle
            ):  # the sync first, untimed: what is profiled is the cycle that finds nothing new
                job.execute_in_process(
                    partition_key=partition_key(today, "ws"), instance=instance, raise_on_error=True
                )
            profiler = cProfile.Profile()
            started = time.perf_counter()
            with _Requests() as sent:
                if not plain:
                    profiler.enable()
                result = job.execute_in_process(
                    partition_key=partition_key(today, "ws"), instance=instance, raise_on_error=True
                )
                profiler.disable()
            wall = time.perf_counter() - started
        assert result.success
        steps = {}
        for event in result.all_events:
            if event.event_type_value == "STEP_SUCCESS":
                steps[event.step_key] = round(event.event_specific_data.duration_ms / 1000, 2)
    finally:
        bench.close()
    if plain:
        profiler.enable()  # an empty profile: the tables below come out empty
        profiler.disable()
    stats = pstats.Stats(profiler)
    if out:
        stats.dump_stats(str(out))
    own: dict[str, float] = defaultdict(float)
    functions = []
    for (filename, line, name), (_, _, tottime, cumtime, _) in stats.stats.items():
        own[area_of(filename)] += tottime
        functions.append(
            (tottime, cumtime, f"{Path(filename).name}:{line} {name}", area_of(filename))
        )
    functions.sort(reverse=True)
    return {
        "models": models,
        "workers": workers,
        "wall_seconds": round(wall, 2),
        "step_seconds": steps,
        "seconds_per_model": round(wall / models, 3),
        "own_seconds_per_model_by_area": {
            k: round(v / models, 4) for k, v in sorted(own.items(), key=lambda kv: -kv[1])
        },
        "requests_per_model": round(sum(sent.counts.values()) / models, 1),
        "requests_per_model_by_endpoint": {
            k: round(v / models, 2) for k, v in sorted(sent.counts.items(), key=lambda kv: -kv[1])
        },
        "request_seconds_per_model": round(sum(sent.seconds.values()) / models, 3),
        "request_ms_by_endpoint": {
            k: round(1000 * sent.seconds[k] / sent.counts[k], 1)
            for k in sorted(sent.counts, key=lambda k: -sent.seconds[k])
        },
        "requests_per_model_by_caller": {
            k: round(v / models, 2) for k, v in sorted(sent.callers.items(), key=lambda kv: -kv[1])
        },
        "top_functions_per_model": [
            {
                "function": f,
                "area": a,
                "own_s": round(t / models, 4),
                "cumulative_s": round(c / models, 4),
            }
            for t, c, f, a in functions[:25]
        ],
    }


def main() -> None:
    import json

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("models", type=int, nargs="?", default=20)
    parser.add_argument(
        "--out", type=Path, default=None, help="write the raw profile (pstats) here"
    )
    parser.add_argument("--workers", type=int, default=4, help="client.max_workers")
    parser.add_argument(
        "--plain", action="store_true", help="no cProfile: wall and step times as they are"
    )
    parser.add_argument(
        "--on-disk",
        action="store_true",
        help="a Dagster instance on disk (SQLite), as a deployment has",
    )
    parser.add_argument(
        "--idle",
        action="store_true",
        help="profile the idle cycle: a second sync that finds nothing new",
    )
    parser.add_argument(
        "--save", default=None, help="also write it to benchmarks/profiles/SAVE.json"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="marketplace-profile-") as tmp:
        found = profile(
            args.models, Path(tmp), args.out, args.workers, args.plain, args.on_disk, args.idle
        )
    print(json.dumps(found, indent=1))
    if args.save:
        (Path(__file__).parent / "profiles" / f"{args.save}.json").write_text(
            json.dumps(found, indent=1)
        )


if __name__ == "__main__":
    main()
