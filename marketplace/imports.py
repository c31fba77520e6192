"""Importing a verified export into the marketplace registry, once per source version."""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
import json
import re
from dataclasses import dataclass
from collections.abc import Iterable, Iterator
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow_export_import.common import model_utils, utils
from mlflow_export_import.model.import_model import ModelImporter

from marketplace.registry import filter_literal, process_tracking_uri, searched

TAG_SOURCE_WORKSPACE = "marketplace.source_workspace"
TAG_SOURCE_MODEL = "marketplace.source_model"
TAG_SOURCE_VERSION = "marketplace.source_version"
TAG_CHECKSUM = "marketplace.checksum"
TAG_SOURCE_RUN_ID = "marketplace.source_run_id"
TAG_IMPORT_DATE = "marketplace.import_date"


class ImportError_(RuntimeError):
    """An import that failed or would break the marketplace's invariants."""


class NameCollision(ImportError_):
    """Two source models map to one marketplace name."""


@dataclass(frozen=True)
class SourceKey:
    workspace: str
    model_name: str
    version: int

    def tags(self) -> dict[str, str]:
        return {
            TAG_SOURCE_WORKSPACE: self.workspace,
            TAG_SOURCE_MODEL: self.model_name,
            TAG_SOURCE_VERSION: str(self.version),
        }

    def describe(self) -> str:
        return f"{self.workspace}/{self.model_name} v{self.version}"


# MLflow limits experiment names to 500 characters (model names have no limit in MLflow, but
# registries and databases do); longer names keep their start and end in a stable hash.
MAX_NAME_LENGTH = 500


def shorten(name: str, limit: int = MAX_NAME_LENGTH) -> str:
    """`name`, or its first characters and a hash of the whole when longer than `limit`: stable,
    and two long names that differ anywhere never collide."""
    if len(name) <= limit:
        return name
    return f"{name[: limit - 17]}-{hashlib.sha256(name.encode()).hexdigest()[:16]}"


# Unity Catalog object names: no '.', space, '/' or control characters, at most 255 characters,
# stored in lower case. Kept to letters, digits, '_' and '-' here.
UC_NAME_LIMIT = 255


def uc_component(name: str) -> str:
    """`name` as one Unity Catalog name level: unchanged if already valid, else cleaned and
    suffixed with a stable hash of the original (so two names never clean into one)."""
    cleaned = re.sub(r"[^a-z0-9_-]", "_", name.lower())
    if cleaned != name or len(cleaned) > UC_NAME_LIMIT:
        cleaned = f"{cleaned[:UC_NAME_LIMIT - 17]}_{hashlib.sha256(name.encode()).hexdigest()[:16]}"
    return cleaned


def render_name(template: str, workspace: str, model: str, *, unity_catalog: bool = False) -> str:
    if unity_catalog:
        # The configuration checked that the template gives catalog.schema.model.
        return template.format(workspace=uc_component(workspace), model=uc_component(model))
    return shorten(template.format(workspace=workspace, model=model))


def _source_key(tags: dict[str, str]) -> SourceKey | None:
    try:
        return SourceKey(tags[TAG_SOURCE_WORKSPACE], tags[TAG_SOURCE_MODEL], int(tags[TAG_SOURCE_VERSION]))
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


def _search(client: MlflowClient, filter_string: str, found: dict[str, dict[SourceKey, ModelVersion]]) -> None:
    for key, version in _tagged_versions(client, filter_string):
        versions = found.setdefault(version.name, {})
        if key not in versions or int(version.version) < int(versions[key].version):
            versions[key] = version  # the first; settle_duplicates removes any later copy


def _tagged_versions(client: MlflowClient, filter_string: str) -> Iterator[tuple[SourceKey, ModelVersion]]:
    """Every version matching `filter_string` that carries our source tags, with its source."""
    token = None
    while True:
        page = client.search_model_versions(filter_string=filter_string, max_results=1000, page_token=token)
        for result in page:
            # Some registries leave tags out of search results (Unity Catalog raises on reading
            # them): read those versions.
            version = result if _source_key(searched(result, "tags")) else client.get_model_version(result.name, result.version)
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
    found = {v.version: v for key, v in _tagged_versions(client, f"name={filter_literal(name)}") if key == source}
    if created is not None:
        found.setdefault(created.version, created)  # a search that lags behind still has this one
    copies = sorted(found.values(), key=lambda v: int(v.version))
    for extra in copies[1:]:
        client.delete_model_version(name, extra.version)
    return copies[0] if copies else None


def check_name_owner(client: MlflowClient, name: str, workspace: str, model: str) -> None:
    """Refuse to import into a marketplace model that belongs to another source model."""
    try:
        registered = client.get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return
        raise
    tags = registered.tags or {}
    owner = (tags.get(TAG_SOURCE_WORKSPACE), tags.get(TAG_SOURCE_MODEL))
    if owner != (None, None) and owner != (workspace, model):
        raise NameCollision(
            f"marketplace model {name!r} already holds {owner[0]}/{owner[1]}; "
            f"{workspace}/{model} maps to the same name: change marketplace.name_template"
        )


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
) -> ModelVersion:
    """Import one verified export as a new version of `marketplace_name`, tagged with its source.

    The caller checks first that no version of the same source exists; the tags are set when
    the version is created, so a version never exists without them. A new registered model is
    created with `model_tags` and `model_description` (registration then has less to change).
    """
    exported = json.loads((export_path / "model.json").read_text())["mlflow"]["registered_model"]
    model_dict = {
        **exported,
        "tags": [
            {"key": k, "value": v}
            for k, v in {**utils.mk_tags_dict(exported.get("tags")), **(model_tags or {})}.items()
        ],
        "description": model_description if model_description is not None else exported.get("description"),
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
    with process_tracking_uri(tracking_uri, registry_uri):
        importer = ModelImporter(mlflow_client=client, import_source_tags=True)
        model_utils.create_model(client, marketplace_name, model_dict, True)  # what _import_model does, minus permissions
        run_id = importer._import_run(str(export_path), experiment_name, version_dict)
        if not run_id:
            raise ImportError_(f"{source.describe()}: the export at {export_path} has no run folder")
        version = importer.import_version(marketplace_name, version_dict, run_id)
    if version is None:
        raise ImportError_(f"{source.describe()}: mlflow-export-import created no version")
    return version
