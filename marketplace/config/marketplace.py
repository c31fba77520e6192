"""The `marketplace` section: the central registry, how models are named there, who may use them
(grants), and the credentials of an authenticated MLflow server."""

from __future__ import annotations

import re
import string
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from marketplace.config.base import (
    EnvName,
    KeyedError,
    Strict,
    TrackingUri,
    check_tracking_uri,
    glob_patterns,
)
from marketplace.config.connections import DatabricksConnection, check_address

TEMPLATE_FIELDS = frozenset({"workspace", "model"})
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


class GrantConfig(Strict):
    """A permission on every marketplace model whose name matches `models`."""

    principal: str = Field(min_length=1, max_length=255)
    kind: Literal["user", "role", "group", "service_principal"]
    permission: str
    models: list[str] = Field(default_factory=lambda: ["*"], min_length=1)

    @field_validator("permission", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    _patterns = field_validator("models")(classmethod(lambda cls, v: glob_patterns(v)))


_KIND_NAMES = {
    "mlflow": "an MLflow server",
    "databricks": "the Databricks workspace registry",
    "unity_catalog": "Unity Catalog",
}


class MarketplaceRegistryConfig(Strict):
    tracking_uri: TrackingUri | None = None
    registry_uri: str | None = None
    databricks: DatabricksConnection | None = None
    name_template: str = "{workspace}.{model}"
    alias: str = "production"
    experiment_prefix: str = "/Shared/marketplace"
    # Refuse every export without a valid OpenSSF signature (default: whenever any workspace has a
    # public key).
    require_signatures: bool | None = None
    # Permissions the sync applies to matching marketplace models (and records, to revoke only its
    # own).
    grants: list[GrantConfig] = Field(default_factory=list)
    # An authenticated OSS MLflow server: the variables holding the sync's credentials (never the
    # values).
    username_env: EnvName | None = None
    password_env: EnvName | None = None
    token_env: EnvName | None = None

    @field_validator("tracking_uri", "registry_uri")
    @classmethod
    def _uri(cls, value: str | None) -> str | None:
        return None if value is None else check_tracking_uri(value)

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
        check_address(self, "marketplace")
        if self.is_unity_catalog:
            sample = self.name_template.format(workspace="workspace", model="model")
            parts = sample.split(".")
            if len(parts) != 3 or not all(re.fullmatch(r"[A-Za-z0-9_-]{1,255}", p) for p in parts):
                raise KeyedError(
                    "marketplace.name_template",
                    f"{self.name_template!r} gives {sample!r}: a Unity Catalog model name is three "
                    "levels, catalog.schema.model (for example "
                    f"'marketplace.{{workspace}}.{{model}}'), each of letters, digits, '_' and '-'",
                )
            if "{model}" not in self.name_template.rsplit(".", 1)[-1]:
                raise KeyedError(
                    "marketplace.name_template", "{model} belongs in the last (model) level"
                )
        if (self.username_env is None) != (self.password_env is None):
            raise KeyedError(
                "marketplace.password_env" if self.username_env else "marketplace.username_env",
                "set username_env and password_env together (or token_env alone)",
            )
        if self.token_env and self.username_env:
            raise KeyedError(
                "marketplace.token_env", "choose username_env/password_env or token_env, not both"
            )
        if self.databricks is not None and (self.username_env or self.token_env):
            key = "marketplace.username_env" if self.username_env else "marketplace.token_env"
            raise KeyedError(
                key, "a Databricks marketplace authenticates through its databricks block"
            )
        kind = self.kind
        for index, grant in enumerate(self.grants):
            key = f"marketplace.grants[{index}] ({grant.principal})"
            if grant.kind not in PRINCIPAL_KINDS[kind]:
                raise KeyedError(
                    f"{key}.kind",
                    f"{grant.kind!r} is not a principal on {_KIND_NAMES[kind]}: "
                    f"use {' or '.join(PRINCIPAL_KINDS[kind])}",
                )
            if grant.permission not in PERMISSIONS[kind]:
                raise KeyedError(
                    f"{key}.permission",
                    f"{grant.permission!r} is not a permission on "
                    f"{_KIND_NAMES[kind]}: use {' or '.join(PERMISSIONS[kind])}",
                )
        return self

    @property
    def kind(self) -> str:
        """mlflow (an OSS server), databricks (the workspace registry) or unity_catalog."""
        if self.databricks is None:
            return "mlflow"
        return "unity_catalog" if self.databricks.unity_catalog else "databricks"

    @property
    def is_unity_catalog(self) -> bool:
        return self.kind == "unity_catalog"
