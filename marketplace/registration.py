"""Registration: each marketplace model's production marker made to follow what its source has
in production now, and each move recorded in production_history.

What moves where is `lifecycle.decide`; the registry edits for one model are in
`production_marker`. `register_workspace` applies both to a workspace's models (with the gate,
the cards and the grants); `register_partition` is the step of one (date, workspace) partition.
No Dagster here: the same code runs in a Databricks job.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion

from marketplace import summary
from marketplace.cards import STATUS_HELD, Cards, CardSettings, HistoryEntry
from marketplace.errors import MarketplaceError
from marketplace.gate import TAG_HELD, GateKeeper, held_note
from marketplace.lifecycle import (
    Change,
    Recorded,
    RegistrationRun,
    Wanted,
    decide,
    history_row,
    recorded_states,
    served_versions,
)
from marketplace.marketplace_versions import marketplace_versions_of
from marketplace.production_marker import (
    CardMaker,
    Target,
    apply_target,
    mark_quarantined,
    production_version,
    registered_model,
)
from marketplace.provenance import Marker, SourceKey
from marketplace.registry import redact_uri, registry_errors
from marketplace.sandbox import Sandbox
from marketplace.storage import LockLost

if TYPE_CHECKING:
    from marketplace.external import ExternalStorage, Snapshot
    from marketplace.registries import MarketplaceRegistry, SourceRegistries
    from marketplace.scanning import ScanPolicy


@dataclass(frozen=True)
class RegistrationSettings:
    """What registering one workspace's models reads from the configuration."""

    marker: Marker
    source_uri: str  # the workspace's tracking URI, redacted: the models' provenance
    max_workers: int  # models registered at once


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


class CardSource(Protocol):
    def maker(
        self,
        item: Wanted,
        shown: Target | None,
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
    target: Target,
    versions: Mapping[SourceKey, ModelVersion],
    current: str | None,
    served: set[int],
    now: dt.datetime,
) -> tuple[Target | None, str | None, int]:
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


def _last_active(
    versions: Mapping[SourceKey, ModelVersion], recorded: Recorded | None
) -> Target | None:
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
    run: RegistrationRun,
    settings: RegistrationSettings,
    wanted: list[Wanted],
    known: Mapping[str, Mapping[SourceKey, ModelVersion]],
    recorded: Mapping[str, Recorded],
    *,
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
    the workspace's registration lock and writes the rows after this returns: a crash in between
    leaves the history behind the registry, and the next run records the change again (the
    decision compares with the history, the application with the registry).
    """
    workspace, now = run.workspace, run.changed_at

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
                outcome.registry_changes = mark_quarantined(
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
        model = registered_model(client, item.marketplace_name)
        if model is None:
            return outcome  # deleted from the marketplace by hand: nothing to point
        current = production_version(model, versions.values(), settings.marker)
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
        outcome.registry_changes += apply_target(
            client,
            settings.marker,
            item,
            model,
            versions,
            target,
            workspace=workspace,
            source_uri=settings.source_uri,
            now=now,
            card=card,
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
    with ThreadPoolExecutor(max(1, settings.max_workers), thread_name_prefix="register") as pool:
        outcomes = list(pool.map(guarded, wanted))
    result = WorkspaceRegistration(outcomes=outcomes)
    for item, outcome in zip(wanted, outcomes, strict=True):
        if outcome.change is None or outcome.error:
            continue
        result.history_rows.append(
            history_row(
                run,
                item,
                outcome.change,
                recorded.get(outcome.marketplace_name),
                int(outcome.target.version) if outcome.target is not None else None,
            )
        )
    return result


@dataclass
class PartitionRegistration:
    """What one (date, workspace) registration did, or why it held production back."""

    withheld: str | None = None  # a past date's backfill: production follows the newer snapshot
    snapshot: Snapshot | None = None
    done: WorkspaceRegistration = field(default_factory=WorkspaceRegistration)
    history_rows_inserted: int = 0


@dataclass(frozen=True)
class _PartitionSettings:
    """What registering one partition reads from the configuration, besides the gate and cards."""

    workspace: str
    registration: RegistrationSettings
    marketplace_uri: str  # named in the registry's errors
    marketplace_name: Callable[[str], str]  # a source model's name in the marketplace
    scan_policy: ScanPolicy | None


def _quarantined(
    external: ExternalStorage,
    policy: ScanPolicy | None,
    known: Mapping[str, Mapping[SourceKey, ModelVersion]],
    workspace: str,
    wanted: Wanted,
) -> bool:
    """Whether the wanted source version is quarantined: by its scan (then it was never imported),
    or by the sandbox (imported, then blocked while it loaded)."""
    if wanted.source_version is None:
        return False
    record = external.quarantine(workspace, wanted.model_name, wanted.source_version, policy=policy)
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
    settings = _PartitionSettings(
        workspace,
        RegistrationSettings(
            marketplace.marker,
            redact_uri(sources.get(workspace).tracking_uri),
            marketplace.max_workers,
        ),
        marketplace.tracking_uri,
        lambda model: marketplace.model_name(workspace, model),
        marketplace.scan_policy,
    )
    config = marketplace.config
    gate = GateKeeper(
        config.gate_for(workspace),
        workspace,
        storage,
        rules_key=config.gate_key(workspace),
        tracking_uri=marketplace.tracking_uri,
        registry_uri=marketplace.registry_uri,
        policy=marketplace.scan_policy,
        sandbox_settings=config.security.sandbox.settings(),
        sandbox=sandbox,
    )

    card_settings = CardSettings.of(marketplace, sources, workspace)

    def cards(history: list[dict]) -> Cards:
        return Cards(card_settings, storage.storage, history)

    with contextlib.closing(gate):  # its sandbox, if an evaluation started one
        return _register(client, storage, settings, day, run_id, gate, cards, marketplace.grants)


def _register(
    client: MlflowClient,
    external: ExternalStorage,
    settings: _PartitionSettings,
    day: dt.date,
    run_id: str,
    gate: GateKeeper,
    cards: Callable[[list[dict]], Cards],
    grants: GrantSource,
) -> PartitionRegistration:
    workspace = settings.workspace
    snapshot = external.read_snapshot(workspace, day)
    imported = {
        r["model_name"]
        for r in external.read_rows(
            summary.IMPORT_SUMMARY, workspace=workspace, columns=["workspace", "model_name"]
        )
    }
    result = PartitionRegistration(snapshot=snapshot)
    production = snapshot.production
    if gate.active:
        gate.check_ready()  # a missing reference data set fails the partition before anything moves
    # One registration of a workspace at a time: the history read, the registry changes and the
    # rows written from them must not interleave with another run's.
    with external.lock("register", workspace) as held:
        history = external.read_rows(summary.PRODUCTION_HISTORY, workspace=workspace)
        wanted = [
            Wanted(model, settings.marketplace_name(model), production.get(model))
            for model in sorted(production.keys() | imported | {r["model_name"] for r in history})
        ]
        with registry_errors(
            f"the marketplace (registering workspace {workspace})", settings.marketplace_uri
        ):
            known = marketplace_versions_of(client, [w.marketplace_name for w in wanted])
            quarantined = {
                w.model_name: w.source_version
                for w in wanted
                if _quarantined(external, settings.scan_policy, known, workspace, w)
            }
            result.done = register_workspace(
                client,
                RegistrationRun(workspace, run_id, day, dt.datetime.now(dt.UTC)),
                settings.registration,
                wanted,
                known,
                recorded_states(history),
                quarantined=quarantined,
                cards=cards(history),
                gate=gate if gate.active else None,
                served=served_versions(history),
                grants=grants,
            )
        try:
            held.check()  # the registry moved; the rows that record it are written only while held
        except LockLost as exc:
            raise LockLost(f"workspace {workspace}: history not recorded: {exc}") from None
        result.history_rows_inserted = external.merge_rows(
            summary.PRODUCTION_HISTORY, result.done.history_rows
        )
    return result
