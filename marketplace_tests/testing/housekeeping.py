"""Housekeeping tests' shared pieces: files made old, a folder of files, a Delta table's parquet
files."""

from __future__ import annotations

import os
import time
from pathlib import Path

DAY = 24 * 3600


def age(path: Path, seconds: float) -> None:
    """Set the mtime of `path` and everything under it `seconds` into the past (children first)."""
    when = time.time() - seconds
    if path.is_dir():
        for child in sorted(path.rglob("*"), key=lambda p: len(p.parts), reverse=True):
            os.utime(child, (when, when), follow_symlinks=False)
    os.utime(path, (when, when))


def folder(path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(text)
    path.mkdir(parents=True, exist_ok=True)
    return path


def parquet_files(uri: str) -> set[str]:
    return {p.name for p in Path(uri).glob("*.parquet")}
