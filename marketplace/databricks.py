"""Databricks credentials for MLflow: one private config file with a profile per workspace.

MLflow reads Databricks credentials only from the process environment or a `.databrickscfg`
profile (`databricks://<profile>`), so several workspaces with their own service principals need
a profile each: a registry the configuration gives by a `databricks` block is reached at its
profile's URIs (`registry_uris`). The file is written when a client is first needed (so
definitions load without secrets), into a private folder, mode 0600, and never logged; secrets
come from the environment variables the configuration names.
"""

from __future__ import annotations

import atexit
import configparser
import io
import logging
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import TypeVar

from marketplace.config import DatabricksConnection, MarketplaceRegistryConfig, WorkspaceConfig
from marketplace.config.connections import SDK_ENV
from marketplace.errors import MarketplaceError

CONFIG_FILE_ENV = "DATABRICKS_CONFIG_FILE"
# A workspace's settings or the marketplace's: both name their registry the same way.
Settings = TypeVar("Settings", WorkspaceConfig, MarketplaceRegistryConfig)
SECRET_KEY = {
    "pat": "token",
    "oauth-m2m": "client_secret",
    "azure-client-secret": "azure_client_secret",
}

log = logging.getLogger(__name__)


def profile_name(owner: str | None) -> str:
    """The profile of a workspace (or of the marketplace, `owner` None) in the run's config file."""
    # No ':' (MLflow reads databricks://scope:prefix as a secret scope); workspace names have none.
    return "marketplace-registry" if owner is None else f"marketplace-ws-{owner}"


def registry_uris(settings: Settings) -> tuple[str, str | None]:
    """The MLflow tracking and registry URIs of a workspace's (or the marketplace's) settings: those
    the file gives, or for a `databricks` block, its profile's."""
    if settings.databricks is None:
        return settings.tracking_uri, settings.registry_uri
    profile = profile_name(settings.name if isinstance(settings, WorkspaceConfig) else None)
    registry = "databricks-uc" if settings.databricks.unity_catalog else "databricks"
    return f"databricks://{profile}", f"{registry}://{profile}"


def addressed(settings: Settings) -> Settings:
    """The settings with the URIs their registry is reached at (`registry_uris`)."""
    tracking_uri, registry_uri = registry_uris(settings)
    return settings.model_copy(update={"tracking_uri": tracking_uri, "registry_uri": registry_uri})


def profile_of(tracking_uri: str) -> str:
    """The profile a `databricks://<profile>` URI names (for the Databricks SDK's own client)."""
    return tracking_uri.removeprefix("databricks://")


class DatabricksCredentialError(MarketplaceError, RuntimeError):
    """A configured Databricks workspace whose credentials cannot be found."""


def profile_section(owner: str, settings: DatabricksConnection) -> dict[str, str]:
    """The profile's keys, the secret read from its environment variable now."""
    secret = os.environ.get(settings.secret_env)
    if not secret:
        raise DatabricksCredentialError(
            f"{owner}: the environment variable {settings.secret_env} (databricks.secret_env, "
            f"holding its {SECRET_KEY[settings.auth].replace('_', ' ')}) is not set"
        )
    section = {"host": settings.host, "auth_type": settings.auth, SECRET_KEY[settings.auth]: secret}
    for key in ("client_id", "azure_client_id", "azure_tenant_id"):
        if value := getattr(settings, key):
            section[key] = value
    return section


class _Profiles:
    """The process's config file: every profile registered so far, rewritten when one is added."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sections: dict[str, dict[str, str]] = {}
        self._folder: Path | None = None
        self._active: Path | None = None

    def ensure(self, owner: str, profile: str, settings: DatabricksConnection) -> Path:
        section = profile_section(owner, settings)
        with self._lock:
            if self._folder is None:
                self._folder = Path(tempfile.mkdtemp(prefix="marketplace-databricks-"))  # 0700
                atexit.register(shutil.rmtree, self._folder, True)
            path = self._folder / "databrickscfg"
            if self._sections.get(profile) != section:
                self._sections[profile] = section
                self._write(path)
            if self._active != path or os.environ.get(CONFIG_FILE_ENV) != str(path):
                self._activate(path)
                self._active = path
            return path

    def remove(self) -> None:
        """Delete the file now (atexit does too, but not for a process that leaves with
        os._exit)."""
        with self._lock:
            if self._folder is not None:
                shutil.rmtree(self._folder, ignore_errors=True)
                self._folder, self._active, self._sections = None, None, {}

    def _write(self, path: Path) -> None:
        parser = configparser.ConfigParser(interpolation=None)
        for name, section in sorted(self._sections.items()):
            parser[name] = section
        text = io.StringIO()
        parser.write(text)
        tmp = path.with_name(f".{path.name}.tmp")
        descriptor = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(text.getvalue())
        os.replace(tmp, path)

    @staticmethod
    def _activate(path: Path) -> None:
        os.environ[CONFIG_FILE_ENV] = str(path)
        # Set, these win over every profile's values (the SDK loads the environment first).
        cleared = [name for name in SDK_ENV if os.environ.pop(name, None) is not None]
        if cleared:
            log.warning(
                "cleared %s from this process: set, they would override every workspace's profile",
                ", ".join(cleared),
            )


_profiles = _Profiles()


def remove_profiles() -> None:
    _profiles.remove()


def ensure_profile(owner: str, tracking_uri: str, settings: DatabricksConnection | None) -> None:
    """Make the `databricks://<profile>` URIs of a workspace (or of the marketplace, `owner` naming
    it in messages) work in this process; a no-op without a `databricks` block."""
    if settings is not None:
        _profiles.ensure(owner, profile_of(tracking_uri), settings)
