"""The gate's evaluation: a marketplace version scored by MLflow's evaluation on reference data,
inside the sandbox and only after its files are scanned, and its metrics validated against the
configured thresholds (MLflow's MetricThreshold), the current production version's as baseline."""

from __future__ import annotations

import io
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlparse

from marketplace.errors import MarketplaceError
from marketplace.object_storage import ObjectStorage
from marketplace.registry import (
    REGISTRY_ERRORS,
    RegistryUnavailable,
    process_tracking_uri,
    redact_text,
)
from marketplace.sandbox import Sandbox
from marketplace.scanning import ScanPolicy, refused

if TYPE_CHECKING:
    import pandas as pd
    from mlflow.entities.model_registry import ModelVersion
    from mlflow.models import MetricThreshold

    from marketplace.config import EvaluationRule
    from marketplace.config.gate import ThresholdConfig
    from marketplace.external import ExternalStorage


class GateError(MarketplaceError):
    """A gate that cannot run as configured (its reference data missing or unreadable)."""


class ReferenceData:
    """The evaluation entries' data: Parquet files or Delta tables, relative to external storage
    or at a full URI (object stores read with external storage's options)."""

    def __init__(self, storage: ExternalStorage):
        self.storage = storage
        self._frames: dict[str, pd.DataFrame] = {}
        self._lock = threading.Lock()

    def _where(self, data: str) -> tuple[str, str | None]:
        """(location, key in external storage or None)."""
        parsed = urlparse(data)
        if parsed.scheme == "file":
            return unquote(parsed.path), None
        if parsed.scheme or data.startswith("/"):
            key = self.storage.storage.key_of(data)
            return data, key
        return self.storage.storage.location(data), data.strip("/")

    def is_delta(self, data: str) -> bool:
        location, key = self._where(data)
        if key is not None:
            return bool(self.storage.storage.list(f"{key}/_delta_log/"))
        if "://" not in location:
            return (Path(location) / "_delta_log").is_dir()
        return not location.endswith(".parquet")

    def exists(self, data: str) -> bool:
        location, key = self._where(data)
        if self.is_delta(data):
            return True
        if key is not None:
            return self.storage.storage.exists(key)
        if "://" not in location:
            return Path(location).is_file()
        try:
            self._read(data)
        except Exception:  # noqa: BLE001 - unreadable is absent here
            return False
        return True

    def frame(self, data: str) -> pd.DataFrame:
        with self._lock:
            if data not in self._frames:
                self._frames[data] = self._read(data)
            return self._frames[data]

    def _read(self, data: str) -> pd.DataFrame:
        import pyarrow.parquet as pq
        from deltalake import DeltaTable

        location, key = self._where(data)
        if self.is_delta(data):
            return DeltaTable(location, storage_options=self.storage.delta_options()).to_pandas()
        if key is not None:
            raw = self.storage.storage.read(key)
            if raw is None:
                raise GateError(f"{data}: not found in external storage")
            return pq.read_table(io.BytesIO(raw)).to_pandas()
        if "://" not in location:
            return pq.read_table(location).to_pandas()
        parent, _, name = location.rstrip("/").rpartition("/")
        raw = ObjectStorage(parent, self.storage.delta_options()).read(name)
        if raw is None:
            raise GateError(f"{data}: not found")
        return pq.read_table(io.BytesIO(raw)).to_pandas()


# One evaluation at a time: the gate's sandbox loads one model at a time.
_evaluating = threading.Lock()


class SandboxBlocked(GateError):
    """The sandbox stopped what the version did while it was evaluated."""

    def __init__(self, uri: str, events: tuple[str, ...]):
        super().__init__(f"{uri} blocked in the sandbox: {'; '.join(events)}")
        self.events = events


def evaluate_version(
    tracking_uri: str,
    registry_uri: str | None,
    version: ModelVersion,
    rule: EvaluationRule,
    data: pd.DataFrame,
    policy: ScanPolicy | None,
    sandbox: Sandbox,
) -> dict[str, float]:
    """MLflow's evaluation of one marketplace version on `data`, run in `sandbox` (its files are
    scanned first); the metrics come back as data and are logged here to its imported run."""
    import mlflow
    from mlflow.entities import Metric

    if rule.targets not in data.columns:
        raise GateError(f"the reference data has no column {rule.targets!r} (targets)")
    uri = f"models:/{version.name}/{version.version}"
    with (
        _evaluating,
        process_tracking_uri(tracking_uri, registry_uri),
        tempfile.TemporaryDirectory() as tmp,
    ):
        try:
            local = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp)
        except REGISTRY_ERRORS as exc:
            raise RegistryUnavailable(
                f"{uri} could not be downloaded to evaluate it: {redact_text(str(exc))}"
            ) from exc
        if blocked := refused(Path(local), policy):
            raise GateError(f"{uri} not loaded for evaluation: the scan blocks {blocked}")
        result = sandbox.evaluate(
            Path(local), data, targets=rule.targets, model_type=rule.model_type
        )
        if result.blocked:
            raise SandboxBlocked(uri, result.events)
        if result.status != "ok":
            raise GateError(f"{uri} could not be evaluated: {result.error}")
        metrics = dict(result.metrics)
        if version.run_id and metrics:
            now = int(time.time() * 1000)
            try:
                mlflow.MlflowClient(tracking_uri, registry_uri).log_batch(
                    version.run_id,
                    metrics=[Metric(k, v, now, 0) for k, v in sorted(metrics.items())],
                )
            except REGISTRY_ERRORS as exc:
                raise RegistryUnavailable(
                    f"{uri}: its evaluation's metrics could not be logged: {redact_text(str(exc))}"
                ) from exc
    return metrics


def compare(
    rule: EvaluationRule, candidate: Mapping[str, float], baseline: Mapping[str, float] | None
) -> list[str]:
    """MLflow's validation of the candidate's metrics against the thresholds (and the baseline's
    metrics, when there is a baseline: without one, or for a metric the baseline lacks, only
    absolute thresholds apply)."""
    import mlflow
    from mlflow.models.evaluation import EvaluationResult
    from mlflow.models.evaluation.validation import ModelValidationFailedException

    compared, alone = {}, {}
    for name, settings in rule.thresholds.items():
        if baseline is not None and name in baseline:
            compared[name] = metric_threshold(settings)
        elif settings.threshold is not None:
            # (MLflow's validation raises KeyError on a metric the baseline lacks)
            alone[name] = metric_threshold(settings, absolute_only=True)
    reasons = []
    for thresholds, against in ((compared, baseline), (alone, None)):
        if not thresholds:
            continue
        try:
            mlflow.validate_evaluation_results(
                thresholds,
                EvaluationResult(dict(candidate), {}),
                EvaluationResult(dict(against), {}) if against is not None else None,
            )
        except ModelValidationFailedException as exc:
            reasons += [line.strip() for line in exc.message.splitlines() if line.strip()]
    return reasons


def metric_threshold(settings: ThresholdConfig, *, absolute_only: bool = False) -> MetricThreshold:
    """One metric's configured threshold as MLflow's MetricThreshold (only its absolute threshold,
    for a metric without a baseline to change from)."""
    from mlflow.models import MetricThreshold

    fields = settings.model_dump()
    if absolute_only:
        fields.update(min_absolute_change=None, min_relative_change=None)
    return MetricThreshold(**fields)
