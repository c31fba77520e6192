"""A stand-in for a Databricks workspace's front door, for tests (no workspace is reachable here).

It serves what the Databricks SDK and MLflow ask of a workspace host for authentication (OAuth
machine-to-machine discovery and token endpoints; bearer tokens on every API call) and forwards
authenticated MLflow API calls to a real `mlflow server`. What it verifies: that a run reaches
each workspace with that workspace's own credentials. What it does not: Databricks' own
registry behaviour (Unity Catalog, permissions), which only a real workspace shows.
"""

from __future__ import annotations

import base64
import json
import secrets
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import requests

from marketplace.local_servers import free_port


ARTIFACT_ENDPOINTS = ("/api/2.0/mlflow/model-versions/list-artifacts",
                      "/api/2.0/mlflow/model-versions/get-signed-download-uri")


class DatabricksStandIn:
    """`auth` is "pat" (expects `token`) or "oauth-m2m" (expects `client_id` and `client_secret`)."""

    def __init__(self, upstream: str, *, auth: str, token: str = "", client_id: str = "", client_secret: str = ""):
        self.upstream = upstream.rstrip("/")
        self.auth = auth
        self.expected = {"token": token, "client_id": client_id, "client_secret": client_secret}
        self.issued: set[str] = set()
        self.api_calls = 0
        self.refused: list[str] = []
        self.signed: dict[str, Path] = {}
        self.port = free_port()
        self.host = f"http://127.0.0.1:{self.port}"
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

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

        class Handler(BaseHTTPRequestHandler):
            def _send(self, status: int, payload: dict | bytes, headers: dict | None = None) -> None:
                body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                self.send_response(status)
                for key, value in (headers or {"Content-Type": "application/json"}).items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _serve(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                path = self.path.split("?")[0]
                if path == "/oidc/.well-known/oauth-authorization-server":
                    return self._send(200, {"authorization_endpoint": f"{standin.host}/oidc/v1/authorize",
                                            "token_endpoint": f"{standin.host}/oidc/v1/token"})
                if path == "/oidc/v1/token":
                    token = standin._issue(self.headers, body)
                    if token is None:
                        standin.refused.append(path)
                        return self._send(401, {"error": "invalid_client"})
                    return self._send(200, {"access_token": token, "token_type": "Bearer", "expires_in": 3600})
                if path.startswith("/signed/"):  # a pre-signed download URL: no bearer token, as in the cloud
                    local = standin.signed.get(path.removeprefix("/signed/"))
                    if local is None:
                        return self._send(403, {"error": "expired"})
                    return self._send(200, local.read_bytes(), {"Content-Type": "application/octet-stream"})
                if not standin._token_ok(self.headers.get("Authorization")):
                    standin.refused.append(path)
                    return self._send(401, {"error_code": "UNAUTHENTICATED", "message": "invalid credentials"})
                standin.api_calls += 1
                if path in ARTIFACT_ENDPOINTS:
                    return self._send(200, standin._model_version_artifacts(path, parse_qs(self.path.partition("?")[2])))
                headers = {k: v for k, v in self.headers.items()
                           if k.lower() not in ("host", "content-length", "authorization")}
                answer = requests.request(self.command, standin.upstream + self.path, data=body, headers=headers,
                                          timeout=60)
                kept = {k: v for k, v in answer.headers.items()
                        if k.lower() not in ("content-length", "transfer-encoding", "connection", "content-encoding")}
                self._send(answer.status_code, answer.content, kept)

            do_GET = do_POST = do_PATCH = do_DELETE = do_PUT = _serve

            def log_message(self, *args) -> None:
                pass

        return Handler

    def __enter__(self) -> DatabricksStandIn:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
