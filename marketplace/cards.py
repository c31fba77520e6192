"""What people see of a marketplace model before they deploy it: its model card (the registered
model's markdown description) and its catalog row, both made from the same facts.

The facts come from the export in external storage (mlflow-export-import's model.json and
run.json, the MLmodel file, the manifest), the marketplace registry and production_history.
Everything that came from a source registry (names, descriptions, tags, parameters) is
untrusted: the card escapes it for markdown and HTML, the catalog page for HTML.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from marketplace.export_facts import (
    ExportFacts,
    export_facts,
)
from marketplace.manifest import ManifestError
from marketplace.provenance import TAG_CHECKSUM, TAG_IMPORT_DATE, Marker
from marketplace.registry import model_version_url
from marketplace.storage import StorageError

if TYPE_CHECKING:
    from marketplace.registries import MarketplaceRegistry, SourceRegistries
    from marketplace.storage import Storage

STATUS_ACTIVE = "active"
STATUS_RETIRED = "retired"
STATUS_HELD = "held"  # never in production: its source's production version is held by the gate
MAX_ROWS = 12  # rows of a card's table before the rest is counted

MAX_TEXT = 2000  # characters of a source description on a card
_MAIN_PARAMS = 8


@dataclass(frozen=True)
class HistoryEntry:
    changed_at: dt.datetime
    change: str
    source_version: int | None
    marketplace_version: int | None


@dataclass(frozen=True)
class ModelCard:
    """Everything a card and a catalog row say about one marketplace model."""

    marketplace_name: str
    workspace: str
    model_name: str
    status: str  # active | retired
    status_since: str
    source_version: int | None  # production's (the last one, for a retired model)
    marketplace_version: int | None
    marker: Marker
    facts: ExportFacts
    checksum: str = ""
    import_date: str = ""
    signer: str = ""  # who signed the export, where signatures are configured
    source_url: str = ""
    marketplace_url: str = ""
    unity_catalog: bool = False
    history: tuple[HistoryEntry, ...] = ()
    held: str = ""  # what the promotion gate holds back, if anything

    @property
    def load_uri(self) -> str:
        if self.status != STATUS_ACTIVE:
            return (
                f"models:/{self.marketplace_name}/{self.marketplace_version}"
                if self.marketplace_version
                else ""
            )
        if self.marker.has_aliases:
            return f"models:/{self.marketplace_name}@{self.marker.alias}"
        return f"models:/{self.marketplace_name}/Production"


def _md(text: str) -> str:
    """Untrusted text for a markdown line: no HTML, no markdown structure, no table breaks."""
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    # `_` stays: names are full of it, and inside a word CommonMark never reads it as emphasis.
    text = re.sub(r"([\\`*{}\[\]()|~])", r"\\\1", text)
    return " ".join(text.split())


def _when(timestamp: str) -> str:
    try:
        return f"{dt.datetime.fromisoformat(timestamp):%Y-%m-%d %H:%M} UTC"
    except ValueError:
        return _md(timestamp)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], what: str) -> list[str]:
    if not rows:
        return []
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows[:MAX_ROWS]]
    if len(rows) > MAX_ROWS:
        lines.append(f"\n*{len(rows) - MAX_ROWS} more {what} not shown.*")
    return lines


def _size(size: int) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if size < 1024 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024
    return ""


def render_card(card: ModelCard) -> str:
    """The model card: markdown the MLflow and Databricks UIs render. A pure function of `card`:
    the same facts give the same text, so a sync that changed nothing rewrites nothing."""
    f = card.facts
    out = [f"# {_md(card.marketplace_name)}", ""]
    if card.status == STATUS_ACTIVE:
        out.append(
            f"**Status:** active — {card.marker.describe()} is marketplace version "
            f"{card.marketplace_version}, the copy of source version {card.source_version}."
        )
    elif card.status == STATUS_HELD:
        out.append("**Status:** not in production yet: the promotion gate holds its first version.")
    else:
        out.append(
            f"**Status:** retired since {_when(card.status_since)}: the workspace has no "
            "production version of it any more. Its versions are kept."
        )
    out.append("")
    if card.held:
        out += [f"**Held by the promotion gate:** {_md(card.held)}", ""]
    for title, text in (
        ("About the model", f.model_description),
        ("About this version", f.version_description),
    ):
        if text:
            shown = _md(text[:MAX_TEXT]) + (
                f" … ({len(text) - MAX_TEXT} more characters)" if len(text) > MAX_TEXT else ""
            )
            out += [f"**{title}:** {shown}", ""]
    out += [
        "## How to load it",
        "",
        "```python",
        "import mlflow",
        "",
        f"model = mlflow.pyfunc.load_model({card.load_uri!r})",
        "```",
        "",
    ]
    if card.unity_catalog:
        out += ['(Unity Catalog: call `mlflow.set_registry_uri("databricks-uc")` first.)', ""]
    out += ["## Provenance", ""]
    provenance = [
        (
            "Source",
            f"workspace `{_md(card.workspace)}`, model `{_md(card.model_name)}`, version "
            f"{card.source_version}" + (f" ([open]({card.source_url}))" if card.source_url else ""),
        ),
        (
            "Marketplace version",
            f"{card.marketplace_version}"
            + (f" ([open]({card.marketplace_url}))" if card.marketplace_url else ""),
        ),
        ("Run", f"`{_md(f.run_id)}`" if f.run_id else ""),
        ("Logged model", f"`{_md(f.logged_model_id)}`" if f.logged_model_id else ""),
        ("Owner", _md(f.owner)),
        ("Exported", _md(f.exported_at[:19].replace("T", " ")) + " UTC" if f.exported_at else ""),
        ("Imported", _md(card.import_date)),
        ("SHA-256 (manifest)", f"`{card.checksum}`" if card.checksum else ""),
        ("Signed by", card.signer),  # ours: a workspace name (checked) and a hash
    ]
    out += _table(["", ""], [[k, v] for k, v in provenance if v], "facts") + [""]
    if card.history:
        out += ["## Production history", ""]
        entries = sorted(card.history, key=lambda h: h.changed_at, reverse=True)
        out += _table(
            ["when (UTC)", "change", "source version", "marketplace version"],
            [
                [
                    f"{h.changed_at:%Y-%m-%d %H:%M}",
                    h.change,
                    str(h.source_version or "—"),
                    str(h.marketplace_version or "—"),
                ]
                for h in entries
            ],
            "changes",
        ) + [""]
    if f.metrics or f.params:
        out += ["## Metrics and parameters of the source run", ""]
        out += _table(
            ["metric", "value"],
            [[_md(k), f"{v:.6g}"] for k, v in sorted(f.metrics.items())],
            "metrics",
        )
        if f.metrics:
            out.append("")
        params = sorted(f.params.items())
        out += _table(
            ["parameter", "value"],
            [[_md(k), _md(v[:200])] for k, v in params[:_MAIN_PARAMS]],
            "parameters",
        )
        if len(params) > _MAIN_PARAMS:
            out.append(f"\n*{len(params) - _MAIN_PARAMS} more parameters not shown.*")
        out.append("")
    out += ["## Signature and environment", ""]
    for side in ("inputs", "outputs"):
        columns = f.signature.get(side) or []
        out += [f"**{side.capitalize()}:**" + ("" if columns else " not recorded"), ""]
        out += _table(
            ["name", "type", "required"],
            [
                [_md(c["name"]) or "—", _md(c["type"]), "yes" if c["required"] else "no"]
                for c in columns
            ],
            side,
        ) + ([""] if columns else [])
    environment = [
        ("Input example", "yes" if f.has_input_example else "no"),
        ("Flavors", ", ".join(_md(x) for x in f.flavors)),
        ("Python", _md(f.python_version)),
        (
            "Requirements",
            ", ".join(f"`{_md(r)}`" for r in f.requirements[:MAX_ROWS])
            + (
                f" and {len(f.requirements) - MAX_ROWS} more"
                if len(f.requirements) > MAX_ROWS
                else ""
            ),
        ),
        ("Artifact size", _size(f.size_bytes) if f.size_bytes else ""),
    ]
    out += _table(["", ""], [[k, v] for k, v in environment if v], "facts")
    out += ["", "*Kept in sync by the model marketplace.*"]
    return "\n".join(out).strip() + "\n"


def catalog_row(card: ModelCard, *, first_synced_at: dt.datetime, updated_at: dt.datetime) -> dict:
    """The catalog table's row of one marketplace model (JSON columns as text)."""
    f = card.facts
    return {
        "marketplace_name": card.marketplace_name,
        "workspace": card.workspace,
        "model_name": card.model_name,
        "status": card.status,
        "source_version": card.source_version,
        "marketplace_version": card.marketplace_version,
        "alias": card.marker.alias
        if card.status == STATUS_ACTIVE and card.marker.has_aliases
        else None,
        "description": f.model_description or f.version_description,
        "flavors": ", ".join(f.flavors),
        "signature": json.dumps(dict(f.signature), sort_keys=True),
        "metrics": json.dumps(dict(f.metrics), sort_keys=True),
        "requirements": "\n".join(f.requirements),
        "size_bytes": f.size_bytes,
        "checksum": card.checksum,
        "owner": f.owner,
        "source_tags": json.dumps(dict(f.source_tags), sort_keys=True),
        "first_synced_at": first_synced_at,
        "updated_at": updated_at,
        "load_uri": card.load_uri,
        "held": card.held or None,
    }


# Columns that say when, not what: a row whose other columns are unchanged is not updated.
CATALOG_TIMES = ("first_synced_at", "updated_at")


def signer_of(workspace: str, public_key: str | None) -> str:
    """Who signed a workspace's exports: its key, by the SHA-256 of the public key's DER."""
    if not public_key:
        return ""
    from cryptography.hazmat.primitives import serialization

    try:
        der = serialization.load_pem_public_key(public_key.encode()).public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    except ValueError:
        return f"workspace {workspace}'s key"
    return f"workspace {workspace}'s key (SHA-256 {hashlib.sha256(der).hexdigest()[:16]})"


@dataclass(frozen=True)
class CardSettings:
    """What one workspace's cards say of where things are: the source's and the marketplace's
    registries (for links), the seed's marker, and who signs the workspace's exports."""

    workspace: str
    source_uri: str
    source_host: str | None
    signer: str
    marketplace_uri: str
    marketplace_host: str | None
    marker: Marker
    unity_catalog: bool

    @classmethod
    def of(
        cls, marketplace: MarketplaceRegistry, sources: SourceRegistries, workspace: str
    ) -> CardSettings:
        source = sources.get(workspace)
        return cls(
            workspace=workspace,
            source_uri=source.tracking_uri,
            source_host=source.databricks.host if source.databricks else None,
            signer=signer_of(workspace, sources.public_key(workspace)),
            marketplace_uri=marketplace.tracking_uri,
            marketplace_host=marketplace.databricks.host if marketplace.databricks else None,
            marker=marketplace.marker,
            unity_catalog=marketplace.is_unity_catalog,
        )


class Cards:
    """Model cards for one workspace's marketplace models, from their exports (in `storage`), the
    registries and production_history (`history_rows`: the workspace's rows)."""

    def __init__(self, settings: CardSettings, storage: Storage, history_rows: Sequence[Mapping]):
        self.settings, self.storage, self.workspace = settings, storage, settings.workspace
        self.history: dict[str, list[HistoryEntry]] = {}
        for row in sorted(history_rows, key=lambda r: r["sequence"]):
            self.history.setdefault(row["marketplace_name"], []).append(
                HistoryEntry(
                    row["changed_at"],
                    row["change"],
                    row["source_version"],
                    row["marketplace_version"],
                )
            )

    def facts(self, model_name: str, version: int) -> tuple[ExportFacts, str]:
        """The export's facts and its manifest checksum ((empty, "") if it cannot be read)."""
        try:
            return self.export_facts(model_name, version)
        except (ManifestError, StorageError):
            return ExportFacts(), ""

    def export_facts(self, model_name: str, version: int) -> tuple[ExportFacts, str]:
        return export_facts(self.storage, self.workspace, model_name, version)

    def card(
        self,
        model_name: str,
        marketplace_name: str,
        shown,
        status: str,
        since: str,
        extra: HistoryEntry | None = None,
        held: str = "",
    ) -> ModelCard:
        key, version = shown if shown else (None, None)
        facts, checksum = self.facts(model_name, key.version) if key else (ExportFacts(), "")
        tags = (version.tags or {}) if version is not None else {}
        m = self.settings
        return ModelCard(
            marketplace_name=marketplace_name,
            workspace=self.workspace,
            model_name=model_name,
            status=status,
            status_since=since or "",
            source_version=key.version if key else None,
            marketplace_version=int(version.version) if version is not None else None,
            marker=m.marker,
            facts=facts,
            checksum=tags.get(TAG_CHECKSUM, checksum),
            import_date=tags.get(TAG_IMPORT_DATE, ""),
            signer=m.signer if key else "",
            source_url=_web(model_version_url(m.source_uri, model_name, key.version, m.source_host))
            if key
            else "",
            marketplace_url=_web(
                model_version_url(
                    m.marketplace_uri, marketplace_name, version.version, m.marketplace_host
                )
            )
            if version is not None
            else "",
            unity_catalog=m.unity_catalog,
            history=tuple(self.history.get(marketplace_name, [])) + ((extra,) if extra else ()),
            held=held,
        )

    def maker(self, item, shown, change: HistoryEntry | None, held: str = ""):
        """For registration: the card of `item` once the registry shows `status` since `since`."""
        return lambda status, since: render_card(
            self.card(item.model_name, item.marketplace_name, shown, status, since, change, held)
        )


def _web(url: str) -> str:
    return url if url.startswith(("http://", "https://")) else ""
