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
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cloudpickle
import dagster as dg
import mlflow
import yaml
from mlflow import MlflowClient

from benchmarks.catalog import bench_catalog
from benchmarks.gate import bench_gate
from harness.local_dagster import DagsterDev
from harness.local_servers import LocalServer, free_port, start, stop
from marketplace.config import load_config
from marketplace.registry import process_tracking_uri
from marketplace_dagster.definitions import build_definitions
from marketplace_dagster.keys import CHAIN
from marketplace_dagster.partitions import partition_tags, split_partition_key

ROOT = Path(__file__).resolve().parent.parent
DAGSTER = Path(sys.executable).parent / "dagster"
TODAY = dt.datetime.now(dt.UTC).date()

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
        self._ports: set[int] = set()

    def server(self, name: str) -> LocalServer:
        # A port of its own for the whole run, not one a server stopped earlier may still hold.
        port = free_port(avoid=self._ports)
        self._ports.add(port)
        server = LocalServer(name, self.folder / "servers" / name, port)
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


def seed(
    server: LocalServer, names: list[str], *, blob_bytes: int = 0, blob_files: int = 1
) -> None:
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
                # `blob_files` shards of the weights, as a sharded safetensors checkpoint is.
                shards = {}
                for k in range(blob_files):
                    shards[f"weights{k}"] = Path(tmp) / f"weights{k}.bin"
                    _write_random(shards[f"weights{k}"], blob_bytes // blob_files)
                info = mlflow.pyfunc.log_model(
                    name="model",
                    python_model=_Echo(),
                    artifacts={k: str(v) for k, v in shards.items()},
                )
            else:
                info = mlflow.sklearn.log_model(model, name="model", input_example=x.head(3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        for name in names:
            client.create_registered_model(name)
            version = client.create_model_version(
                name, info.model_uri, run_id=info.run_id, model_id=info.model_id
            )
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


# Runs share this 2-core machine with each other and with every MLflow server: here a pool of
# threads per run adds CPU (about half as much again per version at 3 runs at once) instead of
# hiding latency, as it does against remote registries. Item 1 measures the default pool too.
BENCH_CLIENT = {"max_workers": 1}


def write_config(
    path: Path, storage: Path, marketplace: LocalServer, workspaces: list[dict], **extra
) -> Path:
    extra.setdefault("client", BENCH_CLIENT)
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


def materialize_partitions(
    config_path: Path, home: Path, partitions: list[str], parallel: int
) -> tuple[float, list[dict]]:
    """One `dagster job execute` process of marketplace_sync_job per partition (the job the
    sensor and schedule request, in a process of its own as the run launcher starts it),
    `parallel` at a time; returns wall time and per-run timings."""
    env = {**os.environ, "MARKETPLACE_CONFIG": str(config_path), "DAGSTER_HOME": str(home)}

    def one(partition: str) -> dict:
        started = time.perf_counter()
        with tempfile.TemporaryFile() as output:
            process = subprocess.Popen(
                [
                    str(DAGSTER),
                    "job",
                    "execute",
                    "-m",
                    "marketplace_dagster.definitions",
                    "-j",
                    SYNC_JOB,
                    "--tags",
                    json.dumps(partition_tags(*split_partition_key(partition))),
                ],
                env=env,
                cwd=config_path.parent,
                stdout=output,
                stderr=subprocess.STDOUT,
            )
            # Its peak resident set is its VmHWM, read until it exits: wait4's ru_maxrss counts the
            # moment between fork and exec, when the child still maps this (large) process.
            peak = 0
            while True:
                peak = max(peak, _vm_hwm_kb(process.pid))
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
    env = {**os.environ, "MARKETPLACE_CONFIG": str(config_path), "DAGSTER_HOME": str(home)}
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.warm_worker", *partitions],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise RuntimeError(f"the warm worker failed:\n{(done.stdout + done.stderr)[-4000:]}")
    runs = [{"partition": p, "wall_seconds": 0.0} for p in partitions]
    _attach_step_times(home, runs)
    return json.loads(done.stdout.strip().splitlines()[-1])["seconds"], sum(
        r["step_seconds"] for r in runs
    )


def _vm_hwm_kb(pid: int) -> int:
    """A live process's peak resident set so far (VmHWM, KB); 0 once it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    return next(
        (int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:")), 0
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


def bench_sync_vs_bare(
    bench: Bench,
    workspaces: int,
    models: list[int],
    folder: Path,
    pool_at: int | None = None,
    warm_at: int | None = None,
    repeat_at: int | None = None,
    repeats: int = 1,
) -> list[dict]:
    """Item 1: bare mlflow-export-import vs the marketplace, same servers and models, fresh
    marketplaces; at `repeat_at` models, `repeats` pairs on fresh servers, the median pair kept
    (this machine's speed drifts from minute to minute: one pair can be 20 % off)."""
    rows = []
    for count in models:
        pairs = [
            _sync_pair(
                bench, workspaces, count, folder, pool=count == pool_at, warm=count == warm_at
            )
        ]
        if count == repeat_at:
            pairs += [
                _sync_pair(bench, workspaces, count, folder, suffix=f"r{k}")
                for k in range(1, repeats)
            ]
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
) -> dict:
    """One bare sync and one marketplace sync of `workspaces` x `count` fresh models, and the idle cycle."""
    from mlflow_export_import.bulk.export_models import export_models
    from mlflow_export_import.bulk.import_models import import_models

    tag = f"{count}{suffix}"
    sources = [bench.server(f"src{tag}_{k}") for k in range(workspaces)]
    bare_market, our_market = bench.server(f"bare{tag}"), bench.server(f"market{tag}")
    bench.start_all(sources + [bare_market, our_market])
    names = _model_names(count)
    for source in sources:
        seed(source, names)
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
    partitions = [f"{TODAY.isoformat()}|{n}" for n in ws_names]

    out = folder / f"bare{tag}"
    bare_cpu = -_own_cpu() - cpu_seconds(sources + [bare_market])
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
    bare_cpu += _own_cpu() + cpu_seconds(sources + [bare_market])
    bare_versions = len(MlflowClient(bare_market.uri).search_model_versions(max_results=10000))

    config = write_config(
        folder / f"sync{tag}.yaml",
        folder / f"storage{tag}",
        our_market,
        ws_config,
    )
    home = _home(folder / f"sync{tag}")
    servers_before = cpu_seconds(sources + [our_market])
    with BusySampler(our_market) as busy:
        wall, runs = materialize_partitions(config, home, partitions, parallel=workspaces)
    servers_cpu = cpu_seconds(sources + [our_market]) - servers_before
    our_versions = len(MlflowClient(our_market.uri).search_model_versions(max_results=10000))
    if (bare_versions, our_versions) != (count * workspaces,) * 2:
        raise RuntimeError(
            f"expected {count * workspaces} versions each, bare {bare_versions}, ours {our_versions}"
        )
    scan = _scan_exports(folder / f"storage{tag}")
    idle_wall, idle_runs = materialize_partitions(config, home, partitions, parallel=workspaces)
    pooled = dict.fromkeys(POOL_KEYS, "")
    if pool:
        # The same sync with the default pool (client.max_workers 4) into another fresh marketplace.
        pool_market, pool_config, pool_home = _another_marketplace(
            bench, f"pool{count}", folder, ws_config, client={"max_workers": 4}
        )
        before = cpu_seconds(sources + [pool_market])
        pool_wall, pool_runs = materialize_partitions(
            pool_config, pool_home, partitions, parallel=workspaces
        )
        pool_cpu = (
            sum(r["cpu_seconds"] for r in pool_runs) + cpu_seconds(sources + [pool_market]) - before
        )
        pooled = {
            "pool_of_4_seconds": round(pool_wall, 2),
            "pool_of_4_cpu_seconds_per_version": round(pool_cpu / (count * workspaces), 3),
        }
    warmed = dict.fromkeys(WARM_KEYS, "")
    if warm:
        # The same sync into another fresh marketplace, each run forked from a warm process.
        warm_market, warm_config, warm_home = _another_marketplace(
            bench, f"warm{count}", folder, ws_config
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
        "workspaces": workspaces,
        "models_per_workspace": count,
        "versions": count * workspaces,
        "bare_seconds": round(bare_seconds, 2),
        "marketplace_seconds": round(wall, 2),
        "ratio": round(wall / bare_seconds, 3),
        "seconds_per_version": round(wall / (count * workspaces), 3),
        "bare_cpu_seconds_per_version": round(bare_cpu / (count * workspaces), 3),
        "cpu_seconds_per_version": round(
            (sum(r["cpu_seconds"] for r in runs) + servers_cpu) / (count * workspaces), 3
        ),
        "server_cpu_share": round(
            servers_cpu / (sum(r["cpu_seconds"] for r in runs) + servers_cpu), 3
        ),
        **busy.summary(),
        "step_seconds_per_version": round(
            sum(r["step_seconds"] for r in runs) / (count * workspaces), 3
        ),
        "marketplace_step_seconds": round(sum(r["step_seconds"] for r in runs), 2),
        "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
        "idle_seconds": round(idle_wall, 2),
        **pooled,
        **warmed,
        "scan_seconds_per_model": round(scan["seconds"] / max(1, scan["exports"]), 4),
        "scan_share_of_sync": round(scan["seconds"] / wall, 4),
    }
    print(
        f"  {workspaces} x {count}: bare {bare_seconds:.1f} s, marketplace {wall:.1f} s",
        file=sys.__stdout__,
        flush=True,
    )
    bench.stop_all()
    return row


def _another_marketplace(
    bench: Bench, name: str, folder: Path, workspaces: list[dict], **extra
) -> tuple[LocalServer, Path, Path]:
    """A fresh marketplace server, started, with its configuration (the same sources) and Dagster home."""
    market = bench.server(name)
    bench.start_all([market])
    config = write_config(
        folder / f"{name}.yaml", folder / f"{name}_storage", market, workspaces, **extra
    )
    return market, config, _home(folder / name)


def _scan_exports(storage: Path) -> dict:
    """Every export folder under `storage` scanned as the imports step scans it: total seconds."""
    from marketplace.scanning import scan_folder

    folders = [m.parent for m in (storage / "exports").rglob("manifest.json")]
    started = time.perf_counter()
    files = sum(scan_folder(f).files_scanned for f in folders)
    return {"exports": len(folders), "files": files, "seconds": time.perf_counter() - started}


def bench_workspaces(
    bench: Bench, counts: list[int], models_per_workspace: int, folder: Path
) -> tuple[list[dict], list[dict]]:
    """Items 2 and 3: a sync, then an idle cycle, and a sensor tick over 3..65 workspaces sharing 3
    servers, each workspace with its own `models_per_workspace` models."""
    servers = [bench.server(f"idle_src{k}") for k in range(3)]
    market = bench.server("idle_market")
    bench.start_all(servers + [market])
    slots = -(-max(counts) // 3)
    names = _model_names(slots * models_per_workspace)
    for server in servers:
        seed(server, names)
    cycle_rows, tick_rows = [], []
    for count in counts:
        # Workspace i lives on server i % 3 and owns the (i // 3)-th slice of its models, so that
        # 65 workspaces share 3 servers without syncing one model twice.
        workspaces = [
            {
                "name": f"w{count}_{i:02d}",
                "tracking_uri": servers[i % 3].uri,
                "production": {"stage": "Production"},
                "include": names[
                    (i // 3) * models_per_workspace : (i // 3 + 1) * models_per_workspace
                ],
            }
            for i in range(count)
        ]
        config = write_config(
            folder / f"idle{count}.yaml", folder / f"idle_storage{count}", market, workspaces
        )
        home = _home(folder / f"idle{count}")
        partitions = [f"{TODAY.isoformat()}|{w['name']}" for w in workspaces]
        sync_wall, sync_runs = materialize_partitions(
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
            f"  {count} workspaces: sync {sync_wall:.1f} s, idle cycle {wall:.1f} s; tick {tick:.2f} s",
            file=sys.__stdout__,
            flush=True,
        )
    bench.stop_all()
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


def peak_rss_mb(pid: int) -> dict[str, int]:
    """The peak resident set (VmHWM) of each live process in `pid`'s process group, in MB."""
    peaks: dict[str, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.getpgid(int(entry.name)) != pid:
                continue
            command = (
                (entry / "cmdline")
                .read_bytes()
                .replace(b"\0", b" ")
                .decode(errors="replace")
                .strip()
            )
        except (OSError, ProcessLookupError):
            continue
        peaks[f"{entry.name} {command[:60]}"] = round(_vm_hwm_kb(int(entry.name)) / 1024)
    return peaks


class BusySampler:
    """Once a second while a sync runs: the marketplace server's CPU (cores) and the whole
    machine's busy cores (/proc/stat). It shows which phase of a sync waits on the marketplace
    registry (its one worker busy, the machine's other cores idle) and which fills the machine."""

    SATURATED = 0.8  # of a core: the marketplace server's one worker is answering back to back

    def __init__(self, market: LocalServer, interval: float = 1.0):
        self.market, self.interval = market, interval
        self.samples: list[
            tuple[float, float]
        ] = []  # (marketplace server cores, machine busy cores)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def _machine_busy_seconds() -> float:
        with open("/proc/stat") as handle:
            fields = [int(v) for v in handle.readline().split()[1:]]
        return (sum(fields) - fields[3] - fields[4]) / os.sysconf(
            "SC_CLK_TCK"
        )  # all but idle and iowait

    def _run(self) -> None:
        market, machine, at = (
            cpu_seconds([self.market]),
            self._machine_busy_seconds(),
            time.perf_counter(),
        )
        while not self._stop.wait(self.interval):
            now_market, now_machine, now = (
                cpu_seconds([self.market]),
                self._machine_busy_seconds(),
                time.perf_counter(),
            )
            span = now - at
            self.samples.append(((now_market - market) / span, (now_machine - machine) / span))
            market, machine, at = now_market, now_machine, now

    def __enter__(self) -> BusySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self) -> dict:
        """The share of the sync's seconds with the marketplace server saturated, and the
        machine's busy cores then and on average."""
        if not self.samples:
            return {
                "marketplace_saturated_share": "",
                "busy_cores_while_saturated": "",
                "busy_cores": "",
            }
        saturated = [machine for market, machine in self.samples if market >= self.SATURATED]
        return {
            "marketplace_saturated_share": round(len(saturated) / len(self.samples), 2),
            "busy_cores_while_saturated": round(sum(saturated) / len(saturated), 2)
            if saturated
            else "",
            "busy_cores": round(sum(machine for _, machine in self.samples) / len(self.samples), 2),
        }


def _own_cpu() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def cpu_seconds(servers: list[LocalServer]) -> float:
    """CPU time (user and system) the servers' processes have used so far."""
    from harness.local_servers import _pid

    ticks = 0
    for server in servers:
        pid = _pid(server)
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                if pid is None or os.getpgid(int(entry.name)) != pid:
                    continue
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, ProcessLookupError, IndexError):
                continue
            ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def _server_peaks(servers: list[LocalServer]) -> dict[str, int]:
    """Each server's largest process (the uvicorn worker that answers), by server name."""
    from harness.local_servers import _pid

    peaks = {}
    for server in servers:
        pid = _pid(server)
        if pid is not None:
            peaks[f"mlflow server {server.name}"] = max(peak_rss_mb(pid).values(), default=0)
    return peaks


def cold() -> bool:
    """Flush what earlier items wrote and empty the page cache (where allowed: root), so that each
    copy of the large-model items starts alike: the source read from disk, nothing left to flush."""
    subprocess.run(["sync"], check=True)
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def _sha256_file(path: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


def verified_copy_floor(files: list[Path], out_dir: Path, back_dir: Path) -> float:
    """The least any verified transfer of `files` does: copy them out and back (`cp`), SHA-256
    them once on each side, `sync`. Seconds."""
    out_dir.mkdir(parents=True)
    back_dir.mkdir(parents=True)
    cold()
    started = time.perf_counter()
    for source in files:
        out, back = out_dir / source.name, back_dir / source.name
        subprocess.run(["cp", str(source), str(out)], check=True)
        _sha256_file(out)
        subprocess.run(["cp", str(out), str(back)], check=True)
        _sha256_file(back)
    subprocess.run(["sync"], check=True)
    return time.perf_counter() - started


def bench_large_artifact(bench: Bench, size_bytes: int, folder: Path, files: int = 1) -> dict:
    """Items 4 and 5: one model with large artifact files (`files` of them, as sharded weights),
    against the OS copying the same bytes (raw copy: `cp` out and back, `sync`) and the verified-copy
    floor (the same, and SHA-256 once on each side)."""
    tag = f"big{files}"
    source, market = bench.server(f"{tag}_src"), bench.server(f"{tag}_market")
    bench.start_all([source, market])
    seed(source, [f"{tag}_model"], blob_bytes=size_bytes, blob_files=files)
    blobs = sorted(source.artifact_root.rglob("weights*.bin"))
    raw_seconds = _raw_copy(
        blobs, folder / f"{tag}_raw_external", market.artifact_root / f"{tag}_raw_copy"
    )
    floor_seconds = verified_copy_floor(
        blobs, folder / f"{tag}_floor_external", market.artifact_root / f"{tag}_floor"
    )
    config = write_config(
        folder / f"{tag}.yaml",
        folder / f"{tag}_storage",
        market,
        [{"name": tag, "tracking_uri": source.uri, "production": {"stage": "Production"}}],
    )
    home = _home(folder / tag)
    cold()
    started = time.perf_counter()
    _, runs = materialize_partitions(config, home, [f"{TODAY.isoformat()}|{tag}"], parallel=1)
    subprocess.run(["sync"], check=True)  # as the copies: until the bytes are on disk
    wall = time.perf_counter() - started
    peaks = {"dagster run process": runs[0]["peak_rss_mb"], **_server_peaks([source, market])}
    mb = size_bytes / 1e6
    scan = _scan_exports(folder / f"{tag}_storage")
    row = {
        "artifact_mb": round(mb),
        "files": files,
        "raw_copy_seconds": round(raw_seconds, 2),
        "floor_seconds": round(floor_seconds, 2),
        "marketplace_seconds": round(wall, 2),
        "marketplace_mb_per_s": round(mb / wall, 1),
        "floor_mb_per_s": round(mb / floor_seconds, 1),
        "throughput_ratio": round(raw_seconds / wall, 3),
        "floor_ratio": round(wall / floor_seconds, 3),
        "marketplace_step_seconds": round(runs[0]["step_seconds"], 2),
        "step_floor_ratio": round(runs[0]["step_seconds"] / floor_seconds, 3),
        "peak_rss_mb": max(peaks.values()),
        "peak_rss_mb_by_process": peaks,
        "scan_seconds": round(scan["seconds"], 3),
        "page_cache_dropped": cold(),
    }
    print(
        f"  {mb:.0f} MB in {files} file(s): raw copy {raw_seconds:.1f} s, floor {floor_seconds:.1f} s, "
        f"marketplace {wall:.1f} s, peak {row['peak_rss_mb']} MB",
        file=sys.__stdout__,
        flush=True,
    )
    bench.stop_all()
    return row


def _raw_copy(files: list[Path], out_dir: Path, back_dir: Path) -> float:
    """`cp` of the files out to external storage and back into the marketplace's artifact root, `sync`."""
    out_dir.mkdir(parents=True)
    back_dir.mkdir(parents=True)
    cold()
    started = time.perf_counter()
    for source in files:
        subprocess.run(["cp", str(source), str(out_dir / source.name)], check=True)
        subprocess.run(["cp", str(out_dir / source.name), str(back_dir / source.name)], check=True)
    subprocess.run(["sync"], check=True)
    return time.perf_counter() - started


def bench_backfill(bench: Bench, days: int, folder: Path) -> dict:
    """Item 5: a days x 3 workspaces backfill launched through GraphQL and run by the daemon."""
    servers = [bench.server(f"bf_src{k}") for k in range(3)]
    market = bench.server("bf_market")
    bench.start_all(servers + [market])
    for server in servers:
        seed(server, _model_names(2))
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


def _plots(results: dict, out: Path) -> dict[str, Path]:
    """sync_time.png (the same work two ways), scaling_models.png and scaling_workspaces.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def plot(
        name: str,
        x: list,
        series: list[tuple[list, str, str]],
        xlabel: str,
        ylabel: str,
        title: str,
    ) -> Path:
        fig, axis = plt.subplots(figsize=(6, 4))
        for y, style, label in series:
            axis.plot(x, y, style, label=label)
        axis.set(xlabel=xlabel, ylabel=ylabel, title=title)
        axis.legend()
        fig.tight_layout()
        fig.savefig(out / f"{name}.png", dpi=100)
        plt.close(fig)
        return out / f"{name}.png"

    rows, spread = results["sync_vs_bare"], results["workspaces"]
    sizes = [r["models_per_workspace"] for r in rows]
    return {
        "sync_time": plot(
            "sync_time",
            [r["versions"] for r in rows],
            [
                ([r["bare_seconds"] for r in rows], "o-", "bare mlflow-export-import"),
                ([r["marketplace_seconds"] for r in rows], "s-", "marketplace"),
            ],
            "model versions synced (3 workspaces)",
            "seconds",
            "Sync, fresh marketplace",
        ),
        "scaling_models": plot(
            "scaling_models",
            sizes,
            [
                ([r["seconds_per_version"] for r in rows], "s-", "sync, wall s per version"),
                ([r["step_seconds_per_version"] for r in rows], "^-", "sync, step s per version"),
                ([r["cpu_seconds_per_version"] for r in rows], "d-", "sync, CPU s per version"),
                (
                    [r["idle_seconds"] / r["versions"] for r in rows],
                    "o-",
                    "idle cycle, wall s per version",
                ),
            ],
            "models per workspace (3 workspaces)",
            "seconds per version",
            "Cost per model",
        ),
        "scaling_workspaces": plot(
            "scaling_workspaces",
            [r["workspaces"] for r in spread],
            [
                ([r["sync_seconds"] for r in spread], "s-", "sync (wall)"),
                ([r["idle_seconds"] for r in spread], "o-", "idle cycle (wall)"),
                ([r["tick_seconds"] for r in results["sensor_tick"]], "^-", "sensor tick"),
            ],
            "workspaces",
            "seconds",
            "Cost per workspace (2 runs at a time)",
        ),
    }


def _table(rows: list[dict]) -> str:
    if not rows:
        return "(not measured)\n"
    head = list(rows[0])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(r.get(h, "")) for h in head) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _profiles(folder: Path) -> str:
    """The profiles in benchmarks/profiles/ (benchmarks.profile_sync), side by side."""
    found = {p.stem: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))}
    if not found:
        return "(no profile recorded: `python -m benchmarks.profile_sync 20 --save NAME`)\n"
    names = list(found)
    lines = ["| per model | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    lines.append(
        "| wall seconds (in process, one workspace) | "
        + " | ".join(str(found[n]["seconds_per_model"]) for n in names)
        + " |"
    )
    lines.append(
        "| registry requests | "
        + " | ".join(str(found[n]["requests_per_model"]) for n in names)
        + " |"
    )
    callers = sorted(
        {c for n in names for c in found[n].get("requests_per_model_by_caller", {})},
        key=lambda c: (
            -max(found[n].get("requests_per_model_by_caller", {}).get(c, 0) for n in names)
        ),
    )
    for caller in callers[:20]:
        lines.append(
            f"| `{caller}` | "
            + " | ".join(
                str(found[n].get("requests_per_model_by_caller", {}).get(caller, 0)) for n in names
            )
            + " |"
        )
    notes = "".join(
        f"- **{n}**: {found[n].get('note', '')}\n" for n in names if found[n].get("note")
    )
    return "\n".join(lines) + "\n\n" + notes


def report(results: dict, out: Path, markdown: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    plots = {
        name: os.path.relpath(path, markdown.parent) for name, path in _plots(results, out).items()
    }
    big = [results[k] for k in ("large_artifact", "large_model") if results.get(k)]
    m = results["machine"]
    text = f"""# Benchmarks

Generated by `{results["command"]}` on {results["generated_at"]} (do not edit by hand).
Machine: {m["cores"]} cores, {m["platform"]}, Python {m["python"]}. Every item starts its own
local MLflow servers (SQLite, a local artifact root clients write to directly, one worker).

## Targets

{_table(results["targets"])}
## 1. The same work two ways: bare mlflow-export-import vs the marketplace

Each into a fresh marketplace server, from the same source servers and models. The bare tool
ran as the seed's notebooks used it, workspace after workspace:

```python
{BARE_CALLS}
```

The marketplace ran the matching partitions, one `dagster job execute -j marketplace_sync_job` process per
partition (a process per run, as the run launcher starts them; the daemon's queue latency is
not included), all workspaces at once; then the same partitions again with nothing new (the idle
cycle). At {results["sizes"]["repeat_at"]} models per workspace the pair ran {results["sizes"]["repeats"]} times, each on
fresh servers, and the row is the median pair (`ratio_runs`: every pair's ratio): this machine's
speed drifts enough that one pair can be 20 % off. `sync_ratio` = marketplace time / bare time
at 3 x 50: **{results["sync_ratio"]}**. Each run
pays a fixed cost the bare loop pays once (a Python process with Dagster and MLflow, about 4 s,
and the first model load's imports). The marketplace also does what the bare tool does not:
manifests and their verification, the security scan, the load check, the seed's marker,
registration, model cards and the tables. `peak_rss_mb`: the largest run process.
Sampled once a second during the marketplace's sync: `marketplace_saturated_share`, the share of
seconds in which the marketplace server (one worker, SQLite) used {BusySampler.SATURATED} of a core
or more; `busy_cores_while_saturated`, the machine's busy cores in those seconds (of
{os.cpu_count()}); `busy_cores`, on average. While the marketplace server is saturated the runs
wait on it, and the other cores are left idle.
At {results["sync_vs_bare"][0]["models_per_workspace"]} models per workspace the same sync ran once more into a fresh marketplace, each run
in a process forked from one that had already imported the code location, MLflow, scikit-learn
and skops (`benchmarks/warm_worker.py`): `warm_worker_seconds` and `warm_worker_ratio` (against
the bare time of the same servers) are what a warm run worker would give. Dagster's run launcher does not work
this way (each run is a new interpreter); it is a measurement, not how the marketplace runs.

{_table(results["sync_vs_bare"])}
![sync time]({plots["sync_time"]})
![cost per model]({plots["scaling_models"]})

## 2. How cost grows with workspaces: a sync, then a cycle with nothing new

{results["notes"]["workspaces"]} One run per workspace, two at a time (the machine's cores).
Per run, from Dagster's event log: registry = the time its steps waited on HTTP requests to the
registries (each step reports `registry_requests` and `registry_seconds` in its metadata);
other step time = the rest of its steps' durations; Dagster overhead = the run process's wall
time outside its steps (interpreter and code start-up, run and step events, shutdown).

{_table(results["workspaces"])}
![cost per workspace]({plots["scaling_workspaces"]})

## 3. One sensor tick

{_table(results["sensor_tick"])}
## 4. Large models, against the verified-copy floor

{_table(big)}
One model whose weights are `files` artifact files (the 4 GiB one as four 1 GiB shards, as a
sharded safetensors checkpoint is). The **raw copy** is `cp` of the bytes out to external storage and
back into the marketplace's artifact root, then `sync`; the **verified-copy floor** is the same with
a SHA-256 of the bytes once on each side: the least any verified transfer does. `floor_ratio` =
marketplace wall time / floor (`step_floor_ratio` over the run's steps only, without its process
start); `throughput_ratio` = raw copy / marketplace. The marketplace copies the bytes twice (the
export, the import) and hashes them twice (the manifest, the verification before the import);
the load check reads the marketplace copy where it is (the artifact store is on this machine's
filesystem), compares it with the manifest by size (its hashes were checked as it was imported)
and loads the model from there. Peak memory is per process: the run process (`wait4`'s
`ru_maxrss`) and each MLflow server (`VmHWM`). `scan_seconds`: the security scan of the export,
measured alone after the sync.

## 5. Backfill

{_table([results["backfill"]] if results.get("backfill") else [])}

## The catalog

The catalog asset's work (`catalog.build_catalog`: every model's card facts from its export, the
`catalog` table, the page) over a marketplace of {results["catalog"]["models"]} models in
{results["catalog"]["workspaces"]} workspaces, first and again with nothing changed; the page's size; and the slowest
keystroke of a typed query in the page in headless Chromium (`benchmarks/catalog.py`).

{_table([results["catalog"]] if results.get("catalog") else [])}
## The promotion gate

What judging one version costs (`gate.GateKeeper.judge`, `benchmarks/gate.py`): download and scan
the candidate and the current production version, MLflow's evaluation of each (a scikit-learn
classifier, the default evaluator without explainability) on {results["gate"]["reference_rows"]} reference rows,
logged to their runs, and MLflow's validation of the thresholds. A version is judged once per set
of rules; a sync that finds nothing new judges nothing.

{_table([results["gate"]] if results.get("gate") else [])}
## The sandbox: what loading a model there costs

Every load of a source's model runs in the sandbox (`marketplace/sandbox/`, `benchmarks/sandbox.py`):
one warm process per run that imports MLflow, pandas and scikit-learn once (`start_seconds`; a
run begins it at its first new export, so it overlaps the export and the import), then a fresh
forked child per model (`per_model_*`: staging the files, the fork, the load and the prediction,
the result back as JSON). Against it, the same scikit-learn model loaded and predicted in this
process, as the run process did before.

{_table(results["sandbox"]) if results.get("sandbox") else "(not measured)"}
## Propagation: from a change at a source until the marketplace serves it

{_propagation(results["propagation"]) if results.get("propagation") else "(not measured)"}
## Where a sync's time goes: profiles

`python -m benchmarks.profile_sync 20 --save NAME` syncs one workspace of 20 models in one
process under cProfile and counts every HTTP request by endpoint and by the function of ours
that made it (`benchmarks/profiles/NAME.json`, not rerun by `make bench`). Requests per model:

{_profiles(ROOT / "benchmarks" / "profiles")}"""
    markdown.write_text(text)


def _propagation(found: dict) -> str:
    from benchmarks.propagation import table  # here: it imports this module's helpers

    changes = found["alias_webhooks"]["changes"]
    return f"""`dagster dev` (webserver and daemon) with production_version_sensor running at its default poll
interval ({found["poll_interval_seconds"]} s), schedules and automation stopped, and the webhook receiver
(`benchmarks/propagation.py`). One workspace selects production by alias and sends webhooks; the
other selects it by stage, which no MLflow webhook reports, and is polled. In each, {changes} changes
one after another: a promotion of a newly registered version, then a rollback to the version
before, and so on. Each starts at a random point of the period that starts a sync after the
previous one was served: 0-{found["alias_webhooks"]["start_offset_max_seconds"]} s by alias (the daemon's sensor
loop), 0-{found["stage_polling"]["start_offset_max_seconds"]} s by stage (the poll interval). Seconds from the registry call until the
marketplace's `@production` serves the version (read every 0.25 s); p50 and p95 interpolated
between samples.

{_table(table(found))}
Registry load of the full poll: {found["poll_requests"]} requests for {found["poll_load_workspaces"]} workspaces every
{found["poll_interval_seconds"]} s, **{found["poll_requests_per_second_per_workspace"]} requests per second per workspace**
(webhook events add a poll of their workspace only).
"""


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


def _targets(results: dict) -> list[dict]:
    """Each target of docs/benchmarks.md with what this run measured."""
    by_size = {r["models_per_workspace"]: r for r in results["sync_vs_bare"]}
    spread = {r["workspaces"]: r for r in results["workspaces"]}
    tick = max(results["sensor_tick"], key=lambda r: r["workspaces"])
    one_gib, big = results["large_artifact"], results["large_model"]
    per_model = [r["step_seconds_per_version"] for r in results["sync_vs_bare"]]
    flat = round(max(per_model) / min(per_model), 3)
    peak = max(
        [
            one_gib["peak_rss_mb"],
            big["peak_rss_mb"],
            *(r["peak_rss_mb"] for r in results["sync_vs_bare"]),
        ]
    )
    smallest, largest = min(spread), max(k for k in spread if k <= 30)

    def target(name: str, measured, met: bool, key: str | None = None) -> dict:
        if key:
            results[key] = measured
        return {"target": name, "measured": measured, "met": bool(met)}

    def propagated(mode: str, how: str) -> dict:
        found = results["propagation"][mode]
        slowest = max(found[kind]["p95_seconds"] for kind in ("promotion", "rollback"))
        return target(
            f"a promotion or rollback {how}: served within {found['target_p95_seconds']} s at p95 "
            "(the slower kind)",
            slowest,
            found["met"],
        )

    largest_sync = by_size.get(50, results["sync_vs_bare"][-1])
    small = results["sync_vs_bare"][0]
    catalog = results["catalog"]
    return [
        target(
            f"sync_ratio ({largest_sync['workspaces']} x {largest_sync['models_per_workspace']}, marketplace / bare) <= 0.8",
            results["sync_ratio"],
            results["sync_ratio"] <= 0.8,
        ),
        target(
            f"{small['workspaces']} x {small['models_per_workspace']} ratio <= 1.5",
            small["ratio"],
            small["ratio"] <= 1.5,
            "small_sync_ratio",
        ),
        target(
            f"{big['artifact_mb']} MB model in {big['files']} files: marketplace time / verified-copy floor <= 2.0",
            big["floor_ratio"],
            big["floor_ratio"] <= 2.0,
            "large_model_floor_ratio",
        ),
        target(
            f"{one_gib['artifact_mb']} MB model: throughput vs raw copy >= 0.3",
            one_gib["throughput_ratio"],
            one_gib["throughput_ratio"] >= 0.3,
            "large_artifact_throughput_ratio",
        ),
        target(
            f"peak RSS of any run process (syncs, {one_gib['artifact_mb']} MB, {big['artifact_mb']} MB) < 300 MB",
            peak,
            peak < 300,
            "peak_rss_mb",
        ),
        target(
            f"{big['artifact_mb']} MB model: peak RSS of every process < 300 MB (run process and MLflow servers)",
            big["peak_rss_mb"],
            big["peak_rss_mb"] < 300,
            "large_model_peak_rss_mb",
        ),
        target(
            f"registry seconds per idle workspace at {smallest} workspaces <= 0.3",
            spread[smallest]["registry_seconds_per_workspace"],
            spread[smallest]["registry_seconds_per_workspace"] <= 0.3,
            "idle_registry_seconds_small",
        ),
        target(
            f"registry seconds per idle workspace at {largest} workspaces <= 0.2",
            spread[largest]["registry_seconds_per_workspace"],
            spread[largest]["registry_seconds_per_workspace"] <= 0.2,
            "idle_registry_seconds_large",
        ),
        target(
            f"step seconds per model flat within 20 % from {min(by_size)} to {max(by_size)} models per workspace "
            "(largest / smallest)",
            flat,
            flat <= 1.2,
            "per_model_cost_spread",
        ),
        target(
            f"tick over {tick['workspaces']} workspaces < 10 s",
            tick["tick_seconds"],
            tick["tick_seconds"] < 10,
        ),
        # One run per partition, so that a workspace that is down fails alone (docs/operations.md).
        target(
            "one run per partition",
            results["backfill"]["runs"],
            results["backfill"]["runs"] == results["backfill"]["partitions"],
        ),
        # The scan is part of the sync: it doubles it when it takes half of it.
        target(
            "scanning does not double the sync time (scan share of the 3 x 50 sync < 0.5)",
            largest_sync["scan_share_of_sync"],
            largest_sync["scan_share_of_sync"] < 0.5,
        ),
        target(
            f"catalog page of {catalog['models']} models: a keystroke filters in < 100 ms",
            catalog["keystroke_ms_max"],
            catalog["keystroke_ms_max"] is not None and catalog["keystroke_ms_max"] < 100,
        ),
        propagated("alias_webhooks", "by alias, with webhooks"),
        propagated(
            "stage_polling",
            f"by stage, polled every {results['propagation']['poll_interval_seconds']} s",
        ),
    ]


ITEMS = 9


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
        "models": [5, 20, 50, 100] if not smoke else [2, 3],
        # The headline size (sync_ratio) is measured in this many pairs, the median kept.
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
            "workspaces": f"Up to {max(sizes['spread'])} workspaces share 3 tracking servers here (round robin), "
            f"each workspace owning {sizes['models_per_workspace']} model(s) of its server."
        },
    }
    log = args.out / "bench.log"
    _log_to(log)
    print(
        f"make bench: {ITEMS} items, about {'40-50 minutes' if not smoke else 'a few minutes'}; "
        f"MLflow and Dagster logs in {log}",
        flush=True,
    )
    step = _Progress(ITEMS, log)
    with tempfile.TemporaryDirectory(prefix="marketplace-bench-") as tmp:
        bench = Bench(Path(tmp))
        try:
            with step("sync vs the bare export tool, by models per workspace"):
                results["sync_vs_bare"] = bench_sync_vs_bare(
                    bench,
                    sizes["workspaces"],
                    sizes["models"],
                    Path(tmp),
                    pool_at=sizes["models"][1],
                    warm_at=sizes["models"][0],
                    repeat_at=sizes["repeat_at"],
                    repeats=sizes["repeats"],
                )
            results["sync_ratio_by_size"] = {
                f"{r['workspaces']}x{r['models_per_workspace']}": r["ratio"]
                for r in results["sync_vs_bare"]
            }
            fifty = [r for r in results["sync_vs_bare"] if r["models_per_workspace"] == 50]
            results["sync_ratio"] = (fifty or results["sync_vs_bare"][-1:])[0]["ratio"]
            # Not a target: what the smallest sync would take with a warm run worker (see the report).
            results["small_sync_warm_worker_ratio"] = results["sync_vs_bare"][0][
                "warm_worker_ratio"
            ]
            with step("by workspaces: a sync, a cycle with nothing new, a sensor tick"):
                results["workspaces"], results["sensor_tick"] = bench_workspaces(
                    bench, sizes["spread"], sizes["models_per_workspace"], Path(tmp)
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
                from benchmarks.sandbox import bench_sandbox

                sandbox_dir = Path(tmp) / "sandbox"
                sandbox_dir.mkdir()
                results["sandbox"] = bench_sandbox(sizes["sandbox_repeats"], sandbox_dir)
            with step("propagation: a promotion or rollback until the marketplace serves it"):
                # Imported here: it imports this module's helpers.
                from benchmarks.propagation import bench_propagation

                results["propagation"] = bench_propagation(
                    bench, sizes["propagation_changes"], Path(tmp)
                )
        finally:
            bench.close()
    results["targets"] = _targets(results)
    report(
        results,
        args.out,
        args.report or (args.out / "BENCHMARKS.md" if smoke else ROOT / "BENCHMARKS.md"),
    )
    print(json.dumps(results["targets"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
