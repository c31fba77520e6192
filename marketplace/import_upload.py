"""One verified export uploaded into the marketplace as a new model version, through
mlflow-export-import's import: its run, its logged model's files and the version, tagged with
its source when it is created. The library sees a client that skips the calls it repeats."""

from __future__ import annotations

import copy
import datetime as dt
import json
import os
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities import Experiment, LoggedModel, Run
from mlflow.entities.model_registry import ModelVersion
from mlflow_export_import.common import model_utils, utils
from mlflow_export_import.model.import_model import ModelImporter
from mlflow_export_import.model_version.import_model_version import _import_model_version

from marketplace.errors import MarketplaceError
from marketplace.provenance import TAG_CHECKSUM, TAG_IMPORT_DATE, TAG_SOURCE_RUN_ID, SourceKey
from marketplace.registry import files_at, process_tracking_uri


class ImportError_(MarketplaceError, RuntimeError):
    """An import that failed or would break the marketplace's invariants."""


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
        f"Imported from workspace '{source.workspace}', model '{source.model_name}', version "
        f"{source.version}." + (f"\n\nSource description: {original}" if original else "")
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
