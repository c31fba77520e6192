"""External storage as configured: the object_store options of its settings (the same names for
obstore and delta-rs; credentials only by the names of the variables holding them), and the
storage they open."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlparse

from marketplace.object_storage import ObjectStorage
from marketplace.storage import LocalStorage, Storage, backend_of

AZURE_HOST = re.compile(r"^(?P<account>[^.]+)\.(dfs|blob)\.core\.windows\.net$")


def azure_account_of(uri: str) -> str | None:
    """The storage account an abfss://<container>@<account>.dfs.core.windows.net URI names."""
    match = AZURE_HOST.fullmatch(urlparse(uri).netloc.partition("@")[2])
    return match["account"] if match else None


def object_store_options(settings: Any) -> tuple[dict[str, str], dict[str, str]]:
    """(object_store options, {option: environment variable holding its value}) of the
    configuration's `external_storage` section (this layer sits below the configuration, so it
    reads the section's fields without naming its type)."""
    if settings.s3 is not None:
        s3 = settings.s3
        plain = {
            "aws_region": s3.region,
            "aws_endpoint": s3.endpoint,
            "aws_allow_http": _flag(s3.allow_http),
        }
        secret = {
            "aws_access_key_id": s3.access_key_id_env,
            "aws_secret_access_key": s3.secret_access_key_env,
            "aws_session_token": s3.session_token_env,
        }
    elif settings.azure is not None:
        azure = settings.azure
        plain = {
            "azure_storage_account_name": azure.account_name,
            "azure_storage_client_id": azure.client_id,
            "azure_storage_tenant_id": azure.tenant_id,
            "azure_use_azure_cli": _flag(azure.use_azure_cli),
            "azure_storage_endpoint": azure.endpoint,
            "azure_storage_use_emulator": _flag(azure.use_emulator),
            "azure_allow_http": _flag(azure.allow_http),
        }
        secret = {
            "azure_storage_account_key": azure.account_key_env,
            "azure_storage_sas_key": azure.sas_token_env,
            "azure_storage_client_secret": azure.client_secret_env,
        }
    else:
        plain, secret = {}, {}
    plain, secret = _present(plain), _present(secret)
    account = azure_account_of(settings.uri)
    if (
        backend_of(settings.uri) == "azure"
        and "azure_storage_account_name" not in plain
        and account
    ):
        plain["azure_storage_account_name"] = account
    return {**plain, **settings.storage_options}, {**secret, **settings.storage_options_env}


def open_storage(root: str, options: Mapping[str, str] | None = None) -> Storage:
    """The storage at `root`: a local folder, or an s3:// / az:// / abfss:// URI with its
    options."""
    if backend_of(root) == "local":
        return LocalStorage(root)
    return ObjectStorage(root, options)


def _flag(on: bool) -> str | None:
    return "true" if on else None


def _present(options: dict[str, str | None]) -> dict[str, str]:
    return {k: v for k, v in options.items() if v is not None}
