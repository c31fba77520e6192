"""How an asset step reports: counts, a markdown table of what it did, table metadata, and
failures (a failing partition or model does not stop the others; the step fails at the end,
naming each)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

import dagster as dg

from marketplace import summary
from marketplace.errors import MarketplaceError
from marketplace.external import ExternalStorage
from marketplace.registry import model_version_url, redact_text
from marketplace.telemetry import RegistryTime, registry_time
from marketplace_dagster.partitions import split_partition_key


class Report:
    """What one asset did over its run's partitions: one (backfills run a partition each), or a
    range launched by hand, where each partition is done before the step fails naming the others."""

    def __init__(self, context: dg.AssetExecutionContext, what: str, columns: list[str]):
        self.context = context
        self.what = what
        self.columns = columns
        self.counts: dict[str, int] = {}
        self.rows: list[list] = []
        self.failures: dict[str, str] = {}
        self.partitions = [split_partition_key(key) for key in context.partition_keys]
        self.registry = RegistryTime()

    @property
    def several(self) -> bool:
        return len(self.partitions) > 1

    def count(self, name: str, amount: int = 1) -> None:
        self.counts[name] = self.counts.get(name, 0) + int(amount)

    def zero(self, *names: str) -> None:
        for name in names:
            self.count(name, 0)

    def fail(self, where: str, error: str) -> None:
        error = redact_text(error)
        self.context.log.error(f"{where}: {error}")
        self.failures[where] = error

    def run(self, body: Callable[[dt.date, str], None]) -> None:
        with registry_time() as spent:
            for day, workspace in self.partitions:
                try:
                    body(day, workspace)
                except MarketplaceError as exc:
                    self.fail(f"{day.isoformat()}|{workspace}", str(exc))
        self.registry.add(spent)

    def result(self, **extra) -> dg.MaterializeResult:
        metadata = {
            **(
                {"partitions": len(self.partitions)}
                if self.several
                else {"workspace": self.partitions[0][1]}
            ),
            **self.counts,
            **self.registry.metadata(),
            **extra,
        }
        if self.columns:
            metadata[self.what] = markdown_table(["partition", *self.columns], self.rows)
        if self.failures:
            listing = "; ".join(f"{where}: {error}" for where, error in self.failures.items())
            raise dg.Failure(
                description=f"{len(self.failures)} failure(s) in {self.what}: {listing}",
                metadata={**metadata, "failures": dg.MetadataValue.json(self.failures)},
            )
        return dg.MaterializeResult(metadata=metadata)


def markdown_table(header: list[str], rows: list[list]) -> dg.MetadataValue:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    if not rows:
        lines.append("| " + " | ".join(["—"] * len(header)) + " |")
    return dg.MetadataValue.md("\n".join(lines))


def table_metadata(external_storage: ExternalStorage, table: str) -> dict:
    schema = dg.TableSchema(
        columns=[
            dg.TableColumn(
                f.name, str(f.type), constraints=dg.TableColumnConstraints(nullable=f.nullable)
            )
            for f in summary.SCHEMAS[table]
        ]
    )
    return {
        "dagster/row_count": external_storage.row_count(table),
        "table_uri": dg.MetadataValue.path(external_storage.table_uri(table)),
        "dagster/column_schema": schema,
    }


def version_link(registry, name: str, version) -> str:
    """A markdown link to a version's page in its registry's UI (a Databricks one by its host)."""
    host = registry.databricks.host if registry.databricks else None
    return f"[{name}]({model_version_url(registry.tracking_uri, name, version, host)})"


def registration_row(day: dt.date, workspace: str, outcome, production: dict, marketplace) -> list:
    """One row of the registration table: the marketplace model, its version, the change, the
    source."""
    label = f"{workspace}/{outcome.model_name}"
    version = outcome.target.version if outcome.target is not None else None
    return [
        f"{day}|{workspace}",
        version_link(marketplace, outcome.marketplace_name, version)
        if version
        else outcome.marketplace_name,
        version or "—",
        outcome.change.kind if outcome.change else "unchanged",
        f"{label} v{production[outcome.model_name]}"
        if outcome.model_name in production
        else f"{label} (no production version)",
    ]


def scan_policy_note(policy) -> str:
    """How imports scan, as the imports asset shows it."""
    return f"{policy.mode}, blocking at {policy.block_severity} and above" + (
        f", {len(policy.allow_globals)} allowed global(s)" if policy.allow_globals else ""
    )


def sandbox_mode(settings, results: dict) -> str:
    """How the models this check loaded were isolated (none loaded: the sandbox never started)."""
    if all(r.unchanged for r in results.values()):
        return "none loaded"
    if settings.mode == "process":
        return (
            "process: filesystem and network shared with the run (security.sandbox.mode: process)"
        )
    return "namespaces: no network, read-only model, private scratch"


def load_check_result(
    check_name: str,
    results: dict,
    spent: RegistryTime,
    sandbox: str = "",
    quarantined: dict[str, list[str]] | None = None,
) -> dg.AssetCheckResult:
    """The load check's verdict over `loading.verify_loads` results. A model the sandbox blocked
    is quarantined (`quarantined`: label -> what it tried) and does not fail the check: the
    partition's other models go on, as with a scan finding."""
    quarantined = quarantined or {}
    unchanged = sum(1 for r in results.values() if r.unchanged)
    failed = {
        k: r.detail
        for k, r in results.items()
        if k not in quarantined and (not r.loaded or r.matches_export is False)
    }
    unpredicted = {k: r.detail for k, r in results.items() if r.loaded and not r.predicted}
    passing = f"{len(results) - len(quarantined)} model(s) load and predict"
    if quarantined:
        passing += "; quarantined by the sandbox: " + "; ".join(
            f"{k}: {', '.join(v)}" for k, v in quarantined.items()
        )
    return dg.AssetCheckResult(
        check_name=check_name,
        passed=not failed,
        severity=dg.AssetCheckSeverity.ERROR,
        description=("; ".join(failed.values()) if failed else passing),
        metadata={
            "sandbox": sandbox or "none loaded",
            "models_quarantined_by_sandbox": len(quarantined),
            "quarantined_by_sandbox": dg.MetadataValue.json(quarantined),
            "models_checked": len(results),
            "models_loaded": len(results) - unchanged,
            "models_unchanged_since_verified": unchanged,
            "models_failed": len(failed),
            "models_without_input_example": len(unpredicted),
            "details": dg.MetadataValue.json({k: r.detail for k, r in results.items()}),
            **spent.metadata(),
        },
    )


def catalog_table(built, marketplace) -> dg.MetadataValue:
    """The whole marketplace as a table: model (linked to its MLflow page), source, status, version,
    updated."""
    rows = [
        [
            version_link(marketplace, r["marketplace_name"], r["marketplace_version"])
            if r["marketplace_version"]
            else r["marketplace_name"],
            f"{r['workspace']}/{r['model_name']} v{r['source_version'] or '—'}",
            r["status"],
            r["marketplace_version"] or "—",
            f"{r['updated_at']:%Y-%m-%d %H:%M}",
        ]
        for r in built.rows
    ]
    return markdown_table(["model", "source", "status", "version", "updated (UTC)"], rows)
