"""The Dagster floor's own mapping, without servers: the sync assets partitioned as configured,
one partition per run, and a domain verdict shown as a check result."""

import datetime as dt

import dagster as dg

from marketplace.audits import Verdict
from marketplace_dagster.assets.sync import SYNC_ASSETS, build_sync_assets
from marketplace_dagster.checks import check_result
from marketplace_dagster.keys import CHAIN, GROUP


def test_the_sync_assets_take_the_partitions_given_and_run_one_partition_at_a_time():
    partitions = dg.StaticPartitionsDefinition(["a", "b"])
    built = build_sync_assets(partitions)
    assert [a.key for a in built] == CHAIN
    for asset in built:
        assert asset.partitions_def == partitions
        assert asset.backfill_policy == dg.BackfillPolicy.multi_run(max_partitions_per_run=1)
        assert asset.specs_by_key[asset.key].group_name == GROUP
    # The module-level definitions stay as written: partitions are applied to copies.
    assert all(a.partitions_def is None for a in SYNC_ASSETS)
    daily = dg.DailyPartitionsDefinition(start_date=dt.date(2026, 1, 1).isoformat())
    assert build_sync_assets(daily)[0].partitions_def == daily


def test_a_verdict_shows_its_severity_and_its_lists_as_json():
    result = check_result(Verdict(False, "why", {"count": 2, "items": ["x"]}, warn=True))
    assert (result.passed, result.description) == (False, "why")
    assert result.severity == dg.AssetCheckSeverity.WARN
    assert result.metadata["count"] == dg.MetadataValue.int(2)
    assert result.metadata["items"] == dg.MetadataValue.json(["x"])
    assert check_result(Verdict(False, "why")).severity == dg.AssetCheckSeverity.ERROR
