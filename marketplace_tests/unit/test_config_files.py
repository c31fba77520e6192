"""The YAML configuration as a file: which file is loaded, its defaults, a file that is not
YAML or not a mapping, and storage paths relative to it."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from marketplace.config import CONFIG_ENV_VAR, ConfigError, load_config, parse_config
from marketplace.config.deployment import DEFAULT_CONFIG_PATH
from marketplace_tests.testing.config_files import load_error, minimal, write_yaml

REPOSITORY_CONFIG = Path(__file__).resolve().parents[2] / "marketplace.yaml"
PACKAGED_CONFIG = Path(__file__).resolve().parents[2] / "marketplace" / "marketplace.yaml"


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
