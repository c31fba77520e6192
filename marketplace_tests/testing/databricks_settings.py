"""Databricks settings the tests share: a workspace connection (OAuth M2M) whose profile files go
under the test's own temporary folder, and the wheel and Pipes volume an export job names."""

from __future__ import annotations

import pytest

from marketplace.config import DatabricksConnection

WHEEL = "/Volumes/main/marketplace/wheels/marketplace-0.1.0-py3-none-any.whl"
VOLUME = "/Volumes/main/marketplace/pipes"


def connection_settings(monkeypatch: pytest.MonkeyPatch, tmp_path, **extra) -> DatabricksConnection:
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    fields = {
        "host": "https://adb-1.net",
        "auth": "oauth-m2m",
        "client_id": "sp",
        "secret_env": "DEV01_SECRET",
        **extra,
    }
    return DatabricksConnection(**fields)


PAT_CONNECTION = {
    "host": "https://adb-1.2.azuredatabricks.net",
    "auth": "pat",
    "secret_env": "DEV01_TOKEN",
}
S3_STORAGE = {
    "uri": "s3://bucket-a/mp",
    "s3": {"region": "eu-west-1", "access_key_id_env": "K_ID", "secret_access_key_env": "K_SECRET"},
}
SERVERLESS_EXPORT = {
    "engine": "databricks",
    "wheel": WHEEL,
    "serverless": True,
    "volume_path": VOLUME,
    "env": {"K_ID": "{{secrets/mp/id}}", "K_SECRET": "{{secrets/mp/secret}}"},
}
