"""A real `dagster dev` (webserver and daemon) driven through its GraphQL API, for tests and
benchmarks."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests
import yaml

from harness.local_servers import free_port, is_healthy

DAGSTER = Path(sys.executable).parent / "dagster"

LAUNCH_BACKFILL = """
mutation($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message }
    ... on InvalidSubsetError { message }
    ... on UnauthorizedError { message }
  }
}"""

BACKFILL_STATUS = """
query($id: String!) {
  partitionBackfillOrError(backfillId: $id) {
    __typename
    ... on PartitionBackfill { status numPartitions runs { runId status tags { key value } } }
    ... on PythonError { message }
  }
}"""

MODULE = ("-m", "marketplace_dagster.definitions")
DONE = {"COMPLETED", "COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED", "CANCELED"}


# The embedded instance: no telemetry; queued runs dequeued within a second (Dagster's default
# waits up to 5 s, a third of the propagation target); and the sensor's skipped ticks (one every
# 5 s, 17,280 a day) kept a day rather than Dagster's 7.
INSTANCE_SETTINGS = {
    "telemetry": {"enabled": False},
    "run_queue": {"dequeue_interval_seconds": 1},
    "retention": {"sensor": {"purge_after_days": {"skipped": 1, "failure": 30, "success": -1}}},
}


def ensure_instance(home: Path, extra: dict | None = None) -> Path:
    """`home/dagster.yaml` with INSTANCE_SETTINGS (and `extra`), keeping whatever else it holds."""
    home.mkdir(parents=True, exist_ok=True)
    path = home / "dagster.yaml"
    settings = (yaml.safe_load(path.read_text()) if path.exists() else None) or {}
    for key, value in {**INSTANCE_SETTINGS, **(extra or {})}.items():
        settings[key] = (
            {**value, **settings.get(key, {})}
            if isinstance(value, dict)
            else settings.get(key, value)
        )
    path.write_text(yaml.safe_dump(settings, sort_keys=False))
    return path


def _spawn(command: list[str], env: dict[str, str], cwd: Path, log: Path) -> subprocess.Popen:
    with open(log, "ab") as output:
        return subprocess.Popen(
            command,
            cwd=cwd,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=default_interrupt,  # noqa: PLW1509 - only resets SIGINT in the child; deliberate
        )


def instance_env(config_path: Path, home: Path, extra: dict[str, str] | None = None) -> dict:
    """This process's environment, pointed at a configuration and a Dagster instance."""
    return {
        **os.environ,
        **(extra or {}),
        "MARKETPLACE_CONFIG": str(config_path),
        "DAGSTER_HOME": str(home),
    }


def sync_job_command(day: dt.date, workspace: str) -> list[str]:
    """`dagster job execute` of marketplace_sync_job for partition (day, workspace), as a run
    worker runs it."""
    # Dagster is imported only here: the Makefile runs this module to write the instance file.
    from marketplace_dagster.partitions import partition_tags

    return [str(DAGSTER), "job", "execute", *MODULE, "-j", "marketplace_sync_job"] + [
        "--tags",
        json.dumps(partition_tags(day, workspace)),
    ]


class WebhookReceiver:
    """`marketplace-webhooks` for one configuration and instance, its output in
    `home/webhooks.log`."""

    def __init__(
        self,
        config_path: Path,
        home: Path,
        listen_url: str,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ):
        self.url = listen_url.rstrip("/")
        self.log = home / "webhooks.log"
        self.process = _spawn(
            [sys.executable, "-m", "marketplace_dagster.webhooks"],
            instance_env(config_path, home, env),
            cwd or Path(config_path).resolve().parent,
            self.log,
        )

    def wait_until_up(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"marketplace-webhooks exited:\n{self.log.read_text()[-3000:]}")
            if is_healthy(self.url):
                return
            time.sleep(0.25)
        raise TimeoutError(
            f"marketplace-webhooks did not answer on {self.url}:\n{self.log.read_text()[-3000:]}"
        )

    def stop(self) -> None:
        stop_group(self.process)


def default_interrupt() -> None:
    """For a child's preexec_fn: SIGINT as a terminal gives it. A shell's background job (CI, a
    detached `make dev`) inherits it ignored, and stop_group's SIGINT would then wait out its
    30 s."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def stop_group(process: subprocess.Popen) -> None:
    """Interrupt the process group as Ctrl-C does, then kill."""
    for sig, wait_seconds in ((signal.SIGINT, 30), (signal.SIGKILL, 10)):
        try:
            os.killpg(process.pid, sig)
            process.wait(timeout=wait_seconds)
            return
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


class _Webserver:
    """What the tests and benchmarks ask of a running webserver, through its GraphQL API."""

    port: int
    url: str
    log: Path
    process: subprocess.Popen

    def query(self, query: str, variables: dict | None = None) -> dict:
        response = requests.post(
            self.url, json={"query": query, "variables": variables or {}}, timeout=60
        )
        response.raise_for_status()
        body = response.json()
        if "errors" in body:
            raise RuntimeError(f"GraphQL errors: {body['errors']}")
        return body["data"]

    def wait_until_loaded(self, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.process.args[0]} exited:\n{self._tail()}")
            try:
                data = self.query(
                    "{ repositoriesOrError { ... on RepositoryConnection { nodes { name } } } }"
                )
                if data["repositoriesOrError"].get("nodes"):
                    return
            except (requests.RequestException, RuntimeError, KeyError):
                pass
            time.sleep(1)
        raise TimeoutError(f"the webserver did not load in {timeout} s:\n{self._tail()}")

    def launch_backfill(self, partitions: list[str], asset_keys: list[list[str]]) -> str:
        launched = self.query(
            LAUNCH_BACKFILL,
            {
                "params": {
                    "partitionNames": partitions,
                    "assetSelection": [{"path": k} for k in asset_keys],
                }
            },
        )["launchPartitionBackfill"]
        if launched["__typename"] != "LaunchBackfillSuccess":
            raise RuntimeError(f"backfill not launched: {launched}")
        return launched["backfillId"]

    def backfill_status(self, backfill_id: str) -> dict:
        return self.query(BACKFILL_STATUS, {"id": backfill_id})["partitionBackfillOrError"]

    def wait_for_backfill(self, backfill_id: str, timeout: float = 1800) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.backfill_status(backfill_id)
            runs_done = all(
                r["status"] in ("SUCCESS", "FAILURE", "CANCELED") for r in status["runs"]
            )
            if status["status"] in DONE and runs_done:
                return status
            time.sleep(2)
        raise TimeoutError(f"backfill {backfill_id} did not finish:\n{self._tail()}")

    def backfill(
        self, partitions: list[str], asset_keys: list[list[str]], timeout: float = 1800
    ) -> dict:
        """Launch an asset backfill and wait for it to finish; returns its status and runs."""
        return self.wait_for_backfill(self.launch_backfill(partitions, asset_keys), timeout)

    def _tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


class DagsterDev(_Webserver):
    """`dagster dev -m marketplace_dagster.definitions` on a free port with its own DAGSTER_HOME."""

    def __init__(self, config_path: Path, home: Path, cwd: Path | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/graphql"
        ensure_instance(home)
        self.log = home / "dagster_dev.log"
        self.log.unlink(missing_ok=True)
        self.process = _spawn(
            [str(DAGSTER), "dev", *MODULE, "-h", "127.0.0.1", "-p", str(self.port)],
            instance_env(config_path, home),
            cwd or Path(config_path).resolve().parent,
            self.log,
        )

    def stop(self) -> None:
        """Interrupt `dagster dev` as Ctrl-C does (it shuts its webserver and daemon down), then
        kill."""
        stop_group(self.process)


class DagsterServices(_Webserver):
    """The production shape on one machine: `dagster-webserver` and `dagster-daemon run` as two
    processes on one instance (`home`, whose dagster.yaml the caller wrote), so the daemon can be
    killed and started again on its own."""

    def __init__(self, config_path: Path, home: Path, env: dict[str, str] | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/graphql"
        self.log = home / "webserver.log"
        self.daemon_log = home / "daemon.log"
        self.cwd = Path(config_path).resolve().parent
        self.env = instance_env(config_path, home, env)
        self.process = _spawn(
            [str(DAGSTER.parent / "dagster-webserver"), *MODULE]
            + ["-h", "127.0.0.1", "-p", str(self.port)],
            self.env,
            self.cwd,
            self.log,
        )
        self.daemon: subprocess.Popen | None = None
        self.start_daemon()

    def start_daemon(self) -> None:
        self.daemon = _spawn(
            [str(DAGSTER.parent / "dagster-daemon"), "run", *MODULE],
            self.env,
            self.cwd,
            self.daemon_log,
        )

    def kill_daemon(self) -> None:
        """SIGKILL the daemon alone, as a lost host would: the runs it launched go on."""
        if self.daemon is not None:
            self.daemon.kill()
            self.daemon.wait(timeout=30)

    def stop(self) -> None:
        if self.daemon is not None:
            stop_group(self.daemon)
        stop_group(self.process)


if (
    __name__ == "__main__"
):  # `python -m harness.local_dagster HOME`: the Makefile's embedded instance
    print(ensure_instance(Path(sys.argv[1])))
