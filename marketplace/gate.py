"""The promotion gate: what a marketplace version must show before it becomes production.

Three rules, each optional: required metadata (a signature, an input example, a description,
an owner), no regression on reference data (MLflow's own evaluation, and its validation of
thresholds against the current production version), and a person's approval. A version that
fails stays imported; production stays where it was. The verdict is recorded on the version
(`marketplace.gate`, `marketplace.gate_reasons`) with a digest of the rules that gave it, so a
version is judged once per set of rules.

The decisions (`missing_metadata`, `admit`, `held_note`) are plain functions; `GateKeeper` reads
the registry and the export, and has `marketplace.evaluation` score the version on the reference
data. No Dagster here.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING

from marketplace.evaluation import (
    GateError,
    ReferenceData,
    SandboxBlocked,
    compare,
    evaluate_version,
)
from marketplace.export_facts import export_facts
from marketplace.provenance import TAG_SOURCE_MODEL, TAG_SOURCE_VERSION, TAG_SOURCE_WORKSPACE
from marketplace.registry import PAGE_SIZE, RegistryUnavailable
from marketplace.sandbox import Sandbox, SandboxSettings
from marketplace.scanning import ScanPolicy

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

    from marketplace.config import EvaluationRule, GateConfig, MarketplaceConfig
    from marketplace.export_facts import ExportFacts
    from marketplace.external import ExternalStorage

log = logging.getLogger(__name__)

TAG_GATE = "marketplace.gate"  # passed | failed
TAG_GATE_REASONS = "marketplace.gate_reasons"
TAG_GATE_RULES = "marketplace.gate_rules"  # digest of the rules the verdict was given under
TAG_APPROVAL = (
    "marketplace.approval"  # pending (set by the sync) | approved | rejected (set by a reviewer)
)
TAG_APPROVED_BY = "marketplace.approved_by"  # who approved: required with approved
TAG_APPROVAL_REQUESTED_AT = "marketplace.approval_requested_at"
# On every version the gate holds while it is its source's production version: the sensor's one
# search.
TAG_HELD = "marketplace.held"

PASSED, FAILED = "passed", "failed"
PENDING, APPROVED, REJECTED = "pending", "approved", "rejected"
MAX_REASONS_CHARS = 4000


def missing_metadata(require: Sequence[str], facts: ExportFacts) -> list[str]:
    """The required metadata the export lacks, each as a reason."""
    present = {
        "signature": bool(facts.signature.get("inputs")),
        "input_example": facts.has_input_example,
        "description": bool((facts.model_description or facts.version_description).strip()),
        "owner": bool(facts.source_tags.get("owner", "").strip()),
    }
    what = {
        "signature": "a model signature (MLmodel has none)",
        "input_example": "an input example (MLmodel has none)",
        "description": "a description (neither the model nor the version has one)",
        "owner": "an owner (the source model has no `owner` tag)",
    }
    return [f"require {name}: missing {what[name]}" for name in require if not present[name]]


@dataclass(frozen=True)
class Verdict:
    passed: bool
    reasons: tuple[str, ...] = ()

    def tags(self, digest: str) -> dict[str, str]:
        text = "; ".join(self.reasons)
        if len(text) > MAX_REASONS_CHARS:
            text = text[:MAX_REASONS_CHARS] + " …"
        return {
            TAG_GATE: PASSED if self.passed else FAILED,
            TAG_GATE_REASONS: text,
            TAG_GATE_RULES: digest,
        }


def recorded_verdict(tags: Mapping[str, str], digest: str) -> Verdict | None:
    """The verdict a version carries, if it was given under the same rules."""
    if tags.get(TAG_GATE_RULES) != digest or tags.get(TAG_GATE) not in (PASSED, FAILED):
        return None
    reasons = tuple(r for r in (tags.get(TAG_GATE_REASONS) or "").split("; ") if r)
    return Verdict(tags[TAG_GATE] == PASSED, reasons)


@dataclass(frozen=True)
class Admission:
    """Whether a version may become production now; if not, why, and the tags that say so."""

    move: bool
    why: str = ""
    tags: dict[str, str] = field(default_factory=dict)


def admit(verdict: Verdict, approval: str, tags: Mapping[str, str], now: dt.datetime) -> Admission:
    """The gate's decision for a version with `verdict` and the approval `tags` it carries.
    `rejected` is final for the version; `approved` needs `marketplace.approved_by`."""
    if not verdict.passed:
        return Admission(False, "failed the gate: " + "; ".join(verdict.reasons))
    if approval != "manual":
        return Admission(True)
    state = (tags.get(TAG_APPROVAL) or "").strip().lower()
    who = (tags.get(TAG_APPROVED_BY) or "").strip()
    if state == APPROVED and who:
        return Admission(True)
    if state == APPROVED:
        return Admission(False, f"approved without {TAG_APPROVED_BY}: set it to who approved")
    if state == REJECTED:
        return Admission(
            False, "rejected" + (f" by {who}" if who else "") + " (final for this version)"
        )
    if state and state != PENDING:
        return Admission(
            False, f"{TAG_APPROVAL} is {state!r}: a reviewer sets {APPROVED} or {REJECTED}"
        )
    since = tags.get(TAG_APPROVAL_REQUESTED_AT) or now.isoformat(timespec="seconds")
    wanted = {TAG_APPROVAL: PENDING, TAG_APPROVAL_REQUESTED_AT: since}
    return Admission(
        False,
        f"awaits approval since {since}",
        {k: v for k, v in wanted.items() if tags.get(k) != v},
    )


def hold_state(tags: Mapping[str, str]) -> tuple[str, str]:
    """What a held version waits on, from its tags: (failed, its reasons), (rejected or approved,
    who), or (pending, "")."""
    if tags.get(TAG_GATE) == FAILED:
        return FAILED, tags.get(TAG_GATE_REASONS, "")
    approval = (tags.get(TAG_APPROVAL) or "").strip().lower()
    if approval in (REJECTED, APPROVED):
        return approval, (tags.get(TAG_APPROVED_BY) or "").strip()
    return PENDING, ""


def held_note(source_version: int, marketplace_version: str | int, tags: Mapping[str, str]) -> str:
    """How a held version is described on its model's card, in the catalog and in the checks."""
    state, detail = hold_state(tags)
    if state == FAILED:
        why = f"failed the gate: {detail}"
    elif state == REJECTED:
        why = "rejected" + (f" by {detail}" if detail else "")
    elif state == APPROVED and not detail:
        why = f"approved without {TAG_APPROVED_BY}"
    else:
        why = f"awaits approval since {tags.get(TAG_APPROVAL_REQUESTED_AT, '?')}"
    return f"source version {source_version} (marketplace version {marketplace_version}) {why}"


def releasable(tags: Mapping[str, str], approval: str) -> bool:
    """Whether a held version would move now (for the sensor: a new approval)."""
    if tags.get(TAG_GATE) != PASSED:
        return False
    return (
        approval != "manual" or admit(Verdict(True), approval, tags, dt.datetime.now(dt.UTC)).move
    )


def rules_for(
    gate: GateConfig, marketplace_name: str
) -> tuple[list[str], list[tuple[int, EvaluationRule]]]:
    """The requirements and the evaluation entries (with their index) that apply to a model."""
    evaluations = [
        (i, rule)
        for i, rule in enumerate(gate.evaluation or [])
        if any(fnmatchcase(marketplace_name, pattern) for pattern in rule.models)
    ]
    return list(gate.require or []), evaluations


def rules_digest(gate: GateConfig, marketplace_name: str) -> str:
    require, evaluations = rules_for(gate, marketplace_name)
    payload = {
        "require": sorted(require),
        "evaluation": [rule.model_dump(mode="json") for _, rule in evaluations],
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def is_active(gate: GateConfig) -> bool:
    return bool(gate.require or gate.evaluation or gate.approval == "manual")


class GateKeeper:
    """The gate of one workspace's models: judges a version once per set of rules and records it."""

    def __init__(
        self,
        gate: GateConfig,
        workspace: str,
        storage: ExternalStorage,
        *,
        rules_key: str,
        tracking_uri: str,
        registry_uri: str | None,
        policy: ScanPolicy | None,
        sandbox_settings: SandboxSettings,
        facts=None,
        sandbox: Sandbox | None = None,
    ):
        """`gate`: the workspace's merged gate (MarketplaceConfig.gate_for); `rules_key`: where
        its evaluation rules are configured, named in errors (MarketplaceConfig.gate_key)."""
        self.gate = gate
        self.workspace = workspace
        self.data = ReferenceData(storage)
        self.tracking_uri, self.registry_uri, self.policy = tracking_uri, registry_uri, policy
        # (model_name, source_version) -> ExportFacts; by default read from the version's export,
        # raising if it cannot be read (that fails the model's registration this run, never its
        # verdict).
        self.facts = facts or (
            lambda model, version: export_facts(storage.storage, workspace, model, version)[0]
        )
        self.key = rules_key
        # Where candidates and baselines are evaluated: the run's sandbox, else one of its own,
        # started at the first evaluation and closed by close().
        self._own_sandbox = sandbox is None
        self.sandbox = sandbox or Sandbox(sandbox_settings, log)

    def close(self) -> None:
        if self._own_sandbox:
            self.sandbox.close()

    @property
    def active(self) -> bool:
        return is_active(self.gate)

    def check_ready(self) -> None:
        """Every evaluation entry's data exists, before anything moves (else the key is named)."""
        for index, rule in enumerate(self.gate.evaluation or []):
            try:
                found = self.data.exists(rule.data)
            except Exception as exc:  # noqa: BLE001 - a storage error is named with its key
                raise GateError(
                    f"{self.key}.evaluation[{index}].data: {rule.data} cannot be read: {exc}"
                ) from None
            if not found:
                raise GateError(
                    f"{self.key}.evaluation[{index}].data: {rule.data} does not exist (a Parquet "
                    "file or a Delta table, relative to external storage, or a full URI)"
                )

    def judge(
        self,
        marketplace_name: str,
        model_name: str,
        source_version: int,
        candidate: ModelVersion,
        baseline: ModelVersion | None,
    ) -> Verdict:
        require, evaluations = rules_for(self.gate, marketplace_name)
        reasons = missing_metadata(require, self.facts(model_name, source_version))
        for index, rule in evaluations:
            label = f"evaluation[{index}] ({rule.data})"
            try:
                frame = self.data.frame(rule.data)
                metrics = evaluate_version(
                    self.tracking_uri,
                    self.registry_uri,
                    candidate,
                    rule,
                    frame,
                    self.policy,
                    self.sandbox,
                )
            except RegistryUnavailable:
                raise  # the registry, not the model: judged again on the next run
            except SandboxBlocked as exc:
                reasons.append(
                    f"{label}: the candidate was blocked in the sandbox: {'; '.join(exc.events)}"
                )
                continue
            except Exception as exc:  # noqa: BLE001 - a candidate that cannot be evaluated does not pass
                reasons.append(
                    f"{label}: the candidate could not be evaluated: {type(exc).__name__}: {exc}"
                )
                continue
            base = None
            if baseline is not None:
                try:
                    base = evaluate_version(
                        self.tracking_uri,
                        self.registry_uri,
                        baseline,
                        rule,
                        frame,
                        self.policy,
                        self.sandbox,
                    )
                except RegistryUnavailable:
                    raise
                except Exception as exc:  # noqa: BLE001 - a broken baseline leaves the absolute thresholds
                    log.warning(
                        "%s: baseline v%s could not be evaluated (%s); absolute thresholds only",
                        marketplace_name,
                        baseline.version,
                        exc,
                    )
            reasons += [f"{label}: {r}" for r in compare(rule, metrics, base)]
        return Verdict(not reasons, tuple(reasons))

    def admit(
        self,
        client: MlflowClient,
        marketplace_name: str,
        model_name: str,
        source_version: int,
        candidate: ModelVersion,
        baseline: ModelVersion | None,
        now: dt.datetime,
    ) -> tuple[Admission, dict[str, str], int]:
        """Whether `candidate` may become production: (admission, its tags now, registry
        changes)."""
        tags = dict(candidate.tags or {})
        digest = rules_digest(self.gate, marketplace_name)
        verdict = recorded_verdict(tags, digest)
        wanted: dict[str, str] = {}
        if verdict is None:
            verdict = self.judge(marketplace_name, model_name, source_version, candidate, baseline)
            wanted.update(verdict.tags(digest))
        admission = admit(verdict, self.gate.approval or "none", tags, now)
        wanted.update(admission.tags)
        if not admission.move:
            wanted[TAG_HELD] = "true"
        changes = 0
        for tag, value in wanted.items():
            if tags.get(tag) != value:
                client.set_model_version_tag(marketplace_name, candidate.version, tag, value)
                tags[tag] = value
                changes += 1
        if admission.move and TAG_HELD in tags:
            client.delete_model_version_tag(marketplace_name, candidate.version, TAG_HELD)
            del tags[TAG_HELD]
            changes += 1
        return admission, tags, changes


def held_versions(client: MlflowClient) -> list[ModelVersion]:
    """Every marketplace version the gate holds now: one paged search."""
    found, token = [], None
    while True:
        page = client.search_model_versions(
            f"tags.`{TAG_HELD}` = 'true'", max_results=PAGE_SIZE, page_token=token
        )
        found += list(page)
        token = page.token
        if not token:
            return found


@dataclass(frozen=True)
class Held:
    """One held marketplace version, as the checks and the catalog list it."""

    marketplace_name: str
    version: str
    workspace: str
    model_name: str
    source_version: int
    state: str  # failed | pending | rejected | approved (without approved_by)
    detail: str
    since: dt.datetime | None = None  # pending: when approval was requested
    tags: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)

    @property
    def label(self) -> str:
        return (
            f"{self.marketplace_name} v{self.version} ({self.workspace}/{self.model_name} "
            f"v{self.source_version})"
        )


def holds_of(versions: Sequence[ModelVersion]) -> list[Held]:
    """What each held version waits on, from its tags (versions without source tags are skipped)."""
    found = []
    for version in versions:
        tags = version.tags or {}
        source = tags.get(TAG_SOURCE_VERSION, "")
        if not source.isdigit() or not tags.get(TAG_SOURCE_WORKSPACE):
            continue
        state, detail = hold_state(tags)
        since = None
        try:
            since = dt.datetime.fromisoformat(tags[TAG_APPROVAL_REQUESTED_AT])
        except (KeyError, ValueError):
            pass
        if since is not None and since.tzinfo is None:  # a tag edited by hand: read as UTC
            since = since.replace(tzinfo=dt.UTC)
        found.append(
            Held(
                version.name,
                str(version.version),
                tags[TAG_SOURCE_WORKSPACE],
                tags.get(TAG_SOURCE_MODEL, ""),
                int(source),
                state,
                detail,
                since,
                dict(tags),
            )
        )
    return sorted(found, key=lambda h: (h.marketplace_name, int(h.version)))


def age(since: dt.datetime | None, now: dt.datetime) -> str:
    if since is None:
        return "?"
    seconds = max(0, int((now - since).total_seconds()))
    days, rest = divmod(seconds, 86400)
    return (f"{days}d " if days else "") + f"{rest // 3600}h {rest % 3600 // 60:02d}m"


def configured_holds(config: MarketplaceConfig, client: MlflowClient) -> list[Held]:
    """The held versions of the configured workspaces: one search of the marketplace, and none
    at all where no workspace has a gate."""
    configured = {w.name for w in config.workspaces}
    if not any(is_active(config.gate_for(name)) for name in configured):
        return []
    return [h for h in holds_of(held_versions(client)) if h.workspace in configured]
