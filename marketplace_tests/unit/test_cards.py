"""Model cards and catalog rows from an export's facts: what they show, how they cut long
lists, and that a registry's text cannot inject markup."""

import datetime as dt
import json

from marketplace import summary
from marketplace.cards import (
    MAX_ROWS,
    STATUS_ACTIVE,
    STATUS_RETIRED,
    HistoryEntry,
    ModelCard,
    catalog_row,
    render_card,
)
from marketplace.catalog_page import render_page
from marketplace.export_facts import ExportFacts, read_export_facts, strip_marker
from marketplace.manifest import Manifest
from marketplace.provenance import Marker
from marketplace.storage import LocalStorage

NOW = dt.datetime(2026, 12, 1, 9, 30, tzinfo=dt.UTC)
ALIAS = Marker("production", has_aliases=True, has_stages=True)


def _card(**overrides) -> ModelCard:
    facts = ExportFacts(
        model_description="Predicts the species of an iris.",
        version_description="Retrained on 2026 data.",
        source_tags={"owner": "flora-team", "team": "botany"},
        run_id="r1",
        run_user="alice",
        logged_model_id="m-1",
        metrics={"accuracy": 0.9733, "f1": 0.97},
        params={"C": "1.0"},
        flavors=("python_function", "sklearn"),
        signature={
            "inputs": [{"name": "sepal length", "type": "double", "required": True}],
            "outputs": [{"name": "", "type": "long", "required": True}],
        },
        has_input_example=True,
        python_version="3.11.7",
        requirements=("mlflow==3.17.2", "scikit-learn==1.9.1"),
        size_bytes=11814,
        exported_at="2026-12-01T08:00:00+00:00",
    )
    fields = {
        "marketplace_name": "dev01.iris",
        "workspace": "dev01",
        "model_name": "iris",
        "status": STATUS_ACTIVE,
        "status_since": "2026-11-30T10:00:00+00:00",
        "source_version": 2,
        "marketplace_version": 3,
        "marker": ALIAS,
        "facts": facts,
        "checksum": "ab" * 32,
        "import_date": "2026-12-01",
        "signer": "workspace dev01's key",
        "source_url": "http://127.0.0.1:5001/#/models/iris/versions/2",
        "marketplace_url": "http://127.0.0.1:5000/#/models/dev01.iris/versions/3",
        "history": (HistoryEntry(NOW, "promoted", 2, 3),),
    }
    return ModelCard(**{**fields, **overrides})


def test_the_seeds_marker_is_not_part_of_a_description():
    assert (
        strip_marker(
            "Exported Already On 2026-11-02, old description: Exported Already On 2026-11-01, "
            "old description: Churn model"
        )
        == "Churn model"
    )
    assert strip_marker(None) == "" and strip_marker("Plain") == "Plain"


def test_a_card_has_every_section_with_real_values():
    text = render_card(_card())
    for expected in (
        "# dev01.iris",
        "**Status:** active",
        "@production is marketplace version 3",
        "Predicts the species of an iris.",
        "Retrained on 2026 data.",
        "mlflow.pyfunc.load_model('models:/dev01.iris@production')",
        "## Provenance",
        "`r1`",
        "`m-1`",
        "flora-team",
        "2026-12-01 08:00:00 UTC",
        "ab" * 32,
        "workspace dev01's key",
        "(http://127.0.0.1:5001/#/models/iris/versions/2)",
        "## Production history",
        "2026-12-01 09:30 | promoted | 2 | 3",
        "| accuracy | 0.9733 |",
        "| C | 1.0 |",
        "| sepal length | double | yes |",
        "Input example | yes",
        "python_function, sklearn",
        "`mlflow==3.17.2`",
        "11.5 KB",
    ):
        assert expected in text, expected
    assert (
        render_card(_card()) == text
    )  # the same facts, the same text: a no-op sync writes nothing


def test_a_retired_card_says_since_when_and_loads_its_last_version():
    card = _card(status=STATUS_RETIRED, status_since="2026-11-30T10:00:00+00:00")
    text = render_card(card)
    assert "retired since 2026-11-30 10:00 UTC" in text
    assert card.load_uri == "models:/dev01.iris/3"
    assert (
        _card(marker=Marker("production", has_aliases=False, has_stages=True)).load_uri
        == "models:/dev01.iris/Production"
    )


def test_long_lists_are_cut_with_a_count_of_the_rest():
    many = {f"metric_{i:02d}": float(i) for i in range(40)}
    columns = [{"name": f"c{i}", "type": "double", "required": True} for i in range(30)]
    text = render_card(
        _card(
            facts=ExportFacts(
                metrics=many,
                signature={"inputs": columns, "outputs": []},
                requirements=tuple(f"pkg{i}==1" for i in range(20)),
            )
        )
    )
    assert (
        f"{40 - MAX_ROWS} more metrics not shown" in text
        and f"{30 - MAX_ROWS} more inputs not shown" in text
    )
    assert "and 8 more" in text and "metric_39" not in text
    assert len(text) < 6000


def test_registry_text_cannot_inject_markup_into_a_card():
    hostile = (
        "<script>alert(1)</script> <img src=x onerror=alert(2)> [link](javascript:alert(3)) | col |"
    )
    text = render_card(
        _card(facts=ExportFacts(model_description=hostile, source_tags={"owner": "<b>x</b>"}))
    )
    assert "<script>" not in text and "<img" not in text and "<b>" not in text
    assert (
        "&lt;script&gt;" in text
        and "\\[link\\]\\(javascript:alert\\(3\\)\\)" in text
        and "\\| col \\|" in text
    )


def test_export_facts_come_from_the_exports_small_files(tmp_path):
    storage = LocalStorage(tmp_path)
    key = "exports/dev01/iris/2"
    storage.write(
        f"{key}/model.json",
        json.dumps(
            {
                "mlflow": {
                    "registered_model": {
                        "description": (
                            "Exported Already On 2026-11-01, old description: Iris species."
                        ),
                        "tags": [{"key": "owner", "value": "flora"}],
                        "versions": [
                            {"version": "2", "description": "v2 notes"},
                            {"version": "1", "description": "old"},
                        ],
                    }
                }
            }
        ),
    )
    storage.write(
        f"{key}/r1/run.json",
        json.dumps(
            {
                "mlflow": {
                    "info": {"user_id": "alice"},
                    "params": {"C": 1},
                    "metrics": {"accuracy": 0.97, "bad": "x"},
                }
            }
        ),
    )
    storage.write(
        f"{key}/m-1/artifacts/MLmodel",
        "model_id: m-1\nflavors:\n  python_function: {python_version: 3.11.7}\n"
        "  sklearn: {}\nsaved_input_example_info: {artifact_path: input_example.json}\nsignature:\n"
        '  inputs: \'[{"type": "double", "name": "x", "required": true}]\'\n'
        '  outputs: \'[{"type": "long", "required": true}]\'\n',
    )
    storage.write(
        f"{key}/m-1/artifacts/requirements.txt", "# pinned\nmlflow==3.17.2\n\nscikit-learn==1.9.1\n"
    )
    files = {
        p: {"sha256": "0" * 64, "size": 100}
        for p in (
            "model.json",
            "r1/run.json",
            "m-1/artifacts/MLmodel",
            "m-1/artifacts/requirements.txt",
            "m-1/artifacts/model.pkl",
        )
    }
    manifest = Manifest(
        "dev01", "iris", 2, "r1", "models:/m-1", "2026-11-01", "2026-11-01T08:00:00+00:00", files
    )
    facts = read_export_facts(storage, key, manifest)
    assert (facts.model_description, facts.version_description, facts.owner) == (
        "Iris species.",
        "v2 notes",
        "flora",
    )
    assert (
        facts.metrics == {"accuracy": 0.97}
        and facts.params == {"C": "1"}
        and facts.logged_model_id == "m-1"
    )
    assert facts.flavors == ("python_function", "sklearn") and facts.python_version == "3.11.7"
    assert facts.signature == {
        "inputs": [{"name": "x", "type": "double", "required": True}],
        "outputs": [{"name": "", "type": "long", "required": True}],
    }
    assert facts.has_input_example and facts.requirements == (
        "mlflow==3.17.2",
        "scikit-learn==1.9.1",
    )
    assert facts.size_bytes == 500 and facts.run_user == "alice"
    # A broken or missing file gives fewer facts, never an error.
    storage.write(f"{key}/m-1/artifacts/MLmodel", ": not yaml : [")
    storage.delete([f"{key}/model.json"])
    assert read_export_facts(storage, key, manifest).flavors == ()


def test_a_catalog_row_matches_the_tables_schema_and_is_updated_only_when_it_changes(tmp_path):
    uri = str(tmp_path / "catalog")
    row = catalog_row(_card(), first_synced_at=NOW, updated_at=NOW)
    assert set(row) == set(summary.SCHEMAS[summary.CATALOG].names)
    assert (
        json.loads(row["metrics"]) == {"accuracy": 0.9733, "f1": 0.97}
        and row["owner"] == "flora-team"
    )
    later = NOW + dt.timedelta(hours=1)
    assert summary.upsert_rows(uri, summary.CATALOG, [row]) == {"inserted": 1, "updated": 0}
    assert summary.upsert_rows(
        uri, summary.CATALOG, [{**row, "first_synced_at": later, "updated_at": later}]
    ) == {"inserted": 0, "updated": 0}
    changed = catalog_row(_card(status=STATUS_RETIRED), first_synced_at=later, updated_at=later)
    assert summary.upsert_rows(uri, summary.CATALOG, [changed]) == {"inserted": 0, "updated": 1}
    (stored,) = summary.read_rows(uri)
    assert (stored["status"], stored["first_synced_at"], stored["updated_at"]) == (
        STATUS_RETIRED,
        NOW,
        later,
    )


def test_the_page_carries_hostile_text_as_inert_json_and_needs_no_network():
    row = {
        **catalog_row(_card(), first_synced_at=NOW, updated_at=NOW),
        "description": "</script><script>alert(1)</script>",
        "metrics": {},
        "signature": {},
        "source_tags": {},
    }
    page = render_page([row], generated_at=NOW)
    assert (
        page.count("<script") == 2 and page.count("</script>") == 2
    )  # the data block and the page's script
    assert "\\u003c/script\\u003e\\u003cscript\\u003ealert(1)" in page
    assert (
        "http" not in page.replace("http-equiv", "").split('<script id="models"')[0]
    )  # nothing fetched
