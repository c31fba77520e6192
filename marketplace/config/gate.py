"""The `gate` section (and each workspace's own): what a version must show before the marketplace
makes it production."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from marketplace.config.base import Strict, glob_patterns

REQUIREMENTS = ("signature", "input_example", "description", "owner")


class ThresholdConfig(Strict):
    """One metric's MLflow MetricThreshold; MLflow's own rules apply (checked on load)."""

    threshold: float | None = None
    min_absolute_change: float | None = None
    min_relative_change: float | None = None
    greater_is_better: bool | None = None

    @field_validator("threshold", "min_absolute_change", "min_relative_change", mode="before")
    @classmethod
    def _number(cls, value: Any) -> Any:
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise ValueError(f"{value!r} is not a number")
        return value

    @field_validator("greater_is_better", mode="before")
    @classmethod
    def _boolean(cls, value: Any) -> Any:
        if value is not None and not isinstance(value, bool):
            raise ValueError(f"{value!r} is not true or false")
        return value

    @model_validator(mode="after")
    def _mlflow_accepts(self) -> ThresholdConfig:
        from mlflow.exceptions import MlflowException
        from mlflow.models import MetricThreshold  # MLflow: only when a gate has thresholds

        try:
            MetricThreshold(**self.model_dump())
        except MlflowException as exc:
            raise ValueError(
                exc.message.removeprefix("Could not instantiate MetricThreshold class: ")
            ) from None
        return self


class EvaluationRule(Strict):
    """No regression on reference data: the candidate against the current marketplace version."""

    models: list[str] = Field(min_length=1)  # marketplace-name glob patterns
    # Parquet or Delta, relative to external storage, or a full URI/path
    data: str = Field(min_length=1)
    targets: str = Field(min_length=1)
    model_type: Literal["classifier", "regressor"]
    thresholds: dict[str, ThresholdConfig] = Field(min_length=1)

    _patterns = field_validator("models")(classmethod(lambda cls, v: glob_patterns(v)))

    @field_validator("thresholds")
    @classmethod
    def _metric_names(cls, value: dict[str, ThresholdConfig]) -> dict[str, ThresholdConfig]:
        for name in value:
            if not re.fullmatch(r"[A-Za-z0-9_./ -]{1,250}", name):
                raise ValueError(f"{name!r} is not a metric name")
        return value


class GateConfig(Strict):
    """What a version must show before the marketplace makes it production. In `workspaces[].gate`,
    each key set replaces the global key."""

    require: list[Literal["signature", "input_example", "description", "owner"]] | None = None
    evaluation: list[EvaluationRule] | None = None
    approval: Literal["none", "manual"] | None = None

    @field_validator("require", mode="before")
    @classmethod
    def _known(cls, value: Any) -> Any:
        if isinstance(value, list):
            unknown = [v for v in value if v not in REQUIREMENTS]
            if unknown:
                raise ValueError(
                    f"{unknown[0]!r} is not a requirement: use any of {', '.join(REQUIREMENTS)}"
                )
        return value
