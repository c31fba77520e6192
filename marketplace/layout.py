"""Every key under the external storage root, in one place.

    exports/<workspace>/<model>/<version>/             an export folder (manifest.json commits it)
    exports/<workspace>/<model>/<version>.skipped.json why a version is skipped or quarantined
    exports/<workspace>/<model>/.staging-<version>-*   an export being written (local storage)
    production_models/<workspace>/<date>.json          a partition's production-model snapshot
    .locks/<name>.lock                                 a lock shared by every process
    <table>                                            a Delta table (export_summary, ..., catalog)
    catalog.html                                       the catalog page

`<model>` is the model name made one safe folder name (`path_component`). Keys are
`/`-separated and relative to the root; `Storage.location(key)` makes one a full URI.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass
from urllib.parse import quote, unquote

EXPORTS_DIR = "exports"
SNAPSHOTS_DIR = "production_models"
LOCKS_DIR = ".locks"
STAGING_PREFIX = ".staging-"
SKIP_SUFFIX = ".skipped.json"
SNAPSHOT_SUFFIX = ".json"
LOCK_SUFFIX = ".lock"
MAX_COMPONENT_BYTES = 180
SHORTENED_MARK = "+"
# A write in progress (`write_atomically`) leaves `<name>.tmp-<random>` if it dies.
TEMPORARY_MARK = ".tmp-"


def path_component(name: str) -> str:
    """A model name as one safe folder name: percent-encoded, reversible by `model_of`, with a
    stable hash instead of the tail when too long."""
    component = quote(name, safe="-_")
    if component.startswith("."):  # never hidden, never taken for a staging folder or debris
        component = "%2E" + component[1:]
    if len(component.encode()) > MAX_COMPONENT_BYTES:
        digest = hashlib.sha256(name.encode()).hexdigest()[:16]
        # '+' is what `quote` never leaves bare: no name's own folder looks like a shortened one.
        component = f"{component[: MAX_COMPONENT_BYTES - 17].rstrip('%')}{SHORTENED_MARK}{digest}"
    return component


def model_of(component: str) -> str | None:
    """The model name a folder name stands for; None for a shortened (hashed) one."""
    if SHORTENED_MARK in component:
        return None
    name = unquote(component)
    return name if path_component(name) == component else None


def export_key(workspace: str, model_name: str, version: int) -> str:
    """Where a version's export lives."""
    return f"{EXPORTS_DIR}/{workspace}/{path_component(model_name)}/{int(version)}"


def model_folder_key(workspace: str, model_name: str) -> str:
    return f"{EXPORTS_DIR}/{workspace}/{path_component(model_name)}"


def skip_record_key(workspace: str, model_name: str, version: int) -> str:
    """Beside the version's export folder: why the version was skipped, while it is."""
    return f"{export_key(workspace, model_name, version)}{SKIP_SUFFIX}"


def staging_prefix(version: int) -> str:
    """The name every staging folder of `version` starts with, in its model's folder."""
    return f"{STAGING_PREFIX}{int(version)}-"


def snapshot_key(workspace: str, day: dt.date) -> str:
    return f"{SNAPSHOTS_DIR}/{workspace}/{day.isoformat()}{SNAPSHOT_SUFFIX}"


def lock_name(*parts: str) -> str:
    """A lock's file name for one piece of work (`"export", workspace, model, version`, ...)."""
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:32]


def lock_key(*parts: str) -> str:
    return f"{LOCKS_DIR}/{lock_name(*parts)}{LOCK_SUFFIX}"


CATALOG_PAGE = "catalog.html"


def table_key(table: str) -> str:
    return table


@dataclass(frozen=True)
class ExportFolder:
    """What an export folder's key says: whose version it holds (the model as its folder name)."""

    workspace: str
    component: str
    version: int

    @property
    def key(self) -> str:
        return f"{EXPORTS_DIR}/{self.workspace}/{self.component}/{self.version}"

    @property
    def model_name(self) -> str | None:
        return model_of(self.component)


def parse_export_key(key: str) -> ExportFolder | None:
    """The export folder `key` names (`exports/<workspace>/<model>/<version>`), else None
    (staging folders, skip records, hidden or deeper paths)."""
    parts = key.strip("/").split("/")
    if len(parts) != 4 or parts[0] != EXPORTS_DIR or any(not p or p.startswith(".") for p in parts):
        return None
    workspace, component, version = parts[1:]
    if not version.isdigit() or not version.isascii():
        return None
    return ExportFolder(workspace, component, int(version))


def export_folder_of_file(relative: str) -> tuple[ExportFolder, str] | None:
    """For a file listed under `exports/` (`<workspace>/<model>/<version>/<path>`), its export
    folder and its path inside it; None for anything that is not inside a version folder."""
    parts = relative.strip("/").split("/")
    if len(parts) < 4:
        return None
    folder = parse_export_key("/".join([EXPORTS_DIR, *parts[:3]]))
    return (folder, "/".join(parts[3:])) if folder else None


def parse_snapshot_key(key: str) -> tuple[str, dt.date] | None:
    """(workspace, date) of a snapshot key, or of a key relative to `production_models/`; None for
    anything else (a temporary file of an interrupted write, a stray file)."""
    parts = key.strip("/").split("/")
    if parts[0] == SNAPSHOTS_DIR:
        parts = parts[1:]
    if len(parts) != 2 or not parts[1].endswith(SNAPSHOT_SUFFIX):
        return None
    stem = parts[1].removesuffix(SNAPSHOT_SUFFIX)
    try:
        day = dt.date.fromisoformat(stem)
    except ValueError:
        return None
    return (parts[0], day) if day.isoformat() == stem and parts[0] else None


def is_temporary(name: str) -> bool:
    """A file left by an interrupted atomic write."""
    return TEMPORARY_MARK in name.rsplit("/", 1)[-1]
