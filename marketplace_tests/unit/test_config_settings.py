"""The configuration's other settings: the marketplace section (tracking URI, name template,
alias), start date, crons and external storage; unknown keys; errors name the file and the
key at fault."""

from __future__ import annotations

import datetime as dt

import pytest
import yaml

from marketplace.config import load_config
from marketplace_tests.testing.config_files import (
    assert_names,
    load_error,
    minimal,
    second_workspace,
    write_yaml,
)


def test_missing_marketplace_tracking_uri_names_the_key(tmp_path):
    data = minimal()
    del data["marketplace"]["tracking_uri"]

    error, path = load_error(tmp_path, data)

    assert_names(error, path, "marketplace.tracking_uri")
    assert "required key is missing" in str(error)


@pytest.mark.parametrize("uri", ["localhost:5000", "ftp://x", "http://"])
def test_invalid_marketplace_tracking_uri_is_refused(tmp_path, uri):
    data = minimal()
    data["marketplace"]["tracking_uri"] = uri

    error, path = load_error(tmp_path, data)

    assert_names(error, path, "marketplace.tracking_uri")


def test_unknown_top_level_key_is_named(tmp_path):
    data = minimal()
    data["workspace"] = data.pop("workspaces")  # typo

    error, path = load_error(tmp_path, data)

    assert error.path == str(path)
    assert "workspace: unknown key (check its spelling)" in str(error)
    assert "workspaces: required key is missing" in str(error)


def test_misspelt_nested_key_is_named(tmp_path):
    data = minimal()
    data["marketplace"]["tracking_url"] = data["marketplace"].pop("tracking_uri")

    error, path = load_error(tmp_path, data)

    assert error.path == str(path)
    assert "marketplace.tracking_url: unknown key (check its spelling)" in str(error)


def test_name_template_without_model_is_refused(tmp_path):
    data = minimal()
    data["marketplace"]["name_template"] = "{workspace}.fixed"

    error, path = load_error(tmp_path, data)

    assert_names(error, path, "marketplace.name_template")
    assert "{model}" in str(error)


def test_name_template_with_unknown_placeholder_is_refused(tmp_path):
    data = minimal()
    data["marketplace"]["name_template"] = "{team}.{workspace}.{model}"

    error, path = load_error(tmp_path, data)

    assert_names(error, path, "marketplace.name_template")
    assert "team" in str(error)


def test_name_template_without_workspace_is_refused_with_two_workspaces(tmp_path):
    data = minimal()
    data["workspaces"].append(second_workspace())
    data["marketplace"]["name_template"] = "shared_{model}"

    error, path = load_error(tmp_path, data)

    assert_names(error, path, "marketplace.name_template")
    assert "{workspace}" in str(error)


def test_name_template_without_workspace_is_allowed_with_one_workspace(tmp_path):
    data = minimal()
    data["marketplace"]["name_template"] = "shared_{model}"

    config = load_config(write_yaml(tmp_path, data))

    assert config.marketplace.name_template == "shared_{model}"


def test_start_date_in_the_future_is_refused(tmp_path):
    data = minimal()
    data["start_date"] = (dt.datetime.now(dt.UTC).date() + dt.timedelta(days=30)).isoformat()

    error, path = load_error(tmp_path, data)

    assert_names(error, path, "start_date")
    assert "future" in str(error)


@pytest.mark.parametrize("value", ["soon", "2026-13-01", "01/02/2026"])
def test_start_date_that_is_not_a_date_is_refused(tmp_path, value):
    data = minimal()
    data["start_date"] = value

    error, path = load_error(tmp_path, data)

    assert_names(error, path, "start_date")


def test_start_date_as_unquoted_yaml_date_is_accepted(tmp_path):
    text = yaml.safe_dump(minimal()) + "start_date: 2026-03-04\n"

    config = load_config(write_yaml(tmp_path, text))

    assert config.start_date == dt.date(2026, 3, 4)


def test_start_date_as_timestamp_is_refused(tmp_path):
    text = yaml.safe_dump(minimal()) + "start_date: 2026-03-04T10:00:00\n"

    error, path = load_error(tmp_path, text)

    assert_names(error, path, "start_date")
    assert "timestamp" in str(error)


@pytest.mark.parametrize("alias", ["latest", "Latest", "v3"])
def test_reserved_marketplace_alias_is_refused(tmp_path, alias):
    data = minimal()
    data["marketplace"]["alias"] = alias

    error, path = load_error(tmp_path, data)

    assert_names(error, path, "marketplace.alias")
    assert "reserved" in str(error)


def test_external_storage_with_an_unsupported_scheme_is_refused(tmp_path):
    data = minimal()
    data["external_storage"]["uri"] = "gs://bucket/marketplace"

    error, path = load_error(tmp_path, data)

    assert_names(error, path, "external_storage.uri")
    assert "'gs' is not supported" in str(error) and "s3://, abfss:// or az://" in str(error)


def test_file_uri_with_a_host_part_is_refused(tmp_path):
    data = minimal()
    data["external_storage"]["uri"] = "file://relative/folder"

    error, path = load_error(tmp_path, data)

    assert_names(error, path, "external_storage.uri")


def test_several_errors_are_all_reported_and_the_first_is_the_key(tmp_path):
    data = minimal()
    data["marketplace"]["alias"] = "latest"
    data["workspaces"][0]["tracking_uri"] = "ftp://x"

    error, _path = load_error(tmp_path, data)

    assert error.key == "marketplace.alias"
    assert "marketplace.alias:" in str(error)
    assert "workspaces[0] (dev01).tracking_uri:" in str(error)


# Found by the fuzzing in test_config_fuzz.py: crons croniter accepts but Dagster cannot schedule.
@pytest.mark.parametrize(
    "section, key",
    [
        ("schedule", "cron"),
        ("checks", "cron"),
        ("housekeeping", "cron"),
        ("freshness", "check_cron"),
    ],
)
@pytest.mark.parametrize("cron", ["0 2 * * * *", "0 2 30 2 *", "not a cron", "61 * * * *"])
def test_cron_dagster_cannot_schedule_is_refused(tmp_path, section, key, cron):
    data = minimal()
    data[section] = {key: cron}
    error, path = load_error(tmp_path, data)
    assert error.key == f"{section}.{key}"
    assert str(path) in str(error) and "5 fields" in str(error)


def test_control_character_in_external_storage_is_refused(tmp_path):
    data = minimal()
    data["external_storage"]["uri"] = "external\x00/x"
    error, _ = load_error(tmp_path, data)
    assert error.key == "external_storage.uri" and "control characters" in str(error)


@pytest.mark.parametrize("name", ["1KEY", "MY-KEY", "has space", "", "K" * 129])
def test_signing_key_env_must_name_an_environment_variable(tmp_path, name):
    data = minimal()
    data["external_storage"]["signing_key_env"] = name
    error, _ = load_error(tmp_path, data)
    assert error.key == "external_storage.signing_key_env"
