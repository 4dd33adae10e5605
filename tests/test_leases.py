"""Leases over exclusive writes: renewal, staleness by the waiter's own clock, breaking, release."""

from __future__ import annotations

import json
import threading
import time
import uuid

import pytest

pytest.importorskip("fsspec", reason="the memory:// store needs fsspec: pip install 'cachelib-numpy[fsspec]'")
from cachelib._stores.fsspec_store import FsspecStore
from cachelib._stores.leases import Lease
from cachelib._stores.processes import HOST_ID


@pytest.fixture
def store() -> FsspecStore:
    return FsspecStore(f"memory://leases-{uuid.uuid4().hex[:12]}", lease_ttl=0.6)


def _plant(store: FsspecStore, record: dict) -> None:
    with store.write("k.lock") as writer:
        writer.file.write(json.dumps(record).encode())


def test_one_holder_at_a_time(store: FsspecStore) -> None:
    """A second lease on the key waits; it gets the key once the first is released."""
    first, second = Lease(store, "k.lock"), Lease(store, "k.lock")
    assert first.acquire(1.0)
    assert not second.acquire(0.2)
    first.release()
    assert second.acquire(1.0)
    second.release()
    assert not store.exists("k.lock")


def test_a_renewed_lease_outlives_its_ttl(store: FsspecStore) -> None:
    """A holder that keeps computing renews its lease: a waiter never breaks it."""
    holder = Lease(store, "k.lock")
    assert holder.acquire(1.0)
    waiter = Lease(store, "k.lock")
    assert not waiter.acquire(2.5)  # four ttls
    holder.release()
    assert waiter.acquire(1.0)
    waiter.release()


def test_an_unrenewed_lease_of_another_host_is_broken_after_its_ttl(store: FsspecStore) -> None:
    """A record no one renews is broken once the waiter has watched it for a ttl."""
    _plant(store, {"host": "elsewhere", "pid": 1, "token": "t", "expires": time.time() + 3600})
    waiter = Lease(store, "k.lock")
    assert not waiter.acquire(0.3)  # half a ttl: not yet
    assert waiter.acquire(2.0)
    waiter.release()


def test_a_skewed_but_live_holder_is_not_broken(store: FsspecStore) -> None:
    """A holder whose clock runs behind (its expiry already past here) but renews keeps its lease."""
    stop = threading.Event()

    def renew_with_a_slow_clock() -> None:
        while not stop.is_set():
            _plant(store, {"host": "elsewhere", "pid": 1, "token": "t", "expires": time.time() - 0.4})
            stop.wait(0.2)

    renewer = threading.Thread(target=renew_with_a_slow_clock)
    renewer.start()
    try:
        assert not Lease(store, "k.lock").acquire(2.0)
    finally:
        stop.set()
        renewer.join()


def test_a_lease_left_long_ago_or_garbled_is_broken_at_once(store: FsspecStore) -> None:
    """An expiry far in the past, or a record that is no lease, does not make anyone wait."""
    for record in ({"host": "elsewhere", "pid": 1, "token": "t", "expires": time.time() - 3600}, ["x"]):
        _plant(store, record)  # type: ignore[arg-type]
        lease = Lease(store, "k.lock")
        assert lease.acquire(0.1)
        lease.release()


def test_a_dead_holder_on_this_host_is_broken_at_once(store: FsspecStore) -> None:
    """A holder that ran here and is gone (no such pid) is broken without waiting for its ttl."""
    _plant(store, {"host": HOST_ID, "pid": 2**22 + 12345, "token": "t", "expires": time.time() + 3600})
    lease = Lease(store, "k.lock")
    assert lease.acquire(0.1)
    lease.release()


def test_release_removes_only_its_own_lease(store: FsspecStore) -> None:
    """A holder whose lease was broken and taken leaves the new holder's lease alone."""
    old = Lease(store, "k.lock")
    assert old.acquire(1.0)
    old._stop.set()  # pretend it was paused: it stops renewing
    old._renewer.join()  # type: ignore[union-attr]
    new = Lease(store, "k.lock")
    assert new.acquire(3.0)  # breaks the unrenewed lease after a ttl
    old.release()
    assert store.exists("k.lock")
    new.release()
    assert not store.exists("k.lock")


def test_break_if_stale_spares_live_leases(store: FsspecStore) -> None:
    """prune's check breaks leases of the dead and of long ago, not a held one."""
    held = Lease(store, "k.lock")
    assert held.acquire(1.0)
    assert Lease(store, "k.lock").break_if_stale() is False
    held.release()
    _plant(store, {"host": "elsewhere", "pid": 1, "token": "t", "expires": time.time() - 3600})
    assert Lease(store, "k.lock").break_if_stale() is True
    assert not store.exists("k.lock")
