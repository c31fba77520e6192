"""A bounded pool for a partition's independent per-version work (exports, imports, load checks)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


def in_pool(
    work: Callable[[Item], Result], items: Sequence[Item], max_workers: int, name: str
) -> list[Result]:
    """`work` of each item, `max_workers` at a time (in this thread when 1): the results in the
    items' order. The first exception `work` raises is raised, once every item is done."""
    if max_workers <= 1 or len(items) <= 1:
        return [work(item) for item in items]
    with ThreadPoolExecutor(min(max_workers, len(items)), thread_name_prefix=name) as pool:
        return list(pool.map(work, items))


class OneAtATime:
    """A logger the pool's threads share, writing one message at a time. Dagster's logger writes
    each message as an event into the run's own SQLite file (one writer at a time: threads
    writing at once wait on its lock), and a Pipes stream writes a message in two writes that two
    threads could interleave."""

    def __init__(self, log: Any):
        self._log, self._lock = log, threading.Lock()

    def __getattr__(self, level: str) -> Callable[..., Any]:
        method = getattr(self._log, level)

        def logged(*args: Any, **kwargs: Any) -> Any:
            with self._lock:
                return method(*args, **kwargs)

        return logged
