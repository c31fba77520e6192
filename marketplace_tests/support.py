"""Helpers shared by the test modules."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from marketplace import summary
from marketplace.config import MarketplaceConfig
from marketplace.external import ExternalStorage


class HasConfig(Protocol):
    """A test deployment (conftest.Deployment), or anything else holding a configuration."""

    config: MarketplaceConfig


def table_rows(
    where: HasConfig | MarketplaceConfig | Path | str, table: str, *, workspace: str | None = None
) -> list[dict]:
    """The rows of summary table `table` of a deployment, a configuration, or a local storage root
    (a Path or str); [] while the table does not exist."""
    if isinstance(where, (Path, str)):
        return summary.read_rows(str(Path(where) / table), workspace=workspace)
    config = where if isinstance(where, MarketplaceConfig) else where.config
    return ExternalStorage.of(config).read_rows(table, workspace=workspace)
