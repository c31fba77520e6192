"""The `workspaces` section: each source registry, how it marks production, what is curated from
it, where its exports run, how they are signed, and its webhook."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from marketplace.config.base import (
    ENV_NAME,
    EnvName,
    Strict,
    TrackingUri,
    check_tracking_uri,
    glob_patterns,
)
from marketplace.config.connections import DatabricksConnection, check_address
from marketplace.config.gate import GateConfig

# Workspace names become partition keys, path components and Unity Catalog schema names.
WORKSPACE_NAME_PATTERN = re.compile(r"^[a-z0-9_-]{1,64}$")
SECRET_REFERENCE = re.compile(r"^\{\{secrets/[^/{}\s]+/[^/{}\s]+\}\}$")
VOLUME_PATH = re.compile(r"^/Volumes/[^/\s]+/[^/\s]+/[^/\s]+(/[^\s]*)?$")


class ProductionSelector(Strict):
    """How a workspace marks its production version: a registry stage or an alias."""

    stage: str | None = None
    alias: str | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> ProductionSelector:
        if (self.stage is None) == (self.alias is None):
            raise ValueError(
                "set exactly one of 'stage' (e.g. Production) or 'alias' (e.g. champion)"
            )
        if self.stage is not None and self.stage.lower() not in ("production", "staging"):
            raise ValueError(
                f"stage {self.stage!r} is not a selectable stage (Production or Staging)"
            )
        if self.alias is not None and not re.fullmatch(r"[A-Za-z0-9_-]{1,255}", self.alias):
            raise ValueError(f"alias {self.alias!r} may contain only letters, digits, '_' and '-'")
        return self

    def describe(self) -> str:
        return f"stage {self.stage}" if self.stage else f"alias @{self.alias}"


class ExportEngineConfig(Strict):
    """Where a workspace's exports run: in the Dagster process (the default), in a process of
    their own through Dagster Pipes, or inside the workspace as a Databricks job through Pipes."""

    engine: Literal["in_process", "subprocess", "databricks"] = "in_process"
    # databricks: the job runs this package's wheel (`make wheel`) from a volume or workspace path.
    wheel: str | None = None
    libraries: list[str] = Field(default_factory=list)  # further pip requirements of the job
    new_cluster: dict[str, Any] | None = (
        None  # a Databricks cluster spec (spark_version, node_type_id, ...)
    )
    existing_cluster_id: str | None = None
    serverless: bool = False
    environment_version: str = "3"  # of a serverless job's environment
    # Pipes context and messages travel through this Unity Catalog volume (else DBFS).
    volume_path: str | None = None
    # The job's environment variables: each a Databricks secret reference {{secrets/<scope>/<key>}}.
    env: dict[str, str] = Field(default_factory=dict)
    timeout_seconds: int = Field(default=4 * 3600, ge=60, le=48 * 3600)
    poll_interval_seconds: float = Field(default=10, ge=0.1, le=300)

    @field_validator("env")
    @classmethod
    def _secret_references(cls, value: dict[str, str]) -> dict[str, str]:
        for name, reference in value.items():
            if not re.fullmatch(ENV_NAME, name):
                raise ValueError(f"{name!r} is not an environment variable name")
            if not SECRET_REFERENCE.fullmatch(reference):
                raise ValueError(
                    f"{name}: give a Databricks secret reference, {{{{secrets/<scope>/<key>}}}}, "
                    "never a value (the job's settings travel in the job's parameters)"
                )
        return value

    @field_validator("volume_path")
    @classmethod
    def _volume(cls, value: str | None) -> str | None:
        if value is not None and not VOLUME_PATH.fullmatch(value.rstrip("/")):
            raise ValueError(
                f"{value!r} is not a Unity Catalog volume path "
                "(/Volumes/<catalog>/<schema>/<volume>)"
            )
        return None if value is None else value.rstrip("/")

    @model_validator(mode="after")
    def _databricks_settings(self) -> ExportEngineConfig:
        job_keys = ("wheel", "new_cluster", "existing_cluster_id", "volume_path")
        if self.engine != "databricks":
            stray = (
                [k for k in job_keys if getattr(self, k)]
                + (["serverless"] if self.serverless else [])
                + (["env"] if self.env else [])
                + (["libraries"] if self.libraries else [])
            )
            if stray:
                raise ValueError(f"{', '.join(stray)}: only for engine: databricks")
            return self
        if not self.wheel:
            raise ValueError(
                "engine databricks needs wheel: where the job finds this package's wheel "
                "(for example /Volumes/main/marketplace/wheels/marketplace-0.1.0-py3-none-any.whl)"
            )
        computes = [
            k
            for k, on in (
                ("new_cluster", self.new_cluster),
                ("existing_cluster_id", self.existing_cluster_id),
                ("serverless", self.serverless),
            )
            if on
        ]
        if len(computes) != 1:
            raise ValueError(
                "engine databricks needs exactly one of new_cluster, existing_cluster_id or "
                "serverless: true" + (f" (got {', '.join(computes)})" if computes else "")
            )
        if self.serverless and not self.volume_path:
            raise ValueError(
                "a serverless job talks to Dagster through a Unity Catalog volume: set volume_path"
            )
        if self.new_cluster is not None and not {"spark_version"} <= set(self.new_cluster):
            raise ValueError(
                "new_cluster needs at least spark_version (and node_type_id or instance_pool_id)"
            )
        return self


class SigningConfig(Strict):
    """A workspace's OpenSSF model-signing keys: its exporter signs with the private key, the
    marketplace verifies with the public one."""

    # The environment variable holding the PEM of an EC private key, where this workspace's exports
    # run.
    private_key_env: str | None = Field(default=None, pattern=ENV_NAME)
    # The PEM of the matching public key, inline, or a file relative to the configuration file.
    public_key: str | None = None


class WebhookConfig(Strict):
    """A source registry's pushes: the receiver verifies each delivery with the secret in
    `secret_env`."""

    secret_env: EnvName
    # The marketplace creates or updates its own webhook on the source (MLflow 3 registries).
    manage: bool = True


class WorkspaceConfig(Strict):
    name: str
    tracking_uri: TrackingUri | None = None
    registry_uri: str | None = None
    databricks: DatabricksConnection | None = None
    production: ProductionSelector
    include: list[str] = Field(default_factory=lambda: ["*"])
    exclude: list[str] = Field(default_factory=list)
    export: ExportEngineConfig = Field(default_factory=ExportEngineConfig)
    signing: SigningConfig = Field(default_factory=SigningConfig)
    gate: GateConfig = Field(default_factory=GateConfig)
    webhook: WebhookConfig | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not WORKSPACE_NAME_PATTERN.fullmatch(value):
            raise ValueError(
                f"{value!r} is not a valid workspace name: use 1 to 64 lower-case letters, "
                "digits, '_' and '-'"
            )
        return value

    @field_validator("tracking_uri", "registry_uri")
    @classmethod
    def _uri(cls, value: str | None) -> str | None:
        return None if value is None else check_tracking_uri(value)

    _patterns = field_validator("include", "exclude")(classmethod(lambda cls, v: glob_patterns(v)))

    @model_validator(mode="after")
    def _databricks(self) -> WorkspaceConfig:
        check_address(self)
        if self.databricks and self.databricks.unity_catalog and self.production.stage:
            raise ValueError("Unity Catalog has no stages: select production versions by alias")
        if self.databricks and not self.databricks.unity_catalog and self.production.alias:
            raise ValueError(
                "MLflow refuses aliases on the Databricks workspace registry: select production "
                "versions by stage, or set databricks.unity_catalog: true for a Unity Catalog "
                "registry"
            )
        if self.export.engine == "databricks" and self.databricks is None:
            raise ValueError(
                "export.engine: a Databricks job runs in a Databricks workspace: give the "
                "workspace a databricks block"
            )
        return self
