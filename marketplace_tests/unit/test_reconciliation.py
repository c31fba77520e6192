"""What the marketplace holds against what the sources say (marketplace.reconciliation), as
plain data: the summary tables against the snapshots, the markers against the sources."""

from __future__ import annotations

from marketplace.gate import Held
from marketplace.polling import PollResult
from marketplace.reconciliation import (
    gated_versions,
    models_served,
    models_to_compare,
    sources_verdict,
    summaries_verdict,
    unsynced,
)
from marketplace.telemetry import RegistryTime


def no_reason(workspace: str, model: str, version: int) -> None:
    return None


def test_a_version_seen_but_not_exported_or_imported_is_missing():
    seen = {("a", "m", 1), ("a", "n", 1)}
    exported = {("a", "m", 1)}
    found = unsynced(seen, exported, imported=set())
    assert found.not_exported == [("a", "n", 1)]
    assert found.not_imported == [("a", "m", 1)]


def test_a_version_superseded_by_a_newer_export_or_import_is_not_missing():
    # v1 was replaced by v2 before it was exported; v2's import supersedes v1's.
    seen = {("a", "m", 1), ("a", "m", 2)}
    exported = imported = {("a", "m", 2)}
    assert unsynced(seen, exported, imported) == unsynced(set(), set(), set())
    # An older export not imported while a newer one is: superseded too.
    assert unsynced(set(), {("a", "m", 1), ("a", "m", 2)}, {("a", "m", 2)}).not_imported == []
    # A newer export not imported while an older one is: missing.
    assert unsynced(set(), {("a", "m", 1), ("a", "m", 2)}, {("a", "m", 1)}).not_imported == [
        ("a", "m", 2)
    ]
    # Superseding is per model and per workspace.
    assert unsynced({("b", "m", 1)}, {("a", "m", 5)}, set()).not_exported == [("b", "m", 1)]


def test_the_verdict_names_each_missing_version_with_why_it_was_skipped():
    reasons = {("a", "m", 3): "quarantined: pickle"}
    verdict = summaries_verdict(
        seen={("a", "m", 3), ("a", "n", 10), ("a", "n", 9)},
        exported={("a", "m", 3), ("a", "n", 9)},
        imported=set(),
        reason=lambda w, m, v: reasons.get((w, m, v)),
    )
    assert not verdict.passed
    assert verdict.description == (
        "not exported: a/n v10; exported but not imported: a/m v3 (quarantined: pickle), a/n v9"
    )
    assert verdict.metadata == {
        "production_versions_seen": 3,
        "exported": 2,
        "imported": 0,
        "missing_exports": 1,
        "missing_imports": 2,
    }


def test_the_verdict_passes_when_everything_seen_is_exported_and_imported():
    keys = {("a", "m", 1)}
    verdict = summaries_verdict(keys, keys, keys, no_reason)
    assert verdict.passed
    assert verdict.description == "every production version seen is exported and imported"


def test_a_long_list_names_twenty_and_counts_the_rest():
    seen = {("a", f"m{i:02d}", 1) for i in range(25)}
    verdict = summaries_verdict(seen, set(), set(), no_reason)
    assert verdict.description.endswith("a/m19 v1 and 5 more")
    assert verdict.metadata["missing_exports"] == 25


def test_models_compared_are_those_in_production_and_those_served():
    served = models_served(
        [
            {"workspace": "a", "model_name": "retired"},
            {"workspace": "a", "model_name": "m"},
            {"workspace": "b", "model_name": "x"},
        ]
    )
    assert served == {"a": {"retired", "m"}, "b": {"x"}}
    assert models_to_compare(PollResult("a", production={"m": 2, "new": 1}), served["a"]) == [
        "m",
        "new",
        "retired",
    ]


def test_gated_versions_are_per_workspace_and_model():
    holds = [
        Held("a.m", "3", "a", "m", 2, "pending", ""),
        Held("b.m", "1", "b", "m", 7, "failed", "worse"),
    ]
    assert gated_versions(holds) == {"a": {"m": 2}, "b": {"m": 7}}


def test_a_difference_is_an_error_and_an_unreachable_workspace_only_a_warning():
    spent = RegistryTime(requests=4, seconds=0.25)
    differ = ["a/m: source production v2, marketplace @production is the copy of v1"]

    both = sources_verdict(differ, ["b (timeout)"], compared=3, polled=2, registry=spent)
    assert (both.passed, both.warn) == (False, False)
    assert both.description == f"differ: {differ[0]}; unreachable, not compared: b (timeout)"
    assert both.metadata == {
        "workspaces_compared": 1,
        "workspaces_unreachable": 1,
        "models_compared": 3,
        "models_differing": 1,
        "differences": differ,
        "registry_requests": 4,
        "registry_seconds": 0.25,
    }

    down = sources_verdict([], ["b (timeout)"], compared=3, polled=2, registry=spent)
    assert (down.passed, down.warn) == (False, True)

    fine = sources_verdict([], [], compared=3, polled=2, registry=spent)
    assert fine.passed
    assert fine.description == "3 model(s) in 2 workspace(s) match their sources"
