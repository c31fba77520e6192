"""The promotion gate's evaluation at size: what judging one version costs (`gate.GateKeeper.judge`:
download and scan the candidate and the current production version, MLflow's evaluation of each
on the reference data, logged to their runs, and MLflow's validation of the thresholds).

    .venv/bin/python -m benchmarks.gate [ROWS] [VERSIONS]
"""

from __future__ import annotations

import itertools
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from mlflow import MlflowClient

from harness.local_servers import LocalServer, free_port, start, stop
from harness.seeding import log_model
from marketplace.config import load_config
from marketplace.export_facts import ExportFacts
from marketplace.external import ExternalStorage
from marketplace.gate import GateKeeper
from marketplace.scanning import scan_policy

THRESHOLDS = {
    "roc_auc": {"min_relative_change": 0.0, "greater_is_better": True},
    "accuracy_score": {"threshold": 0.6, "greater_is_better": True},
}


def _frame(rows: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(rng.normal(size=(rows, 8)), columns=[f"f{i}" for i in range(8)])
    frame["label"] = (frame.f0 + 0.9 * frame.f1 + 0.3 * rng.normal(size=rows) > 0).astype(int)
    return frame


def _register(uri: str, name: str, count: int) -> list:
    """`count` versions of `name`, classifiers of the reference data's labels."""
    from sklearn.linear_model import LogisticRegression

    train = _frame(2000, 1)
    features = train.drop(columns="label")
    versions = []
    for n in range(count):
        info = log_model(
            uri,
            LogisticRegression(C=1.0 / (n + 1)).fit(features, train["label"]),
            experiment=f"/bench/{name}",
            example=features.head(3),
            registered_model_name=name,
        )
        versions.append(
            MlflowClient(uri).get_model_version(name, str(info.registered_model_version))
        )
    return versions


def bench_gate(folder: Path, rows: int, versions: int) -> dict:
    market = LocalServer("gate_market", folder / "market", free_port())
    start(market)
    try:
        storage = folder / "storage"
        (storage / "evaluation").mkdir(parents=True)
        _frame(rows, 7).to_parquet(storage / "evaluation" / "reference.parquet")
        config_path = folder / "marketplace.yaml"
        config_path.write_text(
            yaml.safe_dump(
                {
                    "external_storage": {"uri": str(storage)},
                    "marketplace": {"tracking_uri": market.uri},
                    "workspaces": [
                        {
                            "name": "bench",
                            "tracking_uri": market.uri,
                            "production": {"stage": "Production"},
                        }
                    ],
                    "gate": {
                        "evaluation": [
                            {
                                "models": ["*"],
                                "data": "evaluation/reference.parquet",
                                "targets": "label",
                                "model_type": "classifier",
                                "thresholds": THRESHOLDS,
                            }
                        ]
                    },
                }
            )
        )
        config = load_config(config_path)
        registered = _register(market.uri, "bench.gated", versions + 1)
        keeper = GateKeeper(
            config.gate_for("bench"),
            "bench",
            ExternalStorage.of(config),
            rules_key=config.gate_key("bench"),
            tracking_uri=market.uri,
            registry_uri=None,
            policy=scan_policy(config.security),
            sandbox_settings=config.security.sandbox.settings(),
            facts=lambda model, version: ExportFacts(),
        )
        keeper.check_ready()
        seconds, verdicts = [], []
        for baseline, candidate in itertools.pairwise(registered):
            started = time.perf_counter()
            verdict = keeper.judge(
                "bench.gated", "gated", int(candidate.version), candidate, baseline
            )
            seconds.append(time.perf_counter() - started)
            verdicts.append(verdict.passed)
        return {
            "reference_rows": rows,
            "versions_judged": len(seconds),
            "seconds_per_gated_version": round(sum(seconds) / len(seconds), 2),
            "seconds_first": round(seconds[0], 2),
            "seconds_max": round(max(seconds), 2),
            "evaluations_per_version": 2,
            "passed": sum(verdicts),
        }
    finally:
        stop(market)


if __name__ == "__main__":
    args = [int(a) for a in sys.argv[1:3]]
    rows, count = (args + [10_000, 3][len(args) :])[:2]
    with tempfile.TemporaryDirectory(prefix="marketplace-gate-bench-") as tmp:
        print(json.dumps(bench_gate(Path(tmp), rows, count), indent=1))
