"""Leases: per-key locks built from a store's exclusive writes, for stores without native locks.

Rule: a lease is an object created with ``write(exclusive=True)`` (``O_EXCL`` and
``link`` on a filesystem, a conditional put on an object store) holding its
holder's host, process and token and an expiry. The holder renews it while it
computes; a waiter breaks it when it has expired, or at once when its holder ran
on this host and is gone. Two waiters that break the same stale lease at the
same moment may both compute: wasteful, never wrong (entries are published
atomically whoever writes them).
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
import uuid
from typing import Any

from ._errors import CacheError
from ._processes import HOST_ID, process_alive
from ._store import KeyLock, Store

__all__ = ["Lease"]

_RECORD_LIMIT = 4096


class Lease(KeyLock):
    """A lock held as the object ``key`` of ``store``, renewed every ``ttl / 3`` seconds."""

    def __init__(self, store: Store, key: str, ttl: float = 60.0) -> None:
        self._store = store
        self._key = key
        self._ttl = ttl
        self._token = uuid.uuid4().hex
        self._renewer: threading.Thread | None = None
        self._stop = threading.Event()

    def _record(self) -> bytes:
        expires = time.time() + self._ttl
        holder = {"host": HOST_ID, "pid": os.getpid(), "token": self._token, "expires": expires}
        return json.dumps(holder).encode()

    def _holder(self) -> dict[str, Any] | None:
        """Return the current holder's record; None if there is none; {} if it is unreadable."""
        try:
            record = json.loads(self._store.read_bytes(self._key, _RECORD_LIMIT))
        except KeyError:
            return None
        except (CacheError, OSError, ValueError):
            return {}
        return record if isinstance(record, dict) else {}

    @staticmethod
    def _is_stale(holder: dict[str, Any]) -> bool:
        expires = holder.get("expires")
        if not isinstance(expires, (int, float)) or time.time() > expires:
            return True
        pid = holder.get("pid")
        return holder.get("host") == HOST_ID and isinstance(pid, int) and not process_alive(pid)

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
        while True:
            if self._try_create():
                self._start_renewing()
                return True
            holder = self._holder()
            if holder is not None and self._is_stale(holder):
                # Breaking it may fail (something that is not a lease sits there): the
                # OSError tells the caller to compute without a lock, rather than spin.
                self._store.delete(self._key)
                continue
            if time.monotonic() >= deadline:
                return False
            time.sleep(delay)
            delay = min(delay * 2, 0.25)

    def _start_renewing(self) -> None:
        self._stop.clear()
        self._renewer = threading.Thread(target=self._renew, name="cachelib-lease", daemon=True)
        self._renewer.start()

    def _renew(self) -> None:
        while not self._stop.wait(self._ttl / 3):
            holder = self._holder()
            if not holder or holder.get("token") != self._token:
                return  # broken by someone who took us for dead: keep computing, publish anyway
            with contextlib.suppress(CacheError, OSError), self._store.write(self._key) as writer:
                writer.file.write(self._record())

    def release(self) -> None:
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join()
            self._renewer = None
        holder = self._holder()
        if holder and holder.get("token") == self._token:
            with contextlib.suppress(OSError, KeyError):
                self._store.delete(self._key)
