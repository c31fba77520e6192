"""The configuration's workspaces: production by stage or alias, names, tracking URIs, include
and exclude; errors name the file, the workspace's index and its name."""

from __future__ import annotations

import pytest

from marketplace.config import load_config
from marketplace_tests.testing.config_files import (
    assert_names,
    load_error,
    minimal,
    second_workspace,
    write_yaml,
)


def test_production_alias_is_accepted(tmp_path):
    data = minimal()
    data["workspaces"][0]["production"] = {"alias": "champion"}

    config = load_config(write_yaml(tmp_path, data))

    assert config.workspaces[0].production.alias == "champion"
    assert config.workspaces[0].production.stage is None


def test_production_with_both_stage_and_alias_is_refused(tmp_path):
    data = minimal()
    data["workspaces"][0]["production"] = {"stage": "Production", "alias": "champion"}

    error, path = load_error(tmp_path, data)

    assert_names(error, path, "workspaces[0] (dev01).production")
    assert "exactly one" in str(error)


def test_production_with_neither_stage_nor_alias_is_refused(tmp_path):
    data = minimal()
    data["workspaces"][0]["production"] = {}

    error, path = load_error(tmp_path, data)

    assert_names(error, path, "workspaces[0] (dev01).production")


def test_second_workspace_error_names_its_index_and_name(tmp_path):
    data = minimal()
    data["workspaces"].append(second_workspace())
    data["workspaces"][1]["production"] = {"stage": "Production", "alias": "champion"}

    error, path = load_error(tmp_path, data)

    assert_names(error, path, "workspaces[1] (dev02).production")


def test_missing_workspaces_names_the_key(tmp_path):
    data = minimal()
    del data["workspaces"]

    error, path = load_error(tmp_path, data)

    assert_names(error, path, "workspaces")
    assert "required key is missing" in str(error)


def test_empty_workspaces_list_is_refused(tmp_path):
    data = minimal()
    data["workspaces"] = []

    error, path = load_error(tmp_path, data)

    assert_names(error, path, "workspaces")


def test_duplicate_workspace_name_names_the_second_entry(tmp_path):
    data = minimal()
    data["workspaces"].append(second_workspace("dev01"))

    error, path = load_error(tmp_path, data)

    assert_names(error, path, "workspaces[1].name")
    assert "duplicate" in str(error)
    assert "'dev01'" in str(error)


@pytest.mark.parametrize(
    "uri", ["localhost:5000", "ftp://x", "http://", "127.0.0.1:5001", "http://:5001"]
)
def test_invalid_workspace_tracking_uri_is_refused(tmp_path, uri):
    data = minimal()
    data["workspaces"][0]["tracking_uri"] = uri

    error, path = load_error(tmp_path, data)

    assert_names(error, path, "workspaces[0] (dev01).tracking_uri")
    assert "not a tracking server URI" in str(error)


def test_invalid_port_is_refused(tmp_path):
    data = minimal()
    data["workspaces"][0]["tracking_uri"] = "http://127.0.0.1:99999"

    error, path = load_error(tmp_path, data)

    assert_names(error, path, "workspaces[0] (dev01).tracking_uri")
    assert "invalid port" in str(error)


def test_valid_tracking_uris_are_accepted_and_trailing_slash_dropped(tmp_path):
    data = minimal()
    data["workspaces"][0]["tracking_uri"] = "https://dbc-123.cloud.databricks.com/"
    data["marketplace"]["registry_uri"] = "http://127.0.0.1:5010"

    config = load_config(write_yaml(tmp_path, data))

    assert config.workspaces[0].tracking_uri == "https://dbc-123.cloud.databricks.com"
    assert config.marketplace.registry_uri == "http://127.0.0.1:5010"


@pytest.mark.parametrize("name", ["Dev01", "dev 01", "a|b", "", "x" * 65, "dév01", "dev/01"])
def test_invalid_workspace_name_is_refused(tmp_path, name):
    data = minimal()
    data["workspaces"][0]["name"] = name

    error, path = load_error(tmp_path, data)

    assert error.path == str(path)
    assert error.key.startswith("workspaces[0]")
    assert error.key.endswith(".name")
    assert str(error).startswith(f"{path}: {error.key}: ")
    assert "not a valid workspace name" in str(error)


def test_empty_workspace_name_error_has_no_empty_label(tmp_path):
    data = minimal()
    data["workspaces"][0]["name"] = ""

    error, path = load_error(tmp_path, data)

    assert_names(error, path, "workspaces[0].name")


@pytest.mark.parametrize("name", ["dev01", "a", "x" * 64, "team_a-prod", "0"])
def test_valid_workspace_names_are_accepted(tmp_path, name):
    data = minimal()
    data["workspaces"][0]["name"] = name

    assert load_config(write_yaml(tmp_path, data)).workspaces[0].name == name


def test_unknown_key_alone_is_the_error_key(tmp_path):
    data = minimal()
    data["workspaces"][0]["tracking_url"] = "http://127.0.0.1:5009"

    error, path = load_error(tmp_path, data)

    assert_names(error, path, "workspaces[0] (dev01).tracking_url")
    assert "unknown key" in str(error)


def test_include_and_exclude_glob_lists_are_accepted(tmp_path):
    data = minimal()
    data["workspaces"][0]["include"] = ["churn_*", "fraud?", "[a-c]*"]
    data["workspaces"][0]["exclude"] = ["*_scratch", "tmp*"]

    workspace = load_config(write_yaml(tmp_path, data)).workspaces[0]

    assert workspace.include == ["churn_*", "fraud?", "[a-c]*"]
    assert workspace.exclude == ["*_scratch", "tmp*"]


@pytest.mark.parametrize("field", ["include", "exclude"])
def test_empty_glob_pattern_is_refused(tmp_path, field):
    data = minimal()
    data["workspaces"][0][field] = ["churn_*", ""]

    error, path = load_error(tmp_path, data)

    assert_names(error, path, f"workspaces[0] (dev01).{field}")
    assert "empty glob pattern" in str(error)


def test_workspace_lookup_of_an_unknown_name_raises_key_error(tmp_path):
    config = load_config(write_yaml(tmp_path, minimal()))
    with pytest.raises(KeyError, match="dev99"):
        config.workspace("dev99")
