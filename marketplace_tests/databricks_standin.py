"""A stand-in for a Databricks workspace's front door, for tests (no workspace is reachable here).

It serves what the Databricks SDK and MLflow ask of a workspace host for authentication (OAuth
machine-to-machine discovery and token endpoints; bearer tokens on every API call) and forwards
authenticated MLflow API calls to a real `mlflow server`. What it verifies: that a run reaches
each workspace with that workspace's own credentials. What it does not: Databricks' own
registry behaviour (Unity Catalog, permissions), which only a real workspace shows.
"""

from __future__ import annotations

import base64
import secrets
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import requests

from .faults import LoopbackServer, RelayHandler

ARTIFACT_ENDPOINTS = ("/api/2.0/mlflow/model-versions/list-artifacts",
                      "/api/2.0/mlflow/model-versions/get-signed-download-uri")


class DatabricksStandIn(LoopbackServer):
    """`auth` is "pat" (expects `token`) or "oauth-m2m" (expects `client_id` and `client_secret`)."""

    def __init__(self, upstream: str, *, auth: str, token: str = "", client_id: str = "", client_secret: str = ""):
        self.upstream = upstream.rstrip("/")
        self.auth = auth
        self.expected = {"token": token, "client_id": client_id, "client_secret": client_secret}
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
                if path in ARTIFACT_ENDPOINTS:
                    return self.answer(200, standin._model_version_artifacts(path, parse_qs(self.path.partition("?")[2])))
                self.relay(self.forward(standin.upstream, body, drop=("authorization",)))

        return Handler
