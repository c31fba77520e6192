"""The whole marketplace at once: the `catalog` Delta table (one row per marketplace model, its
current state) and the catalog page, built from the registry, production_history and the
exports' facts (the same facts as each model card)."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from mlflow import MlflowClient

from marketplace import summary
from marketplace.cards import (
    CATALOG_TIMES,
    STATUS_ACTIVE,
    STATUS_HELD,
    STATUS_RETIRED,
    Cards,
    CardSettings,
    ModelCard,
    catalog_row,
)
from marketplace.catalog_page import render_page
from marketplace.gate import TAG_HELD, configured_holds, held_note
from marketplace.marketplace_versions import marketplace_versions_of
from marketplace.production_marker import TAG_STATUS, TAG_STATUS_CHANGED_AT
from marketplace.provenance import TAG_PRODUCTION_SOURCE_VERSION
from marketplace.registry import PAGE_SIZE, registry_errors, searched

if TYPE_CHECKING:
    from marketplace.external import ExternalStorage
    from marketplace.registries import MarketplaceRegistry, SourceRegistries


@dataclass
class Catalog:
    rows: list[dict] = field(default_factory=list)  # as the table holds them now
    cards: list[ModelCard] = field(default_factory=list)
    inserted: int = 0
    updated: int = 0
    page_location: str = ""
    page_bytes: int = 0


def _registered(client: MlflowClient) -> dict:
    found, token = {}, None
    while True:
        page = client.search_registered_models(max_results=PAGE_SIZE, page_token=token)
        found.update({m.name: m for m in page})
        token = page.token
        if not token:
            return found


def build_catalog(
    client: MlflowClient,
    *,
    marketplace: MarketplaceRegistry,
    storage: ExternalStorage,
    sources: SourceRegistries,
    now: dt.datetime | None = None,
) -> Catalog:
    """Write the catalog table (a row changes only where its content did) and the page."""
    now = now or dt.datetime.now(dt.UTC)
    history = storage.read_rows(summary.PRODUCTION_HISTORY)
    latest: dict[str, dict] = {}
    for row in sorted(history, key=lambda r: r["sequence"]):
        latest[row["marketplace_name"]] = row
    configured = set(sources.names)
    with registry_errors("the marketplace (building the catalog)", marketplace.tracking_uri):
        registered = _registered(client)
        # Models whose first version the gate holds are listed too (status held), with the version.
        for hold in configured_holds(marketplace.config, client):
            if (
                hold.marketplace_name not in latest
                and hold.model_name
                and hold.marketplace_name in registered
            ):
                latest[hold.marketplace_name] = {
                    "workspace": hold.workspace,
                    "model_name": hold.model_name,
                    "source_version": None,
                    "previous_source_version": None,
                    "held": True,
                }
        names = sorted(
            n for n in latest if n in registered and latest[n]["workspace"] in configured
        )
        known = marketplace_versions_of(client, names)
    cards: dict[str, Cards] = {}
    result = Catalog()
    for name in names:
        row, model = latest[name], registered[name]
        workspace = row["workspace"]
        if workspace not in cards:
            cards[workspace] = Cards(
                CardSettings.of(marketplace, sources, workspace),
                storage.storage,
                [r for r in history if r["workspace"] == workspace],
            )
        tags = searched(model, "tags") or (client.get_registered_model(name).tags or {})
        status = tags.get(TAG_STATUS) or (
            STATUS_ACTIVE if row["source_version"] is not None else STATUS_RETIRED
        )
        versions = known.get(name, {})
        holds = sorted(
            ((k, v) for k, v in versions.items() if (v.tags or {}).get(TAG_HELD)),
            key=lambda kv: kv[0].version,
        )
        held = "; ".join(held_note(k.version, v.version, v.tags or {}) for k, v in holds)
        if row.get("held"):
            status = STATUS_HELD
        wanted = tags.get(TAG_PRODUCTION_SOURCE_VERSION) if status == STATUS_ACTIVE else None
        shown = next(((k, v) for k, v in versions.items() if str(k.version) == wanted), None)
        if row.get("held") and holds:
            shown = holds[-1]
        if shown is None and versions:
            last = row["source_version"] or row["previous_source_version"]
            shown = next(
                ((k, v) for k, v in versions.items() if k.version == last),
                max(versions.items(), key=lambda kv: kv[0].version),
            )
        result.cards.append(
            cards[workspace].card(
                row["model_name"],
                name,
                shown,
                status,
                tags.get(TAG_STATUS_CHANGED_AT, ""),
                held=held,
            )
        )
    existing = {r["marketplace_name"]: r for r in storage.read_rows(summary.CATALOG)}
    for card in result.cards:
        before = existing.get(card.marketplace_name)
        fresh = catalog_row(
            card, first_synced_at=before["first_synced_at"] if before else now, updated_at=now
        )
        if before is not None and all(
            before[k] == fresh[k] for k in fresh if k not in CATALOG_TIMES
        ):
            fresh["updated_at"] = before["updated_at"]
        result.rows.append(fresh)
    counts = storage.merge_catalog(result.rows)
    result.inserted, result.updated = counts["inserted"], counts["updated"]
    page = render_page(
        [_for_page(row, card) for row, card in zip(result.rows, result.cards)], generated_at=now
    )
    result.page_location = storage.write_page(page)
    result.page_bytes = len(page.encode())
    return result


def _for_page(row: dict, card: ModelCard) -> dict:
    return {
        **row,
        **{k: json.loads(row[k]) for k in ("signature", "metrics", "source_tags")},
        "marketplace_url": card.marketplace_url,
        "source_url": card.source_url,
    }
