"""Importing a verified export into the marketplace registry, once per source version."""

from __future__ import annotations

import copy
import datetime as dt
import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from mlflow import MlflowClient
from mlflow.entities import Experiment, LoggedModel, Run
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.prompt.registry_utils import has_prompt_tag
from mlflow_export_import.common import model_utils, utils
from mlflow_export_import.model.import_model import ModelImporter
from mlflow_export_import.model_version.import_model_version import _import_model_version

from marketplace.errors import MarketplaceError
from marketplace.pool import OneAtATime, in_pool
from marketplace.provenance import (
    TAG_CHECKSUM,
    TAG_IMPORT_DATE,
    TAG_PRODUCTION_SOURCE_VERSION,
    TAG_SOURCE_MODEL,
    TAG_SOURCE_RUN_ID,
    TAG_SOURCE_VERSION,
    TAG_SOURCE_WORKSPACE,
    SourceKey,
    description,
    provenance_tags,
)
from marketplace.registry import (
    ProductionVersion,
    RegistryUnavailable,
    files_at,
    filter_literal,
    process_tracking_uri,
    redact_uri,
    registry_errors,
    searched,
)
from marketplace.scanning import scan_folder
from marketplace.signatures import SignatureError, verify_export_signature

if TYPE_CHECKING:
    from marketplace.exports import LocalCopies
    from marketplace.external import ExternalStorage
    from marketplace.registries import MarketplaceRegistry, SourceRegistries


class ImportError_(MarketplaceError, RuntimeError):
    """An import that failed or would break the marketplace's invariants."""


class NameCollision(ImportError_):
    """Two source models map to one marketplace name."""


def _source_key(tags: dict[str, str]) -> SourceKey | None:
    try:
        return SourceKey(
            tags[TAG_SOURCE_WORKSPACE], tags[TAG_SOURCE_MODEL], int(tags[TAG_SOURCE_VERSION])
        )
    except (KeyError, ValueError):
        return None


def marketplace_versions(client: MlflowClient, name: str) -> dict[SourceKey, ModelVersion]:
    """The marketplace versions of `name` by the source version they came from."""
    return marketplace_versions_of(client, [name], chunk=1).get(name, {})


def marketplace_versions_of(
    client: MlflowClient, names: Iterable[str], *, chunk: int = 50
) -> dict[str, dict[SourceKey, ModelVersion]]:
    """`marketplace_versions` of many models in a few paged `name IN (...)` searches.

    A registry that refuses the IN filter (or a name no filter can quote) is searched name by name.
    """
    unique = sorted(set(names))
    found: dict[str, dict[SourceKey, ModelVersion]] = {}
    for start in range(0, len(unique), chunk):
        group = unique[start : start + chunk]
        try:
            if len(group) == 1:
                _search(client, f"name={filter_literal(group[0])}", found)
            else:
                _search(client, f"name IN ({', '.join(filter_literal(n) for n in group)})", found)
        except (MlflowException, ValueError) as exc:
            if len(group) == 1:
                if getattr(exc, "error_code", None) == "RESOURCE_DOES_NOT_EXIST":
                    continue
                raise
            for name in group:
                found.update(marketplace_versions_of(client, [name], chunk=1))
    return found


def _search(
    client: MlflowClient, filter_string: str, found: dict[str, dict[SourceKey, ModelVersion]]
) -> None:
    for key, version in _tagged_versions(client, filter_string):
        versions = found.setdefault(version.name, {})
        if key not in versions or int(version.version) < int(versions[key].version):
            versions[key] = version  # the first; settle_duplicates removes any later copy


def _tagged_versions(
    client: MlflowClient, filter_string: str
) -> Iterator[tuple[SourceKey, ModelVersion]]:
    """Every version matching `filter_string` that carries our source tags, with its source."""
    token = None
    while True:
        page = client.search_model_versions(
            filter_string=filter_string, max_results=1000, page_token=token
        )
        for result in page:
            # Some registries leave tags out of search results (Unity Catalog raises on reading
            # them): read those versions.
            version = (
                result
                if _source_key(searched(result, "tags"))
                else client.get_model_version(result.name, result.version)
            )
            key = _source_key(version.tags or {})
            if key is not None:
                yield key, version
        token = page.token
        if not token:
            return


def settle_duplicates(
    client: MlflowClient, name: str, source: SourceKey, created: ModelVersion | None = None
) -> ModelVersion | None:
    """The one marketplace version of `source` in `name`, or None.

    The registry client retries a POST whose answer was lost (allowed_methods=None), and
    create_model_version is not idempotent: a retry can create a second copy. The first copy
    is kept; later ones, which nothing points at yet, are deleted. `created` is the version the
    import call returned, if it returned.
    """
    found = {
        v.version: v
        for key, v in _tagged_versions(client, f"name={filter_literal(name)}")
        if key == source
    }
    if created is not None:
        found.setdefault(created.version, created)  # a search that lags behind still has this one
    copies = sorted(found.values(), key=lambda v: int(v.version))
    for extra in copies[1:]:
        client.delete_model_version(name, extra.version)
    return copies[0] if copies else None


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


class _ImportClient:
    """The marketplace client as mlflow-export-import's import of one version sees it, without
    the calls the library repeats: it creates (or, that failing, looks up) the experiment twice
    per version, terminates the run twice with one status, reads the run twice in a row, reads
    the run and logged model it has just created to find where their files go, and reads the
    version it has just created. Experiments are remembered in `experiments`, which one step's
    imports share; every other call goes to `client` and forgets the run and the version last
    read."""

    def __init__(self, client: MlflowClient, experiments: dict[str, Experiment]):
        self._client, self._experiments = client, experiments
        self._terminated: dict[str, str] = {}
        self._last_run: Run | None = None
        self._last_version: ModelVersion | None = None
        self.logged_models: list[LoggedModel] = []  # created by this import, in order
        self._locations: dict[str, str] = {}  # of the runs and logged models it created, by id

    def __getattr__(self, name: str):
        self._forget()
        return getattr(self.__dict__["_client"], name)

    def _forget(self) -> None:
        """Any call but a read answered here may change the run or the version."""
        self.__dict__["_last_run"] = self.__dict__["_last_version"] = None

    def create_experiment(self, name: str, artifact_location: str | None = None, tags=None) -> str:
        known = self._experiments.get(name)
        if known is not None:  # the library only wants the experiment to exist
            return known.experiment_id
        return self._client.create_experiment(name, artifact_location=artifact_location, tags=tags)

    def get_experiment(self, experiment_id: str) -> Experiment:
        known = next(
            (e for e in self._experiments.values() if e.experiment_id == experiment_id), None
        )
        return known or self._remember(self._client.get_experiment(experiment_id))

    def get_experiment_by_name(self, name: str) -> Experiment | None:
        known = self._experiments.get(name)
        return known or self._remember(self._client.get_experiment_by_name(name))

    def _remember(self, experiment: Experiment | None) -> Experiment | None:
        if experiment is not None and experiment.lifecycle_stage == "active":
            self._experiments[experiment.name] = experiment
        return experiment

    def set_terminated(
        self, run_id: str, status: str | None = None, end_time: int | None = None
    ) -> None:
        self._forget()
        status = status or "FINISHED"
        if self._terminated.get(run_id) != status:
            self._client.set_terminated(run_id, status, end_time)
            self._terminated[run_id] = status

    def get_run(self, run_id: str) -> Run:
        if self._last_run is None or self._last_run.info.run_id != run_id:
            self._last_run = self._client.get_run(run_id)
        return self._last_run

    # MLflow finds the files of a run or logged model by reading it (a request per upload or
    # listing); where this import created it, its location is known and never changes.
    def create_run(self, *args, **kwargs) -> Run:
        self._forget()
        created = self._client.create_run(*args, **kwargs)
        self._locations[created.info.run_id] = created.info.artifact_uri
        return created

    def create_logged_model(self, *args, **kwargs) -> LoggedModel:
        self._forget()
        created = self._client.create_logged_model(*args, **kwargs)
        self.logged_models.append(created)
        self._locations[created.model_id] = created.artifact_location
        return created

    def log_artifacts(self, run_id: str, local_dir: str, artifact_path: str | None = None) -> None:
        self._upload("log_artifacts", "log_artifacts", run_id, local_dir, artifact_path)

    def log_artifact(self, run_id: str, local_path: str, artifact_path: str | None = None) -> None:
        # MlflowClient uploads a folder given here under the folder's own name: left to it.
        store_method = None if os.path.isdir(local_path) else "log_artifact"
        self._upload("log_artifact", store_method, run_id, local_path, artifact_path)

    def log_model_artifacts(
        self, model_id: str, local_dir: str, artifact_path: str | None = None
    ) -> None:
        self._upload("log_model_artifacts", "log_artifacts", model_id, local_dir, artifact_path)

    def log_model_artifact(
        self, model_id: str, local_path: str, artifact_path: str | None = None
    ) -> None:
        self._upload("log_model_artifact", "log_artifact", model_id, local_path, artifact_path)

    def _upload(
        self,
        method: str,
        store_method: str | None,
        created_id: str,
        local_path: str,
        artifact_path: str | None,
    ) -> None:
        self._forget()
        files = self._files_of(created_id) if store_method else None
        if files is None:
            return getattr(self._client, method)(created_id, local_path, artifact_path)
        getattr(files, store_method)(local_path, artifact_path)

    def list_artifacts(self, run_id: str, path: str | None = None):
        self._forget()
        files = (
            None if path else self._files_of(run_id)
        )  # below the root MLflow resolves runs:/ URIs
        if files is None:
            return self._client.list_artifacts(run_id, path)
        return files.list_artifacts(None)

    def _files_of(self, created_id: str):
        """The artifact store of a run or logged model this import created, as MlflowClient
        finds it; None for any other."""
        location = self._locations.get(created_id)
        if not location:
            return None
        return files_at(location, self._client.tracking_uri)

    def create_model_version(self, *args, **kwargs) -> ModelVersion:
        self._forget()
        self._last_version = self._client.create_model_version(
            *args, **kwargs
        )  # returned once READY
        return self._last_version

    def get_model_version(self, name: str, version: str) -> ModelVersion:
        last = self._last_version
        if last is not None and (last.name, str(last.version)) == (name, str(version)):
            return last
        return self._client.get_model_version(name, version)


def import_export(
    client: MlflowClient,
    tracking_uri: str,
    *,
    export_path: Path,
    marketplace_name: str,
    experiment_name: str,
    source: SourceKey,
    checksum: str,
    import_date: dt.date,
    model_tags: dict[str, str] | None = None,
    model_description: str | None = None,
    registry_uri: str | None = None,
    experiments: dict[str, Experiment] | None = None,
) -> ModelVersion:
    """Import one verified export as a new version of `marketplace_name`, tagged with its source.

    The caller checks first that no version of the same source exists; the tags are set when
    the version is created, so a version never exists without them. A new registered model is
    created with `model_tags` and `model_description` (registration then has less to change).
    `experiments`: the marketplace's experiments this step already knows, by name.
    """
    exported = json.loads((export_path / "model.json").read_text())["mlflow"]["registered_model"]
    model_dict = {
        **exported,
        "tags": [
            {"key": k, "value": v}
            for k, v in {**utils.mk_tags_dict(exported.get("tags")), **(model_tags or {})}.items()
        ],
        "description": model_description
        if model_description is not None
        else exported.get("description"),
    }
    (source_version,) = exported["versions"]
    version_dict = copy.deepcopy(source_version)
    # Aliases and stages in the marketplace are registration's job, not the source's.
    version_dict["aliases"] = []
    version_dict["current_stage"] = "None"
    original = version_dict.get("description") or ""
    version_dict["description"] = (
        f"Imported from workspace '{source.workspace}', model '{source.model_name}', version {source.version}."
        + (f"\n\nSource description: {original}" if original else "")
    )
    version_dict["tags"] = {
        **(version_dict.get("tags") or {}),
        **source.tags(),
        TAG_CHECKSUM: checksum,
        TAG_SOURCE_RUN_ID: source_version.get("run_id", ""),
        TAG_IMPORT_DATE: import_date.isoformat(),
    }
    client = _ImportClient(client, {} if experiments is None else experiments)
    with process_tracking_uri(tracking_uri, registry_uri):
        importer = ModelImporter(mlflow_client=client, import_source_tags=True)
        model_utils.create_model(
            client, marketplace_name, model_dict, True
        )  # what _import_model does, minus permissions
        run_id = importer._import_run(str(export_path), experiment_name, version_dict)
        if not run_id:
            raise ImportError_(
                f"{source.describe()}: the export at {export_path} has no run folder"
            )
        version = _import_version(client, importer, marketplace_name, version_dict, run_id)
    if version is None:
        raise ImportError_(f"{source.describe()}: mlflow-export-import created no version")
    return version


def _import_version(
    client: _ImportClient, importer: ModelImporter, name: str, version: dict, run_id: str
) -> ModelVersion:
    """The library's ModelImporter.import_version, which reads the run again for its logged model
    and the logged model for its location: this import created that model, and knows both."""
    created = client.logged_models
    if "models" not in version["source"] or len(created) != 1:  # a run's files, or several models
        return importer.import_version(name, version, run_id)
    (logged,) = created
    return _import_model_version(
        mlflow_client=client,
        model_name=name,
        src_vr=version,
        dst_run_id=run_id,
        dst_source=logged.artifact_location,
        import_source_tags=True,
        model_id=logged.model_id,
    )


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
    uri = marketplace.tracking_uri
    with registry_errors(f"the marketplace (syncing workspace {workspace})", uri):
        known = marketplace_versions_of(
            client, [marketplace.model_name(workspace, v.model_name) for v in versions]
        )
    source_uri = redact_uri(sources.get(workspace).tracking_uri)
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
        location = row["export_path"]
        done = ImportOutcome(
            source, "already_imported", mp_name, export_location=location, checksum=row["checksum"]
        )
        held = storage.quarantine(
            workspace, version.model_name, version.version, row["checksum"], marketplace.scan_policy
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
                    marketplace,
                    storage,
                    sources,
                    source,
                    mp_name,
                    row,
                    copies,
                    day,
                    source_uri,
                    done,
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
    client,
    marketplace,
    storage,
    sources,
    source: SourceKey,
    mp_name: str,
    row: Mapping,
    copies: LocalCopies,
    day: dt.date,
    source_uri: str,
    done: ImportOutcome,
    log,
    experiments: dict[str, Experiment],
) -> None:
    """Verify, check the signature of, scan and import one export; `done` records what happened."""
    workspace, policy, location = source.workspace, marketplace.scan_policy, row["export_path"]
    # One importer per marketplace model at a time, across processes: the check for an
    # existing version and the import must not interleave.
    with storage.lock("import", mp_name) as lock:
        exists = check_name_owner(client, mp_name, workspace, source.model_name)
        with registry_errors(
            f"the marketplace (syncing workspace {workspace})", marketplace.tracking_uri
        ):
            existing = (
                marketplace_versions(client, mp_name) if exists else {}
            )  # no model, no version
        if source in existing:  # imported by a concurrent run since the search above
            done.version = existing[source]
            return
        local = copies.verified(
            location,
            expected_checksum=row["checksum"],
            identity=(workspace, source.model_name, source.version),
            signing_key=storage.signing_key,
        )
        _check_signature(
            local,
            location,
            workspace,
            sources.public_key(workspace),
            marketplace.require_signatures,
        )
        if policy.mode != "off":
            scan = scan_folder(local)
            done.files_scanned, done.scan_seconds = scan.files_scanned, scan.seconds
            if blocking := scan.blocking(policy):
                done.status, done.findings = "quarantined", [f.to_dict() for f in blocking]
                storage.record_quarantine(
                    workspace,
                    source.model_name,
                    source.version,
                    checksum=row["checksum"],
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
            marketplace,
            row["checksum"],
            local,
            mp_name,
            source,
            day,
            source_uri,
            experiments,
        )
        done.status = "imported"


def _check_signature(
    local: Path, location: str, workspace: str, public_key: str | None, required: bool
) -> None:
    """The export carries a valid signature of its workspace's key, where signatures are required."""
    if public_key is not None:
        try:
            verify_export_signature(local, public_key)
        except SignatureError as exc:
            raise SignatureError(
                f"signature refused: {str(exc).replace(str(local), location)} "
                f"(workspace {workspace}'s key)"
            ) from None
    elif required:
        raise SignatureError(
            f"signature refused: {location}: workspace {workspace} has no public key, and "
            "marketplace.require_signatures is on"
        )


def _import_once(
    client,
    marketplace,
    checksum: str,
    local: Path,
    mp_name: str,
    source: SourceKey,
    day: dt.date,
    source_uri: str,
    experiments: dict[str, Experiment],
) -> ModelVersion:
    model_tags = {
        **provenance_tags(source.workspace, source.model_name, source_uri),
        TAG_PRODUCTION_SOURCE_VERSION: str(source.version),
    }
    model_description = description(
        source.workspace, source.model_name, source.version, marketplace.marker, source_uri
    )
    try:
        returned = import_export(
            client,
            marketplace.tracking_uri,
            export_path=local,
            marketplace_name=mp_name,
            experiment_name=marketplace.experiment_name(mp_name),
            source=source,
            checksum=checksum,
            import_date=day,
            model_tags=model_tags,
            model_description=model_description,
            registry_uri=marketplace.registry_uri,
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
        "imported_at": dt.datetime.fromtimestamp(
            found.creation_timestamp / 1000, tz=dt.UTC
        ),
        "checksum": tags.get(TAG_CHECKSUM, ""),
        "run_id": found.run_id,
    }
