"""What loading in the sandbox costs (`make bench`): one scikit-learn model loaded and predicted
`repeats` times in this process (the old way, for comparison only: the model is the benchmark's
own), in the sandbox's `process` mode and in its `namespaces` mode; and each sandbox's start
(the warm process importing MLflow, pandas and scikit-learn).

    python -m benchmarks.sandbox --repeats 20
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path


def _model(folder: Path) -> Path:
    import mlflow
    import numpy as np
    import pandas as pd
    from sklearn.linear_model import LogisticRegression

    x = pd.DataFrame({"a": np.linspace(0, 1, 50), "b": np.linspace(1, 0, 50)})
    path = folder / "model"
    mlflow.sklearn.save_model(
        LogisticRegression().fit(x, (x.a > 0.5).astype(int)), path, input_example=x.head(3)
    )
    return path


def bench_sandbox(repeats: int, folder: Path) -> list[dict]:
    import mlflow.pyfunc
    from mlflow.models import Model

    from marketplace.sandbox import Sandbox, SandboxSettings

    path = _model(folder)
    rows = []
    in_process = []
    for _ in range(repeats):
        started = time.perf_counter()
        model = mlflow.pyfunc.load_model(str(path), suppress_warnings=True)
        model.predict(Model.load(str(path / "MLmodel")).load_input_example(str(path)))
        in_process.append(time.perf_counter() - started)
    rows.append(
        {
            "where": "in the run process (before)",
            "start_seconds": 0.0,
            "per_model_p50_seconds": round(statistics.median(in_process), 3),
            "per_model_max_seconds": round(max(in_process), 3),
        }
    )
    for mode in ("process", "namespaces"):
        with Sandbox(SandboxSettings(mode=mode)) as box:
            started = time.perf_counter()
            first = box.load_and_predict(path)
            start = time.perf_counter() - started - first.seconds
            times = []
            for _ in range(repeats):
                began = time.perf_counter()
                result = box.load_and_predict(path)
                times.append(time.perf_counter() - began)
                assert result.predicted, result
        rows.append(
            {
                "where": f"sandbox, {mode}",
                "start_seconds": round(start, 2),
                "per_model_p50_seconds": round(statistics.median(times), 3),
                "per_model_max_seconds": round(max(times), 3),
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="marketplace-sandbox-bench-") as tmp:
        print(json.dumps(bench_sandbox(args.repeats, Path(tmp)), indent=1))


if __name__ == "__main__":
    main()
