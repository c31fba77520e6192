"""The benchmark suite: what a sync costs, side by side with the bare export tool it replaces.

`make bench` runs it at full size and writes benchmarks/results.json and BENCHMARKS.md;
`python -m benchmarks.run --smoke --out DIR` runs it tiny (the test suite does, so it cannot rot).
It starts its own MLflow servers in a temporary folder and seeds its own models.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.backfill import bench_backfill
from benchmarks.catalog import bench_catalog
from benchmarks.environment import ROOT, Bench
from benchmarks.gate import bench_gate
from benchmarks.large_models import bench_large_artifact
from benchmarks.propagation import bench_propagation
from benchmarks.report import report
from benchmarks.sandbox import bench_sandbox
from benchmarks.schedule_queue import bench_schedule_queue
from benchmarks.sync_vs_bare import bench_sync_vs_bare
from benchmarks.targets import targets
from benchmarks.workspaces import bench_workspaces, spread_sources


def _log_to(path: Path) -> None:
    """MLflow's, mlflow-export-import's and Dagster's logs (and warnings) of the benchmark go to
    `path`; the terminal shows one progress line per item."""
    import logging

    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for name in ("", "mlflow", "mlflow_export_import", "dagster", "alembic", "py.warnings"):
        logger = logging.getLogger(name)
        for old in list(logger.handlers):
            logger.removeHandler(old)
        logger.addHandler(handler)
        logger.propagate = name == ""
    logging.getLogger().setLevel(logging.INFO)
    logging.captureWarnings(True)
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"


class _Progress:
    """`[n/total] item ... done in s` lines on the terminal, flushed as they happen, while
    everything else the items print (MLflow's run links, mlflow-export-import's tables, Dagster's
    sensor logs) goes to the log file."""

    def __init__(self, total: int, log: Path):
        self.total, self.done, self.started = total, 0, time.perf_counter()
        self.terminal = sys.stdout
        self.log = open(log, "a", encoding="utf-8")  # noqa: SIM115 - open for the whole run

    def __call__(self, name: str):
        import contextlib

        @contextlib.contextmanager
        def item():
            self.done += 1
            began = time.perf_counter()
            print(f"[{self.done}/{self.total}] {name} ...", file=self.terminal, flush=True)
            with contextlib.redirect_stdout(self.log), contextlib.redirect_stderr(self.log):
                yield
            print(
                f"[{self.done}/{self.total}] {name}: done in {time.perf_counter() - began:.0f} s "
                f"({time.perf_counter() - self.started:.0f} s so far)",
                file=self.terminal,
                flush=True,
            )

        return item()


ITEMS = 11


def headline_ratios(results: dict, size: int) -> dict:
    """sync_ratio (the PostgreSQL registry's pair at `size` models per workspace, else its
    largest), its SQLite counterpart, and every size's ratio."""

    def at_size(rows: list[dict]) -> dict:
        return next((r for r in rows if r["models_per_workspace"] == size), rows[-1])

    postgres, sqlite = results["sync_vs_bare_postgres"], results["sync_vs_bare"]
    return {
        "sync_ratio": at_size(postgres)["ratio"],
        "sync_ratio_sqlite": at_size(sqlite)["ratio"],
        "sync_ratio_by_size": {
            f"{r['workspaces']}x{r['models_per_workspace']} {r['registry'].split(',')[0]}": r[
                "ratio"
            ]
            for r in sqlite + postgres
        },
        # Not a target: what the smallest sync would take with a warm run worker (see the report).
        "small_sync_warm_worker_ratio": sqlite[0]["warm_worker_ratio"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, for the test suite")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks", help="results.json and the plots"
    )
    parser.add_argument(
        "--report",
        type=Path,
        default=None,
        help="the markdown report (default BENCHMARKS.md at the root; with --smoke, in --out)",
    )
    args = parser.parse_args(argv)
    smoke = args.smoke
    # The marketplace's clients do not print a URL per run (MLflow reads the run again to print
    # it): the bare tool gets the same setting, so that it is not slowed by what ours avoids.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    sizes = {
        "workspaces": 3 if not smoke else 2,
        # Into marketplaces on SQLite (one worker), then on PostgreSQL (POSTGRES_WORKERS).
        "models": [5, 20, 50, 100] if not smoke else [2, 3],
        "postgres_models": [50, 100] if not smoke else [2],
        # The headline size (sync_ratio, on PostgreSQL) is measured in this many pairs, the
        # median kept.
        "repeat_at": 50 if not smoke else 2,
        "repeats": 3 if not smoke else 2,
        "spread": [3, 10, 30, 65] if not smoke else [2, 3],
        "models_per_workspace": 3 if not smoke else 1,
        "large_bytes": 1024**3 if not smoke else 8 * 1024**2,
        "large_model_bytes": 4 * 1024**3 if not smoke else 8 * 1024**2,
        "large_model_files": 4,
        "backfill_days": 10 if not smoke else 2,
        "catalog": [10, 20] if not smoke else [2, 3],
        "gate": [10_000, 3] if not smoke else [500, 1],
        "propagation_changes": 10 if not smoke else 2,
        "sandbox_repeats": 20 if not smoke else 3,
    }
    results: dict = {
        "command": "make bench" if not smoke else "python -m benchmarks.run --smoke",
        "generated_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {
            "cores": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "sizes": sizes,
        "notes": {
            "workspaces": (
                f"Up to {max(sizes['spread'])} workspaces share 3 tracking servers here (round "
                f"robin), each workspace owning {sizes['models_per_workspace']} model(s) of its "
                "server."
            )
        },
    }
    log = args.out / "bench.log"
    _log_to(log)
    print(
        f"make bench: {ITEMS} items, about {'60-120 minutes' if not smoke else 'a few minutes'}; "
        f"MLflow and Dagster logs in {log}",
        flush=True,
    )
    step = _Progress(ITEMS, log)
    with tempfile.TemporaryDirectory(prefix="marketplace-bench-") as tmp:
        bench = Bench(Path(tmp))
        try:
            with step("sync vs the bare export tool, marketplace registry on PostgreSQL"):
                results["sync_vs_bare_postgres"] = bench_sync_vs_bare(
                    bench,
                    sizes["workspaces"],
                    sizes["postgres_models"],
                    Path(tmp),
                    repeat_at=sizes["repeat_at"],
                    repeats=sizes["repeats"],
                    postgres=True,
                )
            with step("sync vs the bare export tool, on SQLite, by models per workspace"):
                results["sync_vs_bare"] = bench_sync_vs_bare(
                    bench,
                    sizes["workspaces"],
                    sizes["models"],
                    Path(tmp),
                    pool_at=sizes["models"][1],
                    warm_at=sizes["models"][0],
                )
            results.update(headline_ratios(results, sizes["repeat_at"]))
            with step("by workspaces: a sync, a cycle with nothing new, a sensor tick"):
                sources = spread_sources(bench, max(sizes["spread"]), sizes["models_per_workspace"])
                results["workspaces"], results["sensor_tick"] = bench_workspaces(
                    bench, sources, sizes["spread"], sizes["models_per_workspace"], Path(tmp)
                )
            with step("the daily schedule on the production instance (PostgreSQL, run queue)"):
                results["schedule_queue"] = bench_schedule_queue(
                    bench,
                    sources,
                    max(sizes["spread"]),
                    sizes["models_per_workspace"],
                    Path(tmp),
                )
            with step("a large artifact"):
                results["large_artifact"] = bench_large_artifact(
                    bench, sizes["large_bytes"], Path(tmp)
                )
            with step("a large sharded model, against the verified-copy floor"):
                results["large_model"] = bench_large_artifact(
                    bench, sizes["large_model_bytes"], Path(tmp), files=sizes["large_model_files"]
                )
            with step("a backfill"):
                results["backfill"] = bench_backfill(bench, sizes["backfill_days"], Path(tmp))
            with step("the catalog"):
                catalog_dir = Path(tmp) / "catalog"
                catalog_dir.mkdir()
                results["catalog"] = bench_catalog(catalog_dir, *sizes["catalog"])
            with step("the promotion gate's evaluation"):
                gate_dir = Path(tmp) / "gate"
                gate_dir.mkdir()
                results["gate"] = bench_gate(gate_dir, *sizes["gate"])
            with step("the sandbox: what loading a model there costs"):
                sandbox_dir = Path(tmp) / "sandbox"
                sandbox_dir.mkdir()
                results["sandbox"] = bench_sandbox(sizes["sandbox_repeats"], sandbox_dir)
            with step("propagation: a promotion or rollback until the marketplace serves it"):
                results["propagation"] = bench_propagation(
                    bench, sizes["propagation_changes"], Path(tmp)
                )
        finally:
            bench.close()
    results["targets"] = targets(results)
    report(
        results,
        args.out,
        args.report or (args.out / "BENCHMARKS.md" if smoke else ROOT / "BENCHMARKS.md"),
    )
    print(json.dumps(results["targets"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
