"""Pickles for the scanning tests: payloads that run when unpickled, hand-written opcodes for
payloads Python would not produce, files and zips to put them in, and models saved as MLflow itself
writes them (which must have no findings)."""

from __future__ import annotations

import io
import os
import shlex
import zipfile
from pathlib import Path

import numpy as np

from harness.seeding import sklearn_requirements

SYSTEM = "Use of unsafe operator 'system' from module 'posix'"
TORCH_MAGIC = 0x1950A86A20F9469CFC6C  # torch.serialization.MAGIC_NUMBER


class ShellPayload:
    """Runs `touch marker` when unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


class BrowserPayload:
    """Opens a URL when unpickled: a HIGH, not CRITICAL, global for modelscan."""

    def __reduce__(self):
        import webbrowser

        return webbrowser.open, ("http://example.invalid/",)


def _raw_pickle(*ops: bytes) -> bytes:
    """A protocol 2 pickle from hand-written opcodes, for payloads Python would not produce."""
    return b"\x80\x02" + b"".join(ops) + b"."


def _global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _text(value: str) -> bytes:
    data = value.encode()
    return b"X" + len(data).to_bytes(4, "little") + data


def _call(arguments: int) -> bytes:
    return {1: b"\x85", 2: b"\x86"}[arguments] + b"R"  # TUPLE1 / TUPLE2, then REDUCE


def _write(folder: Path, name: str, data: bytes) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


# Models as MLflow itself writes them


def _sklearn_model():
    from sklearn.linear_model import LogisticRegression

    features = np.array([[0.0, 1.0], [1.0, 0.0], [2.0, 1.0], [3.0, 0.0]])
    return LogisticRegression().fit(features, np.array([0, 0, 1, 1]))


def _save_skops(path: Path) -> None:
    import mlflow.sklearn

    mlflow.sklearn.save_model(_sklearn_model(), path, pip_requirements=sklearn_requirements())


def _save_cloudpickle(path: Path) -> None:
    import mlflow.sklearn

    mlflow.sklearn.save_model(
        _sklearn_model(),
        path,
        serialization_format="cloudpickle",
        pip_requirements=sklearn_requirements(),
    )


def _save_python_model(path: Path) -> None:
    import mlflow.pyfunc

    # Defined here, not at module level, so cloudpickle pickles it by value, code and all,
    # as it does a class from a notebook.
    class Doubler(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input, params=None):
            return [2 * value for value in model_input]

    mlflow.pyfunc.save_model(path, python_model=Doubler(), pip_requirements=["mlflow"])
