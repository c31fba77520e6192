"""The marketplace's own credentials for an authenticated OSS MLflow server.

MLflow takes credentials from process-wide variables (MLFLOW_TRACKING_USERNAME, ...) and would
send them to every server the process talks to, the source workspaces included. Instead, a
request auth provider (MLflow's plugin point, named by MLFLOW_TRACKING_AUTH) adds them only to
requests for the marketplace server's origin. The values come from the environment variables
the configuration names, never from the file.
"""

from __future__ import annotations

import base64
import os
import threading
from urllib.parse import urlsplit

import requests
from mlflow.tracking.request_auth.abstract_request_auth_provider import RequestAuthProvider

from marketplace.errors import MarketplaceError

PROVIDER_NAME = "marketplace-origin"
AUTH_ENV = "MLFLOW_TRACKING_AUTH"

_lock = threading.Lock()
_headers: dict[str, str] = {}  # origin -> Authorization header


def origin(url: str) -> str:
    parts = urlsplit(url)
    port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    return f"{parts.scheme}://{(parts.hostname or '').lower()}:{port}"


class OriginAuth(requests.auth.AuthBase):
    """Adds the marketplace's credentials to requests for its origin, and to no other."""

    def __call__(self, request):
        header = _headers.get(origin(request.url))
        if header:
            request.headers["Authorization"] = header
        return request


class MarketplaceAuthProvider(RequestAuthProvider):
    """Registered as the `mlflow.request_auth_provider` entry point `marketplace-origin`."""

    def get_name(self) -> str:
        return PROVIDER_NAME

    def get_auth(self):
        return OriginAuth()


def authenticate(
    tracking_uri: str,
    *,
    username_env: str | None = None,
    password_env: str | None = None,
    token_env: str | None = None,
) -> bool:
    """Send the credentials held by the named variables with every request to `tracking_uri`'s
    origin. False when none are configured. Raises naming the key and variable that is unset."""
    if not (username_env or token_env):
        return False
    if token_env:
        header = f"Bearer {_read('marketplace.token_env', token_env)}"
    else:
        username = _read("marketplace.username_env", username_env)
        pair = f"{username}:{_read('marketplace.password_env', password_env)}"
        header = "Basic " + base64.b64encode(pair.encode()).decode()
    current = os.environ.get(AUTH_ENV)
    if current not in (None, "", PROVIDER_NAME):
        raise MarketplaceError(
            f"marketplace.username_env/token_env: {AUTH_ENV} is set to {current!r}; the "
            f"marketplace's credentials need it unset (it becomes {PROVIDER_NAME!r})"
        )
    with _lock:
        _headers[origin(tracking_uri)] = header
        os.environ[AUTH_ENV] = PROVIDER_NAME
    return True


def _read(key: str, variable: str | None) -> str:
    value = os.environ.get(variable or "")
    if not value:
        raise MarketplaceError(
            f"{key}: the environment variable {variable} is not set (it holds the "
            "marketplace's credential for its MLflow server)"
        )
    return value
