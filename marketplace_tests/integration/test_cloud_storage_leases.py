"""Lease locks on S3 and on ADLS, each against its emulator on loopback (`cloud` fixture): one
holder at a time, a dead holder taken over after a lease, and a holder that lost its lease
stops writing."""

from __future__ import annotations

import datetime as dt
import threading
import time

import pytest

from harness.seeding import register_version
from marketplace.layout import export_key, lock_name
from marketplace.manifest import MANIFEST_NAME
from marketplace.object_storage import ObjectStorage
from marketplace.storage import LockLost, LockTimeout
from marketplace_tests.testing.emulators import object_storage as _object_storage


def test_lease_lock_excludes_takes_over_a_dead_holder_and_renews_a_live_one(cloud):
    storage = _object_storage(cloud, lease_seconds=2)
    name = lock_name("export", "w", "m", "1")

    with storage.lock(name, timeout_seconds=5):
        with pytest.raises(LockTimeout), storage.lock(name, timeout_seconds=1):
            pass
        time.sleep(3)  # longer than a lease: the heartbeat keeps it held
        with pytest.raises(LockTimeout), storage.lock(name, timeout_seconds=1):
            pass
    assert storage.list(".locks") == {}

    # A holder that died (its lock object stays, never renewed) is taken over after a lease.
    storage.write(f".locks/{name}.lock", b'{"owner": "a dead process"}')
    started = time.monotonic()
    with storage.lock(name, timeout_seconds=30):
        waited = time.monotonic() - started
    assert 2 <= waited < 10

    # Many waiters for one dead holder: never two holders at once.
    storage.write(f".locks/{name}.lock", b'{"owner": "a dead process"}')
    holding, most, errors = [0], [0], []
    guard = threading.Lock()

    def contend() -> None:
        try:
            with storage.lock(name, timeout_seconds=60):
                with guard:
                    holding[0] += 1
                    most[0] = max(most[0], holding[0])
                time.sleep(0.3)
                with guard:
                    holding[0] -= 1
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=contend) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(90)
    assert errors == [] and most[0] == 1


def test_a_holder_whose_lease_was_taken_over_stops_writing_naming_the_lock(cloud, monkeypatch):
    storage = _object_storage(cloud, lease_seconds=2)
    name = lock_name("export", "w", "m", "1")
    where = storage.location(f".locks/{name}.lock")
    renewals_fail = threading.Event()
    put = ObjectStorage.put

    def flaky_put(self, key, data, mode):
        # The holder's heartbeat cannot reach the store (a network partition): its lease runs out.
        if (
            renewals_fail.is_set()
            and isinstance(mode, dict)
            and threading.current_thread().name.startswith("lease")
        ):
            raise ConnectionError("unreachable")
        return put(self, key, data, mode)

    monkeypatch.setattr(ObjectStorage, "put", flaky_put)
    with storage.lock(name, timeout_seconds=5) as held:
        held.check()  # held: nothing to stop
        renewals_fail.set()
        time.sleep(2.5)  # a whole lease without a renewal
        with pytest.raises(LockLost, match=f"lost the lock {where}: not renewed for"):
            held.check()
        # Meanwhile another process takes it over; once the holder reaches the store again, its
        # next heartbeat finds the lock changed.
        other = _object_storage(cloud, lease_seconds=2)
        with other.lock(name, timeout_seconds=30):
            renewals_fail.clear()
            deadline = time.monotonic() + 10
            while not held.lost and time.monotonic() < deadline:
                time.sleep(0.1)
            assert held.lost
            with pytest.raises(
                LockLost, match=f"lost the lock {where}: another process took it over"
            ):
                held.check()
            # ...and releasing it leaves the new holder's lock in place.
    assert storage.list(".locks") == {}


def test_an_export_whose_lock_was_lost_publishes_nothing(cloud, servers, uid, monkeypatch):
    """The export of one version, its lock lost just before publishing: the version fails naming
    the lock, and no export is in storage."""
    import logging

    from marketplace.exports import export_versions
    from marketplace.leases import LeaseLock
    from marketplace.registry import make_client, select_production_versions

    register_version(servers["ws_a"].uri, f"{uid}_m", stage="Production")
    storage = _object_storage(cloud, lease_seconds=30)
    client = make_client(servers["ws_a"].uri)
    (version,) = select_production_versions(
        client, stage="Production", alias=None, include=[f"{uid}_m"]
    ).versions

    real_check = LeaseLock.check

    def taken_over(self):
        self.lost = True  # as the heartbeat finds it once another process took the lease over
        real_check(self)

    monkeypatch.setattr(LeaseLock, "check", taken_over)
    (outcome,) = export_versions(
        client,
        tracking_uri=servers["ws_a"].uri,
        registry_uri=None,
        storage=storage,
        workspace="w",
        versions=[version],
        day=dt.date.today(),
        signing_key=None,
        source_marker=False,
        log=logging.getLogger("test"),
    )
    assert outcome.status == "failed"
    assert (
        "LockLost: lost the lock" in outcome.detail
        and "another process took it over" in outcome.detail
    )
    assert not storage.exists(f"{export_key('w', f'{uid}_m', 1)}/{MANIFEST_NAME}")
