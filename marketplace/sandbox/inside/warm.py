"""The warm process's imports: what loading models will import, once, before any child forks.
Libraries only; nothing of a model."""

from __future__ import annotations

import os
import sys
import time
import warnings

OPTIONAL = ("sklearn", "mlflow.sklearn", "skops.io", "cloudpickle", "pyarrow.parquet")


def import_libraries() -> float:
    """Import MLflow's pyfunc, pandas and (where installed) scikit-learn and skops; seconds
    taken."""
    started = time.monotonic()
    # What libraries would otherwise start a process for: GitPython checking `git version` at
    # import, matplotlib listing fonts with `fc-list` for an interactive backend.
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
    os.environ.setdefault("MPLBACKEND", "Agg")
    warnings.filterwarnings("ignore")
    import mlflow.pyfunc  # noqa: F401
    import pandas  # noqa: F401
    from mlflow.models import Model  # noqa: F401

    try:
        name_ufuncs()
    except Exception:  # noqa: BLE001, S110 - skops then names them itself, slower
        pass
    for optional in OPTIONAL:
        try:
            __import__(optional)
        except Exception:  # noqa: BLE001, S110 - a missing library is the load's to report
            pass
    return time.monotonic() - started


def import_evaluation() -> None:
    """What MLflow's evaluation imports (2-3 s), once, before the first evaluation forks its
    child."""
    for module in (
        "mlflow.models.evaluation",
        "mlflow.models.evaluation.default_evaluator",
        "git",
        "matplotlib.pyplot",
    ):
        try:
            __import__(module)
        except Exception:  # noqa: BLE001, S110 - the evaluation reports what it misses
            pass


def name_ufuncs() -> int:
    """Give each ufunc of NumPy and scipy.special that has no `__module__` the module skops
    would find for it, in one pass over the loaded modules; returns how many were named.

    skops.io, on import, names ~230 such ufuncs (to trust them) by scanning every loaded module
    for each one, in order, until it finds it: 1.5-2 s of CPU with MLflow loaded. Named here first
    it takes 0.05 s, and each name is the one skops's own scan returns: the first module in
    sys.modules that holds the object."""
    import numpy as np
    import scipy.special

    wanted: dict[str, dict[int, object]] = {}
    for module in (np, scipy.special):
        for attr in dir(module):
            obj = getattr(module, attr, None)
            if isinstance(obj, np.ufunc) and getattr(obj, "__module__", None) is None:
                wanted.setdefault(obj.__name__, {})[id(obj)] = obj
    named = 0
    with warnings.catch_warnings():
        warnings.simplefilter(
            "ignore", DeprecationWarning
        )  # as skops's scan: deprecated module attributes
        for module_name, module in sys.modules.copy().items():
            if not wanted:
                break
            if module_name in ("__main__", "__mp_main__") or module is None:
                continue
            plain = type(module) is type(np) and "__getattr__" not in vars(module)
            # A plain module's attributes are its __dict__; any other is asked, name by name.
            names = wanted.keys() & vars(module).keys() if plain else list(wanted)
            for name in names:
                try:
                    found = getattr(module, name, None)
                except (AttributeError, ImportError):
                    continue
                if (obj := wanted.get(name, {}).pop(id(found), None)) is not None:
                    obj.__module__ = module_name
                    named += 1
                    if not wanted[name]:
                        del wanted[name]
    return named
