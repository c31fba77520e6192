"""Models for the tests: small scikit-learn models logged, registered and promoted in a source."""

from __future__ import annotations

import uuid
import warnings

import mlflow
from mlflow import MlflowClient

from marketplace.registry import filter_literal, process_tracking_uri


def sklearn_requirements() -> list[str]:
    """Given, not inferred: MLflow infers a model's requirements by loading it in a subprocess,
    about 4 s a model, most of a test's set-up."""
    import sklearn

    return [f"scikit-learn=={sklearn.__version__}"]


def _fit(kind: str, seed: int):
    from sklearn import datasets
    from sklearn.linear_model import LinearRegression, LogisticRegression

    if kind == "iris":
        x, y = datasets.load_iris(return_X_y=True, as_frame=True)
        return LogisticRegression(max_iter=500, C=1.0 / seed).fit(x, y), x.head(5)
    x, y = datasets.load_diabetes(return_X_y=True, as_frame=True)
    return LinearRegression().fit(x.iloc[: 200 + seed], y.iloc[: 200 + seed]), x.head(5)


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
    with process_tracking_uri(tracking_uri):
        # Experiment names are limited to 500 characters; model names are not.
        mlflow.set_experiment(
            f"/tests/{model_name}" if len(model_name) < 400 else f"/tests/{uuid.uuid4().hex}"
        )
        literal = filter_literal(model_name)
        count = (
            len(client.search_model_versions(f"name={literal}"))
            if client.search_registered_models(filter_string=f"name={literal}")
            else 0
        )
        model, example = _fit(kind, count + 1)
        with mlflow.start_run():
            info = mlflow.sklearn.log_model(
                model,
                name="model",
                input_example=example,
                registered_model_name=model_name,
                pip_requirements=sklearn_requirements(),
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


def assert_predicts_like_source(
    source_tracking_uri: str, source_model: str, market_tracking_uri: str, market_model: str
) -> None:
    """The marketplace copy loads by its alias and predicts exactly as the source (diabetes
    models)."""
    import numpy as np
    from sklearn import datasets

    features = datasets.load_diabetes(return_X_y=True, as_frame=True)[0].tail(20)
    with process_tracking_uri(source_tracking_uri):
        source = mlflow.pyfunc.load_model(source_model)
    with process_tracking_uri(market_tracking_uri):
        copy = mlflow.pyfunc.load_model(market_model)
    np.testing.assert_array_equal(copy.predict(features), source.predict(features))
