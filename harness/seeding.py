"""The models the demo, the tests and the benchmarks register: small scikit-learn models (iris,
wine, diabetes) logged to a tracking server, and the benchmarks' production copies of one model.
"""

from __future__ import annotations

import os
import sys
import tempfile
import uuid
import warnings
from pathlib import Path

import cloudpickle
import mlflow
from mlflow import MlflowClient

from marketplace.registry import filter_literal, process_tracking_uri


def sklearn_requirements() -> list[str]:
    """Given, not inferred: MLflow infers a model's requirements by loading it in a subprocess,
    about 4 s a model, most of a test's set-up."""
    import sklearn

    return [f"scikit-learn=={sklearn.__version__}"]


def dataset(kind: str):
    """scikit-learn's toy data set of `kind` (iris, wine, or any other kind: diabetes) as a
    frame of features and a series of targets."""
    from sklearn import datasets

    load = {"iris": datasets.load_iris, "wine": datasets.load_wine}.get(
        kind, datasets.load_diabetes
    )
    return load(return_X_y=True, as_frame=True)


def fit(kind: str, seed: int):
    """A small model of `kind`, a different one for each `seed` (1, 2, ...), and an input example
    of five rows: "iris" and "wine" classifiers, or (any other kind) a "diabetes" regressor."""
    from sklearn.linear_model import LinearRegression, LogisticRegression

    x, y = dataset(kind)
    if kind == "iris":
        return LogisticRegression(max_iter=500, C=1.0 / seed).fit(x, y), x.head(5)
    if kind == "wine":
        return LogisticRegression(max_iter=5000, C=0.5 / seed).fit(x, y), x.head(5)
    return LinearRegression().fit(x.iloc[: 200 + seed], y.iloc[: 200 + seed]), x.head(5)


def log_model(
    tracking_uri: str,
    model,
    *,
    experiment: str,
    example=None,
    registered_model_name: str | None = None,
    requirements: list[str] | None = None,
    run_name: str | None = None,
    params: dict | None = None,
    metrics: dict | None = None,
):
    """Log a scikit-learn `model` as `model` in a new run of `experiment` (its requirements
    inferred unless given), registered as a new version of `registered_model_name` if given;
    returns MLflow's ModelInfo."""
    with process_tracking_uri(tracking_uri):
        mlflow.set_experiment(experiment)
        with mlflow.start_run(run_name=run_name):
            if params:
                mlflow.log_params(params)
            if metrics:
                mlflow.log_metrics(metrics)
            return mlflow.sklearn.log_model(
                model,
                name="model",
                input_example=example,
                registered_model_name=registered_model_name,
                pip_requirements=requirements,
            )


def register_version(
    tracking_uri: str,
    model_name: str,
    *,
    stage: str | None = None,
    alias: str | None = None,
    kind: str = "iris",
    description: str | None = None,
) -> str:
    """Log a small scikit-learn model, register it as a new version, promote it; returns the
    version."""
    client = MlflowClient(tracking_uri)
    literal = filter_literal(model_name)
    count = (
        len(client.search_model_versions(f"name={literal}"))
        if client.search_registered_models(filter_string=f"name={literal}")
        else 0
    )
    model, example = fit(kind, count + 1)
    info = log_model(
        tracking_uri,
        model,
        # Experiment names are limited to 500 characters; model names are not.
        experiment=f"/tests/{model_name}"
        if len(model_name) < 400
        else f"/tests/{uuid.uuid4().hex}",
        example=example,
        registered_model_name=model_name,
        requirements=sklearn_requirements(),
    )
    version = str(info.registered_model_version)
    if description is not None:
        client.update_model_version(model_name, version, description=description)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        if stage:
            client.transition_model_version_stage(model_name, version, stage)
    if alias:
        client.set_registered_model_alias(model_name, alias, version)
    return version


def model_names(count: int) -> list[str]:
    """The benchmarks' model names: model_000, model_001, ..."""
    return [f"model_{i:03d}" for i in range(count)]


def seed_production(
    tracking_uri: str, names: list[str], *, blob_bytes: int = 0, blob_files: int = 1
) -> None:
    """One logged model, registered as one production version of each name (fast to seed): the
    iris classifier, or a pyfunc model whose artifacts are `blob_files` random files of
    `blob_bytes` in all, as the shards of a sharded safetensors checkpoint are."""
    client = MlflowClient(tracking_uri)
    with tempfile.TemporaryDirectory() as tmp:
        if blob_bytes:
            shards = {}
            for k in range(blob_files):
                shards[f"weights{k}"] = Path(tmp) / f"weights{k}.bin"
                _write_random(shards[f"weights{k}"], blob_bytes // blob_files)
            with process_tracking_uri(tracking_uri):
                mlflow.set_experiment("/bench")
                with mlflow.start_run():
                    info = mlflow.pyfunc.log_model(
                        name="model",
                        python_model=_Echo(),
                        artifacts={k: str(v) for k, v in shards.items()},
                    )
        else:
            model, example = fit("iris", 1)
            info = log_model(tracking_uri, model, experiment="/bench", example=example.head(3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        for name in names:
            client.create_registered_model(name)
            version = client.create_model_version(
                name, info.model_uri, run_id=info.run_id, model_id=info.model_id
            )
            client.transition_model_version_stage(name, version.version, "Production")


class _Echo(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        return model_input


# Pickle the model class by value, so that the marketplace's load check can load it anywhere.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def _write_random(path: Path, size: int) -> None:
    chunk = os.urandom(8 * 1024 * 1024)
    with open(path, "wb") as handle:
        written = 0
        while written < size:
            handle.write(chunk[: min(len(chunk), size - written)])
            written += min(len(chunk), size - written)
