"""Dagster resources: the workspace registries, the marketplace registry and external storage."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import warnings
from collections.abc import Mapping
from pathlib import Path

import dagster as dg
from filelock import FileLock
from dagster_deltalake import LocalConfig
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from pydantic import Field

from marketplace import summary
from marketplace.config import MarketplaceConfig
from marketplace.databricks import Connection, DatabricksCredentialError, databricks_connection, ensure_profile
from marketplace.exports import (
    ExportRecord,
    export_dir,
    inspect_export,
    record_skip,
    remove_staging,
    skip_reason,
    skip_record_path,
    write_atomically,
)
from marketplace.imports import render_name, shorten
from marketplace.registry import configure_http, make_client


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
    """Where exports, production-model snapshots and the summary Delta tables live."""

    root: str
    storage_options: LocalConfig = Field(default_factory=LocalConfig)
    # Signs every manifest and refuses imports of unsigned or mis-signed ones (from an env var).
    signing_key: str | None = None

    def export_path(self, workspace: str, model: str, version: int) -> Path:
        return export_dir(self.root, workspace, model, version)

    def inspect_export(self, workspace: str, model: str, version: int) -> tuple[ExportRecord | None, str | None]:
        """The export of exactly this version, if complete (sizes checked; imports hash it and
        check its signature, and refuse it saying why), else None and why a manifest there does not count."""
        return inspect_export(self.export_path(workspace, model, version), identity=(workspace, model, version))

    def existing_export(self, workspace: str, model: str, version: int) -> ExportRecord | None:
        return self.inspect_export(workspace, model, version)[0]

    def skip_reason(self, workspace: str, model: str, version: int) -> str | None:
        """Why the version's last export was skipped, while no export of it exists."""
        return skip_reason(skip_record_path(self.root, workspace, model, version))

    def record_skip(self, workspace: str, model: str, version: int, reason: str, day: dt.date) -> None:
        record_skip(skip_record_path(self.root, workspace, model, version), reason, day)

    def remove_staging(self, workspace: str, model: str, version: int) -> int:
        """Only under the version's export lock (see exports.remove_staging)."""
        return remove_staging(self.root, workspace, model, version)

    def clear_skip(self, workspace: str, model: str, version: int) -> None:
        skip_record_path(self.root, workspace, model, version).unlink(missing_ok=True)

    def table_uri(self, name: str) -> str:
        return str(Path(self.root) / name)

    def delta_options(self) -> dict[str, str]:
        return self.storage_options.str_dict()

    def merge_rows(self, table: str, rows: list[Mapping]) -> int:
        return summary.merge_rows(self.table_uri(table), table, rows, self.delta_options())

    def read_rows(self, table: str, workspace: str | None = None, columns: list[str] | None = None) -> list[dict]:
        return summary.read_rows(self.table_uri(table), self.delta_options(), workspace=workspace, columns=columns)

    def lock(self, *parts: str, timeout_seconds: float = 900) -> FileLock:
        """A lock shared by every process that uses this storage, for one piece of work.

        Dagster's run queue does not cover the CLI or concurrent backfill runs of two dates
        that share a version, so exports and imports of one version serialize here.
        """
        digest = hashlib.sha256("\0".join(parts).encode()).hexdigest()[:32]
        path = Path(self.root) / ".locks" / f"{digest}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        return FileLock(str(path), timeout=timeout_seconds)

    def snapshot_path(self, workspace: str, day: dt.date) -> Path:
        return Path(self.root) / "production_models" / workspace / f"{day.isoformat()}.json"

    def write_snapshot(self, workspace: str, day: dt.date, payload: dict) -> Path:
        path = self.snapshot_path(workspace, day)
        write_atomically(path, json.dumps(payload, indent=1, ensure_ascii=False))
        return path

    def read_snapshot(self, workspace: str, day: dt.date) -> dict:
        path = self.snapshot_path(workspace, day)
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            raise dg.Failure(
                f"no production-model snapshot for {workspace} on {day} at {path}: "
                "materialize the production_models asset for this partition first"
            ) from None


def build_resources(config: MarketplaceConfig) -> dict[str, dg.ConfigurableResource]:
    client = {"timeout_seconds": config.client.timeout_seconds, "max_retries": config.client.max_retries}
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
            **client,
        ),
        "external_storage": ExternalStorageResource(
            root=config.storage_root,
            signing_key=dg.EnvVar(key) if (key := config.external_storage.signing_key_env) else None,
        ),
    }
