"""A version the sandbox blocked is quarantined, as one a scan blocks: recorded in external
storage with what it tried, tagged in the marketplace, and never moved to production."""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
from collections.abc import Mapping, Sequence

from mlflow import MlflowClient

from marketplace.external import ExternalStorage
from marketplace.loading import Checked, LoadResult
from marketplace.production_marker import TAG_QUARANTINED_VERSION
from marketplace.registry import REGISTRY_ERRORS

SANDBOX_FINDING = "denied while the model loaded or predicted in the sandbox"


def sandbox_findings(events: Sequence[str]) -> list[dict[str, str]]:
    """The sandbox's denied events as quarantine findings (always blocking, whatever the scan
    policy)."""
    return [
        {
            "file": "(sandboxed load)",
            "operator": event,
            "severity": "critical",
            "description": SANDBOX_FINDING,
        }
        for event in events
    ]


def quarantine_blocked(
    client: MlflowClient,
    storage: ExternalStorage,
    checked: Sequence[Checked],
    results: Mapping[str, LoadResult],
    day: dt.date,
    log: logging.Logger | None = None,
) -> dict[str, list[str]]:
    """Quarantine each checked version whose sandboxed load was blocked; label -> what it tried."""
    log = log or logging.getLogger(__name__)
    quarantined: dict[str, list[str]] = {}
    for item in checked:
        result = results.get(item.label)
        if result is None or not result.blocked or item.source is None:
            continue
        events = list(result.denied)
        storage.record_quarantine(
            item.source.workspace,
            item.source.model_name,
            item.source.version,
            checksum=item.checksum or "",
            findings=sandbox_findings(events),
            reason="quarantined: the sandbox blocked " + "; ".join(events),
            day=day,
            blocked_by="sandbox",
        )
        with contextlib.suppress(
            *REGISTRY_ERRORS
        ):  # the record above is what keeps it out of production
            client.set_model_version_tag(
                item.name, item.version.version, TAG_QUARANTINED_VERSION, str(item.source.version)
            )
        log.error(
            f"{item.source.describe()} ({item.label}) quarantined: the sandbox blocked "
            f"{'; '.join(events)}"
        )
        quarantined[item.label] = events
    return quarantined
