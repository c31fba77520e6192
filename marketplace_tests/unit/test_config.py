"""The YAML configuration: defaults, and errors that name the file and the key at fault."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
import yaml

from marketplace.config import CONFIG_ENV_VAR, ConfigError, load_config, parse_config
from marketplace.config.deployment import DEFAULT_CONFIG_PATH
from marketplace_tests.testing.config_files import (
    assert_names,
    load_error,
    minimal,
    second_workspace,
    write_yaml,
)

REPOSITORY_CONFIG = Path(__file__).resolve().parents[2] / "marketplace.yaml"
PACKAGED_CONFIG = Path(__file__).resolve().parents[2] / "marketplace" / "marketplace.yaml"

# --- a valid file and its defaults -----------------------------------------------------------


def test_minimal_file_loads_with_defaults(tmp_path):
    path = write_yaml(tmp_path, minimal())

    config = load_config(path)

    assert config.start_date == dt.date(2026, 1, 1)
    assert config.source_marker is True
    assert config.marketplace.name_template == "{workspace}.{model}"
    assert config.marketplace.alias == "production"
    assert config.marketplace.tracking_uri == "http://127.0.0.1:5000"
    assert [w.name for w in config.workspaces] == ["dev01"]
    workspace = config.workspace("dev01")
    assert workspace.include == ["*"]
    assert workspace.exclude == []
    assert workspace.production.stage == "Production"
    assert workspace.production.alias is None
    assert (workspace.tracking_uri, workspace.registry_uri) == ("http://127.0.0.1:5001", None)
    assert config.path == path.resolve()


def test_parse_config_accepts_an_already_parsed_document(tmp_path):
    config = parse_config(minimal(), tmp_path / "inline.yaml")
    assert config.workspaces[0].name == "dev01"
    assert config.path == (tmp_path / "inline.yaml").resolve()


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


# --- errors name the file and the key --------------------------------------------------------


def test_malformed_yaml_names_the_file_and_the_line(tmp_path):
    text = "external_storage:\n  uri: external\nmarketplace: [unclosed\nworkspaces: []\n"
    error, path = load_error(tmp_path, text)

    assert error.path == str(path)
    assert str(error).startswith(f"{path}: ")
    assert "not valid YAML" in str(error)
    assert "line 4" in str(error)


def test_missing_file_names_the_file(tmp_path):
    path = tmp_path / "absent.yaml"

    with pytest.raises(ConfigError) as info:
        load_config(path)

    assert info.value.path == str(path)
    assert str(info.value).startswith(f"{path}: ")
    assert "not found" in str(info.value)
    assert CONFIG_ENV_VAR in str(info.value)


@pytest.mark.parametrize("document", ["- a\n- b\n", "just a string\n", "", "42\n"])
def test_top_level_that_is_not_a_mapping_is_refused(tmp_path, document):
    error, path = load_error(tmp_path, document)

    assert error.path == str(path)
    assert str(error).startswith(f"{path}: ")
    assert "mapping" in str(error)


def test_missing_marketplace_tracking_uri_names_the_key(tmp_path):
    data = minimal()
    del data["marketplace"]["tracking_uri"]

    error, path = load_error(tmp_path, data)

    assert_names(error, path, "marketplace.tracking_uri")
    assert "required key is missing" in str(error)


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


@pytest.mark.parametrize("uri", ["localhost:5000", "ftp://x", "http://"])
def test_invalid_marketplace_tracking_uri_is_refused(tmp_path, uri):
    data = minimal()
    data["marketplace"]["tracking_uri"] = uri

    error, path = load_error(tmp_path, data)

    assert_names(error, path, "marketplace.tracking_uri")


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


def test_unknown_key_alone_is_the_error_key(tmp_path):
    data = minimal()
    data["workspaces"][0]["tracking_url"] = "http://127.0.0.1:5009"

    error, path = load_error(tmp_path, data)

    assert_names(error, path, "workspaces[0] (dev01).tracking_url")
    assert "unknown key" in str(error)


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


# --- external storage location ---------------------------------------------------------------


def test_relative_storage_uri_resolves_against_the_config_file_directory(tmp_path, monkeypatch):
    folder = tmp_path / "conf"
    folder.mkdir()
    data = minimal()
    data["external_storage"]["uri"] = "data/external"
    path = write_yaml(folder, data)
    monkeypatch.chdir(tmp_path)  # not the file's directory

    config = load_config(path)

    assert config.storage_root == str((folder / "data" / "external").resolve())


def test_relative_storage_uri_resolves_against_a_relative_config_path(tmp_path, monkeypatch):
    folder = tmp_path / "conf"
    folder.mkdir()
    write_yaml(folder, minimal())
    monkeypatch.chdir(tmp_path)

    config = load_config("conf/marketplace.yaml")
    monkeypatch.chdir(folder.parent.parent)  # the root stays fixed after loading

    assert config.storage_root == str((folder / "external").resolve())


def test_absolute_storage_uri_stays(tmp_path):
    target = tmp_path / "elsewhere" / "external"
    data = minimal()
    data["external_storage"]["uri"] = str(target)

    config = load_config(write_yaml(tmp_path, data))

    assert config.storage_root == str(target.resolve())


def test_file_uri_storage_is_an_absolute_path(tmp_path):
    target = tmp_path / "by uri" / "external"
    data = minimal()
    data["external_storage"]["uri"] = f"file://{target}"

    config = load_config(write_yaml(tmp_path, data))

    assert config.storage_root == str(target.resolve())


def test_percent_encoded_file_uri_is_decoded(tmp_path):
    target = tmp_path / "by uri" / "external"
    data = minimal()
    data["external_storage"]["uri"] = target.as_uri()  # file:///.../by%20uri/external

    config = load_config(write_yaml(tmp_path, data))

    assert "%20" in data["external_storage"]["uri"]
    assert config.storage_root == str(target.resolve())


# --- which file is loaded --------------------------------------------------------------------


def test_load_config_without_argument_reads_the_environment_variable(tmp_path, monkeypatch):
    data = minimal()
    data["workspaces"][0]["name"] = "from_env"
    path = write_yaml(tmp_path, data, name="env.yaml")
    monkeypatch.setenv(CONFIG_ENV_VAR, str(path))

    config = load_config()

    assert [w.name for w in config.workspaces] == ["from_env"]
    assert config.path == path.resolve()


def test_environment_variable_naming_a_missing_file_is_an_error(tmp_path, monkeypatch):
    path = tmp_path / "missing.yaml"
    monkeypatch.setenv(CONFIG_ENV_VAR, str(path))

    with pytest.raises(ConfigError) as info:
        load_config()

    assert info.value.path == str(path)


def test_load_config_without_argument_or_variable_loads_the_packaged_default(monkeypatch, tmp_path):
    monkeypatch.delenv(CONFIG_ENV_VAR, raising=False)
    monkeypatch.chdir(tmp_path)  # as an installed package, run from anywhere

    config = load_config()

    assert config.path == DEFAULT_CONFIG_PATH == PACKAGED_CONFIG
    # Its relative paths resolve against the working directory, never inside the package.
    assert config.storage_root == str((tmp_path / ".marketplace" / "external").resolve())
    # The repository's marketplace.yaml is a link to it that keeps resolving against the repository.
    assert REPOSITORY_CONFIG.resolve() == PACKAGED_CONFIG
    assert load_config(REPOSITORY_CONFIG).storage_root == str(
        REPOSITORY_CONFIG.parent / ".marketplace" / "external"
    )
    assert [w.name for w in config.workspaces] == ["dev01", "dev02", "dev03"]
    assert config.workspace("dev02").production.alias == "champion"
    assert config.workspace("dev03").exclude == ["scratch_*"]


# --- include / exclude -----------------------------------------------------------------------


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
