"""The `security` section: scanning every export before anything loads it, and loading it only in
a sandbox."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, field_validator

from marketplace.config.base import Strict
from marketplace.sandbox.settings import SandboxSettings

GLOBAL_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+$")


class SandboxConfig(Strict):
    """Where a source's model loads: only ever in a sandbox (`security.sandbox`)."""

    mode: Literal["namespaces", "process"] = "namespaces"
    timeout_seconds: float = Field(default=300.0, gt=0, le=86400)
    memory_mb: int = Field(default=4096, ge=256, le=1_048_576)

    def settings(self) -> SandboxSettings:
        return SandboxSettings(
            mode=self.mode, timeout_seconds=self.timeout_seconds, memory_mb=self.memory_mb
        )


class SecurityConfig(Strict):
    """Scanning every export before anything loads it, and loading it only in a sandbox."""

    scan: Literal["block", "warn", "off"] = "block"
    block_severity: Literal["low", "medium", "high", "critical"] = "high"
    # Reviewed "module.name" globals a finding may name and still pass.
    allow_globals: list[str] = Field(default_factory=list)
    sandbox: SandboxConfig = Field(default_factory=SandboxConfig)

    @field_validator("block_severity", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    @field_validator("allow_globals")
    @classmethod
    def _globals(cls, value: list[str]) -> list[str]:
        for name in value:
            if not GLOBAL_NAME.fullmatch(name):
                raise ValueError(
                    f"{name!r} is not a global as module.name (for example 'posix.system')"
                )
        return value
