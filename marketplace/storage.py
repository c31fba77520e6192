"""External storage as one interface over a local folder and an object store (S3, ADLS).

Keys are `/`-separated paths under the storage root. Object stores have no atomic rename and no
file locks, so the two differ in how a folder is committed (`publish`: a rename locally; on an
object store every file is uploaded and the commit file last) and in `lock` (a file lock locally;
on an object store a lease: `marketplace.leases`). This module holds the interface, its errors and
the local folder; `marketplace.object_storage` the object store; `marketplace.storage_options`
opens either from the configured options.
Plain module: it knows nothing of Dagster, so the export job can run it inside a workspace.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from marketplace.errors import MarketplaceError
from marketplace.layout import LOCK_SUFFIX, LOCKS_DIR

CHUNK = 1024 * 1024
S3_SCHEMES = ("s3",)
AZURE_SCHEMES = ("az", "abfs", "abfss")


class StorageError(MarketplaceError, RuntimeError):
    """External storage that cannot be reached or refuses an operation, naming where."""


class LockTimeout(MarketplaceError, TimeoutError):
    """A lock another process held for longer than the caller was willing to wait."""


class LockLost(StorageError):
    """A lease its holder could not keep (taken over, or not renewed for a whole lease): the holder
    stops writing, and the work it was doing fails."""


def backend_of(uri: str) -> str:
    """`s3`, `azure` or `local` for an external storage URI."""
    scheme = urlparse(uri).scheme.lower()
    if scheme in S3_SCHEMES:
        return "s3"
    if scheme in AZURE_SCHEMES:
        return "azure"
    return "local"


@dataclass(frozen=True)
class Entry:
    """One stored file: its size and when it was last written (seconds since the epoch)."""

    size: int
    mtime: float


def write_atomically(path: Path, data: bytes | str) -> None:
    """Write `path` through a unique `<name>.tmp-*` file renamed into place: readers see the old
    file or the new one, never half of one (housekeeping sweeps temp files a crash left)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    tmp.replace(path)


def join_keys(*parts: str) -> str:
    return "/".join(p.strip("/") for p in parts if p and p.strip("/"))


class Storage(ABC):
    """The root where exports, snapshots, skip records, locks and the summary tables live."""

    root: str
    is_local: bool

    def location(self, key: str = "") -> str:
        """The absolute path or URI of `key`, as users see it (and the export summary records
        it)."""
        if not key:
            return self.root
        return str(Path(self.root, key)) if self.is_local else join_keys(self.root, key)

    def key_of(self, location: str) -> str | None:
        """The key of a location under this root, or None if it is elsewhere."""
        root = self.root.rstrip("/")
        if location == root:
            return ""
        if location.startswith(root + "/"):
            return location[len(root) + 1 :].strip("/")
        return None

    @abstractmethod
    def read(self, key: str) -> bytes | None:
        """The file's bytes, or None if there is none."""

    @abstractmethod
    def write(self, key: str, data: bytes | str) -> None:
        """Replace the file atomically: readers see the old bytes or the new, never part."""

    @abstractmethod
    def list(self, prefix: str) -> dict[str, Entry]:
        """Every file under `prefix`, recursively, by its key relative to `prefix`."""

    @abstractmethod
    def delete(self, keys: Iterable[str]) -> None:
        """Delete files (a missing one is not an error)."""

    @abstractmethod
    def sha256(self, key: str) -> str:
        """The file's SHA-256, streamed."""

    @abstractmethod
    def local_tree(self, prefix: str) -> contextlib.AbstractContextManager[Path]:
        """A local folder holding the files under `prefix`: the folder itself, or a downloaded
        copy."""

    @abstractmethod
    def staging_area(self, key: str) -> Path:
        """The local folder in which to prepare what `publish` will put at `key`."""

    @abstractmethod
    def publish(self, staging: Path, key: str, commit_file: str) -> None:
        """Put the local folder `staging` at `key`, replacing what is there; `commit_file` arrives
        last, so whoever finds it finds everything else. The caller holds `key`'s lock."""

    @abstractmethod
    def lock(self, name: str, timeout_seconds: float) -> contextlib.AbstractContextManager:
        """Held by one process at a time, across every process that uses this storage."""

    def delete_prefix(self, prefix: str) -> int:
        keys = [join_keys(prefix, k) for k in self.list(prefix)]
        self.delete(keys)
        return len(keys)

    @abstractmethod
    def exists(self, key: str) -> bool:
        """Whether the file is there (without reading it)."""

    def delta_options(self) -> dict[str, str]:
        """Storage options for delta-rs."""
        return {}


class LocalStorage(Storage):
    """A folder on this machine (or a shared file system): renames are atomic, locks are flock."""

    is_local = True

    def __init__(self, root: str | os.PathLike[str]):
        self.root = str(root)

    def path(self, key: str) -> Path:
        return Path(self.root, key) if key else Path(self.root)

    def read(self, key: str) -> bytes | None:
        try:
            return self.path(key).read_bytes()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None

    def write(self, key: str, data: bytes | str) -> None:
        write_atomically(self.path(key), data)

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def list(self, prefix: str) -> dict[str, Entry]:
        base = self.path(prefix)
        found: dict[str, Entry] = {}
        for dirpath, _, filenames in os.walk(base):
            for filename in filenames:
                path = Path(dirpath) / filename
                try:
                    info = path.stat()
                except FileNotFoundError:  # vanished mid-walk, or a broken link
                    continue
                found[path.relative_to(base).as_posix()] = Entry(info.st_size, info.st_mtime)
        return found

    def delete(self, keys: Iterable[str]) -> None:
        for key in keys:
            self.path(key).unlink(missing_ok=True)

    def delete_prefix(self, prefix: str) -> int:
        count = len(self.list(prefix))
        shutil.rmtree(self.path(prefix), ignore_errors=True)
        return count

    def sha256(self, key: str) -> str:
        digest = hashlib.sha256()
        with open(self.path(key), "rb") as handle:
            while chunk := handle.read(CHUNK):
                digest.update(chunk)
        return digest.hexdigest()

    @contextlib.contextmanager
    def local_tree(self, prefix: str) -> Iterator[Path]:
        yield self.path(prefix)

    def staging_area(self, key: str) -> Path:
        # Beside the destination, on the same file system, so that publish is a rename.
        return self.path(key).parent

    def publish(self, staging: Path, key: str, commit_file: str) -> None:
        destination = self.path(key)
        if destination.exists():
            shutil.rmtree(destination)
        staging.rename(destination)

    def lock(self, name: str, timeout_seconds: float) -> contextlib.AbstractContextManager:
        from filelock import FileLock

        class HeldFileLock(FileLock):
            def check(self) -> None:
                """A flock cannot be lost while its process lives: nothing to check."""

        path = self.path(LOCKS_DIR) / f"{name}{LOCK_SUFFIX}"
        path.parent.mkdir(parents=True, exist_ok=True)
        return HeldFileLock(str(path), timeout=timeout_seconds)
