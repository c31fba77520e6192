"""External storage as one interface over a local folder and an object store (S3, ADLS).

Keys are `/`-separated paths under the storage root. Object stores have no atomic rename and no
file locks, so the two differ in how a folder is committed (`publish`: a rename locally; on an
object store every file is uploaded and the commit file last) and in `lock` (a file lock locally;
on an object store a lease object created with a conditional put and kept alive by a heartbeat).
Plain module: it knows nothing of Dagster, so the export job can run it inside a workspace.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import socket
import tempfile
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from marketplace.errors import MarketplaceError
from marketplace.layout import LOCK_SUFFIX, LOCKS_DIR

CHUNK = 1024 * 1024
# A file larger than this downloads as parallel ranged requests of this size: an object store
# serves one stream more slowly than several (AWS advises ranged GETs in parallel for throughput).
RANGE_BYTES = 64 * 1024 * 1024
# Multipart uploads: S3 and GCS take at most 10,000 parts, so a file's part size grows with it
# (obstore's default, 5 MB, would stop a single upload at 50 GB).
MAX_PARTS = 10_000
MIN_PART_BYTES = 5 * 1024 * 1024
TRANSFER_THREADS = 8
S3_SCHEMES = ("s3",)
AZURE_SCHEMES = ("az", "abfs", "abfss")
# object_store's HTTP client settings: passed to obstore as client options (in its store config
# they make it panic), to delta-rs as they are.
CLIENT_KEYS = frozenset(
    {
        "allow_http",
        "allow_invalid_certificates",
        "connect_timeout",
        "default_content_type",
        "http1_only",
        "http2_only",
        "http2_keep_alive_interval",
        "http2_keep_alive_timeout",
        "http2_keep_alive_while_idle",
        "pool_idle_timeout",
        "pool_max_idle_per_host",
        "proxy_url",
        "proxy_ca_certificate",
        "proxy_excludes",
        "timeout",
        "user_agent",
    }
)
_BOOLEAN = {"true": True, "false": False}

log = logging.getLogger(__name__)


class StorageError(MarketplaceError, RuntimeError):
    """External storage that cannot be reached or refuses an operation, naming where."""


class LockTimeout(MarketplaceError, TimeoutError):
    """A lock another process held for longer than the caller was willing to wait."""


class LockLost(StorageError):
    """A lease its holder could not keep (taken over, or not renewed for a whole lease): the holder
    stops writing, and the work it was doing fails."""


def brief(exc: BaseException) -> str:
    """obstore's message without the debug dump it appends after a blank line."""
    return str(exc).split("\n\n", 1)[0].strip()


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


def _join(*parts: str) -> str:
    return "/".join(p.strip("/") for p in parts if p and p.strip("/"))


class Storage(ABC):
    """The root where exports, snapshots, skip records, locks and the summary tables live."""

    root: str
    is_local: bool

    def location(self, key: str = "") -> str:
        """The absolute path or URI of `key`, as users see it (and the export summary records it)."""
        if not key:
            return self.root
        return str(Path(self.root, key)) if self.is_local else _join(self.root, key)

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
        """A local folder holding the files under `prefix`: the folder itself, or a downloaded copy."""

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
        keys = [_join(prefix, k) for k in self.list(prefix)]
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


def split_options(options: Mapping[str, str]) -> tuple[dict[str, object], dict[str, object]]:
    """object_store options as obstore takes them: (store config, HTTP client options)."""
    config: dict[str, object] = {}
    client: dict[str, object] = {}
    for key, value in options.items():
        bare = key.lower().removeprefix("aws_").removeprefix("azure_")
        if bare in CLIENT_KEYS:
            client[bare] = _BOOLEAN.get(str(value).lower(), value)
        else:
            config[key] = value
    return config, client


@dataclass(frozen=True)
class _Part:
    """One request of a download: a whole file, or one range of a large one."""

    key: str
    target: Path
    start: int
    end: int  # exclusive
    ranged: bool
    etag: str | None


def part_bytes(size: int) -> int:
    """A multipart upload's part size for a file of `size` bytes: at most MAX_PARTS parts, each a
    whole number of MiB and at least MIN_PART_BYTES."""
    needed = -(-size // MAX_PARTS)
    return max(MIN_PART_BYTES, -(-needed // (1024 * 1024)) * 1024 * 1024)


class ObjectStorage(Storage):
    """A bucket or container (with an optional prefix) reached through obstore, which is the same
    object_store crate that delta-rs writes the tables with, so both read the same options."""

    is_local = False

    def __init__(
        self, root: str, options: Mapping[str, str] | None = None, *, lease_seconds: float = 60
    ):
        from obstore.store import from_url

        self.root = root.rstrip("/")
        self.options = dict(options or {})
        self.lease_seconds = lease_seconds
        config, client = split_options(self.options)
        try:
            self._store = from_url(self.root, config=config or None, client_options=client or None)
        except Exception as exc:  # obstore's configuration errors are plain exceptions
            raise StorageError(f"external storage {self.root}: {brief(exc)}") from None

    def delta_options(self) -> dict[str, str]:
        return {k: str(v) for k, v in self.options.items()}

    @contextlib.contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        from obstore.exceptions import BaseError

        try:
            yield
        except BaseError as exc:
            raise StorageError(
                f"external storage {self.root}: {what}: {type(exc).__name__}: {brief(exc)}"
            ) from None

    def read(self, key: str) -> bytes | None:
        import obstore
        from obstore.exceptions import NotFoundError

        with self._errors(f"reading {key}"):
            try:
                return bytes(obstore.get(self._store, key).bytes())
            except (NotFoundError, FileNotFoundError):
                return None

    def write(self, key: str, data: bytes | str) -> None:
        import obstore

        with self._errors(f"writing {key}"):
            obstore.put(self._store, key, data.encode() if isinstance(data, str) else data)

    def put(self, key: str, data: bytes, mode) -> str | None:
        """A conditional put (`create`, or an update of the version with this e_tag); its e_tag."""
        import obstore

        return obstore.put(self._store, key, data, mode=mode)["e_tag"]

    def head(self, key: str) -> dict | None:
        import obstore
        from obstore.exceptions import NotFoundError

        with self._errors(f"reading {key}"):
            try:
                return obstore.head(self._store, key)
            except (NotFoundError, FileNotFoundError):
                return None

    def exists(self, key: str) -> bool:
        return self.head(key) is not None

    def list(self, prefix: str) -> dict[str, Entry]:
        return {
            relative: Entry(int(item["size"]), item["last_modified"].timestamp())
            for relative, item in self._listing(prefix)
        }

    def _listing(self, prefix: str) -> list[tuple[str, dict]]:
        """Every object under `prefix`: its key relative to `prefix`, and obstore's metadata."""
        import obstore

        base = prefix.strip("/")
        with self._errors(f"listing {prefix or '/'}"):
            return [
                (item["path"][len(base) + 1 :] if base else item["path"], item)
                for batch in obstore.list(self._store, f"{base}/" if base else None)
                for item in batch
            ]

    def delete(self, keys: Iterable[str]) -> None:
        import obstore
        from obstore.exceptions import NotFoundError

        keys = list(keys)
        with self._errors("deleting"):
            for start in range(0, len(keys), 1000):
                batch = keys[start : start + 1000]
                try:
                    obstore.delete(self._store, batch)
                except (NotFoundError, FileNotFoundError):
                    # Azure fails a whole batch for one missing blob (S3 does not): one by one.
                    for key in batch:
                        try:
                            obstore.delete(self._store, key)
                        except (NotFoundError, FileNotFoundError):
                            pass

    def sha256(self, key: str) -> str:
        import obstore

        digest = hashlib.sha256()
        with self._errors(f"reading {key}"):
            for chunk in obstore.get(self._store, key).stream(CHUNK):
                digest.update(chunk)
        return digest.hexdigest()

    def download(self, prefix: str, destination: Path) -> None:
        """Every file under `prefix` into `destination`, files and the ranges of large files in
        parallel; each request is served only if the object is still the one listed (its ETag)."""
        import obstore

        tasks: list[_Part] = []
        for relative, item in self._listing(prefix):  # object_store refuses keys with ".." parts
            target = destination / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            size = int(item["size"])
            with open(target, "wb") as handle:
                handle.truncate(size)
            ranged = size > RANGE_BYTES
            tasks += [
                _Part(
                    item["path"],
                    target,
                    start,
                    min(start + RANGE_BYTES, size),
                    ranged,
                    item.get("e_tag"),
                )
                for start in (range(0, size, RANGE_BYTES) if ranged else [0])
            ]

        def fetch(part: _Part) -> None:
            options: dict = {"if_match": part.etag} if part.etag else {}
            if part.ranged:
                options["range"] = (part.start, part.end)
            where = f"downloading {part.key}" + (
                f" (bytes {part.start}-{part.end - 1})" if part.ranged else ""
            )
            offset = part.start
            with self._errors(where), open(part.target, "r+b") as handle:
                handle.seek(offset)
                for chunk in obstore.get(self._store, part.key, options=options).stream(CHUNK):
                    handle.write(chunk)
                    offset += len(chunk)
            if offset != part.end:
                raise StorageError(
                    f"external storage {self.root}: {where}: got {offset - part.start} bytes, "
                    f"not the {part.end - part.start} listed"
                )

        with ThreadPoolExecutor(TRANSFER_THREADS, thread_name_prefix="download") as pool:
            list(pool.map(fetch, tasks))

    @contextlib.contextmanager
    def local_tree(self, prefix: str) -> Iterator[Path]:
        folder = Path(tempfile.mkdtemp(prefix="marketplace-download-"))
        try:
            self.download(prefix, folder)
            yield folder
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def staging_area(self, key: str) -> Path:
        # On this machine: a folder per destination, so a dead run's staging is found again.
        digest = hashlib.sha256(self.location(key).encode()).hexdigest()[:16]
        area = Path(tempfile.gettempdir()) / "marketplace-staging" / digest
        area.mkdir(parents=True, exist_ok=True)
        return area

    def publish(self, staging: Path, key: str, commit_file: str) -> None:
        import obstore

        # The old commit file goes first: from then on nothing counts what is at `key`.
        self.delete([_join(key, commit_file)])
        self.delete_prefix(key)
        files = [
            p
            for p in staging.rglob("*")
            if p.is_file() and p.relative_to(staging).as_posix() != commit_file
        ]

        def upload(path: Path) -> None:
            target = _join(key, path.relative_to(staging).as_posix())
            with self._errors(f"uploading {target}"):
                # A multipart upload above one part (obstore's choice), in parts S3 can count.
                obstore.put(self._store, target, path, chunk_size=part_bytes(path.stat().st_size))

        with ThreadPoolExecutor(TRANSFER_THREADS, thread_name_prefix="upload") as pool:
            list(pool.map(upload, files))
        with self._errors(f"uploading {_join(key, commit_file)}"):
            obstore.put(self._store, _join(key, commit_file), staging / commit_file)

    def lock(self, name: str, timeout_seconds: float) -> contextlib.AbstractContextManager:
        return LeaseLock(
            self,
            _join(LOCKS_DIR, f"{name}{LOCK_SUFFIX}"),
            lease_seconds=self.lease_seconds,
            timeout_seconds=timeout_seconds,
        )


class LeaseLock:
    """A lock object on an object store: created only if absent (a conditional put), renewed by
    a heartbeat while held, deleted on release. A holder that died stops renewing; a waiter that
    sees the same version of the object for a whole lease takes it over with a conditional update
    of exactly that version (two waiters cannot both win), timed on its own clock, not the
    holder's."""

    def __init__(
        self, storage: ObjectStorage, key: str, *, lease_seconds: float, timeout_seconds: float
    ):
        self.storage = storage
        self.key = key
        self.lease_seconds = lease_seconds
        self.timeout_seconds = timeout_seconds
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._etag: str | None = None
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None
        self._renewed_at = 0.0
        self.lost = False

    def _payload(self) -> bytes:
        return json.dumps(
            {"owner": self.owner, "renewed_at": time.time(), "lease_seconds": self.lease_seconds}
        ).encode()

    def acquire(self) -> None:
        from obstore.exceptions import AlreadyExistsError, PreconditionError

        deadline = time.monotonic() + self.timeout_seconds
        seen: tuple[str | None, float] | None = None
        while True:
            with self.storage._errors(f"taking the lock {self.key}"):
                try:
                    self._etag = self.storage.put(self.key, self._payload(), "create")
                    break
                except AlreadyExistsError:
                    pass
                current = self.storage.head(self.key)
                if current is not None:
                    etag = current.get("e_tag")
                    if seen is None or seen[0] != etag:
                        seen = (etag, time.monotonic())
                    elif time.monotonic() - seen[1] > self.lease_seconds:
                        try:  # its holder stopped renewing: take it over, if no one else has
                            self._etag = self.storage.put(
                                self.key, self._payload(), {"e_tag": etag}
                            )
                            break
                        except (PreconditionError, AlreadyExistsError):
                            seen = None
            if time.monotonic() >= deadline:
                raise LockTimeout(
                    f"{self.storage.location(self.key)}: still held after {self.timeout_seconds:.0f} s"
                )
            time.sleep(min(1.0, self.lease_seconds / 10))
        self._renewed_at = time.monotonic()
        self._stop.clear()
        self._heartbeat = threading.Thread(
            target=self._renew, name=f"lease {self.key}", daemon=True
        )
        self._heartbeat.start()

    def _renew(self) -> None:
        from obstore.exceptions import NotFoundError, PreconditionError

        while not self._stop.wait(self.lease_seconds / 4):
            try:
                self._etag = self.storage.put(self.key, self._payload(), {"e_tag": self._etag})
                self._renewed_at = time.monotonic()
            except (PreconditionError, NotFoundError, FileNotFoundError):
                # Changed or gone: another process took the lease over after we failed to renew it.
                self.lost = True
                log.warning("lost the lock %s to another process", self.storage.location(self.key))
                return
            except Exception:  # noqa: BLE001 - a network blip: try again at the next beat
                continue

    def check(self) -> None:
        """LockLost unless this process still holds the lease: called before each write the lock
        protects, so a holder whose lease was taken over (or could not be renewed for a whole
        lease, after which a waiter may take it) writes nothing more."""
        where = self.storage.location(self.key)
        if self.lost:
            raise LockLost(
                f"lost the lock {where}: another process took it over; stopped before writing"
            )
        unrenewed = time.monotonic() - self._renewed_at
        if unrenewed > self.lease_seconds:
            raise LockLost(
                f"lost the lock {where}: not renewed for {unrenewed:.0f} s, longer than its "
                f"{self.lease_seconds:.0f} s lease, so another process may hold it; stopped before writing"
            )

    def release(self) -> None:
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join()
        current = self.storage.head(self.key)
        if current is not None and current.get("e_tag") == self._etag:
            self.storage.delete([self.key])
        self._etag = None

    def __enter__(self) -> LeaseLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def open_storage(root: str, options: Mapping[str, str] | None = None) -> Storage:
    """The storage at `root`: a local folder, or an s3:// / az:// / abfss:// URI with its options."""
    if backend_of(root) == "local":
        return LocalStorage(root)
    return ObjectStorage(root, options)
