"""The seed's selection rules against a real registry: which version is production, and the
marker."""

from __future__ import annotations

import datetime as dt

from marketplace.registry import (
    marker_description,
)


def test_marker_of_an_empty_description():
    assert (
        marker_description(dt.date(2026, 1, 2), None)
        == "Exported Already On 2026-01-02, old description: "
    )


def _version(number: int, *, status: str = "READY", stage: str = "Production", day: int = 1):
    from mlflow.entities.model_registry import ModelVersion

    created = int(dt.datetime(2026, 11, day, tzinfo=dt.UTC).timestamp() * 1000)
    return ModelVersion("m", str(number), created, current_stage=stage, status=status)


def test_the_one_production_rule_takes_the_newest_ready_version_registered_by_the_date():
    from marketplace.registry import choose_production

    versions = [
        _version(1, day=1),
        _version(2, day=2),
        _version(3, status="PENDING_REGISTRATION", day=3),
    ]
    assert choose_production(versions).version == "2"  # v3 is still being registered
    assert choose_production(versions, dt.datetime(2026, 11, 1, 12, tzinfo=dt.UTC)).version == "1"
    assert choose_production([_version(4, status="FAILED_REGISTRATION")]) is None
    assert choose_production([]) is None
