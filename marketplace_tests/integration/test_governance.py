"""The promotion gate against real MLflow servers, real Dagster runs and the sensor.

A version worse than production on the reference data is imported but not promoted, with its
reasons on the version; a better one is promoted; a version without a required signature is
held; under manual approval nothing moves until a reviewer approves, and a rejection never moves.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from harness.seeding import log_model, sklearn_requirements
from marketplace import gate
from marketplace_dagster import keys
from marketplace_tests.testing.deployments import materializations, step_failure_message
from marketplace_tests.testing.driving import Cli
from marketplace_tests.testing.support import poll_all_next, table_rows

ALIAS = "production"
THRESHOLDS = {
    "roc_auc": {"min_relative_change": 0.0, "greater_is_better": True},
    "accuracy_score": {"threshold": 0.6, "greater_is_better": True},
}


def fraud_frame(rows: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Fraud depends on f0 and f1; f2 and f3 are noise."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(rng.normal(size=(rows, 4)), columns=["f0", "f1", "f2", "f3"])
    frame["label"] = (frame.f0 + 0.9 * frame.f1 + 0.3 * rng.normal(size=rows) > 0).astype(int)
    return frame


def register_classifier(
    uri: str,
    name: str,
    quality: str,
    *,
    signature: bool = True,
    owner: str | None = "fraud-team",
    stage: str = "Production",
) -> str:
    """A logistic regression over f0..f3: `good` sees f0 only, `better` f0 and f1, `bad` learned
    from shuffled labels. Registered as a new version in `stage`."""
    from sklearn.linear_model import LogisticRegression

    train = fraud_frame(seed=1)
    features = train[["f0", "f1", "f2", "f3"]].copy()
    labels = train["label"]
    if quality == "good":
        features["f1"] = 0.0
    elif quality == "bad":
        labels = labels.sample(frac=1.0, random_state=3).reset_index(drop=True)
    model = LogisticRegression().fit(features, labels)
    client = MlflowClient(uri)
    info = log_model(
        uri,
        model,
        experiment=f"/tests/{name}",
        example=features.head(3) if signature else None,
        registered_model_name=name,
        requirements=sklearn_requirements(),
    )
    version = str(info.registered_model_version)
    client.update_registered_model(name, description="Scores card transactions for fraud.")
    if owner:
        client.set_registered_model_tag(name, "owner", owner)
    client.transition_model_version_stage(name, version, stage, archive_existing_versions=True)
    return version


@pytest.fixture
def gated(servers, deploy, uid, tmp_path):
    """A deployment of one stage workspace whose models go through `gate` (given as keyword
    arguments)."""
    reference = tmp_path / "external" / "evaluation" / "fraud.parquet"
    reference.parent.mkdir(parents=True)
    fraud_frame(rows=10_000, seed=7).to_parquet(reference)

    def make(**gate_settings):
        workspace = {
            "name": f"g{uid}",
            "tracking_uri": servers["ws_a"].uri,
            "production": {"stage": "Production"},
            "include": [f"{uid}_*"],
        }
        return deploy([workspace], gate=gate_settings)

    return make


def evaluation(
    uid: str, thresholds: dict = THRESHOLDS, data: str = "evaluation/fraud.parquet"
) -> list[dict]:
    return [
        {
            "models": [f"g{uid}.{uid}_fraud*"],
            "data": data,
            "targets": "label",
            "model_type": "classifier",
            "thresholds": thresholds,
        }
    ]


def changes(deployment, name: str) -> list[str]:
    rows = sorted(
        (r for r in table_rows(deployment, "production_history") if r["marketplace_name"] == name),
        key=lambda r: r["sequence"],
    )
    return [r["change"] for r in rows]


def aliased(client: MlflowClient, name: str) -> str | None:
    return client.get_registered_model(name).aliases.get(ALIAS)


def test_a_worse_version_is_held_with_reasons_and_a_better_one_is_promoted_through_the_cli(
    servers, gated, uid, tmp_path
):
    source, market = servers["ws_a"].uri, MlflowClient(servers["marketplace"].uri)
    name, model = f"g{uid}.{uid}_fraud", f"{uid}_fraud"
    deployment = gated(require=["signature", "owner"], evaluation=evaluation(uid))
    cli = Cli(deployment, tmp_path)

    register_classifier(source, model, "good")
    metadata = cli.sync(f"g{uid}")
    assert aliased(market, name) == "1"  # the first version: only absolute thresholds apply
    first = market.get_model_version(name, "1")
    assert first.tags[gate.TAG_GATE] == "passed" and gate.TAG_HELD not in first.tags
    # The evaluation's metrics are logged to the imported run, for the MLflow UI to compare.
    assert market.get_run(first.run_id).data.metrics["roc_auc"] > 0.7

    register_classifier(source, model, "bad")
    metadata = cli.sync(f"g{uid}")
    assert aliased(market, name) == "1", "a worse version must not move production"
    held = market.get_model_version(name, "2")
    assert held.tags[gate.TAG_GATE] == "failed" and held.tags[gate.TAG_HELD] == "true"
    reasons = held.tags[gate.TAG_GATE_REASONS]
    assert (
        "roc_auc" in reasons
        and "baseline model roc_auc" in reasons
        and "candidate model roc_auc" in reasons
    )
    assert market.get_run(held.run_id).data.metrics["roc_auc"] < 0.6
    assert (
        metadata["held_by_gate"] == 1
        and "failed the gate" in metadata["waiting"][f"g{uid}/{model}"]
    )
    card = market.get_registered_model(name).description
    assert "Held by the promotion gate" in card and "source version 2" in card and "roc_auc" in card
    assert changes(deployment, name) == ["promoted"]

    # The same version is not evaluated again: its verdict stands under the same rules.
    metadata = cli.sync(f"g{uid}")
    assert metadata["registry_changes"] == 0 and aliased(market, name) == "1"

    register_classifier(source, model, "better")
    cli.sync(f"g{uid}")
    assert aliased(market, name) == "3"
    promoted = market.get_model_version(name, "3")
    assert promoted.tags[gate.TAG_GATE] == "passed"
    assert (
        gate.TAG_HELD not in market.get_model_version(name, "2").tags
    )  # no longer its source's production
    assert changes(deployment, name) == ["promoted", "promoted"]


def test_a_version_without_a_required_signature_is_held_and_the_catalog_says_so(
    servers, gated, uid
):
    market = MlflowClient(servers["marketplace"].uri)
    name, model = f"g{uid}.{uid}_nosig", f"{uid}_nosig"
    deployment = gated(require=["signature"])
    register_classifier(servers["ws_a"].uri, model, "good", signature=False)
    result = deployment.sync(f"g{uid}")
    assert result.success, step_failure_message(result)
    assert aliased(market, name) is None
    version = market.get_model_version(name, "1")  # imported all the same
    assert (
        version.tags[gate.TAG_GATE] == "failed"
        and "signature" in version.tags[gate.TAG_GATE_REASONS]
    )
    card = market.get_registered_model(name).description
    assert "not in production yet" in card and "signature" in card
    checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert not checks["gate_passed"].passed and name in checks["gate_passed"].description
    assert checks["gate_passed"].severity.value == "WARN"
    deployment.refresh_catalog()
    row = next(r for r in table_rows(deployment, "catalog") if r["marketplace_name"] == name)
    assert row["status"] == "held" and "signature" in row["held"]


def test_manual_approval_waits_for_a_reviewer_and_the_sensor_runs_the_move(servers, gated, uid):
    import dagster as dg

    source, market = servers["ws_a"].uri, MlflowClient(servers["marketplace"].uri)
    name, model, ws = f"g{uid}.{uid}_fraud", f"{uid}_fraud", f"g{uid}"
    deployment = gated(approval="manual")
    sensor = deployment.defs.resolve_sensor_def("production_version_sensor")
    cursor = None

    def tick():
        nonlocal cursor
        # An approval is seen by the next full poll of every workspace (webhooks come from sources).
        result = sensor(
            dg.build_sensor_context(instance=deployment.instance, cursor=poll_all_next(cursor))
        )
        cursor = result.cursor
        return [r.tags["marketplace/pending_versions"] for r in result.run_requests]

    register_classifier(source, model, "good")
    assert tick() == [f"{model}@1"]
    result = deployment.sync(ws)
    assert result.success, step_failure_message(result)
    assert aliased(market, name) is None
    version = market.get_model_version(name, "1")
    assert (
        version.tags[gate.TAG_APPROVAL] == "pending"
        and gate.TAG_APPROVAL_REQUESTED_AT in version.tags
    )
    checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert (
        not checks["approvals_pending"].passed
        and f"{name} v1" in checks["approvals_pending"].description
    )
    assert "waiting" in checks["approvals_pending"].description
    assert tick() == []  # held: not asked for again

    market.set_model_version_tag(name, "1", gate.TAG_APPROVAL, "approved")
    assert tick() == []  # an approval must say who approved
    assert deployment.sync(ws).success and aliased(market, name) is None
    assert (
        f"approved without {gate.TAG_APPROVED_BY}" in market.get_registered_model(name).description
    )
    market.set_model_version_tag(name, "1", gate.TAG_APPROVED_BY, "ann@example.com")
    assert tick() == [f"{model}@1 (approved)"]
    result = deployment.sync(ws)
    assert result.success, step_failure_message(result)
    assert aliased(market, name) == "1"
    assert gate.TAG_HELD not in market.get_model_version(name, "1").tags
    assert tick() == []
    checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert checks["approvals_pending"].passed

    register_classifier(source, model, "better")
    assert tick() == [f"{model}@2"]
    assert deployment.sync(ws).success
    market.set_model_version_tag(name, "2", gate.TAG_APPROVAL, "rejected")
    market.set_model_version_tag(name, "2", gate.TAG_APPROVED_BY, "bo@example.com")
    assert tick() == []  # rejected: final
    result = deployment.sync(ws)
    assert result.success and aliased(market, name) == "1"
    assert "rejected by bo@example.com" in market.get_registered_model(name).description
    checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert not checks["gate_passed"].passed and "rejected" in checks["gate_passed"].description


def test_reference_data_that_does_not_exist_fails_the_partition_naming_the_key(servers, gated, uid):
    deployment = gated(evaluation=evaluation(uid, data="evaluation/missing.parquet"))
    register_classifier(servers["ws_a"].uri, f"{uid}_fraud", "good")
    result = deployment.sync(f"g{uid}")
    assert not result.success
    message = step_failure_message(result)
    assert "gate.evaluation[0].data" in message and "evaluation/missing.parquet" in message
    # Imported all the same; nothing moved.
    assert materializations(result, keys.IMPORTS)["imported"] == 1
    assert (
        MlflowClient(servers["marketplace"].uri)
        .get_registered_model(f"g{uid}.{uid}_fraud")
        .aliases.get(ALIAS)
        is None
    )


def test_reference_data_as_a_delta_table_is_read(servers, gated, uid, tmp_path, monkeypatch):
    from deltalake import write_deltalake
    from mlflow.tracking import fluent

    write_deltalake(
        str(tmp_path / "external" / "evaluation" / "fraud_delta"), fraud_frame(rows=3000, seed=9)
    )
    deployment = gated(evaluation=evaluation(uid, data="evaluation/fraud_delta"))
    register_classifier(servers["ws_a"].uri, f"{uid}_fraud", "good")
    # The process has another experiment active (as after any mlflow.set_experiment): MLflow would
    # refuse to resume the imported run for the evaluation unless the gate sets that aside.
    monkeypatch.setattr(fluent, "_active_experiment_id", "424242")
    assert deployment.sync(f"g{uid}").success
    version = MlflowClient(servers["marketplace"].uri).get_model_version(f"g{uid}.{uid}_fraud", "1")
    assert version.tags[gate.TAG_GATE] == "passed", version.tags.get(gate.TAG_GATE_REASONS)
    assert fluent._active_experiment_id == "424242"  # put back
