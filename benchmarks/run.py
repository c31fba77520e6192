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
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cloudpickle
import dagster as dg
import mlflow
import yaml
from mlflow import MlflowClient

from marketplace_dagster.assets import CHAIN
from marketplace.config import load_config
from marketplace_dagster.definitions import build_definitions
from benchmarks.catalog import bench_catalog
from benchmarks.gate import bench_gate
from harness.local_dagster import DagsterDev
from harness.local_servers import LocalServer, free_port, start, stop
from marketplace_dagster.partitions import partition_tags, split_partition_key
from marketplace.registry import process_tracking_uri

ROOT = Path(__file__).resolve().parent.parent
DAGSTER = Path(sys.executable).parent / "dagster"
TODAY = dt.datetime.now(dt.timezone.utc).date()

BARE_CALLS = """\
from mlflow_export_import.bulk.export_models import export_models
from mlflow_export_import.bulk.import_models import import_models
for workspace in workspaces:                      # one after another, as the seed's daily jobs
    mlflow.set_tracking_uri(workspace.uri)
    export_models(model_names=workspace.model_names, output_dir=f"{out}/{workspace.name}",
                  stages="Production", use_threads=False, mlflow_client=MlflowClient(workspace.uri))
    mlflow.set_tracking_uri(marketplace.uri)
    import_models(input_dir=f"{out}/{workspace.name}", delete_model=False,
                  model_renames={name: f"{workspace.name}.{name}" for name in workspace.model_names},
                  import_source_tags=True, use_threads=False, mlflow_client=MlflowClient(marketplace.uri))"""


class Bench:
    def __init__(self, folder: Path):
        self.folder = folder
        self.servers: list[LocalServer] = []

    def server(self, name: str) -> LocalServer:
        server = LocalServer(name, self.folder / "servers" / name, free_port())
        self.servers.append(server)
        return server

    def start_all(self, servers: list[LocalServer]) -> None:
        with ThreadPoolExecutor(len(servers)) as pool:
            list(pool.map(start, servers))

    def stop_all(self) -> None:
        """Stop every server started so far: each costs about 550 MB, and items need their own."""
        for server in self.servers:
            stop(server)
        self.servers = []

    close = stop_all


def _model_names(count: int) -> list[str]:
    return [f"model_{i:03d}" for i in range(count)]


def seed(server: LocalServer, names: list[str], *, blob_bytes: int = 0) -> None:
    """One logged model, registered as one production version of each name (fast to seed)."""
    from sklearn import datasets
    from sklearn.linear_model import LogisticRegression

    x, y = datasets.load_iris(return_X_y=True, as_frame=True)
    model = LogisticRegression(max_iter=500).fit(x, y)
    client = MlflowClient(server.uri)
    with process_tracking_uri(server.uri), tempfile.TemporaryDirectory() as tmp:
        mlflow.set_experiment("/bench")
        with mlflow.start_run():
            if blob_bytes:
                blob = Path(tmp) / "weights.bin"
                _write_random(blob, blob_bytes)
                info = mlflow.pyfunc.log_model(name="model", python_model=_Echo(), artifacts={"weights": str(blob)})
            else:
                info = mlflow.sklearn.log_model(model, name="model", input_example=x.head(3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        for name in names:
            client.create_registered_model(name)
            version = client.create_model_version(name, info.model_uri, run_id=info.run_id, model_id=info.model_id)
            client.transition_model_version_stage(name, version.version, "Production")


class _Echo(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        return model_input


# Pickle the model class by value, so that the marketplace's load check can load it anywhere.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def _write_random(path: Path, size: int) -> None:
    chunk = os.urandom(8 * 1024 * 1024)
    with open(path, "wb") as handle:
        written = 0
        while written < size:
            handle.write(chunk[: min(len(chunk), size - written)])
            written += min(len(chunk), size - written)


def write_config(path: Path, storage: Path, marketplace: LocalServer, workspaces: list[dict], **extra) -> Path:
    raw = {
        "start_date": (TODAY - dt.timedelta(days=40)).isoformat(),
        "external_storage": {"uri": str(storage)},
        "marketplace": {"tracking_uri": marketplace.uri},
        "workspaces": workspaces,
        **extra,
    }
    path.write_text(yaml.safe_dump(raw))
    return path


def _home(folder: Path) -> Path:
    home = folder / "dagster_home"
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    dg.DagsterInstance.from_config(str(home)).dispose()  # create its storage before concurrent runs
    return home


SYNC_JOB = "marketplace_sync_job"


def materialize_partitions(config_path: Path, home: Path, partitions: list[str], parallel: int) -> tuple[float, list[dict]]:
    """One `dagster job execute` process of marketplace_sync_job per partition (the job the
    sensor and schedule request, in a process of its own as the run launcher starts it),
    `parallel` at a time; returns wall time and per-run timings."""
    env = {**os.environ, "MARKETPLACE_CONFIG": str(config_path), "DAGSTER_HOME": str(home)}

    def one(partition: str) -> dict:
        started = time.perf_counter()
        done = subprocess.run(
            [str(DAGSTER), "job", "execute", "-m", "marketplace_dagster.definitions", "-j", SYNC_JOB,
             "--tags", json.dumps(partition_tags(*split_partition_key(partition)))],
            env=env, cwd=config_path.parent, capture_output=True, text=True,
        )
        if done.returncode != 0:
            raise RuntimeError(f"{partition} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
        return {"partition": partition, "wall_seconds": time.perf_counter() - started}

    started = time.perf_counter()
    with ThreadPoolExecutor(parallel) as pool:
        runs = list(pool.map(one, partitions))
    wall = time.perf_counter() - started
    _attach_step_times(home, runs)
    return wall, runs


def _attach_step_times(home: Path, runs: list[dict]) -> None:
    """Split each run's wall time into its steps' time and Dagster's own overhead."""
    with dg.DagsterInstance.from_config(str(home)) as instance:
        by_partition = {}
        for record in instance.get_run_records(limit=len(runs) * 3):
            by_partition.setdefault(record.dagster_run.tags.get("dagster/partition"), record)
        for run in runs:
            record = by_partition.get(run["partition"])
            steps = instance.get_records_for_run(record.dagster_run.run_id).records if record else []
            started, step_seconds, registry_seconds = {}, 0.0, 0.0
            for entry in steps:
                event = entry.event_log_entry.dagster_event
                if event is None:
                    continue
                if event.event_type_value == "STEP_START":
                    started[event.step_key] = entry.event_log_entry.timestamp
                elif event.event_type_value in ("STEP_SUCCESS", "STEP_FAILURE") and event.step_key in started:
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


def bench_sync_vs_bare(bench: Bench, workspaces: int, models: list[int], folder: Path) -> list[dict]:
    """Item 1: bare mlflow-export-import vs the marketplace, same servers and models, fresh marketplaces."""
    from mlflow_export_import.bulk.export_models import export_models
    from mlflow_export_import.bulk.import_models import import_models

    rows = []
    for count in models:
        sources = [bench.server(f"src{count}_{k}") for k in range(workspaces)]
        bare_market, our_market = bench.server(f"bare{count}"), bench.server(f"market{count}")
        bench.start_all(sources + [bare_market, our_market])
        names = _model_names(count)
        for source in sources:
            seed(source, names)
        ws_names = [f"ws{k}" for k in range(workspaces)]

        out = folder / f"bare{count}"
        started = time.perf_counter()
        for name, source in zip(ws_names, sources):
            with process_tracking_uri(source.uri):
                export_models(model_names=names, output_dir=str(out / name), stages="Production",
                              use_threads=False, mlflow_client=MlflowClient(source.uri))
            with process_tracking_uri(bare_market.uri):
                import_models(input_dir=str(out / name), delete_model=False,
                              model_renames={n: f"{name}.{n}" for n in names}, import_source_tags=True,
                              use_threads=False, mlflow_client=MlflowClient(bare_market.uri))
        bare_seconds = time.perf_counter() - started
        bare_versions = len(MlflowClient(bare_market.uri).search_model_versions(max_results=10000))

        config = write_config(
            folder / f"sync{count}.yaml", folder / f"storage{count}", our_market,
            [{"name": n, "tracking_uri": s.uri, "production": {"stage": "Production"}} for n, s in zip(ws_names, sources)],
        )
        wall, runs = materialize_partitions(config, _home(folder / f"sync{count}"),
                                            [f"{TODAY.isoformat()}|{n}" for n in ws_names], parallel=workspaces)
        our_versions = len(MlflowClient(our_market.uri).search_model_versions(max_results=10000))
        if (bare_versions, our_versions) != (count * workspaces,) * 2:
            raise RuntimeError(f"expected {count * workspaces} versions each, bare {bare_versions}, ours {our_versions}")
        scan = _scan_exports(folder / f"storage{count}")
        rows.append({
            "workspaces": workspaces, "models_per_workspace": count, "versions": count * workspaces,
            "bare_seconds": round(bare_seconds, 2), "marketplace_seconds": round(wall, 2),
            "ratio": round(wall / bare_seconds, 3),
            "marketplace_step_seconds": round(sum(r["step_seconds"] for r in runs), 2),
            "scan_seconds_per_model": round(scan["seconds"] / max(1, scan["exports"]), 4),
            "scan_share_of_sync": round(scan["seconds"] / wall, 4),
        })
        print(f"  {workspaces} x {count}: bare {bare_seconds:.1f} s, marketplace {wall:.1f} s", file=sys.__stdout__, flush=True)
        bench.stop_all()
    return rows


def _scan_exports(storage: Path) -> dict:
    """Every export folder under `storage` scanned as the imports step scans it: total seconds."""
    from marketplace.scanning import scan_folder

    folders = [m.parent for m in (storage / "exports").rglob("manifest.json")]
    started = time.perf_counter()
    files = sum(scan_folder(f).files_scanned for f in folders)
    return {"exports": len(folders), "files": files, "seconds": time.perf_counter() - started}


def bench_nothing_new(bench: Bench, counts: list[int], models_per_server: int, folder: Path) -> tuple[list[dict], list[dict]]:
    """Items 2 and 3: an idle cycle and a sensor tick over 3..30 workspaces sharing 3 servers."""
    servers = [bench.server(f"idle_src{k}") for k in range(3)]
    market = bench.server("idle_market")
    bench.start_all(servers + [market])
    names = _model_names(models_per_server)
    for server in servers:
        seed(server, names)
    cycle_rows, tick_rows = [], []
    for count in counts:
        # Workspace i lives on server i % 3 and owns every k-th of its models, so that 30
        # workspaces share 3 servers without syncing one model twice.
        per_server = -(-count // 3)
        workspaces = [
            {"name": f"w{count}_{i:02d}", "tracking_uri": servers[i % 3].uri, "production": {"stage": "Production"},
             "include": names[i // 3::per_server] or ["none"]}
            for i in range(count)
        ]
        config = write_config(folder / f"idle{count}.yaml", folder / f"idle_storage{count}", market, workspaces)
        home = _home(folder / f"idle{count}")
        partitions = [f"{TODAY.isoformat()}|{w['name']}" for w in workspaces]
        materialize_partitions(config, home, partitions, parallel=2)  # first: sync everything
        wall, runs = materialize_partitions(config, home, partitions, parallel=2)  # measured: nothing new
        cycle_rows.append({
            "workspaces": count,
            "wall_seconds": round(wall, 2),
            "per_workspace_run_seconds": round(sum(r["wall_seconds"] for r in runs) / count, 2),
            "registry_seconds_per_workspace": round(sum(r["registry_seconds"] for r in runs) / count, 3),
            "other_step_seconds_per_workspace": round(sum(r["step_seconds"] - r["registry_seconds"] for r in runs) / count, 3),
            "dagster_overhead_seconds_per_workspace": round(sum(r["overhead_seconds"] for r in runs) / count, 2),
        })
        sensor = build_definitions(load_config(config)).resolve_sensor_def("production_version_sensor")
        with dg.DagsterInstance.ephemeral() as instance:
            started = time.perf_counter()
            result = sensor(dg.build_sensor_context(instance=instance))
            tick = time.perf_counter() - started
        tick_rows.append({"workspaces": count, "tick_seconds": round(tick, 3),
                          "run_requests": len(result.run_requests or [])})
        print(f"  idle cycle over {count} workspaces: {wall:.1f} s; tick {tick:.2f} s", file=sys.__stdout__, flush=True)
    bench.stop_all()
    return cycle_rows, tick_rows


def bench_large_artifact(bench: Bench, size_bytes: int, folder: Path) -> dict:
    """Item 4: one model with a large artifact, against copying the same bytes twice with the OS."""
    source, market = bench.server("big_src"), bench.server("big_market")
    bench.start_all([source, market])
    seed(source, ["big_model"], blob_bytes=size_bytes)
    blob = next(source.artifact_root.rglob("weights.bin"))
    raw_out, raw_back = folder / "raw_external" / "weights.bin", market.artifact_root / "raw_copy" / "weights.bin"
    raw_out.parent.mkdir(parents=True)
    raw_back.parent.mkdir(parents=True)
    started = time.perf_counter()
    subprocess.run(["cp", str(blob), str(raw_out)], check=True)
    subprocess.run(["cp", str(raw_out), str(raw_back)], check=True)
    subprocess.run(["sync"], check=True)
    raw_seconds = time.perf_counter() - started
    config = write_config(folder / "big.yaml", folder / "big_storage", market,
                          [{"name": "big", "tracking_uri": source.uri, "production": {"stage": "Production"}}])
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    wall, runs = materialize_partitions(config, _home(folder / "big"), [f"{TODAY.isoformat()}|big"], parallel=1)
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    mb = size_bytes / 1e6
    scan = _scan_exports(folder / "big_storage")
    row = {
        "artifact_mb": round(mb),
        "raw_copy_seconds": round(raw_seconds, 2),
        "raw_mb_per_s": round(mb / raw_seconds, 1),
        "marketplace_seconds": round(wall, 2),
        "marketplace_mb_per_s": round(mb / wall, 1),
        "throughput_ratio": round(raw_seconds / wall, 3),
        "marketplace_step_seconds": round(runs[0]["step_seconds"], 2),
        "step_throughput_ratio": round(raw_seconds / runs[0]["step_seconds"], 3),
        "peak_rss_mb": round(max(peak_kb, before) / 1024),
        "scan_seconds": round(scan["seconds"], 3),
        "scan_seconds_per_gb": round(scan["seconds"] / (size_bytes / 1024**3), 3),
    }
    print(f"  {mb:.0f} MB artifact: raw {raw_seconds:.1f} s, marketplace {wall:.1f} s, peak {row['peak_rss_mb']} MB", file=sys.__stdout__, flush=True)
    bench.stop_all()
    return row


def bench_backfill(bench: Bench, days: int, folder: Path) -> dict:
    """Item 5: a days x 3 workspaces backfill launched through GraphQL and run by the daemon."""
    servers = [bench.server(f"bf_src{k}") for k in range(3)]
    market = bench.server("bf_market")
    bench.start_all(servers + [market])
    for server in servers:
        seed(server, _model_names(2))
    stopped = {"default_status": "stopped"}
    config = write_config(
        folder / "backfill.yaml", folder / "bf_storage", market,
        [{"name": f"bf{k}", "tracking_uri": s.uri, "production": {"stage": "Production"}} for k, s in enumerate(servers)],
        schedule=stopped, freshness=stopped, checks=stopped, housekeeping=stopped, automation=stopped,
    )
    dates = [TODAY - dt.timedelta(days=n) for n in range(days - 1, -1, -1)]
    partitions = [f"{d.isoformat()}|bf{k}" for d in dates for k in range(3)]
    dev = DagsterDev(config, folder / "bf_home", cwd=folder)
    try:
        dev.wait_until_loaded()
        started = time.perf_counter()
        status = dev.backfill(partitions, [k.path for k in CHAIN])
        wall = time.perf_counter() - started
    finally:
        dev.stop()
    row = {"days": days, "workspaces": 3, "partitions": len(partitions), "wall_seconds": round(wall, 1),
           "runs": len(status["runs"]), "status": status["status"]}
    print(f"  backfill {days} x 3: {wall:.0f} s, {row['runs']} runs", file=sys.__stdout__, flush=True)
    bench.stop_all()
    return row


def report(results: dict, out: Path, markdown: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    plot = out / "sync_time.png"
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    rows = results["sync_vs_bare"]
    versions = [r["versions"] for r in rows]
    left.plot(versions, [r["bare_seconds"] for r in rows], "o-", label="bare mlflow-export-import")
    left.plot(versions, [r["marketplace_seconds"] for r in rows], "s-", label="marketplace")
    left.set(xlabel="model versions synced", ylabel="seconds", title="Sync, fresh marketplace")
    left.legend()
    idle = results["nothing_new"]
    right.plot([r["workspaces"] for r in idle], [r["wall_seconds"] for r in idle], "s-", label="idle cycle (wall)")
    right.plot([r["workspaces"] for r in results["sensor_tick"]], [r["tick_seconds"] for r in results["sensor_tick"]],
               "o-", label="sensor tick")
    right.set(xlabel="workspaces", ylabel="seconds", title="Nothing new")
    right.legend()
    fig.tight_layout()
    fig.savefig(plot, dpi=100)

    def table(rows: list[dict]) -> str:
        if not rows:
            return "(not measured)\n"
        head = list(rows[0])
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(str(r[h]) for h in head) + " |" for r in rows]
        return "\n".join(lines) + "\n"

    m = results["machine"]
    text = f"""# Benchmarks

Generated by `{results['command']}` on {results['generated_at']} (do not edit by hand).
Machine: {m['cores']} cores, {m['platform']}, Python {m['python']}.

## 1. The same work two ways: bare mlflow-export-import vs the marketplace

Each into a fresh marketplace server, from the same source servers and models. The bare tool
ran as the seed's notebooks used it, workspace after workspace:

```python
{BARE_CALLS}
```

The marketplace ran the matching partitions, one `dagster job execute -j marketplace_sync_job` process per
partition (a process per run, as the run launcher starts them; the daemon's queue latency is
not included), all workspaces at once. `sync_ratio` = marketplace time / bare time at the largest
size (target <= 1.25): **{results['sync_ratio']}**; every size's ratio is in the table. Each run
pays a fixed cost the bare loop pays once (a Python process with Dagster and MLflow, about 4 s,
and the first model load's imports), so the ratio falls as workspaces hold more models.

{table(results['sync_vs_bare'])}
![sync time]({os.path.relpath(plot, markdown.parent)})

## 2. A cycle with nothing new

Every workspace already synced; one run per workspace, two at a time (the machine's cores).
{results['notes']['nothing_new']}
Per run, from Dagster's event log: registry = the time its steps waited on HTTP requests to the
registries (each step reports `registry_requests` and `registry_seconds` in its metadata);
other step time = the rest of its steps' durations (snapshot and summary-table reads and
MERGEs, manifest checks, the load check's listing compare, step bookkeeping inside the step);
Dagster overhead = the run process's wall time outside its steps (interpreter and code start-up,
run and step events, shutdown). Executor: `in_process`, steps one after another in the run's
process: a partition's steps are a chain, so a process per step (the multiprocess executor)
would only add a process start (seconds) per step.

{table(results['nothing_new'])}
## 3. One sensor tick

{table(results['sensor_tick'])}
## 4. A large artifact

{table([results['large_artifact']] if results.get('large_artifact') else [])}
Raw copy: `cp` of the same bytes twice (out to external storage, back into the marketplace's
artifact root), then `sync`. `throughput_ratio` is over the run's whole wall time,
`step_throughput_ratio` over its steps only (without the run process's fixed start-up cost).
The marketplace moves the bytes three times (export, import, and the load check's download of
the marketplace copy) and hashes them three times (the manifest, the verification before the
import, the load check's comparison with the manifest): the verification the raw copy does not
do. Peak memory: the largest resident set of the run processes (files are streamed in 1 MB
chunks, never read whole). `scan_seconds`: the security scan of the export (modelscan reads the
pickles; the artifact itself is a `.bin` it checks for a PyTorch header), measured alone after the
sync; section 1's `scan_seconds_per_model` and `scan_share_of_sync` are the same for small models.

## 5. Backfill

{table([results['backfill']] if results.get('backfill') else [])}

## The catalog

The catalog asset's work (`catalog.build_catalog`: every model's card facts from its export, the
`catalog` table, the page) over a marketplace of {results['catalog']['models']} models in
{results['catalog']['workspaces']} workspaces, first and again with nothing changed; the page's size; and the slowest
keystroke of a typed query in the page in headless Chromium (`benchmarks/catalog.py`).

{table([results['catalog']] if results.get('catalog') else [])}
## The promotion gate

What judging one version costs (`gate.GateKeeper.judge`, `benchmarks/gate.py`): download and scan
the candidate and the current production version, MLflow's evaluation of each (a scikit-learn
classifier, the default evaluator without explainability) on {results['gate']['reference_rows']} reference rows,
logged to their runs, and MLflow's validation of the thresholds. A version is judged once per set
of rules; a sync that finds nothing new judges nothing.

{table([results['gate']] if results.get('gate') else [])}
## Targets

{table(results['targets'])}"""
    markdown.write_text(text)


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
            print(f"[{self.done}/{self.total}] {name}: done in {time.perf_counter() - began:.0f} s "
                  f"({time.perf_counter() - self.started:.0f} s so far)", file=self.terminal, flush=True)

        return item()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, for the test suite")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks", help="results.json and the plot")
    parser.add_argument("--report", type=Path, default=None, help="the markdown report (default BENCHMARKS.md at the root; with --smoke, in --out)")
    args = parser.parse_args(argv)
    smoke = args.smoke
    sizes = {
        "workspaces": 3 if not smoke else 2,
        "models": [5, 20, 50] if not smoke else [2],
        "idle": [3, 10, 30] if not smoke else [2, 3],
        "idle_models": 10 if not smoke else 3,
        "large_bytes": 1024**3 if not smoke else 8 * 1024**2,
        "backfill_days": 30 if not smoke else 2,
        "catalog": [10, 20] if not smoke else [2, 3],
        "gate": [10_000, 3] if not smoke else [500, 1],
    }
    results: dict = {
        "command": "make bench" if not smoke else "python -m benchmarks.run --smoke",
        "generated_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cores": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "sizes": sizes,
        "notes": {"nothing_new": "Up to 30 workspaces share 3 tracking servers here (round robin), "
                                 "each workspace owning its own slice of a server's models."},
    }
    log = args.out / "bench.log"
    _log_to(log)
    print(f"make bench: 6 items, about {'15-20 minutes' if not smoke else 'a few minutes'}; "
          f"MLflow and Dagster logs in {log}", flush=True)
    step = _Progress(6, log)
    with tempfile.TemporaryDirectory(prefix="marketplace-bench-") as tmp:
        bench = Bench(Path(tmp))
        try:
            with step("sync vs the bare export tool"):
                results["sync_vs_bare"] = bench_sync_vs_bare(bench, sizes["workspaces"], sizes["models"], Path(tmp))
            largest = results["sync_vs_bare"][-1]
            results["sync_ratio"] = largest["ratio"]
            results["sync_ratio_by_size"] = {
                f"{r['workspaces']}x{r['models_per_workspace']}": r["ratio"] for r in results["sync_vs_bare"]
            }
            with step("a cycle with nothing new, and a sensor tick"):
                results["nothing_new"], results["sensor_tick"] = bench_nothing_new(
                    bench, sizes["idle"], sizes["idle_models"], Path(tmp)
                )
            with step("a large artifact"):
                results["large_artifact"] = bench_large_artifact(bench, sizes["large_bytes"], Path(tmp))
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
        finally:
            bench.close()
    idle = results["nothing_new"]
    tick = max(results["sensor_tick"], key=lambda r: r["workspaces"])
    big = results["large_artifact"]
    results["targets"] = [
        {"target": "sync_ratio <= 1.25", "measured": results["sync_ratio"], "met": results["sync_ratio"] <= 1.25},
        {"target": "<= 0.5 s registry work per idle workspace",
         "measured": max(r["registry_seconds_per_workspace"] for r in idle),
         "met": max(r["registry_seconds_per_workspace"] for r in idle) <= 0.5},
        {"target": f"tick over {tick['workspaces']} workspaces < 10 s", "measured": tick["tick_seconds"],
         "met": tick["tick_seconds"] < 10},
        {"target": ">= 0.5 x raw copy throughput", "measured": big["throughput_ratio"], "met": big["throughput_ratio"] >= 0.5},
        {"target": "peak memory < 500 MB", "measured": big["peak_rss_mb"], "met": big["peak_rss_mb"] < 500},
        # One run per partition, so that a workspace that is down fails alone (docs/operations.md).
        {"target": "one run per partition", "measured": results["backfill"]["runs"],
         "met": results["backfill"]["runs"] == results["backfill"]["partitions"]},
        # The scan is part of the sync: it doubles it when it takes half of it.
        {"target": "scanning does not double the sync time (scan share of the largest sync < 0.5)",
         "measured": largest["scan_share_of_sync"], "met": largest["scan_share_of_sync"] < 0.5},
    ]
    catalog = results["catalog"]
    results["targets"].append({
        "target": f"catalog page of {catalog['models']} models: a keystroke filters in < 100 ms",
        "measured": catalog["keystroke_ms_max"],
        "met": catalog["keystroke_ms_max"] is not None and catalog["keystroke_ms_max"] < 100})
    report(results, args.out, args.report or (args.out / "BENCHMARKS.md" if smoke else ROOT / "BENCHMARKS.md"))
    print(json.dumps(results["targets"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
