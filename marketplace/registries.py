"""The registries the marketplace talks to, built from the configuration's own sections: every
source workspace's, and the central marketplace registry."""

from __future__ import annotations

import os
from functools import cached_property

from mlflow import MlflowClient

from marketplace.config import MarketplaceConfig, MarketplaceRegistryConfig, WorkspaceConfig
from marketplace.credentials import authenticate
from marketplace.databricks import addressed, ensure_profile, profile_of
from marketplace.errors import MarketplaceError
from marketplace.naming import render_name, shorten
from marketplace.provenance import Marker
from marketplace.registry import configure_http, make_client


class SourceRegistries:
    """Clients for every configured workspace's MLflow registry."""

    def __init__(self, config: MarketplaceConfig):
        self.config = config

    @property
    def source_marker(self) -> bool:
        return self.config.source_marker

    @property
    def max_workers(self) -> int:
        """Versions of one workspace exported (and imported) at once, per run."""
        return self.config.client.max_workers

    @property
    def names(self) -> list[str]:
        return [w.name for w in self.config.workspaces]

    def get(self, name: str) -> WorkspaceConfig:
        """The workspace's settings, with the URIs its registry is reached at."""
        return addressed(self.config.workspace(name))

    def client(self, name: str) -> MlflowClient:
        configure_http(self.config.client.timeout_seconds, self.config.client.max_retries)
        workspace = self.get(name)
        ensure_profile(f"workspace {name}", workspace.tracking_uri, workspace.databricks)
        return make_client(workspace.tracking_uri, workspace.registry_uri)

    def public_key(self, name: str) -> str | None:
        """The PEM of the workspace's signing public key (read once), if it has one."""
        return self._public_keys[name]

    @cached_property
    def _public_keys(self) -> dict[str, str | None]:
        from marketplace.signatures import read_public_key  # cryptography: only where keys are

        base = self.config.base_dir
        return {
            w.name: None
            if w.signing.public_key is None
            else read_public_key(w.signing.public_key, base)
            for w in self.config.workspaces
        }

    def private_key(self, name: str) -> str | None:
        """The PEM the workspace's exports are signed with, read from its variable now."""
        from marketplace.signatures import (
            check_private_key,  # model_signing loads sigstore: only when needed
        )

        variable = self.get(name).signing.private_key_env
        if variable is None:
            return None
        value = os.environ.get(variable)
        key = f"workspace {name}: signing.private_key_env"
        if not value:
            raise MarketplaceError(
                f"{key}: the environment variable {variable} is not set "
                "(it holds the PEM of the EC private key its exports are signed with)"
            )
        try:
            check_private_key(value)
        except ValueError as exc:
            raise MarketplaceError(f"{key}: the environment variable {variable}: {exc}") from None
        return value

    def workspace_client(self, name: str):
        """The Databricks SDK client of a Databricks workspace, as its service principal."""
        from databricks.sdk import WorkspaceClient

        workspace = self.get(name)
        if workspace.databricks is None:
            raise MarketplaceError(f"workspace {name} is not a Databricks workspace")
        ensure_profile(f"workspace {name}", workspace.tracking_uri, workspace.databricks)
        return WorkspaceClient(profile=profile_of(workspace.tracking_uri))


class MarketplaceRegistry:
    """The central marketplace registry and how models are named and promoted there."""

    def __init__(self, config: MarketplaceConfig):
        self.config = config
        # With the URIs the marketplace is reached at.
        self.settings: MarketplaceRegistryConfig = addressed(config.marketplace)

    @property
    def tracking_uri(self) -> str:
        return self.settings.tracking_uri

    @property
    def registry_uri(self) -> str | None:
        return self.settings.registry_uri

    @property
    def alias(self) -> str:
        return self.settings.alias

    @property
    def databricks(self):
        return self.settings.databricks

    @property
    def max_workers(self) -> int:
        return self.config.client.max_workers

    @property
    def require_signatures(self) -> bool:
        return self.config.require_signatures

    @property
    def scan_policy(self):
        """Every export is scanned before anything loads it (`security` in the configuration)."""
        from marketplace.scanning import scan_policy  # modelscan: only where scanning happens

        return scan_policy(self.config.security)

    @property
    def sandbox_settings(self):
        """Where models load (`security.sandbox` in the configuration)."""
        return self.config.security.sandbox.settings()

    def client(self) -> MlflowClient:
        configure_http(self.config.client.timeout_seconds, self.config.client.max_retries)
        ensure_profile("the marketplace", self.tracking_uri, self.databricks)
        authenticate(
            self.tracking_uri,
            username_env=self.settings.username_env,
            password_env=self.settings.password_env,
            token_env=self.settings.token_env,
        )
        return make_client(self.tracking_uri, self.registry_uri)

    @property
    def is_unity_catalog(self) -> bool:
        return (self.registry_uri or "").startswith("databricks-uc")

    @property
    def has_aliases(self) -> bool:
        """MLflow refuses aliases on the Databricks workspace registry (stages only there)."""
        return not (self.registry_uri or self.tracking_uri).startswith("databricks://")

    @property
    def marker(self) -> Marker:
        """How production is marked here: an alias, and the Production stage except on Unity
        Catalog."""
        return Marker(
            self.alias, has_aliases=self.has_aliases, has_stages=not self.is_unity_catalog
        )

    @cached_property
    def grants(self):
        """The access grants applied on every registration; with none configured, it still
        revokes those the sync recorded earlier (and makes no call where it recorded none)."""
        from marketplace.grants import Grants

        return Grants(self.settings, self.tracking_uri, workspace_client=self.workspace_client)

    def workspace_client(self):
        """The Databricks SDK client of a Databricks marketplace, as its service principal."""
        from databricks.sdk import WorkspaceClient

        if self.databricks is None:
            raise MarketplaceError("the marketplace is not a Databricks workspace")
        ensure_profile("the marketplace", self.tracking_uri, self.databricks)
        return WorkspaceClient(profile=profile_of(self.tracking_uri))

    def model_name(self, workspace: str, model: str) -> str:
        return render_name(
            self.settings.name_template, workspace, model, unity_catalog=self.is_unity_catalog
        )

    def experiment_name(self, marketplace_name: str) -> str:
        return shorten(f"{self.settings.experiment_prefix.rstrip('/')}/{marketplace_name}")
