"""What one export says about its model version, read from its small files: mlflow-export-import's
model.json and run.json, the MLmodel file and the manifest (never the model's weights).

Everything here came from a source registry and is untrusted: callers escape it where they show it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import yaml

from marketplace.layout import export_key
from marketplace.manifest import MANIFEST_NAME, Manifest, Tree, read_manifest
from marketplace.registry import MARKER_PREFIX
from marketplace.storage import Storage

_MARKER = re.compile(re.escape(MARKER_PREFIX) + r"\d{4}-\d{2}-\d{2}, old description: ")


def parse_yaml(text: str | bytes):
    """YAML (an MLmodel) read safely, with LibYAML's loader where PyYAML has it: a tenth of the
    time."""
    return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def strip_marker(text: str | None) -> str:
    """A source description without the seed's `Exported Already On <date>, old description: `."""
    text = text or ""
    while match := _MARKER.match(text):
        text = text[match.end() :]
    return text.strip()


@dataclass(frozen=True)
class ExportFacts:
    """What one export says about its model version."""

    model_description: str = ""
    version_description: str = ""
    source_tags: Mapping[str, str] = field(default_factory=dict)
    run_id: str = ""
    run_user: str = ""
    logged_model_id: str = ""
    metrics: Mapping[str, float] = field(default_factory=dict)
    params: Mapping[str, str] = field(default_factory=dict)
    flavors: tuple[str, ...] = ()
    signature: Mapping[str, list] = field(
        default_factory=dict
    )  # {"inputs": [...], "outputs": [...]}
    has_input_example: bool = False
    python_version: str = ""
    requirements: tuple[str, ...] = ()
    size_bytes: int = 0
    exported_at: str = ""

    @property
    def owner(self) -> str:
        """The source registered model's `owner` tag, else the user who ran the source run."""
        return self.source_tags.get("owner") or self.run_user


def _json(storage: Storage, key: str) -> dict:
    try:
        data = json.loads(storage.read(key) or b"{}")
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _signature_columns(text) -> list[dict]:
    try:
        columns = json.loads(text) if isinstance(text, str) else []
    except ValueError:
        return []
    return (
        [
            {
                "name": str(c.get("name", "")),
                "type": str(c.get("type", c.get("tensor-spec", {}).get("dtype", ""))),
                "required": bool(c.get("required", True)),
            }
            for c in columns
            if isinstance(c, dict)
        ]
        if isinstance(columns, list)
        else []
    )


def read_export_facts(storage: Storage, export_key: str, manifest: Manifest) -> ExportFacts:
    """The facts of the export at `export_key` (small files only: never the model's weights)."""
    model = _json(storage, f"{export_key}/model.json").get("mlflow", {}).get("registered_model", {})
    versions = [
        v for v in model.get("versions", []) if str(v.get("version")) == str(manifest.version)
    ]
    version = versions[0] if versions else {}
    run = (
        _json(storage, f"{export_key}/{manifest.run_id}/run.json").get("mlflow", {})
        if manifest.run_id
        else {}
    )
    mlmodel_key = next(
        (k for k in sorted(manifest.files) if k.endswith("/artifacts/MLmodel")), None
    )
    try:
        mlmodel = (
            parse_yaml(storage.read(f"{export_key}/{mlmodel_key}") or b"") if mlmodel_key else {}
        )
    except yaml.YAMLError:
        mlmodel = {}
    mlmodel = mlmodel if isinstance(mlmodel, dict) else {}
    artifacts = mlmodel_key.rsplit("/", 1)[0] if mlmodel_key else ""
    requirements = storage.read(f"{export_key}/{artifacts}/requirements.txt") if artifacts else None
    flavors = mlmodel.get("flavors") if isinstance(mlmodel.get("flavors"), dict) else {}
    signature = mlmodel.get("signature") if isinstance(mlmodel.get("signature"), dict) else {}
    metrics = run.get("metrics") if isinstance(run.get("metrics"), dict) else {}
    tags = _tag_dict(model.get("tags"))
    return ExportFacts(
        model_description=strip_marker(model.get("description")),
        version_description=strip_marker(version.get("description")),
        source_tags={str(k): str(v) for k, v in tags.items()},
        run_id=manifest.run_id,
        run_user=str(
            run.get("info", {}).get("user_id") or run.get("tags", {}).get("mlflow.user") or ""
        ),
        logged_model_id=str(mlmodel.get("model_id") or ""),
        metrics={str(k): _number(v) for k, v in metrics.items() if _number(v) is not None},
        params={str(k): str(v) for k, v in (run.get("params") or {}).items()},
        flavors=tuple(sorted(str(f) for f in flavors)),
        signature={
            "inputs": _signature_columns(signature.get("inputs")),
            "outputs": _signature_columns(signature.get("outputs")),
        },
        has_input_example=bool(mlmodel.get("saved_input_example_info")),
        python_version=str(flavors.get("python_function", {}).get("python_version") or ""),
        requirements=tuple(
            line.strip()
            for line in (requirements or b"").decode(errors="replace").splitlines()
            if line.strip() and not line.startswith("#")
        ),
        size_bytes=sum(
            int(f.get("size", 0)) for name, f in manifest.files.items() if name != MANIFEST_NAME
        ),
        exported_at=manifest.exported_at,
    )


def export_facts(
    storage: Storage, workspace: str, model_name: str, version: int
) -> tuple[ExportFacts, str]:
    """A version's export facts and its manifest checksum; raises if the export cannot be read."""
    key = export_key(workspace, model_name, version)
    manifest, checksum = read_manifest(Tree(storage, key))
    return read_export_facts(storage, key, manifest), checksum


def _tag_dict(tags) -> dict:
    """Tags as a mapping, whether exported as one or as REST's list of {key, value}."""
    if isinstance(tags, list):
        return {t.get("key"): t.get("value") for t in tags if isinstance(t, dict) and t.get("key")}
    return tags if isinstance(tags, dict) else {}


def _number(value) -> float | None:
    # run.json holds the latest value of each metric (a number) or its history (a list).
    if isinstance(value, list):
        value = value[-1].get("value") if value and isinstance(value[-1], dict) else None
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
