"""Every storage key comes from `layout`, and each one reads back as what it was made from."""

import datetime as dt
from urllib.parse import quote

from hypothesis import given
from hypothesis import strategies as st

from marketplace import layout

workspaces = st.from_regex(r"[a-z0-9_-]{1,64}", fullmatch=True)
models = st.text(min_size=1, max_size=400)
versions = st.integers(min_value=1, max_value=10**9)
days = st.dates(min_value=dt.date(2000, 1, 1), max_value=dt.date(2100, 12, 31))


@given(workspaces, models, versions)
def test_an_export_key_reads_back_as_its_workspace_model_and_version(workspace, model, version):
    key = layout.export_key(workspace, model, version)
    folder = layout.parse_export_key(key)
    assert folder is not None and (folder.workspace, folder.version, folder.key) == (
        workspace,
        version,
        key,
    )
    component = key.split("/")[2]
    assert len(component.encode()) <= layout.MAX_COMPONENT_BYTES and "/" not in component
    assert not component.startswith(".")  # never taken for a staging folder or hidden debris
    # A name reads back exactly, unless it was too long and carries a hash instead of its tail.
    shortened = len(quote(model, safe="-_").encode()) > layout.MAX_COMPONENT_BYTES
    assert folder.model_name == (None if shortened else model)
    inside = layout.export_folder_of_file(f"{key.removeprefix('exports/')}/m-1/artifacts/MLmodel")
    assert inside == (folder, "m-1/artifacts/MLmodel")


@given(workspaces, models, versions)
def test_skip_records_and_staging_folders_are_never_export_folders(workspace, model, version):
    assert layout.parse_export_key(layout.skip_record_key(workspace, model, version)) is None
    staging = (
        f"{layout.model_folder_key(workspace, model)}/{layout.staging_prefix(version)}abcd1234"
    )
    assert layout.parse_export_key(staging) is None


@given(st.lists(st.tuples(workspaces, models, versions), min_size=2, max_size=5, unique=True))
def test_different_versions_never_share_a_key(triples):
    assert len({layout.export_key(*t) for t in triples}) == len(triples)
    assert len({layout.lock_key("export", w, m, str(v)) for w, m, v in triples}) == len(triples)


@given(workspaces, days)
def test_a_snapshot_key_reads_back_as_its_workspace_and_date(workspace, day):
    key = layout.snapshot_key(workspace, day)
    assert layout.parse_snapshot_key(key) == (workspace, day)
    assert layout.parse_snapshot_key(key.removeprefix(f"{layout.SNAPSHOTS_DIR}/")) == (
        workspace,
        day,
    )
    assert layout.parse_snapshot_key(f"{key}{layout.TEMPORARY_MARK}4242") is None
    assert layout.is_temporary(f"{key}{layout.TEMPORARY_MARK}4242") and not layout.is_temporary(key)


def test_keys_that_are_not_the_layout_read_as_nothing():
    for key in (
        "exports/ws/model",
        "exports/ws/model/1/extra",
        "exports/ws/model/v1",
        "exports/.ws/m/1",
        "other/ws/model/1",
        "exports/ws//1",
        "exports/ws/model/١",
    ):
        assert layout.parse_export_key(key) is None, key
    for key in (
        "production_models/ws/2026-13-01.json",
        "production_models/ws/20260101.json",
        "production_models/ws/2026-01-01.txt",
        "production_models/2026-01-01.json",
    ):
        assert layout.parse_snapshot_key(key) is None, key
