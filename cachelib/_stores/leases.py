"""Leases: per-key locks built from a store's exclusive writes, for stores without native locks.

Rule: a lease is an object created with ``write(exclusive=True)`` (``O_EXCL`` and
``link`` on a filesystem, a conditional put, ``If-None-Match: *``, on an object
store) holding its holder's host, process scope, pid, token and expiry. The holder
renews it (rewrites it, with a new expiry) every ``ttl / 3`` seconds while it
computes. Liveness is judged by renewal alone, on the waiter's own monotonic clock,
never by comparing two machines' clocks (a holder whose clock is minutes slow or
fast, or one that jumps, keeps its lease as long as it renews): a waiter breaks a
lease when

* its holder ran in this very host and pid namespace and is gone (at once), or
* the waiter has seen the same record, unrenewed and readable, for ``ttl`` seconds
  (a record that keeps changing is alive; one that cannot be read for a while
  restarts the watch), or the record is not a lease at all.

A lease the store dated ``ABANDONED`` seconds ago (an hour: its holder would have
renewed it 180 times) is left behind: ``break_if_stale`` removes it for ``prune``.
A lease belongs to the process that took it: a forked child copies the object but
never renews, releases or removes it. Two waiters that break the same stale lease
at the same moment may both compute, and so may a holder that was paused past its
ttl and the waiter that broke its lease: wasteful, never wrong, since entries are
published atomically whoever writes them.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
import uuid
from typing import Any

from .._errors import CacheError, FileAccessError, StoreUnavailable
from .base import KeyLock, Store
from .processes import HOST_ID, PID_SCOPE, process_alive

__all__ = ["ABANDONED", "Lease"]

ABANDONED = 3600.0
"""Seconds after which a lease its store dated that long ago is taken as left behind."""
_RECORD_LIMIT = 4096
_UNREADABLE = object()  # the record could not be read just now: judge it later


class Lease(KeyLock):
    """A lock held as the object ``key`` of ``store``, renewed every ``ttl / 3`` seconds."""

    def __init__(self, store: Store, key: str, ttl: float | None = None) -> None:
        self._store = store
        self._key = key
        self._ttl = float(ttl if ttl is not None else store.lease_ttl)
        self._token = uuid.uuid4().hex
        self._renewer: threading.Thread | None = None
        self._stop = threading.Event()
        self._holder: int | None = None  # the pid that holds it: a forked child never does

    def _record(self) -> bytes:
        holder = {"host": HOST_ID, "scope": PID_SCOPE, "pid": os.getpid(), "token": self._token,
                  "expires": time.time() + self._ttl}
        return json.dumps(holder).encode()

    def _read(self) -> Any:
        """Return the current record's bytes; None if there is none; ``_UNREADABLE`` on an I/O error."""
        try:
            return self._store.read_bytes(self._key, _RECORD_LIMIT)
        except KeyError:
            return None
        except StoreUnavailable:
            return _UNREADABLE  # a stalled or unreachable store says nothing of the holder
        except CacheError:
            return b""  # too large, or not a regular file: not a lease
        except OSError:
            return _UNREADABLE

    @staticmethod
    def _parse(raw: bytes) -> dict[str, Any]:
        """The holder a record names ({} for one that is not a lease)."""
        try:
            record = json.loads(raw)
        except ValueError:
            return {}
        return record if isinstance(record, dict) else {}

    def _is_stale(self, holder: dict[str, Any], unchanged_for: float) -> bool:
        """Whether a holder is gone: not a lease, unrenewed for ``unchanged_for`` > ttl, or dead here."""
        if not isinstance(holder.get("token"), str):
            return True
        if unchanged_for > self._ttl:
            return True
        pid = holder.get("pid")
        here = holder.get("host") == HOST_ID and holder.get("scope", PID_SCOPE) == PID_SCOPE
        return here and isinstance(pid, int) and not process_alive(pid)

    def _try_create(self) -> bool:
        try:
            with self._store.write(self._key, exclusive=True) as writer:
                writer.file.write(self._record())
        except FileExistsError:
            return False
        return True

    def acquire(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        delay = 0.005
        seen: tuple[bytes, float] | None = None  # the record as first seen, and when
        while True:
            if self._try_create():
                self._holder = os.getpid()
                self._start_renewing()
                return True
            raw = self._read()
            if raw is _UNREADABLE:
                seen = None  # renewal cannot be watched just now: watch afresh once it can
            elif isinstance(raw, bytes):
                if seen is None or seen[0] != raw:
                    seen = (raw, time.monotonic())
                if self._is_stale(self._parse(raw), time.monotonic() - seen[1]):
                    if not self.break_if_unchanged(raw):  # not a lease, and it cannot be removed
                        raise FileAccessError(
                            f"{self._key!r} cannot be locked: something that is not a lease is there"
                        )
                    seen = None
                    continue
            if time.monotonic() >= deadline:
                return False
            time.sleep(delay)
            delay = min(delay * 2, 0.25)

    def break_if_unchanged(self, raw: bytes) -> bool:
        """Delete the lease if it still holds the record ``raw`` (judged stale).

        False if it does and cannot be deleted (then the caller must not wait on it).
        """
        if self._read() == raw:
            try:
                self._store.delete(self._key)
            except KeyError:
                pass
            except OSError:
                return False
        return True

    def break_if_stale(self, age: float = 0.0) -> bool:
        """Delete the lease if its holder is gone (or ``age``, how long ago the store dated it,
        is past ``ABANDONED``); True if it did."""
        raw = self._read()
        unchanged_for = self._ttl + 1.0 if age > max(ABANDONED, self._ttl) else 0.0
        if not isinstance(raw, bytes) or not self._is_stale(self._parse(raw), unchanged_for):
            return False
        self.break_if_unchanged(raw)
        return True

    def _start_renewing(self) -> None:
        self._stop.clear()
        renewer = threading.Thread(target=self._renew, name="cachelib-lease", daemon=True)
        try:
            renewer.start()
        except RuntimeError:  # interpreter finalization: no new threads (a long call may be broken)
            return
        self._renewer = renewer

    def _renew(self) -> None:
        while not self._stop.wait(self._ttl / 3):
            raw = self._read()
            if raw is _UNREADABLE:
                continue  # try again at the next turn
            if raw is None or self._parse(raw).get("token") != self._token:
                return  # broken by someone who took us for dead: keep computing, publish anyway
            with contextlib.suppress(CacheError, OSError), self._store.write(self._key) as writer:
                writer.file.write(self._record())

    def release(self) -> None:
        holder, self._holder = self._holder, None
        if holder != os.getpid():
            return  # never taken, or taken by the parent of this forked child: the parent's to release
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join()
            self._renewer = None
        raw = self._read()
        if isinstance(raw, bytes) and self._parse(raw).get("token") == self._token:
            with contextlib.suppress(OSError, KeyError):
                self._store.delete(self._key)
