"""The sandbox's settings: how a source's model is isolated while it loads and predicts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Mode = Literal["namespaces", "process"]


@dataclass(frozen=True)
class SandboxSettings:
    """`namespaces`: bubblewrap's Linux namespaces (no network, only the interpreter, site-packages
    and the model visible); `process`: a separate process only. Both scrub the environment, apply
    the limits and watch the model with the audit hook."""

    mode: Mode = "namespaces"
    timeout_seconds: float = 300.0
    memory_mb: int = 4096
    max_processes: int = 64
