"""Access grants on marketplace models: which grants a model wants and what to change, as plain
data. The registries' own permissions are exercised in the integration tier
(integration/test_grants_basic_auth.py, integration/test_grants_databricks.py).
"""

from __future__ import annotations

import json

import pytest

from marketplace.errors import MarketplaceError
from marketplace.grants import (
    TAG_GRANTS,
    Grant,
    Grants,
    plan,
    record_value,
    recorded_grants,
)
from marketplace.registries import MarketplaceRegistry
from marketplace_tests.testing.deployments import UNUSED_URI
from marketplace_tests.testing.grants import ROLE
from marketplace_tests.testing.grants import grant as _grant
from marketplace_tests.testing.grants import grants_config as _config


def test_wanted_matches_marketplace_names_with_case_sensitive_globs():
    settings = _config(
        [
            _grant(ROLE, "role", "read", "dev01.*"),
            _grant("alice", "user", "EDIT", "*.churn", "x.y"),
            _grant("bob", "user", "READ", "DEV01.*"),
        ]
    ).marketplace
    grants = Grants(settings, UNUSED_URI)
    assert grants.wanted("dev01.fraud") == [Grant("role", ROLE, "READ")]
    assert grants.wanted("dev01.churn") == [
        Grant("role", ROLE, "READ"),
        Grant("user", "alice", "EDIT"),
    ]
    assert grants.wanted("dev02.churn") == [Grant("user", "alice", "EDIT")]
    assert grants.wanted("DEV01.fraud") == [Grant("user", "bob", "READ")]
    assert grants.wanted("dev010fraud") == []  # '.' is literal, not any character
    assert Grants(_config([]).marketplace, UNUSED_URI).wanted("dev01.fraud") == []


def test_wanted_keeps_one_grant_per_principal_the_strongest():
    settings = _config(
        [
            _grant("alice", "user", "MANAGE", "dev01.*"),
            _grant("alice", "user", "READ"),
            _grant("alice", "role", "EDIT"),
        ]
    ).marketplace
    assert Grants(settings, UNUSED_URI).wanted("dev01.m") == [
        Grant("role", "alice", "EDIT"),
        Grant("user", "alice", "MANAGE"),
    ]
    assert Grants(settings, UNUSED_URI).wanted("dev02.m") == [
        Grant("role", "alice", "EDIT"),
        Grant("user", "alice", "READ"),
    ]


A_READ, A_EDIT, B_READ = (
    Grant("user", "a", "READ"),
    Grant("user", "a", "EDIT"),
    Grant("role", "b", "READ"),
)


@pytest.mark.parametrize(
    "wanted, recorded, existing, grant, revoke, record",
    [
        pytest.param([A_READ], [], {}, [A_READ], [], {A_READ}, id="new"),
        pytest.param(
            [A_READ], [A_READ], {A_READ.holder: {"READ"}}, [], [], {A_READ}, id="already-ours"
        ),
        pytest.param([A_READ], [], {A_READ.holder: {"READ"}}, [], [], set(), id="hand-made-same"),
        pytest.param(
            [A_EDIT], [], {A_READ.holder: {"READ"}}, [], [], set(), id="hand-made-other-not-updated"
        ),
        pytest.param(
            [A_READ], [A_READ], {}, [A_READ], [], {A_READ}, id="ours-removed-by-hand-made-again"
        ),
        pytest.param(
            [],
            [A_READ, B_READ],
            {A_READ.holder: {"READ"}, B_READ.holder: {"READ"}},
            [],
            [B_READ, A_READ],
            set(),
            id="no-longer-configured",
        ),
        pytest.param(
            [],
            [A_READ],
            {A_READ.holder: {"EDIT"}},
            [],
            [],
            set(),
            id="ours-changed-by-hand-is-theirs",
        ),
        pytest.param([], [A_READ], {}, [], [], set(), id="ours-gone-forgotten"),
        pytest.param(
            [A_EDIT],
            [A_READ],
            {A_READ.holder: {"READ"}},
            [A_EDIT],
            [A_READ],
            {A_EDIT},
            id="configured-permission-changed",
        ),
        pytest.param(
            [A_READ, B_READ],
            [B_READ],
            {B_READ.holder: {"READ"}, A_READ.holder: {"MANAGE"}},
            [],
            [],
            {B_READ},
            id="mixed",
        ),
    ],
)
def test_plan_grants_what_is_missing_and_revokes_only_its_own(
    wanted, recorded, existing, grant, revoke, record
):
    steps = plan(wanted, recorded, existing)
    assert (list(steps.grant), list(steps.revoke), set(steps.record)) == (grant, revoke, record)


def test_the_record_reads_back_and_what_it_cannot_read_is_not_ours():
    grants = {Grant("role", "team:a", "READ"), Grant("user", "alice", "EDIT")}
    value = record_value(grants)
    assert json.loads(value) == ["role:team:a:READ", "user:alice:EDIT"]  # sorted
    assert recorded_grants({TAG_GRANTS: value}) == grants
    assert recorded_grants({}) == set()
    assert recorded_grants({TAG_GRANTS: "not json"}) == set()
    assert recorded_grants({TAG_GRANTS: json.dumps(["garbage", 3, "user:bob:READ"])}) == {
        Grant("user", "bob", "READ")
    }


def test_nothing_configured_and_nothing_recorded_calls_no_registry():
    assert Grants(_config([]).marketplace, UNUSED_URI).apply(None, "dev01.m", {"other": "tag"}) == 0


def test_an_unset_credentials_variable_names_the_key_and_the_variable(monkeypatch):
    monkeypatch.delenv("MARKETPLACE_MLFLOW_USER", raising=False)
    monkeypatch.setenv("MARKETPLACE_MLFLOW_PASSWORD", "set")
    config = _config(
        [_grant("alice", "user", "READ")],
        username_env="MARKETPLACE_MLFLOW_USER",
        password_env="MARKETPLACE_MLFLOW_PASSWORD",
    )
    for attempt in (
        lambda: Grants(config.marketplace, UNUSED_URI).apply(None, "dev01.m", {}),
        lambda: MarketplaceRegistry(config).client(),
    ):
        with pytest.raises(MarketplaceError) as raised:
            attempt()
        assert str(raised.value).startswith(
            "marketplace.username_env: the environment variable MARKETPLACE_MLFLOW_USER is not set"
        ), str(raised.value)
