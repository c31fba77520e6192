"""Pickle scanning: what modelscan flags before anything is unpickled, and what a denylist cannot
see (payloads that pass the scan yet run when loaded)."""

from __future__ import annotations

import pickle
from pathlib import Path

import cloudpickle
import pytest

from marketplace.scanning import (
    Finding,
    ScanPolicy,
    scan_folder,
)
from marketplace_tests.testing.pickles import (
    SYSTEM,
    BrowserPayload,
    ShellPayload,
    _call,
    _global,
    _raw_pickle,
    _text,
    _write,
)

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
