"""The sandbox a source's model loads in: payloads that try to leave it are stopped and named,
clean models load, predict and evaluate alike in both modes, and the namespaces show nothing of the
host's home, project or secrets."""

from __future__ import annotations

import functools
import json
import os
import secrets
import shutil
import socket
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from marketplace.sandbox import (
    Sandbox,
    SandboxSettings,
    SandboxUnavailable,
    boundary,
)
from marketplace.sandbox.inside import tasks
from marketplace_tests.testing.sandbox_models import (
    BUILDING,
    EXAMPLE,
    MODES,
    SANDBOX_ENV,
    SANDBOX_ROOT,
    SET_INSIDE,
    Doubles,
    Payload,
    RebuildsWithPayload,
    allocate,
    assert_blocked,
    connect,
    digest_on_host,
    fork_many,
    libc_system,
    open_by_dir_fd,
    read_canary,
    report_view,
    save_from_code,
    save_payload,
    save_regression,
    sleep,
    spawn,
    write_file,
)


@pytest.fixture(scope="module")
def host(tmp_path_factory) -> Path:
    """A host folder the payloads aim at: nothing may appear in it."""
    return tmp_path_factory.mktemp("host")


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="module")
def regression(models) -> Path:
    return save_regression(models / "regression", slope=2.0)


@pytest.fixture(scope="module")
def canary(tmp_path_factory):
    """A secret in this process's environment and in a file, as a run's credentials would be."""
    value = "canary-" + secrets.token_hex(8)
    secret = tmp_path_factory.mktemp("home") / ".marketplace" / "canary"
    secret.parent.mkdir()
    secret.write_text(value)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MARKETPLACE_CANARY_SECRET", value)
        yield value, secret


@pytest.fixture(scope="module")
def sandboxes(canary):
    """A sandbox per mode, and one per mode with tight limits, started after the canary is set."""
    boxes = {
        (mode, limits): Sandbox(SandboxSettings(mode=mode, **limits_kw))
        for mode in MODES
        for limits, limits_kw in ((False, {}), (True, {"timeout_seconds": 3, "memory_mb": 1536}))
    }
    for box in boxes.values():
        box.begin()  # all four at once: each start imports MLflow, pandas and scikit-learn
    try:
        yield boxes
    finally:
        with ThreadPoolExecutor(len(boxes)) as pool:
            list(pool.map(Sandbox.close, boxes.values()))


@pytest.fixture(params=MODES)
def mode(request) -> str:
    return request.param


@pytest.fixture
def box(sandboxes, mode) -> Sandbox:
    return sandboxes[(mode, False)]


@pytest.fixture
def limited(sandboxes, mode) -> Sandbox:
    """3 s and 1536 MB a model."""
    return sandboxes[(mode, True)]


def test_a_model_writing_a_host_file_is_blocked(box, models, host, mode):
    target = host / f"written-{mode}"
    model = save_payload(
        models / f"write-{mode}", Payload(functools.partial(write_file, str(target)))
    )
    result = box.load_and_predict(model)
    assert_blocked(result, "open", str(target))
    assert not target.exists()


def test_a_model_sees_no_canary_secret(box, models, canary, mode):
    value, secret = canary
    model = save_payload(
        models / f"canary-{mode}",
        Payload(
            functools.partial(read_canary, "MARKETPLACE_CANARY_SECRET", str(secret)), "predict"
        ),
    )
    result = box.load_and_predict(model)
    # Process mode shares the filesystem (its documented limit); neither mode passes the
    # environment.
    file_seen = value if mode == "process" else ""
    assert (result.status, result.predicted) == ("ok", True), result
    assert result.digest == tasks.digest(pd.DataFrame({"env": [""], "file": [file_seen]}))
    assert value not in repr(result)


def test_a_model_connecting_to_a_local_server_is_blocked(box, models, mode):
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        model = save_payload(models / f"connect-{mode}", Payload(functools.partial(connect, port)))
        result = box.load_and_predict(model)
        # A completed connection waits in the backlog even if its client closed it at once.
        server.setblocking(False)
        with pytest.raises(BlockingIOError):
            server.accept()
    assert_blocked(result, "socket.connect", str(port))


def test_a_model_spawning_a_process_is_blocked(box, models, host, mode):
    target = host / f"spawned-{mode}"
    model = save_payload(models / f"spawn-{mode}", Payload(functools.partial(spawn, str(target))))
    result = box.load_and_predict(model)
    assert_blocked(result, "subprocess.Popen", str(target))
    assert not target.exists()


def test_a_fork_bomb_is_blocked_and_returns(box, models, mode):
    model = save_payload(models / f"fork-{mode}", Payload(fork_many))
    started = time.monotonic()
    result = box.load_and_predict(model)
    assert time.monotonic() - started < 60
    assert_blocked(result, "os.fork")
    assert result.denied_total == 10_000
    assert result.events[-1] == f"and {10_000 - len(result.denied)} more denied"


def test_a_model_allocating_past_the_memory_limit_is_stopped(limited, models, regression, mode):
    # 2 GiB: within the default 4096 MB, past this sandbox's 1536 MB.
    model = save_payload(
        models / f"memory-{mode}", Payload(functools.partial(allocate, 2 * 1024**3))
    )
    result = limited.load_and_predict(model)
    assert result.status == "memory" and result.blocked, result
    assert limited.load_and_predict(regression).status == "ok"


def test_a_model_sleeping_past_the_time_limit_is_stopped_and_the_next_loads(
    limited, models, regression, mode
):
    model = save_payload(models / f"sleep-{mode}", Payload(functools.partial(sleep, 60)))
    started = time.monotonic()
    result = limited.load_and_predict(model)
    assert time.monotonic() - started < 20
    assert result.status == "timeout" and result.blocked, result
    after = limited.load_and_predict(regression)
    assert (after.status, after.digest) == ("ok", digest_on_host(regression))


def test_code_run_while_unpickling_is_blocked(box, models, host, mode):
    target = host / f"rebuilt-{mode}"
    model = Doubles()
    model.extra = RebuildsWithPayload(str(target))
    result = box.load_and_predict(save_payload(models / f"rebuild-{mode}", model))
    assert_blocked(result, "os.system", str(target))
    assert not target.exists()


def test_a_models_from_code_file_with_a_payload_is_blocked(box, models, host, mode):
    target = host / f"from-code-{mode}"
    payload = f"if os.environ.get({BUILDING!r}) != '1':\n    os.system('touch {target}')\n"
    result = box.load_and_predict(save_from_code(models / f"from-code-{mode}", payload))
    assert_blocked(result, "os.system", str(target))
    assert not target.exists()


@pytest.mark.parametrize("evasion", ["libc_system", "open_by_dir_fd"])
def test_a_payload_the_audit_hook_misses_still_cannot_touch_the_host(
    box, models, host, mode, evasion, request
):
    """The namespaces are the boundary; the audit hook only defence in depth and a record."""
    target = host / f"{evasion}-{mode}"
    attack = (
        functools.partial(libc_system, str(target))
        if evasion == "libc_system"
        else functools.partial(open_by_dir_fd, str(host), target.name)
    )
    result = box.load_and_predict(save_payload(models / f"{evasion}-{mode}", Payload(attack)))
    assert result.status in ("error", "denied") and result.error, result  # it ran, and failed
    assert not target.exists(), result


def test_clean_models_load_and_predict_alike_in_both_modes(sandboxes, models, regression):
    doubles = save_payload(models / "doubles", Doubles())
    other = save_regression(models / "other-regression", slope=3.0)
    expected = {folder: digest_on_host(folder) for folder in (regression, doubles, other)}
    assert len(set(expected.values())) == 3
    for mode in MODES:
        box = sandboxes[(mode, False)]
        for folder in (regression, doubles, other, regression):
            result = box.load_and_predict(folder)
            assert (result.status, result.loaded, result.predicted, result.denied) == (
                "ok",
                True,
                True,
                (),
            ), result
            assert result.digest == expected[folder], (mode, folder.name)


def test_a_clean_models_from_code_model_loads(box, models, mode):
    result = box.load_and_predict(save_from_code(models / f"clean-from-code-{mode}", ""))
    assert (result.status, result.predicted, result.denied) == ("ok", True, ()), result
    assert result.digest == tasks.digest(EXAMPLE)


def test_evaluate_returns_metrics(box, regression):
    data = EXAMPLE.assign(y=EXAMPLE["x"] * 2.0 + np.array([1.1, 0.9, 1.0]))
    result = box.evaluate(regression, data, targets="y", model_type="regressor")
    assert (result.status, result.denied) == ("ok", ()), result
    assert {"mean_squared_error", "r2_score"} <= set(result.metrics), result.metrics
    assert all(np.isfinite(v) for v in result.metrics.values())


def test_namespaces_show_no_home_project_or_secret(sandboxes, models, canary):
    _, secret = canary
    project = Path(__file__).resolve().parents[2]
    folders = [
        "/",
        str(Path.home()),
        str(project),
        str(project / ".marketplace"),
        str(secret.parent),
        "/tmp",
    ]
    model = save_payload(models / "view", Payload(functools.partial(report_view, folders)))
    result = sandboxes[("namespaces", False)].load_and_predict(model)
    assert result.status == "error" and result.error.startswith("RuntimeError: "), result
    seen = json.loads(result.error.removeprefix("RuntimeError: "))
    roots = boundary.interpreter_roots()
    for folder, entries in seen["folders"].items():
        # Of the host only the system folders and the way to the interpreter and its site-packages
        # show.
        visible = [
            e
            for e in entries or ()
            if (folder == "/" and e in SANDBOX_ROOT)
            or any(_leads_to(os.path.join(folder, e), root) for root in roots)
        ]
        assert entries is None or entries == visible, (folder, entries)
    assert "home" not in seen["folders"]["/"] and "opt" not in seen["folders"]["/"]
    assert (
        seen["folders"][str(project / ".marketplace")] is None
        and seen["folders"][str(secret.parent)] is None
    )
    # /tmp is the sandbox's own, empty but for the way to an interpreter that lives under it.
    assert seen["folders"]["/tmp"] == sorted(
        {Path(r).parts[2] for r in roots if r.startswith("/tmp/")}
    )
    assert [line.split(":")[0] for line in seen["passwd"].splitlines()] == ["sandbox"]
    # None of this process's variables (the canary's among them) but those the sandbox sets itself.
    assert not set(seen["environ"]) & (set(os.environ) - SANDBOX_ENV - SET_INSIDE), seen["environ"]
    assert seen["environ"]["HOME"].startswith(boundary.SANDBOX_SCRATCH + "/")
    assert seen["environ"].get("PWD", boundary.SANDBOX_SCRATCH).startswith(boundary.SANDBOX_SCRATCH)


def test_an_interpreter_under_tmp_stays_visible(monkeypatch, models):
    # A clone under /tmp has its venv there; the sandbox's own /tmp must not hide it.
    venv = Path(tempfile.mkdtemp(prefix="venv-", dir="/tmp"))
    (venv / "marker").write_text("here")
    roots = boundary.interpreter_roots()
    monkeypatch.setattr(boundary, "interpreter_roots", lambda: [*roots, str(venv)])
    model = save_payload(
        models / "tmp-view", Payload(functools.partial(report_view, [str(venv), "/tmp"]))
    )
    with Sandbox(SandboxSettings(mode="namespaces")) as box:
        result = box.load_and_predict(model)
    shutil.rmtree(venv)
    assert result.error.startswith("RuntimeError: "), result
    seen = json.loads(result.error.removeprefix("RuntimeError: "))
    assert seen["folders"][str(venv)] == ["marker"] and venv.name in seen["folders"]["/tmp"]


def _leads_to(path: str, root: str) -> bool:
    return root == path or root.startswith(path.rstrip("/") + "/")


def test_namespaces_mode_without_bubblewrap_is_unavailable(monkeypatch, regression):
    monkeypatch.setattr(boundary, "bwrap_executable", lambda: None)
    settings = SandboxSettings(mode="namespaces")
    with (
        pytest.raises(SandboxUnavailable, match=r"security\.sandbox\.mode"),
        Sandbox(settings) as box,
    ):
        box.load_and_predict(regression)
