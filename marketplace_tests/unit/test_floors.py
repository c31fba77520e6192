"""The two floors: the domain package runs without Dagster (as it does inside a Databricks job),
and the export job's entry point needs nothing but the domain and dagster_pipes."""

import ast
import json
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOMAIN = ROOT / "marketplace"
# Kept so that `-m marketplace.definitions` keeps working; it only re-exports the Dagster package's.
ALIAS = "marketplace.definitions"


def _loaded_after(code: str) -> set[str]:
    """The top-level packages a fresh interpreter has imported after running `code`."""
    probe = (
        code
        + "\nimport json, sys\nprint(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return set(json.loads(done.stdout.strip().splitlines()[-1]))


def test_every_domain_module_imports_without_dagster():
    modules = sorted(f"marketplace.{p.stem}" for p in DOMAIN.glob("*.py") if p.stem != "__init__")
    modules = [m for m in modules if m != ALIAS]
    assert len(modules) > 20  # the whole domain, not an empty glob
    loaded = _loaded_after("\n".join(f"import {m}" for m in ["marketplace", *modules]))
    assert "marketplace" in loaded
    assert not {
        name for name in loaded if name.startswith("dagster") and name != "dagster_pipes"
    }, loaded
    assert "marketplace_dagster" not in loaded


def test_no_domain_module_names_dagster_in_its_imports():
    offenders = []
    for path in DOMAIN.glob("*.py"):
        if path.stem == "definitions":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            offenders += [
                f"{path.name}: {n}"
                for n in names
                if n.split(".")[0] in ("dagster", "dagster_databricks", "marketplace_dagster")
            ]
    assert offenders == []


def test_the_export_job_entry_point_imports_only_the_domain_and_dagster_pipes():
    loaded = _loaded_after("import marketplace.pipes_export")
    ours = {name for name in loaded if name.startswith(("marketplace", "dagster", "harness"))}
    assert ours == {"marketplace", "dagster_pipes"}, ours


def test_the_package_without_extras_installs_no_dagster_orchestrator():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    base = [
        d.split(">")[0].split("<")[0].split("=")[0].split("[")[0].strip().lower()
        for d in project["dependencies"]
    ]
    assert "dagster-pipes" in base
    assert not [d for d in base if d.startswith("dagster") and d != "dagster-pipes"], base
    assert {"dagster", "dagster-webserver", "dagster-databricks"} <= {
        d.split(">")[0].split("<")[0].strip() for d in project["optional-dependencies"]["dagster"]
    }


def test_the_import_contracts_hold():
    # pyproject.toml's [tool.importlinter]: no Dagster in the domain, and its layers import only
    # downward.
    done = subprocess.run(
        [str(Path(sys.executable).parent / "lint-imports"), "--no-cache"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "2 kept, 0 broken" in done.stdout, done.stdout[-2000:]
