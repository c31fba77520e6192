"""How the configuration reaches a registry: an MLflow URI, or a Databricks workspace as a service
principal (its MLflow URIs are the registry access's to derive: `marketplace.databricks`)."""

from __future__ import annotations

from typing import Any, Literal
from urllib.parse import urlparse

from pydantic import Field, field_validator, model_validator

from marketplace.config.base import ENV_NAME, KeyedError, Strict

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


class DatabricksConnection(Strict):
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
                f"{value} is read by the Databricks SDK for every workspace (and cleared by the "
                "run); hold each workspace's secret in a variable of its own, e.g. DEV01_SP_SECRET"
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


def check_address(owner: Any, key: str | None = None) -> None:
    """A registry is given by its URIs or by a `databricks` block, exactly one of the two."""
    if owner.databricks is None:
        if owner.tracking_uri is None:
            message = (
                "required key is missing (or give a databricks block for a Databricks workspace)"
            )
            raise (
                KeyedError(f"{key}.tracking_uri", message)
                if key
                else ValueError(f"tracking_uri: {message}")
            )
        return
    if owner.tracking_uri is not None or owner.registry_uri is not None:
        raise ValueError("set either tracking_uri/registry_uri or databricks, not both")
