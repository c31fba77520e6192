"""The deployment configuration: one YAML file, validated on load, naming the file and key at fault."""

from __future__ import annotations

import datetime as dt
import os
import re
import string
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

CONFIG_ENV_VAR = "MARKETPLACE_CONFIG"
DEFAULT_CONFIG_PATH = Path(__file__).resolve().parent.parent / "marketplace.yaml"

# Workspace names become partition keys, path components and Unity Catalog schema names.
WORKSPACE_NAME_PATTERN = re.compile(r"^[a-z0-9_-]{1,64}$")
TEMPLATE_FIELDS = frozenset({"workspace", "model"})


class ConfigError(ValueError):
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
            raise ValueError("set exactly one of 'stage' (e.g. Production) or 'alias' (e.g. champion)")
        if self.stage is not None and self.stage.lower() not in ("production", "staging"):
            raise ValueError(f"stage {self.stage!r} is not a selectable stage (Production or Staging)")
        if self.alias is not None and not re.fullmatch(r"[A-Za-z0-9_-]{1,255}", self.alias):
            raise ValueError(f"alias {self.alias!r} may contain only letters, digits, '_' and '-'")
        return self

    def describe(self) -> str:
        return f"stage {self.stage}" if self.stage else f"alias @{self.alias}"


ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]{0,127}$"
# Variables the Databricks SDK reads itself, over any profile: the run clears them, so a secret
# cannot live in one of them.
SDK_ENV = ("DATABRICKS_HOST", "DATABRICKS_TOKEN", "DATABRICKS_CLIENT_ID", "DATABRICKS_CLIENT_SECRET",
           "DATABRICKS_AUTH_TYPE", "DATABRICKS_CONFIG_PROFILE", "ARM_CLIENT_ID", "ARM_CLIENT_SECRET", "ARM_TENANT_ID")


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
        needed = {"oauth-m2m": ["client_id"], "azure-client-secret": ["azure_client_id", "azure_tenant_id"], "pat": []}
        for key in needed[self.auth]:
            if not getattr(self, key):
                raise ValueError(f"auth {self.auth!r} needs {key}")
        stray = [k for k in ("client_id", "azure_client_id", "azure_tenant_id")
                 if getattr(self, k) and k not in needed[self.auth]]
        if stray:
            raise ValueError(f"{', '.join(stray)}: not used with auth {self.auth!r}")
        return self


def _connect_databricks(owner: Any, profile: str, key: str | None = None) -> None:
    """With a `databricks` block, the URIs name the profile the run writes for it."""
    if owner.databricks is None:
        if owner.tracking_uri is None:
            message = "required key is missing (or give a databricks block for a Databricks workspace)"
            raise _KeyedError(f"{key}.tracking_uri", message) if key else ValueError(f"tracking_uri: {message}")
        return
    if owner.tracking_uri is not None or owner.registry_uri is not None:
        raise ValueError("set either tracking_uri/registry_uri or databricks, not both")
    registry = "databricks-uc" if owner.databricks.unity_catalog else "databricks"
    object.__setattr__(owner, "tracking_uri", f"databricks://{profile}")
    object.__setattr__(owner, "registry_uri", f"{registry}://{profile}")


class WorkspaceConfig(_Strict):
    name: str
    tracking_uri: TrackingUri | None = None
    registry_uri: str | None = None
    databricks: DatabricksConnection | None = None
    production: ProductionSelector
    include: list[str] = Field(default_factory=lambda: ["*"])
    exclude: list[str] = Field(default_factory=list)

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

    @field_validator("include", "exclude")
    @classmethod
    def _patterns(cls, value: list[str]) -> list[str]:
        for pattern in value:
            if not pattern:
                raise ValueError("an empty glob pattern matches nothing; remove it")
        return value

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
        return self

    @property
    def effective_registry_uri(self) -> str:
        return self.registry_uri or self.tracking_uri


def databricks_profile(owner: str | None) -> str:
    """The profile name of a workspace (or of the marketplace) in the run's Databricks config file."""
    # No ':' (MLflow reads databricks://scope:prefix as a secret scope); workspace names have none.
    return "marketplace-registry" if owner is None else f"marketplace-ws-{owner}"


class MarketplaceRegistryConfig(_Strict):
    tracking_uri: TrackingUri | None = None
    registry_uri: str | None = None
    databricks: DatabricksConnection | None = None
    name_template: str = "{workspace}.{model}"
    alias: str = "production"
    experiment_prefix: str = "/Shared/marketplace"

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
                raise _KeyedError("marketplace.name_template", "{model} belongs in the last (model) level")
        return self

    @property
    def is_unity_catalog(self) -> bool:
        return (self.registry_uri or "").startswith("databricks-uc")

    @property
    def effective_registry_uri(self) -> str:
        return self.registry_uri or self.tracking_uri


class ExternalStorageConfig(_Strict):
    uri: str = Field(min_length=1)
    # The environment variable holding the manifest signing key (never the key itself).
    signing_key_env: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")

    @field_validator("uri")
    @classmethod
    def _uri(cls, value: str) -> str:
        if any(ord(c) < 32 for c in value):
            raise ValueError(f"{value!r}: control characters are not allowed in a path")
        parsed = urlparse(value)
        if parsed.scheme and len(parsed.scheme) > 1 and parsed.scheme != "file":
            raise ValueError(
                f"{value!r}: scheme {parsed.scheme!r} is not supported; use a local folder "
                "(relative to the configuration file, or absolute) or a file:// URI"
            )
        if parsed.scheme == "file" and parsed.netloc not in ("", "localhost"):
            # file://data/x would silently mean the folder /x on host "data".
            raise ValueError(
                f"{value!r}: a file URI must be absolute (file:///path); "
                "give a relative folder without file://"
            )
        return value


class ClientConfig(_Strict):
    """How long an MLflow call may take: seconds, not the library's minutes."""

    timeout_seconds: int = Field(default=15, ge=1, le=600)
    max_retries: int = Field(default=2, ge=0, le=10)
    # Marketplace registration calls in flight at once, per run.
    max_workers: int = Field(default=4, ge=1, le=32)


Status = Literal["running", "stopped"]


def _check_cron(value: str) -> str:
    # Dagster's own rule (5 fields, not a day February never has), so that a file that loads
    # also gives schedules Dagster accepts.
    from dagster._utils.schedules import is_valid_cron_string

    if not is_valid_cron_string(value):
        raise ValueError(
            f"{value!r} is not a cron expression Dagster can schedule (5 fields, e.g. '0 2 * * *')"
        )
    return value


class SensorConfig(_Strict):
    """production_version_sensor: polls every workspace for production versions not yet synced."""

    minimum_interval_seconds: int = Field(default=60, ge=10, le=86400)
    default_status: Status = "stopped"
    max_workers: int = Field(default=16, ge=1, le=128)
    request_timeout_seconds: int = Field(default=5, ge=1, le=60)
    retry_backoff_seconds: int = Field(default=300, ge=0, le=86400)


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
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    freshness: FreshnessConfig = Field(default_factory=FreshnessConfig)
    checks: ChecksConfig = Field(default_factory=ChecksConfig)
    automation: AutomationConfig = Field(default_factory=AutomationConfig)
    housekeeping: HousekeepingConfig = Field(default_factory=HousekeepingConfig)

    _path: Path = PrivateAttr(default=DEFAULT_CONFIG_PATH)

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
        today = dt.datetime.now(dt.timezone.utc).date()
        if value > today:
            raise ValueError(f"{value} is in the future (today is {today} UTC)")
        return value

    @model_validator(mode="after")
    def _unique_workspaces(self) -> MarketplaceConfig:
        seen: set[str] = set()
        for index, workspace in enumerate(self.workspaces):
            if workspace.name in seen:
                raise _KeyedError(f"workspaces[{index}].name", f"duplicate workspace name {workspace.name!r}")
            seen.add(workspace.name)
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
    def storage_root(self) -> str:
        """External storage as an absolute local path (relative URIs resolve against the file)."""
        uri = self.external_storage.uri
        parsed = urlparse(uri)
        if parsed.scheme == "file":
            uri = unquote(parsed.path)  # file:///tmp/my%20dir is the folder "my dir"
        root = Path(os.path.expanduser(uri))
        if not root.is_absolute():
            root = self._path.parent / root
        return str(root.resolve())

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
        raise ConfigError(path, "", "the file must hold a mapping with external_storage, marketplace and workspaces")
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
    config._path = path.resolve()
    return config


def load_config(path: str | os.PathLike[str] | None = None) -> MarketplaceConfig:
    """Load the file named by `path`, else by $MARKETPLACE_CONFIG, else the embedded default."""
    if path is None:
        path = os.environ.get(CONFIG_ENV_VAR) or DEFAULT_CONFIG_PATH
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(path, "", f"configuration file not found (set {CONFIG_ENV_VAR} to a readable file)") from None
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
