"""A cheap, concurrent look at every workspace's current production versions (for the sensor)."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from marketplace.config import MarketplaceConfig
from marketplace.databricks import Connection, databricks_connection, ensure_profile
from marketplace.registry import PAGE_SIZE, is_curated, redact_text, redact_uri, searched


@dataclass(frozen=True)
class WorkspaceTarget:
    name: str
    tracking_uri: str
    registry_uri: str | None
    stage: str | None
    alias: str | None
    include: Sequence[str] = ("*",)
    exclude: Sequence[str] = ()
    databricks: Connection | None = None


def workspace_targets(config: MarketplaceConfig) -> list[WorkspaceTarget]:
    return [
        WorkspaceTarget(
            name=w.name,
            tracking_uri=w.tracking_uri,
            registry_uri=w.registry_uri,
            stage=w.production.stage,
            alias=w.production.alias,
            include=tuple(w.include),
            exclude=tuple(w.exclude),
            databricks=databricks_connection(f"workspace {w.name}", w.tracking_uri, w.databricks),
        )
        for w in config.workspaces
    ]


@dataclass
class PollResult:
    workspace: str
    production: dict[str, int] = field(default_factory=dict)
    error: str | None = None
    seconds: float = 0.0
    calls: int = 0


def _poll_one(target: WorkspaceTarget) -> PollResult:
    """One paged registered-model search; per-model alias look-ups only where search shows none."""
    started = time.monotonic()
    result = PollResult(target.name)
    try:
        ensure_profile(target.databricks)
        client = MlflowClient(tracking_uri=target.tracking_uri, registry_uri=target.registry_uri or target.tracking_uri)
        token = None
        while True:
            page = client.search_registered_models(max_results=PAGE_SIZE, page_token=token)
            result.calls += 1
            for model in page:
                if not is_curated(model.name, target.include, target.exclude):
                    continue
                if target.stage:
                    in_stage = [
                        int(v.version)
                        for v in model.latest_versions or []
                        if (v.current_stage or "").lower() == target.stage.lower()
                    ]
                    if in_stage:
                        result.production[model.name] = max(in_stage)
                else:
                    aliases = searched(model, "aliases")
                    version = aliases.get(target.alias)
                    if version is None and not aliases:
                        # Some registries leave aliases out of search results: ask.
                        result.calls += 1
                        try:
                            version = client.get_model_version_by_alias(model.name, target.alias).version
                        except MlflowException as exc:
                            if exc.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                                raise
                    if version is not None:
                        result.production[model.name] = int(version)
            token = page.token
            if not token:
                break
    except Exception as exc:  # noqa: BLE001 - any failure marks this workspace unreachable, not the tick
        result.error = f"{redact_uri(target.tracking_uri)}: {type(exc).__name__}: {redact_text(str(exc))[:300]}"
    result.seconds = time.monotonic() - started
    return result


def poll_workspaces(
    targets: Iterable[WorkspaceTarget], *, max_workers: int, deadline_seconds: float
) -> dict[str, PollResult]:
    """Poll all workspaces at once with a bounded pool; those not done by the deadline time out."""
    targets = list(targets)
    results: dict[str, PollResult] = {}
    pool = ThreadPoolExecutor(max_workers=max(1, min(max_workers, len(targets) or 1)), thread_name_prefix="poll")
    futures = {pool.submit(_poll_one, target): target for target in targets}
    done, pending = wait(futures, timeout=deadline_seconds)
    for future in done:
        result = future.result()
        results[result.workspace] = result
    for future in pending:
        target = futures[future]
        future.cancel()
        results[target.name] = PollResult(
            target.name, error=f"{redact_uri(target.tracking_uri)}: no answer within {deadline_seconds:.0f} s"
        )
    pool.shutdown(wait=False, cancel_futures=True)
    return results
