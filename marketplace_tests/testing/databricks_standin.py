"""A stand-in for a Databricks workspace's front door, for tests (no workspace is reachable here).

It serves what the Databricks SDK and MLflow ask of a workspace host for authentication (OAuth
machine-to-machine discovery and token endpoints; bearer tokens on every API call) and forwards
authenticated MLflow API calls to a real `mlflow server`. With `volumes_root` it also runs jobs:
the Jobs API's one-time runs (`runs/submit`, `runs/get`, `runs/cancel`) of a `python_wheel_task`
as a local process of that wheel's entry point, and the Files API of Unity Catalog volumes,
which the job sees as the local folder `/Volumes` would be on a cluster. It also holds, in memory,
the permissions of registered models: the workspace registry's permissions API and Unity Catalog's
grants API (`RegistryPermissions`), as the marketplace's access grants call them. And it holds the
workspace registry's webhooks (`RegistryWebhooks`): the registry-webhooks API (create, list,
update, delete), and after each registry change it forwarded successfully (a stage transition, a
new model version or registered model, a version tag), a delivery to every active HTTP webhook
subscribed to it, shaped and signed as Databricks documents (`X-Databricks-Signature`, the hex
HMAC-SHA256 of the body), sent from a thread of its own, once and best effort. What it verifies:
that a run reaches each workspace with that workspace's own credentials, what a submitted job
holds, which permission calls the grants make, which webhooks the marketplace registers and that
the receiver takes the deliveries built from Databricks' published examples. What it does not:
Databricks' own registry behaviour (Unity Catalog's registry, who may change permissions or
registry-wide webhooks, its exact error answers), the exact payload, headers and retries of a real
delivery, that Databricks delivers to public HTTPS URLs only, job webhooks, cluster start-up and
library installation, which only a real workspace shows.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import json
import os
import re
import secrets
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

import requests
from dagster_pipes import decode_param, encode_param

from .faults import LoopbackServer, RelayHandler

TOKEN_OWNER = "token-owner@example.com"  # the user a personal access token belongs to
ARTIFACT_ENDPOINTS = (
    "/api/2.0/mlflow/model-versions/list-artifacts",
    "/api/2.0/mlflow/model-versions/get-signed-download-uri",
)


class DatabricksStandIn(LoopbackServer):
    """`auth` is "pat" (expects `token`) or "oauth-m2m" (expects `client_id` and
    `client_secret`)."""

    def __init__(
        self,
        upstream: str,
        *,
        auth: str,
        token: str = "",
        client_id: str = "",
        client_secret: str = "",
        volumes_root: Path | None = None,
        secrets_store: dict[str, str] | None = None,
        cluster_env: dict[str, str] | None = None,
    ):
        self.jobs = (
            JobRunner(self, volumes_root, secrets_store or {}, cluster_env or {})
            if volumes_root
            else None
        )
        self.upstream = upstream.rstrip("/")
        self.auth = auth
        self.expected = {"token": token, "client_id": client_id, "client_secret": client_secret}
        # Whoever calls creates the models, and so holds CAN_MANAGE on them.
        self.permissions = RegistryPermissions(
            self.upstream,
            ("service_principal_name", client_id)
            if auth == "oauth-m2m"
            else ("user_name", TOKEN_OWNER),
        )
        self.webhooks = RegistryWebhooks(self.upstream)
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
        """An access token for a client-credentials grant with the right id and secret, else
        None."""
        form = {k: v[0] for k, v in parse_qs(body.decode()).items()}
        client_id, client_secret = form.get("client_id"), form.get("client_secret")
        basic = headers.get("Authorization", "")
        if basic.startswith("Basic "):
            client_id, _, client_secret = base64.b64decode(basic[6:]).decode().partition(":")
        if form.get("grant_type") != "client_credentials" or (client_id, client_secret) != (
            self.expected["client_id"],
            self.expected["client_secret"],
        ):
            return None
        token = secrets.token_hex(16)
        self.issued.add(token)
        return token

    def _model_version_artifacts(self, endpoint: str, query: dict) -> dict:
        """Databricks' model-version artifact API (how a `models:/` URI downloads from a Databricks
        registry), answered from the upstream server's artifact folder of that version."""
        name, version = query["name"][0], query["version"][0]
        relative = query.get("path", [""])[0]
        located = requests.get(
            f"{self.upstream}/api/2.0/mlflow/model-versions/get-download-uri",
            params={"name": name, "version": version},
            timeout=30,
        ).json()["artifact_uri"]
        root = Path(urlparse(located).path if located.startswith("file:") else located)
        target = root / relative
        if endpoint.endswith("get-signed-download-uri"):
            key = secrets.token_hex(16)
            self.signed[key] = target
            return {"signed_uri": f"{self.host}/signed/{key}", "headers": []}
        entries = [target] if target.is_file() else sorted(target.iterdir())
        return {
            "files": [
                {
                    "path": e.relative_to(root).as_posix(),
                    "is_dir": e.is_dir(),
                    "file_size": 0 if e.is_dir() else e.stat().st_size,
                }
                for e in entries
            ]
        }

    def _handler(self):
        standin = self

        class Handler(RelayHandler):
            def serve(self) -> None:
                body = self.body()
                path = self.path.split("?")[0]
                if path == "/oidc/.well-known/oauth-authorization-server":
                    return self.answer(
                        200,
                        {
                            "authorization_endpoint": f"{standin.host}/oidc/v1/authorize",
                            "token_endpoint": f"{standin.host}/oidc/v1/token",
                        },
                    )
                if path == "/oidc/v1/token":
                    token = standin._issue(self.headers, body)
                    if token is None:
                        standin.refused.append(path)
                        return self.answer(401, {"error": "invalid_client"})
                    return self.answer(
                        200, {"access_token": token, "token_type": "Bearer", "expires_in": 3600}
                    )
                if path.startswith(
                    "/signed/"
                ):  # a pre-signed download URL: no bearer token, as in the cloud
                    local = standin.signed.get(path.removeprefix("/signed/"))
                    if local is None:
                        return self.answer(403, {"error": "expired"})
                    return self.answer(
                        200, local.read_bytes(), {"Content-Type": "application/octet-stream"}
                    )
                if not standin._token_ok(self.headers.get("Authorization")):
                    standin.refused.append(path)
                    return self.answer(
                        401, {"error_code": "UNAUTHENTICATED", "message": "invalid credentials"}
                    )
                standin.api_calls += 1
                if standin.jobs is not None and path.startswith(JobRunner.PREFIXES):
                    return self.answer(
                        *standin.jobs.serve(self.command, path, self.path.partition("?")[2], body)
                    )
                if path.startswith(RegistryPermissions.PREFIXES):
                    return self.answer(
                        *standin.permissions.serve(
                            self.command, path, self.path.partition("?")[2], body
                        )
                    )
                if path in ARTIFACT_ENDPOINTS:
                    return self.answer(
                        200,
                        standin._model_version_artifacts(
                            path, parse_qs(self.path.partition("?")[2])
                        ),
                    )
                if path.startswith(RegistryWebhooks.PREFIX):
                    return self.answer(
                        *standin.webhooks.serve(
                            self.command, path, self.path.partition("?")[2], body
                        )
                    )
                triggered = (
                    self.command == "POST"
                    and path in RegistryWebhooks.TRIGGERS
                    and bool(standin.webhooks.hooks)
                )
                before = (
                    standin.webhooks.stage_of(body)
                    if triggered and path == RegistryWebhooks.TRANSITION
                    else None
                )
                answer = self.forward(standin.upstream, body, drop=("authorization",))
                if triggered and answer is not None and answer.ok:
                    standin.webhooks.fire(path, json.loads(body or b"{}"), answer.json(), before)
                self.relay(answer)

        return Handler


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


class RegistryPermissions:
    """Registered models' permissions, in memory: the workspace registry's permissions API (an ACL
    per model id, each principal holding one level directly; the `admins` group holds CAN_MANAGE
    by inheritance) and Unity Catalog's grants API (privileges per principal on a FUNCTION
    securable). A model exists when the upstream server has it. Principals named in `unknown` do
    not exist: a request naming one fails whole, as Databricks answers (by public reports; not
    checked against a workspace). `writes` lists every PATCH and PUT."""

    PREFIXES = (
        "/api/2.0/mlflow/databricks/registered-models/get",
        "/api/2.0/permissions/registered-models/",
        "/api/2.1/unity-catalog/permissions/",
    )
    FIELDS = ("user_name", "group_name", "service_principal_name")
    LEVELS = (
        "CAN_READ",
        "CAN_EDIT",
        "CAN_MANAGE_STAGING_VERSIONS",
        "CAN_MANAGE_PRODUCTION_VERSIONS",
        "CAN_MANAGE",
    )
    FUNCTION_PRIVILEGES = ("EXECUTE", "APPLY_TAG", "MANAGE", "ALL_PRIVILEGES")

    def __init__(self, upstream: str, owner: tuple[str, str]):
        self.upstream = upstream
        self.owner = owner  # (ACL field, name) of the caller, who creates the models
        self.unknown: set[str] = set()
        self.acls: dict[
            str, dict[tuple[str, str], str]
        ] = {}  # model id -> {(field, principal): level}
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
        return requests.get(
            f"{self.upstream}/api/2.0/mlflow/registered-models/get",
            params={"name": name},
            timeout=30,
        ).ok

    def serve(self, method: str, path: str, query: str, body: bytes) -> tuple[int, dict]:
        request = json.loads(body or b"{}")
        with self._lock:
            if method in ("PATCH", "PUT"):
                self.writes.append((method, path))
            if path.startswith("/api/2.0/mlflow/databricks/"):
                name = parse_qs(query).get("name", [""])[0]
                if not self._exists(name):
                    return 404, {
                        "error_code": "RESOURCE_DOES_NOT_EXIST",
                        "message": f"Model '{name}' does not exist.",
                    }
                self.acl(name)
                return 200, {
                    "registered_model_databricks": {
                        "id": self.model_id(name),
                        "name": name,
                        "permission_level": "CAN_MANAGE",
                    }
                }
            if path.startswith("/api/2.0/permissions/"):
                return self._workspace(method, path.rpartition("/")[2], request)
            securable, _, full_name = unquote(
                path.removeprefix("/api/2.1/unity-catalog/permissions/")
            ).partition("/")
            return self._unity_catalog(method, securable, full_name, request)

    def _workspace(self, method: str, model_id: str, request: dict) -> tuple[int, dict]:
        acl = self.acls.get(model_id)
        if acl is None:
            return 404, {
                "error_code": "RESOURCE_DOES_NOT_EXIST",
                "message": f"Registered model {model_id} does not exist.",
            }
        if method in ("PATCH", "PUT"):
            entries = {}
            for entry in request.get("access_control_list", []):
                (field,) = [f for f in self.FIELDS if entry.get(f)]
                if entry[field] in self.unknown:
                    label = {
                        "user_name": "UserName",
                        "group_name": "GroupName",
                        "service_principal_name": "ServicePrincipalName",
                    }[field]
                    return 400, {
                        "error_code": "INVALID_PARAMETER_VALUE",
                        "message": f"Principal: {label}({entry[field]}) does not exist",
                    }
                if entry.get("permission_level") not in self.LEVELS:
                    return 400, {
                        "error_code": "INVALID_PARAMETER_VALUE",
                        "message": (
                            f"Permission {entry.get('permission_level')} "
                            "is not valid for registered models"
                        ),
                    }
                entries[(field, entry[field])] = entry["permission_level"]
            if method == "PUT":
                acl.clear()
            acl.update(entries)
        listed = [
            {field: principal, "all_permissions": [{"permission_level": level, "inherited": False}]}
            for (field, principal), level in sorted(acl.items())
        ]
        listed.append(
            {
                "group_name": "admins",
                "all_permissions": [
                    {
                        "permission_level": "CAN_MANAGE",
                        "inherited": True,
                        "inherited_from_object": ["/registered-models/"],
                    }
                ],
            }
        )
        return 200, {
            "object_id": f"/registered-models/{model_id}",
            "object_type": "registered-model",
            "access_control_list": listed,
        }

    def _unity_catalog(
        self, method: str, securable: str, full_name: str, request: dict
    ) -> tuple[int, dict]:
        if securable.upper() != "FUNCTION" or not self._exists(full_name):
            return 404, {
                "error_code": "RESOURCE_DOES_NOT_EXIST",
                "message": (
                    f"{securable} '{full_name}' does not exist (a registered model is a FUNCTION)."
                ),
            }
        grants = self.uc_grants(full_name)
        if method == "PATCH":
            changes = request.get("changes", [])
            for change in changes:
                if change.get("principal") in self.unknown:
                    return 400, {
                        "error_code": "PRINCIPAL_DOES_NOT_EXIST",
                        "message": f"Could not find principal with name {change['principal']}",
                    }
                stray = set(change.get("add", []) + change.get("remove", [])) - set(
                    self.FUNCTION_PRIVILEGES
                )
                if stray:
                    return 400, {
                        "error_code": "INVALID_PARAMETER_VALUE",
                        "message": f"Privilege {min(stray)} is not applicable to this entity",
                    }
            for change in changes:
                held = grants.setdefault(change["principal"], set())
                held.update(change.get("add", []))
                held.difference_update(change.get("remove", []))
        return 200, {
            "privilege_assignments": [
                {"principal": principal, "privileges": sorted(held)}
                for principal, held in sorted(grants.items())
                if held
            ]
        }


class RegistryWebhooks:
    """The workspace registry's webhooks, in memory, secrets included (`hooks`, by id), and their
    deliveries (`deliveries`: each webhook id, event, URL and the status it got, or the error).

    The API answers as Databricks documents it: ids of 32 hex digits, no secret or authorization
    ever listed, `REGISTERED_MODEL_CREATED` only on a registry-wide webhook, ACTIVE by default; a
    TEST_MODE or DISABLED webhook gets nothing. Payloads follow Databricks' published examples."""

    PREFIX = "/api/2.0/mlflow/registry-webhooks/"
    EVENTS = (
        "MODEL_VERSION_CREATED",
        "MODEL_VERSION_TRANSITIONED_STAGE",
        "TRANSITION_REQUEST_CREATED",
        "COMMENT_CREATED",
        "REGISTERED_MODEL_CREATED",
        "MODEL_VERSION_TAG_SET",
        "MODEL_VERSION_TRANSITIONED_TO_STAGING",
        "MODEL_VERSION_TRANSITIONED_TO_PRODUCTION",
        "MODEL_VERSION_TRANSITIONED_TO_ARCHIVED",
        "TRANSITION_REQUEST_TO_STAGING_CREATED",
        "TRANSITION_REQUEST_TO_PRODUCTION_CREATED",
        "TRANSITION_REQUEST_TO_ARCHIVED_CREATED",
    )
    TRANSITION = "/api/2.0/mlflow/model-versions/transition-stage"
    VERSION_CREATED = "/api/2.0/mlflow/model-versions/create"
    MODEL_CREATED = "/api/2.0/mlflow/registered-models/create"
    TAG_SET = "/api/2.0/mlflow/model-versions/set-tag"
    TRIGGERS = (TRANSITION, VERSION_CREATED, MODEL_CREATED, TAG_SET)
    STATUSES = ("ACTIVE", "DISABLED", "TEST_MODE")

    def __init__(self, upstream: str):
        self.upstream = upstream
        self.hooks: dict[str, dict] = {}
        self.deliveries: list[dict] = []
        self._changed = threading.Condition()

    @staticmethod
    def _error(status: int, code: str, message: str) -> tuple[int, dict]:
        return status, {"error_code": code, "message": message}

    @staticmethod
    def _listed(hook: dict) -> dict:
        shown = {k: v for k, v in hook.items() if k not in ("http_url_spec", "job_spec")}
        if "http_url_spec" in hook:
            shown["http_url_spec"] = {
                "url": hook["http_url_spec"]["url"],
                "enable_ssl_verification": hook["http_url_spec"].get(
                    "enable_ssl_verification", True
                ),
            }
        if "job_spec" in hook:
            shown["job_spec"] = {k: v for k, v in hook["job_spec"].items() if k != "access_token"}
        return shown

    def _invalid(self, hook: dict) -> tuple[int, dict] | None:
        events = hook.get("events")
        if not events or not isinstance(events, list) or set(events) - set(self.EVENTS):
            return self._error(
                400,
                "INVALID_PARAMETER_VALUE",
                f"events: {events!r} is not a list of webhook events",
            )
        if ("http_url_spec" in hook) == ("job_spec" in hook):
            return self._error(
                400,
                "INVALID_PARAMETER_VALUE",
                "exactly one of http_url_spec and job_spec is required",
            )
        if "http_url_spec" in hook and not hook["http_url_spec"].get("url"):
            return self._error(400, "INVALID_PARAMETER_VALUE", "http_url_spec.url is required")
        if hook.get("model_name") and "REGISTERED_MODEL_CREATED" in events:
            return self._error(
                400,
                "INVALID_PARAMETER_VALUE",
                "REGISTERED_MODEL_CREATED can only be specified for a registry-wide webhook",
            )
        if hook.get("status", "ACTIVE") not in self.STATUSES:
            return self._error(400, "INVALID_PARAMETER_VALUE", f"status: {hook['status']!r}")
        return None

    def serve(self, method: str, path: str, query: str, body: bytes) -> tuple[int, dict]:
        request = json.loads(body or b"{}")
        asked = parse_qs(query)
        action = path.removeprefix(self.PREFIX)
        now = int(time.time() * 1000)
        with self._changed:
            if (method, action) == ("POST", "create"):
                hook = {
                    k: request[k]
                    for k in (
                        "description",
                        "events",
                        "http_url_spec",
                        "job_spec",
                        "model_name",
                        "status",
                    )
                    if request.get(k) is not None
                }
                if (invalid := self._invalid(hook)) is not None:
                    return invalid
                if (
                    hook.get("model_name")
                    and not requests.get(
                        f"{self.upstream}/api/2.0/mlflow/registered-models/get",
                        params={"name": hook["model_name"]},
                        timeout=30,
                    ).ok
                ):
                    return self._error(
                        404,
                        "RESOURCE_DOES_NOT_EXIST",
                        f"Model '{hook['model_name']}' does not exist.",
                    )
                hook.update(
                    id=secrets.token_hex(16), creation_timestamp=now, last_updated_timestamp=now
                )
                hook.setdefault("status", "ACTIVE")
                self.hooks[hook["id"]] = hook
                return 200, {"webhook": self._listed(hook)}
            if (method, action) == ("GET", "list"):
                wanted = set(asked.get("events", []))
                model = asked.get("model_name", [None])[0]
                found = [
                    self._listed(h)
                    for h in self.hooks.values()
                    if (not wanted or wanted & set(h["events"]))
                    and (model is None or h.get("model_name") == model)
                ]
                start, size = (
                    int(asked.get("page_token", ["0"])[0]),
                    int(asked.get("max_results", ["100"])[0]),
                )
                page = {"webhooks": found[start : start + size]}
                if start + size < len(found):
                    page["next_page_token"] = str(start + size)
                return 200, page
            if (method, action) == ("PATCH", "update"):
                hook = self.hooks.get(request.get("id", ""))
                if hook is None:
                    return self._error(
                        404,
                        "RESOURCE_DOES_NOT_EXIST",
                        f"Webhook {request.get('id')} does not exist.",
                    )
                changed = {
                    **hook,
                    **{
                        k: request[k]
                        for k in ("description", "events", "http_url_spec", "job_spec", "status")
                        if request.get(k) is not None
                    },
                }
                if "http_url_spec" in request and "job_spec" in request:
                    return self._error(
                        400, "INVALID_PARAMETER_VALUE", "give one of http_url_spec and job_spec"
                    )
                for kind, other in (("http_url_spec", "job_spec"), ("job_spec", "http_url_spec")):
                    if kind in request:
                        changed.pop(other, None)
                if (invalid := self._invalid(changed)) is not None:
                    return invalid
                changed["last_updated_timestamp"] = now
                self.hooks[hook["id"]] = changed
                return 200, {"webhook": self._listed(changed)}
            if (method, action) == ("DELETE", "delete"):
                hook_id = asked.get("id", [request.get("id", "")])[0]
                if self.hooks.pop(hook_id, None) is None:
                    return self._error(
                        404, "RESOURCE_DOES_NOT_EXIST", f"Webhook {hook_id} does not exist."
                    )
                return 200, {}
        return self._error(
            404, "ENDPOINT_NOT_FOUND", f"{method} {path} is not served by the stand-in"
        )

    def stage_of(self, body: bytes) -> str | None:
        """The stage of the version a transition names, before it moves (`from_stage`)."""
        request = json.loads(body or b"{}")
        found = requests.get(
            f"{self.upstream}/api/2.0/mlflow/model-versions/get",
            params={"name": request.get("name"), "version": request.get("version")},
            timeout=30,
        )
        return found.json()["model_version"].get("current_stage", "None") if found.ok else None

    def fire(self, path: str, request: dict, answer: dict, from_stage: str | None) -> None:
        """Queue a delivery of each event this change raises to each webhook that hears it."""
        version = answer.get("model_version", {})
        name = (
            version.get("name")
            or answer.get("registered_model", {}).get("name")
            or request.get("name")
        )
        number = str(version.get("version") or request.get("version") or "")
        if path == self.TRANSITION:
            to_stage = version.get("current_stage") or request.get("stage")
            events = ["MODEL_VERSION_TRANSITIONED_STAGE"]
            if f"MODEL_VERSION_TRANSITIONED_TO_{to_stage.upper()}" in self.EVENTS:
                events.append(f"MODEL_VERSION_TRANSITIONED_TO_{to_stage.upper()}")
            fields = {
                "version": number,
                "to_stage": to_stage,
                "from_stage": from_stage or "None",
                "text": f"Registered model '{name}' version {number} transitioned from "
                f"{from_stage or 'None'} to {to_stage}.",
            }
        elif path == self.VERSION_CREATED:
            events, fields = (
                ["MODEL_VERSION_CREATED"],
                {
                    "version": number,
                    "text": f"A new version {number} of registered model '{name}' was created.",
                },
            )
        elif path == self.MODEL_CREATED:
            events, fields = (
                ["REGISTERED_MODEL_CREATED"],
                {"text": f"Registered model '{name}' was created."},
            )
        else:
            tag = {"key": request.get("key"), "value": request.get("value")}
            events, fields = (
                ["MODEL_VERSION_TAG_SET"],
                {
                    "version": number,
                    "tags": [tag],
                    "text": f"set version tag(s) '{tag['key']}' => '{tag['value']}' "
                    f"for registered model '{name}' "
                    f"version {number}.",
                },
            )
        with self._changed:
            targets = [
                (dict(hook), event)
                for hook in self.hooks.values()
                for event in events
                if hook["status"] == "ACTIVE"
                and event in hook["events"]
                and "http_url_spec" in hook
                and hook.get("model_name") in (None, name)
            ]
        if targets:
            threading.Thread(
                target=self._deliver,
                args=(targets, name, fields),
                daemon=True,
                name="standin-webhook-delivery",
            ).start()

    def _deliver(self, targets: list[tuple[dict, str]], name: str, fields: dict) -> None:
        for hook, event in targets:
            spec = hook["http_url_spec"]
            payload = {
                "event": event,
                "webhook_id": hook["id"],
                "event_timestamp": int(time.time() * 1000),
                "model_name": name,
                **fields,
            }
            body = json.dumps(payload).encode()
            headers = {"Content-Type": "application/json"}
            if spec.get("secret"):
                headers["X-Databricks-Signature"] = hmac.new(
                    spec["secret"].encode(), body, hashlib.sha256
                ).hexdigest()
            if spec.get("authorization"):
                headers["Authorization"] = spec["authorization"]
            record = {
                "webhook_id": hook["id"],
                "event": event,
                "url": spec["url"],
                "payload": payload,
            }
            try:
                answer = requests.post(
                    spec["url"],
                    data=body,
                    headers=headers,
                    timeout=10,
                    verify=spec.get("enable_ssl_verification", True),
                )
                record["status"] = answer.status_code
            except requests.RequestException as exc:
                record["error"] = type(exc).__name__
            with self._changed:
                self.deliveries.append(record)
                self._changed.notify_all()

    def wait_for_deliveries(self, count: int, timeout: float = 30) -> list[dict]:
        """The deliveries made so far, once there are at least `count` (or `timeout` passed)."""
        with self._changed:
            self._changed.wait_for(lambda: len(self.deliveries) >= count, timeout)
            return list(self.deliveries)
