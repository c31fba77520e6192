"""SHA-256 manifests: an export exists only once its manifest, written last, verifies."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from marketplace.errors import MarketplaceError
from marketplace.storage import LocalStorage, Storage

MANIFEST_NAME = "manifest.json"
# The export's OpenSSF signature (marketplace.signatures), which covers the manifest: never in it.
SIGNATURE_NAME = "model.sig"
NOT_LISTED = frozenset({MANIFEST_NAME, SIGNATURE_NAME})
CHUNK = 1024 * 1024


class ManifestError(MarketplaceError, RuntimeError):
    """An export whose files do not match its manifest, or that has none."""


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _walk(root: Path) -> dict[str, Path]:
    files = {}
    for dirpath, _, filenames in os.walk(root):
        for filename in filenames:
            path = Path(dirpath) / filename
            relative = path.relative_to(root).as_posix()
            if relative not in NOT_LISTED:
                files[relative] = path
    return files


class Tree(NamedTuple):
    """An export's folder in external storage: a local folder, or a prefix in an object store."""

    storage: Storage
    key: str

    @property
    def where(self) -> str:
        return self.storage.location(self.key)

    def file(self, relative: str) -> str:
        return f"{self.key}/{relative}" if self.key else relative


def as_tree(root: Path | str | Tree) -> Tree:
    return root if isinstance(root, Tree) else Tree(LocalStorage(root), "")


@dataclass(frozen=True)
class Manifest:
    """Every file of one export with its hash and size, and what the export is of."""

    workspace: str
    model_name: str
    version: int
    run_id: str
    source: str
    export_date: str
    exported_at: str
    files: dict[str, dict] = field(default_factory=dict)
    # HMAC-SHA256 over everything above (files, and the workspace, model and version they are
    # of), where a signing key is configured; empty otherwise.
    signature: str = ""

    @property
    def size_bytes(self) -> int:
        return sum(entry["size"] for entry in self.files.values())

    @property
    def identity(self) -> tuple[str, str, int]:
        return (self.workspace, self.model_name, self.version)

    def to_json(self) -> bytes:
        return json.dumps(self.__dict__, indent=1, sort_keys=True, ensure_ascii=False).encode()

    def _signed_payload(self) -> bytes:
        unsigned = {k: v for k, v in self.__dict__.items() if k != "signature"}
        return json.dumps(
            unsigned, sort_keys=True, ensure_ascii=False, separators=(",", ":")
        ).encode()

    def signed(self, key: str) -> Manifest:
        digest = hmac.new(key.encode(), self._signed_payload(), hashlib.sha256).hexdigest()
        return dataclasses.replace(self, signature=digest)

    def signature_problem(self, key: str) -> str | None:
        """Why the signature does not hold under `key`, or None if it does."""
        if not self.signature:
            return "it is not signed, and a signing key is configured"
        if not hmac.compare_digest(self.signed(key).signature, self.signature):
            return (
                "its signature does not verify (the manifest was changed, or signed with another "
                "key)"
            )
        return None


def build_manifest(root: Path, **identity) -> Manifest:
    files = {
        relative: {"sha256": file_sha256(path), "size": path.stat().st_size}
        for relative, path in sorted(_walk(root).items())
    }
    return Manifest(files=files, **identity)


def write_manifest(root: Path, manifest: Manifest) -> str:
    """Write the manifest (fsynced, via a temporary name) and return its checksum."""
    data = manifest.to_json()
    tmp = root / f".{MANIFEST_NAME}.tmp"
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, root / MANIFEST_NAME)
    return hashlib.sha256(data).hexdigest()


def read_manifest(root: Path | Tree) -> tuple[Manifest, str]:
    """The manifest of the export at `root` and its checksum; ManifestError if absent or
    unreadable."""
    tree = as_tree(root)
    data = tree.storage.read(tree.file(MANIFEST_NAME))
    if data is None:
        raise ManifestError(f"{tree.where}: no {MANIFEST_NAME}; the export is incomplete")
    path = f"{tree.where}/{MANIFEST_NAME}"
    try:
        manifest = Manifest(**json.loads(data))
        _check_files(manifest.files)
        if not isinstance(manifest.signature, str):
            raise ValueError("'signature' is not a string")  # noqa: TRY004 - bad content, reported as unreadable
    except (ValueError, TypeError) as exc:
        raise ManifestError(f"{path}: unreadable manifest: {exc}") from None
    return manifest, hashlib.sha256(data).hexdigest()


def _check_files(files: object) -> None:
    """Every entry names a file with its sha256 and size, so verification can compare them."""
    if not isinstance(files, dict):
        raise ValueError("'files' is not a mapping of file names")  # noqa: TRY004 - bad content, not a bug
    for relative, entry in files.items():
        if (
            not isinstance(entry, dict)
            or not isinstance(entry.get("sha256"), str)
            or not isinstance(entry.get("size"), int)
            or isinstance(entry.get("size"), bool)
        ):
            raise ValueError(f"entry {relative!r} has no sha256 and size")  # noqa: TRY004 - bad content


def verify_export(root: Path | Tree, **checks) -> Manifest:
    """The export's manifest, once every file matches it (see `check_export`)."""
    return check_export(root, **checks)[0]


def check_export(
    root: Path | Tree,
    *,
    expected_checksum: str | None = None,
    full: bool = True,
    identity: tuple[str, str, int] | None = None,
    signing_key: str | None = None,
) -> tuple[Manifest, str]:
    """Check every file of the export against its manifest; raise ManifestError saying what differs,
    else return the manifest and its checksum.

    `full=False` compares names and sizes only (cheap, for skipping); imports always hash.
    `identity` (workspace, model, version) is what the export must be of: a folder copied to
    another model's place is refused. With `signing_key`, the manifest's signature must hold.
    """
    tree = as_tree(root)
    root = tree.where
    manifest, checksum = read_manifest(tree)
    if identity is not None and manifest.identity != tuple(identity):
        raise ManifestError(
            f"{root}: the manifest is of {manifest.workspace}/{manifest.model_name} "
            f"v{manifest.version}, not {identity[0]}/{identity[1]} v{identity[2]} (an export "
            "copied to another model's place)"
        )
    if signing_key:
        problem = manifest.signature_problem(signing_key)
        if problem:
            raise ManifestError(f"{root}: {problem}")
    if expected_checksum is not None and checksum != expected_checksum:
        raise ManifestError(
            f"{root}: manifest checksum {checksum[:12]}… differs from the recorded "
            f"{expected_checksum[:12]}… (the manifest was edited or replaced)"
        )
    stored = {
        name: entry for name, entry in tree.storage.list(tree.key).items() if name not in NOT_LISTED
    }
    missing = sorted(set(manifest.files) - set(stored))
    added = sorted(set(stored) - set(manifest.files))
    changed = []
    for relative in sorted(set(manifest.files) & set(stored)):
        expected = manifest.files[relative]
        if stored[relative].size != expected["size"] or (
            full and tree.storage.sha256(tree.file(relative)) != expected["sha256"]
        ):
            changed.append(relative)
    if missing or added or changed:
        problems = [
            f"{label}: {', '.join(names[:10])}{' …' if len(names) > 10 else ''}"
            for label, names in (("missing", missing), ("added", added), ("changed", changed))
            if names
        ]
        raise ManifestError(f"{root}: export does not match its manifest ({'; '.join(problems)})")
    return manifest, checksum
