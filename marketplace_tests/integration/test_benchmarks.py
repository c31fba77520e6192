"""The benchmark suite, run tiny, so that it cannot rot (it never writes the committed report)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


# Eleven items, one through a real daemon waiting on its 20 s poll, every sync starting its sandbox:
# longer than the suite's 1200 s; the run's own timeout below comes first, and shows how far it got.
@pytest.mark.timeout(3700)
def test_smoke_sized_benchmark_writes_results_and_report(tmp_path):
    committed = (ROOT / "BENCHMARKS.md").read_bytes() if (ROOT / "BENCHMARKS.md").exists() else None
    terminal, errors = tmp_path / "terminal.txt", tmp_path / "errors.txt"
    with terminal.open("w") as out, errors.open("w") as err:
        # A session of its own: on a timeout everything it started goes with it (see _kill_tree).
        process = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.run", "--smoke", "--out", str(tmp_path)],
            cwd=ROOT,
            stdout=out,
            stderr=err,
            start_new_session=True,
        )
        try:
            returncode = process.wait(timeout=3600)
        except subprocess.TimeoutExpired:
            pytest.fail(f"not done in 3600 s; its progress:\n{terminal.read_text()[-3000:]}")
        finally:
            if process.poll() is None:
                _kill_tree(process)
    done = subprocess.CompletedProcess([], returncode, terminal.read_text(), errors.read_text())
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    # One progress line per item on the terminal; MLflow's and Dagster's logs in a file.
    assert (
        "[1/11] sync vs the bare export tool" in done.stdout
        and "[11/11] propagation" in done.stdout
    )
    assert (tmp_path / "bench.log").stat().st_size > 0 and "INFO" not in done.stderr
    results = json.loads((tmp_path / "results.json").read_text())
    # The headline: the marketplace registry on PostgreSQL with 4 workers, two pairs on fresh
    # servers, the median kept; the SQLite rows beside it, one pair per size.
    (headline,) = results["sync_vs_bare_postgres"]
    assert (headline["registry"], headline["versions"]) == ("postgresql, 4 workers", 4)
    assert len(headline["ratio_runs"].split()) == 2
    assert str(headline["ratio"]) in headline["ratio_runs"].split()
    assert results["sync_ratio"] == headline["ratio"] > 0
    assert [r["versions"] for r in results["sync_vs_bare"]] == [4, 6]
    first, second = results["sync_vs_bare"]
    assert results["sync_ratio_sqlite"] == first["ratio"] > 0
    assert all(r["registry"] == "sqlite, 1 worker" for r in results["sync_vs_bare"])
    assert all(
        r["idle_seconds"] > 0
        and r["step_seconds_per_version"] > 0
        and r["step_ratio"] > 0
        and r["run_overhead_seconds_per_run"] > 0
        for r in results["sync_vs_bare"] + results["sync_vs_bare_postgres"]
    )
    assert [r["ratio_runs"] for r in results["sync_vs_bare"]] == [
        str(first["ratio"]),
        str(second["ratio"]),
    ]
    # At the smallest size, the same sync once more, each run forked from a warm process.
    assert first["warm_worker_seconds"] > 0 and first["warm_worker_step_seconds_per_version"] > 0
    assert first["warm_worker_ratio"] > 0  # against its own pair's bare time
    assert (
        second["warm_worker_seconds"] == ""
        and results["small_sync_warm_worker_ratio"] == first["warm_worker_ratio"]
    )
    # Sampled during the sync: the machine's busy cores, and how long the marketplace server was
    # saturated.
    assert all(
        0 < r["busy_cores"] <= results["machine"]["cores"] + 0.5
        and 0 <= r["marketplace_saturated_share"] <= 1
        for r in results["sync_vs_bare"] + results["sync_vs_bare_postgres"]
    )
    assert [(r["workspaces"], r["models"]) for r in results["workspaces"]] == [(2, 2), (3, 3)]
    # The daily schedule on deploy/dagster.yaml (PostgreSQL, the run queue), the real daemon.
    schedule = results["schedule_queue"]
    assert (schedule["workspaces"], schedule["runs"], schedule["failed_runs"]) == (3, 3, 0)
    assert schedule["most_runs_of_one_workspace_at_once"] == 1
    assert 1 <= schedule["most_runs_at_once"] <= 3 and schedule["wall_seconds"] > 0
    assert 0 <= schedule["queue_wait_p50_seconds"] <= schedule["queue_wait_max_seconds"]
    assert schedule["process_start_p50_seconds"] > 0
    # The idle cycle's registry time comes from the runs' own step metadata: it must be there.
    assert all(r["registry_seconds_per_workspace"] > 0 for r in results["workspaces"])
    # The large model: four shards, the floor measured in the same run, every process's peak.
    big = results["large_model"]
    assert big["files"] == 4 and big["floor_seconds"] > 0 and big["floor_ratio"] > 0
    assert big["peak_rss_mb_by_process"]["dagster run process"] == big["run_peak_rss_mb"] > 0
    assert any(name.startswith("mlflow server") for name in big["peak_rss_mb_by_process"])
    assert (
        results["large_model_floor_ratio"] == big["floor_ratio"]
        and results["large_model_run_peak_rss_mb"] == big["run_peak_rss_mb"]
    )
    assert results["backfill"]["partitions"] == 6 and results["backfill"]["runs"] >= 1
    assert len(results["targets"]) == 15 and all(
        isinstance(t["met"], bool) for t in results["targets"]
    )
    catalog = results["catalog"]
    assert (catalog["models"], catalog["rows_updated_again"]) == (6, 0) and catalog[
        "page_bytes"
    ] > 0
    gate = results["gate"]
    assert (gate["reference_rows"], gate["versions_judged"]) == (500, 1) and gate[
        "seconds_per_gated_version"
    ] > 0
    assert (
        results["sync_vs_bare"][0]["scan_seconds_per_model"] > 0
        and results["large_artifact"]["scan_seconds"] >= 0
    )
    # Through the real daemon and receiver: a promotion and a rollback in each mode, each served
    # (the targets are the full run's to judge, not the smoke's).
    propagation = results["propagation"]
    for mode, target in (("alias_webhooks", 15), ("stage_polling", 45)):
        found = propagation[mode]
        assert (found["changes"], found["not_served"], found["target_p95_seconds"]) == (
            2,
            0,
            target,
        )
        assert isinstance(found["met"], bool)
        for kind in ("promotion", "rollback"):
            assert (
                found[kind]["changes"] == 1
                and 0 < found[kind]["p50_seconds"] <= found[kind]["p95_seconds"]
            )
    assert propagation["poll_interval_seconds"] == 20 and propagation["poll_load_workspaces"] == 65
    assert (
        propagation["poll_requests"] >= 65
        and propagation["poll_requests_per_second_per_workspace"] > 0
    )
    report = (tmp_path / "BENCHMARKS.md").read_text()
    assert (
        "sync_ratio" in report
        and "export_models(" in report
        and "## The daily schedule on the production instance" in report
        and "## The catalog" in report
        and "## The promotion gate" in report
    )
    assert "## Propagation" in report and "| alias_webhooks | rollback | 1 |" in report
    assert all(
        (tmp_path / f"{name}.png").stat().st_size > 0
        for name in ("sync_time", "scaling_models", "scaling_workspaces")
    )
    assert "scaling_workspaces.png" in report and "verified-copy floor" in report
    after = (ROOT / "BENCHMARKS.md").read_bytes() if (ROOT / "BENCHMARKS.md").exists() else None
    assert after == committed


def _kill_tree(process: subprocess.Popen) -> None:
    """Kill the benchmark's process group and every process it started: its MLflow servers,
    `dagster dev` and the webhook receiver each run in a session (and group) of their own, so
    the benchmark's group alone does not reach them. Stopped first, so that none starts more."""
    os.killpg(process.pid, signal.SIGSTOP)
    tree = _descendants(process.pid)
    ours = os.getpgrp()
    groups = {process.pid} | {g for g in map(_group, tree) if g not in (None, ours)}
    for group in groups:
        _signal(os.killpg, group)
    for pid in tree:
        _signal(os.kill, pid)
    process.wait()


def _descendants(pid: int) -> set[int]:
    """Every live process below `pid`, from /proc's parent links."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _group(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def _signal(send, target: int) -> None:
    try:
        send(target, signal.SIGKILL)
    except ProcessLookupError:
        pass
