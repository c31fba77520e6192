"""A marketplace model's lifecycle as a decision table: how its production marker moves
(promoted, rolled back, retired, restored) given what its source has in production now and
what the production history recorded, and the history row that records each move.

Plain functions of plain data: no registry, no storage.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from marketplace.provenance import Marker

PROMOTED = "promoted"
ROLLED_BACK = "rolled_back"
RETIRED = "retired"
RESTORED = "restored"
CHANGES = (PROMOTED, ROLLED_BACK, RETIRED, RESTORED)


@dataclass(frozen=True)
class Recorded:
    """A marketplace model's production state as the history last recorded it."""

    sequence: int
    source_version: int | None  # None: retired
    last_active_version: int | None  # the version production pointed at before a retirement


@dataclass(frozen=True)
class Change:
    """One move of a model's production marker, as a history row records it."""

    kind: str
    source_version: int | None
    previous_source_version: int | None


@dataclass(frozen=True)
class Wanted:
    """One model of a workspace and the source version it has in production now (None: none)."""

    model_name: str
    marketplace_name: str
    source_version: int | None


def decide(
    desired: int | None, recorded: Recorded | None, aliased: int | None = None
) -> Change | None:
    """The change that takes a model from its recorded production state to `desired` (the
    source's production version now, None when it has none), or None when there is nothing to
    record.

    `aliased` is the source version the marketplace marker points at, used only for a model with
    no history yet (synced before the history existed): its first row starts from there.
    """
    if recorded is None:
        current, was_retired, last = aliased, False, aliased
    else:
        current, was_retired, last = (
            recorded.source_version,
            recorded.source_version is None,
            recorded.last_active_version,
        )
    if desired is None:
        return Change(RETIRED, None, current) if current is not None else None
    if was_retired:
        return Change(RESTORED, desired, last)
    if current is None:
        return Change(PROMOTED, desired, None)
    if recorded is None and current == desired:
        return Change(PROMOTED, desired, None)  # the first row of a model the history has not seen
    if desired == current:
        return None
    return Change(PROMOTED if desired > current else ROLLED_BACK, desired, current)


def recorded_states(rows: Iterable[Mapping], by: str = "marketplace_name") -> dict[str, Recorded]:
    """Each model's last recorded state, from its production_history rows, keyed by column `by`."""
    by_model: dict[str, list[Mapping]] = {}
    for row in rows:
        by_model.setdefault(row[by], []).append(row)
    states = {}
    for name, history in by_model.items():
        history.sort(key=lambda r: r["sequence"])
        active = [r["source_version"] for r in history if r["source_version"] is not None]
        last = history[-1]
        states[name] = Recorded(
            last["sequence"], last["source_version"], active[-1] if active else None
        )
    return states


def served_versions(rows: Iterable[Mapping]) -> dict[str, set[int]]:
    """The source versions each marketplace model's production ever pointed at, from its
    production_history rows (a rollback to one of them is not judged by the gate again)."""
    served: dict[str, set[int]] = {}
    for row in rows:
        if row["source_version"] is not None:
            served.setdefault(row["marketplace_name"], set()).add(row["source_version"])
    return served


@dataclass(frozen=True)
class RegistrationRun:
    """One run's registration of one workspace: what each history row it writes shares."""

    workspace: str
    run_id: str
    snapshot_date: dt.date
    changed_at: dt.datetime


def history_row(
    run: RegistrationRun,
    wanted: Wanted,
    change: Change,
    previous: Recorded | None,
    marketplace_version: int | None,
) -> dict:
    """The production_history row that records `change` of one model, after `previous`."""
    return {
        "workspace": run.workspace,
        "model_name": wanted.model_name,
        "marketplace_name": wanted.marketplace_name,
        "sequence": (previous.sequence if previous else 0) + 1,
        "change": change.kind,
        "source_version": change.source_version,
        "previous_source_version": change.previous_source_version,
        "marketplace_version": marketplace_version,
        "changed_at": run.changed_at,
        "run_id": run.run_id,
        "snapshot_date": run.snapshot_date,
    }


def divergences(
    workspace: str,
    source: Mapping[str, int],
    marketplace: Mapping[str, int | None],
    marker: Marker,
    held: Mapping[str, int] | None = None,
) -> list[str]:
    """How a workspace's marketplace models differ from its production versions now.

    `source` maps each curated model with a production version to it; `marketplace` maps each
    model the marketplace holds (or should) to the source version its production marker points at;
    `held`, each model to the source version the promotion gate holds (not a difference).
    """
    mark = f"@{marker.alias}" if marker.has_aliases else "Production version"
    found = []
    for model in sorted(source.keys() | marketplace.keys()):
        wanted, current = source.get(model), marketplace.get(model)
        if wanted == current or (wanted is not None and (held or {}).get(model) == wanted):
            continue
        if wanted is None:
            found.append(
                f"{workspace}/{model}: no production version in the source, "
                f"marketplace {mark} is the copy of v{current}"
            )
        elif current is None:
            found.append(
                f"{workspace}/{model}: source production v{wanted}, marketplace has no {mark}"
            )
        else:
            found.append(
                f"{workspace}/{model}: source production v{wanted}, marketplace {mark} is the copy "
                f"of v{current}"
            )
    return found
