"""When and how a sandbox starts: the warm process names numpy's and scipy's ufuncs as skops
would, and a run begins its sandbox only when production moved."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys

from marketplace.external import moved
from marketplace.registry import ProductionVersion
from marketplace.sandbox import (
    boundary,
)


def test_the_warm_process_names_the_ufuncs_skops_would_find_first():
    # In a fresh interpreter, as the warm process meets them: MLflow loaded, then the one-pass
    # naming, which must agree with skops's own scan (imported after, so it finds them named).
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); "
        "import warm, mlflow.pyfunc, numpy as np, scipy.special; "
        "ufuncs = {id(o): o for m in (np, scipy.special) for a in dir(m) "
        "          if isinstance(o := getattr(m, a), np.ufunc) "
        "and getattr(o, '__module__', None) is None}; "
        "named = warm.name_ufuncs(); import skops.io; from skops.io._utils import whichmodule; "
        "print(len(ufuncs), named, "
        "sum(o.__module__ == whichmodule(o, o.__name__) for o in ufuncs.values()))"
    )
    found = subprocess.run(
        [sys.executable, "-c", code, str(boundary.INSIDE)],
        capture_output=True,
        text=True,
        check=True,
    )
    count, named, agreeing = map(int, found.stdout.split())
    assert count > 100 and named == count == agreeing, found.stdout + found.stderr


def test_a_run_begins_its_sandbox_only_when_production_moved():
    def at(**versions):
        return [
            ProductionVersion(m, v, "run", "models:/x", dt.datetime(2026, 12, 7), "stage")
            for m, v in versions.items()
        ]

    assert moved(None, at(a=1))  # the first snapshot: everything is new
    assert not moved(None, [])
    assert not moved({"a": 1, "b": 2}, at(a=1, b=2))  # the idle cycle starts nothing
    assert not moved({"a": 1, "b": 2}, at(a=1))  # a retirement loads nothing
    assert moved({"a": 1}, at(a=2)) and moved({"a": 2}, at(a=1))  # promotion, rollback
    assert moved({"a": 1}, at(a=1, b=1))  # a new model
