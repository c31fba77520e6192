"""Pickle scanning's report and policy: findings ordered and described, their round trip, the
policy's validation, and scans that agree when run concurrently."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

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
from marketplace_tests.testing.pickles import (
    SYSTEM,
    BrowserPayload,
    ShellPayload,
    _save_skops,
    _write,
)

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
