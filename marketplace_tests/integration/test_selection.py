"""The seed's selection rules against a real registry: which version is production, and the
marker."""

from __future__ import annotations

import datetime as dt
import time

from mlflow import MlflowClient

from harness.seeding import register_version
from marketplace.registry import (
    MARKER_PREFIX,
    mark_exported,
    select_production_versions,
)


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


def test_the_sensor_polls_with_the_same_rule_as_the_assets(servers, uid):
    """Whatever the registry holds, the sensor's cheap poll and the production_models asset
    agree."""
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
