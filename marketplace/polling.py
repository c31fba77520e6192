"""A cheap, concurrent look at every workspace's current production versions (for the sensor)."""

from __future__ import annotations

import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field

from marketplace.config import WorkspaceConfig
from marketplace.databricks import addressed, ensure_profile
from marketplace.registry import (
    PAGE_SIZE,
    aliased_version,
    choose_production,
    in_stage,
    is_curated,
    is_ready,
    make_client,
    redact_text,
    redact_uri,
    searched,
    versions_of,
)


@dataclass
class PollResult:
    workspace: str
    production: dict[str, int] = field(default_factory=dict)
    error: str | None = None
    seconds: float = 0.0
    calls: int = 0


def _poll_one(target: WorkspaceConfig) -> PollResult:
    """One paged registered-model search; per-model alias look-ups only where search shows none."""
    started = time.monotonic()
    result = PollResult(target.name)
    try:
        ensure_profile(f"workspace {target.name}", target.tracking_uri, target.databricks)
        client = make_client(target.tracking_uri, target.registry_uri)
        stage, alias = target.production.stage, target.production.alias
        token = None
        while True:
            page = client.search_registered_models(max_results=PAGE_SIZE, page_token=token)
            result.calls += 1
            for model in page:
                if not is_curated(model.name, target.include, target.exclude):
                    continue
                if stage:
                    # The newest version in the stage is among latest_versions; if it is not READY,
                    # an older one may be production: read the model's versions (as the asset does).
                    candidates = [v for v in model.latest_versions or [] if in_stage(v, stage)]
                    if any(not is_ready(v) for v in candidates):
                        result.calls += 1
                        candidates = [
                            v for v in versions_of(client, model.name) if in_stage(v, stage)
                        ]
                    chosen = choose_production(candidates)
                    chosen = int(chosen.version) if chosen is not None else None
                else:
                    aliases = searched(model, "aliases")
                    chosen = aliases.get(alias)
                    if chosen is None and not aliases:
                        # Some registries leave aliases out of search results: ask.
                        result.calls += 1
                        found = aliased_version(client, model.name, alias)
                        chosen = found.version if found is not None else None
                if chosen is not None:
                    result.production[model.name] = int(chosen)
            token = page.token
            if not token:
                break
    except Exception as exc:  # noqa: BLE001 - any failure marks this workspace unreachable, not the tick
        result.error = (
            f"{redact_uri(target.tracking_uri)}: {type(exc).__name__}: "
            f"{redact_text(str(exc))[:300]}"
        )
    result.seconds = time.monotonic() - started
    return result


def poll_workspaces(
    targets: Iterable[WorkspaceConfig], *, max_workers: int, deadline_seconds: float
) -> dict[str, PollResult]:
    """Poll all workspaces at once with a bounded pool; those not done by the deadline time out."""
    targets = [addressed(target) for target in targets]
    results: dict[str, PollResult] = {}
    pool = ThreadPoolExecutor(
        max_workers=max(1, min(max_workers, len(targets) or 1)), thread_name_prefix="poll"
    )
    futures = {pool.submit(_poll_one, target): target for target in targets}
    done, pending = wait(futures, timeout=deadline_seconds)
    for future in done:
        result = future.result()
        results[result.workspace] = result
    for future in pending:
        target = futures[future]
        future.cancel()
        results[target.name] = PollResult(
            target.name,
            error=f"{redact_uri(target.tracking_uri)}: no answer within {deadline_seconds:.0f} s",
        )
    pool.shutdown(wait=False, cancel_futures=True)
    return results
