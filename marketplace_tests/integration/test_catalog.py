"""Model cards and the catalog through real syncs: a card with real values on every marketplace
model, one catalog row per model, the page beside the tables, and nothing rewritten on a no-op."""

import mlflow
from mlflow import MlflowClient

from harness.seeding import register_version
from marketplace import summary
from marketplace.external import ExternalStorage
from marketplace.layout import CATALOG_PAGE
from marketplace.registry import process_tracking_uri
from marketplace_tests.testing.deployments import step_failure_message
from marketplace_tests.testing.support import table_rows


def _log_metrics(uri: str, model: str, version: str, **metrics) -> None:
    client = MlflowClient(uri)
    run_id = client.get_model_version(model, version).run_id
    with process_tracking_uri(uri):
        for name, value in metrics.items():
            client.log_metric(run_id, name, value)
    mlflow.set_tracking_uri(None)


def test_every_marketplace_model_gets_a_card_and_a_catalog_row_and_a_no_op_rewrites_nothing(
    servers, deploy, uid
):
    uri, market = servers["ws_a"].uri, MlflowClient(servers["marketplace"].uri)
    name = f"{uid}_iris"
    version = register_version(
        uri, name, stage="Production", description="Trained on the 2026 census of irises."
    )
    MlflowClient(uri).update_registered_model(
        name, description="Predicts the species of an <b>iris</b>."
    )
    MlflowClient(uri).set_registered_model_tag(name, "owner", "flora-team")
    _log_metrics(uri, name, version, accuracy=0.973)
    deployment = deploy(
        [
            {
                "name": "ws-a",
                "tracking_uri": uri,
                "production": {"stage": "Production"},
                "include": [f"{uid}_*"],
            }
        ]
    )
    result = deployment.sync("ws-a")
    assert result.success, step_failure_message(result)
    mp = f"ws-a.{name}"
    card = market.get_registered_model(mp)
    text = card.description
    for expected in (
        f"# ws-a.{name}",
        "**Status:** active",
        "Predicts the species of an &lt;b&gt;iris&lt;/b&gt;.",
        "Trained on the 2026 census of irises.",
        f"mlflow.pyfunc.load_model('models:/{mp}@production')",
        "## Provenance",
        "flora-team",
        "## Production history",
        "| promoted |",
        "| accuracy | 0.973 |",
        "## Signature and environment",
        "| double | yes |",
        "Input example | yes",
        "sklearn",
        "Python",
    ):
        assert expected in text, (expected, text)
    assert (
        "Exported Already On" not in text
    )  # the seed's marker on the source is not the model's story

    built = deployment.refresh_catalog()
    assert built.success
    (row,) = [r for r in table_rows(deployment, summary.CATALOG) if r["marketplace_name"] == mp]
    assert (
        row["workspace"],
        row["model_name"],
        row["status"],
        row["source_version"],
        row["marketplace_version"],
        row["alias"],
        row["owner"],
    ) == ("ws-a", name, "active", int(version), 1, "production", "flora-team")
    assert '"accuracy": 0.973' in row["metrics"] and row["load_uri"] == f"models:/{mp}@production"
    storage = ExternalStorage.of(deployment.config).storage
    page = storage.read(CATALOG_PAGE).decode()
    assert mp in page and "Predicts the species of an \\u003cb\\u003eiris" in page

    # Nothing changed: no description rewritten, no catalog row updated.
    stamp = market.get_registered_model(mp).last_updated_timestamp
    again = deployment.sync("ws-a")
    assert again.success, step_failure_message(again)
    deployment.refresh_catalog()
    assert market.get_registered_model(mp).last_updated_timestamp == stamp
    (same,) = [r for r in table_rows(deployment, summary.CATALOG) if r["marketplace_name"] == mp]
    assert (
        same["updated_at"] == row["updated_at"]
        and same["first_synced_at"] == row["first_synced_at"]
    )

    # A retirement changes the card and the row.
    client = MlflowClient(uri)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        client.transition_model_version_stage(name, version, "Archived")
    assert deployment.sync("ws-a").success
    assert "**Status:** retired since" in market.get_registered_model(mp).description
    deployment.refresh_catalog()
    (retired,) = [r for r in table_rows(deployment, summary.CATALOG) if r["marketplace_name"] == mp]
    assert retired["status"] == "retired" and retired["updated_at"] > row["updated_at"]
    assert retired["first_synced_at"] == row["first_synced_at"] and retired["alias"] is None
