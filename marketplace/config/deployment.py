"""The whole configuration file: its sections, the rules that span them, and the settings derived
from them (where relative paths resolve, whether signatures are required, a workspace's gate)."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from pydantic import Field, PrivateAttr, field_validator, model_validator

from marketplace.config.base import KeyedError, Strict
from marketplace.config.gate import GateConfig
from marketplace.config.marketplace import MarketplaceRegistryConfig
from marketplace.config.operations import (
    AutomationConfig,
    ChecksConfig,
    ClientConfig,
    FreshnessConfig,
    HousekeepingConfig,
    ScheduleConfig,
    SensorConfig,
    WebhooksConfig,
)
from marketplace.config.security import SecurityConfig
from marketplace.config.storage import ExternalStorageConfig
from marketplace.config.workspaces import WorkspaceConfig
from marketplace.errors import MarketplaceError
from marketplace.storage_options import object_store_options

# The embedded default (the demo's local servers), shipped in the package; its relative paths
# resolve against the working directory, those of any other file against the file's folder.
DEFAULT_CONFIG_PATH = Path(__file__).resolve().parent.parent / "marketplace.yaml"


class UnknownWorkspace(MarketplaceError, KeyError):
    """A workspace name the configuration does not have."""

    def __str__(self) -> str:  # KeyError's own would quote the message
        return str(self.args[0])


class MarketplaceConfig(Strict):
    external_storage: ExternalStorageConfig
    marketplace: MarketplaceRegistryConfig
    workspaces: list[WorkspaceConfig] = Field(min_length=1)
    start_date: dt.date = dt.date(2026, 1, 1)
    source_marker: bool = True
    client: ClientConfig = Field(default_factory=ClientConfig)
    sensor: SensorConfig = Field(default_factory=SensorConfig)
    webhooks: WebhooksConfig = Field(default_factory=WebhooksConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    freshness: FreshnessConfig = Field(default_factory=FreshnessConfig)
    checks: ChecksConfig = Field(default_factory=ChecksConfig)
    automation: AutomationConfig = Field(default_factory=AutomationConfig)
    housekeeping: HousekeepingConfig = Field(default_factory=HousekeepingConfig)
    security: SecurityConfig = Field(default_factory=SecurityConfig)
    gate: GateConfig = Field(default_factory=GateConfig)

    _path: Path = PrivateAttr(default=DEFAULT_CONFIG_PATH)
    _base: Path | None = PrivateAttr(default=None)

    @field_validator("start_date", mode="before")
    @classmethod
    def _date(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                return dt.date.fromisoformat(value)
            except ValueError as exc:
                raise ValueError(f"{value!r} is not a date (YYYY-MM-DD)") from exc
        if isinstance(value, dt.datetime):
            # pydantic reports a ValueError as the key's message, a TypeError as a crash
            raise ValueError(f"{value!r} is a timestamp; give a date (YYYY-MM-DD)")  # noqa: TRY004
        return value

    @field_validator("start_date")
    @classmethod
    def _not_future(cls, value: dt.date) -> dt.date:
        today = dt.datetime.now(dt.UTC).date()
        if value > today:
            raise ValueError(f"{value} is in the future (today is {today} UTC)")
        return value

    @model_validator(mode="after")
    def _unique_workspaces(self) -> MarketplaceConfig:
        seen: set[str] = set()
        for index, workspace in enumerate(self.workspaces):
            if workspace.name in seen:
                raise KeyedError(
                    f"workspaces[{index}].name", f"duplicate workspace name {workspace.name!r}"
                )
            seen.add(workspace.name)
        for index, workspace in enumerate(self.workspaces):
            if workspace.export.engine != "databricks":
                continue
            key = f"workspaces[{index}] ({workspace.name}).export"
            if self.external_storage.backend == "local":
                raise KeyedError(
                    f"{key}.engine",
                    "a Databricks job cannot write to a local folder: put "
                    "external_storage on s3:// or abfss://",
                )
            _, secret = object_store_options(self.external_storage)
            needed = {
                **{v: f"external_storage ({o})" for o, v in secret.items()},
                **(
                    {self.external_storage.signing_key_env: "external_storage.signing_key_env"}
                    if self.external_storage.signing_key_env
                    else {}
                ),
                **(
                    {workspace.signing.private_key_env: "signing.private_key_env"}
                    if workspace.signing.private_key_env
                    else {}
                ),
            }
            missing = sorted(set(needed) - set(workspace.export.env))
            if missing:
                raise KeyedError(
                    f"{key}.env",
                    "the job reads "
                    + ", ".join(f"{v} ({needed[v]})" for v in missing)
                    + ": map each to a Databricks secret, e.g. {{secrets/marketplace/<key>}}",
                )
        if self.require_signatures:
            for index, workspace in enumerate(self.workspaces):
                if not workspace.signing.public_key:
                    raise KeyedError(
                        f"workspaces[{index}] ({workspace.name}).signing.public_key",
                        "required: marketplace.require_signatures is "
                        + (
                            "true"
                            if self.marketplace.require_signatures
                            else "on because another workspace has a key"
                        )
                        + " and this workspace's exports could not be verified (give its public "
                        "key, or set marketplace.require_signatures: false)",
                    )
        if len(self.workspaces) > 1 and "{workspace}" not in self.marketplace.name_template:
            raise KeyedError(
                "marketplace.name_template",
                f"{self.marketplace.name_template!r} has no {{workspace}}: with several "
                "workspaces, models of the same name would collide in the marketplace",
            )
        return self

    @property
    def path(self) -> Path:
        return self._path

    @property
    def base_dir(self) -> Path:
        """Where relative paths in the file resolve."""
        if self._base is None:
            self._base = Path.cwd() if self._path == DEFAULT_CONFIG_PATH else self._path.parent
        return self._base

    @property
    def storage_root(self) -> str:
        """External storage as an absolute local path (relative URIs resolve against the file), or
        the object store URI."""
        uri = self.external_storage.uri
        if self.external_storage.backend != "local":
            return uri.rstrip("/")
        parsed = urlparse(uri)
        if parsed.scheme == "file":
            uri = unquote(parsed.path)  # file:///tmp/my%20dir is the folder "my dir"
        root = Path(os.path.expanduser(uri))
        if not root.is_absolute():
            root = self.base_dir / root
        return str(root.resolve())

    @property
    def require_signatures(self) -> bool:
        if self.marketplace.require_signatures is not None:
            return self.marketplace.require_signatures
        return any(w.signing.public_key for w in self.workspaces)

    def gate_for(self, workspace: str) -> GateConfig:
        """The workspace's gate: each key it sets replaces the global one's."""
        own = self.workspace(workspace).gate
        merged = {
            key: getattr(own, key) if getattr(own, key) is not None else getattr(self.gate, key)
            for key in GateConfig.model_fields
        }
        return GateConfig(
            require=merged["require"] or [],
            evaluation=merged["evaluation"] or [],
            approval=merged["approval"] or "none",
        )

    def gate_key(self, workspace: str) -> str:
        """Where the workspace's evaluation rules are configured, as errors name it."""
        own = self.workspace(workspace).gate
        return "gate" if own.evaluation is None else f"workspaces ({workspace}).gate"

    def workspace(self, name: str) -> WorkspaceConfig:
        """The workspace of that name (every lookup by name comes here)."""
        for workspace in self.workspaces:
            if workspace.name == name:
                return workspace
        configured = ", ".join(w.name for w in self.workspaces)
        raise UnknownWorkspace(
            f"workspace {name!r} is not configured in {self._path} (configured: {configured})"
        )
