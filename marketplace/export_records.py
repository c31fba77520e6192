"""What external storage holds about a version's export: the verified export itself (its
manifest checked), its export summary row, and the record of why it was skipped or quarantined;
recorded exports as local folders for the import."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import threading
from dataclasses import dataclass
from pathlib import Path

from marketplace.layout import export_key, skip_record_key
from marketplace.manifest import (
    MANIFEST_NAME,
    Manifest,
    ManifestError,
    Tree,
    as_tree,
    check_export,
    verify_export,
)
from marketplace.scanning import ScanPolicy, ScanReport
from marketplace.storage import Storage


def export_dir(storage_root: str | Path, workspace: str, model_name: str, version: int) -> Path:
    """The export folder of a version in local external storage."""
    return Path(storage_root) / export_key(workspace, model_name, version)


def skip_record_path(
    storage_root: str | Path, workspace: str, model_name: str, version: int
) -> Path:
    return Path(storage_root) / skip_record_key(workspace, model_name, version)


def record_skip(storage: Storage, key: str, reason: str, day: dt.date) -> None:
    storage.write(key, json.dumps({"reason": reason, "date": day.isoformat()}, ensure_ascii=False))


def skip_reason(storage: Storage, key: str) -> str | None:
    return (read_skip_record(storage, key) or {}).get("reason")


def read_skip_record(storage: Storage, key: str) -> dict | None:
    try:
        record = json.loads(storage.read(key) or b"")
    except (ValueError, TypeError):
        return None
    return record if isinstance(record, dict) and isinstance(record.get("reason"), str) else None


def record_quarantine(
    storage: Storage,
    key: str,
    *,
    checksum: str,
    findings: list[dict],
    reason: str,
    day: dt.date,
    blocked_by: str = "scan",
) -> None:
    """Why an exported version never reaches production: its scan found what blocks it, or the
    sandbox stopped what it did while loading (`blocked_by`). Kept while the export stays the same
    (its manifest checksum); a new export of the version is scanned and loaded again."""
    storage.write(
        key,
        json.dumps(
            {
                "reason": reason,
                "date": day.isoformat(),
                "quarantined": True,
                "blocked_by": blocked_by,
                "checksum": checksum,
                "findings": findings,
            },
            ensure_ascii=False,
        ),
    )


def quarantine_of(
    storage: Storage, key: str, checksum: str | None = None, policy: ScanPolicy | None = None
) -> dict | None:
    """The version's quarantine record (of the export with `checksum`, if given), if any, and, given
    `policy`, only while its findings still block under it (an allowlist or a lower severity
    since)."""
    record = read_skip_record(storage, key)
    if not record or not record.get("quarantined"):
        return None
    if checksum is not None and record.get("checksum") != checksum:
        return None
    if (
        policy is not None and record.get("blocked_by") != "sandbox"
    ):  # what a model did is not a policy
        try:
            if not ScanReport.of_record(record.get("findings") or []).blocking(policy):
                return None
        except (ValueError, TypeError, KeyError, AttributeError):
            return None  # not a record we wrote: scan the export again
    return record


def clear_skip_record(storage: Storage, key: str, *, keep_quarantine: bool) -> None:
    """An export exists: the record of why it was skipped goes; a quarantine stays while the export
    it is about does (a new export is scanned again)."""
    if keep_quarantine and quarantine_of(storage, key) is not None:
        return
    storage.delete([key])


@dataclass(frozen=True)
class ExportRecord:
    """A verified export: what it is, where (a local path or an object store URI), and its
    manifest's checksum."""

    location: str
    manifest: Manifest
    checksum: str

    @property
    def path(self) -> Path:
        """The export folder, in local external storage."""
        return Path(self.location)


def inspect_export(
    root: Path | Tree,
    *,
    identity: tuple[str, str, int] | None = None,
    signing_key: str | None = None,
) -> tuple[ExportRecord | None, str | None]:
    """The export at `root` if its manifest is there, sizes match and (given) it is of `identity`
    and signed with `signing_key`; else None and why a manifest there does not count (no reason
    when there is no manifest: nothing, or debris of an interrupted export)."""
    tree = as_tree(root)
    if not tree.storage.exists(tree.file(MANIFEST_NAME)):
        return None, None
    try:
        manifest, checksum = check_export(
            tree, full=False, identity=identity, signing_key=signing_key
        )
    except ManifestError as exc:
        return None, str(exc)
    return ExportRecord(location=tree.where, manifest=manifest, checksum=checksum), None


def existing_export(
    root: Path | Tree,
    *,
    identity: tuple[str, str, int] | None = None,
    signing_key: str | None = None,
) -> ExportRecord | None:
    return inspect_export(root, identity=identity, signing_key=signing_key)[0]


class LocalCopies:
    """Recorded exports as local folders, for as long as `stack` is open: a local storage's own
    folders, or copies downloaded from an object store (once each)."""

    def __init__(self, storage: Storage, stack: contextlib.ExitStack):
        self.storage = storage
        self.stack = stack
        self._paths: dict[str, Path] = {}
        self._lock = threading.Lock()  # the stack is shared by the import pool's threads
        self.hashed: set[str] = set()  # locations hashed against their manifests by `verified`

    def __call__(self, location: str) -> Path:
        if self.storage.is_local:
            return Path(location)
        if location not in self._paths:
            key = self.storage.key_of(location)
            if key is None:
                raise ManifestError(f"{location} is not in external storage {self.storage.root}")
            tree = self.storage.local_tree(key)
            local = tree.__enter__()
            with self._lock:
                self.stack.push(tree.__exit__)
            self._paths[location] = local
        return self._paths[location]

    def verified(self, location: str, **checks) -> Path:
        """The local folder of the export at `location`, hashed file by file against its manifest
        (`verify_export` checks); what is imported is exactly what was verified."""
        local = self(location)
        try:
            verify_export(local, **checks)
        except ManifestError as exc:
            raise ManifestError(str(exc).replace(str(local), location)) from None
        self.hashed.add(location)
        return local


def export_row(workspace: str, record: ExportRecord) -> dict:
    """The export summary's row of an exported version."""
    manifest = record.manifest
    return {
        "workspace": workspace,
        "model_name": manifest.model_name,
        "version": manifest.version,
        "run_id": manifest.run_id,
        "source": manifest.source,
        "export_date": dt.date.fromisoformat(manifest.export_date),
        "exported_at": dt.datetime.fromisoformat(manifest.exported_at),
        "export_path": record.location,
        "checksum": record.checksum,
        "size_bytes": manifest.size_bytes,
        "file_count": len(manifest.files),
    }
