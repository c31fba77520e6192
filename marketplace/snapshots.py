"""The first step of a partition: a workspace's production versions on a day, recorded as its
snapshot.

Every later step of the partition reads this snapshot, never the registry again, so a re-run of
any step sees what the first one saw.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

from marketplace.external import ExternalStorage, Snapshot, moved
from marketplace.registries import SourceRegistries
from marketplace.registry import registry_errors, select_production_versions


def registered_by(day: dt.date, now: dt.datetime) -> dt.datetime | None:
    """A past day's partition sees the versions registered by the end of that day; today's sees
    every version."""
    if day < now.date():
        return dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), tzinfo=dt.UTC)
    return None


def take_snapshot(
    sources: SourceRegistries,
    storage: ExternalStorage,
    workspace: str,
    day: dt.date,
    *,
    moving: Callable[[], None] = lambda: None,
) -> Snapshot:
    """Each curated model's newest production version in `workspace` (as of `day`), written to
    external storage. `moving()` is called before the write when production moved since the
    newest snapshot: a version to load later in this run, likely."""
    settings = sources.get(workspace)
    with registry_errors(
        f"workspace {workspace}",
        settings.tracking_uri,
        consequence="nothing is retired while it cannot be read",
    ):
        selection = select_production_versions(
            sources.client(workspace),
            stage=settings.production.stage,
            alias=settings.production.alias,
            include=settings.include,
            exclude=settings.exclude,
            registered_by=registered_by(day, dt.datetime.now(dt.UTC)),
        )
    if moved(storage.newest_production(workspace), selection.versions):
        moving()
    snapshot = Snapshot(
        workspace=workspace,
        date=day,
        taken_at=dt.datetime.now(dt.UTC).isoformat(),
        models_seen=selection.models_seen,
        versions=tuple(selection.versions),
        skipped=selection.skipped,
    )
    storage.write_snapshot(snapshot)
    return snapshot
