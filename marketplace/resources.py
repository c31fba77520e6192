"""Dagster resources: the workspace registries, the marketplace registry and external storage."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import warnings
from collections.abc import Mapping

import dagster as dg
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from pydantic import Field, PrivateAttr

from marketplace import summary
from marketplace.config import MarketplaceConfig
from marketplace.engines import ExportEngine
from marketplace.databricks import Connection, DatabricksCredentialError, databricks_connection, ensure_profile
from marketplace.exports import (
    EXPORT_LOCK_SECONDS,
    ExportRecord,
    export_key,
    inspect_export,
    quarantine_of,
    record_quarantine,
    skip_reason,
    skip_record_key,
)
from marketplace.imports import render_name, shorten
from marketplace.manifest import ManifestError, Tree
from marketplace.registration import Marker
from marketplace.scanning import ScanPolicy
from marketplace.signatures import check_private_key
from marketplace.registry import configure_http, make_client, redact_uri
from marketplace.storage import Storage, StorageError, lock_name, open_storage

SNAPSHOTS_DIR = "production_models"


class Signing(dg.Config):
    """A workspace's OpenSSF signing keys: the variable holding the private key where exports run,
    and the public key's PEM (read from the configuration)."""

    private_key_env: str | None = None
    public_key: str | None = None


class WorkspaceRegistry(dg.Config):
    """One source workspace's registry and how it marks production."""

    name: str
    tracking_uri: str
    registry_uri: str | None = None
    production_stage: str | None = None
    production_alias: str | None = None
    include: list[str] = Field(default_factory=lambda: ["*"])
    exclude: list[str] = Field(default_factory=list)
    databricks: Connection | None = None
    export: ExportEngine = Field(default_factory=ExportEngine)
    signing: Signing = Field(default_factory=lambda: Signing())


def _connected(connection: Connection | None) -> None:
    """Write the Databricks profile a client needs; a missing secret fails the step, naming it."""
    try:
        ensure_profile(connection)
    except DatabricksCredentialError as exc:
        raise dg.Failure(description=str(exc)) from None


class WorkspaceRegistriesResource(dg.ConfigurableResource):
    """Clients for every configured workspace's MLflow registry."""

    workspaces: list[WorkspaceRegistry]
    source_marker: bool = True
    timeout_seconds: int = 15
    max_retries: int = 2

    def get(self, name: str) -> WorkspaceRegistry:
        for workspace in self.workspaces:
            if workspace.name == name:
                return workspace
        raise dg.Failure(f"workspace {name!r} is not configured; configured: {[w.name for w in self.workspaces]}")

    def client(self, name: str) -> MlflowClient:
        configure_http(self.timeout_seconds, self.max_retries)
        workspace = self.get(name)
        _connected(workspace.databricks)
        return make_client(workspace.tracking_uri, workspace.registry_uri)

    def private_key(self, name: str) -> str | None:
        """The PEM the workspace's exports are signed with, read from its variable now."""
        variable = self.get(name).signing.private_key_env
        if variable is None:
            return None
        value = os.environ.get(variable)
        key = f"workspace {name}: signing.private_key_env"
        if not value:
            raise dg.Failure(description=f"{key}: the environment variable {variable} is not set "
                                         "(it holds the PEM of the EC private key its exports are signed with)")
        try:
            check_private_key(value)
        except ValueError as exc:
            raise dg.Failure(description=f"{key}: the environment variable {variable}: {exc}") from None
        return value

    def workspace_client(self, name: str):
        """The Databricks SDK client of a Databricks workspace, as its service principal."""
        from databricks.sdk import WorkspaceClient

        workspace = self.get(name)
        if workspace.databricks is None:
            raise dg.Failure(f"workspace {name} is not a Databricks workspace")
        _connected(workspace.databricks)
        return WorkspaceClient(profile=workspace.databricks.profile)


class MarketplaceRegistryResource(dg.ConfigurableResource):
    """The central marketplace registry and how models are named and promoted there."""

    tracking_uri: str
    registry_uri: str | None = None
    name_template: str = "{workspace}.{model}"
    alias: str = "production"
    experiment_prefix: str = "/Shared/marketplace"
    timeout_seconds: int = 15
    max_retries: int = 2
    max_workers: int = 4
    databricks: Connection | None = None
    # Every export is scanned before anything loads it (security in the configuration).
    scan: str = "block"
    block_severity: str = "high"
    allow_globals: list[str] = Field(default_factory=list)
    require_signatures: bool = False

    @property
    def scan_policy(self) -> ScanPolicy:
        return ScanPolicy(self.scan, self.block_severity, tuple(self.allow_globals))

    def client(self) -> MlflowClient:
        configure_http(self.timeout_seconds, self.max_retries)
        _connected(self.databricks)
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
        """How production is marked here: an alias, and the Production stage except on Unity Catalog."""
        return Marker(self.alias, has_aliases=self.has_aliases, has_stages=not self.is_unity_catalog)

    def production_version(self, client: MlflowClient, name: str) -> str | None:
        """The version marked production: by `alias`, or on the Databricks workspace registry by stage."""
        try:
            if self.has_aliases:
                return client.get_model_version_by_alias(name, self.alias).version
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                latest = client.get_latest_versions(name, stages=["Production"])
            return latest[0].version if latest else None
        except MlflowException:
            return None

    def model_name(self, workspace: str, model: str) -> str:
        return render_name(self.name_template, workspace, model, unity_catalog=self.is_unity_catalog)

    def experiment_name(self, marketplace_name: str) -> str:
        return shorten(f"{self.experiment_prefix.rstrip('/')}/{marketplace_name}")


class ExternalStorageResource(dg.ConfigurableResource):
    """Where exports, production-model snapshots and the summary Delta tables live: a local
    folder, or an S3 / ADLS prefix reached with object_store options."""

    root: str
    # object_store options (delta-rs and obstore read the same names); no secrets.
    options: dict[str, str] = Field(default_factory=dict)
    # option -> the environment variable holding its value (credentials), read when a run starts.
    options_env: dict[str, str] = Field(default_factory=dict)
    # Signs every manifest and refuses imports of unsigned or mis-signed ones (from an env var).
    signing_key: str | None = None
    signing_key_env: str | None = None  # its variable's name, for export jobs to read it themselves
    _storage: Storage | None = PrivateAttr(default=None)

    @property
    def storage(self) -> Storage:
        if self._storage is None:
            try:
                self._storage = open_storage(self.root, resolve_options(self.root, self.options, self.options_env))
            except StorageError as exc:
                raise dg.Failure(description=str(exc)) from None
        return self._storage

    def export_tree(self, workspace: str, model: str, version: int) -> Tree:
        return Tree(self.storage, export_key(workspace, model, version))

    def tree_at(self, location: str) -> Tree:
        """The export recorded at `location` (an export summary's export_path)."""
        key = self.storage.key_of(location)
        if key is None:
            raise ManifestError(f"{location} is not in external storage {self.root}")
        return Tree(self.storage, key)

    def inspect_export(self, workspace: str, model: str, version: int) -> tuple[ExportRecord | None, str | None]:
        """The export of exactly this version, if complete (sizes checked; imports hash it and
        check its signature, and refuse it saying why), else None and why a manifest there does not count."""
        return inspect_export(self.export_tree(workspace, model, version), identity=(workspace, model, version))

    def existing_export(self, workspace: str, model: str, version: int) -> ExportRecord | None:
        return self.inspect_export(workspace, model, version)[0]

    def quarantine(self, workspace: str, model: str, version: int, checksum: str | None = None,
                   policy: ScanPolicy | None = None) -> dict | None:
        """The version's quarantine record (of its export with `checksum`, if given; still blocking
        under `policy`, if given): never imported."""
        return quarantine_of(self.storage, skip_record_key(workspace, model, version), checksum, policy)

    def record_quarantine(self, workspace: str, model: str, version: int, **record) -> None:
        record_quarantine(self.storage, skip_record_key(workspace, model, version), **record)

    def skip_reason(self, workspace: str, model: str, version: int) -> str | None:
        """Why the version's last export was skipped, while no export of it exists."""
        return skip_reason(self.storage, skip_record_key(workspace, model, version))

    def table_uri(self, name: str) -> str:
        return self.storage.location(name)

    def delta_options(self) -> dict[str, str]:
        return self.storage.delta_options()

    def merge_rows(self, table: str, rows: list[Mapping]) -> int:
        return summary.merge_rows(self.table_uri(table), table, rows, self.delta_options())

    def read_rows(self, table: str, workspace: str | None = None, columns: list[str] | None = None) -> list[dict]:
        return summary.read_rows(self.table_uri(table), self.delta_options(), workspace=workspace, columns=columns)

    def lock(self, *parts: str, timeout_seconds: float = EXPORT_LOCK_SECONDS):
        """A lock shared by every process that uses this storage, for one piece of work.

        Dagster's run queue does not cover the CLI or concurrent backfill runs of two dates
        that share a version, so exports and imports of one version serialize here.
        """
        return self.storage.lock(lock_name(*parts), timeout_seconds)

    def newest_snapshot_date(self, workspace: str) -> dt.date | None:
        """The newest date with a production-model snapshot of `workspace`."""
        days = []
        for name in self.storage.list(f"{SNAPSHOTS_DIR}/{workspace}"):
            with contextlib.suppress(ValueError):  # a temporary file of an interrupted write
                if name.endswith(".json") and "/" not in name:
                    days.append(dt.date.fromisoformat(name.removesuffix(".json")))
        return max(days, default=None)

    def snapshot_key(self, workspace: str, day: dt.date) -> str:
        return f"{SNAPSHOTS_DIR}/{workspace}/{day.isoformat()}.json"

    def write_snapshot(self, workspace: str, day: dt.date, payload: dict) -> str:
        key = self.snapshot_key(workspace, day)
        self.storage.write(key, json.dumps(payload, indent=1, ensure_ascii=False))
        return self.storage.location(key)

    def read_snapshot(self, workspace: str, day: dt.date) -> dict:
        key = self.snapshot_key(workspace, day)
        data = self.storage.read(key)
        if data is None:
            raise dg.Failure(
                f"no production-model snapshot for {workspace} on {day} at {self.storage.location(key)}: "
                "materialize the production_models asset for this partition first"
            )
        return json.loads(data)

    def snapshots(self, since: dt.date) -> list[dict]:
        """Every snapshot of a date from `since` on."""
        found = []
        for relative in self.storage.list(SNAPSHOTS_DIR):
            workspace, _, name = relative.partition("/")
            try:
                day = dt.date.fromisoformat(name.removesuffix(".json"))
            except ValueError:
                continue  # a temporary file of an interrupted write
            if name.endswith(".json") and day >= since:
                data = self.storage.read(f"{SNAPSHOTS_DIR}/{relative}")
                if data is not None:
                    found.append(json.loads(data))
        return found


def resolve_options(root: str, options: Mapping[str, str], options_env: Mapping[str, str]) -> dict[str, str]:
    """The storage options with credentials read from their environment variables now."""
    resolved = dict(options)
    for option, variable in options_env.items():
        value = os.environ.get(variable)
        if not value:
            raise dg.Failure(
                description=f"external storage {redact_uri(root)}: the environment variable {variable} "
                f"(holding its {option}) is not set"
            )
        resolved[option] = value
    return resolved


def configured_storage(config: MarketplaceConfig) -> Storage:
    """The configuration's external storage, credentials read from the environment now (for the
    sensor and the demo, which read the tables outside a run)."""
    return open_storage(config.storage_root, resolve_options(config.storage_root, *config.external_storage.options()))


def build_resources(config: MarketplaceConfig) -> dict[str, dg.ConfigurableResource]:
    client = {"timeout_seconds": config.client.timeout_seconds, "max_retries": config.client.max_retries}
    storage_options, storage_options_env = config.external_storage.options()
    return {
        "workspaces": WorkspaceRegistriesResource(
            workspaces=[
                WorkspaceRegistry(
                    name=w.name,
                    tracking_uri=w.tracking_uri,
                    registry_uri=w.registry_uri,
                    production_stage=w.production.stage,
                    production_alias=w.production.alias,
                    include=list(w.include),
                    exclude=list(w.exclude),
                    databricks=databricks_connection(f"workspace {w.name}", w.tracking_uri, w.databricks),
                    export=ExportEngine(**w.export.model_dump()),
                    signing=Signing(private_key_env=w.signing.private_key_env, public_key=config.public_key(w.name)),
                )
                for w in config.workspaces
            ],
            source_marker=config.source_marker,
            **client,
        ),
        "marketplace": MarketplaceRegistryResource(
            tracking_uri=config.marketplace.tracking_uri,
            registry_uri=config.marketplace.registry_uri,
            name_template=config.marketplace.name_template,
            alias=config.marketplace.alias,
            experiment_prefix=config.marketplace.experiment_prefix,
            max_workers=config.client.max_workers,
            databricks=databricks_connection("the marketplace", config.marketplace.tracking_uri,
                                             config.marketplace.databricks),
            scan=config.security.scan,
            block_severity=config.security.block_severity,
            allow_globals=list(config.security.allow_globals),
            require_signatures=config.require_signatures,
            **client,
        ),
        "external_storage": ExternalStorageResource(
            root=config.storage_root,
            options=storage_options,
            options_env=storage_options_env,
            signing_key=dg.EnvVar(key) if (key := config.external_storage.signing_key_env) else None,
            signing_key_env=config.external_storage.signing_key_env,
        ),
    }
