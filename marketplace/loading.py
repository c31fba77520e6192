"""Loading a marketplace model the way users will, and comparing it with what was exported."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import tempfile
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path

import mlflow
from mlflow.entities.model_registry import ModelVersion
from mlflow.models import Model

from marketplace.export_facts import parse_yaml
from marketplace.manifest import ManifestError, file_sha256, read_manifest
from marketplace.pool import in_pool
from marketplace.provenance import SourceKey
from marketplace.registry import (
    REGISTRY_ERRORS,
    artifact_listing,
    local_folder,
    process_tracking_uri,
    redact_text,
)
from marketplace.sandbox import Sandbox, SandboxUnavailable
from marketplace.scanning import ScanPolicy, refused
from marketplace.storage import StorageError

# Set on a marketplace version once it loaded and predicted: a fingerprint of its artifact
# listing, so that later runs re-load it only when its files changed.
TAG_VERIFIED = "marketplace.verified_artifacts"


@dataclass(frozen=True)
class LoadResult:
    loaded: bool
    predicted: bool
    matches_export: bool | None
    detail: str
    unchanged: bool = False  # not loaded again: its files are as when it last passed
    denied: tuple[str, ...] = ()  # what the sandbox stopped it doing: blocked like a scan finding

    @property
    def blocked(self) -> bool:
        return bool(self.denied)


def artifact_fingerprint(tracking_uri: str, model_uri: str, registry_uri: str | None = None) -> str:
    """SHA-256 of the model's artifact listing (every file's path and size), read without
    downloading."""
    with process_tracking_uri(tracking_uri, registry_uri):
        return _fingerprint(artifact_listing(model_uri))


def _fingerprint(listing: dict[str, int]) -> str:
    return hashlib.sha256(
        "\n".join(sorted(f"{p}\t{s}" for p, s in listing.items())).encode()
    ).hexdigest()


def _identical_to_export(
    local: Path, reference_dir: Path, reference: dict[str, dict], hashed_at_import: bool = False
) -> bool:
    """The marketplace copy holds the export's bytes (MLmodel aside, whose paths an import
    rewrites): each file hashed against the manifest (`reference`: path -> its sha256 and size),
    or, for a copy this step imported from an export it hashed (`hashed_at_import`), the sizes."""
    copied = {p.relative_to(local).as_posix(): p for p in local.rglob("*") if p.is_file()}
    if set(copied) != set(reference):
        return False
    if _flavors(local) != _flavors(reference_dir):
        return False
    if hashed_at_import:
        return all(
            name == "MLmodel" or path.stat().st_size == reference[name]["size"]
            for name, path in copied.items()
        )
    return all(
        name == "MLmodel" or file_sha256(path) == reference[name]["sha256"]
        for name, path in copied.items()
    )


def _flavors(model_dir: Path) -> dict:
    # Read directly: MLflow's loaders take a local path with "%" in it for a URI and decode it.
    text = (model_dir / "MLmodel").read_text(encoding="utf-8")
    return (parse_yaml(text) or {}).get("flavors", {})


def _warn_environment(model_dir: Path) -> None:
    """MLflow's warnings of how this Python environment differs from the model's (its
    requirements, its Python version), for a model that failed to load here. Reads its MLmodel
    and requirements only: nothing of the model runs."""
    with contextlib.suppress(Exception):  # a warning, never a second failure
        from mlflow.pyfunc import (
            _get_pip_requirements_from_model_path,
            _warn_potentially_incompatible_py_version_if_necessary,
        )
        from mlflow.utils.requirements_utils import warn_dependency_requirement_mismatches

        warn_dependency_requirement_mismatches(
            _get_pip_requirements_from_model_path(str(model_dir))
        )
        conf = Model.load(str(model_dir / "MLmodel")).flavors.get("python_function", {})
        _warn_potentially_incompatible_py_version_if_necessary(conf.get("python_version"))


def load_and_predict(
    tracking_uri: str,
    model_uri: str,
    reference_dir: Path | None,
    reference_hashes: dict[str, dict] | None = None,
    registry_uri: str | None = None,
    policy: ScanPolicy | None = None,
    *,
    sandbox: Sandbox,
    location: str | None = None,
    hashed_at_import: bool = False,
) -> LoadResult:
    """Load `model_uri` with mlflow.pyfunc in `sandbox`, predict its input example, compare with the
    export's copy.

    The copy is downloaded here (the sandbox has no network) and handed to the sandbox read-only;
    what comes back is data: loaded, predicted, a digest of the predictions, what was denied.
    `reference_hashes` (the export manifest's entry, SHA-256 and size, of each file under
    `reference_dir`) spares loading the export too when the marketplace copy holds the same bytes.
    `location` (the version's artifact location, if known) on this machine's filesystem is read
    where it is, not downloaded. Under `policy`, nothing is loaded whose files the scan blocks.
    """
    with process_tracking_uri(tracking_uri, registry_uri), tempfile.TemporaryDirectory() as tmp:
        in_place = local_folder(location) if location else None
        try:
            local = (
                str(in_place)
                if in_place
                else mlflow.artifacts.download_artifacts(
                    artifact_uri=location or model_uri, dst_path=tmp
                )
            )
        except Exception as exc:  # noqa: BLE001 - any failure to load is the finding
            return LoadResult(
                False, False, None, f"{model_uri} does not load: {type(exc).__name__}: {exc}"
            )
        hashed_at_import = hashed_at_import and in_place is not None
        if blocked := refused(Path(local), policy):
            return LoadResult(
                False, False, None, f"{model_uri} not loaded: the scan blocks {blocked}"
            )
        try:
            loaded = sandbox.load_and_predict(Path(local))
        except SandboxUnavailable as exc:
            return LoadResult(False, False, None, f"{model_uri} not loaded: {exc}")
        if loaded.blocked:
            return LoadResult(
                False,
                False,
                None,
                f"{model_uri} blocked in the sandbox: {loaded.describe()}",
                denied=loaded.events,
            )
        if not loaded.loaded:
            _warn_environment(Path(local))
            return LoadResult(False, False, None, f"{model_uri} does not load: {loaded.error}")
        if loaded.stage in ("example", "predict"):
            _warn_environment(Path(local))
            return LoadResult(
                True, False, None, f"{model_uri} loads but fails to predict: {loaded.error}"
            )
        if not loaded.predicted:
            return LoadResult(
                True, False, None, f"{model_uri} loads but has no input example to predict"
            )
        if reference_dir is None or not (reference_dir / "MLmodel").exists():
            return LoadResult(True, True, None, f"{model_uri} loads and predicts")
        if reference_hashes and _identical_to_export(
            Path(local), reference_dir, reference_hashes, hashed_at_import
        ):
            return LoadResult(
                True, True, True, f"{model_uri} loads and predicts; its files are the export's"
            )
        if blocked := refused(reference_dir, policy):
            return LoadResult(
                True,
                True,
                None,
                f"{model_uri} loads and predicts; its export was not loaded to "
                f"compare: the scan blocks {blocked}",
            )
        expected = sandbox.load_and_predict(reference_dir)
        if expected.blocked:
            return LoadResult(
                False,
                False,
                None,
                f"{model_uri}'s export blocked in the sandbox: {expected.describe()}",
                denied=expected.events,
            )
        if not expected.predicted:
            return LoadResult(
                True,
                True,
                None,
                f"{model_uri} loads and predicts; its export could not be "
                f"loaded to compare: {expected.error or 'no prediction'}",
            )
        if loaded.digest != expected.digest:
            return LoadResult(
                True, True, False, f"{model_uri} predicts differently from its export"
            )
        return LoadResult(
            True, True, True, f"{model_uri} loads and predicts the same as its export"
        )


@dataclass(frozen=True)
class Checked:
    """A partition's newest marketplace version, for the load check."""

    name: str
    version: ModelVersion
    export_location: str
    new: bool  # imported by this run
    source: SourceKey | None = (
        None  # the source version it copies, to quarantine it if the sandbox blocks it
    )
    checksum: str | None = None  # of the export it was imported from

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version.version}"

    @property
    def label(self) -> str:
        return f"{self.name} v{self.version.version}"


def verify_loads(
    client,
    tracking_uri: str,
    registry_uri: str | None,
    checked: list[Checked],
    copies: Callable[[str], Path],
    policy: ScanPolicy,
    sandbox: Sandbox,
    hashed: Collection[str] = (),
    max_workers: int = 1,
) -> dict[str, LoadResult]:
    """Load and predict, in `sandbox`, each version imported now or whose files changed since it
    last passed (each copy is scanned before it is loaded); a pass is recorded on the version
    (TAG_VERIFIED). The registry reads and scans run `max_workers` at a time, the loads one at a
    time (the sandbox shows each model only its own files). The sandbox starts only when a
    version needs loading (or was begun).

    `hashed`: the export locations this step hashed against their manifests before importing
    them; a copy imported from one, read in place, is compared with the manifest by size."""

    def one(item: Checked) -> LoadResult:
        recorded = (item.version.tags or {}).get(TAG_VERIFIED)
        location, fingerprint = _located(client, tracking_uri, registry_uri, item)
        if recorded and not item.new and fingerprint == recorded:
            return LoadResult(
                True,
                True,
                True,
                f"{item.uri}: files unchanged since it last loaded and predicted",
                unchanged=True,
            )
        reference, hashes = _reference(item.export_location, copies)
        result = load_and_predict(
            tracking_uri,
            item.uri,
            reference,
            hashes,
            registry_uri=registry_uri,
            policy=policy,
            sandbox=sandbox,
            location=location,
            hashed_at_import=item.new and item.export_location in hashed,
        )
        result = dataclasses.replace(result, detail=redact_text(result.detail))
        if (
            result.loaded
            and result.matches_export is not False
            and fingerprint
            and fingerprint != recorded
        ):
            with contextlib.suppress(*REGISTRY_ERRORS):  # without it, the next run loads it again
                client.set_model_version_tag(
                    item.name, item.version.version, TAG_VERIFIED, fingerprint
                )
        return result

    return {
        item.label: result
        for item, result in zip(checked, in_pool(one, checked, max_workers, "load"))
    }


def _located(
    client, tracking_uri: str, registry_uri: str | None, item: Checked
) -> tuple[str | None, str | None]:
    """The version's artifact location and the fingerprint of its listing, read once; (None, None)
    when unreadable (the load is tried, and reports what fails)."""
    try:
        with process_tracking_uri(tracking_uri, registry_uri):
            location = client.get_model_version_download_uri(item.name, item.version.version)
            return location, _fingerprint(artifact_listing(location))
    except Exception:  # noqa: BLE001 - unreadable listing: load it and report what fails
        return None, None


def _model_folder(export_path: Path) -> Path | None:
    """The model's own folder (its MLmodel) in an export."""
    return next((p for p in export_path.glob("m-*/artifacts") if (p / "MLmodel").exists()), None)


def _reference(
    location: str, copies: Callable[[str], Path]
) -> tuple[Path | None, dict[str, str] | None]:
    """The export's copy of the model's artifacts, and their hashes from its manifest."""
    try:
        export_path = copies(location)
    except (ManifestError, *REGISTRY_ERRORS, StorageError):
        return None, None  # not readable: the model is loaded and predicts without the comparison
    reference = _model_folder(export_path)
    if reference is None:
        return None, None
    try:
        manifest, _ = read_manifest(export_path)
    except ManifestError:
        return reference, None
    prefix = reference.relative_to(export_path).as_posix() + "/"
    return reference, {
        k.removeprefix(prefix): v for k, v in manifest.files.items() if k.startswith(prefix)
    }
