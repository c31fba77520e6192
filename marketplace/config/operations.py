"""How the marketplace runs: MLflow client limits, the sensor, the webhook receiver, the
schedules and jobs (each cron checked by Dagster's own rule, without importing Dagster)."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any, Literal
from urllib.parse import urlparse

from pydantic import Field, field_validator, model_validator

from marketplace.config.base import KeyedError, Strict


class ClientConfig(Strict):
    """How long an MLflow call may take: seconds, not the library's minutes."""

    timeout_seconds: int = Field(default=15, ge=1, le=600)
    max_retries: int = Field(default=2, ge=0, le=10)
    # Registry work in flight at once, per run: versions of a workspace exported, imported and
    # load-checked at once; marketplace registration calls.
    max_workers: int = Field(default=4, ge=1, le=32)


Status = Literal["running", "stopped"]


def _check_cron(value: str) -> str:
    # Dagster's own rule (croniter, 5 fields, not a day February never has), so that a file that
    # loads also gives schedules Dagster accepts; without importing Dagster.
    from croniter import croniter

    if not croniter.is_valid(value) or not _schedulable(value):
        raise ValueError(
            f"{value!r} is not a cron expression Dagster can schedule (5 fields, e.g. '0 2 * * *')"
        )
    return value


def _schedulable(value: str) -> bool:
    from croniter import croniter

    expanded, *_ = croniter.expand(value)
    if len(expanded) != 5:
        return False
    return not (expanded[3] == [2] and len(expanded[2]) == 1 and expanded[2][0] in (30, 31))


class SensorConfig(Strict):
    """production_version_sensor: reads webhook events every tick, and polls every workspace for
    production versions not yet synced every `minimum_interval_seconds`."""

    minimum_interval_seconds: int = Field(default=20, ge=10, le=86400)
    default_status: Status = "stopped"
    max_workers: int = Field(default=16, ge=1, le=128)
    request_timeout_seconds: int = Field(default=5, ge=1, le=60)
    retry_backoff_seconds: int = Field(default=300, ge=0, le=86400)


_LISTEN = re.compile(r"^(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):(?P<port>[0-9]{1,5})$")
_EVERY_ADDRESS = ("0.0.0.0", "[::]")


class WebhooksConfig(Strict):
    """The webhook receiver (`marketplace-webhooks`): where it listens, and the URL sources call."""

    listen: str = "127.0.0.1:8765"
    url: str | None = None

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        match = _LISTEN.fullmatch(value)
        if not match or not 0 < int(match["port"]) < 65536:
            raise ValueError(f"{value!r} is not host:port (e.g. 127.0.0.1:8765 or 0.0.0.0:8765)")
        return value

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parsed = urlparse(value)
        if (
            parsed.scheme not in ("http", "https")
            or not parsed.hostname
            or parsed.query
            or parsed.fragment
        ):
            raise ValueError(
                f"{value!r} is not an http(s) base URL without query (e.g. https://hooks.example.com)"
            )
        if parsed.username or parsed.password:
            raise ValueError("the URL must not carry credentials: deliveries are signed instead")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _reachable(self) -> WebhooksConfig:
        if self.url is None and self.host in _EVERY_ADDRESS:
            raise KeyedError(
                "webhooks.url",
                f"required when webhooks.listen binds every address ({self.listen}): "
                "give the URL the sources call, e.g. https://marketplace-hooks.example.com",
            )
        return self

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0]

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])

    @property
    def base_url(self) -> str:
        return self.url or f"http://{self.listen}"


class ScheduleConfig(Strict):
    """daily_marketplace_schedule: today's partition of every workspace, the safety net."""

    cron: str = "0 2 * * *"
    default_status: Status = "running"

    _cron = field_validator("cron")(classmethod(lambda cls, v: _check_cron(v)))


class FreshnessConfig(Strict):
    """Each workspace's partition for a day must be synced by `deadline` (UTC) that day."""

    deadline: dt.time = dt.time(6, 0)
    check_cron: str = "0 * * * *"
    default_status: Status = "running"

    _cron = field_validator("check_cron")(classmethod(lambda cls, v: _check_cron(v)))

    @field_validator("deadline", mode="before")
    @classmethod
    def _time(cls, value: Any) -> Any:
        if isinstance(value, int):  # YAML reads 06:00 unquoted as a sexagesimal number
            return dt.time(value // 60 % 24, value % 60)
        return value


class ChecksConfig(Strict):
    """marketplace_checks_job: every table-wide check, including a full hash of every export."""

    cron: str = "0 5 * * *"
    default_status: Status = "running"

    _cron = field_validator("cron")(classmethod(lambda cls, v: _check_cron(v)))


class AutomationConfig(Strict):
    """The automation sensor that carries an upstream materialization down the chain."""

    default_status: Status = "running"


class HousekeepingConfig(Strict):
    """marketplace_maintenance_job: compact and vacuum the tables, remove old export debris."""

    cron: str = "0 4 * * 0"
    default_status: Status = "running"
    debris_retention_hours: float = Field(default=24, ge=0)
    vacuum_retention_hours: int = Field(default=168, ge=0)

    _cron = field_validator("cron")(classmethod(lambda cls, v: _check_cron(v)))
