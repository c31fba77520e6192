"""Model names as real registries allow them, synced end to end."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow import MlflowClient

from harness.seeding import register_version
from marketplace.export_records import export_dir
from marketplace.naming import MAX_NAME_LENGTH
from marketplace.provenance import TAG_SOURCE_MODEL
from marketplace_dagster import keys
from marketplace_tests.testing.deployments import materializations, step_failure_message

ODD = [
    "with space",
    "ünïcode-模型",
    "back\\slash",
    " leading space",
    'double"quote',
    "per%cent",
    "L" * 1000,
]


@pytest.mark.parametrize(
    "odd", ODD, ids=["space", "unicode", "backslash", "leading", "dquote", "percent", "long"]
)
def test_odd_model_name_is_exported_imported_and_traceable(servers, deploy, uid, odd):
    name = f"{uid}_{odd}"
    register_version(servers["ws_a"].uri, name, stage="Production")
    deployment = deploy(
        [
            {
                "name": "odd",
                "tracking_uri": servers["ws_a"].uri,
                "production": {"stage": "Production"},
                "include": [f"{uid}_*"],
            }
        ]
    )
    result = deployment.sync("odd")
    assert result.success, step_failure_message(result)
    assert materializations(result, keys.IMPORTS)["imported"] == 1
    market = MlflowClient(servers["marketplace"].uri)
    (model,) = [
        m
        for m in market.search_registered_models(max_results=1000)
        if (m.tags or {}).get(TAG_SOURCE_MODEL) == name
    ]
    assert model.aliases.get("production") == "1"
    storage = deployment.config.storage_root
    assert all(len(part.encode()) <= 255 for p in Path(storage).rglob("*") for part in p.parts)
    assert all(
        p.resolve().is_relative_to(Path(storage).resolve()) for p in Path(storage).rglob("*")
    )
    assert len(model.name) <= MAX_NAME_LENGTH
    if (
        len(f"odd.{name}") > MAX_NAME_LENGTH
    ):  # shortened with a stable hash, still traceable by its tags
        assert (
            model.name.startswith(f"odd.{name}"[:100])
            and model.name != f"odd.{name}"[:MAX_NAME_LENGTH]
        )
    again = deployment.sync("odd")
    assert again.success and materializations(again, keys.IMPORTS)["already_imported"] == 1


def test_name_the_export_library_cannot_handle_is_skipped_clearly_and_the_rest_synced(
    servers, deploy, uid
):
    register_version(servers["ws_a"].uri, f"{uid}_it's", stage="Production")
    register_version(servers["ws_a"].uri, f"{uid}_fine", stage="Production")
    deployment = deploy(
        [
            {
                "name": "quotes",
                "tracking_uri": servers["ws_a"].uri,
                "production": {"stage": "Production"},
                "include": [f"{uid}_*"],
            }
        ]
    )
    result = deployment.sync("quotes")
    assert result.success, step_failure_message(result)
    reason = materializations(result, keys.EXPORTS)["skipped_versions"][f"quotes/{uid}_it's v1"]
    assert "contains a single quote" in reason
    # The partition's other model is synced; nothing of the refused one is written.
    assert MlflowClient(servers["marketplace"].uri).get_model_version_by_alias(
        f"quotes.{uid}_fine", "production"
    )
    assert not export_dir(deployment.config.storage_root, "quotes", f"{uid}_it's", 1).exists()
