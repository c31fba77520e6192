"""A marketplace model's production marker in the registry: where it points now, and bringing it
(with the model's status tags, description and version tags) to a target version or to retired.

These are registration's side effects, one model at a time; what to move where is decided in
`lifecycle`.
"""

from __future__ import annotations

import datetime as dt
import warnings
from collections.abc import Callable, Iterable, Mapping

from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion, RegisteredModel
from mlflow.exceptions import MlflowException

from marketplace.lifecycle import Wanted
from marketplace.provenance import (
    TAG_PRODUCTION_SOURCE_VERSION,
    TAG_SOURCE_RUN_ID,
    Marker,
    SourceKey,
    description,
    provenance_tags,
)

STATUS_ACTIVE = "active"
STATUS_RETIRED = "retired"
TAG_STATUS = "marketplace.status"
TAG_STATUS_CHANGED_AT = "marketplace.status_changed_at"
# The source's production version that the scan blocked, while production stays on the last safe
# copy.
TAG_QUARANTINED_VERSION = "marketplace.quarantined_version"

PRODUCTION_STAGE = "Production"
ARCHIVED_STAGE = "Archived"

# A marketplace version with the source version it is the copy of.
Target = tuple[SourceKey, ModelVersion]
# (status, status since) -> the card's markdown, or None for the plain description.
CardMaker = Callable[[str, str], "str | None"]


def registered_model(client: MlflowClient, name: str) -> RegisteredModel | None:
    """The marketplace model `name`, or None where the registry has no such model."""
    try:
        return client.get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND"):
            return None
        raise


def production_version(model, versions: Iterable[ModelVersion], marker: Marker) -> str | None:
    """The marketplace version production points at now."""
    if marker.has_aliases:
        aliased = (getattr(model, "aliases", None) or {}).get(marker.alias)
        return str(aliased) if aliased is not None else None
    in_stage = [v.version for v in versions if v.current_stage == PRODUCTION_STAGE]
    return max(in_stage, key=int) if in_stage else None


def marketplace_production(
    client: MlflowClient,
    marker: Marker,
    names: Iterable[str],
    known: Mapping[str, Mapping[SourceKey, ModelVersion]],
) -> dict[str, int | None]:
    """For each marketplace model, the source version whose copy its production marker points at
    (None: no marker, or no such model)."""
    found: dict[str, int | None] = {}
    for name in names:
        versions = known.get(name, {})
        model = registered_model(client, name)
        current = production_version(model, versions.values(), marker) if model else None
        found[name] = (
            next((k.version for k, v in versions.items() if str(v.version) == current), None)
            if current is not None
            else None
        )
    return found


def mark_quarantined(client: MlflowClient, name: str, version: int) -> int:
    """Tag a marketplace model whose source production version is quarantined. Changes made."""
    model = registered_model(client, name)
    if model is None:
        return 0  # never in the marketplace: nothing to tag
    if (model.tags or {}).get(TAG_QUARANTINED_VERSION) == str(version):
        return 0
    client.set_registered_model_tag(name, TAG_QUARANTINED_VERSION, str(version))
    return 1


def move_marker(
    client: MlflowClient,
    marker: Marker,
    name: str,
    model: RegisteredModel,
    versions: Mapping[SourceKey, ModelVersion],
    target: Target | None,
) -> int:
    """Point model `name`'s alias and Production stage at `target` (None: take them away).
    Changes made."""
    changes = 0
    if marker.has_aliases:
        aliased = (getattr(model, "aliases", None) or {}).get(marker.alias)
        if target is not None and str(aliased) != str(target[1].version):
            client.set_registered_model_alias(name, marker.alias, target[1].version)
            changes += 1
        elif target is None and aliased is not None:
            client.delete_registered_model_alias(name, marker.alias)
            changes += 1
    if marker.has_stages:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # stages are deprecated, still served
            if target is not None and target[1].current_stage != PRODUCTION_STAGE:
                client.transition_model_version_stage(
                    name, target[1].version, PRODUCTION_STAGE, archive_existing_versions=True
                )
                changes += 1
            elif target is None:
                for version in versions.values():
                    if version.current_stage == PRODUCTION_STAGE:
                        client.transition_model_version_stage(name, version.version, ARCHIVED_STAGE)
                        changes += 1
    return changes


def apply_target(
    client: MlflowClient,
    marker: Marker,
    item: Wanted,
    model: RegisteredModel,
    versions: Mapping[SourceKey, ModelVersion],
    target: Target | None,
    *,
    workspace: str,
    source_uri: str,
    now: dt.datetime,
    card: CardMaker | None = None,
) -> int:
    """Bring `item`'s marketplace model to `target` (None: retired): marker, stage, status,
    provenance and its description (the model card, given `card`). Changes made."""
    name, model_name, tags = item.marketplace_name, item.model_name, model.tags or {}
    changes = move_marker(client, marker, name, model, versions, target)
    status = STATUS_ACTIVE if target is not None else STATUS_RETIRED
    wanted_tags = {**provenance_tags(workspace, model_name, source_uri), TAG_STATUS: status}
    if target is not None:
        wanted_tags[TAG_PRODUCTION_SOURCE_VERSION] = str(target[0].version)
    if tags.get(TAG_STATUS) != status or TAG_STATUS_CHANGED_AT not in tags:
        wanted_tags[TAG_STATUS_CHANGED_AT] = now.isoformat(timespec="seconds")
    since = wanted_tags.get(TAG_STATUS_CHANGED_AT, tags.get(TAG_STATUS_CHANGED_AT))
    for tag, value in wanted_tags.items():
        if tags.get(tag) != value:
            client.set_registered_model_tag(name, tag, value)
            changes += 1
    text = card(status, since) if card is not None else None
    if text is None:
        text = description(
            workspace,
            model_name,
            target[0].version if target else None,
            marker,
            source_uri,
            retired_since=since,
        )
    if model.description != text:
        client.update_registered_model(name, description=text)
        changes += 1
    if TAG_QUARANTINED_VERSION in tags:
        client.delete_registered_model_tag(name, TAG_QUARANTINED_VERSION)
        changes += 1
    if target is not None:
        key, version = target
        version_tags = {
            **key.tags(),
            TAG_SOURCE_RUN_ID: (version.tags or {}).get(TAG_SOURCE_RUN_ID, ""),
        }
        for tag, value in version_tags.items():
            if value and (version.tags or {}).get(tag) != value:
                client.set_model_version_tag(name, version.version, tag, value)
                changes += 1
    return changes
