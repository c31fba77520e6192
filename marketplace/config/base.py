"""What every section of the configuration is built from: the error that names the file and key at
fault, strict frozen models, and the field rules several sections share."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated
from urllib.parse import urlparse

from pydantic import BaseModel, ConfigDict, Field

from marketplace.errors import MarketplaceError

ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]{0,127}$"
EnvName = Annotated[str, Field(pattern=ENV_NAME)]
TrackingUri = Annotated[str, Field(min_length=1)]


class ConfigError(MarketplaceError, ValueError):
    """A configuration file that cannot be used, with the file and key at fault."""

    def __init__(self, path: Path | str, key: str, message: str):
        self.path = str(path)
        self.key = key
        super().__init__(f"{path}: {key}: {message}" if key else f"{path}: {message}")


class KeyedError(ValueError):
    """A model-level validation failure that knows the exact key it is about."""

    def __init__(self, key: str, message: str):
        self.key = key
        super().__init__(message)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


def check_tracking_uri(value: str) -> str:
    parsed = urlparse(value)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ValueError(
            f"{value!r} is not a tracking server URI: expected http://host:port or https://host"
        )
    try:
        parsed.port  # noqa: B018 - raises on a malformed port
    except ValueError as exc:
        raise ValueError(f"{value!r} has an invalid port") from exc
    return value.rstrip("/")


def glob_patterns(value: list[str]) -> list[str]:
    if any(not pattern for pattern in value):
        raise ValueError("an empty glob pattern matches nothing; remove it")
    return value
