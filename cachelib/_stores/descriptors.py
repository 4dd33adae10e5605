"""The descriptors cachelib keeps open between calls: a budget, and the directories under it.

Rule: what cachelib holds open after a call has returned is bounded by a share of
the process's ``RLIMIT_NOFILE`` (``share_of_limit``), so that a program with a low
limit (64, 256: macOS's default) and hundreds of memoized functions keeps its
descriptors for itself: the local stores' directory descriptors (``DIRECTORIES``:
one budget for the whole process, the least recently used closed first, by the
second-chance clock) and the files waiting for a background sync
(``_stores.durability``). A store finds its open directories in a dictionary of its
own (``home``) and borrows one for an operation: it announces the use, checks that
the directory was not retired meanwhile, and gives it back after. A directory that
is evicted, or replaced because its directory was, is closed only once nobody uses
it, so that no thread ever works on a descriptor number that was closed and reused.
Borrowing an open directory takes no lock (list appends and pops are atomic): the
hit path pays a dictionary lookup, two list operations and two attribute accesses.
"""

from __future__ import annotations

import collections
import contextlib
import os
import resource
import threading
from collections.abc import Callable

__all__ = ["DIRECTORIES", "Directories", "Handle", "give_back", "share_of_limit"]

_UNLIMITED = 1 << 20


def share_of_limit(fraction: int, low: int, high: int) -> int:
    """``RLIMIT_NOFILE`` (its soft limit) divided by ``fraction``, kept within [``low``, ``high``]."""
    try:
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (OSError, ValueError):
        soft = _UNLIMITED
    if soft == resource.RLIM_INFINITY or soft < 0:
        soft = _UNLIMITED
    return max(low, min(high, soft // fraction))


class Handle:
    """One open directory: its descriptor, where a store finds it, who uses it now."""

    __slots__ = ("closed", "fd", "home", "name", "retired", "used", "users")

    def __init__(self, fd: int, home: dict[str, Handle], name: str) -> None:
        self.fd = fd
        self.home = home
        self.name = name
        self.users: list[None] = []  # one item per use in progress (append/pop are atomic)
        self.used = True  # used since the clock last passed (the second chance)
        self.retired = False  # out of its home: closed once the last user gives it back
        self.closed = False

    def borrow(self) -> bool:
        """Announce a use; False if it was retired (then the use is already withdrawn)."""
        self.users.append(None)
        if self.retired:
            give_back(self)
            return False
        self.used = True
        return True


def give_back(handle: Handle) -> None:
    """End a use of ``handle``: it is closed now if it was retired and this was its last use."""
    handle.users.pop()
    if handle.retired and not handle.users:
        DIRECTORIES.close_unused(handle)


class Directories:
    """The open directory descriptors of every local store of the process: at most ``limit()``."""

    def __init__(self, limit: Callable[[], int]) -> None:
        self._limit = limit
        self._lock = threading.Lock()
        self._clock: collections.deque[Handle] = collections.deque()  # in their homes, and retired ones
        self._open = 0  # handles in their homes

    def add(self, home: dict[str, Handle], name: str, fd: int) -> Handle:
        """Make the directory ``fd`` ``home[name]``, borrowed once; retire what it replaces, and the
        least recently used beyond the limit."""
        fresh = Handle(fd, home, name)
        fresh.users.append(None)
        with self._lock:
            old = home.get(name)
            home[name] = fresh
            self._clock.append(fresh)
            self._open += 1
            if old is not None:
                self._retire(old)
            self._evict()
        return fresh

    def replace(self, handle: Handle) -> None:
        """Retire ``handle`` (its directory was replaced): it closes once unused."""
        with self._lock:
            self._retire(handle)

    def close_unused(self, handle: Handle) -> None:
        """Close a retired handle that nobody uses (once, whoever asks)."""
        with self._lock:
            if handle.retired and not handle.users and not handle.closed:
                handle.closed = True
                with contextlib.suppress(OSError):
                    os.close(handle.fd)

    def open_count(self) -> int:
        """How many directories are open in the stores' homes now."""
        return self._open

    def _retire(self, handle: Handle) -> None:  # holding the lock
        if handle.retired:
            return
        handle.retired = True
        self._open -= 1
        if handle.home.get(handle.name) is handle:
            del handle.home[handle.name]
        if not handle.users and not handle.closed:
            handle.closed = True
            with contextlib.suppress(OSError):
                os.close(handle.fd)

    def _evict(self) -> None:  # holding the lock
        limit = self._limit()
        while self._open > limit and self._clock:
            handle = self._clock.popleft()
            if handle.retired:
                continue  # replaced earlier: already out
            if handle.used:
                handle.used = False
                self._clock.append(handle)
                continue
            self._retire(handle)

    def after_fork(self) -> None:
        """In a forked child: a fresh lock (another thread may have held it at the fork)."""
        self._lock = threading.Lock()


DIRECTORIES = Directories(lambda: share_of_limit(16, 2, 64))
"""The process's directory descriptors: a sixteenth of the descriptor limit (16 of 256, 4 of 64)."""

if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=DIRECTORIES.after_fork)
