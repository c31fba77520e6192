"""Configuration files for tests: a minimal valid one, and how to check the error a wrong one
raises."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from marketplace.config import ConfigError, load_config

MINIMAL = {
    "external_storage": {"uri": "external"},
    "marketplace": {"tracking_uri": "http://127.0.0.1:5000"},
    "workspaces": [
        {
            "name": "dev01",
            "tracking_uri": "http://127.0.0.1:5001",
            "production": {"stage": "Production"},
        },
    ],
}


def minimal() -> dict:
    return copy.deepcopy(MINIMAL)


def second_workspace(name: str = "dev02") -> dict:
    return {
        "name": name,
        "tracking_uri": "http://127.0.0.1:5002",
        "production": {"alias": "champion"},
    }


def write_yaml(tmp_path: Path, data, name: str = "marketplace.yaml") -> Path:
    path = tmp_path / name
    path.write_text(
        data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False), encoding="utf-8"
    )
    return path


def load_error(tmp_path: Path, data) -> tuple[ConfigError, Path]:
    path = write_yaml(tmp_path, data)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return info.value, path


def assert_names(error: ConfigError, path: Path, key: str) -> None:
    """The error carries the file and the key, and its text starts with '<file>: <key>: '."""
    assert error.path == str(path)
    assert error.key == key
    assert str(error).startswith(f"{path}: {key}: ")
