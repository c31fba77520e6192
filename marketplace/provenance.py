"""Where a marketplace model comes from, as its tags say: the source key of every imported
version."""

from __future__ import annotations

from dataclasses import dataclass

TAG_SOURCE_WORKSPACE = "marketplace.source_workspace"
TAG_SOURCE_MODEL = "marketplace.source_model"
TAG_SOURCE_VERSION = "marketplace.source_version"
TAG_CHECKSUM = "marketplace.checksum"
TAG_SOURCE_RUN_ID = "marketplace.source_run_id"
TAG_IMPORT_DATE = "marketplace.import_date"
TAG_SOURCE_TRACKING_URI = "marketplace.source_tracking_uri"
TAG_PRODUCTION_SOURCE_VERSION = (
    "marketplace.latest_source_version"  # the source version at production
)


@dataclass(frozen=True)
class SourceKey:
    workspace: str
    model_name: str
    version: int

    def tags(self) -> dict[str, str]:
        return {
            TAG_SOURCE_WORKSPACE: self.workspace,
            TAG_SOURCE_MODEL: self.model_name,
            TAG_SOURCE_VERSION: str(self.version),
        }

    def describe(self) -> str:
        return f"{self.workspace}/{self.model_name} v{self.version}"


def provenance_tags(workspace: str, model_name: str, source_uri: str) -> dict[str, str]:
    """The registered model's tags that say where it comes from."""
    return {
        TAG_SOURCE_WORKSPACE: workspace,
        TAG_SOURCE_MODEL: model_name,
        TAG_SOURCE_TRACKING_URI: source_uri,
    }


@dataclass(frozen=True)
class Marker:
    """How the marketplace marks production: an alias, the Production stage, or both."""

    alias: str
    has_aliases: bool
    has_stages: bool

    def describe(self) -> str:
        return f"@{self.alias}" if self.has_aliases else "The Production version"


def description(
    workspace: str,
    model_name: str,
    source_version: int | None,
    marker: Marker,
    source_uri: str,
    *,
    retired_since: str | None = None,
) -> str:
    """The registered model's description: what it is and where production points, or since when
    it is retired (`source_version` None)."""
    head = f"Marketplace copy of model '{model_name}' from workspace '{workspace}' ({source_uri})."
    if source_version is None:
        return (
            f"{head} Retired since {retired_since}: the workspace has no production version of it "
            "any more, so it has no "
            f"{'@' + marker.alias if marker.has_aliases else 'Production version'}. Its versions "
            "are kept. Kept in sync by the model marketplace."
        )
    return (
        f"{head} {marker.describe()} is source version {source_version}. "
        "Imported and kept in sync by the model marketplace."
    )
