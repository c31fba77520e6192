"""Pickle scanning across formats: what MLflow itself writes (no false positives), files modelscan
cannot parse (unscannable, never passed as clean), other pickle containers (joblib, PyTorch, NumPy,
unusual names) and raw weights that are not pickles at all."""

from __future__ import annotations

import io
import pickle
import zipfile

import joblib
import numpy as np
import pytest

from marketplace.scanning import (
    UNSCANNABLE,
    ScanPolicy,
    scan_folder,
)
from marketplace_tests.testing.pickles import (
    TORCH_MAGIC,
    ShellPayload,
    _save_cloudpickle,
    _save_python_model,
    _save_skops,
    _sklearn_model,
    _write,
    _zip,
)

# False positives: what MLflow itself writes


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
