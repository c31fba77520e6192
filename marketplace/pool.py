"""A bounded pool for a partition's independent per-version work (exports, imports, load checks)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


def in_pool(work: Callable[[Item], Result], items: Sequence[Item], max_workers: int, name: str) -> list[Result]:
    """`work` of each item, `max_workers` at a time (in this thread when 1): the results in the
    items' order. The first exception `work` raises is raised, once every item is done."""
    if max_workers <= 1 or len(items) <= 1:
        return [work(item) for item in items]
    with ThreadPoolExecutor(min(max_workers, len(items)), thread_name_prefix=name) as pool:
        return list(pool.map(work, items))
