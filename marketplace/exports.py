"""Exporting production versions with mlflow-export-import into external storage: one version
exported, verified, its manifest written last and published atomically (`export_version`), and
a partition's versions each under its export lock (`export_versions`). What is recorded about an
export is `export_records`."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import shutil
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import requests
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow_export_import.model.export_model import export_model

from marketplace.errors import MarketplaceError
from marketplace.export_records import (
    ExportRecord,
    clear_skip_record,
    existing_export,
    inspect_export,
    record_skip,
)
from marketplace.layout import export_key, lock_name, skip_record_key, staging_prefix
from marketplace.manifest import MANIFEST_NAME, Tree, build_manifest, write_manifest
from marketplace.pool import OneAtATime, in_pool
from marketplace.registry import (
    ProductionVersion,
    artifact_listing,
    files_at,
    mark_exported,
    process_tracking_uri,
    redact_text,
)
from marketplace.signatures import sign_export
from marketplace.storage import LocalStorage, LockTimeout, Storage, StorageError

EXPORT_LOCK_SECONDS = 900
# What fails one version's export, not the partition: the others are still exported.
EXPORT_ERRORS = (
    MlflowException,
    requests.exceptions.RequestException,
    OSError,
    StorageError,
    LockTimeout,
)


class ExportError(MarketplaceError, RuntimeError):
    """An export that failed or produced something we cannot trust."""


class SourceProblem(ExportError):
    """The source version itself cannot be exported (no run, run deleted, files missing): it is
    skipped, with this reason recorded, until it changes; the rest of its partition syncs."""


def remove_staging(storage: Storage, workspace: str, model_name: str, version: int) -> int:
    """Remove the version's staging folders on this machine. Only for a caller holding the
    version's export lock: then no export of it is in progress, and any staging folder is a dead
    run's debris."""
    area = storage.staging_area(export_key(workspace, model_name, version))
    found = list(area.glob(f"{staging_prefix(version)}*"))
    for debris in found:
        shutil.rmtree(debris, ignore_errors=True)
    return len(found)


class _ReadOnce:
    """The source registry's client as one version's export sees it: the run, logged model and
    registered model that our check and mlflow-export-import's run and logged-model exports each
    read (the source run four times) are read once, and the run's top folder is listed without
    reading the run again. An export only reads the source."""

    READS = frozenset({"get_run", "get_logged_model", "get_registered_model", "get_experiment"})

    def __init__(self, client: MlflowClient):
        self._client, self._answers = client, {}

    def __getattr__(self, name: str):
        attr = getattr(self.__dict__["_client"], name)
        if name not in _ReadOnce.READS:
            return attr

        def read(*args, **kwargs):
            key = (name, args, tuple(sorted(kwargs.items())))
            if key not in self._answers:
                self._answers[key] = attr(*args, **kwargs)
            return self._answers[key]

        return read

    def list_artifacts(self, run_id: str, path: str | None = None):
        # MlflowClient reads the run again to list its top folder; below it, it resolves runs:/
        # URIs.
        if path:
            return self._client.list_artifacts(run_id, path)
        return files_at(
            self.get_run(run_id).info.artifact_uri, self._client.tracking_uri
        ).list_artifacts(None)


def _check_source(client: MlflowClient, version: ProductionVersion) -> None:
    """Refuse, before any work, a version mlflow-export-import cannot export faithfully."""
    if "'" in version.model_name:
        # Its searches are f"name='{model_name}'": such a name fails inside it, after partial work.
        raise SourceProblem(
            "mlflow-export-import cannot export a model whose name contains a single quote "
            "(it quotes names with ' in its registry searches); rename the model to sync it"
        )
    if not version.run_id:
        raise SourceProblem(
            "the version has no run (mlflow-export-import exports a version with its run); "
            "register it from a run to sync it"
        )
    try:
        run = client.get_run(version.run_id)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            raise SourceProblem(
                f"its run {version.run_id} no longer exists in the workspace"
            ) from None
        raise
    if run.info.lifecycle_stage == "deleted":
        raise SourceProblem(
            f"its run {version.run_id} was deleted in the workspace; restore the run to sync it"
        )


def _verify_contents(staging: Path, client: MlflowClient, version: ProductionVersion) -> None:
    """mlflow-export-import can report success with files missing: check what it wrote."""
    model_json = staging / "model.json"
    if not model_json.exists():
        raise ExportError("mlflow-export-import wrote no model.json")
    exported = json.loads(model_json.read_text())["mlflow"]["registered_model"]
    versions = [str(v["version"]) for v in exported.get("versions", [])]
    if versions != [str(version.version)]:
        failed = json.loads(model_json.read_text()).get("info", {}).get("failed_versions")
        raise ExportError(
            f"version {version.version} missing from the export (exported {versions}; failures: "
            f"{failed})"
        )
    run_dir = staging / version.run_id
    if not (run_dir / "run.json").exists():
        raise ExportError(f"the run {version.run_id} was not exported")
    if version.source.startswith("models:/"):
        model_id = version.source.split("models:/", 1)[1].split("/")[0]
        model_dir = staging / model_id
        if not (model_dir / "logged_model.json").exists():
            raise ExportError(f"the logged model {model_id} was not exported")
        # Where the library read the files from, as the registry told it moments ago.
        location = (
            json.loads((model_dir / "logged_model.json").read_text())
            .get("mlflow", {})
            .get("artifact_location")
        )
        location = location or client.get_logged_model(model_id).artifact_location
        expected = {path: size or 0 for path, size in artifact_listing(location).items()}
        if not expected:
            raise SourceProblem(
                f"the files of its logged model {model_id} are missing in the source workspace"
            )
        for relative, size in expected.items():
            local = model_dir / "artifacts" / relative
            if not local.is_file() or local.stat().st_size != size:
                raise ExportError(
                    f"the logged model file {relative} is missing or truncated in the export"
                )


@contextlib.contextmanager
def _library_errors() -> Iterator[list[str]]:
    """The errors mlflow-export-import logs on this thread: it returns only ok=False, and the
    reason (say, `No space left on device`) is in its log."""
    errors: list[str] = []
    thread = threading.get_ident()

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.thread == thread:
                errors.append(redact_text(record.getMessage()))

    handler = Collect(level=logging.ERROR)
    library = logging.getLogger("mlflow_export_import")
    library.addHandler(handler)
    try:
        yield errors
    finally:
        library.removeHandler(handler)


def _scrub_credentials(staging: Path) -> None:
    """mlflow-export-import records the tracking URI, credentials included, in its JSON files."""
    for path in [
        staging / "model.json",
        *staging.glob("*/run.json"),
        *staging.glob("*/logged_model.json"),
    ]:
        if path.is_file():
            text = path.read_text(encoding="utf-8")
            scrubbed = redact_text(text)
            if scrubbed != text:
                path.write_text(scrubbed, encoding="utf-8")


def export_version(
    client: MlflowClient,
    tracking_uri: str,
    *,
    storage: Storage | str | Path,
    workspace: str,
    version: ProductionVersion,
    export_date: dt.date,
    signing_key: str | None = None,
    registry_uri: str | None = None,
    private_key: str | None = None,
    still_held: Callable[[], None] | None = None,
) -> ExportRecord:
    """Export one production version, verify it, write its manifest last and publish it; with
    `private_key` (the workspace's, PEM), sign the whole folder, manifest included (model.sig).

    mlflow-export-import writes straight into its output folder, so it writes into a local
    staging folder; publishing is the commit point (a rename into place in a local folder; on an
    object store, every file uploaded and the manifest last). The caller holds the export lock.
    """
    storage = storage if isinstance(storage, Storage) else LocalStorage(storage)
    client = _ReadOnce(client)
    _check_source(client, version)
    key = export_key(workspace, version.model_name, version.version)
    destination = Tree(storage, key)
    area = storage.staging_area(key)
    area.mkdir(parents=True, exist_ok=True)
    staging = area / f"{staging_prefix(version.version)}{uuid.uuid4().hex[:8]}"
    identity = (workspace, version.model_name, version.version)
    try:
        with process_tracking_uri(tracking_uri, registry_uri), _library_errors() as errors:
            ok, _ = export_model(
                model_name=version.model_name,
                output_dir=str(staging),
                versions=[str(version.version)],
                mlflow_client=client,
            )
            if not ok:
                raise ExportError(
                    f"mlflow-export-import failed: {'; '.join(errors) or 'see the run logs'}"
                )
            _verify_contents(staging, client, version)
        _scrub_credentials(staging)
        manifest = build_manifest(
            staging,
            workspace=workspace,
            model_name=version.model_name,
            version=version.version,
            run_id=version.run_id,
            source=version.source,
            export_date=export_date.isoformat(),
            exported_at=dt.datetime.now(dt.UTC).isoformat(),
        )
        write_manifest(staging, manifest.signed(signing_key) if signing_key else manifest)
        if private_key:
            sign_export(staging, private_key)
        theirs = existing_export(destination, identity=identity, signing_key=signing_key)
        if theirs is not None:
            return theirs  # another run finished the same export first: keep theirs
        if still_held is not None:
            still_held()  # a lost lock (its lease taken over) publishes nothing
        # Whatever is there is debris, or a folder that does not belong there: replaced.
        storage.publish(staging, key, MANIFEST_NAME)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if not storage.is_local:
            with contextlib.suppress(
                OSError
            ):  # the per-version area in the temp folder, if now empty
                area.rmdir()
    record, problem = inspect_export(destination, identity=identity, signing_key=signing_key)
    if record is None:
        raise ExportError(
            f"{destination.where}: the export does not verify after it was published: {problem}"
        )
    return record


@dataclass
class Outcome:
    """What exporting one production version came to; the export job reports these back."""

    model_name: str
    version: int
    status: str  # exported, already_exported, skipped or failed
    detail: str = ""  # why it was skipped or failed
    replaced: str = ""  # why an export folder that was there did not count
    location: str = ""
    files: int = 0
    size_bytes: int = 0
    marker_written: bool = False
    staging_removed: int = 0

    @property
    def label(self) -> str:
        return f"{self.model_name} v{self.version}"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Outcome:
        return cls(**data)


@dataclass(frozen=True)
class ExportSettings:
    """What exporting one workspace's versions reads from the configuration."""

    workspace: str
    tracking_uri: str  # the workspace's
    registry_uri: str | None
    signing_key: str | None  # the manifests' HMAC key (deprecated)
    private_key: str | None  # the workspace's PEM its exports are signed with
    source_marker: bool  # mark each exported version in its workspace (the seed's marker)


def export_versions(
    client: MlflowClient,
    *,
    tracking_uri: str,
    registry_uri: str | None,
    storage: Storage,
    workspace: str,
    versions: Sequence[ProductionVersion],
    day: dt.date,
    signing_key: str | None,
    source_marker: bool,
    log: logging.Logger,
    private_key: str | None = None,
    max_workers: int = 1,
) -> list[Outcome]:
    """Export each version that has no valid export yet, then mark it in its workspace.

    Up to `max_workers` versions at a time, each under its export lock (shared by every process
    using this storage); outcomes in the order of `versions`. A version at fault is skipped with
    its reason recorded; one that fails is reported failed; neither stops the others. This is the
    whole export, in the Dagster process or in a job.
    """
    log = OneAtATime(log)
    settings = ExportSettings(
        workspace, tracking_uri, registry_uri, signing_key, private_key, source_marker
    )

    def one(version: ProductionVersion) -> Outcome:
        outcome = Outcome(version.model_name, version.version, "failed")
        try:
            with storage.lock(
                lock_name("export", workspace, version.model_name, str(version.version)),
                EXPORT_LOCK_SECONDS,
            ) as held:
                try:
                    _export_one(client, settings, storage, version, day, outcome, log, held.check)
                except SourceProblem as exc:
                    # The version itself is at fault: skip it, say why, and sync the others.
                    outcome.status, outcome.detail = "skipped", redact_text(str(exc))
                    log.warning(f"{workspace}: skipped {outcome.label}: {outcome.detail}")
                    record_skip(
                        storage,
                        skip_record_key(workspace, version.model_name, version.version),
                        outcome.detail,
                        day,
                    )
        except (ExportError, *EXPORT_ERRORS) as exc:
            outcome.status = "failed"
            outcome.detail = redact_text(f"export failed: {type(exc).__name__}: {exc}")
        return outcome

    return in_pool(one, versions, max_workers, "export")


def _export_one(
    client: MlflowClient,
    settings: ExportSettings,
    storage: Storage,
    version: ProductionVersion,
    day: dt.date,
    outcome: Outcome,
    log,
    still_held: Callable[[], None],
) -> None:
    workspace = settings.workspace
    key = export_key(workspace, version.model_name, version.version)
    identity = (workspace, version.model_name, version.version)
    # Signatures are checked at import, which refuses a planted export saying why
    # (docs/pipeline.md).
    record, problem = inspect_export(Tree(storage, key), identity=identity)
    if record is None:
        if problem:
            outcome.replaced = redact_text(problem)
            log.warning(
                f"{workspace}: {outcome.label}: replacing the export folder: {outcome.replaced}"
            )
        log.info(f"{workspace}: exporting {outcome.label}")
        outcome.staging_removed = remove_staging(
            storage, workspace, version.model_name, version.version
        )
        if outcome.staging_removed:
            log.info(
                f"{workspace}: {outcome.label}: removed {outcome.staging_removed} staging "
                "folder(s) a dead run left"
            )
        record = export_version(
            client,
            settings.tracking_uri,
            storage=storage,
            workspace=workspace,
            version=version,
            export_date=day,
            signing_key=settings.signing_key,
            registry_uri=settings.registry_uri,
            private_key=settings.private_key,
            still_held=still_held,
        )
        outcome.status = "exported"
        outcome.files, outcome.size_bytes = len(record.manifest.files), record.manifest.size_bytes
    else:
        outcome.status = "already_exported"
    outcome.location = record.location
    clear_skip_record(
        storage,
        skip_record_key(workspace, version.model_name, version.version),
        keep_quarantine=outcome.status == "already_exported",
    )
    # Marked only once the export verifies; a re-run writes a marker a crash left out.
    if settings.source_marker and not version.marked:
        ran_on = dt.datetime.fromisoformat(record.manifest.exported_at).date()
        outcome.marker_written = mark_exported(client, version.model_name, version.version, ran_on)
