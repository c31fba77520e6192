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
import json
import secrets
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import requests

from ..faults import LoopbackServer, RelayHandler
from .jobs import JobRunner
from .permissions import RegistryPermissions
from .webhooks import RegistryWebhooks

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
