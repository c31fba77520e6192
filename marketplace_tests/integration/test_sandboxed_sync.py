"""A sync of a workspace whose models carry payloads, end to end against real MLflow servers:
each payload version is loaded only in the sandbox, blocked there, quarantined with what it
tried, and never reaches production; the clean model beside them syncs; nothing on the host
changes and no canary secret leaves the sandbox."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow import MlflowClient
from mlflow.models import Model

from harness.local_servers import free_port
from harness.seeding import register_version
from marketplace.export_records import skip_record_path
from marketplace.production_marker import TAG_QUARANTINED_VERSION
from marketplace.registry import process_tracking_uri
from marketplace_tests.testing.deployments import step_failure_message
from marketplace_tests.testing.driving import ALIAS, STAGE, promote, versions_of, workspace
from marketplace_tests.testing.support import by_value

pytestmark = pytest.mark.servers
BUILDING = (
    "MARKETPLACE_BUILDING_PAYLOAD"  # MLflow predicts while saving: payloads fire only elsewhere
)
CANARY_ENV = "MARKETPLACE_CANARY_SECRET"


class WritesHostFile(mlflow.pyfunc.PythonModel):
    def __init__(self, target: str):
        self.target = target

    def load_context(self, context):
        if os.environ.get(BUILDING) != "1":
            with open(self.target, "w") as out:
                out.write("payload")

    def predict(self, context, model_input, params=None):
        return model_input


class RebuildRunsCode(mlflow.pyfunc.PythonModel):
    """Its unpickling runs a command, naming only cloudpickle's rebuilders (modelscan sees
    nothing)."""

    def __init__(self, target: str):
        self.target = target

    def __setstate__(self, state):
        self.__dict__.update(state)
        if os.environ.get(BUILDING) != "1":
            os.system(f"touch {self.target}")

    def predict(self, context, model_input, params=None):
        return model_input


class LeaksCanaries(mlflow.pyfunc.PythonModel):
    """Returns the run's secret and a file of the host's `.marketplace/` in its predictions."""

    def __init__(self, secret_file: str):
        self.secret_file = secret_file

    def predict(self, context, model_input, params=None):
        found = os.environ.get(CANARY_ENV, "")
        try:
            found += Path(self.secret_file).read_text()
        except OSError:
            pass
        return pd.DataFrame({"leak": [found] * len(model_input)})


def log_payload(uri: str, model: str, python_model, uid: str) -> str:
    """Log and register a pyfunc version (pickled by value, as log_model(python_model=instance)
    writes it) and make it the source's production version."""
    with process_tracking_uri(uri), by_value(type(python_model)):
        mlflow.set_experiment(f"/tests/{model}")
        with mlflow.start_run():
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=python_model,
                registered_model_name=model,
                input_example=pd.DataFrame({"x": [1.0, 2.0]}),
                pip_requirements=["mlflow"],
            )
    promote(uri, model, info.registered_model_version, STAGE)
    return str(info.registered_model_version)


def log_code_payload(uri: str, model: str, target: Path, folder: Path) -> str:
    """A models-from-code version whose code file writes `target` when loaded."""
    code = folder / f"{model}_code.py"
    code.write_text(
        "import os\nimport mlflow\n"
        f"if os.environ.get({BUILDING!r}) != '1':\n"
        f"    open({str(target)!r}, 'w').write('payload')\n"
        "class Echo(mlflow.pyfunc.PythonModel):\n"
        "    def predict(self, context, model_input, params=None):\n"
        "        return model_input\n"
        "mlflow.models.set_model(Echo())\n"
    )
    with process_tracking_uri(uri):
        mlflow.set_experiment(f"/tests/{model}")
        with mlflow.start_run():
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=str(code),
                registered_model_name=model,
                input_example=pd.DataFrame({"x": [1.0]}),
                pip_requirements=["mlflow"],
            )
    promote(uri, model, info.registered_model_version, STAGE)
    return str(info.registered_model_version)


def test_payloads_are_blocked_in_the_sandbox_quarantined_and_named_while_the_clean_model_syncs(
    servers, deploy, uid, tmp_path, monkeypatch
):
    source, market = servers["ws_a"].uri, MlflowClient(servers["marketplace"].uri)
    ws = f"sb{uid}"
    canary = f"canary-{secrets.token_hex(8)}"
    secret_file = tmp_path / ".marketplace" / "canary"
    secret_file.parent.mkdir()
    secret_file.write_text(canary)
    markers = {name: tmp_path / f"{name}-ran" for name in ("host_file", "rebuild", "code")}
    monkeypatch.setenv(BUILDING, "1")
    register_version(source, f"{uid}_clean", stage="Production")
    log_payload(source, f"{uid}_host_file", WritesHostFile(str(markers["host_file"])), uid)
    log_payload(source, f"{uid}_rebuild", RebuildRunsCode(str(markers["rebuild"])), uid)
    log_payload(source, f"{uid}_canary", LeaksCanaries(str(secret_file)), uid)
    log_code_payload(source, f"{uid}_code", markers["code"], tmp_path)
    monkeypatch.delenv(BUILDING)
    monkeypatch.setenv(CANARY_ENV, canary)  # in the run's environment, as a token would be

    deployment = deploy([workspace(ws, source, STAGE, uid)])
    result = deployment.sync(ws)
    assert result.success, step_failure_message(result)

    assert not any(marker.exists() for marker in markers.values()), "a payload ran on the host"
    assert market.get_model_version_by_alias(f"{ws}.{uid}_clean", ALIAS).version == "1"
    assert (
        market.get_model_version_by_alias(f"{ws}.{uid}_canary", ALIAS).version == "1"
    )  # it only read
    (check,) = [
        e
        for e in result.get_asset_check_evaluations()
        if e.check_name == "newest_import_loads_and_predicts"
    ]
    assert check.passed, check.description
    assert check.metadata["sandbox"].value.startswith("namespaces")
    quarantined = check.metadata["quarantined_by_sandbox"].value
    named = {"host_file": "open(", "rebuild": "os.system(", "code": "open("}
    for name, event in named.items():
        mp = f"{ws}.{uid}_{name}"
        assert not market.get_registered_model(mp).aliases, f"{mp} reached production"
        assert market.get_registered_model(mp).tags[TAG_QUARANTINED_VERSION] == "1"
        (version,) = versions_of(market, mp)
        assert version.tags[TAG_QUARANTINED_VERSION] == "1"
        (events,) = [v for k, v in quarantined.items() if k.startswith(mp)]
        assert any(e.startswith(event) and str(markers[name]) in e for e in events), events
        record = json.loads(
            skip_record_path(deployment.config.storage_root, ws, f"{uid}_{name}", 1).read_text()
        )
        assert record["quarantined"] and record["blocked_by"] == "sandbox"
        assert any(f["operator"].startswith(event) for f in record["findings"]), record

    # The canary appears nowhere: logs, metadata, tags, tables, external storage.
    logs = "\n".join(str(e) for e in result.all_events)
    assert canary not in logs
    for mp in (f"{ws}.{uid}_canary", f"{ws}.{uid}_clean"):
        for version in versions_of(market, mp):
            assert canary not in json.dumps(version.tags) and canary not in (
                version.description or ""
            )
    for path in Path(deployment.config.storage_root).rglob("*"):
        if path.is_file():
            assert canary.encode() not in path.read_bytes(), path

    served_like_the_source(servers, f"{uid}_clean", f"{ws}.{uid}_clean", tmp_path)


def served_like_the_source(servers, source_model: str, mp: str, folder: Path) -> None:
    """Consumers are unaffected: `mlflow models serve` of the marketplace's @production answers as
    the source's version predicts (the test's own clean model, loaded here to know the answer)."""
    with process_tracking_uri(servers["ws_a"].uri):
        local = mlflow.artifacts.download_artifacts(
            f"models:/{source_model}/1", dst_path=str(folder / "src")
        )
    example = Model.load(os.path.join(local, "MLmodel")).load_input_example(local)
    expected = mlflow.pyfunc.load_model(local).predict(example)
    port = free_port()
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": servers["marketplace"].uri,  # and uvicorn of this venv on PATH
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    with open(folder / "serve.log", "wb") as log:
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mlflow",
                "models",
                "serve",
                "-m",
                f"models:/{mp}@{ALIAS}",
                "-p",
                str(port),
                "-h",
                "127.0.0.1",
                "--env-manager",
                "local",
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        body = json.dumps({"dataframe_split": example.to_dict(orient="split")}).encode()
        deadline = time.monotonic() + 120
        while True:
            try:
                request = urllib.request.Request(
                    f"http://127.0.0.1:{port}/invocations",
                    data=body,
                    headers={"Content-Type": "application/json"},
                )
                with urllib.request.urlopen(request, timeout=10) as response:
                    answered = json.loads(response.read())["predictions"]
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, (
                    folder / "serve.log"
                ).read_text()
                time.sleep(1)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    assert answered == list(expected.tolist() if hasattr(expected, "tolist") else expected)
