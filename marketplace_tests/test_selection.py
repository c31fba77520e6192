"""The seed's selection rules against a real registry: which version is production, and the marker."""

from __future__ import annotations

import datetime as dt
import time

from mlflow import MlflowClient

from marketplace.registry import (
    MARKER_PREFIX,
    mark_exported,
    marker_description,
    select_production_versions,
)

from .conftest import register_version


class _CountingClient(MlflowClient):
    """A real client that counts the version searches it makes, by model."""

    def __init__(self, uri: str):
        super().__init__(uri)
        self.version_searches: list[str] = []

    def search_model_versions(self, filter_string=None, *args, **kwargs):
        self.version_searches.append(filter_string)
        return super().search_model_versions(filter_string, *args, **kwargs)


def _select(uri: str, uid: str, **kwargs):
    return select_production_versions(MlflowClient(uri), include=[f"{uid}_*"], **kwargs)


def test_stage_selects_the_newest_production_version_only(servers, uid):
    uri = servers["ws_a"].uri
    register_version(uri, f"{uid}_m", stage="Production")
    register_version(uri, f"{uid}_m", stage="Production")
    register_version(uri, f"{uid}_m", stage="Staging")
    register_version(uri, f"{uid}_none")

    selection = _select(uri, uid, stage="Production", alias=None)
    assert [(v.model_name, v.version) for v in selection.versions] == [(f"{uid}_m", 2)]
    mine = {name: why for name, why in selection.skipped.items() if name.startswith(uid)}
    assert mine == {f"{uid}_none": "no version in stage Production"}
    assert selection.versions[0].source.startswith("models:/")


def test_stage_takes_the_newest_production_version_from_search_without_reading_versions(
    servers, uid
):
    uri = servers["ws_b"].uri
    for stage in ("Production", "Production", "Staging"):
        register_version(uri, f"{uid}_m", stage=stage)
    register_version(uri, f"{uid}_none", stage="Archived")
    assert mark_exported(MlflowClient(uri), f"{uid}_m", 2, dt.date(2026, 11, 25))
    client = _CountingClient(uri)

    selection = select_production_versions(
        client, include=[f"{uid}_*"], stage="Production", alias=None
    )

    (version,) = selection.versions
    assert (version.model_name, version.version, version.marked) == (f"{uid}_m", 2, True)
    assert version.run_id and version.source.startswith("models:/")
    mine = {name: why for name, why in selection.skipped.items() if name.startswith(uid)}
    assert mine == {f"{uid}_none": "no version in stage Production"}
    assert client.version_searches == []  # search answered for both models


def test_stage_reads_the_versions_where_the_newest_in_stage_was_registered_too_late(servers, uid):
    uri = servers["ws_b"].uri
    register_version(uri, f"{uid}_m", stage="Production")
    first = MlflowClient(uri).get_model_version(f"{uid}_m", "1")
    time.sleep(0.01)
    register_version(uri, f"{uid}_m", stage="Production")
    registered_by = dt.datetime.fromtimestamp(
        first.creation_timestamp / 1000, dt.UTC
    ) + dt.timedelta(milliseconds=1)
    client = _CountingClient(uri)

    selection = select_production_versions(
        client, include=[f"{uid}_*"], stage="Production", alias=None, registered_by=registered_by
    )

    assert [(v.model_name, v.version) for v in selection.versions] == [(f"{uid}_m", 1)]
    assert len(client.version_searches) == 1 and f"{uid}_m" in client.version_searches[0]


def test_alias_selects_the_aliased_version_even_if_older(servers, uid):
    uri = servers["ws_b"].uri
    register_version(uri, f"{uid}_m", alias="champion")
    register_version(uri, f"{uid}_m", stage="Production")  # a stage does not count in alias mode
    selection = _select(uri, uid, stage=None, alias="champion")
    assert [(v.model_name, v.version) for v in selection.versions] == [(f"{uid}_m", 1)]
    assert selection.versions[0].selected_by == "alias @champion"


def test_include_and_exclude_curate_models(servers, uid):
    uri = servers["ws_a"].uri
    for name in ("keep", "scratch_x"):
        register_version(uri, f"{uid}_{name}", stage="Production")
    selection = select_production_versions(
        MlflowClient(uri),
        stage="Production",
        alias=None,
        include=[f"{uid}_*"],
        exclude=["*_scratch_*"],
    )
    assert [v.model_name for v in selection.versions] == [f"{uid}_keep"]
    assert selection.skipped[f"{uid}_scratch_x"] == "not curated (include/exclude)"


def test_registered_by_leaves_out_versions_registered_later(servers, uid):
    uri = servers["ws_a"].uri
    register_version(uri, f"{uid}_m", stage="Production")
    yesterday = dt.datetime.now(dt.UTC) - dt.timedelta(days=1)
    selection = _select(uri, uid, stage="Production", alias=None, registered_by=yesterday)
    assert selection.versions == []
    assert "registered by" in selection.skipped[f"{uid}_m"]


def test_marker_uses_the_seeds_exact_words_once(servers, uid):
    uri = servers["ws_a"].uri
    register_version(uri, f"{uid}_m", stage="Production", description="churn v1")
    client = MlflowClient(uri)
    day = dt.date(2026, 11, 25)
    assert mark_exported(client, f"{uid}_m", 1, day) is True
    version = client.get_model_version(f"{uid}_m", "1")
    assert version.description == "Exported Already On 2026-11-25, old description: churn v1"
    assert version.tags["marketplace.exported_on"] == "2026-11-25"
    assert mark_exported(client, f"{uid}_m", 1, dt.date(2026, 11, 26)) is False
    assert client.get_model_version(f"{uid}_m", "1").description.startswith(
        MARKER_PREFIX + "2026-11-25"
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
    assert (
        choose_production(versions, dt.datetime(2026, 11, 1, 12, tzinfo=dt.UTC)).version
        == "1"
    )
    assert choose_production([_version(4, status="FAILED_REGISTRATION")]) is None
    assert choose_production([]) is None


def test_the_sensor_polls_with_the_same_rule_as_the_assets(servers, uid):
    """Whatever the registry holds, the sensor's cheap poll and the production_models asset agree."""
    from marketplace.config import WorkspaceConfig
    from marketplace.polling import poll_workspaces

    uri = servers["ws_a"].uri
    register_version(uri, f"{uid}_staged", stage="Production")
    register_version(uri, f"{uid}_staged", stage="Production")
    register_version(uri, f"{uid}_aliased", alias="champion")
    register_version(uri, f"{uid}_aliased")
    for production in ({"stage": "Production"}, {"alias": "champion"}):
        workspace = WorkspaceConfig(
            name="ws-a", tracking_uri=uri, production=production, include=[f"{uid}_*"]
        )
        polled = poll_workspaces([workspace], max_workers=1, deadline_seconds=60)["ws-a"]
        selected = _select(uri, uid, stage=production.get("stage"), alias=production.get("alias"))
        assert polled.error is None
        assert polled.production == {v.model_name: v.version for v in selected.versions} != {}
