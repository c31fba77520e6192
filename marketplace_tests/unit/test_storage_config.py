"""Cloud external storage settings: what loads, what each becomes, and every wrong one named."""

from __future__ import annotations

import pytest

from marketplace.config import ConfigError, parse_config
from marketplace.errors import MarketplaceError
from marketplace.external import configured_storage
from marketplace.object_storage import ObjectStorage, split_options
from marketplace.storage_options import object_store_options
from marketplace_dagster.resources import build_resources

BASE = {
    "marketplace": {"tracking_uri": "http://127.0.0.1:5000"},
    "workspaces": [
        {
            "name": "dev01",
            "tracking_uri": "http://127.0.0.1:5001",
            "production": {"stage": "Production"},
        }
    ],
}


def _config(storage: dict):
    return parse_config({**BASE, "external_storage": storage}, "deploy.yaml")


def test_s3_settings_become_object_store_options_with_credentials_by_variable(monkeypatch):
    config = _config(
        {
            "uri": "s3://acme-ml-marketplace/prod/",
            "s3": {
                "region": "eu-west-1",
                "endpoint": "http://127.0.0.1:9000",
                "allow_http": True,
                "access_key_id_env": "MP_KEY_ID",
                "secret_access_key_env": "MP_SECRET",
                "session_token_env": "MP_TOKEN",
            },
            "storage_options": {"aws_conditional_put": "etag", "timeout": "30s"},
        }
    )
    assert config.storage_root == "s3://acme-ml-marketplace/prod"
    plain, secret = object_store_options(config.external_storage)
    assert plain == {
        "aws_region": "eu-west-1",
        "aws_endpoint": "http://127.0.0.1:9000",
        "aws_allow_http": "true",
        "aws_conditional_put": "etag",
        "timeout": "30s",
    }
    assert secret == {
        "aws_access_key_id": "MP_KEY_ID",
        "aws_secret_access_key": "MP_SECRET",
        "aws_session_token": "MP_TOKEN",
    }
    resource = build_resources(config)["external_storage"]
    assert object_store_options(resource.settings) == (plain, secret)  # names only, no value
    for name, value in (("MP_KEY_ID", "id"), ("MP_SECRET", "s3cret"), ("MP_TOKEN", "tok")):
        monkeypatch.setenv(name, value)
    storage = configured_storage(config)
    assert isinstance(storage, ObjectStorage)
    assert storage.delta_options() == {
        **plain,
        "aws_access_key_id": "id",
        "aws_secret_access_key": "s3cret",
        "aws_session_token": "tok",
    }
    store_config, client = split_options(storage.delta_options())
    assert client == {"allow_http": True, "timeout": "30s"} and "aws_allow_http" not in store_config


def test_azure_account_comes_from_the_uri_and_emulator_flags_are_kept():
    config = _config(
        {
            "uri": "abfss://models@acmemlstorage.dfs.core.windows.net/prod",
            "azure": {
                "client_id": "0c1d",
                "tenant_id": "9a8b",
                "client_secret_env": "MP_AZ_SECRET",
            },
        }
    )
    plain, secret = object_store_options(config.external_storage)
    assert plain == {
        "azure_storage_account_name": "acmemlstorage",
        "azure_storage_client_id": "0c1d",
        "azure_storage_tenant_id": "9a8b",
    }
    assert secret == {"azure_storage_client_secret": "MP_AZ_SECRET"}
    emulated = _config(
        {
            "uri": "az://models/prod",
            "azure": {"use_emulator": True, "allow_http": True},
            "storage_options_env": {"azure_storage_account_key": "AZ_KEY"},
        }
    )
    assert object_store_options(emulated.external_storage) == (
        {"azure_storage_use_emulator": "true", "azure_allow_http": "true"},
        {"azure_storage_account_key": "AZ_KEY"},
    )


def test_a_missing_credential_variable_names_it_and_not_a_value(monkeypatch):
    config = _config(
        {
            "uri": "s3://acme-ml-marketplace/prod",
            "s3": {"access_key_id_env": "MP_KEY_ID", "secret_access_key_env": "MP_SECRET"},
        }
    )
    monkeypatch.setenv("MP_KEY_ID", "AKIA-the-id")
    monkeypatch.delenv("MP_SECRET", raising=False)
    with pytest.raises(MarketplaceError) as raised:
        configured_storage(config)
    assert str(raised.value) == (
        "external storage s3://acme-ml-marketplace/prod: the environment variable "
        "MP_SECRET (holding its aws_secret_access_key) is not set"
    )


S3 = "s3://acme-ml-marketplace/prod"


@pytest.mark.parametrize(
    "storage, key, says",
    [
        ({"uri": "s3://ab/x"}, "external_storage.uri", "valid bucket name"),
        ({"uri": "s3://"}, "external_storage.uri", "s3://<bucket>"),
        ({"uri": "s3://Bad_Bucket/x"}, "external_storage.uri", "valid bucket name"),
        ({"uri": f"{S3}?region=eu"}, "external_storage.uri", "no query"),
        (
            {"uri": "abfss://UPPER@acct.dfs.core.windows.net/x"},
            "external_storage.uri",
            "valid container name",
        ),
        (
            {"uri": "abfss://models@acct.example.com/x"},
            "external_storage.uri",
            "dfs.core.windows.net",
        ),
        ({"uri": "gs://bucket/x"}, "external_storage.uri", "not supported"),
        ({"uri": "az://models/x"}, "external_storage.azure.account_name", "required"),
        (
            {
                "uri": "abfss://models@acct1.dfs.core.windows.net/x",
                "azure": {"account_name": "other1"},
            },
            "external_storage.azure.account_name",
            "differs from the account in the uri",
        ),
        (
            {"uri": "local-folder", "s3": {"region": "eu-west-1"}},
            "external_storage.s3",
            "only for an s3:// uri",
        ),
        (
            {"uri": S3, "azure": {"account_name": "acct1"}},
            "external_storage.azure",
            "only for an abfss:// or az://",
        ),
        (
            {"uri": "local-folder", "storage_options": {"timeout": "5s"}},
            "external_storage.storage_options",
            "only for s3://",
        ),
        (
            {"uri": S3, "s3": {"region": "eu", "bucket": "x"}},
            "external_storage.s3.bucket",
            "unknown key",
        ),
        ({"uri": S3, "s3": {"access_key_id_env": "ID"}}, "external_storage.s3", "together"),
        (
            {"uri": S3, "s3": {"session_token_env": "T"}},
            "external_storage.s3",
            "session_token_env goes with",
        ),
        (
            {"uri": S3, "s3": {"endpoint": "http://minio:9000"}},
            "external_storage.s3",
            "allow_http: true",
        ),
        (
            {"uri": S3, "s3": {"endpoint": "minio:9000"}},
            "external_storage.s3.endpoint",
            "endpoint URL",
        ),
        (
            {"uri": S3, "s3": {"endpoint": "https://key:secret@minio"}},
            "external_storage.s3.endpoint",
            "credentials",
        ),
        (
            {"uri": S3, "s3": {"secret_access_key_env": "not a name", "access_key_id_env": "ID"}},
            "external_storage.s3.secret_access_key_env",
            "pattern",
        ),
        (
            {"uri": S3, "storage_options": {"aws_secret_access_key": "x"}},
            "external_storage.storage_options",
            "storage_options_env",
        ),
        (
            {"uri": S3, "storage_options": {"aws_access_key_id": "x"}},
            "external_storage.storage_options",
            "holds a credential",
        ),
        (
            {"uri": S3, "storage_options": {"aws_s3_locking_provider": "dynamodb"}},
            "external_storage.storage_options",
            "no DynamoDB locking",
        ),
        (
            {"uri": S3, "storage_options": {"AWS_S3_ALLOW_UNSAFE_RENAME": "true"}},
            "external_storage.storage_options",
            "ignores this",
        ),
        (
            {"uri": S3, "storage_options": {"aws_conditional_put": "disabled"}},
            "external_storage.storage_options",
            "every Delta commit fail",
        ),
        (
            {"uri": S3, "storage_options": {"aws_no_such_option": "1"}},
            "external_storage.storage_options",
            "'aws_no_such_option' is not valid",
        ),
        (
            {"uri": S3, "storage_options_env": {"aws_secret_access_key": "1NOTAVAR"}},
            "external_storage.storage_options_env.aws_secret_access_key",
            "pattern",
        ),
        (
            {"uri": "az://models/x", "azure": {"account_name": "Bad-Name"}},
            "external_storage.azure.account_name",
            "storage account name",
        ),
        (
            {
                "uri": "az://models/x",
                "azure": {"account_name": "acct1", "account_key_env": "K", "sas_token_env": "S"},
            },
            "external_storage.azure",
            "choose one way",
        ),
        (
            {
                "uri": "az://models/x",
                "azure": {"account_name": "acct1", "client_id": "c", "client_secret_env": "S"},
            },
            "external_storage.azure",
            "client_id, tenant_id and client_secret_env together",
        ),
        (
            {
                "uri": "az://models/x",
                "azure": {"use_emulator": True, "endpoint": "https://acct1.blob.core.windows.net"},
            },
            "external_storage.azure",
            "give endpoint or use_emulator",
        ),
        (
            {
                "uri": "az://models/x",
                "azure": {
                    "account_name": "devstoreaccount1",
                    "allow_http": True,
                    "endpoint": "http://127.0.0.1:10000/devstoreaccount1",
                },
            },
            "external_storage.azure",
            "use_emulator: true",
        ),
    ],
)
def test_wrong_storage_settings_name_the_key(storage, key, says):
    with pytest.raises(ConfigError) as raised:
        _config(storage)
    assert raised.value.key == key and says in str(raised.value), str(raised.value)


@pytest.mark.parametrize(
    "size", [0, 1, 5 * 1024**2, 49 * 1024**3, 50 * 1024**3, 51 * 1024**3, 1024**4, 5 * 1024**4]
)
def test_multipart_parts_stay_within_what_object_stores_take(size):
    from marketplace.object_storage import MAX_PARTS, MIN_PART_BYTES, part_bytes

    part = part_bytes(size)
    assert part >= MIN_PART_BYTES and part % (1024 * 1024) == 0
    assert -(-size // part) <= MAX_PARTS
    if size <= MAX_PARTS * MIN_PART_BYTES:
        assert part == MIN_PART_BYTES  # obstore's own part size wherever it suffices
