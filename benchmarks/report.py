"""The benchmark report: results.json, the plots, and BENCHMARKS.md filled from the results
into its template (benchmarks/report.md, a `string.Template`)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from string import Template

from benchmarks.environment import ROOT
from benchmarks.propagation import table as propagation_table
from benchmarks.sampling import BusySampler

TEMPLATES = Path(__file__).resolve().parent
NOT_MEASURED = "(not measured)"


def report(results: dict, out: Path, markdown: Path) -> None:
    """Write `results` to out/results.json, the plots beside it, and the report to `markdown`."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    plots = {
        name: os.path.relpath(path, markdown.parent) for name, path in _plots(results, out).items()
    }
    markdown.write_text(render(results, plots))


def render(results: dict, plots: dict[str, str]) -> str:
    """BENCHMARKS.md's text: the template filled from `results`, with the plots' paths."""
    machine, sizes = results["machine"], results["sizes"]
    big = [results[k] for k in ("large_artifact", "large_model") if results.get(k)]
    return _fill(
        "report.md",
        command=results["command"],
        generated_at=results["generated_at"],
        cores=machine["cores"],
        platform=machine["platform"],
        python=machine["python"],
        targets=_table(results["targets"]),
        repeat_at=sizes["repeat_at"],
        repeats=sizes["repeats"],
        sync_ratio=results["sync_ratio"],
        sync_ratio_sqlite=results["sync_ratio_sqlite"],
        sync_vs_bare_postgres=_table(results["sync_vs_bare_postgres"]),
        schedule_queue=_table(_one(results, "schedule_queue")),
        saturated=BusySampler.SATURATED,
        warm_at=results["sync_vs_bare"][0]["models_per_workspace"],
        sync_vs_bare=_table(results["sync_vs_bare"]),
        sync_time_plot=plots["sync_time"],
        scaling_models_plot=plots["scaling_models"],
        workspaces_note=results["notes"]["workspaces"],
        workspaces=_table(results["workspaces"]),
        scaling_workspaces_plot=plots["scaling_workspaces"],
        sensor_tick=_table(results["sensor_tick"]),
        large_models=_table(big),
        backfill=_table(_one(results, "backfill")),
        catalog_models=results["catalog"]["models"],
        catalog_workspaces=results["catalog"]["workspaces"],
        catalog=_table(_one(results, "catalog")),
        gate_rows=results["gate"]["reference_rows"],
        gate=_table(_one(results, "gate")),
        sandbox=_table(results.get("sandbox") or []),
        propagation=_propagation(results["propagation"])
        if results.get("propagation")
        else NOT_MEASURED,
        profiles=_profiles(ROOT / "benchmarks" / "profiles"),
    )


def _fill(template: str, **fields) -> str:
    return Template((TEMPLATES / template).read_text()).substitute(fields)


def _one(results: dict, key: str) -> list[dict]:
    return [results[key]] if results.get(key) else []


def _table(rows: list[dict]) -> str:
    if not rows:
        return NOT_MEASURED
    # A column no row has a value for (the pool's at every other size) is left out.
    head = [h for h in rows[0] if any(r.get(h) not in ("", None) for r in rows)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(r.get(h, "")) for h in head) + " |" for r in rows]
    return "\n".join(lines)


def _propagation(found: dict) -> str:
    return _fill(
        "report_propagation.md",
        poll_interval=found["poll_interval_seconds"],
        changes=found["alias_webhooks"]["changes"],
        alias_offset_max=found["alias_webhooks"]["start_offset_max_seconds"],
        stage_offset_max=found["stage_polling"]["start_offset_max_seconds"],
        table=_table(propagation_table(found)),
        poll_requests=found["poll_requests"],
        poll_workspaces=found["poll_load_workspaces"],
        poll_rate=found["poll_requests_per_second_per_workspace"],
    ).rstrip("\n")


def _profiles(folder: Path) -> str:
    """The profiles in benchmarks/profiles/ (benchmarks.profile_sync), side by side."""
    found = {p.stem: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))}
    if not found:
        return "(no profile recorded: `python -m benchmarks.profile_sync 20 --save NAME`)"
    names = list(found)
    lines = ["| per model | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    lines.append(
        "| wall seconds (in process, one workspace) | "
        + " | ".join(str(found[n]["seconds_per_model"]) for n in names)
        + " |"
    )
    lines.append(
        "| registry requests | "
        + " | ".join(str(found[n]["requests_per_model"]) for n in names)
        + " |"
    )
    callers = sorted(
        {c for n in names for c in found[n].get("requests_per_model_by_caller", {})},
        # The most requests first; ties by name, so that the same profiles give the same table.
        key=lambda c: (
            -max(found[n].get("requests_per_model_by_caller", {}).get(c, 0) for n in names),
            c,
        ),
    )
    for caller in callers[:20]:
        lines.append(
            f"| `{caller}` | "
            + " | ".join(
                str(found[n].get("requests_per_model_by_caller", {}).get(caller, 0)) for n in names
            )
            + " |"
        )
    notes = [f"- **{n}**: {found[n]['note']}" for n in names if found[n].get("note")]
    return "\n\n".join(["\n".join(lines), *(["\n".join(notes)] if notes else [])])


def _plots(results: dict, out: Path) -> dict[str, Path]:
    """sync_time.png (the same work two ways), scaling_models.png and scaling_workspaces.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def plot(
        name: str,
        series: list[tuple[list, list, str, str]],
        xlabel: str,
        ylabel: str,
        title: str,
    ) -> Path:
        """Each series as (x, y, style, label)."""
        fig, axis = plt.subplots(figsize=(6, 4))
        for x, y, style, label in series:
            axis.plot(x, y, style, label=label)
        axis.set(xlabel=xlabel, ylabel=ylabel, title=title)
        axis.legend()
        fig.tight_layout()
        fig.savefig(out / f"{name}.png", dpi=100)
        plt.close(fig)
        return out / f"{name}.png"

    rows, spread = results["sync_vs_bare"], results["workspaces"]
    postgres = results["sync_vs_bare_postgres"]
    sizes = [r["models_per_workspace"] for r in rows]
    versions = [r["versions"] for r in rows]
    counts = [r["workspaces"] for r in spread]
    return {
        "sync_time": plot(
            "sync_time",
            [
                (versions, [r["bare_seconds"] for r in rows], "o-", "bare, SQLite registry"),
                (versions, [r["marketplace_seconds"] for r in rows], "s-", "marketplace, SQLite"),
                (
                    [r["versions"] for r in postgres],
                    [r["bare_seconds"] for r in postgres],
                    "o--",
                    "bare, PostgreSQL registry",
                ),
                (
                    [r["versions"] for r in postgres],
                    [r["marketplace_seconds"] for r in postgres],
                    "s--",
                    "marketplace, PostgreSQL",
                ),
            ],
            "model versions synced (3 workspaces)",
            "seconds",
            "Sync, fresh marketplace",
        ),
        "scaling_models": plot(
            "scaling_models",
            [
                (sizes, [r["seconds_per_version"] for r in rows], "s-", "sync, wall s per version"),
                (
                    sizes,
                    [r["step_seconds_per_version"] for r in rows],
                    "^-",
                    "sync, step s per version",
                ),
                (
                    sizes,
                    [r["cpu_seconds_per_version"] for r in rows],
                    "d-",
                    "sync, CPU s per version",
                ),
                (
                    sizes,
                    [r["idle_seconds"] / r["versions"] for r in rows],
                    "o-",
                    "idle cycle, wall s per version",
                ),
            ],
            "models per workspace (3 workspaces, SQLite registry)",
            "seconds per version",
            "Cost per model",
        ),
        "scaling_workspaces": plot(
            "scaling_workspaces",
            [
                (counts, [r["sync_seconds"] for r in spread], "s-", "sync (wall)"),
                (counts, [r["idle_seconds"] for r in spread], "o-", "idle cycle (wall)"),
                (counts, [r["tick_seconds"] for r in results["sensor_tick"]], "^-", "sensor tick"),
            ],
            "workspaces",
            "seconds",
            "Cost per workspace (2 runs at a time)",
        ),
    }
