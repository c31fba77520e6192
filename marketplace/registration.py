"""Where each marketplace model's production marker points: decided from what its source has in
production now and what the marketplace recorded, then applied to the registry.

The decision (`decide`) is a plain function of plain data; `register_workspace` reads the
registry, applies each decision and returns the history rows to record. No Dagster here: the
same code runs in a Databricks job.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import warnings
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from marketplace import summary
from marketplace.cards import STATUS_HELD, Cards, HistoryEntry
from marketplace.errors import MarketplaceError
from marketplace.gate import TAG_HELD, GateKeeper, held_note
from marketplace.imports import marketplace_versions_of
from marketplace.provenance import (
    TAG_PRODUCTION_SOURCE_VERSION,
    TAG_SOURCE_RUN_ID,
    Marker,
    SourceKey,
    description,
    provenance_tags,
)
from marketplace.registry import redact_uri, registry_errors
from marketplace.sandbox import Sandbox
from marketplace.storage import LockLost

if TYPE_CHECKING:
    from marketplace.external import ExternalStorage, Snapshot
    from marketplace.registries import MarketplaceRegistry, SourceRegistries

PROMOTED = "promoted"
ROLLED_BACK = "rolled_back"
RETIRED = "retired"
RESTORED = "restored"
CHANGES = (PROMOTED, ROLLED_BACK, RETIRED, RESTORED)

STATUS_ACTIVE = "active"
STATUS_RETIRED = "retired"
TAG_STATUS = "marketplace.status"
TAG_STATUS_CHANGED_AT = "marketplace.status_changed_at"
# The source's production version that the scan blocked, while production stays on the last safe copy.
TAG_QUARANTINED_VERSION = "marketplace.quarantined_version"

PRODUCTION_STAGE = "Production"
ARCHIVED_STAGE = "Archived"


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


def decide(
    desired: int | None, recorded: Recorded | None, aliased: int | None = None
) -> Change | None:
    """The change that takes a model from its recorded production state to `desired` (the
    source's production version now, None when it has none), or None when there is nothing to record.

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


@dataclass(frozen=True)
class Wanted:
    """One model of a workspace and the source version it has in production now (None: none)."""

    model_name: str
    marketplace_name: str
    source_version: int | None


@dataclass
class Outcome:
    """What registration did to one marketplace model."""

    marketplace_name: str
    model_name: str
    change: Change | None = None
    target: ModelVersion | None = None
    registry_changes: int = 0
    waiting: str | None = None  # why production could not move to the source's version yet
    held: str | None = None  # the gate holds the source's production version (also in `waiting`)
    error: str | None = None
    grant_error: str | None = None  # registered, but a configured grant could not be applied


@dataclass
class WorkspaceRegistration:
    outcomes: list[Outcome] = field(default_factory=list)
    history_rows: list[dict] = field(default_factory=list)


def _production_version(model, versions: Iterable[ModelVersion], marker: Marker) -> str | None:
    """The marketplace version production points at now."""
    if marker.has_aliases:
        aliased = (getattr(model, "aliases", None) or {}).get(marker.alias)
        return str(aliased) if aliased is not None else None
    in_stage = [v.version for v in versions if v.current_stage == PRODUCTION_STAGE]
    return max(in_stage, key=int) if in_stage else None


def _apply(
    client: MlflowClient,
    marker: Marker,
    name: str,
    model,
    versions: Mapping[SourceKey, ModelVersion],
    workspace: str,
    model_name: str,
    target: tuple[SourceKey, ModelVersion] | None,
    source_uri: str,
    now: dt.datetime,
    card: CardMaker | None = None,
) -> int:
    """Bring the registry to `target` (None: retired): marker, stage, status, provenance and its
    description (the model card, given `card`). Changes made."""
    changes = 0
    tags = model.tags or {}
    if marker.has_aliases:
        aliased = (getattr(model, "aliases", None) or {}).get(marker.alias)
        if target is not None and str(aliased) != str(target[1].version):
            client.set_registered_model_alias(name, marker.alias, target[1].version)
            changes += 1
        elif target is None and aliased is not None:
            client.delete_registered_model_alias(name, marker.alias)
            changes += 1
    if marker.has_stages:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # stages are deprecated, still served
            if target is not None and target[1].current_stage != PRODUCTION_STAGE:
                client.transition_model_version_stage(
                    name, target[1].version, PRODUCTION_STAGE, archive_existing_versions=True
                )
                changes += 1
            elif target is None:
                for version in versions.values():
                    if version.current_stage == PRODUCTION_STAGE:
                        client.transition_model_version_stage(name, version.version, ARCHIVED_STAGE)
                        changes += 1
    status = STATUS_ACTIVE if target is not None else STATUS_RETIRED
    wanted_tags = {**provenance_tags(workspace, model_name, source_uri), TAG_STATUS: status}
    if target is not None:
        wanted_tags[TAG_PRODUCTION_SOURCE_VERSION] = str(target[0].version)
    if tags.get(TAG_STATUS) != status or TAG_STATUS_CHANGED_AT not in tags:
        wanted_tags[TAG_STATUS_CHANGED_AT] = now.isoformat(timespec="seconds")
    since = wanted_tags.get(TAG_STATUS_CHANGED_AT, tags.get(TAG_STATUS_CHANGED_AT))
    for tag, value in wanted_tags.items():
        if tags.get(tag) != value:
            client.set_registered_model_tag(name, tag, value)
            changes += 1
    text = card(status, since) if card is not None else None
    if text is None:
        text = description(
            workspace,
            model_name,
            target[0].version if target else None,
            marker,
            source_uri,
            retired_since=since,
        )
    if model.description != text:
        client.update_registered_model(name, description=text)
        changes += 1
    if TAG_QUARANTINED_VERSION in tags:
        client.delete_registered_model_tag(name, TAG_QUARANTINED_VERSION)
        changes += 1
    if target is not None:
        key, version = target
        version_tags = {
            **key.tags(),
            TAG_SOURCE_RUN_ID: (version.tags or {}).get(TAG_SOURCE_RUN_ID, ""),
        }
        for tag, value in version_tags.items():
            if value and (version.tags or {}).get(tag) != value:
                client.set_model_version_tag(name, version.version, tag, value)
                changes += 1
    return changes


def _mark_quarantined(client: MlflowClient, name: str, version: int) -> int:
    """Tag a marketplace model whose source production version is quarantined. Changes made."""
    try:
        model = client.get_registered_model(name)
    except MlflowException as exc:
        if not _not_found(exc):
            raise
        return 0  # never in the marketplace: nothing to tag
    if (model.tags or {}).get(TAG_QUARANTINED_VERSION) == str(version):
        return 0
    client.set_registered_model_tag(name, TAG_QUARANTINED_VERSION, str(version))
    return 1


def _not_found(exc: MlflowException) -> bool:
    return exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND")


# (status, status since) -> the card's markdown, or None for the plain description.
CardMaker = Callable[[str, str], "str | None"]


class CardSource(Protocol):
    def maker(
        self,
        item: Wanted,
        shown: tuple[SourceKey, ModelVersion] | None,
        change: HistoryEntry | None,
        held: str = "",
    ) -> CardMaker | None:
        """How to write `item`'s card, showing the version `shown`; `change` is the history entry
        this registration is about to record (the card lists it), `held` what the gate holds."""


class GrantSource(Protocol):
    def apply(self, client: MlflowClient, name: str, model_tags: Mapping[str, str]) -> int:
        """Make the registry hold every configured grant on model `name`; changes made."""


def _gated(
    client: MlflowClient,
    gate: GateKeeper,
    item: Wanted,
    target: tuple[SourceKey, ModelVersion],
    versions: Mapping[SourceKey, ModelVersion],
    current: str | None,
    served: set[int],
    now: dt.datetime,
) -> tuple[tuple[SourceKey, ModelVersion] | None, str | None, int]:
    """Where production goes once the gate has judged `target`: (target or the version production
    stays on, what holds the target or None, registry changes). A version production points at
    already, or served before (a rollback to it), is not judged again."""
    key, version = target
    if str(version.version) == current or key.version in served:
        return target, None, 0
    stay = next(((k, v) for k, v in versions.items() if str(v.version) == current), None)
    admission, tags, changes = gate.admit(
        client,
        item.marketplace_name,
        item.model_name,
        key.version,
        version,
        stay[1] if stay else None,
        now,
    )
    if admission.move:
        return target, None, changes
    return stay, held_note(key.version, version.version, tags), changes


def _release_holds(
    client: MlflowClient, name: str, versions: Mapping[SourceKey, ModelVersion], wanted: int | None
) -> int:
    """A version stops being held once its source no longer has it in production."""
    changes = 0
    for key, version in versions.items():
        if key.version != wanted and (version.tags or {}).get(TAG_HELD):
            client.delete_model_version_tag(name, version.version, TAG_HELD)
            changes += 1
    return changes


def _last_active(versions: Mapping[SourceKey, ModelVersion], recorded: Recorded | None):
    """A retired model's card shows the version production last pointed at (else its newest)."""
    if not versions:
        return None
    last = recorded.last_active_version if recorded else None
    chosen = [k for k in versions if k.version == last] or sorted(
        versions, key=lambda k: k.version
    )[-1:]
    return chosen[0], versions[chosen[0]]


def register_workspace(
    client: MlflowClient,
    marker: Marker,
    workspace: str,
    wanted: list[Wanted],
    known: Mapping[str, Mapping[SourceKey, ModelVersion]],
    recorded: Mapping[str, Recorded],
    *,
    source_uri: str,
    run_id: str,
    snapshot_date: dt.date,
    max_workers: int = 4,
    now: dt.datetime | None = None,
    quarantined: Mapping[str, int] | None = None,
    cards: CardSource | None = None,
    gate: GateKeeper | None = None,
    served: Mapping[str, set[int]] | None = None,
    grants: GrantSource | None = None,
) -> WorkspaceRegistration:
    """Point each wanted model's production marker at the copy of its source's production version
    (or remove it), and say which history rows record the changes.

    `known` holds the marketplace versions of each model by source key, `recorded` the history's
    last state of each. A model whose source version has no copy yet waits where it is; one whose
    version is `quarantined` (model name -> version the scan blocked) says so in a tag. Under a
    `gate`, a version production does not point at yet (and never did: `served`, the source
    versions each model's history records) moves only once the gate admits it. The caller holds
    the workspace's registration lock and writes the rows after this returns: a crash in between leaves the history behind the registry, and the next run records the change
    again (the decision compares with the history, the application with the registry).
    """
    now = now or dt.datetime.now(dt.UTC)

    def one(item: Wanted) -> Outcome:
        outcome = Outcome(item.marketplace_name, item.model_name)
        versions = known.get(item.marketplace_name, {})
        target = None
        if item.source_version is not None:
            key = SourceKey(workspace, item.model_name, item.source_version)
            if (quarantined or {}).get(item.model_name) == item.source_version:
                why = (
                    "its scan blocks it"
                    if key not in versions
                    else "the sandbox blocked what it did"
                )
                outcome.waiting = (
                    f"source production v{item.source_version} is quarantined ({why}); "
                    "production stays on the last safe copy"
                )
                outcome.registry_changes = _mark_quarantined(
                    client, item.marketplace_name, item.source_version
                )
                return outcome
            if key not in versions:
                outcome.waiting = (
                    f"source production v{item.source_version} is not in the marketplace yet"
                )
                return outcome
            target = (key, versions[key])
        elif not versions and item.marketplace_name not in recorded:
            return outcome  # never in the marketplace: nothing to retire
        try:
            model = client.get_registered_model(item.marketplace_name)
        except MlflowException as exc:
            if not _not_found(exc):
                raise
            return outcome  # deleted from the marketplace by hand: nothing to point
        current = _production_version(model, versions.values(), marker)
        outcome.registry_changes += _release_holds(
            client, item.marketplace_name, versions, item.source_version
        )
        desired = item.source_version
        if target is not None and gate is not None:
            candidate = target
            target, outcome.held, changes = _gated(
                client,
                gate,
                item,
                target,
                versions,
                current,
                (served or {}).get(item.marketplace_name, set()),
                now,
            )
            outcome.registry_changes += changes
            if outcome.held:
                outcome.waiting = outcome.held
                if target is None:  # never in production: only its card says what holds it
                    if (
                        cards is not None
                        and (card := cards.maker(item, candidate, None, outcome.held)) is not None
                    ):
                        text = card(STATUS_HELD, "")
                        if text is not None and model.description != text:
                            client.update_registered_model(item.marketplace_name, description=text)
                            outcome.registry_changes += 1
                    return outcome
                desired = target[0].version
        by_version = {str(v.version): k.version for k, v in versions.items()}
        outcome.change = decide(
            desired,
            recorded.get(item.marketplace_name),
            by_version.get(current) if current is not None else None,
        )
        if outcome.change is None and target is None and item.marketplace_name not in recorded:
            return outcome  # imported for a past date only, never in production: leave it alone
        outcome.target = target[1] if target else None
        card = None
        if cards is not None:
            shown = target or _last_active(versions, recorded.get(item.marketplace_name))
            entry = (
                None
                if outcome.change is None
                else HistoryEntry(
                    now,
                    outcome.change.kind,
                    outcome.change.source_version,
                    int(outcome.target.version) if outcome.target is not None else None,
                )
            )
            card = cards.maker(item, shown, entry, outcome.held or "")
        outcome.registry_changes += _apply(
            client,
            marker,
            item.marketplace_name,
            model,
            versions,
            workspace,
            item.model_name,
            target,
            source_uri,
            now,
            card,
        )
        if grants is not None:
            try:
                outcome.registry_changes += grants.apply(
                    client, item.marketplace_name, model.tags or {}
                )
            except MarketplaceError as exc:
                outcome.grant_error = str(exc)
        return outcome

    def guarded(item: Wanted) -> Outcome:
        try:
            return one(item)
        except Exception as exc:  # noqa: BLE001 - one model's failure must not hide the others'
            return Outcome(
                item.marketplace_name, item.model_name, error=f"{type(exc).__name__}: {exc}"
            )

    # Models are independent: their registry calls overlap (each one waits on a round trip).
    with ThreadPoolExecutor(max(1, max_workers), thread_name_prefix="register") as pool:
        outcomes = list(pool.map(guarded, wanted))
    result = WorkspaceRegistration(outcomes=outcomes)
    for outcome in outcomes:
        if outcome.change is None or outcome.error:
            continue
        previous = recorded.get(outcome.marketplace_name)
        result.history_rows.append(
            {
                "workspace": workspace,
                "model_name": outcome.model_name,
                "marketplace_name": outcome.marketplace_name,
                "sequence": (previous.sequence if previous else 0) + 1,
                "change": outcome.change.kind,
                "source_version": outcome.change.source_version,
                "previous_source_version": outcome.change.previous_source_version,
                "marketplace_version": int(outcome.target.version)
                if outcome.target is not None
                else None,
                "changed_at": now,
                "run_id": run_id,
                "snapshot_date": snapshot_date,
            }
        )
    return result


def marketplace_production(
    client: MlflowClient,
    marker: Marker,
    names: Iterable[str],
    known: Mapping[str, Mapping[SourceKey, ModelVersion]],
) -> dict[str, int | None]:
    """For each marketplace model, the source version whose copy its production marker points at
    (None: no marker, or no such model)."""
    found: dict[str, int | None] = {}
    for name in names:
        versions = known.get(name, {})
        try:
            model = client.get_registered_model(name)
        except MlflowException as exc:
            if not _not_found(exc):
                raise
            found[name] = None
            continue
        current = _production_version(model, versions.values(), marker)
        found[name] = (
            next((k.version for k, v in versions.items() if str(v.version) == current), None)
            if current is not None
            else None
        )
    return found


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
                f"{workspace}/{model}: source production v{wanted}, marketplace {mark} is the copy of v{current}"
            )
    return found


@dataclass
class PartitionRegistration:
    """What one (date, workspace) registration did, or why it held production back."""

    withheld: str | None = None  # a past date's backfill: production follows the newer snapshot
    snapshot: Snapshot | None = None
    done: WorkspaceRegistration = field(default_factory=WorkspaceRegistration)
    history_rows_inserted: int = 0


def _quarantined(storage, marketplace, known, workspace: str, wanted: Wanted) -> bool:
    """Whether the wanted source version is quarantined: by its scan (then it was never imported),
    or by the sandbox (imported, then blocked while it loaded)."""
    if wanted.source_version is None:
        return False
    record = storage.quarantine(
        workspace, wanted.model_name, wanted.source_version, policy=marketplace.scan_policy
    )
    if record is None:
        return False
    imported = SourceKey(workspace, wanted.model_name, wanted.source_version) in known.get(
        wanted.marketplace_name, {}
    )
    return not imported or record.get("blocked_by") == "sandbox"


def register_partition(
    client: MlflowClient,
    *,
    marketplace: MarketplaceRegistry,
    storage: ExternalStorage,
    sources: SourceRegistries,
    workspace: str,
    day: dt.date,
    run_id: str,
    sandbox: Sandbox | None = None,
) -> PartitionRegistration:
    """Make the marketplace follow what `workspace` has in production on `day`, and record each
    change in production_history; only the workspace's newest snapshot moves production. The
    gate evaluates in `sandbox` (the run's), or in one of its own."""
    newest = storage.newest_snapshot_date(workspace)
    if newest is not None and newest > day:
        return PartitionRegistration(withheld=f"production follows the newer snapshot of {newest}")
    snapshot = storage.read_snapshot(workspace, day)
    imported = {
        r["model_name"]
        for r in storage.read_rows(
            summary.IMPORT_SUMMARY, workspace=workspace, columns=["workspace", "model_name"]
        )
    }
    result = PartitionRegistration(snapshot=snapshot)
    # One registration of a workspace at a time: the history read, the registry changes and the
    # rows written from them must not interleave with another run's.
    gate = GateKeeper(
        marketplace.config,
        workspace,
        storage,
        tracking_uri=marketplace.tracking_uri,
        registry_uri=marketplace.registry_uri,
        policy=marketplace.scan_policy,
        sandbox=sandbox,
    )
    with contextlib.closing(gate):  # its sandbox, if an evaluation started one
        return _register(
            client,
            marketplace,
            storage,
            sources,
            workspace,
            day,
            run_id,
            snapshot,
            imported,
            result,
            gate,
        )


def _register(
    client, marketplace, storage, sources, workspace, day, run_id, snapshot, imported, result, gate
) -> PartitionRegistration:
    production = snapshot.production
    if gate.active:
        gate.check_ready()  # a missing reference data set fails the partition before anything moves
    with storage.lock("register", workspace) as held:
        history = storage.read_rows(summary.PRODUCTION_HISTORY, workspace=workspace)
        served: dict[str, set[int]] = {}
        for row in history:
            if row["source_version"] is not None:
                served.setdefault(row["marketplace_name"], set()).add(row["source_version"])
        wanted = [
            Wanted(model, marketplace.model_name(workspace, model), production.get(model))
            for model in sorted(production.keys() | imported | {r["model_name"] for r in history})
        ]
        with registry_errors(
            f"the marketplace (registering workspace {workspace})", marketplace.tracking_uri
        ):
            known = marketplace_versions_of(client, [w.marketplace_name for w in wanted])
            quarantined = {
                w.model_name: w.source_version
                for w in wanted
                if _quarantined(storage, marketplace, known, workspace, w)
            }
            cards = Cards(
                storage=storage,
                marketplace=marketplace,
                sources=sources,
                workspace=workspace,
                history_rows=history,
            )
            result.done = register_workspace(
                client,
                marketplace.marker,
                workspace,
                wanted,
                known,
                recorded_states(history),
                source_uri=redact_uri(sources.get(workspace).tracking_uri),
                run_id=run_id,
                snapshot_date=day,
                max_workers=marketplace.max_workers,
                quarantined=quarantined,
                cards=cards,
                gate=gate if gate.active else None,
                served=served,
                grants=marketplace.grants,
            )
        try:
            held.check()  # the registry moved; the rows that record it are written only while held
        except LockLost as exc:
            raise LockLost(f"workspace {workspace}: history not recorded: {exc}") from None
        result.history_rows_inserted = storage.merge_rows(
            summary.PRODUCTION_HISTORY, result.done.history_rows
        )
    return result
