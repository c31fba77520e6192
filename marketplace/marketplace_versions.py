"""The marketplace's versions by the source version each is the copy of (the source tags an
import sets when it creates a version), found in a few paged searches, and at most one copy of
each source version kept."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from marketplace.provenance import (
    TAG_SOURCE_MODEL,
    TAG_SOURCE_VERSION,
    TAG_SOURCE_WORKSPACE,
    SourceKey,
)
from marketplace.registry import filter_literal, searched


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
