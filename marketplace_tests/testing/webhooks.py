"""Webhook receiver tests' shared pieces: the workspace secret's variable and value, the
observations the receiver recorded, and the refusals it logged."""

from __future__ import annotations

import logging

import dagster as dg

from marketplace_dagster.keys import PRODUCTION_MODELS

SECRET_ENV = "MARKETPLACE_TEST_WEBHOOK_SECRET"
SECRET = "a-secret-only-tests-know"
LOGGER = "marketplace.webhooks"


def webhook_events(instance: dg.DagsterInstance) -> list[tuple[str, dict]]:
    """(partition, metadata) of each observation of workspaces/production_models, oldest first."""
    records = instance.fetch_observations(PRODUCTION_MODELS, limit=10_000, ascending=True).records
    return [
        (
            r.asset_observation.partition,
            {k: v.value for k, v in r.asset_observation.metadata.items()},
        )
        for r in records
    ]


def refusals(caplog, workspace: str, *words: str) -> list[logging.LogRecord]:
    """The receiver's warnings (or worse) that name `workspace` and each of `words`."""
    return [
        r
        for r in caplog.records
        if r.name == LOGGER
        and r.levelno >= logging.WARNING
        and all(w in r.getMessage() for w in (workspace, *words))
    ]
