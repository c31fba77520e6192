"""What a sandboxed child does with a model: load and predict it, or evaluate it. Returns plain
data (a digest of the predictions, metrics), never an object of the model's."""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time


def run(request: dict, scratch: str) -> dict:
    if request["task"] == "load_predict":
        return load_predict(request["model"])
    if request["task"] == "evaluate":
        return evaluate(request, scratch)
    return {"status": "error", "error": f"unknown task {request['task']!r}"}


def load_predict(path: str) -> dict:
    import mlflow.pyfunc
    from mlflow.models import Model

    started = time.monotonic()
    try:
        model = mlflow.pyfunc.load_model(path, suppress_warnings=True)
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure to load is the finding
        return {"status": "error", "stage": "load", "loaded": False, "error": _text(exc)}
    loaded = time.monotonic()
    try:
        example = Model.load(os.path.join(path, "MLmodel")).load_input_example(path)
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001
        return {"status": "error", "stage": "example", "loaded": True, "error": _text(exc)}
    if example is None:
        return {
            "status": "ok",
            "loaded": True,
            "predicted": False,
            "load_seconds": round(loaded - started, 3),
        }
    try:
        prediction = model.predict(example)
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001
        return {"status": "error", "stage": "predict", "loaded": True, "error": _text(exc)}
    return {
        "status": "ok",
        "loaded": True,
        "predicted": True,
        "digest": digest(prediction),
        "load_seconds": round(loaded - started, 3),
        "predict_seconds": round(time.monotonic() - loaded, 3),
    }


def evaluate(request: dict, scratch: str) -> dict:
    """MLflow's default evaluation, logged to a tracking store in the scratch folder: the metrics
    come back as data, and the caller logs them to the marketplace."""
    import mlflow
    import pandas as pd

    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"  # a throwaway store in the scratch folder
    mlflow.set_tracking_uri("file://" + os.path.join(scratch, "mlruns"))
    data = pd.read_parquet(request["data"])
    # MLflow tags runs and models with the git commit of the main file: here, none (no `git` runs).
    sys.argv[0] = os.path.join(scratch, "evaluation")
    run = mlflow.MlflowClient().create_run("0")
    try:
        with mlflow.start_run(run_id=run.info.run_id):
            result = mlflow.models.evaluate(
                request["model"],
                data,
                targets=request["targets"],
                model_type=request["model_type"],
                evaluators="default",
                evaluator_config={"log_model_explainability": False},
            )
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001
        return {"status": "error", "stage": "evaluate", "error": _text(exc)}
    metrics = {
        k: float(v)
        for k, v in result.metrics.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(float(v))
    }
    return {"status": "ok", "loaded": True, "metrics": metrics}


def digest(prediction) -> str:
    """SHA-256 of what the model predicted: equal predictions, equal digests."""
    import numpy as np
    import pandas as pd

    h = hashlib.sha256()
    try:
        if isinstance(prediction, pd.DataFrame | pd.Series):
            h.update(type(prediction).__name__.encode())
            h.update(
                repr(
                    list(prediction.columns)
                    if isinstance(prediction, pd.DataFrame)
                    else prediction.name
                ).encode()
            )
            h.update(repr([str(t) for t in np.atleast_1d(prediction.dtypes)]).encode())
            h.update(pd.util.hash_pandas_object(prediction, index=True).to_numpy().tobytes())
            return h.hexdigest()
        array = np.asarray(prediction)
        if array.dtype != object:
            h.update(f"{array.dtype.str}{array.shape}".encode())
            h.update(np.ascontiguousarray(array).tobytes())
            return h.hexdigest()
    except (TypeError, ValueError):
        pass  # unhashable cells: compared by their JSON
    h.update(json.dumps(_plain(prediction), default=repr, sort_keys=True).encode())
    return h.hexdigest()


def _plain(value):
    if hasattr(value, "to_dict"):
        try:
            return value.to_dict(orient="split")
        except TypeError:
            return value.to_dict()
    if hasattr(value, "tolist"):
        return value.tolist()
    return value


def _text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:2000]
