"""The resources every asset, check and op shares: the domain's own objects, built from the
validated configuration (Dagster passes plain Python objects as `dg.ResourceParam`s)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import dagster as dg

from marketplace.config import MarketplaceConfig
from marketplace.errors import MarketplaceError
from marketplace.external import ExternalStorage
from marketplace.registries import MarketplaceRegistry, SourceRegistries

# How assets, checks and ops ask for them (the names the configurable resources had).
WorkspaceRegistriesResource = dg.ResourceParam[SourceRegistries]
MarketplaceRegistryResource = dg.ResourceParam[MarketplaceRegistry]
ExternalStorageResource = dg.ResourceParam[ExternalStorage]


def build_resources(config: MarketplaceConfig) -> dict[str, object]:
    return {
        "workspaces": SourceRegistries(config),
        "marketplace": MarketplaceRegistry(config),
        "external_storage": ExternalStorage.of(config),
    }


@contextlib.contextmanager
def explained() -> Iterator[None]:
    """A domain error fails the step with its message (it names what is at fault), no trace."""
    try:
        yield
    except MarketplaceError as exc:
        raise dg.Failure(description=str(exc)) from None
