"""The deployable shape, checked from its files: the Helm values use only keys of Dagster's chart,
the Dockerfile installs with deploy/image/install.sh and runs as a non-root user, every secret the
configuration names is documented, and the files agree on paths and ports. Nothing is built,
installed or started here: docs/deploy.md says what was only written."""

from __future__ import annotations

import copy
import functools
import json
import os
import shlex
import tomllib
import typing
from pathlib import Path

import jsonschema
import pytest
import yaml
from pydantic import BaseModel

from marketplace.config import MarketplaceConfig
from marketplace.config.operations import WebhooksConfig
from marketplace_dagster.partitions import WORKSPACE_TAG
from marketplace_dagster.run_queue import WorkspaceRunCoordinator

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
INSTALL = ROOT / "deploy" / "image" / "install.sh"
WORKSPACE = ROOT / "deploy" / "workspace.yaml"
VALUES = ROOT / "deploy" / "helm" / "values.yaml"
CHART_SCHEMA = ROOT / "deploy" / "helm" / "chart-schema" / "values.schema.json"
DOCS = ROOT / "docs" / "deploy.md"

DEFINITIONS = "marketplace_dagster.definitions"
SECRET = "marketplace-secrets"
QUEUE = ("dagsterDaemon", "runCoordinator", "config", "customRunCoordinator")
# The run tag the queue limits (marketplace_dagster/partitions.py); the coordinator puts it on a
# backfill's runs, which carry only Dagster's partition-range tags.
WORKSPACE_TAGS = (WORKSPACE_TAG,)
# What the chart's templates/configmap-instance.yaml reads of dagsterDaemon.runMonitoring (its
# schema leaves the section free-form, so a misspelt key there would be dropped silently).
RUN_MONITORING_KEYS = {
    "enabled",
    "startTimeoutSeconds",
    "cancelTimeoutSeconds",
    "maxResumeRunAttempts",
    "pollIntervalSeconds",
    "freeSlotsAfterRunEndSeconds",
}


# --- the Helm values against the chart's schema ---------------------------------------------------


@functools.cache
def _schema() -> dict:
    return json.loads(CHART_SCHEMA.read_text())


def _values() -> dict:
    return yaml.safe_load(VALUES.read_text())


def _schema_errors(values: dict) -> list[str]:
    """The schema's complaints, each the most specific one under a failed `anyOf`."""
    validator = jsonschema.Draft202012Validator(_schema())
    found = []
    for error in validator.iter_errors(values):
        best = jsonschema.exceptions.best_match([error])
        found.append(f"{_dotted(best.absolute_path)}: {best.message}")
    return found


def _dotted(path) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")


def _branches(node: dict) -> list[dict]:
    """The schemas a value may match: local `$ref`s followed, `anyOf` flattened."""
    while "$ref" in node:
        node = _schema()["$defs"][node["$ref"].removeprefix("#/$defs/")]
    if "anyOf" in node:
        return [branch for option in node["anyOf"] for branch in _branches(option)]
    return [node]


def _undeclared(value, node: dict, path: str = "") -> list[str]:
    """Every mapping key of `value` that the schema does not declare at its path. Stricter than
    the chart's schema, which leaves some objects open (a user deployment, an image): a misspelt
    key there would be ignored by Helm instead of refused."""
    kind = "object" if isinstance(value, dict) else "array" if isinstance(value, list) else None
    if kind is None:
        return []
    matching = [b for b in _branches(node) if b.get("type", kind) == kind]
    if not matching:
        return []  # a wrong type: the schema validation reports it
    branch = matching[0]
    if branch.get("x-not-restated"):
        return [f"{path}: a section not restated in {CHART_SCHEMA.relative_to(ROOT)}"]
    if kind == "array":
        items = branch.get("items", {})
        return [m for i, v in enumerate(value) for m in _undeclared(v, items, f"{path}[{i}]")]
    declared = branch.get("properties")
    if not declared:
        return []  # free-form in the chart: a Kubernetes object, a map of labels or variables
    found = []
    for key, item in value.items():
        where = f"{path}.{key}" if path else key
        if key in declared:
            found += _undeclared(item, declared[key], where)
        else:
            found.append(f"{where}: not a key of the chart")
    return found


def _misspell(values: dict, path: tuple, wrong: str) -> dict:
    changed = copy.deepcopy(values)
    parent = changed
    for step in path[:-1]:
        parent = parent[step]
    parent[wrong] = parent.pop(path[-1])
    return changed


def test_the_values_file_is_valid_under_the_chart_schema():
    assert _schema_errors(_values()) == []


def test_every_key_of_the_values_file_is_declared_by_the_chart():
    values = _values()
    assert {"dagster-user-deployments", "runLauncher", "dagsterDaemon"} <= values.keys()
    assert _undeclared(values, _schema()) == []


def test_the_chart_schema_refuses_a_misspelt_launcher_key():
    launcher = ("runLauncher", "config", "k8sRunLauncher", "envSecrets")
    errors = _schema_errors(_misspell(_values(), launcher, "envSecret"))
    assert errors, "the schema accepted runLauncher.config.k8sRunLauncher.envSecret"
    assert any("'envSecret' was unexpected" in e for e in errors), errors


@pytest.mark.parametrize(
    "path, wrong",
    [
        (("runLauncher", "config", "k8sRunLauncher", "envSecrets"), "envSecret"),
        # The chart's schema leaves a user deployment open: only the key walk refuses these.
        (("dagster-user-deployments", "deployments", 0, "envSecrets"), "envSecret"),
        (("dagster-user-deployments", "deployments", 0, "dagsterApiGrpcArgs"), "dagsterGrpcArgs"),
        (("postgresql", "postgresqlHost"), "postgresHost"),
        ((*QUEUE, "class"), "klass"),
    ],
)
def test_the_key_check_names_a_misspelt_key(path, wrong):
    found = _undeclared(_misspell(_values(), path, wrong), _schema())
    expected = _dotted((*path[:-1], wrong))
    assert f"{expected}: not a key of the chart" in found, found


def test_a_section_not_restated_from_the_chart_is_refused():
    values = {**_values(), "ingress": {"enabled": True}}
    assert _undeclared(values, _schema()) == [
        f"ingress: a section not restated in {CHART_SCHEMA.relative_to(ROOT)}"
    ]


def test_the_run_monitoring_keys_are_ones_the_chart_reads():
    monitoring = _values()["dagsterDaemon"]["runMonitoring"]
    assert monitoring["enabled"] is True
    assert set(monitoring) <= RUN_MONITORING_KEYS, set(monitoring) - RUN_MONITORING_KEYS


# --- what the values say --------------------------------------------------------------------------


def _deployment(values: dict) -> dict:
    (deployment,) = values["dagster-user-deployments"]["deployments"]
    return deployment


def test_the_queue_runs_one_run_per_workspace():
    daemon = _values()["dagsterDaemon"]
    coordinator = daemon["runCoordinator"]
    assert coordinator["enabled"] and coordinator["type"] == "CustomRunCoordinator"
    custom = coordinator["config"]["customRunCoordinator"]
    assert (custom["module"], custom["class"]) == (
        WorkspaceRunCoordinator.__module__,
        WorkspaceRunCoordinator.__name__,
    )
    queue = custom["config"]
    # The config is the queued coordinator's own, in its own (snake_case) keys.
    WorkspaceRunCoordinator.from_config_value(None, queue)
    limits = {limit["key"]: limit for limit in queue["tag_concurrency_limits"]}
    for tag in WORKSPACE_TAGS:
        assert tag in limits, f"no tag_concurrency_limits entry for {tag}"
        assert limits[tag]["limit"] == 1, tag
        assert limits[tag]["value"] == {"applyLimitPerUniqueValue": True}, tag
    assert queue["max_concurrent_runs"] >= 1
    assert queue["dequeue_interval_seconds"] <= 5
    assert daemon["runRetries"]["enabled"] is True


def test_runs_are_kubernetes_jobs_on_an_external_postgresql_without_telemetry():
    values = _values()
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    assert values["postgresql"]["enabled"] is False
    assert values["postgresql"]["postgresqlHost"]
    # The password is the existing Secret's, never written in the values file.
    assert values["generatePostgresqlPasswordSecret"] is False
    assert values["global"]["postgresqlSecretName"]
    assert "postgresqlPassword" not in values["postgresql"]
    assert values["telemetry"] == {"enabled": False}


def test_the_marketplace_secret_reaches_the_code_server_and_every_run():
    values = _values()
    deployment = _deployment(values)
    launcher = values["runLauncher"]["config"]["k8sRunLauncher"]
    assert {"name": SECRET} in deployment["envSecrets"]
    assert {"name": SECRET} in launcher["envSecrets"]
    assert deployment["includeConfigInLaunchedRuns"] == {"enabled": True}


def test_the_code_server_runs_the_definitions_with_the_mounted_configuration():
    deployment = _deployment(_values())
    env = _dockerfile_env()
    assert deployment["dagsterApiGrpcArgs"] == ["-m", DEFINITIONS]
    assert deployment["port"] == _grpc_port()
    assert deployment["env"]["MARKETPLACE_CONFIG"] == env["MARKETPLACE_CONFIG"]
    path = env["MARKETPLACE_CONFIG"]
    mounts = [m for m in deployment["volumeMounts"] if m["mountPath"] == path]
    assert len(mounts) == 1, f"no single volume mounted at {path}"
    mount = mounts[0]
    (volume,) = [v for v in deployment["volumes"] if v["name"] == mount["name"]]
    assert volume["configMap"]["name"]
    assert mount.get("readOnly") is True


def test_every_process_runs_the_marketplace_image():
    values = _values()
    image = _deployment(values)["image"]
    assert image["repository"] and image["tag"]
    assert values["dagsterWebserver"]["image"] == image
    assert values["dagsterDaemon"]["image"] == image


# --- the secrets the configuration names ----------------------------------------------------------


def _models_in(annotation, suffix: str = "") -> list[tuple[type[BaseModel], str]]:
    """The pydantic models a field's annotation holds, with `[]` for each list around them."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [(annotation, suffix)]
    if typing.get_origin(annotation) in (list, tuple, set, frozenset):
        suffix += "[]"
    return [found for arg in typing.get_args(annotation) for found in _models_in(arg, suffix)]


def _env_settings(model: type[BaseModel], path: str = "", seen: frozenset = frozenset()):
    """The dotted path of every setting named `*_env` (an environment variable's name)."""
    found = []
    for name, field in model.model_fields.items():
        where = f"{path}.{name}" if path else name
        if name.endswith("_env"):
            found.append(where)
        for inner, suffix in _models_in(field.annotation):
            if inner not in seen:
                found += _env_settings(inner, where + suffix, seen | {model})
    return found


def test_every_env_setting_of_the_configuration_is_documented():
    settings = _env_settings(MarketplaceConfig)
    # The walk reaches the nested sections, not only the top level.
    assert "workspaces[].databricks.secret_env" in settings
    assert "external_storage.s3.secret_access_key_env" in settings
    docs = DOCS.read_text()
    missing = [s for s in settings if f"`{s}`" not in docs]
    assert missing == [], f"{DOCS.relative_to(ROOT)} does not list {missing}"
    assert SECRET in docs


# --- the Dockerfile and the install script --------------------------------------------------------


@functools.cache
def _instructions() -> tuple[tuple[str, str], ...]:
    """(INSTRUCTION, arguments), continuation lines joined and comments dropped."""
    found, current = [], ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        name, _, arguments = (current + line).partition(" ")
        found.append((name.upper(), arguments.strip()))
        current = ""
    return tuple(found)


def _all(name: str) -> list[str]:
    return [arguments for instruction, arguments in _instructions() if instruction == name]


def _dockerfile_env() -> dict[str, str]:
    return dict(word.split("=", 1) for arguments in _all("ENV") for word in shlex.split(arguments))


def _cmd() -> list[str]:
    return json.loads(_all("CMD")[-1])


def _grpc_port() -> int:
    cmd = _cmd()
    return int(cmd[cmd.index("-p") + 1])


def test_the_image_is_python_3_11_slim():
    assert _all("FROM") == ["python:3.11-slim"]


def test_the_image_installs_with_the_install_script():
    runs = [(i, arguments) for i, (name, arguments) in enumerate(_instructions()) if name == "RUN"]
    installs = [i for i, arguments in runs if "deploy/image/install.sh" in arguments]
    assert installs, "no RUN of deploy/image/install.sh"
    copied = [
        i
        for i, (name, arguments) in enumerate(_instructions())
        if name == "COPY" and "deploy/image/install.sh" in arguments
    ]
    assert copied and copied[0] < installs[0]


def test_the_image_runs_as_a_non_root_user():
    users = _all("USER")
    assert users, "no USER: the image would run as root"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")
    # Numeric, so that Kubernetes' runAsNonRoot can verify it.
    assert user.isdigit()


def test_the_image_carries_the_instance_and_the_workspace():
    env = _dockerfile_env()
    assert env["DAGSTER_HOME"] == "/opt/dagster/dagster_home"
    copies = [shlex.split(arguments) for arguments in _all("COPY")]
    assert ["deploy/dagster.yaml", f"{env['DAGSTER_HOME']}/dagster.yaml"] in copies
    assert ["deploy/workspace.yaml", "/opt/dagster/app/workspace.yaml"] in copies
    for *sources, _ in copies:
        for source in sources:
            assert (ROOT / source).exists(), f"COPY {source}: no such file"


def test_the_image_serves_the_definitions_and_exposes_each_process_port():
    assert _cmd()[:5] == ["dagster", "api", "grpc", "-m", DEFINITIONS]
    exposed = {int(port) for arguments in _all("EXPOSE") for port in arguments.split()}
    # The webserver, the code server and the webhook receiver's default port.
    assert exposed == {3000, _grpc_port(), WebhooksConfig().port}
    assert _dockerfile_env()["MARKETPLACE_CONFIG"] == "/opt/dagster/app/marketplace.yaml"


def test_the_build_context_leaves_out_local_state():
    ignored = set(DOCKERIGNORE.read_text().split())
    assert {".git", ".venv", ".marketplace", "node_modules", "**/__pycache__"} <= ignored


def test_the_install_script_makes_a_fresh_venv_and_checks_it():
    script = INSTALL.read_text()
    assert os.access(INSTALL, os.X_OK)
    assert script.startswith("#!/usr/bin/env bash\n")
    assert "\nset -euo pipefail\n" in script
    assert '-m venv "$VENV"' in script
    assert 'pip install --quiet "$SRC[dagster,deploy]"' in script
    installs = [line for line in script.splitlines() if "pip install" in line]
    assert not [line for line in installs if " -e " in line or "--editable" in line]
    assert "compileall" in script
    assert "import marketplace, marketplace_dagster, dagster_k8s, dagster_postgres" in script
    assert '"$VENV/bin/dagster" --version' in script


def test_the_extras_the_install_asks_for_hold_what_it_imports():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    installed = " ".join(extras.get("dagster", []) + extras.get("deploy", []))
    assert "deploy" in extras, "pyproject.toml has no `deploy` extra (dagster-k8s)"
    assert "dagster-k8s" in installed and "dagster-postgres" in installed


# --- the workspace file ---------------------------------------------------------------------------


def test_the_workspace_loads_the_definitions_as_the_marketplace_location():
    (entry,) = yaml.safe_load(WORKSPACE.read_text())["load_from"]
    location = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["dagster"]
    assert entry["python_module"]["module_name"] == DEFINITIONS == location["module_name"]
    assert entry["python_module"]["location_name"] == location["code_location_name"]


def test_the_deploy_docs_have_their_sections():
    headings = [line for line in DOCS.read_text().splitlines() if line.startswith("#")]
    assert headings[0] == "# Deploying the marketplace"
    for heading in (
        "## The Dagster instance",
        "## The image",
        "## Helm (Dagster's official chart)",
        "## What was run here and what was only written",
    ):
        assert heading in headings, heading
