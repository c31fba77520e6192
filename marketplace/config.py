"""The deployment configuration: one YAML file, validated on load, naming the file and key at fault."""

from __future__ import annotations

import datetime as dt
import os
import re
import string
import warnings
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import unquote, urlparse

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from marketplace.errors import MarketplaceError
from marketplace.sandbox.settings import SandboxSettings

CONFIG_ENV_VAR = "MARKETPLACE_CONFIG"
# The embedded default (the demo's local servers), shipped in the package; its relative paths
# resolve against the working directory, those of any other file against the file's folder.
DEFAULT_CONFIG_PATH = Path(__file__).resolve().with_name("marketplace.yaml")

# Workspace names become partition keys, path components and Unity Catalog schema names.
WORKSPACE_NAME_PATTERN = re.compile(r"^[a-z0-9_-]{1,64}$")
TEMPLATE_FIELDS = frozenset({"workspace", "model"})


class ConfigError(MarketplaceError, ValueError):
    """A configuration file that cannot be used, with the file and key at fault."""

    def __init__(self, path: Path | str, key: str, message: str):
        self.path = str(path)
        self.key = key
        super().__init__(f"{path}: {key}: {message}" if key else f"{path}: {message}")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


def _check_tracking_uri(value: str) -> str:
    parsed = urlparse(value)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ValueError(
            f"{value!r} is not a tracking server URI: expected http://host:port or https://host"
        )
    try:
        parsed.port  # noqa: B018 - raises on a malformed port
    except ValueError as exc:
        raise ValueError(f"{value!r} has an invalid port") from exc
    return value.rstrip("/")


TrackingUri = Annotated[str, Field(min_length=1)]


class ProductionSelector(_Strict):
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


ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]{0,127}$"
EnvName = Annotated[str, Field(pattern=ENV_NAME)]
# Variables the Databricks SDK reads itself, over any profile: the run clears them, so a secret
# cannot live in one of them.
SDK_ENV = (
    "DATABRICKS_HOST",
    "DATABRICKS_TOKEN",
    "DATABRICKS_CLIENT_ID",
    "DATABRICKS_CLIENT_SECRET",
    "DATABRICKS_AUTH_TYPE",
    "DATABRICKS_CONFIG_PROFILE",
    "ARM_CLIENT_ID",
    "ARM_CLIENT_SECRET",
    "ARM_TENANT_ID",
)


class DatabricksConnection(_Strict):
    """A Databricks workspace reached as a service principal (or with a token). Secrets are never
    in the file: `secret_env` names the environment variable that holds the client secret
    (oauth-m2m, azure-client-secret) or the personal access token (pat)."""

    host: str
    auth: Literal["oauth-m2m", "azure-client-secret", "pat"]
    client_id: str | None = None
    azure_client_id: str | None = None
    azure_tenant_id: str | None = None
    secret_env: str = Field(pattern=ENV_NAME)
    # The registry is Unity Catalog (databricks-uc) rather than the workspace registry.
    unity_catalog: bool = False

    @field_validator("host")
    @classmethod
    def _host(cls, value: str) -> str:
        parsed = urlparse(value)
        if parsed.scheme not in ("https", "http") or not parsed.hostname or parsed.path.strip("/"):
            raise ValueError(f"{value!r} is not a workspace URL (https://<workspace host>)")
        if parsed.username or parsed.password:
            raise ValueError("the host must not carry credentials; name them with secret_env")
        if parsed.scheme == "http" and parsed.hostname not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError(f"{value!r}: credentials would travel in clear text; use https://")
        return value.rstrip("/")

    @field_validator("secret_env")
    @classmethod
    def _own_variable(cls, value: str) -> str:
        if value in SDK_ENV:
            raise ValueError(
                f"{value} is read by the Databricks SDK for every workspace (and cleared by the run); "
                "hold each workspace's secret in a variable of its own, e.g. DEV01_SP_SECRET"
            )
        return value

    @model_validator(mode="after")
    def _fields_of_auth(self) -> DatabricksConnection:
        needed = {
            "oauth-m2m": ["client_id"],
            "azure-client-secret": ["azure_client_id", "azure_tenant_id"],
            "pat": [],
        }
        for key in needed[self.auth]:
            if not getattr(self, key):
                raise ValueError(f"auth {self.auth!r} needs {key}")
        stray = [
            k
            for k in ("client_id", "azure_client_id", "azure_tenant_id")
            if getattr(self, k) and k not in needed[self.auth]
        ]
        if stray:
            raise ValueError(f"{', '.join(stray)}: not used with auth {self.auth!r}")
        return self


def _connect_databricks(owner: Any, profile: str, key: str | None = None) -> None:
    """With a `databricks` block, the URIs name the profile the run writes for it."""
    if owner.databricks is None:
        if owner.tracking_uri is None:
            message = (
                "required key is missing (or give a databricks block for a Databricks workspace)"
            )
            raise (
                _KeyedError(f"{key}.tracking_uri", message)
                if key
                else ValueError(f"tracking_uri: {message}")
            )
        return
    if owner.tracking_uri is not None or owner.registry_uri is not None:
        raise ValueError("set either tracking_uri/registry_uri or databricks, not both")
    registry = "databricks-uc" if owner.databricks.unity_catalog else "databricks"
    object.__setattr__(owner, "tracking_uri", f"databricks://{profile}")
    object.__setattr__(owner, "registry_uri", f"{registry}://{profile}")


SECRET_REFERENCE = re.compile(r"^\{\{secrets/[^/{}\s]+/[^/{}\s]+\}\}$")
VOLUME_PATH = re.compile(r"^/Volumes/[^/\s]+/[^/\s]+/[^/\s]+(/[^\s]*)?$")


class ExportEngineConfig(_Strict):
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
                f"{value!r} is not a Unity Catalog volume path (/Volumes/<catalog>/<schema>/<volume>)"
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
                "engine databricks needs exactly one of new_cluster, existing_cluster_id or serverless: true"
                + (f" (got {', '.join(computes)})" if computes else "")
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


class SigningConfig(_Strict):
    """A workspace's OpenSSF model-signing keys: its exporter signs with the private key, the
    marketplace verifies with the public one."""

    # The environment variable holding the PEM of an EC private key, where this workspace's exports run.
    private_key_env: str | None = Field(default=None, pattern=ENV_NAME)
    # The PEM of the matching public key, inline, or a file relative to the configuration file.
    public_key: str | None = None


GLOBAL_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+$")


class SandboxConfig(_Strict):
    """Where a source's model loads: only ever in a sandbox (`security.sandbox`)."""

    mode: Literal["namespaces", "process"] = "namespaces"
    timeout_seconds: float = Field(default=300.0, gt=0, le=86400)
    memory_mb: int = Field(default=4096, ge=256, le=1_048_576)

    def settings(self) -> SandboxSettings:
        return SandboxSettings(
            mode=self.mode, timeout_seconds=self.timeout_seconds, memory_mb=self.memory_mb
        )


class SecurityConfig(_Strict):
    """Scanning every export before anything loads it, and loading it only in a sandbox."""

    scan: Literal["block", "warn", "off"] = "block"
    block_severity: Literal["low", "medium", "high", "critical"] = "high"
    # Reviewed "module.name" globals a finding may name and still pass.
    allow_globals: list[str] = Field(default_factory=list)
    sandbox: SandboxConfig = Field(default_factory=SandboxConfig)

    @field_validator("block_severity", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    def policy(self, mode: str | None = None):
        """As a scanning.ScanPolicy (in `mode`, if given: an audit weighs findings as `block` would)."""
        from marketplace.scanning import ScanPolicy  # modelscan: only where scanning happens

        return ScanPolicy(mode or self.scan, self.block_severity, tuple(self.allow_globals))

    @field_validator("allow_globals")
    @classmethod
    def _globals(cls, value: list[str]) -> list[str]:
        for name in value:
            if not GLOBAL_NAME.fullmatch(name):
                raise ValueError(
                    f"{name!r} is not a global as module.name (for example 'posix.system')"
                )
        return value


def _glob_patterns(value: list[str]) -> list[str]:
    if any(not pattern for pattern in value):
        raise ValueError("an empty glob pattern matches nothing; remove it")
    return value


REQUIREMENTS = ("signature", "input_example", "description", "owner")
THRESHOLD_FIELDS = ("threshold", "min_absolute_change", "min_relative_change", "greater_is_better")


class ThresholdConfig(_Strict):
    """One metric's MLflow MetricThreshold; MLflow's own rules apply (checked on load)."""

    threshold: float | None = None
    min_absolute_change: float | None = None
    min_relative_change: float | None = None
    greater_is_better: bool | None = None

    @field_validator("threshold", "min_absolute_change", "min_relative_change", mode="before")
    @classmethod
    def _number(cls, value: Any) -> Any:
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise ValueError(f"{value!r} is not a number")
        return value

    @field_validator("greater_is_better", mode="before")
    @classmethod
    def _boolean(cls, value: Any) -> Any:
        if value is not None and not isinstance(value, bool):
            raise ValueError(f"{value!r} is not true or false")
        return value

    @model_validator(mode="after")
    def _mlflow_accepts(self) -> ThresholdConfig:
        self.metric_threshold()
        return self

    def metric_threshold(self):
        """As mlflow.models.MetricThreshold (its refusal, as a ValueError)."""
        from mlflow.exceptions import MlflowException
        from mlflow.models import MetricThreshold

        try:
            return MetricThreshold(**self.model_dump())
        except MlflowException as exc:
            raise ValueError(
                exc.message.removeprefix("Could not instantiate MetricThreshold class: ")
            ) from None


class EvaluationRule(_Strict):
    """No regression on reference data: the candidate against the current marketplace version."""

    models: list[str] = Field(min_length=1)  # marketplace-name glob patterns
    data: str = Field(
        min_length=1
    )  # Parquet or Delta, relative to external storage, or a full URI/path
    targets: str = Field(min_length=1)
    model_type: Literal["classifier", "regressor"]
    thresholds: dict[str, ThresholdConfig] = Field(min_length=1)

    _patterns = field_validator("models")(classmethod(lambda cls, v: _glob_patterns(v)))

    @field_validator("thresholds")
    @classmethod
    def _metric_names(cls, value: dict[str, ThresholdConfig]) -> dict[str, ThresholdConfig]:
        for name in value:
            if not re.fullmatch(r"[A-Za-z0-9_./ -]{1,250}", name):
                raise ValueError(f"{name!r} is not a metric name")
        return value


class GateConfig(_Strict):
    """What a version must show before the marketplace makes it production. In `workspaces[].gate`,
    each key set replaces the global key."""

    require: list[Literal["signature", "input_example", "description", "owner"]] | None = None
    evaluation: list[EvaluationRule] | None = None
    approval: Literal["none", "manual"] | None = None

    @field_validator("require", mode="before")
    @classmethod
    def _known(cls, value: Any) -> Any:
        if isinstance(value, list):
            unknown = [v for v in value if v not in REQUIREMENTS]
            if unknown:
                raise ValueError(
                    f"{unknown[0]!r} is not a requirement: use any of {', '.join(REQUIREMENTS)}"
                )
        return value


PERMISSIONS = {
    "mlflow": ("READ", "EDIT", "MANAGE"),
    "databricks": ("READ", "EDIT", "MANAGE"),
    "unity_catalog": ("EXECUTE",),
}
PRINCIPAL_KINDS = {
    "mlflow": ("user", "role"),
    "databricks": ("user", "group", "service_principal"),
    "unity_catalog": ("user", "group", "service_principal"),
}


class GrantConfig(_Strict):
    """A permission on every marketplace model whose name matches `models`."""

    principal: str = Field(min_length=1, max_length=255)
    kind: Literal["user", "role", "group", "service_principal"]
    permission: str
    models: list[str] = Field(default_factory=lambda: ["*"], min_length=1)

    @field_validator("permission", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    _patterns = field_validator("models")(classmethod(lambda cls, v: _glob_patterns(v)))


class WebhookConfig(_Strict):
    """A source registry's pushes: the receiver verifies each delivery with the secret in `secret_env`."""

    secret_env: EnvName
    # The marketplace creates or updates its own webhook on the source (MLflow 3 registries).
    manage: bool = True


class WorkspaceConfig(_Strict):
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
        return None if value is None else _check_tracking_uri(value)

    _patterns = field_validator("include", "exclude")(classmethod(lambda cls, v: _glob_patterns(v)))

    @model_validator(mode="after")
    def _databricks(self) -> WorkspaceConfig:
        _connect_databricks(self, databricks_profile(self.name))
        if self.databricks and self.databricks.unity_catalog and self.production.stage:
            raise ValueError("Unity Catalog has no stages: select production versions by alias")
        if self.databricks and not self.databricks.unity_catalog and self.production.alias:
            raise ValueError(
                "MLflow refuses aliases on the Databricks workspace registry: select production versions "
                "by stage, or set databricks.unity_catalog: true for a Unity Catalog registry"
            )
        if self.export.engine == "databricks" and self.databricks is None:
            raise ValueError(
                "export.engine: a Databricks job runs in a Databricks workspace: give the workspace "
                "a databricks block"
            )
        return self

    @property
    def effective_registry_uri(self) -> str:
        return self.registry_uri or self.tracking_uri


def databricks_profile(owner: str | None) -> str:
    """The profile name of a workspace (or of the marketplace) in the run's Databricks config file."""
    # No ':' (MLflow reads databricks://scope:prefix as a secret scope); workspace names have none.
    return "marketplace-registry" if owner is None else f"marketplace-ws-{owner}"


_KIND_NAMES = {
    "mlflow": "an MLflow server",
    "databricks": "the Databricks workspace registry",
    "unity_catalog": "Unity Catalog",
}


class MarketplaceRegistryConfig(_Strict):
    tracking_uri: TrackingUri | None = None
    registry_uri: str | None = None
    databricks: DatabricksConnection | None = None
    name_template: str = "{workspace}.{model}"
    alias: str = "production"
    experiment_prefix: str = "/Shared/marketplace"
    # Refuse every export without a valid OpenSSF signature (default: whenever any workspace has a public key).
    require_signatures: bool | None = None
    # Permissions the sync applies to matching marketplace models (and records, to revoke only its own).
    grants: list[GrantConfig] = Field(default_factory=list)
    # An authenticated OSS MLflow server: the variables holding the sync's credentials (never the values).
    username_env: EnvName | None = None
    password_env: EnvName | None = None
    token_env: EnvName | None = None

    @field_validator("tracking_uri", "registry_uri")
    @classmethod
    def _uri(cls, value: str | None) -> str | None:
        return None if value is None else _check_tracking_uri(value)

    @field_validator("name_template")
    @classmethod
    def _template(cls, value: str) -> str:
        try:
            fields = {name for _, name, _, _ in string.Formatter().parse(value) if name is not None}
        except ValueError as exc:
            raise ValueError(f"{value!r} is not a valid template: {exc}") from exc
        unknown = fields - TEMPLATE_FIELDS
        if unknown:
            raise ValueError(
                f"{value!r} uses unknown placeholder(s) {sorted(unknown)}; "
                "only {workspace} and {model} are available"
            )
        if "model" not in fields:
            raise ValueError(f"{value!r} must contain {{model}}, or every model gets the same name")
        return value

    @field_validator("alias")
    @classmethod
    def _alias(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,255}", value):
            raise ValueError(f"alias {value!r} may contain only letters, digits, '_' and '-'")
        if re.fullmatch(r"(?i)latest|v\d+", value):
            raise ValueError(f"alias {value!r} is reserved by MLflow")
        return value

    @model_validator(mode="after")
    def _databricks(self) -> MarketplaceRegistryConfig:
        _connect_databricks(self, databricks_profile(None), "marketplace")
        if self.is_unity_catalog:
            sample = self.name_template.format(workspace="workspace", model="model")
            parts = sample.split(".")
            if len(parts) != 3 or not all(re.fullmatch(r"[A-Za-z0-9_-]{1,255}", p) for p in parts):
                raise _KeyedError(
                    "marketplace.name_template",
                    f"{self.name_template!r} gives {sample!r}: a Unity Catalog model name is three levels, "
                    "catalog.schema.model (for example 'marketplace.{workspace}.{model}'), each of letters, "
                    "digits, '_' and '-'",
                )
            if "{model}" not in self.name_template.rsplit(".", 1)[-1]:
                raise _KeyedError(
                    "marketplace.name_template", "{model} belongs in the last (model) level"
                )
        if (self.username_env is None) != (self.password_env is None):
            raise _KeyedError(
                "marketplace.password_env" if self.username_env else "marketplace.username_env",
                "set username_env and password_env together (or token_env alone)",
            )
        if self.token_env and self.username_env:
            raise _KeyedError(
                "marketplace.token_env", "choose username_env/password_env or token_env, not both"
            )
        if self.databricks is not None and (self.username_env or self.token_env):
            key = "marketplace.username_env" if self.username_env else "marketplace.token_env"
            raise _KeyedError(
                key, "a Databricks marketplace authenticates through its databricks block"
            )
        kind = self.kind
        for index, grant in enumerate(self.grants):
            key = f"marketplace.grants[{index}] ({grant.principal})"
            if grant.kind not in PRINCIPAL_KINDS[kind]:
                raise _KeyedError(
                    f"{key}.kind",
                    f"{grant.kind!r} is not a principal on {_KIND_NAMES[kind]}: "
                    f"use {' or '.join(PRINCIPAL_KINDS[kind])}",
                )
            if grant.permission not in PERMISSIONS[kind]:
                raise _KeyedError(
                    f"{key}.permission",
                    f"{grant.permission!r} is not a permission on "
                    f"{_KIND_NAMES[kind]}: use {' or '.join(PERMISSIONS[kind])}",
                )
        return self

    @property
    def kind(self) -> str:
        """mlflow (an OSS server), databricks (the workspace registry) or unity_catalog."""
        uri = self.registry_uri or self.tracking_uri or ""
        return (
            "unity_catalog"
            if uri.startswith("databricks-uc")
            else "databricks"
            if uri.startswith("databricks")
            else "mlflow"
        )

    @property
    def is_unity_catalog(self) -> bool:
        return (self.registry_uri or "").startswith("databricks-uc")

    @property
    def effective_registry_uri(self) -> str:
        return self.registry_uri or self.tracking_uri


# Option names that hold credentials: only ever read from the environment.
SECRET_OPTION = re.compile(r"(?i)secret|password|token|sas|(^|_)(access_)?key($|_id$)|credential")
# delta-rs 1.x commits with conditional puts; these belonged to its old S3 locking and do nothing now.
OBSOLETE_OPTIONS = re.compile(
    r"(?i)^(aws_)?(s3_locking_provider|dynamo\w*|s3_allow_unsafe_rename|allow_unsafe_rename)$"
)
S3_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
AZURE_CONTAINER = re.compile(r"^(\$root|[a-z0-9](?!.*--)[a-z0-9-]{1,61}[a-z0-9])$")
AZURE_ACCOUNT = re.compile(r"^[a-z0-9]{3,24}$")
AZURE_HOST = re.compile(r"^(?P<account>[^.]+)\.(dfs|blob)\.core\.windows\.net$")


def _endpoint(value: str | None) -> str | None:
    if value is None:
        return None
    parsed = urlparse(value)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ValueError(f"{value!r} is not an endpoint URL (https://host[:port])")
    if parsed.username or parsed.password:
        raise ValueError(
            "the endpoint must not carry credentials; name their environment variables"
        )
    return value.rstrip("/")


class S3StorageConfig(_Strict):
    """An S3 bucket (or an S3-compatible store). Without key variables, credentials come from the
    AWS default chain: AWS_* variables, web identity, the instance or task role."""

    region: str | None = None
    endpoint: str | None = None  # an S3-compatible service (MinIO, R2, an emulator)
    allow_http: bool = False
    access_key_id_env: EnvName | None = None
    secret_access_key_env: EnvName | None = None
    session_token_env: EnvName | None = None

    _endpoint = field_validator("endpoint")(classmethod(lambda cls, v: _endpoint(v)))

    @model_validator(mode="after")
    def _consistent(self) -> S3StorageConfig:
        if (self.access_key_id_env is None) != (self.secret_access_key_env is None):
            raise ValueError(
                "set access_key_id_env and secret_access_key_env together (or neither, for the "
                "AWS default credential chain)"
            )
        if self.session_token_env and not self.access_key_id_env:
            raise ValueError(
                "session_token_env goes with access_key_id_env and secret_access_key_env"
            )
        if self.endpoint and self.endpoint.startswith("http://") and not self.allow_http:
            raise ValueError(
                f"endpoint {self.endpoint} is plain HTTP: set allow_http: true if that is meant"
            )
        return self

    def options(self) -> tuple[dict[str, str], dict[str, str]]:
        plain = {
            "aws_region": self.region,
            "aws_endpoint": self.endpoint,
            "aws_allow_http": "true" if self.allow_http else None,
        }
        secret = {
            "aws_access_key_id": self.access_key_id_env,
            "aws_secret_access_key": self.secret_access_key_env,
            "aws_session_token": self.session_token_env,
        }
        return _present(plain), _present(secret)


class AzureStorageConfig(_Strict):
    """An ADLS Gen2 / Blob storage container. Without a key, SAS token or client secret, credentials
    come from AZURE_* variables, workload identity or the managed identity."""

    account_name: str | None = None
    account_key_env: EnvName | None = None
    sas_token_env: EnvName | None = None
    client_id: str | None = None
    tenant_id: str | None = None
    client_secret_env: EnvName | None = None
    use_azure_cli: bool = False
    endpoint: str | None = None  # e.g. Azurite: http://127.0.0.1:10000/devstoreaccount1
    use_emulator: bool = (
        False  # Azurite at $AZURITE_BLOB_STORAGE_URL (default http://127.0.0.1:10000)
    )
    allow_http: bool = False

    _endpoint = field_validator("endpoint")(classmethod(lambda cls, v: _endpoint(v)))

    @field_validator("account_name")
    @classmethod
    def _account(cls, value: str | None) -> str | None:
        if value is not None and not AZURE_ACCOUNT.fullmatch(value):
            raise ValueError(
                f"{value!r} is not a storage account name (3-24 lower-case letters and digits)"
            )
        return value

    @model_validator(mode="after")
    def _consistent(self) -> AzureStorageConfig:
        methods = [
            k for k in ("account_key_env", "sas_token_env", "client_secret_env") if getattr(self, k)
        ]
        if len(methods) > 1:
            raise ValueError(f"{' and '.join(methods)}: choose one way to authenticate")
        if (self.client_secret_env is not None) != (
            self.client_id is not None and self.tenant_id is not None
        ):
            raise ValueError(
                "a service principal needs client_id, tenant_id and client_secret_env together"
            )
        if self.endpoint and self.endpoint.startswith("http://") and not self.allow_http:
            raise ValueError(
                f"endpoint {self.endpoint} is plain HTTP: set allow_http: true if that is meant"
            )
        if self.use_emulator and self.endpoint:
            raise ValueError(
                "use_emulator reads its URL from AZURITE_BLOB_STORAGE_URL; give endpoint or use_emulator"
            )
        _not_azurite_endpoint(self.endpoint)
        return self

    def options(self) -> tuple[dict[str, str], dict[str, str]]:
        flag = lambda on: "true" if on else None
        plain = {
            "azure_storage_account_name": self.account_name,
            "azure_storage_client_id": self.client_id,
            "azure_storage_tenant_id": self.tenant_id,
            "azure_use_azure_cli": flag(self.use_azure_cli),
            "azure_storage_endpoint": self.endpoint,
            "azure_storage_use_emulator": flag(self.use_emulator),
            "azure_allow_http": flag(self.allow_http),
        }
        secret = {
            "azure_storage_account_key": self.account_key_env,
            "azure_storage_sas_key": self.sas_token_env,
            "azure_storage_client_secret": self.client_secret_env,
        }
        return _present(plain), _present(secret)


def _not_azurite_endpoint(endpoint: str | None) -> None:
    """Against Azurite through an endpoint, delta-rs lists the log from an offset (`startFrom`),
    which Azurite ignores: every commit after a table's second failed ("Invalid table version").
    Emulator mode lists without it."""
    parsed = urlparse(endpoint or "")
    if (
        parsed.hostname in ("127.0.0.1", "localhost", "::1")
        and parsed.path.strip("/") == "devstoreaccount1"
    ):
        raise ValueError(
            f"{endpoint} is Azurite: set use_emulator: true and AZURITE_BLOB_STORAGE_URL="
            f"{parsed.scheme}://{parsed.netloc} instead (through an endpoint, Delta commits fail there "
            "after a table's second)"
        )


def _present(options: dict[str, str | None]) -> dict[str, str]:
    return {k: v for k, v in options.items() if v is not None}


class ExternalStorageConfig(_Strict):
    uri: str = Field(min_length=1)
    # The environment variable holding the manifest signing key (never the key itself).
    signing_key_env: str | None = Field(default=None, pattern=ENV_NAME)
    s3: S3StorageConfig | None = None
    azure: AzureStorageConfig | None = None
    # Further object_store options (the same names for delta-rs and the export files), merged last.
    storage_options: dict[str, str] = Field(default_factory=dict)
    # Further options whose values are read from these environment variables when a run starts.
    storage_options_env: dict[str, EnvName] = Field(default_factory=dict)

    @field_validator("uri")
    @classmethod
    def _uri(cls, value: str) -> str:
        if any(ord(c) < 32 for c in value):
            raise ValueError(f"{value!r}: control characters are not allowed in a path")
        parsed = urlparse(value)
        scheme = parsed.scheme.lower()
        if scheme in ("s3",):
            if not S3_BUCKET.fullmatch(parsed.netloc or ""):
                raise ValueError(
                    f"{value!r}: expected s3://<bucket>[/prefix] with a valid bucket name"
                )
        elif scheme in ("az", "abfs", "abfss"):
            container, _, host = (parsed.netloc or "").partition("@")
            if not AZURE_CONTAINER.fullmatch(container):
                raise ValueError(
                    f"{value!r}: expected {scheme}://<container>[@<account>.dfs.core.windows.net]"
                    "[/prefix] with a valid container name"
                )
            if host and not AZURE_HOST.fullmatch(host):
                raise ValueError(f"{value!r}: {host!r} is not <account>.dfs.core.windows.net")
        elif scheme and len(scheme) > 1 and scheme != "file":
            raise ValueError(
                f"{value!r}: scheme {parsed.scheme!r} is not supported; use a local folder (relative to the "
                "configuration file, or absolute), a file:// URI, s3://, abfss:// or az://"
            )
        if scheme == "file" and parsed.netloc not in ("", "localhost"):
            # file://data/x would silently mean the folder /x on host "data".
            raise ValueError(
                f"{value!r}: a file URI must be absolute (file:///path); "
                "give a relative folder without file://"
            )
        if scheme in ("s3", "az", "abfs", "abfss") and ("?" in value or "#" in value):
            raise ValueError(
                f"{value!r}: no query or fragment; give options under s3, azure or storage_options"
            )
        return value

    @field_validator("storage_options", "storage_options_env")
    @classmethod
    def _option_names(cls, value: dict[str, str], info) -> dict[str, str]:
        for key in value:
            if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]{0,127}", key):
                raise ValueError(f"{key!r} is not an object_store option name")
            if OBSOLETE_OPTIONS.fullmatch(key):
                raise ValueError(
                    f"{key}: delta-rs 1.x commits with conditional writes and ignores this (there is "
                    "no DynamoDB locking any more); remove it"
                )
            if info.field_name == "storage_options" and SECRET_OPTION.search(key):
                raise ValueError(
                    f"{key} holds a credential: name the environment variable that holds it in "
                    "storage_options_env instead"
                )
        for key, option in value.items():
            if (
                key.lower() in ("azure_storage_endpoint", "azure_endpoint", "endpoint")
                and info.field_name == "storage_options"
            ):
                _not_azurite_endpoint(option)
        if "disabled" in {
            str(v).lower() for k, v in value.items() if "conditional_put" in k.lower()
        }:
            raise ValueError(
                "conditional_put: disabled makes every Delta commit fail; leave it unset (etag)"
            )
        return value

    @model_validator(mode="after")
    def _backend(self) -> ExternalStorageConfig:
        backend = self.backend
        if self.s3 is not None and backend != "s3":
            raise _KeyedError("external_storage.s3", f"only for an s3:// uri, not {self.uri!r}")
        if self.azure is not None and backend != "azure":
            raise _KeyedError(
                "external_storage.azure", f"only for an abfss:// or az:// uri, not {self.uri!r}"
            )
        if backend == "local" and (self.storage_options or self.storage_options_env):
            raise _KeyedError(
                "external_storage.storage_options", "only for s3://, abfss:// or az:// storage"
            )
        if backend == "azure":
            uri_account = self._uri_account
            settings = self.azure or AzureStorageConfig()
            if uri_account and settings.account_name and uri_account != settings.account_name:
                raise _KeyedError(
                    "external_storage.azure.account_name",
                    f"{settings.account_name!r} differs from the account in the uri ({uri_account!r})",
                )
            named = "azure_storage_account_name" in {
                k.lower() for k in self.storage_options
            } or any("account_name" in k.lower() for k in self.storage_options)
            if not (uri_account or settings.account_name or settings.use_emulator or named):
                raise _KeyedError(
                    "external_storage.azure.account_name",
                    "required for an az:// uri (or name the account in the uri: "
                    "abfss://<container>@<account>.dfs.core.windows.net/...)",
                )
        if backend != "local":
            self._check_options()
        return self

    def _check_options(self) -> None:
        """Build the store once, without credentials: an option object_store does not know fails
        here, on load, and not in the middle of a run."""
        from obstore.exceptions import BaseError

        from marketplace.storage import ObjectStorage, StorageError

        plain, _ = self.options()
        try:
            ObjectStorage(self.uri, plain)
        except (StorageError, BaseError, ValueError) as exc:
            key = (
                "external_storage.storage_options"
                if self.storage_options
                else f"external_storage.{self.backend}"
            )
            raise _KeyedError(
                key, str(exc).removeprefix(f"external storage {self.uri.rstrip('/')}: ")
            ) from None

    @property
    def backend(self) -> str:
        scheme = urlparse(self.uri).scheme.lower()
        return "s3" if scheme == "s3" else "azure" if scheme in ("az", "abfs", "abfss") else "local"

    @property
    def _uri_account(self) -> str | None:
        match = AZURE_HOST.fullmatch(urlparse(self.uri).netloc.partition("@")[2])
        return match["account"] if match else None

    def options(self) -> tuple[dict[str, str], dict[str, str]]:
        """(object_store options, {option: environment variable holding its value}) for this storage."""
        block = self.s3 or self.azure
        plain, secret = block.options() if block is not None else ({}, {})
        if (
            self.backend == "azure"
            and "azure_storage_account_name" not in plain
            and self._uri_account
        ):
            plain["azure_storage_account_name"] = self._uri_account
        return {**plain, **self.storage_options}, {**secret, **self.storage_options_env}


class ClientConfig(_Strict):
    """How long an MLflow call may take: seconds, not the library's minutes."""

    timeout_seconds: int = Field(default=15, ge=1, le=600)
    max_retries: int = Field(default=2, ge=0, le=10)
    # Registry work in flight at once, per run: versions of a workspace exported, imported and
    # load-checked at once; marketplace registration calls.
    max_workers: int = Field(default=4, ge=1, le=32)


Status = Literal["running", "stopped"]


def _check_cron(value: str) -> str:
    # Dagster's own rule (croniter, 5 fields, not a day February never has), so that a file that
    # loads also gives schedules Dagster accepts; without importing Dagster.
    from croniter import croniter

    if not croniter.is_valid(value) or not _schedulable(value):
        raise ValueError(
            f"{value!r} is not a cron expression Dagster can schedule (5 fields, e.g. '0 2 * * *')"
        )
    return value


def _schedulable(value: str) -> bool:
    from croniter import croniter

    expanded, *_ = croniter.expand(value)
    if len(expanded) != 5:
        return False
    return not (expanded[3] == [2] and len(expanded[2]) == 1 and expanded[2][0] in (30, 31))


class SensorConfig(_Strict):
    """production_version_sensor: reads webhook events every tick, and polls every workspace for
    production versions not yet synced every `minimum_interval_seconds`."""

    minimum_interval_seconds: int = Field(default=20, ge=10, le=86400)
    default_status: Status = "stopped"
    max_workers: int = Field(default=16, ge=1, le=128)
    request_timeout_seconds: int = Field(default=5, ge=1, le=60)
    retry_backoff_seconds: int = Field(default=300, ge=0, le=86400)


_LISTEN = re.compile(r"^(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):(?P<port>[0-9]{1,5})$")
_EVERY_ADDRESS = ("0.0.0.0", "[::]")


class WebhooksConfig(_Strict):
    """The webhook receiver (`marketplace-webhooks`): where it listens, and the URL sources call."""

    listen: str = "127.0.0.1:8765"
    url: str | None = None

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        match = _LISTEN.fullmatch(value)
        if not match or not 0 < int(match["port"]) < 65536:
            raise ValueError(f"{value!r} is not host:port (e.g. 127.0.0.1:8765 or 0.0.0.0:8765)")
        return value

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parsed = urlparse(value)
        if (
            parsed.scheme not in ("http", "https")
            or not parsed.hostname
            or parsed.query
            or parsed.fragment
        ):
            raise ValueError(
                f"{value!r} is not an http(s) base URL without query (e.g. https://hooks.example.com)"
            )
        if parsed.username or parsed.password:
            raise ValueError("the URL must not carry credentials: deliveries are signed instead")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _reachable(self) -> WebhooksConfig:
        if self.url is None and self.host in _EVERY_ADDRESS:
            raise _KeyedError(
                "webhooks.url",
                f"required when webhooks.listen binds every address ({self.listen}): "
                "give the URL the sources call, e.g. https://marketplace-hooks.example.com",
            )
        return self

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0]

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])

    @property
    def base_url(self) -> str:
        return self.url or f"http://{self.listen}"


class ScheduleConfig(_Strict):
    """daily_marketplace_schedule: today's partition of every workspace, the safety net."""

    cron: str = "0 2 * * *"
    default_status: Status = "running"

    _cron = field_validator("cron")(classmethod(lambda cls, v: _check_cron(v)))


class FreshnessConfig(_Strict):
    """Each workspace's partition for a day must be synced by `deadline` (UTC) that day."""

    deadline: dt.time = dt.time(6, 0)
    check_cron: str = "0 * * * *"
    default_status: Status = "running"

    _cron = field_validator("check_cron")(classmethod(lambda cls, v: _check_cron(v)))

    @field_validator("deadline", mode="before")
    @classmethod
    def _time(cls, value: Any) -> Any:
        if isinstance(value, int):  # YAML reads 06:00 unquoted as a sexagesimal number
            return dt.time(value // 60 % 24, value % 60)
        return value


class ChecksConfig(_Strict):
    """marketplace_checks_job: every table-wide check, including a full hash of every export."""

    cron: str = "0 5 * * *"
    default_status: Status = "running"

    _cron = field_validator("cron")(classmethod(lambda cls, v: _check_cron(v)))


class AutomationConfig(_Strict):
    """The automation sensor that carries an upstream materialization down the chain."""

    default_status: Status = "running"


class HousekeepingConfig(_Strict):
    """marketplace_maintenance_job: compact and vacuum the tables, remove old export debris."""

    cron: str = "0 4 * * 0"
    default_status: Status = "running"
    debris_retention_hours: float = Field(default=24, ge=0)
    vacuum_retention_hours: int = Field(default=168, ge=0)

    _cron = field_validator("cron")(classmethod(lambda cls, v: _check_cron(v)))


class MarketplaceConfig(_Strict):
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
            raise ValueError(f"{value!r} is a timestamp; give a date (YYYY-MM-DD)")
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
                raise _KeyedError(
                    f"workspaces[{index}].name", f"duplicate workspace name {workspace.name!r}"
                )
            seen.add(workspace.name)
        for index, workspace in enumerate(self.workspaces):
            if workspace.export.engine != "databricks":
                continue
            key = f"workspaces[{index}] ({workspace.name}).export"
            if self.external_storage.backend == "local":
                raise _KeyedError(
                    f"{key}.engine",
                    "a Databricks job cannot write to a local folder: put "
                    "external_storage on s3:// or abfss://",
                )
            _, secret = self.external_storage.options()
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
                raise _KeyedError(
                    f"{key}.env",
                    "the job reads "
                    + ", ".join(f"{v} ({needed[v]})" for v in missing)
                    + ": map each to a Databricks secret, e.g. {{secrets/marketplace/<key>}}",
                )
        if self.require_signatures:
            for index, workspace in enumerate(self.workspaces):
                if not workspace.signing.public_key:
                    raise _KeyedError(
                        f"workspaces[{index}] ({workspace.name}).signing.public_key",
                        "required: marketplace.require_signatures is "
                        + (
                            "true"
                            if self.marketplace.require_signatures
                            else "on because another workspace has a key"
                        )
                        + " and this workspace's exports could not be verified (give its public key, or set "
                        "marketplace.require_signatures: false)",
                    )
        if len(self.workspaces) > 1 and "{workspace}" not in self.marketplace.name_template:
            raise _KeyedError(
                "marketplace.name_template",
                f"{self.marketplace.name_template!r} has no {{workspace}}: with several workspaces, "
                "models of the same name would collide in the marketplace",
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

    def public_key(self, workspace: str) -> str | None:
        """The PEM of the workspace's signing public key, if it has one."""
        from marketplace.signatures import (
            read_public_key,  # model_signing loads sigstore: only when needed
        )

        value = self.workspace(workspace).signing.public_key
        return None if value is None else read_public_key(value, self.base_dir)

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

    def workspace(self, name: str) -> WorkspaceConfig:
        for workspace in self.workspaces:
            if workspace.name == name:
                return workspace
        raise KeyError(f"workspace {name!r} is not configured in {self._path}")


class _KeyedError(ValueError):
    """A model-level validation failure that knows the exact key it is about."""

    def __init__(self, key: str, message: str):
        self.key = key
        super().__init__(message)


def _format_location(raw: Any, loc: tuple[Any, ...]) -> str:
    parts: list[str] = []
    node = raw
    for item in loc:
        if isinstance(item, int):
            label = f"[{item}]"
            if isinstance(node, list) and 0 <= item < len(node):
                node = node[item]
                name = node.get("name") if isinstance(node, dict) else None
                if isinstance(name, str) and name.strip():
                    label = f"[{item}] ({name.strip()})"
            else:
                node = None
            parts.append(label)
        else:
            parts.append(("." if parts else "") + str(item))
            node = node.get(item) if isinstance(node, dict) else None
    return "".join(parts)


def parse_config(raw: Any, path: Path | str) -> MarketplaceConfig:
    """Validate an already-parsed YAML document; errors name `path` and the key."""
    path = Path(path)
    if not isinstance(raw, dict):
        raise ConfigError(
            path,
            "",
            "the file must hold a mapping with external_storage, marketplace and workspaces",
        )
    try:
        config = MarketplaceConfig.model_validate(raw)
    except ValidationError as exc:
        messages = []
        for error in exc.errors():
            cause = error.get("ctx", {}).get("error")
            if isinstance(cause, _KeyedError):
                key, message = cause.key, str(cause)
            else:
                key = _format_location(raw, tuple(error["loc"]))
                message = error["msg"].removeprefix("Value error, ")
                if error["type"] == "missing":
                    message = "required key is missing"
                elif error["type"] == "extra_forbidden":
                    message = "unknown key (check its spelling)"
            messages.append((key, message))
        first_key = messages[0][0]
        detail = "; ".join(f"{key}: {message}" for key, message in messages)
        error = ConfigError(path, first_key, messages[0][1])
        error.args = (f"{path}: {detail}",)
        raise error from None
    config._path = Path(os.path.abspath(path))  # a link keeps its own folder
    for index, workspace in enumerate(config.workspaces):
        if workspace.signing.public_key is not None:
            try:
                config.public_key(workspace.name)
            except ValueError as exc:
                raise ConfigError(
                    path, f"workspaces[{index}] ({workspace.name}).signing.public_key", str(exc)
                ) from None
    if config.external_storage.signing_key_env:
        warnings.warn(
            f"{path}: external_storage.signing_key_env (an HMAC shared by every workspace) is deprecated and "
            "will be removed in the next release: give each workspace signing.private_key_env and "
            "signing.public_key (OpenSSF model signing) instead",
            FutureWarning,
            stacklevel=2,
        )
    return config


def load_config(path: str | os.PathLike[str] | None = None) -> MarketplaceConfig:
    """Load the file named by `path`, else by $MARKETPLACE_CONFIG, else the embedded default."""
    if path is None:
        path = os.environ.get(CONFIG_ENV_VAR) or DEFAULT_CONFIG_PATH
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            path, "", f"configuration file not found (set {CONFIG_ENV_VAR} to a readable file)"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(path, "", f"cannot read the configuration file: {exc}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(path, "", f"not valid YAML{where}: {problem}") from None
    return parse_config(raw, path)
