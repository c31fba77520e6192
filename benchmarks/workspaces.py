"""Sections 2 and 3 of the `make bench` report: how a sync, an idle cycle and a sensor tick grow
with the number of workspaces (3 to 65 workspaces sharing 3 servers, each owning its own models)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import dagster as dg

from benchmarks.environment import Bench, dagster_home, today, write_config
from benchmarks.runs import materialize_partitions
from harness.local_servers import LocalServer, stop
from harness.seeding import model_names, seed_production
from marketplace.config import load_config
from marketplace_dagster.definitions import build_definitions

SOURCES = 3


def spread_sources(bench: Bench, workspaces: int, models_per_workspace: int) -> list[LocalServer]:
    """SOURCES source servers, started, seeded with enough models for `workspaces` workspaces of
    `models_per_workspace` models each (see spread_workspaces)."""
    servers = [bench.server(f"spread_src{k}") for k in range(SOURCES)]
    bench.start_all(servers)
    names = model_names(-(-workspaces // SOURCES) * models_per_workspace)
    for server in servers:
        seed_production(server.uri, names)
    return servers


def spread_workspaces(
    prefix: str, count: int, servers: list[LocalServer], models_per_workspace: int
) -> list[dict]:
    """`count` workspaces over the seeded `servers`: workspace i lives on server i % 3 and owns the
    (i // 3)-th slice of its models, so that 65 workspaces share 3 servers without syncing one
    model twice."""
    names = model_names(-(-count // len(servers)) * models_per_workspace)
    return [
        {
            "name": f"{prefix}{i:02d}",
            "tracking_uri": servers[i % len(servers)].uri,
            "production": {"stage": "Production"},
            "include": names[
                (i // len(servers)) * models_per_workspace : (i // len(servers) + 1)
                * models_per_workspace
            ],
        }
        for i in range(count)
    ]


def bench_workspaces(
    bench: Bench,
    sources: list[LocalServer],
    counts: list[int],
    models_per_workspace: int,
    folder: Path,
) -> tuple[list[dict], list[dict]]:
    """Items 2 and 3: a sync, then an idle cycle, and a sensor tick over 3..65 workspaces sharing
    the seeded `sources` (spread_sources), each workspace with its own `models_per_workspace`
    models, into one marketplace (stopped at the end; the sources are left running)."""
    market = bench.server("idle_market")
    bench.start_all([market])
    cycle_rows, tick_rows = [], []
    for count in counts:
        workspaces = spread_workspaces(f"w{count}_", count, sources, models_per_workspace)
        config = write_config(
            folder / f"idle{count}.yaml", folder / f"idle_storage{count}", market, workspaces
        )
        home = dagster_home(folder / f"idle{count}")
        partitions = [f"{today().isoformat()}|{w['name']}" for w in workspaces]
        sync_wall, _sync_runs = materialize_partitions(
            config, home, partitions, parallel=2
        )  # first: sync everything
        wall, runs = materialize_partitions(
            config, home, partitions, parallel=2
        )  # then: nothing new
        cycle_rows.append(
            {
                "workspaces": count,
                "models": count * models_per_workspace,
                "sync_seconds": round(sync_wall, 2),
                "sync_seconds_per_workspace": round(sync_wall / count, 2),
                **_idle(wall, runs, count),
            }
        )
        sensor = build_definitions(load_config(config)).resolve_sensor_def(
            "production_version_sensor"
        )
        with dg.DagsterInstance.ephemeral() as instance:
            started = time.perf_counter()
            result = sensor(dg.build_sensor_context(instance=instance))
            tick = time.perf_counter() - started
        tick_rows.append(
            {
                "workspaces": count,
                "tick_seconds": round(tick, 3),
                "run_requests": len(result.run_requests or []),
            }
        )
        print(
            f"  {count} workspaces: sync {sync_wall:.1f} s, idle cycle {wall:.1f} s; tick "
            f"{tick:.2f} s",
            file=sys.__stdout__,
            flush=True,
        )
    stop(market)
    return cycle_rows, tick_rows


def _idle(wall: float, runs: list[dict], count: int) -> dict:
    """An idle cycle's costs, per workspace."""
    return {
        "idle_seconds": round(wall, 2),
        "idle_run_seconds_per_workspace": round(sum(r["wall_seconds"] for r in runs) / count, 2),
        "registry_seconds_per_workspace": round(
            sum(r["registry_seconds"] for r in runs) / count, 3
        ),
        "other_step_seconds_per_workspace": round(
            sum(r["step_seconds"] - r["registry_seconds"] for r in runs) / count, 3
        ),
        "dagster_overhead_seconds_per_workspace": round(
            sum(r["overhead_seconds"] for r in runs) / count, 2
        ),
    }
