"""Housekeeping of external storage: compact and vacuum the tables, remove old export debris."""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from deltalake import DeltaTable
from deltalake.exceptions import TableNotFoundError

from marketplace.layout import (
    EXPORTS_DIR,
    SKIP_SUFFIX,
    SNAPSHOTS_DIR,
    STAGING_PREFIX,
    TEMPORARY_MARK,
    export_folder_of_file,
)
from marketplace.manifest import MANIFEST_NAME
from marketplace.storage import Storage

# delta-rs refuses a vacuum shorter than the table's retention (7 days) unless told it is meant.
DEFAULT_DELTA_RETENTION_HOURS = 168


@dataclass
class TableMaintenance:
    table: str
    exists: bool
    files_compacted: int = 0
    files_vacuumed: int = 0


@dataclass
class DebrisReport:
    removed: list[str] = field(default_factory=list)
    kept_young: int = 0


def maintain_table(
    uri: str, name: str, retention_hours: int, storage_options: dict | None = None
) -> TableMaintenance:
    try:
        table = DeltaTable(uri, storage_options=storage_options or {})
    except TableNotFoundError:
        return TableMaintenance(name, exists=False)
    compacted = table.optimize.compact()
    vacuumed = table.vacuum(
        retention_hours=retention_hours,
        dry_run=False,
        enforce_retention_duration=retention_hours >= DEFAULT_DELTA_RETENTION_HOURS,
    )
    return TableMaintenance(
        name,
        exists=True,
        files_compacted=int(compacted.get("numFilesRemoved", 0)),
        files_vacuumed=len(vacuumed),
    )


def _is_debris(path: Path) -> bool:
    if path.name.startswith(STAGING_PREFIX):
        return True
    return path.name.isdigit() and not (path / MANIFEST_NAME).exists()


def _newest_mtime(path: Path) -> float | None:
    """The newest mtime of `path` and everything under it; None if it changed while being read.

    lstat, so a link is judged by itself; a file that vanishes mid-scan (an export renaming its
    staging folder into place) means the folder is in use.
    """
    try:
        return max([path.lstat().st_mtime] + [p.lstat().st_mtime for p in path.rglob("*")])
    except FileNotFoundError:
        return None


def remove_debris(storage: Storage | str | Path, retention_hours: float) -> DebrisReport:
    """Delete staging folders and manifest-less exports last touched more than `retention_hours`
    ago.

    Young debris may belong to an export in progress, so it stays.
    """
    if isinstance(storage, Storage) and not storage.is_local:
        return _remove_object_debris(storage, retention_hours)
    storage_root = storage.root if isinstance(storage, Storage) else storage
    report = DebrisReport()
    cutoff = time.time() - retention_hours * 3600
    exports = Path(storage_root) / EXPORTS_DIR
    for model_dir in exports.glob("*/*"):
        if not model_dir.is_dir():
            continue
        for entry in model_dir.iterdir():
            if not entry.is_dir() or not _is_debris(entry):
                continue
            newest = _newest_mtime(entry)
            if newest is None or newest > cutoff:
                report.kept_young += 1
                continue
            shutil.rmtree(entry, ignore_errors=True)
            report.removed.append(str(entry.relative_to(storage_root)))
    leftovers = [
        *(Path(storage_root) / SNAPSHOTS_DIR).glob(f"*/*{TEMPORARY_MARK}*"),
        *exports.glob(f"*/*/*{SKIP_SUFFIX}{TEMPORARY_MARK}*"),
    ]  # interrupted snapshot and skip-record writes
    for leftover in leftovers:
        try:
            old = leftover.lstat().st_mtime <= cutoff
        except FileNotFoundError:  # the snapshot being written was just renamed into place
            continue
        if old:
            leftover.unlink(missing_ok=True)
            report.removed.append(str(leftover.relative_to(storage_root)))
    return report


def _remove_object_debris(storage: Storage, retention_hours: float) -> DebrisReport:
    """On an object store, debris is a version folder whose upload stopped before its manifest,
    and the local staging folders a dead run left on this machine."""
    report = DebrisReport()
    cutoff = time.time() - retention_hours * 3600
    folders: dict[str, list[tuple[str, float]]] = {}
    for relative, entry in storage.list(EXPORTS_DIR).items():
        if found := export_folder_of_file(relative):
            folder, inside = found
            folders.setdefault(folder.key, []).append((inside, entry.mtime))
    for folder, files in sorted(folders.items()):
        if any(name == MANIFEST_NAME for name, _ in files):
            continue
        if max(mtime for _, mtime in files) > cutoff:
            report.kept_young += 1
            continue
        storage.delete_prefix(folder)
        report.removed.append(folder)
    staging_root = Path(tempfile.gettempdir()) / "marketplace-staging"
    for staging in staging_root.glob(f"*/{STAGING_PREFIX}*"):
        newest = _newest_mtime(staging)
        if newest is None or newest > cutoff:
            report.kept_young += 1
            continue
        shutil.rmtree(staging, ignore_errors=True)
        report.removed.append(str(staging))
    return report
