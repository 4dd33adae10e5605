"""Leases over exclusive writes: renewal, staleness by the waiter's own clock, breaking, release."""

from __future__ import annotations

import contextlib
import json
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from _system import start_child
from _victims import computations, slow

import cachelib
from cachelib._stores.local import LocalStore

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


@pytest.mark.parametrize("ttls", [2, pytest.param(4, marks=pytest.mark.slow)])
def test_a_renewed_lease_outlives_its_ttl(store: FsspecStore, ttls: int) -> None:
    """A holder that keeps computing renews its lease: a waiter never breaks it."""
    holder = Lease(store, "k.lock")
    assert holder.acquire(1.0)
    waiter = Lease(store, "k.lock")
    assert not waiter.acquire(ttls * store.lease_ttl + 0.1)
    holder.release()
    assert waiter.acquire(1.0)
    waiter.release()


@pytest.mark.slow  # waits for a ttl (test_release_removes_only_its_own_lease breaks one too)
def test_an_unrenewed_lease_of_another_host_is_broken_after_its_ttl(store: FsspecStore) -> None:
    """A record no one renews is broken once the waiter has watched it for a ttl."""
    _plant(store, {"host": "elsewhere", "pid": 1, "token": "t", "expires": time.time() + 3600})
    waiter = Lease(store, "k.lock")
    assert not waiter.acquire(0.3)  # half a ttl: not yet
    assert waiter.acquire(2.0)
    waiter.release()


@pytest.mark.slow  # waits 2 s: test_a_renewed_lease_outlives_its_ttl[2] keeps a renewing holder quickly
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


def test_a_garbled_record_is_broken_at_once(store: FsspecStore) -> None:
    """A record that is no lease does not make anyone wait."""
    for record in (["x"], {"host": "elsewhere", "pid": 1}):
        _plant(store, record)  # type: ignore[arg-type]
        lease = Lease(store, "k.lock")
        assert lease.acquire(0.1)
        lease.release()


def test_an_expiry_long_past_is_judged_by_renewal_not_by_clocks(store: FsspecStore) -> None:
    """An expiry an hour past by this clock may be a holder whose clock is an hour slow: the
    waiter watches the record for a ttl before it breaks it, as for any other host's lease."""
    _plant(store, {"host": "elsewhere", "pid": 1, "token": "t", "expires": time.time() - 3600})
    lease = Lease(store, "k.lock")
    assert not lease.acquire(0.3)  # half a ttl: not yet
    assert lease.acquire(2.0)
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
    assert Lease(store, "k.lock").break_if_stale() is False  # its clock may be an hour slow
    assert Lease(store, "k.lock").break_if_stale(age=60.0) is False  # dated a minute ago by the store
    assert Lease(store, "k.lock").break_if_stale(age=7200.0) is True  # dated two hours ago
    assert not store.exists("k.lock")


# --- real processes whose clocks disagree ------------------------------------------------------


def _clocked(offset_after: tuple[float, float]) -> None:
    """Make this process's wall clock read ``offset`` seconds off, from ``after`` seconds on."""
    offset, after = offset_after
    real = time.time
    start = real()
    time.time = lambda: real() + (offset if real() - start >= after else 0.0)  # type: ignore[assignment]


def _soft(location: str, ttl: float) -> Any:
    store = LocalStore(location)
    store.lease_ttl = ttl
    return cachelib.Cache(store=store, lock="soft", lock_timeout=60).memoize(ignore=["log", "delay"])(slow)


def _hold(location: str, log: str, ttl: float, clock: tuple[float, float]) -> int:
    _clocked(clock)
    return int(_soft(location, ttl)(1, 5 * ttl, log=log))


def _wait(location: str, log: str, ttl: float, clock: tuple[float, float]) -> int:
    _clocked(clock)
    return int(_soft(location, ttl)(1, 0.0, log=log))


def _recorded_skew(location: str) -> float | None:
    """How far the expiry the lease records is from this clock's now plus a ttl (None: no lease)."""
    for path in Path(location).rglob("*.lock"):
        with contextlib.suppress(OSError, ValueError, KeyError):
            return float(json.loads(path.read_bytes())["expires"]) - time.time()
    return None


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize(("holder_clock", "waiter_clock"), [
    ((-300.0, 0.0), (0.0, 0.0)),  # the holder's clock is five minutes slow
    ((-300.0, 0.5), (0.0, 0.0)),  # the holder's clock jumps five minutes back while it holds
    ((0.0, 0.0), (300.0, 0.5)),  # the waiter's clock jumps five minutes forward while it waits
], ids=["slow holder", "holder jumps back", "waiter jumps forward"])
def test_a_renewing_holder_keeps_its_lease_whatever_the_clocks_say(
    tmp_path: Path, holder_clock: tuple[float, float], waiter_clock: tuple[float, float]
) -> None:
    """Two real processes on a soft lock: the holder renews (its records carry its clock's times),
    the waiter waits for it and hits, and the call is computed once, whatever the clocks read."""
    ttl = 1.0
    location, log = str(tmp_path / "cache"), str(tmp_path / "log")
    holder = start_child(_hold, location, log, ttl, holder_clock)
    try:
        deadline = time.monotonic() + 30
        while not computations(log) or (holder_clock[0] and (_recorded_skew(location) or 0.0) > -200):
            assert time.monotonic() < deadline, "the holder never recorded a lease with its clock's times"
            time.sleep(0.02)
        waiter = start_child(_wait, location, log, ttl, waiter_clock)
        assert waiter.wait(90).result() == 1
    finally:
        outcome = holder.wait(90)
    assert outcome.result() == 1
    assert computations(log) == ["slow 1"], "the waiter broke a live, renewed lease and computed again"
