"""Models for the sandbox tests: payloads that try to leave the sandbox (pickled by value with the
`Payload` that carries them, quiet while MLflow runs them on the host to save them), clean models,
and the check that a result was blocked and named."""

from __future__ import annotations

import ctypes
import json
import os
import socket
import subprocess
import time
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from sklearn.linear_model import LinearRegression

from marketplace.sandbox import (
    SandboxResult,
)
from marketplace.sandbox.inside import tasks
from marketplace_tests.testing.support import by_value

MODES = ["namespaces", "process"]
BUILDING = "MARKETPLACE_BUILDING_PAYLOAD"
EXAMPLE = pd.DataFrame({"x": [1.0, 2.0, 3.0]})
SANDBOX_ENV = {"PATH", "HOME", "TMPDIR", "LANG", "LC_ALL", "DO_NOT_TRACK"}
SANDBOX_ROOT = {
    "bin",
    "dev",
    "etc",
    "lib",
    "lib32",
    "lib64",
    "models",
    "proc",
    "sandbox",
    "sbin",
    "scratch",
    "tmp",
    "usr",
}
SET_INSIDE = {
    "PWD",
    "KMP_DUPLICATE_LIB_OK",
    "KMP_INIT_AT_FORK",
}  # bwrap's --chdir; scikit-learn's import


def in_sandbox() -> bool:
    """False while MLflow runs a payload on the host to save it (the sandbox's env is scrubbed)."""
    return os.environ.get(BUILDING) != "1"


class Payload(mlflow.pyfunc.PythonModel):
    """Runs `attack` while loading (`at="load"`) or predicting (`at="predict"`), only in the
    sandbox."""

    def __init__(self, attack, at: str = "load"):
        self.attack, self.at = attack, at

    def load_context(self, context):
        if self.at == "load" and in_sandbox():
            self.attack()

    def predict(self, context, model_input, params=None):
        if self.at == "predict" and in_sandbox():
            return self.attack()
        return model_input


class Doubles(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        return model_input * 2


class RebuildsWithPayload:
    """Unpickling it calls `_rebuild`: code that runs while the model's pickle is read."""

    def __init__(self, target: str):
        self.target = target

    def __reduce__(self):
        return _rebuild, (self.target,)


def _rebuild(target: str):
    if in_sandbox():
        os.system(f"touch {target}")


def write_file(path: str):
    with open(path, "w") as f:
        f.write("escaped")


def spawn(path: str):
    subprocess.run(["touch", path], check=False)


def connect(port: int):
    with socket.socket() as s:
        s.settimeout(2)
        s.connect(("127.0.0.1", port))


def fork_many(attempts: int = 10_000):
    for _ in range(attempts):
        try:
            pid = os.fork()
        except OSError:
            continue
        if pid == 0:  # were one to get through, it would end at once instead of forking on
            os._exit(0)


def libc_system(path: str):
    """os.system's work through ctypes: libc is mapped already, so dlopen by its name is allowed."""
    code = ctypes.CDLL("libc.so.6").system(f"touch {path}".encode())
    raise RuntimeError(f"libc system() returned {code}")


def open_by_dir_fd(folder: str, name: str):
    """The open audit event carries the relative name only, not the folder's descriptor."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    os.close(os.open(name, os.O_WRONLY | os.O_CREAT, dir_fd=fd))


def allocate(size: int):
    return bytearray(size)


def sleep(seconds: float):
    time.sleep(seconds)


def read_canary(name: str, path: str) -> pd.DataFrame:
    try:
        found = Path(path).read_text()
    except OSError:
        found = ""
    return pd.DataFrame({"env": [os.environ.get(name, "")], "file": [found]})


def report_view(folders: list[str]):
    """Raises what it sees: the error text is the one thing of a failed load that reaches the
    host."""
    seen = {
        "folders": {f: sorted(os.listdir(f)) if os.path.isdir(f) else None for f in folders},
        "passwd": Path("/etc/passwd").read_text(),
        "environ": dict(os.environ),
    }
    raise RuntimeError(json.dumps(seen))


def save_payload(folder: Path, model: mlflow.pyfunc.PythonModel) -> Path:
    """Save `model` by value, its payload quiet while MLflow runs it on the host to save it."""
    with pytest.MonkeyPatch.context() as env, by_value(Payload):
        env.setenv(BUILDING, "1")
        mlflow.pyfunc.save_model(
            folder, python_model=model, input_example=EXAMPLE, pip_requirements=["mlflow"]
        )
    return folder


def save_regression(folder: Path, slope: float) -> Path:
    fitted = LinearRegression().fit(EXAMPLE, EXAMPLE["x"] * slope + 1.0)
    mlflow.sklearn.save_model(
        fitted, str(folder), input_example=EXAMPLE, pip_requirements=["scikit-learn"]
    )
    return folder


ECHO = """
class Echo(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        return model_input

mlflow.models.set_model(Echo())
"""


def save_from_code(folder: Path, code: str) -> Path:
    """A models-from-code model: loading it runs its own file, `code` then an echo model."""
    source = folder.with_suffix(".py")
    source.write_text(f"import os\nimport mlflow\n{code}\n{ECHO}")
    with pytest.MonkeyPatch.context() as env:
        env.setenv(BUILDING, "1")
        mlflow.pyfunc.save_model(
            folder, python_model=str(source), input_example=EXAMPLE, pip_requirements=["mlflow"]
        )
    return folder


def digest_on_host(folder: Path) -> str:
    return tasks.digest(mlflow.pyfunc.load_model(str(folder)).predict(EXAMPLE))


def assert_blocked(result: SandboxResult, event: str, *named: str) -> None:
    """Denied, and the record names `event` with `named` in its arguments."""
    assert result.blocked and result.status == "denied", result
    assert any(d.startswith(event + "(") and all(t in d for t in named) for d in result.denied), (
        result.denied
    )
