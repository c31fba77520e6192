"""The lifecycle of a marketplace model, end to end against real MLflow servers.

The marketplace alias follows the version each source workspace has in production now: it moves
on a promotion, moves back on a rollback, is removed when the source has no production version
any more (retired, versions kept) and comes back when it has one again (restored). Every move is
one row of the `production_history` Delta table, and the `marketplace_matches_sources` check
compares the sources with the marketplace.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
import warnings
from unittest.mock import ANY

import dagster as dg
import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from harness.seeding import register_version
from marketplace.provenance import TAG_SOURCE_VERSION
from marketplace_dagster import keys
from marketplace_tests.testing.deployments import (
    TODAY,
    assert_nothing_new,
    materializations,
    step_failure_message,
)
from marketplace_tests.testing.driving import (
    ALIAS,
    CHAMPION,
    MATCHES_SOURCES,
    STAGE,
    Cli,
    check_evaluations,
    copy_of,
    promote,
    versions_of,
    workspace,
)
from marketplace_tests.testing.faults import FaultProxy
from marketplace_tests.testing.support import ROOT, assert_predicts_like_source, table_rows

HISTORY = "production_history"
CHANGES = ("promoted", "rolled_back", "retired", "restored")
STATUS = "marketplace.status"
STATUS_CHANGED_AT = "marketplace.status_changed_at"

# The two ways a source marks its production version: the server that holds it, and its config.
SOURCES = {"stage": ("ws_a", STAGE), "alias": ("ws_b", CHAMPION)}


def retire_in_source(uri: str, model: str, production: dict) -> None:
    """Leave the source model without a production version: alias deleted, or stage archived."""
    client = MlflowClient(uri)
    if "alias" in production:
        client.delete_registered_model_alias(model, production["alias"])
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        for version in client.search_model_versions(f"name='{model}'"):
            if version.current_stage == "Production":
                client.transition_model_version_stage(model, version.version, "Archived")


def backdate(server, model: str, version: str, when: dt.datetime) -> None:
    """Give a source version a past registration time, so a past date's snapshot can see it."""
    with sqlite3.connect(server.root / "mlflow.db") as db:
        db.execute(
            "UPDATE model_versions SET creation_time = ? WHERE name = ? AND version = ?",
            (int(when.timestamp() * 1000), model, int(version)),
        )


def history(deployment, marketplace_name: str) -> list[dict]:
    """The production_history rows of one marketplace model, in sequence order."""
    rows = table_rows(deployment, HISTORY)
    return sorted(
        (r for r in rows if r["marketplace_name"] == marketplace_name), key=lambda r: r["sequence"]
    )


def changes(rows: list[dict]) -> list[tuple]:
    return [(r["change"], r["source_version"], r["previous_source_version"]) for r in rows]


def _utc(value) -> dt.datetime:
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    assert value.utcoffset() in (None, dt.timedelta(0)), f"{value} is not UTC"
    return value.replace(tzinfo=dt.UTC)


def assert_history_well_formed(
    rows: list[dict], market: MlflowClient, workspace_name: str, model: str, mp: str
) -> None:
    """Sequence 1, 2, 3...; each row names its model and the copy it moved the alias to."""
    assert [r["sequence"] for r in rows] == list(range(1, len(rows) + 1))
    for row in rows:
        assert (row["workspace"], row["model_name"], row["marketplace_name"]) == (
            workspace_name,
            model,
            mp,
        )
        assert row["change"] in CHANGES
        assert isinstance(row["run_id"], str) and row["run_id"]
        if row["change"] == "retired":
            assert (row["source_version"], row["marketplace_version"]) == (None, None), row
        else:
            copy = market.get_model_version(mp, str(row["marketplace_version"]))
            assert copy.tags[TAG_SOURCE_VERSION] == str(row["source_version"]), row
    times = [_utc(r["changed_at"]) for r in rows]
    assert times == sorted(times)


def assert_serves(market: MlflowClient, mp: str, source_version: int) -> dt.datetime:
    """The alias is on the copy of `source_version`, which alone is in stage Production; the model
    is active and says which source version it serves. Returns its status change time."""
    aliased = market.get_model_version_by_alias(mp, ALIAS)
    assert aliased.tags[TAG_SOURCE_VERSION] == str(source_version)
    assert {v.version for v in versions_of(market, mp) if v.current_stage == "Production"} == {
        aliased.version
    }
    registered = market.get_registered_model(mp)
    assert registered.tags[STATUS] == "active"
    assert (
        f"is marketplace version {aliased.version}, the copy of source version {source_version}."
        in (registered.description)
    )  # the model card's status line
    return _utc(registered.tags[STATUS_CHANGED_AT])


def assert_retired(market: MlflowClient, mp: str, was_serving: int) -> dt.datetime:
    """No alias, no version in Production (the copy of `was_serving` archived), every version kept;
    status and description say retired. Returns its status change time."""
    with pytest.raises(MlflowException):
        market.get_model_version_by_alias(mp, ALIAS)
    assert [v.version for v in versions_of(market, mp) if v.current_stage == "Production"] == []
    assert (
        market.get_model_version(mp, copy_of(market, mp, was_serving)).current_stage == "Archived"
    )
    registered = market.get_registered_model(mp)
    assert registered.tags[STATUS] == "retired"
    assert "retired" in registered.description.lower()
    return _utc(registered.tags[STATUS_CHANGED_AT])


def lifecycle_counts(metadata: dict) -> dict[str, int]:
    return {change: metadata[change] for change in CHANGES}


def only(change: str | None = None) -> dict[str, int]:
    """Registration counts with one `change` (or none)."""
    return {c: int(c == change) for c in CHANGES}


def synced_at_v2(deploy, source: str, ws: str, model: str, uid: str):
    """A stage workspace whose model has v1 and v2, v2 in production, synced once."""
    register_version(source, model, stage="Production")
    register_version(source, model)
    promote(source, model, 2, STAGE)
    deployment = deploy([workspace(ws, source, STAGE, uid)])
    result = deployment.sync(ws)
    assert result.success, step_failure_message(result)
    return deployment


def on_backend(backend: str, request, deploy, workspaces: list[dict], folder) -> Cli:
    """Runs on SQLite (the suite's marketplace server, a SQLite Dagster instance), or with the
    marketplace registry (4 workers) and the Dagster instance (deploy/dagster.yaml as shipped) on
    PostgreSQL."""
    if backend == "sqlite":
        return Cli(deploy(workspaces), folder)
    postgres, market = (
        request.getfixturevalue("postgres"),
        request.getfixturevalue("pg_marketplace"),
    )
    database = f"dagster_{request.getfixturevalue('uid')}"
    postgres.create_database(database)
    monkeypatch = request.getfixturevalue("monkeypatch")
    for name, value in postgres.dagster_env(database).items():
        monkeypatch.setenv(name, value)  # the run processes inherit them
    deployment = deploy(workspaces, marketplace={"tracking_uri": market.uri})
    return Cli(deployment, folder, instance_file=ROOT / "deploy" / "dagster.yaml")


# Lifecycle, history and catalog on PostgreSQL (registry and Dagster) behave as on SQLite.
@pytest.mark.parametrize(
    ("selected_by", "backend"),
    [("stage", "sqlite"), ("alias", "sqlite"), ("alias", "postgresql")],
)
def test_alias_follows_the_source_through_promotion_rollback_retirement_and_restore(
    servers, deploy, uid, tmp_path, selected_by, backend, request
):
    server, production = SOURCES[selected_by]
    source = servers[server].uri
    ws, model = f"{selected_by}{uid}", f"{uid}_diabetes"
    mp = f"{ws}.{model}"
    cli = on_backend(backend, request, deploy, [workspace(ws, source, production, uid)], tmp_path)
    market_uri = cli.deployment.config.marketplace.tracking_uri
    market = MlflowClient(market_uri)
    expected: list[tuple] = []

    def sync_and_check(change: tuple, serving: int | None, counts: dict) -> dt.datetime:
        expected.append(change)
        assert lifecycle_counts(cli.sync(ws)) == counts
        rows = history(cli.deployment, mp)
        assert changes(rows) == expected
        assert_history_well_formed(rows, market, ws, model, mp)
        assert len(versions_of(market, mp)) == len({c[1] for c in expected if c[1] is not None})
        if serving is None:
            return assert_retired(market, mp, was_serving=change[2])
        assert_predicts_like_source(
            source, f"models:/{model}/{serving}", market_uri, f"models:/{mp}@{ALIAS}"
        )
        return assert_serves(market, mp, serving)

    register_version(source, model, kind="diabetes")
    promote(source, model, 1, production)
    sync_and_check(("promoted", 1, None), 1, only("promoted"))

    register_version(source, model, kind="diabetes")
    promote(source, model, 2, production)
    sync_and_check(("promoted", 2, 1), 2, only("promoted"))

    promote(source, model, 1, production)  # rolled back
    active_since = sync_and_check(("rolled_back", 1, 2), 1, only("rolled_back"))

    retire_in_source(source, model, production)
    retired_at = sync_and_check(("retired", None, 1), None, only("retired"))
    assert retired_at > active_since

    promote(source, model, 2, production)
    # The version before retirement is not part of a restore's contract.
    restored_at = sync_and_check(("restored", 2, ANY), 2, only("restored"))
    assert restored_at > retired_at

    MlflowClient(source).delete_registered_model(model)
    assert sync_and_check(("retired", None, 2), None, only("retired")) > restored_at
    assert sorted(v.tags[TAG_SOURCE_VERSION] for v in versions_of(market, mp)) == [
        "1",
        "2",
    ]  # nothing deleted
    # The catalog, built on the same instance, shows the model retired, its alias gone.
    assert cli.refresh_catalog().success
    (row,) = [r for r in table_rows(cli.deployment, "catalog") if r["marketplace_name"] == mp]
    assert (row["workspace"], row["model_name"], row["status"], row["alias"]) == (
        ws,
        model,
        "retired",
        None,
    )


def test_rollback_to_a_version_never_imported_imports_it_and_moves_the_alias_back(
    servers, deploy, uid
):
    source = servers["ws_b"].uri
    ws, model = f"b{uid}", f"{uid}_diabetes"
    mp = f"{ws}.{model}"
    market = MlflowClient(servers["marketplace"].uri)
    register_version(source, model, kind="diabetes")  # v1: never in production
    register_version(source, model, alias="champion", kind="diabetes")  # v2
    deployment = deploy([workspace(ws, source, CHAMPION, uid)])
    first = deployment.sync(ws)
    assert first.success, step_failure_message(first)
    assert [v.tags[TAG_SOURCE_VERSION] for v in versions_of(market, mp)] == ["2"]

    promote(source, model, 1, CHAMPION)
    result = deployment.sync(ws)
    assert result.success, step_failure_message(result)
    assert materializations(result, keys.IMPORTS)["imported"] == 1
    assert lifecycle_counts(materializations(result, keys.REGISTRATION)) == only("rolled_back")
    rows = history(deployment, mp)
    assert changes(rows) == [("promoted", 2, None), ("rolled_back", 1, 2)]
    assert_history_well_formed(rows, market, ws, model, mp)
    assert rows[-1]["marketplace_version"] == int(copy_of(market, mp, 1))
    assert len(versions_of(market, mp)) == 2
    assert_serves(market, mp, 1)
    assert_predicts_like_source(
        source, f"models:/{model}/1", servers["marketplace"].uri, f"models:/{mp}@{ALIAS}"
    )


def test_rollback_while_the_source_is_unreachable_changes_nothing_and_warns(servers, deploy, uid):
    source = servers["ws_a"].uri
    ws, model = f"a{uid}", f"{uid}_iris"
    mp = f"{ws}.{model}"
    market = MlflowClient(servers["marketplace"].uri)
    register_version(source, model)  # v1
    register_version(source, model, stage="Production")  # v2
    with FaultProxy(source) as proxy:
        deployment = deploy([workspace(ws, proxy.uri, STAGE, uid)])
        first = deployment.sync(ws)
        assert first.success, step_failure_message(first)
    # The proxy is closed: the workspace now refuses connections.
    promote(source, model, 1, STAGE)

    down = deployment.sync(ws)
    assert not down.success
    assert f"workspace {ws}" in step_failure_message(down)
    assert_serves(market, mp, 2)
    assert len(versions_of(market, mp)) == 1
    assert changes(history(deployment, mp)) == [("promoted", 2, None)]
    check = check_evaluations(deployment)[MATCHES_SOURCES]
    assert not check.passed
    assert check.severity == dg.AssetCheckSeverity.WARN
    assert ws in check.description

    # Reachable again (the same workspace, without the proxy): the rollback goes through.
    back = deploy([workspace(ws, source, STAGE, uid)])
    result = back.sync(ws)
    assert result.success, step_failure_message(result)
    assert changes(history(back, mp)) == [("promoted", 2, None), ("rolled_back", 1, 2)]
    assert_serves(market, mp, 1)


def test_two_concurrent_runs_after_a_rollback_record_it_once(servers, deploy, uid, tmp_path):
    source = servers["ws_a"].uri
    ws, model = f"a{uid}", f"{uid}_iris"
    mp = f"{ws}.{model}"
    market = MlflowClient(servers["marketplace"].uri)
    deployment = synced_at_v2(deploy, source, ws, model, uid)
    promote(source, model, 1, STAGE)

    cli = Cli(deployment, tmp_path)
    racing = [cli.launch(ws), cli.launch(ws)]  # the same partition, twice, at once
    for run in racing:
        run.finish()

    instance = dg.DagsterInstance.from_config(str(cli.home))
    try:
        records = instance.fetch_materializations(keys.REGISTRATION, limit=10).records
    finally:
        instance.dispose()
    # One run moved the alias; the other found it moved.
    assert sorted(r.asset_materialization.metadata["rolled_back"].value for r in records) == [0, 1]

    rows = history(deployment, mp)
    assert changes(rows) == [("promoted", 2, None), ("rolled_back", 1, 2)]
    assert_history_well_formed(rows, market, ws, model, mp)
    assert len(versions_of(market, mp)) == 2  # v1 imported once
    assert_serves(market, mp, 1)


def test_past_date_sync_after_a_rollback_imports_but_never_moves_the_alias(servers, deploy, uid):
    source = servers["ws_a"].uri
    ws, model = f"a{uid}", f"{uid}_diabetes"
    mp = f"{ws}.{model}"
    market = MlflowClient(servers["marketplace"].uri)
    register_version(source, model, kind="diabetes")
    # v1 was registered before the past date, so that date's snapshot can see it.
    backdate(servers["ws_a"], model, "1", dt.datetime.now(dt.UTC) - dt.timedelta(days=3))
    register_version(source, model, kind="diabetes")
    promote(source, model, 2, STAGE)
    deployment = deploy([workspace(ws, source, STAGE, uid)])
    today = deployment.sync(ws)
    assert today.success, step_failure_message(today)
    promote(source, model, 1, STAGE)

    past = deployment.sync(ws, day=TODAY - dt.timedelta(days=2))
    assert past.success, step_failure_message(past)
    assert lifecycle_counts(materializations(past, keys.REGISTRATION)) == only()
    assert len(versions_of(market, mp)) == 2  # v1 imported...
    assert_serves(market, mp, 2)  # ...but today's snapshot still says v2
    assert changes(history(deployment, mp)) == [("promoted", 2, None)]

    again = deployment.sync(ws)
    assert again.success, step_failure_message(again)
    assert lifecycle_counts(materializations(again, keys.REGISTRATION)) == only("rolled_back")
    assert changes(history(deployment, mp)) == [("promoted", 2, None), ("rolled_back", 1, 2)]
    assert len(versions_of(market, mp)) == 2
    assert_serves(market, mp, 1)
    assert_predicts_like_source(
        source, f"models:/{model}/1", servers["marketplace"].uri, f"models:/{mp}@{ALIAS}"
    )


def test_a_model_excluded_by_curation_is_retired_and_restored_when_put_back(servers, deploy, uid):
    source = servers["ws_a"].uri
    ws = f"a{uid}"
    keep, drop = f"{ws}.{uid}_keep", f"{ws}.{uid}_drop"
    market = MlflowClient(servers["marketplace"].uri)
    register_version(source, f"{uid}_keep", stage="Production")
    register_version(source, f"{uid}_drop", stage="Production")
    curated = deploy([workspace(ws, source, STAGE, uid)])
    first = curated.sync(ws)
    assert first.success, step_failure_message(first)
    # Each deploy() writes its own file next to the first: the external storage is shared.
    narrowed = deploy([workspace(ws, source, STAGE, uid, exclude=[f"{uid}_drop"])])

    result = narrowed.sync(ws)
    assert result.success, step_failure_message(result)
    assert lifecycle_counts(materializations(result, keys.REGISTRATION)) == only("retired")
    assert changes(history(narrowed, drop)) == [("promoted", 1, None), ("retired", None, 1)]
    assert changes(history(narrowed, keep)) == [("promoted", 1, None)]
    assert_retired(market, drop, was_serving=1)
    assert len(versions_of(market, drop)) == 1
    assert_serves(market, keep, 1)

    result = curated.sync(ws)
    assert result.success, step_failure_message(result)
    assert lifecycle_counts(materializations(result, keys.REGISTRATION)) == only("restored")
    rows = history(curated, drop)
    assert changes(rows) == [("promoted", 1, None), ("retired", None, 1), ("restored", 1, ANY)]
    assert_history_well_formed(rows, market, ws, f"{uid}_drop", drop)
    assert [v.version for v in versions_of(market, drop)] == ["1"]
    assert_serves(market, drop, 1)
    assert changes(history(curated, keep)) == [("promoted", 1, None)]


def test_reconciliation_check_passes_in_sync_and_names_a_model_rolled_back_since(
    servers, deploy, uid
):
    source = servers["ws_a"].uri
    ws, model = f"a{uid}", f"{uid}_iris"
    deployment = synced_at_v2(deploy, source, ws, model, uid)

    found = check_evaluations(deployment)
    assert found[MATCHES_SOURCES].passed, found[MATCHES_SOURCES].description
    assert "alias_points_at_newest_import" not in found  # replaced by this check

    promote(source, model, 1, STAGE)  # rolled back, not synced yet
    check = check_evaluations(deployment)[MATCHES_SOURCES]
    assert not check.passed
    assert check.severity == dg.AssetCheckSeverity.ERROR
    assert model in check.description

    result = deployment.sync(ws)
    assert result.success, step_failure_message(result)
    after = check_evaluations(deployment)[MATCHES_SOURCES]
    assert after.passed, after.description


def test_a_re_sync_that_finds_nothing_new_adds_no_history_and_touches_no_model(
    servers, deploy, uid
):
    source = servers["ws_b"].uri
    ws, model = f"b{uid}", f"{uid}_iris"
    mp = f"{ws}.{model}"
    market = MlflowClient(servers["marketplace"].uri)
    register_version(source, model, alias="champion")
    deployment = deploy([workspace(ws, source, CHAMPION, uid)])
    first = deployment.sync(ws)
    assert first.success, step_failure_message(first)
    assert lifecycle_counts(materializations(first, keys.REGISTRATION)) == only("promoted")
    rows = history(deployment, mp)
    before = market.get_registered_model(mp)

    again = deployment.sync(ws)
    assert_nothing_new(again, already_exported=1)
    assert lifecycle_counts(materializations(again, keys.REGISTRATION)) == only()
    assert history(deployment, mp) == rows
    after = market.get_registered_model(mp)
    assert after.last_updated_timestamp == before.last_updated_timestamp
    assert after.tags == before.tags
