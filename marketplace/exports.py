"""Exporting one model version with mlflow-export-import into external storage, atomically."""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import logging
import shutil
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow_export_import.model.export_model import export_model

from marketplace.manifest import (
    MANIFEST_NAME,
    Manifest,
    ManifestError,
    build_manifest,
    read_manifest,
    verify_export,
    write_manifest,
)
from marketplace.registry import ProductionVersion, process_tracking_uri, redact_text

EXPORTS_DIR = "exports"
STAGING_PREFIX = ".staging-"
MAX_COMPONENT_BYTES = 180


class ExportError(RuntimeError):
    """An export that failed or produced something we cannot trust."""


class SourceProblem(ExportError):
    """The source version itself cannot be exported (no run, run deleted, files missing): it is
    skipped, with this reason recorded, until it changes; the rest of its partition syncs."""


SKIP_SUFFIX = ".skipped.json"


def path_component(name: str) -> str:
    """A model name as one safe, reversible-enough folder name (stable hash when too long)."""
    component = quote(name, safe="-_")
    if component in (".", ".."):
        component = component.replace(".", "%2E")
    if len(component.encode()) > MAX_COMPONENT_BYTES:
        digest = hashlib.sha256(name.encode()).hexdigest()[:16]
        component = f"{component[:MAX_COMPONENT_BYTES - 17].rstrip('%')}-{digest}"
    return component


def export_dir(storage_root: str | Path, workspace: str, model_name: str, version: int) -> Path:
    return Path(storage_root) / EXPORTS_DIR / workspace / path_component(model_name) / str(version)


def remove_staging(storage_root: str | Path, workspace: str, model_name: str, version: int) -> int:
    """Remove the version's staging folders. Only for a caller holding the version's export lock:
    then no export of it is in progress, and any staging folder is a dead run's debris."""
    found = list(export_dir(storage_root, workspace, model_name, version).parent.glob(f"{STAGING_PREFIX}{version}-*"))
    for debris in found:
        shutil.rmtree(debris, ignore_errors=True)
    return len(found)


def skip_record_path(storage_root: str | Path, workspace: str, model_name: str, version: int) -> Path:
    """Beside the version's export folder: why the version was skipped, while it is."""
    return export_dir(storage_root, workspace, model_name, version).with_name(f"{version}{SKIP_SUFFIX}")


def write_atomically(path: Path, text: str) -> None:
    """Write `path` through a unique `<name>.tmp-*` file renamed into place: readers see the old
    file or the new one, never half of one (housekeeping sweeps temp files a crash left)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def record_skip(path: Path, reason: str, day: dt.date) -> None:
    write_atomically(path, json.dumps({"reason": reason, "date": day.isoformat()}, ensure_ascii=False))


def skip_reason(path: Path) -> str | None:
    try:
        return json.loads(path.read_text())["reason"]
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return None


@dataclass(frozen=True)
class ExportRecord:
    """A verified export: what it is, where, and its manifest's checksum."""

    path: Path
    manifest: Manifest
    checksum: str


def inspect_export(
    path: Path, *, identity: tuple[str, str, int] | None = None, signing_key: str | None = None
) -> tuple[ExportRecord | None, str | None]:
    """The export at `path` if its manifest is there, sizes match and (given) it is of `identity`
    and signed with `signing_key`; else None and why a manifest there does not count (no reason
    when there is no manifest: nothing, or debris of an interrupted export)."""
    if not (path / MANIFEST_NAME).exists():
        return None, None
    try:
        manifest = verify_export(path, full=False, identity=identity, signing_key=signing_key)
    except ManifestError as exc:
        return None, str(exc)
    _, checksum = read_manifest(path)
    return ExportRecord(path=path, manifest=manifest, checksum=checksum), None


def existing_export(
    path: Path, *, identity: tuple[str, str, int] | None = None, signing_key: str | None = None
) -> ExportRecord | None:
    return inspect_export(path, identity=identity, signing_key=signing_key)[0]


def _listing(client: MlflowClient, artifact_uri: str) -> dict[str, int]:
    """Every file under an artifact URI with its size, listed recursively."""
    sizes: dict[str, int] = {}
    pending = [""]
    repo = mlflow.store.artifact.artifact_repository_registry.get_artifact_repository(artifact_uri)
    while pending:
        prefix = pending.pop()
        for info in repo.list_artifacts(prefix or None):
            if info.is_dir:
                pending.append(info.path)
            else:
                sizes[info.path] = info.file_size or 0
    return sizes


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
            raise SourceProblem(f"its run {version.run_id} no longer exists in the workspace") from None
        raise
    if run.info.lifecycle_stage == "deleted":
        raise SourceProblem(f"its run {version.run_id} was deleted in the workspace; restore the run to sync it")


def _verify_contents(staging: Path, client: MlflowClient, version: ProductionVersion) -> None:
    """mlflow-export-import can report success with files missing: check what it wrote."""
    model_json = staging / "model.json"
    if not model_json.exists():
        raise ExportError("mlflow-export-import wrote no model.json")
    exported = json.loads(model_json.read_text())["mlflow"]["registered_model"]
    versions = [str(v["version"]) for v in exported.get("versions", [])]
    if versions != [str(version.version)]:
        failed = json.loads(model_json.read_text()).get("info", {}).get("failed_versions")
        raise ExportError(f"version {version.version} missing from the export (exported {versions}; failures: {failed})")
    run_dir = staging / version.run_id
    if not (run_dir / "run.json").exists():
        raise ExportError(f"the run {version.run_id} was not exported")
    if version.source.startswith("models:/"):
        model_id = version.source.split("models:/", 1)[1].split("/")[0]
        model_dir = staging / model_id
        if not (model_dir / "logged_model.json").exists():
            raise ExportError(f"the logged model {model_id} was not exported")
        logged = client.get_logged_model(model_id)
        expected = _listing(client, logged.artifact_location)
        if not expected:
            raise SourceProblem(f"the files of its logged model {model_id} are missing in the source workspace")
        for relative, size in expected.items():
            local = model_dir / "artifacts" / relative
            if not local.is_file() or local.stat().st_size != size:
                raise ExportError(f"the logged model file {relative} is missing or truncated in the export")


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
    for path in [staging / "model.json", *staging.glob("*/run.json"), *staging.glob("*/logged_model.json")]:
        if path.is_file():
            text = path.read_text(encoding="utf-8")
            scrubbed = redact_text(text)
            if scrubbed != text:
                path.write_text(scrubbed, encoding="utf-8")


def export_version(
    client: MlflowClient,
    tracking_uri: str,
    *,
    storage_root: str | Path,
    workspace: str,
    version: ProductionVersion,
    export_date: dt.date,
    signing_key: str | None = None,
    registry_uri: str | None = None,
) -> ExportRecord:
    """Export one production version, verify it, write its manifest last and move it into place.

    mlflow-export-import writes straight into its output folder, so it writes into a staging
    folder beside the destination; the rename into place is the commit point.
    """
    _check_source(client, version)
    destination = export_dir(storage_root, workspace, version.model_name, version.version)
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = destination.parent / f"{STAGING_PREFIX}{version.version}-{uuid.uuid4().hex[:8]}"
    try:
        with process_tracking_uri(tracking_uri, registry_uri), _library_errors() as errors:
            ok, _ = export_model(
                model_name=version.model_name,
                output_dir=str(staging),
                versions=[str(version.version)],
                mlflow_client=client,
            )
            if not ok:
                raise ExportError(f"mlflow-export-import failed: {'; '.join(errors) or 'see the run logs'}")
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
            exported_at=dt.datetime.now(dt.timezone.utc).isoformat(),
        )
        write_manifest(staging, manifest.signed(signing_key) if signing_key else manifest)
        identity = (workspace, version.model_name, version.version)
        if destination.exists():
            theirs = existing_export(destination, identity=identity, signing_key=signing_key)
            if theirs is not None:
                # Another run finished the same export first: keep theirs.
                shutil.rmtree(staging, ignore_errors=True)
                return theirs
            shutil.rmtree(destination)  # debris, or a folder that does not belong there
        staging.rename(destination)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    record = existing_export(destination, identity=identity, signing_key=signing_key)
    if record is None:
        raise ExportError(f"{destination}: the export does not verify after it was moved into place")
    return record

