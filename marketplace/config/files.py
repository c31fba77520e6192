"""Reading the configuration file: YAML parsed, every section validated, and each error named by
the file and the key at fault (`workspaces[0] (dev01).production`, not pydantic's location)."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from marketplace.config.base import ConfigError, KeyedError
from marketplace.config.deployment import DEFAULT_CONFIG_PATH, MarketplaceConfig

CONFIG_ENV_VAR = "MARKETPLACE_CONFIG"


def _format_location(raw: Any, loc: tuple[Any, ...]) -> str:
    parts: list[str] = []
    node = raw
    for item in loc:
        if isinstance(item, int):
            label = f"[{item}]"
            if isinstance(node, list) and 0 <= item < len(node):
                node = node[item]
                name = node.get("name") if isinstance(node, dict) else None
                if isinstance(name, str) and name.strip():
                    label = f"[{item}] ({name.strip()})"
            else:
                node = None
            parts.append(label)
        else:
            parts.append(("." if parts else "") + str(item))
            node = node.get(item) if isinstance(node, dict) else None
    return "".join(parts)


def parse_config(raw: Any, path: Path | str) -> MarketplaceConfig:
    """Validate an already-parsed YAML document; errors name `path` and the key."""
    path = Path(path)
    if not isinstance(raw, dict):
        raise ConfigError(
            path,
            "",
            "the file must hold a mapping with external_storage, marketplace and workspaces",
        )
    try:
        config = MarketplaceConfig.model_validate(raw)
    except ValidationError as exc:
        messages = []
        for error in exc.errors():
            cause = error.get("ctx", {}).get("error")
            if isinstance(cause, KeyedError):
                key, message = cause.key, str(cause)
            else:
                key = _format_location(raw, tuple(error["loc"]))
                message = error["msg"].removeprefix("Value error, ")
                if error["type"] == "missing":
                    message = "required key is missing"
                elif error["type"] == "extra_forbidden":
                    message = "unknown key (check its spelling)"
            messages.append((key, message))
        first_key = messages[0][0]
        detail = "; ".join(f"{key}: {message}" for key, message in messages)
        error = ConfigError(path, first_key, messages[0][1])
        error.args = (f"{path}: {detail}",)
        raise error from None
    config._path = Path(os.path.abspath(path))  # a link keeps its own folder
    for index, workspace in enumerate(config.workspaces):
        if workspace.signing.public_key is not None:
            from marketplace.signatures import read_public_key  # cryptography: only where keys are

            try:
                read_public_key(workspace.signing.public_key, config.base_dir)
            except ValueError as exc:
                raise ConfigError(
                    path, f"workspaces[{index}] ({workspace.name}).signing.public_key", str(exc)
                ) from None
    if config.external_storage.signing_key_env:
        warnings.warn(
            f"{path}: external_storage.signing_key_env (an HMAC shared by every workspace) is "
            "deprecated and will be removed in the next release: give each workspace "
            "signing.private_key_env and signing.public_key (OpenSSF model signing) instead",
            FutureWarning,
            stacklevel=2,
        )
    return config


def load_config(path: str | os.PathLike[str] | None = None) -> MarketplaceConfig:
    """Load the file named by `path`, else by $MARKETPLACE_CONFIG, else the embedded default."""
    if path is None:
        path = os.environ.get(CONFIG_ENV_VAR) or DEFAULT_CONFIG_PATH
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            path, "", f"configuration file not found (set {CONFIG_ENV_VAR} to a readable file)"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(path, "", f"cannot read the configuration file: {exc}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(path, "", f"not valid YAML{where}: {problem}") from None
    return parse_config(raw, path)
