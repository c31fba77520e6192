"""Pickle scanning: what modelscan flags before anything is unpickled, what it misses, policy."""

from __future__ import annotations

import io
import os
import pickle
import shlex
import subprocess
import sys
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cloudpickle
import joblib
import numpy as np
import pytest

from marketplace.scanning import (
    SCAN_MODES,
    SEVERITIES,
    UNSCANNABLE,
    Finding,
    ScanPolicy,
    ScanReport,
    scan_folder,
)
from marketplace_tests.testing.seeding import sklearn_requirements

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


@pytest.fixture
def folder(tmp_path) -> Path:
    path = tmp_path / "model"
    path.mkdir()
    return path


@pytest.fixture
def marker(tmp_path) -> Path:
    return tmp_path / "payload-ran"


# The malicious pickle


def test_os_system_pickle_is_critical_and_scanning_never_runs_it(folder, marker, capfd):
    _write(folder, "model.pkl", pickle.dumps(ShellPayload(marker)))

    report = scan_folder(folder)

    assert not marker.exists()
    assert capfd.readouterr().out == ""  # the API, not the CLI's console report
    assert report.findings == (Finding("model.pkl", "posix.system", "critical", SYSTEM),)
    assert report.files_scanned == 1
    assert report.blocking(ScanPolicy()) == report.findings
    assert report.allowed(ScanPolicy()) == ()
    for mode in ("warn", "off"):
        assert report.blocking(ScanPolicy(mode=mode)) == ()
    allow = ScanPolicy(allow_globals=("posix.system",))
    assert report.blocking(allow) == ()
    assert report.allowed(allow) == report.findings
    assert report.describe() == "model.pkl: posix.system (critical)"


def test_findings_are_relative_to_the_folder_at_any_depth(folder, marker):
    _write(folder, "artifacts/deep/er/model.pickle", pickle.dumps(ShellPayload(marker)))

    assert [f.file for f in scan_folder(folder).findings] == ["artifacts/deep/er/model.pickle"]


def test_severity_threshold(folder):
    _write(folder, "model.pkl", pickle.dumps(BrowserPayload()))

    report = scan_folder(folder)

    assert [(f.operator, f.severity) for f in report.findings] == [("webbrowser.open", "high")]
    assert report.blocking(ScanPolicy(block_severity="critical")) == ()
    assert report.blocking(ScanPolicy(block_severity="high")) == report.findings
    assert report.blocking(ScanPolicy(block_severity="low")) == report.findings


def test_builtins_getattr_indirection_is_flagged(folder):
    # getattr(os, "system"): the classic way around a list of banned callables.
    payload = _raw_pickle(
        _global("builtins", "getattr"), _global("os", "getcwd"), _text("x"), _call(2)
    )
    _write(folder, "model.pkl", payload)

    report = scan_folder(folder)

    assert {(f.operator, f.severity) for f in report.findings} == {
        ("builtins.getattr", "critical"),
        ("os.getcwd", "critical"),
    }


# False positives: what MLflow itself writes


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


MLFLOW_MODELS = {
    "sklearn-skops": (_save_skops, "model.skops"),
    "sklearn-cloudpickle": (_save_cloudpickle, "model.pkl"),
    "pyfunc-python-model": (_save_python_model, "python_model.pkl"),
}


@pytest.mark.parametrize("kind", list(MLFLOW_MODELS))
def test_mlflow_models_have_no_findings(tmp_path, kind):
    save, model_file = MLFLOW_MODELS[kind]
    path = tmp_path / kind
    save(path)
    assert (path / model_file).is_file()

    report = scan_folder(path)

    assert report.findings == (), report.describe()
    if model_file.endswith(".skops"):
        # Every array was read, so the numpy shim works: without it each is unscannable.
        with zipfile.ZipFile(path / model_file) as archive:
            arrays = [name for name in archive.namelist() if name.endswith(".npy")]
        assert arrays and report.files_scanned == len(arrays)
    else:
        assert report.files_scanned == 1


def test_python_model_pickle_rebuilds_code_that_modelscan_accepts(tmp_path):
    _save_python_model(tmp_path / "pyfunc")
    data = (tmp_path / "pyfunc" / "python_model.pkl").read_bytes()

    assert b"_make_skeleton_class" in data and b"_make_function" in data
    assert scan_folder(tmp_path / "pyfunc").findings == ()


# Files modelscan cannot parse


def test_unparseable_pickle_is_an_unscannable_high_finding(folder):
    _write(folder, "x.pkl", b"\x1e\x00 this is no pickle at all")

    report = scan_folder(folder)

    assert [(f.file, f.operator, f.severity) for f in report.findings] == [
        ("x.pkl", UNSCANNABLE, "high")
    ]
    assert "Parsing error" in report.findings[0].description
    assert report.files_scanned == 0
    assert report.blocking(ScanPolicy()) == report.findings
    assert report.blocking(ScanPolicy(block_severity="critical")) == ()


def test_payload_followed_by_garbage_is_not_passed_as_clean(folder, marker):
    # pickle.load would run the REDUCE before reaching the bytes the parser rejects.
    payload = pickle.dumps(ShellPayload(marker), protocol=2)
    _write(folder, "model.pkl", payload[:-1] + b"\xff\xff")

    assert [f.operator for f in scan_folder(folder).findings] == [UNSCANNABLE]


def test_unscannable_cannot_be_allowlisted():
    with pytest.raises(ValueError, match="module.name"):
        ScanPolicy(allow_globals=(UNSCANNABLE,))


def test_nested_and_broken_zips_are_unscannable(folder, marker):
    inner = _zip({"archive/data.pkl": pickle.dumps(ShellPayload(marker))})
    _write(folder, "bundle.zip", _zip({"inner.pt": inner}))
    _write(folder, "broken.zip", b"PK\x03\x04" + b"\x00" * 40)

    report = scan_folder(folder)

    assert {(f.file, f.operator) for f in report.findings} == {
        ("bundle.zip:inner.pt", UNSCANNABLE),
        ("broken.zip", UNSCANNABLE),
    }


# Other pickle containers


def test_joblib_file(folder, marker):
    joblib.dump({"weights": [0.5, 1.5], "hook": ShellPayload(marker)}, folder / "model.joblib")

    report = scan_folder(folder)

    assert [(f.file, f.operator, f.severity) for f in report.findings] == [
        ("model.joblib", "posix.system", "critical")
    ]
    assert not marker.exists()


@pytest.mark.parametrize("compress", [0, 3])
def test_joblib_file_with_arrays_is_unscannable(folder, compress):
    # A false positive: joblib writes numpy buffers raw inside the pickle stream (or zlib-compresses
    # the whole file), which modelscan's opcode parser cannot read, harmless or not.
    joblib.dump(_sklearn_model(), folder / "model.joblib", compress=compress)

    assert [f.operator for f in scan_folder(folder).findings] == [UNSCANNABLE]


def test_pytorch_zip_member_is_scanned(folder, marker):
    members = {
        "archive/data.pkl": pickle.dumps(ShellPayload(marker)),
        "archive/version": b"3\n",
        "archive/data/0": b"\x80\x04 raw tensor bytes, never unpickled",
    }
    _write(folder, "model.pt", _zip(members))

    report = scan_folder(folder)

    assert [(f.file, f.operator, f.severity) for f in report.findings] == [
        ("model.pt:archive/data.pkl", "posix.system", "critical")
    ]
    assert report.files_scanned == 1


def test_legacy_pytorch_file_is_scanned_past_its_first_pickle(folder, marker):
    # torch.save's legacy format: magic number, protocol, system info, then the object. modelscan
    # alone reads only the magic number's pickle.
    header = b"".join(pickle.dumps(v, protocol=2) for v in (TORCH_MAGIC, 1001, {"little": True}))
    _write(folder, "model.pt", header + pickle.dumps(ShellPayload(marker), protocol=2))

    assert [(f.file, f.operator) for f in scan_folder(folder).findings] == [
        ("model.pt", "posix.system")
    ]


@pytest.mark.parametrize("name", ["model.bin", "model.weights", "model", "MODEL.PKL"])
def test_pickle_under_a_name_modelscan_skips_is_scanned(folder, marker, name):
    # MLmodel names the file to unpickle, so an extension proves nothing.
    _write(folder, name, pickle.dumps(ShellPayload(marker)))

    assert [(f.file, f.operator) for f in scan_folder(folder).findings] == [(name, "posix.system")]


def test_protocol_0_pickle_under_an_unknown_name_is_not_scanned(folder, marker):
    # A known gap: without a PROTO header nothing marks the file as a pickle.
    _write(folder, "model.weights", pickle.dumps(ShellPayload(marker), protocol=0))

    report = scan_folder(folder)

    assert report.findings == () and report.files_scanned == 0


def test_object_array_in_npy_is_scanned(folder, marker):
    buffer = io.BytesIO()
    np.save(buffer, np.array([ShellPayload(marker)], dtype=object), allow_pickle=True)
    _write(folder, "arrays.npy", buffer.getvalue())

    assert [(f.file, f.operator) for f in scan_folder(folder).findings] == [
        ("arrays.npy", "posix.system")
    ]


# What a denylist cannot see: the payload passes the scan yet runs when loaded.


def _cloudpickled_function(marker: Path) -> bytes:
    def payload():
        import os

        os.mkdir(marker)

    class Trigger:
        def __reduce__(self):
            return payload, ()

    return cloudpickle.dumps(Trigger())


def _import_module_and_methodcaller(marker: Path) -> bytes:
    # _operator.methodcaller("mkdir", marker)(importlib.import_module("os"))
    return _raw_pickle(
        _global("_operator", "methodcaller"),
        _text("mkdir"),
        _text(str(marker)),
        _call(2),
        _global("importlib", "import_module"),
        _text("os"),
        _call(1),
        _call(1),
    )


def _pydoc_locate(marker: Path) -> bytes:
    # pydoc.locate("os.mkdir")(marker)
    return _raw_pickle(
        _global("pydoc", "locate"), _text("os.mkdir"), _call(1), _text(str(marker)), _call(1)
    )


def test_denylist_gap_code_rebuilt_by_cloudpickle(folder, marker):
    data = _cloudpickled_function(marker)
    _write(folder, "model.pkl", data)

    report = scan_folder(folder)

    assert report.findings == () and report.files_scanned == 1
    assert not marker.exists()
    pickle.loads(data)  # the payload only makes a directory in tmp_path
    assert marker.is_dir()


@pytest.mark.parametrize(
    ("build", "operator"),
    [(_import_module_and_methodcaller, "importlib.import_module"), (_pydoc_locate, "pydoc.locate")],
)
def test_globals_that_reach_any_function_by_name_are_critical(folder, marker, build, operator):
    """modelscan's own denylist lets these through; EXTRA_UNSAFE_GLOBALS catches them."""
    _write(folder, "model.pkl", build(marker))

    report = scan_folder(folder)

    assert operator in {f.operator for f in report.findings}
    assert {f.severity for f in report.findings} == {"critical"}
    assert report.blocking(ScanPolicy())
    assert not marker.exists()


# The report and the policy


def test_findings_are_most_severe_first_and_described_briefly(folder, marker):
    _write(folder, "a.pkl", pickle.dumps(BrowserPayload()))
    _write(folder, "b.pkl", pickle.dumps(ShellPayload(marker)))
    _write(folder, "c.pkl", b"not a pickle")

    report = scan_folder(folder)

    assert [(f.file, f.severity) for f in report.findings] == [
        ("b.pkl", "critical"),
        ("a.pkl", "high"),
        ("c.pkl", "high"),
    ]
    assert report.describe() == (
        "b.pkl: posix.system (critical); a.pkl: webbrowser.open (high); "
        f"c.pkl: {UNSCANNABLE} (high)"
    )
    assert report.describe(report.findings[1:2]) == "a.pkl: webbrowser.open (high)"


def test_describe_lists_ten_then_counts_the_rest():
    findings = tuple(Finding(f"m{i}.pkl", "posix.system", "critical", "") for i in range(12))
    report = ScanReport(findings=findings, files_scanned=12, seconds=0.1)

    text = report.describe()

    assert text.startswith("m0.pkl: posix.system (critical); m1.pkl")
    assert "m9.pkl" in text and "m10.pkl" not in text
    assert text.endswith("; and 2 more")
    assert ScanReport(findings=(), files_scanned=0, seconds=0.0).describe() == "no findings"


def test_finding_round_trips_through_a_dict():
    finding = Finding("model.skops:1.npy", "posix.system", "critical", SYSTEM)

    assert Finding.from_dict(finding.to_dict()) == finding
    with pytest.raises(ValueError, match="severity"):
        Finding.from_dict({**finding.to_dict(), "severity": "CRITICAL"})


def test_policy_is_validated():
    assert SEVERITIES == ("low", "medium", "high", "critical")
    assert SCAN_MODES == ("block", "warn", "off")
    assert ScanPolicy(allow_globals=["posix.system"]).allow_globals == ("posix.system",)
    for bad in (
        {"mode": "audit"},
        {"block_severity": "severe"},
        {"allow_globals": "posix.system"},
        {"allow_globals": ("system",)},
    ):
        with pytest.raises(ValueError):
            ScanPolicy(**bad)


def test_missing_folder_is_an_error(tmp_path):
    with pytest.raises(NotADirectoryError):
        scan_folder(tmp_path / "absent")


def test_concurrent_scans_agree_with_serial_ones(tmp_path, marker):
    folders = []
    for index in range(6):
        folder = tmp_path / f"m{index}"
        _write(folder, f"model{index}.pkl", pickle.dumps(ShellPayload(marker)))
        _write(folder, "junk.pkl", os.urandom(8) if index % 2 else pickle.dumps(BrowserPayload()))
        folders.append(folder)
    _save_skops(tmp_path / "skops")
    folders.append(tmp_path / "skops")
    serial = [scan_folder(f).findings for f in folders]

    with ThreadPoolExecutor(8) as pool:
        for _ in range(3):
            assert [r.findings for r in pool.map(scan_folder, folders)] == serial


def test_module_imports_no_dagster():
    code = "import sys, marketplace.scanning; assert 'dagster' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_raw_weights_that_no_unpickler_can_start_on_are_not_findings(folder):
    """Sharded weights in .bin files (raw tensors, not PyTorch pickles) and safetensors: unpickling
    them fails at the first byte, before anything runs, so they are neither pickles nor
    unscannable."""
    _write(folder, "weights-00001.bin", bytes([0x1E, 0x00]) + bytes(range(256)) * 64)
    # Raw float64s whose first bytes are valid opcodes (GLOBAL, NONE) that garbage follows.
    _write(folder, "weights-00002.bin", b"c\xfb\x12" + bytes(range(256)) * 64)
    _write(folder, "weights-00003.bin", b"N\xfb\x12" + bytes(range(256)) * 64)
    # A safetensors header 896 bytes long: its first bytes read like a protocol 3 pickle's PROTO.
    _write(
        folder,
        "model.safetensors",
        (896).to_bytes(8, "little") + b"{" + b" " * 894 + b"}" + bytes(64),
    )

    report = scan_folder(folder)

    assert report.findings == ()
