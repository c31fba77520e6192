"""Loading a marketplace model the way users will, and comparing it with what was exported."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow.models import Model

from marketplace.registry import process_tracking_uri


@dataclass(frozen=True)
class LoadResult:
    loaded: bool
    predicted: bool
    matches_export: bool | None
    detail: str


def _same(a, b) -> bool:
    if isinstance(a, pd.DataFrame | pd.Series):
        return a.equals(b)
    try:
        return bool(np.array_equal(np.asarray(a), np.asarray(b)))
    except Exception:  # noqa: BLE001 - unusual prediction types compare by repr
        return repr(a) == repr(b)


def load_and_predict(tracking_uri: str, model_uri: str, reference_dir: Path | None) -> LoadResult:
    """Load `model_uri` with mlflow.pyfunc, predict its input example, compare with the export's copy."""
    with process_tracking_uri(tracking_uri), tempfile.TemporaryDirectory() as tmp:
        try:
            local = mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=tmp)
            model = mlflow.pyfunc.load_model(local)
        except Exception as exc:  # noqa: BLE001 - any failure to load is the finding
            return LoadResult(False, False, None, f"{model_uri} does not load: {type(exc).__name__}: {exc}")
        example = Model.load(local).load_input_example(local)
        if example is None:
            return LoadResult(True, False, None, f"{model_uri} loads but has no input example to predict")
        try:
            prediction = model.predict(example)
        except Exception as exc:  # noqa: BLE001
            return LoadResult(True, False, None, f"{model_uri} loads but fails to predict: {type(exc).__name__}: {exc}")
        if reference_dir is None or not (reference_dir / "MLmodel").exists():
            return LoadResult(True, True, None, f"{model_uri} loads and predicts")
        expected = mlflow.pyfunc.load_model(str(reference_dir)).predict(example)
        if not _same(prediction, expected):
            return LoadResult(True, True, False, f"{model_uri} predicts differently from its export")
        return LoadResult(True, True, True, f"{model_uri} loads and predicts the same as its export")
