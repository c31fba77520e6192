"""A stand-in for a Databricks workspace's front door, for tests (no workspace is reachable here).

It serves what the Databricks SDK and MLflow ask of a workspace host for authentication (OAuth
machine-to-machine discovery and token endpoints; bearer tokens on every API call) and forwards
authenticated MLflow API calls to a real `mlflow server`. With `volumes_root` it also runs jobs:
the Jobs API's one-time runs (`runs/submit`, `runs/get`, `runs/cancel`) of a `python_wheel_task`
as a local process of that wheel's entry point, and the Files API of Unity Catalog volumes,
which the job sees as the local folder `/Volumes` would be on a cluster. It also holds, in memory,
the permissions of registered models: the workspace registry's permissions API and Unity Catalog's
grants API (`RegistryPermissions`), as the marketplace's access grants call them. What it
verifies: that a run reaches each workspace with that workspace's own credentials, what a
submitted job holds, and which permission calls the grants make. What it does not: Databricks' own
registry behaviour (Unity Catalog's registry, who may change permissions, its exact error answers),
cluster start-up and library installation, which only a real workspace shows.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import os
import re
import secrets
import subprocess
import sys
import threading
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

import requests
from dagster_pipes import decode_param, encode_param

from .faults import LoopbackServer, RelayHandler

TOKEN_OWNER = "token-owner@example.com"  # the user a personal access token belongs to
ARTIFACT_ENDPOINTS = ("/api/2.0/mlflow/model-versions/list-artifacts",
                      "/api/2.0/mlflow/model-versions/get-signed-download-uri")


class DatabricksStandIn(LoopbackServer):
    """`auth` is "pat" (expects `token`) or "oauth-m2m" (expects `client_id` and `client_secret`)."""

    def __init__(self, upstream: str, *, auth: str, token: str = "", client_id: str = "", client_secret: str = "",
                 volumes_root: Path | None = None, secrets_store: dict[str, str] | None = None,
                 cluster_env: dict[str, str] | None = None):
        self.jobs = JobRunner(self, volumes_root, secrets_store or {}, cluster_env or {}) if volumes_root else None
        self.upstream = upstream.rstrip("/")
        self.auth = auth
        self.expected = {"token": token, "client_id": client_id, "client_secret": client_secret}
        # Whoever calls creates the models, and so holds CAN_MANAGE on them.
        self.permissions = RegistryPermissions(
            self.upstream, ("service_principal_name", client_id) if auth == "oauth-m2m" else ("user_name", TOKEN_OWNER))
        self.issued: set[str] = set()
        self.api_calls = 0
        self.refused: list[str] = []
        self.signed: dict[str, Path] = {}
        super().__init__(self._handler())
        self.host = self.uri

    def _token_ok(self, header: str | None) -> bool:
        if not header or not header.startswith("Bearer "):
            return False
        token = header.removeprefix("Bearer ")
        if self.jobs is not None and token == self.jobs.job_token:
            return True  # a job running in this workspace, with the workspace's own identity for it
        return token == self.expected["token"] if self.auth == "pat" else token in self.issued

    def _issue(self, headers, body: bytes) -> str | None:
        """An access token for a client-credentials grant with the right id and secret, else None."""
        form = {k: v[0] for k, v in parse_qs(body.decode()).items()}
        client_id, client_secret = form.get("client_id"), form.get("client_secret")
        basic = headers.get("Authorization", "")
        if basic.startswith("Basic "):
            client_id, _, client_secret = base64.b64decode(basic[6:]).decode().partition(":")
        if form.get("grant_type") != "client_credentials" or (client_id, client_secret) != (
                self.expected["client_id"], self.expected["client_secret"]):
            return None
        token = secrets.token_hex(16)
        self.issued.add(token)
        return token

    def _model_version_artifacts(self, endpoint: str, query: dict) -> dict:
        """Databricks' model-version artifact API (how a `models:/` URI downloads from a Databricks
        registry), answered from the upstream server's artifact folder of that version."""
        name, version = query["name"][0], query["version"][0]
        relative = query.get("path", [""])[0]
        located = requests.get(f"{self.upstream}/api/2.0/mlflow/model-versions/get-download-uri",
                               params={"name": name, "version": version}, timeout=30).json()["artifact_uri"]
        root = Path(urlparse(located).path if located.startswith("file:") else located)
        target = root / relative
        if endpoint.endswith("get-signed-download-uri"):
            key = secrets.token_hex(16)
            self.signed[key] = target
            return {"signed_uri": f"{self.host}/signed/{key}", "headers": []}
        entries = [target] if target.is_file() else sorted(target.iterdir())
        return {"files": [{"path": e.relative_to(root).as_posix(), "is_dir": e.is_dir(),
                           "file_size": 0 if e.is_dir() else e.stat().st_size} for e in entries]}

    def _handler(self):
        standin = self

        class Handler(RelayHandler):
            def serve(self) -> None:
                body = self.body()
                path = self.path.split("?")[0]
                if path == "/oidc/.well-known/oauth-authorization-server":
                    return self.answer(200, {"authorization_endpoint": f"{standin.host}/oidc/v1/authorize",
                                             "token_endpoint": f"{standin.host}/oidc/v1/token"})
                if path == "/oidc/v1/token":
                    token = standin._issue(self.headers, body)
                    if token is None:
                        standin.refused.append(path)
                        return self.answer(401, {"error": "invalid_client"})
                    return self.answer(200, {"access_token": token, "token_type": "Bearer", "expires_in": 3600})
                if path.startswith("/signed/"):  # a pre-signed download URL: no bearer token, as in the cloud
                    local = standin.signed.get(path.removeprefix("/signed/"))
                    if local is None:
                        return self.answer(403, {"error": "expired"})
                    return self.answer(200, local.read_bytes(), {"Content-Type": "application/octet-stream"})
                if not standin._token_ok(self.headers.get("Authorization")):
                    standin.refused.append(path)
                    return self.answer(401, {"error_code": "UNAUTHENTICATED", "message": "invalid credentials"})
                standin.api_calls += 1
                if standin.jobs is not None and path.startswith(JobRunner.PREFIXES):
                    return self.answer(*standin.jobs.serve(self.command, path, self.path.partition("?")[2], body))
                if path.startswith(RegistryPermissions.PREFIXES):
                    return self.answer(*standin.permissions.serve(self.command, path, self.path.partition("?")[2], body))
                if path in ARTIFACT_ENDPOINTS:
                    return self.answer(200, standin._model_version_artifacts(path, parse_qs(self.path.partition("?")[2])))
                self.relay(self.forward(standin.upstream, body, drop=("authorization",)))

        return Handler


class JobRunner:
    """One-time job runs and UC volume files, for a stand-in workspace."""

    PREFIXES = ("/api/2.2/jobs/runs/", "/api/2.0/fs/", "/api/2.0/secrets/get")

    def __init__(self, standin: DatabricksStandIn, volumes_root: Path, secrets_store: dict[str, str],
                 cluster_env: dict[str, str]):
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
                    return 404, {"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "no such secret"}
                self.secrets_read.append(f"{asked['scope']}/{asked['key']}")
                return 200, {"key": asked["key"], "value": base64.b64encode(value.encode()).decode()}
            if path.endswith("/runs/submit"):
                return 200, {"run_id": self._submit(json.loads(body))}
            run = self.runs.get(int((parse_qs(query).get("run_id") or [json.loads(body or b"{}").get("run_id", 0)])[0]))
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
            return 200, {"contents": [{"path": "/" + e.relative_to(self.volumes_root).as_posix(), "name": e.name,
                                       "is_directory": e.is_dir(), "file_size": 0 if e.is_dir() else e.stat().st_size}
                                      for e in entries]}
        if method == "PUT":
            local.parent.mkdir(parents=True, exist_ok=True)
            local.write_bytes(body)
            return 200, {}
        if method == "DELETE":
            local.unlink()
            return 200, {}
        return 200, local.read_bytes()

    def _volume_paths(self, encoded: str) -> str:
        """Pipes parameters name /Volumes paths; on this machine the job finds them under volumes_root."""
        params = decode_param(encoded)
        if isinstance(params.get("path"), str) and params["path"].startswith("/Volumes/"):
            params["path"] = str(self.local(params["path"]))
        return encode_param(params)

    def _environment(self, spark_env: dict[str, str]) -> dict[str, str]:
        env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"), **self.cluster_env,
               "DATABRICKS_HOST": self.standin.host, "DATABRICKS_TOKEN": self.job_token}
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
                process = subprocess.Popen([sys.executable, "-m", "marketplace.pipes_export", *arguments],
                                           env=env, stdout=output, stderr=subprocess.STDOUT)
            self.runs[run_id] = {"process": process, "log": log}
        return run_id

    def _state(self, run: dict) -> dict:
        code = run["process"].poll()
        if code is None:
            state = {"life_cycle_state": "RUNNING", "state_message": "running"}
        else:
            state = {"life_cycle_state": "TERMINATED", "result_state": "SUCCESS" if code == 0 else "FAILED",
                     "state_message": "" if code == 0 else f"the task exited with {code}"}
        return {"state": state, "run_page_url": f"{self.standin.host}/#job/runs/{id(run)}"}


class RegistryPermissions:
    """Registered models' permissions, in memory: the workspace registry's permissions API (an ACL
    per model id, each principal holding one level directly; the `admins` group holds CAN_MANAGE
    by inheritance) and Unity Catalog's grants API (privileges per principal on a FUNCTION
    securable). A model exists when the upstream server has it. Principals named in `unknown` do
    not exist: a request naming one fails whole, as Databricks answers (by public reports; not
    checked against a workspace). `writes` lists every PATCH and PUT."""

    PREFIXES = ("/api/2.0/mlflow/databricks/registered-models/get", "/api/2.0/permissions/registered-models/",
                "/api/2.1/unity-catalog/permissions/")
    FIELDS = ("user_name", "group_name", "service_principal_name")
    LEVELS = ("CAN_READ", "CAN_EDIT", "CAN_MANAGE_STAGING_VERSIONS", "CAN_MANAGE_PRODUCTION_VERSIONS", "CAN_MANAGE")
    FUNCTION_PRIVILEGES = ("EXECUTE", "APPLY_TAG", "MANAGE", "ALL_PRIVILEGES")

    def __init__(self, upstream: str, owner: tuple[str, str]):
        self.upstream = upstream
        self.owner = owner  # (ACL field, name) of the caller, who creates the models
        self.unknown: set[str] = set()
        self.acls: dict[str, dict[tuple[str, str], str]] = {}  # model id -> {(field, principal): level}
        self.grants: dict[str, dict[str, set[str]]] = {}  # UC full name -> {principal: privileges}
        self.writes: list[tuple[str, str]] = []
        self._lock = threading.Lock()

    @staticmethod
    def model_id(name: str) -> str:
        return hashlib.sha256(name.encode()).hexdigest()[:32]

    def acl(self, name: str) -> dict[tuple[str, str], str]:
        """The direct ACL of workspace model `name` (for a test to read or prepare)."""
        return self.acls.setdefault(self.model_id(name), {self.owner: "CAN_MANAGE"})

    def uc_grants(self, full_name: str) -> dict[str, set[str]]:
        return self.grants.setdefault(full_name, {})

    def _exists(self, name: str) -> bool:
        return requests.get(f"{self.upstream}/api/2.0/mlflow/registered-models/get", params={"name": name},
                            timeout=30).ok

    def serve(self, method: str, path: str, query: str, body: bytes) -> tuple[int, dict]:
        request = json.loads(body or b"{}")
        with self._lock:
            if method in ("PATCH", "PUT"):
                self.writes.append((method, path))
            if path.startswith("/api/2.0/mlflow/databricks/"):
                name = parse_qs(query).get("name", [""])[0]
                if not self._exists(name):
                    return 404, {"error_code": "RESOURCE_DOES_NOT_EXIST", "message": f"Model '{name}' does not exist."}
                self.acl(name)
                return 200, {"registered_model_databricks": {"id": self.model_id(name), "name": name,
                                                             "permission_level": "CAN_MANAGE"}}
            if path.startswith("/api/2.0/permissions/"):
                return self._workspace(method, path.rpartition("/")[2], request)
            securable, _, full_name = unquote(path.removeprefix("/api/2.1/unity-catalog/permissions/")).partition("/")
            return self._unity_catalog(method, securable, full_name, request)

    def _workspace(self, method: str, model_id: str, request: dict) -> tuple[int, dict]:
        acl = self.acls.get(model_id)
        if acl is None:
            return 404, {"error_code": "RESOURCE_DOES_NOT_EXIST",
                         "message": f"Registered model {model_id} does not exist."}
        if method in ("PATCH", "PUT"):
            entries = {}
            for entry in request.get("access_control_list", []):
                (field,) = [f for f in self.FIELDS if entry.get(f)]
                if entry[field] in self.unknown:
                    label = {"user_name": "UserName", "group_name": "GroupName",
                             "service_principal_name": "ServicePrincipalName"}[field]
                    return 400, {"error_code": "INVALID_PARAMETER_VALUE",
                                 "message": f"Principal: {label}({entry[field]}) does not exist"}
                if entry.get("permission_level") not in self.LEVELS:
                    return 400, {"error_code": "INVALID_PARAMETER_VALUE", "message": (
                        f"Permission {entry.get('permission_level')} is not valid for registered models")}
                entries[(field, entry[field])] = entry["permission_level"]
            if method == "PUT":
                acl.clear()
            acl.update(entries)
        listed = [{field: principal, "all_permissions": [{"permission_level": level, "inherited": False}]}
                  for (field, principal), level in sorted(acl.items())]
        listed.append({"group_name": "admins", "all_permissions": [
            {"permission_level": "CAN_MANAGE", "inherited": True, "inherited_from_object": ["/registered-models/"]}]})
        return 200, {"object_id": f"/registered-models/{model_id}", "object_type": "registered-model",
                     "access_control_list": listed}

    def _unity_catalog(self, method: str, securable: str, full_name: str, request: dict) -> tuple[int, dict]:
        if securable.upper() != "FUNCTION" or not self._exists(full_name):
            return 404, {"error_code": "RESOURCE_DOES_NOT_EXIST",
                         "message": f"{securable} '{full_name}' does not exist (a registered model is a FUNCTION)."}
        grants = self.uc_grants(full_name)
        if method == "PATCH":
            changes = request.get("changes", [])
            for change in changes:
                if change.get("principal") in self.unknown:
                    return 400, {"error_code": "PRINCIPAL_DOES_NOT_EXIST",
                                 "message": f"Could not find principal with name {change['principal']}"}
                stray = set(change.get("add", []) + change.get("remove", [])) - set(self.FUNCTION_PRIVILEGES)
                if stray:
                    return 400, {"error_code": "INVALID_PARAMETER_VALUE",
                                 "message": f"Privilege {sorted(stray)[0]} is not applicable to this entity"}
            for change in changes:
                held = grants.setdefault(change["principal"], set())
                held.update(change.get("add", []))
                held.difference_update(change.get("remove", []))
        return 200, {"privilege_assignments": [{"principal": principal, "privileges": sorted(held)}
                                               for principal, held in sorted(grants.items()) if held]}
