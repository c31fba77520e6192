"""The names the marketplace gives to what it creates: registered models and experiments, from
`marketplace.name_template`, kept within what MLflow, its databases and Unity Catalog accept."""

from __future__ import annotations

import hashlib
import re

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
        cleaned = (
            f"{cleaned[: UC_NAME_LIMIT - 17]}_{hashlib.sha256(name.encode()).hexdigest()[:16]}"
        )
    return cleaned


def render_name(template: str, workspace: str, model: str, *, unity_catalog: bool = False) -> str:
    if unity_catalog:
        # The configuration checked that the template gives catalog.schema.model.
        return template.format(workspace=uc_component(workspace), model=uc_component(model))
    return shorten(template.format(workspace=workspace, model=model))
