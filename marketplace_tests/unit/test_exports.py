"""Exports pin down mlflow-export-import's traps: silent success, missing files, debris."""

from __future__ import annotations

import datetime as dt

import pytest

from marketplace.layout import path_component


@pytest.mark.parametrize(
    "name",
    [
        "plain",
        "with space",
        " leading",
        "back\\slash",
        "ünïcödé",
        "dots.in.name",
        "x" * 1000,
        "%41",
    ],
)
def test_model_names_become_one_safe_distinct_folder(name, tmp_path):
    component = path_component(name)
    assert "/" not in component and component not in (".", "..")
    assert len(component.encode()) <= 180
    folder = tmp_path / component
    folder.mkdir()
    assert folder.parent == tmp_path


def test_long_names_differing_only_at_the_end_do_not_collide():
    assert path_component("x" * 1000 + "a") != path_component("x" * 1000 + "b")
    assert path_component("%41") != path_component("A")


def test_a_quarantine_holds_while_its_findings_block_under_the_policy_of_the_day(tmp_path):
    from marketplace.export_records import quarantine_of, record_quarantine
    from marketplace.layout import skip_record_key
    from marketplace.scanning import Finding, ScanPolicy
    from marketplace.storage import LocalStorage

    storage = LocalStorage(tmp_path)
    key = skip_record_key("dev01", "fraud", 2)
    finding = Finding(
        "python_model.pkl", "posix.system", "critical", "Use of unsafe operator 'system'"
    )
    record_quarantine(
        storage,
        key,
        checksum="c1",
        findings=[finding.to_dict()],
        reason="quarantined: ...",
        day=dt.date(2026, 12, 1),
    )

    assert quarantine_of(storage, key)["findings"] == [finding.to_dict()]
    assert quarantine_of(storage, key, "c1", ScanPolicy()) is not None
    assert quarantine_of(storage, key, "c2", ScanPolicy()) is None  # a new export is scanned again
    # The operator reviewed it, or lowered the bar: the version is scanned (and imported) again.
    assert quarantine_of(storage, key, "c1", ScanPolicy(allow_globals=("posix.system",))) is None
    assert quarantine_of(storage, key, "c1", ScanPolicy(mode="warn")) is None
    assert quarantine_of(storage, key, "c1", ScanPolicy(mode="off")) is None
    storage.write(
        key,
        '{"reason": "quarantined", "quarantined": true, "checksum": "c1", "findings": [{"x": 1}]}',
    )
    assert (
        quarantine_of(storage, key, "c1", ScanPolicy()) is None
    )  # not a record we wrote: scan again
