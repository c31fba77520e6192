"""The Jobs API's one-time runs of a `python_wheel_task` (run as a local process of the wheel's
entry point), the Files API of Unity Catalog volumes (a local folder standing in for `/Volumes`) and
the secrets API, for the Databricks stand-in (`server.DatabricksStandIn`)."""

from __future__ import annotations

import base64
import itertools
import json
import os
import re
import secrets
import subprocess
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, unquote

from dagster_pipes import decode_param, encode_param

if TYPE_CHECKING:
    from .server import DatabricksStandIn


class JobRunner:
    """One-time job runs and UC volume files, for a stand-in workspace."""

    PREFIXES = ("/api/2.2/jobs/runs/", "/api/2.0/fs/", "/api/2.0/secrets/get")

    def __init__(
        self,
        standin: DatabricksStandIn,
        volumes_root: Path,
        secrets_store: dict[str, str],
        cluster_env: dict[str, str],
    ):
        self.standin = standin
        self.volumes_root = Path(volumes_root)
        self.secrets_store = secrets_store  # "scope/key" -> value
        self.cluster_env = cluster_env  # what the cluster provides (an instance profile would)
        self.submitted: list[dict] = []
        self.secrets_read: list[str] = []
        self.runs: dict[int, dict] = {}
        self.job_token = secrets.token_hex(16)  # the identity a job runs with in its workspace
        self._ids = itertools.count(1001)
        self._lock = threading.Lock()

    def local(self, path: str) -> Path:
        if not path.startswith("/Volumes/"):
            raise ValueError(f"{path} is not a volume path")
        return self.volumes_root / path.lstrip("/")

    def serve(self, method: str, path: str, query: str, body: bytes) -> tuple[int, dict | bytes]:
        try:
            if path.startswith("/api/2.0/fs/"):
                return self._files(method, path, body)
            if path == "/api/2.0/secrets/get":  # what dbutils.secrets.get asks
                asked = {k: v[0] for k, v in parse_qs(query).items()}
                value = self.secrets_store.get(f"{asked.get('scope')}/{asked.get('key')}")
                if value is None:
                    return 404, {
                        "error_code": "RESOURCE_DOES_NOT_EXIST",
                        "message": "no such secret",
                    }
                self.secrets_read.append(f"{asked['scope']}/{asked['key']}")
                return 200, {
                    "key": asked["key"],
                    "value": base64.b64encode(value.encode()).decode(),
                }
            if path.endswith("/runs/submit"):
                return 200, {"run_id": self._submit(json.loads(body))}
            run = self.runs.get(
                int(
                    (parse_qs(query).get("run_id") or [json.loads(body or b"{}").get("run_id", 0)])[
                        0
                    ]
                )
            )
            if run is None:
                return 404, {"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "no such run"}
            if path.endswith("/runs/cancel"):
                run["process"].kill()
                return 200, {}
            return 200, self._state(run)
        except FileNotFoundError as exc:
            return 404, {"error_code": "NOT_FOUND", "message": str(exc)}

    def _files(self, method: str, path: str, body: bytes) -> tuple[int, dict | bytes]:
        kind, _, target = path.removeprefix("/api/2.0/fs/").partition("/")
        local = self.local("/" + unquote(target))
        if kind == "directories":
            if method == "PUT":
                local.mkdir(parents=True, exist_ok=True)
                return 200, {}
            if method == "DELETE":
                local.rmdir()
                return 200, {}
            entries = sorted(local.iterdir())  # FileNotFoundError: 404, as for a missing directory
            return 200, {
                "contents": [
                    {
                        "path": "/" + e.relative_to(self.volumes_root).as_posix(),
                        "name": e.name,
                        "is_directory": e.is_dir(),
                        "file_size": 0 if e.is_dir() else e.stat().st_size,
                    }
                    for e in entries
                ]
            }
        if method == "PUT":
            local.parent.mkdir(parents=True, exist_ok=True)
            local.write_bytes(body)
            return 200, {}
        if method == "DELETE":
            local.unlink()
            return 200, {}
        return 200, local.read_bytes()

    def _volume_paths(self, encoded: str) -> str:
        """Pipes parameters name /Volumes paths; on this machine the job finds them under
        volumes_root."""
        params = decode_param(encoded)
        if isinstance(params.get("path"), str) and params["path"].startswith("/Volumes/"):
            params["path"] = str(self.local(params["path"]))
        return encode_param(params)

    def _environment(self, spark_env: dict[str, str]) -> dict[str, str]:
        env = {
            "PATH": os.environ["PATH"],
            "HOME": os.environ.get("HOME", "/tmp"),
            **self.cluster_env,
            "DATABRICKS_HOST": self.standin.host,
            "DATABRICKS_TOKEN": self.job_token,
        }
        for name, value in spark_env.items():
            reference = re.fullmatch(r"\{\{secrets/([^/]+)/([^/]+)\}\}", value)
            env[name] = self.secrets_store[f"{reference[1]}/{reference[2]}"] if reference else value
            if name.startswith("DAGSTER_PIPES_"):
                env[name] = self._volume_paths(env[name])
        return env

    def _submit(self, spec: dict) -> int:
        (task,) = spec["tasks"]
        wheel = task["python_wheel_task"]
        if (wheel["package_name"], wheel["entry_point"]) != ("marketplace", "marketplace-export"):
            raise AssertionError(f"unexpected wheel task {wheel}")
        arguments = list(wheel.get("parameters", []))
        for index, argument in enumerate(arguments[:-1]):
            if argument.startswith("--dagster-pipes-"):
                arguments[index + 1] = self._volume_paths(arguments[index + 1])
        env = self._environment(task.get("new_cluster", {}).get("spark_env_vars", {}))
        log = self.volumes_root / f"job-{len(self.runs)}.log"
        with self._lock:
            run_id = next(self._ids)
            self.submitted.append(spec)
            with open(log, "wb") as output:
                process = subprocess.Popen(
                    [sys.executable, "-m", "marketplace.pipes_export", *arguments],
                    env=env,
                    stdout=output,
                    stderr=subprocess.STDOUT,
                )
            self.runs[run_id] = {"process": process, "log": log}
        return run_id

    def _state(self, run: dict) -> dict:
        code = run["process"].poll()
        if code is None:
            state = {"life_cycle_state": "RUNNING", "state_message": "running"}
        else:
            state = {
                "life_cycle_state": "TERMINATED",
                "result_state": "SUCCESS" if code == 0 else "FAILED",
                "state_message": "" if code == 0 else f"the task exited with {code}",
            }
        return {"state": state, "run_page_url": f"{self.standin.host}/#job/runs/{id(run)}"}
