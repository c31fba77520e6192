"""Section 1 of the `make bench` report: the same work two ways, bare mlflow-export-import (as
the seed's notebooks used it, workspace after workspace) against the marketplace's sync, from
the same source servers and models into fresh marketplaces; then the idle cycle, the default
pool of threads and a warm run worker at one size each."""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from mlflow import MlflowClient

from benchmarks.environment import Bench, dagster_home, fresh_marketplace, today, write_config
from benchmarks.runs import materialize_partitions, materialize_partitions_warm, scan_exports
from benchmarks.sampling import BusySampler, cpu_seconds, own_cpu, postgres_cpu
from harness.seeding import model_names, seed_production
from marketplace.registry import process_tracking_uri


def bench_sync_vs_bare(
    bench: Bench,
    workspaces: int,
    models: list[int],
    folder: Path,
    pool_at: int | None = None,
    warm_at: int | None = None,
    repeat_at: int | None = None,
    repeats: int = 1,
    postgres: bool = False,
) -> list[dict]:
    """Item 1: bare mlflow-export-import vs the marketplace, same servers and models, fresh
    marketplaces (both on SQLite, or both on PostgreSQL with several workers); at `repeat_at`
    models, `repeats` pairs on fresh servers, the median pair kept (this machine's speed drifts
    from minute to minute: one pair can be 20 % off)."""
    rows = []
    for count in models:
        pair = functools.partial(_sync_pair, bench, workspaces, count, folder, postgres=postgres)
        pairs = [pair(pool=count == pool_at, warm=count == warm_at)]
        if count == repeat_at:
            pairs += [pair(suffix=f"r{k}") for k in range(1, repeats)]
        row = sorted(pairs, key=lambda r: r["ratio"])[(len(pairs) - 1) // 2]
        rows.append(
            {
                **row,
                "ratio_runs": " ".join(str(r["ratio"]) for r in pairs),
                # Measured once per size, with its first pair.
                **{k: pairs[0][k] for k in (*POOL_KEYS, *WARM_KEYS)},
            }
        )
    return rows


POOL_KEYS = ("pool_of_4_seconds", "pool_of_4_cpu_seconds_per_version")
WARM_KEYS = ("warm_worker_seconds", "warm_worker_ratio", "warm_worker_step_seconds_per_version")


def _sync_pair(
    bench: Bench,
    workspaces: int,
    count: int,
    folder: Path,
    *,
    pool: bool = False,
    warm: bool = False,
    suffix: str = "",
    postgres: bool = False,
) -> dict:
    """One bare sync and one marketplace sync of `workspaces` x `count` fresh models, and the idle
    cycle. The sources are on SQLite; the two marketplaces on PostgreSQL when `postgres`."""
    from mlflow_export_import.bulk.export_models import export_models
    from mlflow_export_import.bulk.import_models import import_models

    tag = f"{'pg' if postgres else ''}{count}{suffix}"
    sources = [bench.server(f"src{tag}_{k}") for k in range(workspaces)]
    bare_market = bench.server(f"bare{tag}", postgres=postgres)
    our_market = bench.server(f"market{tag}", postgres=postgres)

    def servers_cpu(servers) -> float:
        """The servers' CPU so far, and the database server's when the marketplaces use one."""
        return cpu_seconds(servers) + (postgres_cpu(bench.postgres().data) if postgres else 0.0)

    bench.start_all(sources + [bare_market, our_market])
    names = model_names(count)
    for source in sources:
        seed_production(source.uri, names)
    for server, expected in [*((s, count) for s in sources), (bare_market, 0), (our_market, 0)]:
        found = len(MlflowClient(server.uri).search_registered_models(max_results=1000))
        if found != expected:
            raise RuntimeError(
                f"{server.name} ({server.uri}) holds {found} models after seeding, not {expected}"
            )
    ws_names = [f"ws{k}" for k in range(workspaces)]
    # Every marketplace of this pair (and the pool's and the warm worker's) syncs the same sources.
    ws_config = [
        {"name": n, "tracking_uri": s.uri, "production": {"stage": "Production"}}
        for n, s in zip(ws_names, sources)
    ]
    partitions = [f"{today().isoformat()}|{n}" for n in ws_names]  # the day after seeding

    out = folder / f"bare{tag}"
    bare_cpu = -own_cpu() - servers_cpu(sources + [bare_market])
    started = time.perf_counter()
    for name, source in zip(ws_names, sources):
        with process_tracking_uri(source.uri):
            export_models(
                model_names=names,
                output_dir=str(out / name),
                stages="Production",
                use_threads=False,
                mlflow_client=MlflowClient(source.uri),
            )
        with process_tracking_uri(bare_market.uri):
            import_models(
                input_dir=str(out / name),
                delete_model=False,
                model_renames={n: f"{name}.{n}" for n in names},
                import_source_tags=True,
                use_threads=False,
                mlflow_client=MlflowClient(bare_market.uri),
            )
    bare_seconds = time.perf_counter() - started
    bare_cpu += own_cpu() + servers_cpu(sources + [bare_market])
    bare_versions = len(MlflowClient(bare_market.uri).search_model_versions(max_results=10000))

    config = write_config(
        folder / f"sync{tag}.yaml",
        folder / f"storage{tag}",
        our_market,
        ws_config,
    )
    home = dagster_home(folder / f"sync{tag}")
    servers_before = servers_cpu(sources + [our_market])
    with BusySampler(our_market) as busy:
        wall, runs = materialize_partitions(config, home, partitions, parallel=workspaces)
    our_servers_cpu = servers_cpu(sources + [our_market]) - servers_before
    our_versions = len(MlflowClient(our_market.uri).search_model_versions(max_results=10000))
    if (bare_versions, our_versions) != (count * workspaces,) * 2:
        raise RuntimeError(
            f"expected {count * workspaces} versions each, bare {bare_versions}, ours "
            f"{our_versions}"
        )
    scan = scan_exports(folder / f"storage{tag}")
    idle_wall, _idle_runs = materialize_partitions(config, home, partitions, parallel=workspaces)
    pooled = dict.fromkeys(POOL_KEYS, "")
    if pool:
        # The same sync with the default pool (client.max_workers 4) into another fresh marketplace.
        pool_market, pool_config, pool_home = fresh_marketplace(
            bench, f"pool{tag}", folder, ws_config, postgres=postgres, client={"max_workers": 4}
        )
        before = servers_cpu(sources + [pool_market])
        pool_wall, pool_runs = materialize_partitions(
            pool_config, pool_home, partitions, parallel=workspaces
        )
        pool_cpu = (
            sum(r["cpu_seconds"] for r in pool_runs) + servers_cpu(sources + [pool_market]) - before
        )
        pooled = {
            "pool_of_4_seconds": round(pool_wall, 2),
            "pool_of_4_cpu_seconds_per_version": round(pool_cpu / (count * workspaces), 3),
        }
    warmed = dict.fromkeys(WARM_KEYS, "")
    if warm:
        # The same sync into another fresh marketplace, each run forked from a warm process.
        warm_market, warm_config, warm_home = fresh_marketplace(
            bench, f"warm{tag}", folder, ws_config, postgres=postgres
        )
        warm_wall, warm_steps = materialize_partitions_warm(warm_config, warm_home, partitions)
        warm_versions = len(MlflowClient(warm_market.uri).search_model_versions(max_results=10000))
        if warm_versions != count * workspaces:
            raise RuntimeError(
                f"the warm worker's sync made {warm_versions} versions, not {count * workspaces}"
            )
        warmed = {
            "warm_worker_seconds": round(warm_wall, 2),
            "warm_worker_ratio": round(warm_wall / bare_seconds, 3),
            "warm_worker_step_seconds_per_version": round(warm_steps / (count * workspaces), 3),
        }
    row = {
        "registry": f"postgresql, {our_market.workers} workers" if postgres else "sqlite, 1 worker",
        "workspaces": workspaces,
        "models_per_workspace": count,
        "versions": count * workspaces,
        "bare_seconds": round(bare_seconds, 2),
        "marketplace_seconds": round(wall, 2),
        "ratio": round(wall / bare_seconds, 3),
        "seconds_per_version": round(wall / (count * workspaces), 3),
        "bare_cpu_seconds_per_version": round(bare_cpu / (count * workspaces), 3),
        "cpu_seconds_per_version": round(
            (sum(r["cpu_seconds"] for r in runs) + our_servers_cpu) / (count * workspaces), 3
        ),
        "server_cpu_share": round(
            our_servers_cpu / (sum(r["cpu_seconds"] for r in runs) + our_servers_cpu), 3
        ),
        **busy.summary(),
        "step_seconds_per_version": round(
            sum(r["step_seconds"] for r in runs) / (count * workspaces), 3
        ),
        "marketplace_step_seconds": round(sum(r["step_seconds"] for r in runs), 2),
        # The steps' time against the bare tool's: what the work costs without the per-run start.
        "step_ratio": round(sum(r["step_seconds"] for r in runs) / bare_seconds, 3),
        # Dagster's part of the wall time: each run process's start and its event writes.
        "run_overhead_seconds_per_run": round(
            sum(r["overhead_seconds"] for r in runs) / len(runs), 2
        ),
        "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
        "idle_seconds": round(idle_wall, 2),
        **pooled,
        **warmed,
        "scan_seconds_per_model": round(scan["seconds"] / max(1, scan["exports"]), 4),
        "scan_share_of_sync": round(scan["seconds"] / wall, 4),
    }
    print(
        f"  {workspaces} x {count} ({row['registry']}): bare {bare_seconds:.1f} s, marketplace "
        f"{wall:.1f} s, ratio {row['ratio']}, steps / bare {row['step_ratio']}",
        file=sys.__stdout__,
        flush=True,
    )
    bench.stop_all()
    return row


def main(argv: list[str] | None = None) -> int:
    """`python -m benchmarks.sync_vs_bare [--postgres] [--models 50 100] [--repeats 3]`: this item
    alone, on servers of its own."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--postgres", action="store_true", help="marketplaces on PostgreSQL")
    parser.add_argument("--workspaces", type=int, default=3)
    parser.add_argument("--models", type=int, nargs="+", default=[50])
    parser.add_argument("--repeats", type=int, default=1, help="pairs at the first size")
    args = parser.parse_args(argv)
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # as make bench
    with tempfile.TemporaryDirectory(prefix="marketplace-bench-") as tmp:
        bench = Bench(Path(tmp))
        try:
            rows = bench_sync_vs_bare(
                bench,
                args.workspaces,
                args.models,
                Path(tmp),
                repeat_at=args.models[0],
                repeats=args.repeats,
                postgres=args.postgres,
            )
        finally:
            bench.close()
    print(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
