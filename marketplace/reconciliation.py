"""What the marketplace holds against what the sources say.

Two reconciliations, each a pure function over plain data, and the `audit_*` that reads it:
the summary tables against the production versions the daily snapshots saw (was each one exported
and imported?), and the marketplace's production markers against every workspace's production
versions now, read from the registries.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from marketplace import summary
from marketplace.audits import DETAILED, Verdict, listing
from marketplace.config import MarketplaceConfig
from marketplace.external import ExternalStorage
from marketplace.gate import Held, configured_holds
from marketplace.imports import marketplace_versions_of
from marketplace.lifecycle import divergences
from marketplace.polling import PollResult, poll_workspaces
from marketplace.production_marker import marketplace_production
from marketplace.registries import MarketplaceRegistry
from marketplace.registry import configure_http
from marketplace.telemetry import RegistryTime, registry_time

RECONCILE_DAYS = 30
RECONCILE_POLL_SECONDS = 120

Key = tuple[str, str, int]  # (workspace, model, source version)


def _newest(keys: Iterable[Key]) -> dict[tuple[str, str], int]:
    newest: dict[tuple[str, str], int] = {}
    for workspace, model, version in keys:
        newest[(workspace, model)] = max(version, newest.get((workspace, model), 0))
    return newest


@dataclass(frozen=True)
class Unsynced:
    """Production versions the snapshots saw that did not make it through."""

    not_exported: list[Key]  # seen, not exported, and no newer version of the model exported
    not_imported: list[Key]  # exported, not imported, and no newer version of the model imported


def unsynced(seen: set[Key], exported: set[Key], imported: set[Key]) -> Unsynced:
    """A version replaced by a newer one before it was exported (or imported) itself is
    superseded, not lost."""
    newest_export, newest_import = _newest(exported), _newest(imported)
    return Unsynced(
        not_exported=sorted(k for k in seen - exported if newest_export.get(k[:2], 0) < k[2]),
        not_imported=sorted(k for k in exported - imported if newest_import.get(k[:2], 0) < k[2]),
    )


def summaries_verdict(
    seen: set[Key],
    exported: set[Key],
    imported: set[Key],
    reason: Callable[[str, str, int], str | None],
) -> Verdict:
    """Every production version seen is exported and imported (or superseded). `reason(w, m, v)`:
    why a version was skipped or quarantined, if it was; a quarantined one stays listed here
    until its export changes."""
    found = unsynced(seen, exported, imported)

    def labels(keys: list[Key], shown: str) -> list[str]:
        return sorted(
            f"{w}/{m} v{v}" + (shown.format(why) if (why := reason(w, m, v)) else "")
            for w, m, v in keys
        )

    not_exported = labels(found.not_exported, " (skipped: {})")
    not_imported = labels(found.not_imported, " ({})")
    problems = ([f"not exported: {listing(not_exported)}"] if not_exported else []) + (
        [f"exported but not imported: {listing(not_imported)}"] if not_imported else []
    )
    return Verdict(
        passed=not problems,
        description="; ".join(problems) or "every production version seen is exported and imported",
        metadata={
            "production_versions_seen": len(seen),
            "exported": len(exported),
            "imported": len(imported),
            "missing_exports": len(not_exported),
            "missing_imports": len(not_imported),
        },
    )


def audit_summaries(storage: ExternalStorage, today: dt.date) -> Verdict:
    """summaries_verdict over the last RECONCILE_DAYS days' snapshots and the summary tables."""

    def keys(table: str) -> set[Key]:
        return {(r["workspace"], r["model_name"], r["version"]) for r in storage.read_rows(table)}

    exported, imported = keys(summary.EXPORT_SUMMARY), keys(summary.IMPORT_SUMMARY)
    seen: set[Key] = set()
    for snapshot in storage.snapshots(today - dt.timedelta(days=RECONCILE_DAYS)):
        seen |= {(snapshot.workspace, v.model_name, v.version) for v in snapshot.versions}
    return summaries_verdict(seen, exported, imported, storage.skip_reason)


def gated_versions(holds: Iterable[Held]) -> dict[str, dict[str, int]]:
    """Per workspace, each model's source version the promotion gate holds."""
    gated: dict[str, dict[str, int]] = {}
    for hold in holds:
        gated.setdefault(hold.workspace, {})[hold.model_name] = hold.source_version
    return gated


def models_served(rows: Iterable[Mapping]) -> dict[str, set[str]]:
    """Per workspace, the models the marketplace imported (from import_summary rows)."""
    served: dict[str, set[str]] = {}
    for row in rows:
        served.setdefault(row["workspace"], set()).add(row["model_name"])
    return served


def models_to_compare(result: PollResult, served: set[str]) -> list[str]:
    """A workspace's models to compare: those in production now, and those the marketplace
    serves (a retired one has no production version, and must carry no marker)."""
    return sorted(result.production.keys() | served)


def sources_verdict(
    differ: Sequence[str],
    unreachable: Sequence[str],
    compared: int,
    polled: int,
    registry: RegistryTime,
) -> Verdict:
    """A difference misleads everyone who deploys (an error); an unreachable workspace is only
    unknown (a warning)."""
    problems = ([f"differ: {listing(differ)}"] if differ else []) + (
        [f"unreachable, not compared: {listing(unreachable)}"] if unreachable else []
    )
    return Verdict(
        passed=not problems,
        warn=not differ,
        description="; ".join(problems)
        or f"{compared} model(s) in {polled} workspace(s) match their sources",
        metadata={
            "workspaces_compared": polled - len(unreachable),
            "workspaces_unreachable": len(unreachable),
            "models_compared": compared,
            "models_differing": len(differ),
            "differences": list(differ[:DETAILED]),
            **registry.metadata(),
        },
    )


def audit_sources(
    config: MarketplaceConfig, storage: ExternalStorage, marketplace: MarketplaceRegistry
) -> Verdict:
    """For every workspace's curated models, the marketplace's production marker against the
    source's production version now (a version the gate holds is not a difference)."""
    configure_http(config.sensor.request_timeout_seconds, 0)
    polled = poll_workspaces(
        config.workspaces,
        max_workers=config.sensor.max_workers,
        deadline_seconds=RECONCILE_POLL_SECONDS,
    )
    served = models_served(
        storage.read_rows(summary.IMPORT_SUMMARY, columns=["workspace", "model_name"])
    )
    client = marketplace.client()
    marker = marketplace.marker
    differ, unreachable, compared = [], [], 0
    with registry_time() as spent:
        gated = gated_versions(configured_holds(config, client))
        for workspace in config.workspaces:
            result = polled[workspace.name]
            if result.error:
                unreachable.append(f"{workspace.name} ({result.error})")
                continue
            models = models_to_compare(result, served.get(workspace.name, set()))
            names = {model: marketplace.model_name(workspace.name, model) for model in models}
            known = marketplace_versions_of(client, list(names.values()))
            current = marketplace_production(client, marker, names.values(), known)
            differ += divergences(
                workspace.name,
                result.production,
                {model: current[name] for model, name in names.items()},
                marker,
                gated.get(workspace.name),
            )
            compared += len(models)
    return sources_verdict(differ, unreachable, compared, len(polled), spent)
