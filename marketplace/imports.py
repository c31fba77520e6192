"""The import step: each of a workspace's exported production versions imported into the
marketplace once, after its export is verified against its manifest, its signature checked and
its files scanned; the upload itself is `import_upload`."""

from __future__ import annotations

import datetime as dt
import functools
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from mlflow import MlflowClient
from mlflow.entities import Experiment
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.prompt.registry_utils import has_prompt_tag

from marketplace.errors import MarketplaceError
from marketplace.import_upload import ImportError_, import_export
from marketplace.marketplace_versions import (
    marketplace_versions,
    marketplace_versions_of,
    settle_duplicates,
)
from marketplace.pool import OneAtATime, in_pool
from marketplace.provenance import (
    TAG_CHECKSUM,
    TAG_IMPORT_DATE,
    TAG_PRODUCTION_SOURCE_VERSION,
    TAG_SOURCE_MODEL,
    TAG_SOURCE_WORKSPACE,
    Marker,
    SourceKey,
    description,
    provenance_tags,
)
from marketplace.registry import (
    ProductionVersion,
    RegistryUnavailable,
    redact_uri,
    registry_errors,
)
from marketplace.scanning import ScanPolicy, scan_folder
from marketplace.signatures import (
    UNCHECKED,
    VERIFIED,
    SignatureError,
    export_signature_state,
)

if TYPE_CHECKING:
    from marketplace.export_records import LocalCopies
    from marketplace.external import ExternalStorage
    from marketplace.registries import MarketplaceRegistry, SourceRegistries


class NameCollision(ImportError_):
    """Two source models map to one marketplace name."""


@dataclass(frozen=True)
class ImportSettings:
    """What importing one workspace's versions reads from the configuration."""

    tracking_uri: str  # the marketplace's
    registry_uri: str | None
    marker: Marker
    scan_policy: ScanPolicy
    require_signatures: bool
    # The workspace's signing key (PEM), if it has one: read (and sigstore loaded) only when a
    # version is imported.
    public_key: Callable[[], str | None]
    source_uri: str  # the workspace's tracking URI, redacted: the models' provenance


def check_name_owner(client: MlflowClient, name: str, workspace: str, model: str) -> bool:
    """Refuse to import into a marketplace model that belongs to another source model; True if
    the model exists."""
    try:
        # The registry client's read: MlflowClient's answers "not found" for a prompt.
        registered = client._get_registry_client().get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return False
        raise
    tags = registered.tags or {}
    if has_prompt_tag(
        getattr(registered, "_tags", None) or tags
    ):  # `tags` leaves the prompt tag out
        raise NameCollision(
            f"marketplace name {name!r} is held by an MLflow prompt, not a model; "
            f"{workspace}/{model} maps to it: change marketplace.name_template"
        )
    owner = (tags.get(TAG_SOURCE_WORKSPACE), tags.get(TAG_SOURCE_MODEL))
    if owner != (None, None) and owner != (workspace, model):
        raise NameCollision(
            f"marketplace model {name!r} already holds {owner[0]}/{owner[1]}; "
            f"{workspace}/{model} maps to the same name: change marketplace.name_template"
        )
    return True


@dataclass
class ImportOutcome:
    """What became of one production version in its partition's import step."""

    source: SourceKey
    status: str  # imported | already_imported | skipped | quarantined | failed
    marketplace_name: str | None = None
    version: ModelVersion | None = None  # the marketplace version (imported or already there)
    export_location: str | None = None
    checksum: str | None = None  # of the export it was imported from
    detail: str = ""
    findings: list[dict] = field(default_factory=list)  # blocking (quarantined) or not (imported)
    files_scanned: int = 0
    scan_seconds: float = 0.0

    @property
    def label(self) -> str:
        return self.source.describe()


def import_versions(
    client: MlflowClient,
    *,
    marketplace: MarketplaceRegistry,
    storage: ExternalStorage,
    sources: SourceRegistries,
    workspace: str,
    versions: Sequence[ProductionVersion],
    recorded: Mapping[tuple[str, str, int], Mapping],
    copies: LocalCopies,
    day: dt.date,
    log: logging.Logger | None = None,
    importing: Callable[[], None] | None = None,
) -> list[ImportOutcome]:
    """Import each of a workspace's production versions into the marketplace, once: verified
    against its manifest and the export summary's checksum (`recorded`), its signature checked,
    scanned (a blocking finding quarantines it) and imported under a lock per marketplace model,
    `marketplace.max_workers` at a time.
    One version's failure is its outcome; a marketplace that cannot be read fails them all
    (RegistryUnavailable). `importing` is called before each new import (the load check's sandbox
    starts then, its imports overlapping the registry's)."""
    log = OneAtATime(log or logging.getLogger(__name__))
    settings = ImportSettings(
        tracking_uri=marketplace.tracking_uri,
        registry_uri=marketplace.registry_uri,
        marker=marketplace.marker,
        scan_policy=marketplace.scan_policy,
        require_signatures=marketplace.require_signatures,
        public_key=functools.partial(sources.public_key, workspace),
        source_uri=redact_uri(sources.get(workspace).tracking_uri),
    )
    with registry_errors(f"the marketplace (syncing workspace {workspace})", settings.tracking_uri):
        known = marketplace_versions_of(
            client, [marketplace.model_name(workspace, v.model_name) for v in versions]
        )
    experiments: dict[str, Experiment] = {}

    def one(version: ProductionVersion) -> ImportOutcome:
        source = SourceKey(workspace, version.model_name, version.version)
        mp_name = marketplace.model_name(workspace, version.model_name)
        row = recorded.get((workspace, version.model_name, version.version))
        if row is None:
            reason = storage.skip_reason(workspace, version.model_name, version.version)
            return (
                ImportOutcome(source, "skipped", detail=f"not exported: {reason}")
                if reason is not None
                else ImportOutcome(
                    source, "failed", detail="not in the export summary (export it first)"
                )
            )
        done = ImportOutcome(
            source,
            "already_imported",
            mp_name,
            export_location=row["export_path"],
            checksum=row["checksum"],
        )
        held = storage.quarantine(
            workspace, version.model_name, version.version, row["checksum"], settings.scan_policy
        )
        if held is not None:  # not scanned again until its export changes
            done.status, done.findings = "quarantined", held.get("findings", [])
        elif source in known.get(mp_name, {}):
            done.version = known[mp_name][source]
        else:
            if importing is not None:
                importing()
            try:
                _import_verified(
                    client,
                    settings,
                    storage,
                    done,
                    marketplace.experiment_name(mp_name),
                    copies,
                    day,
                    log,
                    experiments,
                )
            except RegistryUnavailable:
                raise
            except Exception as exc:  # noqa: BLE001 - one model's failure must not hide the others'
                done.status = "failed"
                done.detail = "not imported: " + (
                    str(exc)
                    if isinstance(exc, MarketplaceError)
                    else f"{type(exc).__name__}: {exc}"
                )
        return done

    # Versions of different models at once (each model's import holds its own lock).
    return in_pool(one, versions, marketplace.max_workers, "import")


def _import_verified(
    client: MlflowClient,
    settings: ImportSettings,
    external: ExternalStorage,
    done: ImportOutcome,
    experiment_name: str,
    copies: LocalCopies,
    day: dt.date,
    log,
    experiments: dict[str, Experiment],
) -> None:
    """Verify, check the signature of, scan and import the export `done` names; `done` records
    what happened."""
    source, mp_name, location = done.source, done.marketplace_name, done.export_location
    workspace, policy = source.workspace, settings.scan_policy
    # One importer per marketplace model at a time, across processes: the check for an
    # existing version and the import must not interleave.
    with external.lock("import", mp_name) as lock:
        exists = check_name_owner(client, mp_name, workspace, source.model_name)
        with registry_errors(
            f"the marketplace (syncing workspace {workspace})", settings.tracking_uri
        ):
            existing = (
                marketplace_versions(client, mp_name) if exists else {}
            )  # no model, no version
        if source in existing:  # imported by a concurrent run since the search above
            done.version = existing[source]
            return
        local = copies.verified(
            location,
            expected_checksum=done.checksum,
            identity=(workspace, source.model_name, source.version),
            signing_key=external.signing_key,
        )
        _check_signature(
            local, location, workspace, settings.public_key(), settings.require_signatures
        )
        if policy.mode != "off":
            scan = scan_folder(local)
            done.files_scanned, done.scan_seconds = scan.files_scanned, scan.seconds
            if blocking := scan.blocking(policy):
                done.status, done.findings = "quarantined", [f.to_dict() for f in blocking]
                external.record_quarantine(
                    workspace,
                    source.model_name,
                    source.version,
                    checksum=done.checksum,
                    findings=done.findings,
                    reason=f"quarantined: {scan.describe(blocking)}",
                    day=day,
                )
                log.error(f"{done.label} quarantined, not imported: {scan.describe(blocking)}")
                return
            if scan.findings:
                done.findings = [f.to_dict() for f in scan.findings]
                log.warning(f"{done.label}: scan findings that do not block: {scan.describe()}")
        log.info(f"importing {done.label} as {mp_name}")
        lock.check()  # a lost lock imports nothing
        done.version = _import_once(
            client,
            settings,
            done.checksum,
            local,
            mp_name,
            experiment_name,
            source,
            day,
            experiments,
        )
        done.status = "imported"


def _check_signature(
    local: Path, location: str, workspace: str, public_key: str | None, required: bool
) -> None:
    """The export carries a valid signature of its workspace's key, where signatures are
    required."""
    state = export_signature_state(local, location, workspace, public_key, required)
    if state.state in (VERIFIED, UNCHECKED):
        return
    if public_key is not None:
        raise SignatureError(f"signature refused: {state.reason} (workspace {workspace}'s key)")
    raise SignatureError(
        f"signature refused: {location}: {state.reason}, and marketplace.require_signatures is on"
    )


def _import_once(
    client: MlflowClient,
    settings: ImportSettings,
    checksum: str,
    local: Path,
    mp_name: str,
    experiment_name: str,
    source: SourceKey,
    day: dt.date,
    experiments: dict[str, Experiment],
) -> ModelVersion:
    source_uri = settings.source_uri
    model_tags = {
        **provenance_tags(source.workspace, source.model_name, source_uri),
        TAG_PRODUCTION_SOURCE_VERSION: str(source.version),
    }
    model_description = description(
        source.workspace, source.model_name, source.version, settings.marker, source_uri
    )
    try:
        returned = import_export(
            client,
            settings.tracking_uri,
            export_path=local,
            marketplace_name=mp_name,
            experiment_name=experiment_name,
            source=source,
            checksum=checksum,
            import_date=day,
            model_tags=model_tags,
            model_description=model_description,
            registry_uri=settings.registry_uri,
            experiments=experiments,
        )
    except Exception:
        # The version may exist although the call failed (its answer was lost): look again.
        created = settle_duplicates(client, mp_name, source)
        if created is None:
            raise
        return created
    # A retried create may have made two copies of the version: keep the first.
    created = settle_duplicates(client, mp_name, source, returned)
    if created is None:
        raise ImportError_(
            f"{source.describe()}: imported, but no version of {mp_name!r} carries its source tags"
        )
    return created


def import_row(
    workspace: str, model: str, version: int, mp_name: str, found: ModelVersion, day: dt.date
) -> dict:
    """The import summary's row of an imported version."""
    tags = found.tags or {}
    return {
        "workspace": workspace,
        "model_name": model,
        "version": version,
        "marketplace_model": mp_name,
        "marketplace_version": int(found.version),
        "import_date": dt.date.fromisoformat(tags.get(TAG_IMPORT_DATE, day.isoformat())),
        "imported_at": dt.datetime.fromtimestamp(found.creation_timestamp / 1000, tz=dt.UTC),
        "checksum": tags.get(TAG_CHECKSUM, ""),
        "run_id": found.run_id,
    }
