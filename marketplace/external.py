"""External storage as the marketplace uses it: exports, skip records, production-model
snapshots, locks and the summary tables, at the keys `layout` defines.

Built from the configuration's `external_storage` section; credentials are read from their
environment variables when storage is first opened (so definitions load without secrets).
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property

from marketplace import layout, summary
from marketplace.config import ExternalStorageConfig, MarketplaceConfig
from marketplace.errors import MarketplaceError
from marketplace.export_records import (
    ExportRecord,
    inspect_export,
    quarantine_of,
    record_quarantine,
    skip_reason,
)
from marketplace.exports import EXPORT_LOCK_SECONDS
from marketplace.manifest import ManifestError, Tree
from marketplace.registry import ProductionVersion, redact_uri
from marketplace.scanning import ScanPolicy
from marketplace.storage import Storage
from marketplace.storage_options import object_store_options, open_storage


class MissingSnapshot(MarketplaceError):
    """A partition whose production models were not read yet."""


@dataclass(frozen=True)
class Snapshot:
    """A workspace's production versions as read on one day
    (`production_models/<ws>/<date>.json`)."""

    workspace: str
    date: dt.date
    taken_at: str
    models_seen: int
    versions: tuple[ProductionVersion, ...]
    skipped: Mapping[str, str] = field(default_factory=dict)

    @property
    def production(self) -> dict[str, int]:
        """Each model's production version."""
        return {v.model_name: v.version for v in self.versions}

    def to_json(self) -> str:
        return json.dumps(
            {
                "workspace": self.workspace,
                "date": self.date.isoformat(),
                "taken_at": self.taken_at,
                "models_seen": self.models_seen,
                "versions": [v.to_dict() for v in self.versions],
                "skipped": dict(self.skipped),
            },
            indent=1,
            ensure_ascii=False,
        )

    @classmethod
    def from_json(cls, data: str | bytes) -> Snapshot:
        raw = json.loads(data)
        return cls(
            workspace=raw["workspace"],
            date=dt.date.fromisoformat(raw["date"]),
            taken_at=raw.get("taken_at", ""),
            models_seen=int(raw.get("models_seen", 0)),
            versions=tuple(ProductionVersion.from_dict(v) for v in raw["versions"]),
            skipped=raw.get("skipped", {}),
        )


def moved(before: Mapping[str, int] | None, versions: Sequence[ProductionVersion]) -> bool:
    """Whether production moved to a version the newest snapshot did not have (a promotion or
    rollback: something to export, import and load, unless the marketplace has it already)."""
    return any((before or {}).get(v.model_name) != v.version for v in versions)


def resolve_options(
    root: str, options: Mapping[str, str], options_env: Mapping[str, str]
) -> dict[str, str]:
    """The storage options with credentials read from their environment variables now."""
    resolved = dict(options)
    for option, variable in options_env.items():
        value = os.environ.get(variable)
        if not value:
            raise MarketplaceError(
                f"external storage {redact_uri(root)}: the environment variable {variable} "
                f"(holding its {option}) is not set"
            )
        resolved[option] = value
    return resolved


class ExternalStorage:
    """The configuration's external storage, opened on first use."""

    def __init__(self, settings: ExternalStorageConfig, root: str):
        self.settings = settings
        self.root = root  # absolute for a local folder (MarketplaceConfig.storage_root)

    @classmethod
    def of(cls, config: MarketplaceConfig) -> ExternalStorage:
        return cls(config.external_storage, config.storage_root)

    @cached_property
    def storage(self) -> Storage:
        options, options_env = object_store_options(self.settings)
        return open_storage(self.root, resolve_options(self.root, options, options_env))

    @property
    def signing_key_env(self) -> str | None:
        return self.settings.signing_key_env

    @property
    def signing_key(self) -> str | None:
        """The HMAC manifest key, read from its variable now (deprecated: see
        signing.public_key)."""
        variable = self.settings.signing_key_env
        if variable is None:
            return None
        value = os.environ.get(variable)
        if not value:
            raise MarketplaceError(
                f"external_storage.signing_key_env: the environment variable {variable} is not set"
            )
        return value

    # exports and skip records

    def export_tree(self, workspace: str, model: str, version: int) -> Tree:
        return Tree(self.storage, layout.export_key(workspace, model, version))

    def tree_at(self, location: str) -> Tree:
        """The export recorded at `location` (an export summary's export_path)."""
        key = self.storage.key_of(location)
        if key is None:
            raise ManifestError(f"{location} is not in external storage {self.root}")
        return Tree(self.storage, key)

    def inspect_export(
        self, workspace: str, model: str, version: int
    ) -> tuple[ExportRecord | None, str | None]:
        """The export of exactly this version, if complete (sizes checked; imports hash it and
        check its signature, and refuse it saying why), else None and why a manifest there does
        not count."""
        return inspect_export(
            self.export_tree(workspace, model, version), identity=(workspace, model, version)
        )

    def existing_export(self, workspace: str, model: str, version: int) -> ExportRecord | None:
        return self.inspect_export(workspace, model, version)[0]

    def quarantine(
        self,
        workspace: str,
        model: str,
        version: int,
        checksum: str | None = None,
        policy: ScanPolicy | None = None,
    ) -> dict | None:
        """The version's quarantine record (of its export with `checksum`, if given; still blocking
        under `policy`, if given): never imported."""
        return quarantine_of(
            self.storage, layout.skip_record_key(workspace, model, version), checksum, policy
        )

    def record_quarantine(self, workspace: str, model: str, version: int, **record) -> None:
        record_quarantine(self.storage, layout.skip_record_key(workspace, model, version), **record)

    def skip_reason(self, workspace: str, model: str, version: int) -> str | None:
        """Why the version's last export was skipped, while no export of it exists."""
        return skip_reason(self.storage, layout.skip_record_key(workspace, model, version))

    # snapshots

    def write_snapshot(self, snapshot: Snapshot) -> str:
        key = layout.snapshot_key(snapshot.workspace, snapshot.date)
        self.storage.write(key, snapshot.to_json())
        return self.storage.location(key)

    def read_snapshot(self, workspace: str, day: dt.date) -> Snapshot:
        key = layout.snapshot_key(workspace, day)
        data = self.storage.read(key)
        if data is None:
            raise MissingSnapshot(
                f"no production-model snapshot for {workspace} on {day} at "
                f"{self.storage.location(key)}: materialize the production_models asset for this "
                "partition first"
            )
        return Snapshot.from_json(data)

    def newest_production(self, workspace: str) -> dict[str, int] | None:
        """Each model's production version in the workspace's newest snapshot (None: no
        snapshot)."""
        day = self.newest_snapshot_date(workspace)
        try:
            return self.read_snapshot(workspace, day).production if day is not None else None
        except (MissingSnapshot, ValueError, KeyError, TypeError):
            return None

    def newest_snapshot_date(self, workspace: str) -> dt.date | None:
        """The newest date with a production-model snapshot of `workspace`."""
        found = (
            layout.parse_snapshot_key(f"{workspace}/{name}")
            for name in self.storage.list(f"{layout.SNAPSHOTS_DIR}/{workspace}")
        )
        return max((day for parsed in found if parsed for _, day in [parsed]), default=None)

    def snapshots(self, since: dt.date) -> list[Snapshot]:
        """Every snapshot of a date from `since` on."""
        found = []
        for relative in self.storage.list(layout.SNAPSHOTS_DIR):
            parsed = layout.parse_snapshot_key(relative)
            if parsed is not None and parsed[1] >= since:
                data = self.storage.read(layout.snapshot_key(*parsed))
                if data is not None:
                    found.append(Snapshot.from_json(data))
        return found

    # tables and locks

    def table_uri(self, name: str) -> str:
        return self.storage.location(layout.table_key(name))

    def delta_options(self) -> dict[str, str]:
        return self.storage.delta_options()

    def merge_rows(self, table: str, rows: list[Mapping]) -> int:
        return summary.merge_rows(self.table_uri(table), table, rows, self.delta_options())

    def read_rows(
        self, table: str, workspace: str | None = None, columns: list[str] | None = None
    ) -> list[dict]:
        return summary.read_rows(
            self.table_uri(table), self.delta_options(), workspace=workspace, columns=columns
        )

    def row_count(self, table: str) -> int:
        return summary.row_count(self.table_uri(table), self.delta_options())

    def merge_catalog(self, rows: list[Mapping]) -> dict[str, int]:
        return summary.upsert_rows(
            self.table_uri(summary.CATALOG), summary.CATALOG, rows, self.delta_options()
        )

    def write_page(self, page: str) -> str:
        """Write the catalog page; its location."""
        self.storage.write(layout.CATALOG_PAGE, page)
        return self.storage.location(layout.CATALOG_PAGE)

    def lock(self, *parts: str, timeout_seconds: float = EXPORT_LOCK_SECONDS):
        """A lock shared by every process that uses this storage, for one piece of work.

        Dagster's run queue does not cover the CLI or concurrent backfill runs of two dates
        that share a version, so exports and imports of one version serialize here.
        """
        return self.storage.lock(layout.lock_name(*parts), timeout_seconds)


def configured_storage(config: MarketplaceConfig) -> Storage:
    """The configuration's external storage, credentials read from the environment now."""
    return ExternalStorage.of(config).storage
