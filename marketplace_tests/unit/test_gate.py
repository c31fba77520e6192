"""The promotion gate's decisions and configuration, without servers."""

from __future__ import annotations

import datetime as dt

import pytest
import yaml
from mlflow.entities.model_registry import ModelVersion, ModelVersionTag

from marketplace import evaluation, gate
from marketplace.config import ConfigError, EvaluationRule, GateConfig, load_config
from marketplace.config.gate import REQUIREMENTS
from marketplace.export_facts import ExportFacts

NOW = dt.datetime(2026, 12, 3, 12, 0, tzinfo=dt.UTC)
SIGNATURE = {"inputs": [{"name": "x", "type": "double", "required": True}], "outputs": []}


def facts(**overrides) -> ExportFacts:
    values = {
        "signature": SIGNATURE,
        "has_input_example": True,
        "model_description": "Scores fraud.",
        "source_tags": {"owner": "fraud-team"},
    }
    return ExportFacts(**{**values, **overrides})


def rule(**thresholds) -> EvaluationRule:
    return EvaluationRule(
        models=["dev01.*"],
        data="e.parquet",
        targets="label",
        model_type="classifier",
        thresholds=thresholds
        or {"roc_auc": {"min_relative_change": 0.0, "greater_is_better": True}},
    )


def test_complete_metadata_is_missing_nothing():
    assert gate.missing_metadata(REQUIREMENTS, facts()) == []


@pytest.mark.parametrize(
    ("requirement", "lacking", "said"),
    [
        ("signature", {"signature": {}}, "signature"),
        ("input_example", {"has_input_example": False}, "input example"),
        ("description", {"model_description": "  ", "version_description": ""}, "description"),
        (
            "owner",
            {"source_tags": {}, "run_user": "someone"},
            "`owner` tag",
        ),  # the run's user is no owner
    ],
)
def test_each_missing_requirement_is_named(requirement, lacking, said):
    reasons = gate.missing_metadata([requirement], facts(**lacking))
    assert len(reasons) == 1 and requirement in reasons[0] and said in reasons[0]
    assert gate.missing_metadata([], facts(**lacking)) == []  # not required: not a reason


def test_a_version_description_counts_as_a_description():
    assert (
        gate.missing_metadata(
            ["description"], facts(model_description="", version_description="v2")
        )
        == []
    )


def test_a_failed_verdict_holds_whatever_the_approval():
    verdict = gate.Verdict(False, ("roc_auc fell",))
    for approval, tags in (
        ("none", {}),
        ("manual", {gate.TAG_APPROVAL: "approved", gate.TAG_APPROVED_BY: "ann"}),
    ):
        admission = gate.admit(verdict, approval, tags, NOW)
        assert not admission.move and "roc_auc fell" in admission.why


def test_without_manual_approval_a_pass_moves():
    assert gate.admit(gate.Verdict(True), "none", {}, NOW).move


def test_manual_approval_waits_then_moves_only_when_approved_by_someone():
    first = gate.admit(gate.Verdict(True), "manual", {}, NOW)
    assert not first.move and "awaits approval" in first.why
    assert first.tags == {
        gate.TAG_APPROVAL: "pending",
        gate.TAG_APPROVAL_REQUESTED_AT: NOW.isoformat(timespec="seconds"),
    }
    # The second look keeps the first request's time and writes nothing.
    again = gate.admit(gate.Verdict(True), "manual", first.tags, NOW + dt.timedelta(hours=2))
    assert (
        not again.move
        and again.tags == {}
        and first.tags[gate.TAG_APPROVAL_REQUESTED_AT] in again.why
    )
    anonymous = gate.admit(gate.Verdict(True), "manual", {gate.TAG_APPROVAL: "approved"}, NOW)
    assert not anonymous.move and gate.TAG_APPROVED_BY in anonymous.why
    signed = {gate.TAG_APPROVAL: " Approved ", gate.TAG_APPROVED_BY: "ann@example.com"}
    assert gate.admit(gate.Verdict(True), "manual", signed, NOW).move


def test_rejected_is_final_and_an_unknown_value_is_named():
    rejected = gate.admit(
        gate.Verdict(True),
        "manual",
        {gate.TAG_APPROVAL: "rejected", gate.TAG_APPROVED_BY: "bo"},
        NOW,
    )
    assert not rejected.move and "rejected by bo" in rejected.why and rejected.tags == {}
    odd = gate.admit(gate.Verdict(True), "manual", {gate.TAG_APPROVAL: "yes please"}, NOW)
    assert not odd.move and "'yes please'" in odd.why


def test_a_verdict_is_reused_only_under_the_same_rules():
    verdict = gate.Verdict(False, ("a", "b"))
    tags = verdict.tags("digest-1")
    assert gate.recorded_verdict(tags, "digest-1") == verdict
    assert gate.recorded_verdict(tags, "digest-2") is None
    assert gate.recorded_verdict({}, "digest-1") is None


def test_long_reasons_are_cut_to_fit_a_tag():
    tags = gate.Verdict(False, ("x" * 10_000,)).tags("d")
    assert len(tags[gate.TAG_GATE_REASONS]) <= gate.MAX_REASONS_CHARS + 2


def test_rules_match_marketplace_names_and_their_digest_follows_them():
    settings = GateConfig(require=["owner"], evaluation=[rule()], approval="none")
    assert gate.rules_for(settings, "dev01.fraud") == (["owner"], [(0, settings.evaluation[0])])
    assert gate.rules_for(settings, "dev02.fraud") == (["owner"], [])
    assert gate.rules_digest(settings, "dev01.fraud") != gate.rules_digest(settings, "dev02.fraud")
    stricter = GateConfig(
        require=["owner"], evaluation=[rule(roc_auc={"threshold": 0.9, "greater_is_better": True})]
    )
    assert gate.rules_digest(settings, "dev01.fraud") != gate.rules_digest(stricter, "dev01.fraud")
    assert not gate.is_active(GateConfig(require=[], evaluation=[], approval="none"))


def test_mlflow_validation_compares_with_the_baseline_and_names_both_values():
    check = rule(
        roc_auc={"min_relative_change": 0.0, "greater_is_better": True},
        accuracy_score={"threshold": 0.8, "greater_is_better": True},
    )
    assert (
        evaluation.compare(check, {"roc_auc": 0.91, "accuracy_score": 0.85}, {"roc_auc": 0.90})
        == []
    )
    reasons = evaluation.compare(
        check, {"roc_auc": 0.70, "accuracy_score": 0.75}, {"roc_auc": 0.90, "accuracy_score": 0.9}
    )
    assert len(reasons) == 2
    assert any("roc_auc" in r and "0.7" in r and "0.9" in r and "relative" in r for r in reasons)
    assert any("accuracy_score" in r and "threshold" in r for r in reasons)


def test_without_a_baseline_only_absolute_thresholds_apply():
    check = rule(
        roc_auc={"min_relative_change": 0.0, "greater_is_better": True},
        accuracy_score={"threshold": 0.8, "min_absolute_change": 0.01, "greater_is_better": True},
    )
    assert evaluation.compare(check, {"roc_auc": 0.1, "accuracy_score": 0.85}, None) == []
    assert len(evaluation.compare(check, {"roc_auc": 0.1, "accuracy_score": 0.5}, None)) == 1


def test_a_metric_the_evaluation_did_not_produce_fails_naming_it():
    reasons = evaluation.compare(
        rule(f1_macro={"threshold": 0.5, "greater_is_better": True}), {"roc_auc": 0.9}, None
    )
    assert len(reasons) == 1 and "f1_macro" in reasons[0] and "missing" in reasons[0]


def version(name: str, number: int, **tags) -> ModelVersion:
    base = {
        "marketplace.source_workspace": "dev01",
        "marketplace.source_model": "fraud",
        "marketplace.source_version": str(number),
    }
    return ModelVersion(
        name, str(number), 0, tags=[ModelVersionTag(k, v) for k, v in {**base, **tags}.items()]
    )


def test_holds_say_what_each_version_waits_on():
    versions = [
        version(
            "dev01.fraud", 3, **{gate.TAG_GATE: "failed", gate.TAG_GATE_REASONS: "roc_auc fell"}
        ),
        version(
            "dev01.fraud",
            4,
            **{
                gate.TAG_GATE: "passed",
                gate.TAG_APPROVAL: "pending",
                gate.TAG_APPROVAL_REQUESTED_AT: "2026-12-03T09:30:00+00:00",
            },
        ),
        version(
            "dev01.fraud",
            5,
            **{gate.TAG_GATE: "passed", gate.TAG_APPROVAL: "rejected", gate.TAG_APPROVED_BY: "bo"},
        ),
        ModelVersion(
            "hand.made", "1", 0, tags=[ModelVersionTag(gate.TAG_HELD, "true")]
        ),  # not ours: skipped
    ]
    holds = gate.holds_of(versions)
    assert [(h.version, h.state, h.detail) for h in holds] == [
        ("3", "failed", "roc_auc fell"),
        ("4", "pending", ""),
        ("5", "rejected", "bo"),
    ]
    assert gate.age(holds[1].since, NOW) == "2h 30m"
    edited = gate.holds_of(
        [version("dev01.fraud", 6, **{gate.TAG_APPROVAL_REQUESTED_AT: "2026-12-01T12:00:00"})]
    )
    assert gate.age(edited[0].since, NOW) == "2d 0h 00m"  # a naive time edited by hand reads as UTC
    assert gate.age(None, NOW) == "?"
    assert "dev01/fraud v4" in holds[1].label
    assert "failed the gate: roc_auc fell" in gate.held_note(3, 3, versions[0].tags)
    assert "awaits approval since 2026-12-03T09:30" in gate.held_note(4, 4, versions[1].tags)


def test_only_an_approved_version_with_its_approver_is_releasable():
    passed = {gate.TAG_GATE: "passed"}
    assert gate.releasable(passed, "none")
    assert not gate.releasable(passed, "manual")
    assert not gate.releasable({**passed, gate.TAG_APPROVAL: "approved"}, "manual")
    assert gate.releasable(
        {**passed, gate.TAG_APPROVAL: "approved", gate.TAG_APPROVED_BY: "ann"}, "manual"
    )
    assert not gate.releasable(
        {gate.TAG_GATE: "failed", gate.TAG_APPROVAL: "approved", gate.TAG_APPROVED_BY: "a"},
        "manual",
    )


BASE = {
    "external_storage": {"uri": "external"},
    "marketplace": {"tracking_uri": "http://127.0.0.1:5000"},
    "workspaces": [
        {
            "name": "dev01",
            "tracking_uri": "http://127.0.0.1:5001",
            "production": {"stage": "Production"},
        },
        {
            "name": "dev02",
            "tracking_uri": "http://127.0.0.1:5002",
            "production": {"stage": "Production"},
        },
    ],
}
EVALUATION = {
    "models": ["dev01.fraud*"],
    "data": "evaluation/fraud.parquet",
    "targets": "label",
    "model_type": "classifier",
    "thresholds": {"roc_auc": {"min_relative_change": 0.0, "greater_is_better": True}},
}


def load(tmp_path, **overrides):
    raw = {**BASE, **overrides}
    path = tmp_path / "marketplace.yaml"
    path.write_text(yaml.safe_dump(raw))
    return load_config(path)


def error_of(tmp_path, **overrides) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, **overrides)
    return caught.value


def test_the_example_of_the_docs_loads_and_a_workspace_replaces_only_the_keys_it_sets(tmp_path):
    workspaces = [BASE["workspaces"][0], {**BASE["workspaces"][1], "gate": {"approval": "manual"}}]
    config = load(
        tmp_path,
        workspaces=workspaces,
        gate={"require": ["signature", "description", "owner"], "evaluation": [EVALUATION]},
    )
    first, second = config.gate_for("dev01"), config.gate_for("dev02")
    assert first.approval == "none" and second.approval == "manual"
    assert first.require == second.require == ["signature", "description", "owner"]
    assert second.evaluation == first.evaluation and len(first.evaluation) == 1
    threshold = evaluation.metric_threshold(first.evaluation[0].thresholds["roc_auc"])
    assert threshold.min_relative_change == 0.0 and threshold.greater_is_better is True
    # An empty list set by a workspace replaces the global one: no requirement there.
    workspaces[1]["gate"] = {"require": []}
    assert (
        load(tmp_path, workspaces=workspaces, gate={"require": ["owner"]}).gate_for("dev02").require
        == []
    )


def test_without_a_gate_nothing_is_required(tmp_path):
    settings = load(tmp_path).gate_for("dev01")
    assert (settings.require, settings.evaluation, settings.approval) == ([], [], "none")


@pytest.mark.parametrize(
    ("thresholds", "key", "said"),
    [
        (
            {"roc_auc": {"min_absolute_change": 0, "greater_is_better": True}},
            "thresholds.roc_auc",
            "positive",
        ),
        (
            {"roc_auc": {"min_relative_change": 1.5, "greater_is_better": True}},
            "thresholds.roc_auc",
            "between 0 and 1",
        ),
        ({"roc_auc": {"threshold": 0.8}}, "thresholds.roc_auc", "greater_is_better"),
        ({"roc_auc": {"greater_is_better": True}}, "thresholds.roc_auc", "no threshold"),
        (
            {"roc_auc": {"threshold": 0.8, "greater_is_better": True, "min_change": 1}},
            "thresholds.roc_auc.min_change",
            "unknown key",
        ),
        (
            {"roc_auc": {"threshold": "high", "greater_is_better": True}},
            "thresholds.roc_auc.threshold",
            "not a number",
        ),
        (
            {"roc_auc": {"threshold": 0.8, "greater_is_better": "yes"}},
            "thresholds.roc_auc.greater_is_better",
            "true or false",
        ),
        ({}, "thresholds", "at least 1"),
    ],
)
def test_a_threshold_mlflow_would_refuse_is_refused_naming_the_key(tmp_path, thresholds, key, said):
    error = error_of(tmp_path, gate={"evaluation": [{**EVALUATION, "thresholds": thresholds}]})
    assert f"gate.evaluation[0].{key}" in str(error) and said in str(error), str(error)


@pytest.mark.parametrize(
    ("gate_settings", "key"),
    [
        ({"require": ["signature", "licence"]}, "gate.require"),
        ({"approval": "sometimes"}, "gate.approval"),
        ({"evaluation": [{**EVALUATION, "model_type": "ranker"}]}, "gate.evaluation[0].model_type"),
        ({"evaluation": [{**EVALUATION, "models": []}]}, "gate.evaluation[0].models"),
        (
            {"evaluation": [{k: v for k, v in EVALUATION.items() if k != "targets"}]},
            "gate.evaluation[0].targets",
        ),
        ({"approvals": "manual"}, "gate.approvals"),
    ],
)
def test_wrong_gate_values_are_refused_naming_the_key(tmp_path, gate_settings, key):
    assert key in str(error_of(tmp_path, gate=gate_settings))


def test_a_workspace_gate_is_checked_with_its_workspace_named(tmp_path):
    workspaces = [{**BASE["workspaces"][0], "gate": {"approval": "always"}}]
    assert "workspaces[0] (dev01).gate.approval" in str(error_of(tmp_path, workspaces=workspaces))


@pytest.mark.parametrize(
    ("marketplace", "grant", "key", "said"),
    [
        ({}, {"principal": "fraud", "kind": "group", "permission": "READ"}, "kind", "user or role"),
        (
            {},
            {"principal": "fraud", "kind": "role", "permission": "EXECUTE"},
            "permission",
            "READ or EDIT or MANAGE",
        ),
        ({}, {"principal": "fraud", "kind": "role", "permission": "OWN"}, "permission", "'OWN'"),
        (
            {
                "tracking_uri": None,
                "databricks": {
                    "host": "https://x.cloud.databricks.com",
                    "auth": "pat",
                    "secret_env": "MP_TOKEN",
                    "unity_catalog": True,
                },
            },
            {"principal": "fraud", "kind": "group", "permission": "READ"},
            "permission",
            "EXECUTE",
        ),
        (
            {
                "tracking_uri": None,
                "databricks": {
                    "host": "https://x.cloud.databricks.com",
                    "auth": "pat",
                    "secret_env": "MP_TOKEN",
                },
            },
            {"principal": "fraud", "kind": "role", "permission": "READ"},
            "kind",
            "service_principal",
        ),
    ],
)
def test_a_grant_not_valid_for_the_marketplace_kind_is_refused_naming_the_key(
    tmp_path, marketplace, grant, key, said
):
    settings = {**BASE["marketplace"], **marketplace, "grants": [grant]}
    settings = {k: v for k, v in settings.items() if v is not None}
    if "databricks" in settings:
        settings["name_template"] = (
            "marketplace.{workspace}.{model}"
            if settings["databricks"].get("unity_catalog")
            else "{workspace}.{model}"
        )
    error = str(error_of(tmp_path, marketplace=settings))
    assert f"marketplace.grants[0] (fraud).{key}" in error and said in error, error


def test_grant_permissions_are_read_in_any_case_and_default_to_every_model(tmp_path):
    grants = [{"principal": "ann", "kind": "user", "permission": "read"}]
    config = load(tmp_path, marketplace={**BASE["marketplace"], "grants": grants})
    assert config.marketplace.grants[0].permission == "READ" and config.marketplace.grants[
        0
    ].models == ["*"]


@pytest.mark.parametrize(
    ("credentials", "key"),
    [
        ({"username_env": "MP_USER"}, "marketplace.password_env"),
        ({"password_env": "MP_PASSWORD"}, "marketplace.username_env"),
        (
            {"username_env": "MP_USER", "password_env": "MP_PASSWORD", "token_env": "MP_TOKEN"},
            "marketplace.token_env",
        ),
        ({"token_env": "not a variable"}, "marketplace.token_env"),
    ],
)
def test_credentials_variables_are_checked_naming_the_key(tmp_path, credentials, key):
    assert key in str(error_of(tmp_path, marketplace={**BASE["marketplace"], **credentials}))
