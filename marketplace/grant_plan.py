"""Which access grants to make and revoke on one marketplace model: plain functions of plain
data (the configured rules, the model's `marketplace.grants` tag, what the registry holds).

What the sync created on a model is recorded in its tag `marketplace.grants`; a permission
somebody else made is never changed, recorded or removed. Applying a plan is `grants`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import NamedTuple, Protocol

TAG_GRANTS = "marketplace.grants"

Holder = tuple[str, str]  # (kind, principal)


class Rule(Protocol):
    """A configured grant (`marketplace.grants` in the configuration): `permission` for one
    principal on every marketplace model whose name matches one of `models`."""

    kind: str
    principal: str
    permission: str
    models: Sequence[str]


@dataclass(frozen=True, order=True)
class Grant:
    """One principal's permission on one marketplace model."""

    kind: str  # user | role | group | service_principal
    principal: str
    permission: str  # READ | EDIT | MANAGE | EXECUTE

    @property
    def holder(self) -> Holder:
        return (self.kind, self.principal)

    def __str__(self) -> str:
        return f"{self.kind}:{self.principal}:{self.permission}"

    @classmethod
    def parse(cls, text: str) -> Grant | None:
        """The grant a `marketplace.grants` entry names (a principal may hold ':'); None if
        malformed."""
        kind, _, rest = text.partition(":")
        principal, _, permission = rest.rpartition(":")
        if not (kind and principal and permission):
            return None
        return cls(kind, principal, permission)

    def describe(self) -> str:
        return f"{self.permission} for {self.kind.replace('_', ' ')} {self.principal!r}"


def wanted_grants(rules: Iterable[Rule], ranks: Sequence[str], name: str) -> list[Grant]:
    """The grants of `rules` whose patterns match marketplace model `name` (case-sensitive globs),
    one per principal: where several match, the strongest permission (the last in `ranks`)."""
    strongest: dict[Holder, str] = {}
    for rule in rules:
        if not any(fnmatchcase(name, pattern) for pattern in rule.models):
            continue
        holder = (rule.kind, rule.principal)
        held = strongest.get(holder)
        if held is None or ranks.index(rule.permission) > ranks.index(held):
            strongest[holder] = rule.permission
    return sorted(
        Grant(kind, principal, permission) for (kind, principal), permission in strongest.items()
    )


class Plan(NamedTuple):
    grant: tuple[Grant, ...]  # to make, after the revocations
    revoke: tuple[Grant, ...]  # the sync's own, no longer configured
    record: frozenset[Grant]  # what the sync will have created once both are done


def plan(
    wanted: Iterable[Grant], recorded: Iterable[Grant], existing: Mapping[Holder, Iterable[str]]
) -> Plan:
    """What to change on one model.

    `existing` holds, per principal, the permissions it holds directly on the model now. A
    recorded grant is the sync's own only while the registry still holds it as recorded; one
    changed or removed by somebody else is theirs and is forgotten. A principal already holding
    a permission that is not the sync's is left alone (never updated, never recorded).
    """
    wanted = set(wanted)
    ours = {g for g in recorded if g.permission in set(existing.get(g.holder, ()))}
    revoke = ours - wanted
    freed = {g.holder for g in revoke}
    grant = {g for g in wanted - ours if not set(existing.get(g.holder, ())) or g.holder in freed}
    return Plan(tuple(sorted(grant)), tuple(sorted(revoke)), frozenset((ours & wanted) | grant))


def recorded_grants(tags: Mapping[str, str]) -> frozenset[Grant]:
    """What the sync created on a model, from its tag; an entry it cannot read is not its own."""
    try:
        entries = json.loads(tags.get(TAG_GRANTS) or "[]")
    except ValueError:
        return frozenset()
    if not isinstance(entries, list):
        return frozenset()
    return frozenset(
        g for g in (Grant.parse(e) for e in entries if isinstance(e, str)) if g is not None
    )


def record_value(grants: Iterable[Grant]) -> str:
    return json.dumps(sorted(str(g) for g in grants))
