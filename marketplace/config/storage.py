"""The `external_storage` section: where exports and the summary tables live (a local folder, an S3
bucket or an ADLS container) and how to reach it, credentials only by the names of the variables
holding them. `marketplace.storage_options` turns these settings into object_store options."""

from __future__ import annotations

import re
from urllib.parse import urlparse

from pydantic import Field, field_validator, model_validator

from marketplace.config.base import ENV_NAME, EnvName, KeyedError, Strict
from marketplace.object_storage import ObjectStorage
from marketplace.storage import StorageError, backend_of
from marketplace.storage_options import AZURE_HOST, azure_account_of, object_store_options

# Option names that hold credentials: only ever read from the environment.
SECRET_OPTION = re.compile(r"(?i)secret|password|token|sas|(^|_)(access_)?key($|_id$)|credential")
# delta-rs 1.x commits with conditional puts; these belonged to its old S3 locking and do nothing
# now.
OBSOLETE_OPTIONS = re.compile(
    r"(?i)^(aws_)?(s3_locking_provider|dynamo\w*|s3_allow_unsafe_rename|allow_unsafe_rename)$"
)
S3_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
AZURE_CONTAINER = re.compile(r"^(\$root|[a-z0-9](?!.*--)[a-z0-9-]{1,61}[a-z0-9])$")
AZURE_ACCOUNT = re.compile(r"^[a-z0-9]{3,24}$")


def _endpoint(value: str | None) -> str | None:
    if value is None:
        return None
    parsed = urlparse(value)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ValueError(f"{value!r} is not an endpoint URL (https://host[:port])")
    if parsed.username or parsed.password:
        raise ValueError(
            "the endpoint must not carry credentials; name their environment variables"
        )
    return value.rstrip("/")


class S3StorageConfig(Strict):
    """An S3 bucket (or an S3-compatible store). Without key variables, credentials come from the
    AWS default chain: AWS_* variables, web identity, the instance or task role."""

    region: str | None = None
    endpoint: str | None = None  # an S3-compatible service (MinIO, R2, an emulator)
    allow_http: bool = False
    access_key_id_env: EnvName | None = None
    secret_access_key_env: EnvName | None = None
    session_token_env: EnvName | None = None

    _endpoint = field_validator("endpoint")(classmethod(lambda cls, v: _endpoint(v)))

    @model_validator(mode="after")
    def _consistent(self) -> S3StorageConfig:
        if (self.access_key_id_env is None) != (self.secret_access_key_env is None):
            raise ValueError(
                "set access_key_id_env and secret_access_key_env together (or neither, for the "
                "AWS default credential chain)"
            )
        if self.session_token_env and not self.access_key_id_env:
            raise ValueError(
                "session_token_env goes with access_key_id_env and secret_access_key_env"
            )
        if self.endpoint and self.endpoint.startswith("http://") and not self.allow_http:
            raise ValueError(
                f"endpoint {self.endpoint} is plain HTTP: set allow_http: true if that is meant"
            )
        return self


class AzureStorageConfig(Strict):
    """An ADLS Gen2 / Blob storage container. Without a key, SAS token or client secret, credentials
    come from AZURE_* variables, workload identity or the managed identity."""

    account_name: str | None = None
    account_key_env: EnvName | None = None
    sas_token_env: EnvName | None = None
    client_id: str | None = None
    tenant_id: str | None = None
    client_secret_env: EnvName | None = None
    use_azure_cli: bool = False
    endpoint: str | None = None  # e.g. Azurite: http://127.0.0.1:10000/devstoreaccount1
    use_emulator: bool = (
        False  # Azurite at $AZURITE_BLOB_STORAGE_URL (default http://127.0.0.1:10000)
    )
    allow_http: bool = False

    _endpoint = field_validator("endpoint")(classmethod(lambda cls, v: _endpoint(v)))

    @field_validator("account_name")
    @classmethod
    def _account(cls, value: str | None) -> str | None:
        if value is not None and not AZURE_ACCOUNT.fullmatch(value):
            raise ValueError(
                f"{value!r} is not a storage account name (3-24 lower-case letters and digits)"
            )
        return value

    @model_validator(mode="after")
    def _consistent(self) -> AzureStorageConfig:
        methods = [
            k for k in ("account_key_env", "sas_token_env", "client_secret_env") if getattr(self, k)
        ]
        if len(methods) > 1:
            raise ValueError(f"{' and '.join(methods)}: choose one way to authenticate")
        if (self.client_secret_env is not None) != (
            self.client_id is not None and self.tenant_id is not None
        ):
            raise ValueError(
                "a service principal needs client_id, tenant_id and client_secret_env together"
            )
        if self.endpoint and self.endpoint.startswith("http://") and not self.allow_http:
            raise ValueError(
                f"endpoint {self.endpoint} is plain HTTP: set allow_http: true if that is meant"
            )
        if self.use_emulator and self.endpoint:
            raise ValueError(
                "use_emulator reads its URL from AZURITE_BLOB_STORAGE_URL; give endpoint or "
                "use_emulator"
            )
        _not_azurite_endpoint(self.endpoint)
        return self


def _not_azurite_endpoint(endpoint: str | None) -> None:
    """Against Azurite through an endpoint, delta-rs lists the log from an offset (`startFrom`),
    which Azurite ignores: every commit after a table's second failed ("Invalid table version").
    Emulator mode lists without it."""
    parsed = urlparse(endpoint or "")
    if (
        parsed.hostname in ("127.0.0.1", "localhost", "::1")
        and parsed.path.strip("/") == "devstoreaccount1"
    ):
        raise ValueError(
            f"{endpoint} is Azurite: set use_emulator: true and "
            f"AZURITE_BLOB_STORAGE_URL={parsed.scheme}://{parsed.netloc} instead (through an "
            "endpoint, Delta commits fail there after a table's second)"
        )


class ExternalStorageConfig(Strict):
    uri: str = Field(min_length=1)
    # The environment variable holding the manifest signing key (never the key itself).
    signing_key_env: str | None = Field(default=None, pattern=ENV_NAME)
    s3: S3StorageConfig | None = None
    azure: AzureStorageConfig | None = None
    # Further object_store options (the same names for delta-rs and the export files), merged last.
    storage_options: dict[str, str] = Field(default_factory=dict)
    # Further options whose values are read from these environment variables when a run starts.
    storage_options_env: dict[str, EnvName] = Field(default_factory=dict)

    @field_validator("uri")
    @classmethod
    def _uri(cls, value: str) -> str:
        if any(ord(c) < 32 for c in value):
            raise ValueError(f"{value!r}: control characters are not allowed in a path")
        parsed = urlparse(value)
        scheme = parsed.scheme.lower()
        if scheme in ("s3",):
            if not S3_BUCKET.fullmatch(parsed.netloc or ""):
                raise ValueError(
                    f"{value!r}: expected s3://<bucket>[/prefix] with a valid bucket name"
                )
        elif scheme in ("az", "abfs", "abfss"):
            container, _, host = (parsed.netloc or "").partition("@")
            if not AZURE_CONTAINER.fullmatch(container):
                raise ValueError(
                    f"{value!r}: expected {scheme}://<container>[@<account>.dfs.core.windows.net]"
                    "[/prefix] with a valid container name"
                )
            if host and not AZURE_HOST.fullmatch(host):
                raise ValueError(f"{value!r}: {host!r} is not <account>.dfs.core.windows.net")
        elif scheme and len(scheme) > 1 and scheme != "file":
            raise ValueError(
                f"{value!r}: scheme {parsed.scheme!r} is not supported; use a local folder "
                "(relative to the configuration file, or absolute), a file:// URI, s3://, "
                "abfss:// or az://"
            )
        if scheme == "file" and parsed.netloc not in ("", "localhost"):
            # file://data/x would silently mean the folder /x on host "data".
            raise ValueError(
                f"{value!r}: a file URI must be absolute (file:///path); "
                "give a relative folder without file://"
            )
        if scheme in ("s3", "az", "abfs", "abfss") and ("?" in value or "#" in value):
            raise ValueError(
                f"{value!r}: no query or fragment; give options under s3, azure or storage_options"
            )
        return value

    @field_validator("storage_options", "storage_options_env")
    @classmethod
    def _option_names(cls, value: dict[str, str], info) -> dict[str, str]:
        for key in value:
            if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]{0,127}", key):
                raise ValueError(f"{key!r} is not an object_store option name")
            if OBSOLETE_OPTIONS.fullmatch(key):
                raise ValueError(
                    f"{key}: delta-rs 1.x commits with conditional writes and ignores this (there "
                    "is no DynamoDB locking any more); remove it"
                )
            if info.field_name == "storage_options" and SECRET_OPTION.search(key):
                raise ValueError(
                    f"{key} holds a credential: name the environment variable that holds it in "
                    "storage_options_env instead"
                )
        for key, option in value.items():
            if (
                key.lower() in ("azure_storage_endpoint", "azure_endpoint", "endpoint")
                and info.field_name == "storage_options"
            ):
                _not_azurite_endpoint(option)
        if "disabled" in {
            str(v).lower() for k, v in value.items() if "conditional_put" in k.lower()
        }:
            raise ValueError(
                "conditional_put: disabled makes every Delta commit fail; leave it unset (etag)"
            )
        return value

    @model_validator(mode="after")
    def _backend(self) -> ExternalStorageConfig:
        backend = self.backend
        if self.s3 is not None and backend != "s3":
            raise KeyedError("external_storage.s3", f"only for an s3:// uri, not {self.uri!r}")
        if self.azure is not None and backend != "azure":
            raise KeyedError(
                "external_storage.azure", f"only for an abfss:// or az:// uri, not {self.uri!r}"
            )
        if backend == "local" and (self.storage_options or self.storage_options_env):
            raise KeyedError(
                "external_storage.storage_options", "only for s3://, abfss:// or az:// storage"
            )
        if backend == "azure":
            uri_account = azure_account_of(self.uri)
            settings = self.azure or AzureStorageConfig()
            if uri_account and settings.account_name and uri_account != settings.account_name:
                raise KeyedError(
                    "external_storage.azure.account_name",
                    f"{settings.account_name!r} differs from the account in the uri "
                    f"({uri_account!r})",
                )
            named = "azure_storage_account_name" in {
                k.lower() for k in self.storage_options
            } or any("account_name" in k.lower() for k in self.storage_options)
            if not (uri_account or settings.account_name or settings.use_emulator or named):
                raise KeyedError(
                    "external_storage.azure.account_name",
                    "required for an az:// uri (or name the account in the uri: "
                    "abfss://<container>@<account>.dfs.core.windows.net/...)",
                )
        if backend != "local":
            self._check_options()
        return self

    def _check_options(self) -> None:
        """Build the store once, without credentials: an option object_store does not know fails
        here, on load, and not in the middle of a run."""
        from obstore.exceptions import BaseError  # obstore's Rust extension: only for object stores

        plain, _ = object_store_options(self)
        try:
            ObjectStorage(self.uri, plain)
        except (StorageError, BaseError, ValueError) as exc:
            key = (
                "external_storage.storage_options"
                if self.storage_options
                else f"external_storage.{self.backend}"
            )
            raise KeyedError(
                key, str(exc).removeprefix(f"external storage {self.uri.rstrip('/')}: ")
            ) from None

    @property
    def backend(self) -> str:
        return backend_of(self.uri)
