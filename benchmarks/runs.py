"""Runs of marketplace_sync_job driven as the run launcher starts them (a process per
partition), and what they cost: wall, CPU and peak memory per run, split by Dagster's event log
into the steps' time, the registries' share of it, and Dagster's own overhead."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import dagster as dg

from benchmarks.environment import ROOT
from benchmarks.sampling import vm_hwm_kb
from harness.local_dagster import instance_env, sync_job_command
from marketplace_dagster.partitions import split_partition_key


def materialize_partitions(
    config_path: Path, home: Path, partitions: list[str], parallel: int
) -> tuple[float, list[dict]]:
    """One `dagster job execute` process of marketplace_sync_job per partition (the job the
    sensor and schedule request, in a process of its own as the run launcher starts it),
    `parallel` at a time; returns wall time and per-run timings."""
    env = instance_env(config_path, home)

    def one(partition: str) -> dict:
        started = time.perf_counter()
        with tempfile.TemporaryFile() as output:
            process = subprocess.Popen(
                sync_job_command(*split_partition_key(partition)),
                env=env,
                cwd=config_path.parent,
                stdout=output,
                stderr=subprocess.STDOUT,
            )
            # Its peak resident set is its VmHWM, read until it exits: wait4's ru_maxrss counts the
            # moment between fork and exec, when the child still maps this (large) process.
            peak = 0
            while True:
                peak = max(peak, vm_hwm_kb(process.pid))
                pid, status, usage = os.wait4(process.pid, os.WNOHANG)
                if pid:
                    break
                time.sleep(0.1)
            process.returncode = os.waitstatus_to_exitcode(status)
            cpu = usage.ru_utime + usage.ru_stime
            if process.returncode != 0:
                output.seek(0)
                raise RuntimeError(
                    f"{partition} failed:\n{output.read().decode(errors='replace')[-4000:]}"
                )
        return {
            "partition": partition,
            "wall_seconds": time.perf_counter() - started,
            "peak_rss_mb": round(peak / 1024),
            "cpu_seconds": cpu,
        }

    started = time.perf_counter()
    with ThreadPoolExecutor(parallel) as pool:
        runs = list(pool.map(one, partitions))
    wall = time.perf_counter() - started
    _attach_step_times(home, runs)
    return wall, runs


def materialize_partitions_warm(
    config_path: Path, home: Path, partitions: list[str]
) -> tuple[float, float]:
    """The same partitions, all at once, each in a process forked from one that has imported
    everything already (benchmarks.warm_worker): the seconds from the first fork to the last
    exit, and the runs' step seconds."""
    env = instance_env(config_path, home)
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.warm_worker", *partitions],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"the warm worker failed:\n{(done.stdout + done.stderr)[-4000:]}")
    runs = [{"partition": p, "wall_seconds": 0.0} for p in partitions]
    _attach_step_times(home, runs)
    return json.loads(done.stdout.strip().splitlines()[-1])["seconds"], sum(
        r["step_seconds"] for r in runs
    )


def _attach_step_times(home: Path, runs: list[dict]) -> None:
    """Split each run's wall time into its steps' time and Dagster's own overhead."""
    with dg.DagsterInstance.from_config(str(home)) as instance:
        by_partition = {}
        for record in instance.get_run_records(limit=len(runs) * 3):
            by_partition.setdefault(record.dagster_run.tags.get("dagster/partition"), record)
        for run in runs:
            record = by_partition.get(run["partition"])
            steps = (
                instance.get_records_for_run(record.dagster_run.run_id).records if record else []
            )
            started, step_seconds, registry_seconds = {}, 0.0, 0.0
            for entry in steps:
                event = entry.event_log_entry.dagster_event
                if event is None:
                    continue
                if event.event_type_value == "STEP_START":
                    started[event.step_key] = entry.event_log_entry.timestamp
                elif (
                    event.event_type_value in ("STEP_SUCCESS", "STEP_FAILURE")
                    and event.step_key in started
                ):
                    step_seconds += entry.event_log_entry.timestamp - started[event.step_key]
                registry_seconds += _registry_seconds(event)
            run["step_seconds"] = step_seconds
            run["registry_seconds"] = registry_seconds
            run["overhead_seconds"] = run["wall_seconds"] - step_seconds


def _registry_seconds(event) -> float:
    """What a step's materialization or check reported waiting on the registries (telemetry.py)."""
    if event.event_type_value == "ASSET_MATERIALIZATION":
        metadata = event.event_specific_data.materialization.metadata
    elif event.event_type_value == "ASSET_CHECK_EVALUATION":
        metadata = event.event_specific_data.metadata
    else:
        return 0.0
    value = metadata.get("registry_seconds")
    return float(value.value) if value is not None else 0.0


def scan_exports(storage: Path) -> dict:
    """Every export folder a sync left under `storage`, scanned again as the imports step scans
    it, alone: total seconds."""
    from marketplace.scanning import scan_folder

    folders = [m.parent for m in (storage / "exports").rglob("manifest.json")]
    started = time.perf_counter()
    files = sum(scan_folder(f).files_scanned for f in folders)
    return {"exports": len(folders), "files": files, "seconds": time.perf_counter() - started}
