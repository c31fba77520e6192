"""The security and signing settings: defaults, and every wrong value named by its key."""

from __future__ import annotations

import pytest

from marketplace.config import load_config
from marketplace.errors import MarketplaceError
from marketplace.registries import SourceRegistries
from marketplace.signatures import generate_key_pair
from marketplace_dagster.resources import build_resources
from marketplace_tests.testing.config_files import (
    assert_names,
    load_error,
    minimal,
    second_workspace,
    write_yaml,
)


@pytest.fixture
def keys(tmp_path):
    private, public = generate_key_pair()
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "dev01.pub.pem").write_text(public)
    return private, public


def test_scanning_blocks_at_high_by_default_and_signatures_are_optional(tmp_path):
    config = load_config(write_yaml(tmp_path, minimal()))
    assert (
        config.security.scan,
        config.security.block_severity,
        config.security.allow_globals,
    ) == ("block", "high", [])
    assert config.require_signatures is False
    assert SourceRegistries(config).public_key("dev01") is None
    marketplace = build_resources(config)["marketplace"]
    assert marketplace.scan_policy.mode == "block" and marketplace.require_signatures is False


def test_a_public_key_file_relative_to_the_configuration_turns_signatures_on(tmp_path, keys):
    data = minimal()
    data["workspaces"][0]["signing"] = {
        "private_key_env": "DEV01_SIGNING_KEY",
        "public_key": "keys/dev01.pub.pem",
    }
    config = load_config(write_yaml(tmp_path, data))
    assert config.require_signatures is True
    assert SourceRegistries(config).public_key("dev01") == keys[1]
    workspaces = build_resources(config)["workspaces"]
    assert workspaces.get("dev01").signing.private_key_env == "DEV01_SIGNING_KEY"
    assert workspaces.public_key("dev01") == keys[1]


def test_an_inline_public_key_is_accepted(tmp_path, keys):
    data = minimal()
    data["workspaces"][0]["signing"] = {"public_key": keys[1]}
    config = load_config(write_yaml(tmp_path, data))
    assert SourceRegistries(config).public_key("dev01").strip() == keys[1].strip()


@pytest.mark.parametrize(
    ("security", "key", "says"),
    [
        ({"scan": "strict"}, "security.scan", "'block', 'warn' or 'off'"),
        (
            {"block_severity": "severe"},
            "security.block_severity",
            "'low', 'medium', 'high' or 'critical'",
        ),
        ({"allow_globals": ["system"]}, "security.allow_globals", "not a global as module.name"),
        (
            {"allow_globals": ["(unscannable)"]},
            "security.allow_globals",
            "not a global as module.name",
        ),
        ({"scanner": "x"}, "security.scanner", "unknown key"),
    ],
)
def test_wrong_security_values_name_the_key(tmp_path, security, key, says):
    data = minimal()
    data["security"] = security
    error, path = load_error(tmp_path, data)
    assert error.key.startswith(key) and says in str(error)
    assert str(error).startswith(f"{path}: ")


def test_severity_is_read_in_any_case(tmp_path):
    data = minimal()
    data["security"] = {"block_severity": "CRITICAL", "allow_globals": ["posix.system"]}
    config = load_config(write_yaml(tmp_path, data))
    assert config.security.block_severity == "critical" and config.security.allow_globals == [
        "posix.system"
    ]


@pytest.mark.parametrize(
    ("public_key", "says"),
    [
        ("keys/missing.pem", "does not exist"),
        ("keys/not-a-key.pem", "is not a PEM EC public key"),
        (
            "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
            "is not a PEM EC public key",
        ),
    ],
)
def test_a_public_key_that_is_missing_or_not_a_key_names_the_key(tmp_path, keys, public_key, says):
    (tmp_path / "keys" / "not-a-key.pem").write_text("hello\n")
    data = minimal()
    data["workspaces"][0]["signing"] = {"public_key": public_key}
    error, path = load_error(tmp_path, data)
    assert_names(error, path, "workspaces[0] (dev01).signing.public_key")
    assert says in str(error)


def test_a_private_key_given_as_the_public_key_is_refused_without_echoing_it(tmp_path, keys):
    data = minimal()
    data["workspaces"][0]["signing"] = {"public_key": keys[0]}
    error, path = load_error(tmp_path, data)
    assert_names(error, path, "workspaces[0] (dev01).signing.public_key")
    assert keys[0].splitlines()[1] not in str(error)


def test_required_signatures_need_every_workspace_to_have_a_public_key(tmp_path, keys):
    data = minimal()
    data["workspaces"][0]["signing"] = {"public_key": "keys/dev01.pub.pem"}
    data["workspaces"].append(second_workspace())
    error, path = load_error(tmp_path, data)
    assert_names(error, path, "workspaces[1] (dev02).signing.public_key")
    assert "require_signatures" in str(error)

    data["marketplace"]["require_signatures"] = False
    config = load_config(write_yaml(tmp_path, data))
    assert config.require_signatures is False
    assert SourceRegistries(config).public_key("dev02") is None


def test_required_signatures_without_any_key_are_refused(tmp_path):
    data = minimal()
    data["marketplace"]["require_signatures"] = True
    error, path = load_error(tmp_path, data)
    assert_names(error, path, "workspaces[0] (dev01).signing.public_key")


@pytest.mark.parametrize("variable", ["lower-case", "1ABC", ""])
def test_private_key_env_must_be_a_variable_name(tmp_path, variable):
    data = minimal()
    data["workspaces"][0]["signing"] = {"private_key_env": variable}
    error, _path = load_error(tmp_path, data)
    assert error.key == "workspaces[0] (dev01).signing.private_key_env"


def test_the_shared_hmac_key_still_works_but_is_deprecated_at_load(tmp_path):
    data = minimal()
    data["external_storage"]["signing_key_env"] = "MARKETPLACE_SIGNING_KEY"
    with pytest.warns(FutureWarning, match="signing_key_env .* is deprecated"):
        config = load_config(write_yaml(tmp_path, data))
    assert config.external_storage.signing_key_env == "MARKETPLACE_SIGNING_KEY"


def test_a_databricks_export_job_must_get_the_signing_key_from_a_secret(tmp_path, keys):
    data = minimal()
    data["external_storage"] = {"uri": "s3://bucket/market"}
    data["workspaces"][0] = {
        "name": "dev01",
        "databricks": {
            "host": "https://adb-1.2.azuredatabricks.net",
            "auth": "pat",
            "secret_env": "DEV01_TOKEN",
        },
        "production": {"stage": "Production"},
        "export": {
            "engine": "databricks",
            "wheel": "/Volumes/main/m/w/m.whl",
            "new_cluster": {"spark_version": "15.4"},
        },
        "signing": {"private_key_env": "DEV01_SIGNING_KEY", "public_key": "keys/dev01.pub.pem"},
    }
    error, path = load_error(tmp_path, data)
    assert_names(error, path, "workspaces[0] (dev01).export.env")
    assert "DEV01_SIGNING_KEY (signing.private_key_env)" in str(error)

    data["workspaces"][0]["export"]["env"] = {
        "DEV01_SIGNING_KEY": "{{secrets/marketplace/dev01-signing-key}}"
    }
    assert (
        load_config(write_yaml(tmp_path, data)).workspace("dev01").signing.private_key_env
        == "DEV01_SIGNING_KEY"
    )


def test_a_missing_or_wrong_private_key_fails_where_the_export_runs_naming_the_key(
    tmp_path, keys, monkeypatch
):
    data = minimal()
    data["workspaces"][0]["signing"] = {
        "private_key_env": "DEV01_SIGNING_KEY",
        "public_key": "keys/dev01.pub.pem",
    }
    workspaces = build_resources(load_config(write_yaml(tmp_path, data)))["workspaces"]
    monkeypatch.delenv("DEV01_SIGNING_KEY", raising=False)
    with pytest.raises(
        MarketplaceError,
        match=r"workspace dev01: signing.private_key_env: the environment variable "
        r"DEV01_SIGNING_KEY is not set",
    ):
        workspaces.private_key("dev01")
    monkeypatch.setenv("DEV01_SIGNING_KEY", keys[1])  # the public key by mistake
    with pytest.raises(
        MarketplaceError, match="DEV01_SIGNING_KEY: .*public key, not a PEM EC private key"
    ):
        workspaces.private_key("dev01")
    monkeypatch.setenv("DEV01_SIGNING_KEY", keys[0])
    assert workspaces.private_key("dev01") == keys[0]


def test_models_load_in_namespaces_with_limits_by_default(tmp_path):
    config = load_config(write_yaml(tmp_path, minimal()))
    settings = build_resources(config)["marketplace"].sandbox_settings
    assert (settings.mode, settings.timeout_seconds, settings.memory_mb) == (
        "namespaces",
        300.0,
        4096,
    )
    data = minimal()
    data["security"] = {"sandbox": {"mode": "process", "timeout_seconds": 30, "memory_mb": 1024}}
    settings = load_config(write_yaml(tmp_path, data)).security.sandbox.settings()
    assert (settings.mode, settings.timeout_seconds, settings.memory_mb) == ("process", 30.0, 1024)


@pytest.mark.parametrize(
    ("sandbox", "key"),
    [
        ({"mode": "docker"}, "security.sandbox.mode"),
        ({"timeout_seconds": 0}, "security.sandbox.timeout_seconds"),
        ({"memory_mb": 64}, "security.sandbox.memory_mb"),
        ({"network": True}, "security.sandbox.network"),
    ],
)
def test_a_wrong_sandbox_setting_is_named_by_its_key(tmp_path, sandbox, key):
    data = minimal()
    data["security"] = {"sandbox": sandbox}
    error, path = load_error(tmp_path, data)
    assert_names(error, path, key)
