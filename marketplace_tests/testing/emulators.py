"""Cloud storage stand-ins the tests start on loopback: an S3 server (moto) and Azurite.

Both are real servers speaking their service's wire protocol; delta-rs and obstore talk to them
as to S3 and ADLS. A backend whose emulator does not start fails its tests: they are never skipped.

moto checks `If-None-Match: *` (the conditional put delta-rs commits with) and then writes, with
no lock between the two, so two racing commits of one table version could both succeed there,
which S3 itself never allows. The server here serves moto one request at a time, making that
check atomic as it is on S3.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from harness.local_servers import free_port

ROOT = Path(__file__).resolve().parents[2]
# The environment variables the tests give storage credentials in, as a user would.
CLOUD_KEYS = {"id": "MARKETPLACE_TEST_STORAGE_KEY_ID", "secret": "MARKETPLACE_TEST_STORAGE_SECRET"}
AZURITE = ROOT / "node_modules" / ".bin" / "azurite-blob"
AZURITE_ACCOUNT = "devstoreaccount1"
# Azurite's published development key (not a secret: every Azurite has it).
AZURITE_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)
S3_KEY_ID, S3_SECRET = "marketplace-test-key", "marketplace-test-secret"
START_SECONDS = 60


def _wait_for_port(port: int, process: subprocess.Popen, what: str, log: Path) -> None:
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"{what} exited with {process.returncode}: "
                f"{log.read_text(errors='replace')[-2000:]}"
            )
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    process.kill()
    raise RuntimeError(
        f"{what} did not listen on 127.0.0.1:{port} within {START_SECONDS} s: "
        f"{log.read_text(errors='replace')[-2000:]}"
    )


@dataclass
class Emulator:
    backend: str  # "s3" or "azure"
    endpoint: str
    process: subprocess.Popen

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()

    def make_space(self, name: str) -> None:
        """Create a bucket (S3) or container (Azure) named `name`."""
        if self.backend == "s3":
            import boto3

            boto3.client(
                "s3",
                endpoint_url=self.endpoint,
                aws_access_key_id=S3_KEY_ID,
                aws_secret_access_key=S3_SECRET,
                region_name="us-east-1",
            ).create_bucket(Bucket=name)
        else:
            from azure.storage.blob import BlobServiceClient

            connection = (
                f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
                f"BlobEndpoint={self.endpoint};"
            )
            BlobServiceClient.from_connection_string(connection).create_container(name)

    def storage_config(self, space: str, prefix: str, key_env: dict[str, str]) -> dict:
        """The `external_storage` block of a configuration on this emulator; credentials are named
        by environment variables (`key_env`: which variable holds what, set by the caller)."""
        if self.backend == "s3":
            return {
                "uri": f"s3://{space}/{prefix}",
                "s3": {
                    "region": "us-east-1",
                    "endpoint": self.endpoint,
                    "allow_http": True,
                    "access_key_id_env": key_env["id"],
                    "secret_access_key_env": key_env["secret"],
                },
            }
        # Emulator mode, not `endpoint`: with the endpoint form, delta-rs failed every commit after
        # the table's second ("Invalid table version: 1") against Azurite; emulator mode did not.
        return {
            "uri": f"abfss://{space}@{AZURITE_ACCOUNT}.dfs.core.windows.net/{prefix}",
            "azure": {
                "use_emulator": True,
                "allow_http": True,
                "account_key_env": key_env["secret"],
            },
        }

    def credentials(self, key_env: dict[str, str]) -> dict[str, str]:
        """The environment the configuration above reads its credentials from."""
        if self.backend == "s3":
            return {key_env["id"]: S3_KEY_ID, key_env["secret"]: S3_SECRET}
        # Where emulator mode finds Azurite (object_store reads only this variable for it).
        return {
            key_env["secret"]: AZURITE_KEY,
            "AZURITE_BLOB_STORAGE_URL": self.endpoint.rsplit("/", 1)[0],
        }


def start_s3(folder: Path) -> Emulator:
    port = free_port()
    log = folder / "s3.log"
    with open(log, "wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "marketplace_tests.testing.emulators", "s3", str(port)],
            cwd=ROOT,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    _wait_for_port(port, process, "the S3 emulator (moto)", log)
    return Emulator("s3", f"http://127.0.0.1:{port}", process)


def start_azurite(folder: Path) -> Emulator:
    if not AZURITE.exists():
        raise RuntimeError(f"{AZURITE} is missing: `make test` installs it with npm (npm ci)")
    port = free_port()
    log = folder / "azurite.log"
    workdir = folder / "azurite"
    workdir.mkdir(exist_ok=True)
    node = shutil.which("node")
    if node is None:
        raise RuntimeError("Node.js is not on PATH: Azurite needs it")
    with open(log, "wb") as output:
        process = subprocess.Popen(
            [
                str(AZURITE),
                "--blobHost",
                "127.0.0.1",
                "--blobPort",
                str(port),
                "--inMemoryPersistence",
                "--skipApiVersionCheck",
                "--loose",
                "--disableTelemetry",
            ],
            cwd=workdir,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    _wait_for_port(port, process, "Azurite", log)
    return Emulator("azure", f"http://127.0.0.1:{port}/{AZURITE_ACCOUNT}", process)


def serve_s3(port: int) -> None:
    """moto's S3, one request at a time (see the module docstring), until killed."""
    from moto.server import DomainDispatcherApplication, create_backend_app
    from werkzeug.serving import make_server

    app = DomainDispatcherApplication(create_backend_app)
    lock = threading.Lock()

    def serialized(environ, start_response):
        with lock:
            return list(app(environ, start_response))

    make_server("127.0.0.1", port, serialized, threaded=True).serve_forever()


def object_storage(cloud, lease_seconds: float):
    """The `cloud` fixture's storage as an ObjectStorage with leases of `lease_seconds`."""
    _emulator, storage_config = cloud
    from marketplace.config import ExternalStorageConfig
    from marketplace.external import resolve_options
    from marketplace.object_storage import ObjectStorage
    from marketplace.storage_options import object_store_options

    settings = ExternalStorageConfig.model_validate(storage_config)
    return ObjectStorage(
        settings.uri,
        resolve_options(settings.uri, *object_store_options(settings)),
        lease_seconds=lease_seconds,
    )


if __name__ == "__main__":
    os.environ.setdefault("MOTO_ALLOW_NONEXISTENT_REGION", "true")
    if sys.argv[1] == "s3":
        serve_s3(int(sys.argv[2]))
