"""External storage on an object store (an S3 bucket, an ADLS container) through obstore, which is
the same object_store crate that delta-rs writes the tables with, so both read the same options.

Files and ranges of large files move in parallel; a folder is published file by file with its
commit file last; locks are leases (`marketplace.leases`).
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from marketplace.layout import LOCK_SUFFIX, LOCKS_DIR
from marketplace.leases import LeaseLock
from marketplace.storage import CHUNK, Entry, Storage, StorageError, join_keys

# A file larger than this downloads as parallel ranged requests of this size: an object store
# serves one stream more slowly than several (AWS advises ranged GETs in parallel for throughput).
RANGE_BYTES = 64 * 1024 * 1024
# Multipart uploads: S3 and GCS take at most 10,000 parts, so a file's part size grows with it
# (obstore's default, 5 MB, would stop a single upload at 50 GB).
MAX_PARTS = 10_000
MIN_PART_BYTES = 5 * 1024 * 1024
TRANSFER_THREADS = 8
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


def brief(exc: BaseException) -> str:
    """obstore's message without the debug dump it appends after a blank line."""
    return str(exc).split("\n\n", 1)[0].strip()


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
        except Exception as exc:  # noqa: BLE001 - obstore's configuration errors are plain exceptions
            raise StorageError(f"external storage {self.root}: {brief(exc)}") from None

    def delta_options(self) -> dict[str, str]:
        return {k: str(v) for k, v in self.options.items()}

    @contextlib.contextmanager
    def errors(self, what: str) -> Iterator[None]:
        """obstore's errors inside, as a StorageError naming the root and `what` was being done."""
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

        with self.errors(f"reading {key}"):
            try:
                return bytes(obstore.get(self._store, key).bytes())
            except (NotFoundError, FileNotFoundError):
                return None

    def write(self, key: str, data: bytes | str) -> None:
        import obstore

        with self.errors(f"writing {key}"):
            obstore.put(self._store, key, data.encode() if isinstance(data, str) else data)

    def put(self, key: str, data: bytes, mode) -> str | None:
        """A conditional put (`create`, or an update of the version with this e_tag); its e_tag."""
        import obstore

        return obstore.put(self._store, key, data, mode=mode)["e_tag"]

    def head(self, key: str) -> dict | None:
        import obstore
        from obstore.exceptions import NotFoundError

        with self.errors(f"reading {key}"):
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
        with self.errors(f"listing {prefix or '/'}"):
            return [
                (item["path"][len(base) + 1 :] if base else item["path"], item)
                for batch in obstore.list(self._store, f"{base}/" if base else None)
                for item in batch
            ]

    def delete(self, keys: Iterable[str]) -> None:
        import obstore
        from obstore.exceptions import NotFoundError

        keys = list(keys)
        with self.errors("deleting"):
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
        with self.errors(f"reading {key}"):
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
            with self.errors(where), open(part.target, "r+b") as handle:
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
        self.delete([join_keys(key, commit_file)])
        self.delete_prefix(key)
        files = [
            p
            for p in staging.rglob("*")
            if p.is_file() and p.relative_to(staging).as_posix() != commit_file
        ]

        def upload(path: Path) -> None:
            target = join_keys(key, path.relative_to(staging).as_posix())
            with self.errors(f"uploading {target}"):
                # A multipart upload above one part (obstore's choice), in parts S3 can count.
                obstore.put(self._store, target, path, chunk_size=part_bytes(path.stat().st_size))

        with ThreadPoolExecutor(TRANSFER_THREADS, thread_name_prefix="upload") as pool:
            list(pool.map(upload, files))
        with self.errors(f"uploading {join_keys(key, commit_file)}"):
            obstore.put(self._store, join_keys(key, commit_file), staging / commit_file)

    def lock(self, name: str, timeout_seconds: float) -> contextlib.AbstractContextManager:
        return LeaseLock(
            self,
            join_keys(LOCKS_DIR, f"{name}{LOCK_SUFFIX}"),
            lease_seconds=self.lease_seconds,
            timeout_seconds=timeout_seconds,
        )
