"""The catalog at size: a marketplace of many models across many workspaces, each with its
export's small files and its production history, then what the catalog asset does (its domain
function, `catalog.build_catalog`): its time, the page's size, and a keystroke's time in the page.

    .venv/bin/python -m benchmarks.catalog [WORKSPACES] [MODELS_PER_WORKSPACE]
"""

from __future__ import annotations

import datetime as dt
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

import yaml
from mlflow import MlflowClient

from harness.local_servers import LocalServer, free_port, start, stop
from harness.seeding import log_model
from marketplace import layout, summary
from marketplace.catalog import build_catalog
from marketplace.config import load_config
from marketplace.external import ExternalStorage
from marketplace.manifest import build_manifest, write_manifest
from marketplace.production_marker import STATUS_ACTIVE, TAG_STATUS, TAG_STATUS_CHANGED_AT
from marketplace.provenance import (
    TAG_CHECKSUM,
    TAG_PRODUCTION_SOURCE_VERSION,
    SourceKey,
    provenance_tags,
)
from marketplace.registries import MarketplaceRegistry, SourceRegistries

NOW = dt.datetime.now(dt.UTC)
MLMODEL = """flavors:
  python_function: {{loader_module: mlflow.sklearn, python_version: 3.11.7}}
  sklearn: {{sklearn_version: 1.9.1}}
model_id: m-{n}
saved_input_example_info: {{artifact_path: input_example.json}}
signature:
  inputs: '[{cols}]'
  outputs: '[{{"type": "long", "required": true}}]'
"""


def _export(root: Path, workspace: str, model: str, n: int) -> str:
    """A small export of `model` v1, as mlflow-export-import lays it out; its checksum."""
    folder = root / layout.export_key(workspace, model, 1)
    (folder / "r1").mkdir(parents=True)
    (folder / f"m-{n}" / "artifacts").mkdir(parents=True)
    (folder / "model.json").write_text(
        json.dumps(
            {
                "mlflow": {
                    "registered_model": {
                        "name": model,
                        "description": (
                            f"Predicts {model.split('_')[0]} for the {workspace} team, model {n}."
                        ),
                        "tags": [{"key": "owner", "value": f"team-{n % 7}"}],
                        "versions": [{"version": "1", "description": "v1"}],
                    }
                }
            }
        )
    )
    (folder / "r1" / "run.json").write_text(
        json.dumps(
            {
                "mlflow": {
                    "info": {"user_id": "bench"},
                    "params": {f"p{i}": i for i in range(12)},
                    "metrics": {"accuracy": 0.9 + n / 10000, "f1": 0.8, "auc": 0.95},
                }
            }
        )
    )
    cols = ", ".join(f'{{"type": "double", "name": "f{i}", "required": true}}' for i in range(8))
    (folder / f"m-{n}" / "artifacts" / "MLmodel").write_text(MLMODEL.format(n=n, cols=cols))
    (folder / f"m-{n}" / "artifacts" / "requirements.txt").write_text(
        "mlflow==3.17.2\nscikit-learn==1.9.1\n"
    )
    (folder / f"m-{n}" / "artifacts" / "model.skops").write_bytes(b"\0" * 4096)
    manifest = build_manifest(
        folder,
        workspace=workspace,
        model_name=model,
        version=1,
        run_id="r1",
        source=f"models:/m-{n}",
        export_date=NOW.date().isoformat(),
        exported_at=NOW.isoformat(),
    )
    return write_manifest(folder, manifest)


def seed_marketplace(folder: Path, market: LocalServer, workspaces: int, models: int) -> Path:
    """A configuration whose marketplace holds `workspaces` x `models` synced models."""
    storage = folder / "external"
    names = [f"ws{w:02d}" for w in range(workspaces)]
    config = folder / "marketplace.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "external_storage": {"uri": str(storage)},
                "marketplace": {"tracking_uri": market.uri},
                "workspaces": [
                    {
                        "name": w,
                        "tracking_uri": f"http://127.0.0.1:{free_port()}",
                        "production": {"stage": "Production"},
                    }
                    for w in names
                ],
            }
        )
    )
    client = MlflowClient(market.uri)
    history, n = [], 0
    source, model_id = _logged_model_source(market)
    for workspace in names:
        for i in range(models):
            n += 1
            model = ["churn", "fraud", "demand", "pricing", "ranking"][n % 5] + f"_model_{i:03d}"
            checksum = _export(storage, workspace, model, n)
            name = f"{workspace}.{model}"
            key = SourceKey(workspace, model, 1)
            client.create_registered_model(
                name,
                tags={
                    **provenance_tags(workspace, model, "http://source"),
                    TAG_STATUS: STATUS_ACTIVE,
                    TAG_STATUS_CHANGED_AT: NOW.isoformat(timespec="seconds"),
                    TAG_PRODUCTION_SOURCE_VERSION: "1",
                },
            )
            version = client.create_model_version(
                name, source, tags={**key.tags(), TAG_CHECKSUM: checksum}, model_id=model_id
            )
            client.set_registered_model_alias(name, "production", version.version)
            history.append(
                {
                    "workspace": workspace,
                    "model_name": model,
                    "marketplace_name": name,
                    "sequence": 1,
                    "change": "promoted",
                    "source_version": 1,
                    "previous_source_version": None,
                    "marketplace_version": int(version.version),
                    "changed_at": NOW,
                    "run_id": "bench",
                    "snapshot_date": NOW.date(),
                }
            )
    summary.merge_rows(
        str(storage / summary.PRODUCTION_HISTORY), summary.PRODUCTION_HISTORY, history
    )
    return config


def _logged_model_source(market: LocalServer) -> tuple[str, str]:
    """The URI and id of one logged model every version of the marketplace points at."""
    from sklearn.linear_model import LogisticRegression

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        info = log_model(
            market.uri, LogisticRegression().fit([[0], [1]], [0, 1]), experiment="/bench-catalog"
        )
    return info.model_uri, info.model_id


def keystroke_ms(page_path: Path) -> float | None:
    """The slowest keystroke of a typed query in the page, in a real browser (None without one)."""
    from harness.browser import browser_page, chromium_path

    if chromium_path() is None:
        return None
    with browser_page() as page:
        page.goto(page_path.as_uri())
        page.wait_for_selector("article.card")
        return max(
            page.evaluate("""() => {
            const input = document.getElementById("q"), times = [];
            for (const text of ["p", "pr", "pre", "pred", "predi", "predic", "predict", "predicts",
                                "predicts f"]) {
                const started = performance.now();
                input.value = text; input.dispatchEvent(new Event("input"));
                document.body.getBoundingClientRect();
                times.push(performance.now() - started);
            }
            return times;
        }""")
        )


def bench_catalog(folder: Path, workspaces: int, models: int) -> dict:
    market = LocalServer("catalog_market", folder / "market", free_port())
    start(market)
    try:
        config = load_config(seed_marketplace(folder, market, workspaces, models))
        storage, registry = ExternalStorage.of(config), MarketplaceRegistry(config)
        timings = []
        for _ in range(2):  # the first writes every row; the second finds nothing changed
            started = time.perf_counter()
            built = build_catalog(
                registry.client(),
                marketplace=registry,
                storage=storage,
                sources=SourceRegistries(config),
            )
            timings.append(time.perf_counter() - started)
        page = Path(storage.storage.root) / layout.CATALOG_PAGE
        return {
            "workspaces": workspaces,
            "models": len(built.rows),
            "catalog_seconds_first": round(timings[0], 2),
            "catalog_seconds_again": round(timings[1], 2),
            "rows_updated_again": built.updated,
            "page_bytes": built.page_bytes,
            "keystroke_ms_max": _rounded(keystroke_ms(page)),
        }
    finally:
        stop(market)


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


if __name__ == "__main__":
    counts = [int(a) for a in sys.argv[1:3]] or [10, 20]
    with tempfile.TemporaryDirectory(prefix="marketplace-catalog-bench-") as tmp:
        print(json.dumps(bench_catalog(Path(tmp), *(counts + [20])[:2]), indent=1))
