"""Locks on an object store, which has no file locks: a lease object created with a conditional
put, renewed by a heartbeat while held, and taken over once its holder stops renewing it."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from typing import Protocol, Self

from marketplace.storage import LockLost, LockTimeout

log = logging.getLogger(__name__)


class LeaseStore(Protocol):
    """What a lease needs of an object store (`marketplace.object_storage.ObjectStorage`)."""

    def put(self, key: str, data: bytes, mode) -> str | None: ...

    def head(self, key: str) -> dict | None: ...

    def delete(self, keys: list[str]) -> None: ...

    def location(self, key: str = "") -> str: ...

    def errors(self, what: str) -> contextlib.AbstractContextManager[None]: ...


class LeaseLock:
    """A lock object on an object store: created only if absent (a conditional put), renewed by
    a heartbeat while held, deleted on release. A holder that died stops renewing; a waiter that
    sees the same version of the object for a whole lease takes it over with a conditional update
    of exactly that version (two waiters cannot both win), timed on its own clock, not the
    holder's."""

    def __init__(
        self, storage: LeaseStore, key: str, *, lease_seconds: float, timeout_seconds: float
    ):
        self.storage = storage
        self.key = key
        self.lease_seconds = lease_seconds
        self.timeout_seconds = timeout_seconds
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._etag: str | None = None
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None
        self._renewed_at = 0.0
        self.lost = False

    def _payload(self) -> bytes:
        return json.dumps(
            {"owner": self.owner, "renewed_at": time.time(), "lease_seconds": self.lease_seconds}
        ).encode()

    def acquire(self) -> None:
        from obstore.exceptions import AlreadyExistsError, PreconditionError

        deadline = time.monotonic() + self.timeout_seconds
        seen: tuple[str | None, float] | None = None
        while True:
            with self.storage.errors(f"taking the lock {self.key}"):
                try:
                    self._etag = self.storage.put(self.key, self._payload(), "create")
                    break
                except AlreadyExistsError:
                    pass
                current = self.storage.head(self.key)
                if current is not None:
                    etag = current.get("e_tag")
                    if seen is None or seen[0] != etag:
                        seen = (etag, time.monotonic())
                    elif time.monotonic() - seen[1] > self.lease_seconds:
                        try:  # its holder stopped renewing: take it over, if no one else has
                            self._etag = self.storage.put(
                                self.key, self._payload(), {"e_tag": etag}
                            )
                            break
                        except (PreconditionError, AlreadyExistsError):
                            seen = None
            if time.monotonic() >= deadline:
                raise LockTimeout(
                    f"{self.storage.location(self.key)}: still held after "
                    f"{self.timeout_seconds:.0f} s"
                )
            time.sleep(min(1.0, self.lease_seconds / 10))
        self._renewed_at = time.monotonic()
        self._stop.clear()
        self._heartbeat = threading.Thread(
            target=self._renew, name=f"lease {self.key}", daemon=True
        )
        self._heartbeat.start()

    def _renew(self) -> None:
        from obstore.exceptions import NotFoundError, PreconditionError

        while not self._stop.wait(self.lease_seconds / 4):
            try:
                self._etag = self.storage.put(self.key, self._payload(), {"e_tag": self._etag})
                self._renewed_at = time.monotonic()
            except (PreconditionError, NotFoundError, FileNotFoundError):
                # Changed or gone: another process took the lease over after we failed to renew it.
                self.lost = True
                log.warning("lost the lock %s to another process", self.storage.location(self.key))
                return
            except Exception:  # noqa: BLE001, S112 - a network blip: try again at the next beat
                continue

    def check(self) -> None:
        """LockLost unless this process still holds the lease: called before each write the lock
        protects, so a holder whose lease was taken over (or could not be renewed for a whole
        lease, after which a waiter may take it) writes nothing more."""
        where = self.storage.location(self.key)
        if self.lost:
            raise LockLost(
                f"lost the lock {where}: another process took it over; stopped before writing"
            )
        unrenewed = time.monotonic() - self._renewed_at
        if unrenewed > self.lease_seconds:
            raise LockLost(
                f"lost the lock {where}: not renewed for {unrenewed:.0f} s, longer than its "
                f"{self.lease_seconds:.0f} s lease, so another process may hold it; stopped before "
                "writing"
            )

    def release(self) -> None:
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join()
        current = self.storage.head(self.key)
        if current is not None and current.get("e_tag") == self._etag:
            self.storage.delete([self.key])
        self._etag = None

    def __enter__(self) -> Self:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
