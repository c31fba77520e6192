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
from marketplace.sandbox import Sandbox, SandboxSettings

# How assets, checks and ops ask for them (the names the configurable resources had).
WorkspaceRegistriesResource = dg.ResourceParam[SourceRegistries]
MarketplaceRegistryResource = dg.ResourceParam[MarketplaceRegistry]
ExternalStorageResource = dg.ResourceParam[ExternalStorage]
# The run's one warm sandbox, where every model loads (started only when a step begins it).
SandboxResource = dg.ResourceParam[Sandbox]


def build_resources(config: MarketplaceConfig) -> dict[str, object]:
    return {
        "workspaces": SourceRegistries(config),
        "marketplace": MarketplaceRegistry(config),
        "external_storage": ExternalStorage.of(config),
        "sandbox": sandbox_resource(config.security.sandbox.settings()),
    }


def sandbox_resource(settings: SandboxSettings) -> dg.ResourceDefinition:
    """The run's sandbox: made when the run starts (started only when a step begins it), closed
    when the run ends, so no warm process outlives its run."""

    @dg.resource(
        description="Where every model of a source is loaded: one warm sandboxed process per run."
    )
    def sandbox(_) -> Iterator[Sandbox]:
        with Sandbox(settings) as box:
            yield box

    return sandbox


@contextlib.contextmanager
def explained() -> Iterator[None]:
    """A domain error fails the step with its message (it names what is at fault), no trace."""
    try:
        yield
    except MarketplaceError as exc:
        raise dg.Failure(description=str(exc)) from None
