"""How many HTTP requests a step made to the registries, and how long it waited on them.

MLflow and mlflow-export-import offer no request hook, so while a step runs, `requests`'
Session.send (which every MLflow REST call and artifact transfer goes through) is timed.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import requests

_lock = threading.Lock()
_active: list[RegistryTime] = []
_original_send = requests.Session.send


@dataclass
class RegistryTime:
    requests: int = 0
    seconds: float = 0.0

    def add(self, other: RegistryTime) -> None:
        self.requests += other.requests
        self.seconds += other.seconds

    def metadata(self) -> dict:
        """As step or check metadata."""
        return {"registry_requests": self.requests, "registry_seconds": round(self.seconds, 3)}


def _timed_send(self, request, **kwargs):
    started = time.perf_counter()
    try:
        return _original_send(self, request, **kwargs)
    finally:
        elapsed = time.perf_counter() - started
        with _lock:
            for timer in _active:
                timer.requests += 1
                timer.seconds += elapsed


@contextlib.contextmanager
def registry_time() -> Iterator[RegistryTime]:
    """Count and time every HTTP request made in this process (all threads) inside the block."""
    timer = RegistryTime()
    with _lock:
        _active.append(timer)
        requests.Session.send = _timed_send
    try:
        yield timer
    finally:
        with _lock:
            _active.remove(timer)
            if not _active:
                requests.Session.send = _original_send
