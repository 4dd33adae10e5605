"""Native key locks of local stores: ``flock`` on lock files, and what a fork does to them.

Rule: a lock file is opened without following links and never truncated; the
lock is the ``flock`` on it, which the kernel releases when its holder dies. The
file is removed on release; a waiter that wins a file already removed opens the new
one and waits again, so two holders never overlap. A ``flock`` belongs to the open
file description, which a forked child shares: the child closes its copies of the
descriptors of every lock file open in the parent, held or waited for
(``_forget_open_locks``), so that a lock goes with the process that took it, and the
child never releases or removes it.
"""

from __future__ import annotations

import contextlib
import os
import stat
import time
from typing import Protocol

from .._errors import CorruptFileError
from .base import KeyLock, check_key
from .trust import Rules, not_followed

__all__ = ["FileLock", "LockPlace"]

_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_FLAGS = os.O_RDONLY | os.O_CREAT | _NOFOLLOW | getattr(os, "O_NONBLOCK", 0) | _CLOEXEC


class LockPlace(Protocol):
    """What a lock file needs of its local store: the directory of a key, the mode of its files."""

    rules: Rules

    def directory_of(self, parts: list[str], create: bool) -> contextlib.AbstractContextManager[int]: ...


class FileLock(KeyLock):
    """A ``flock`` on the lock file ``key`` of a local store (see the module docstring)."""

    def __init__(self, store: LockPlace, key: str) -> None:
        self._store = store
        self._parts = check_key(key)
        self._fd: int | None = None  # the lock file, while open (held or waited for)
        self._held = False
        self._parent: contextlib.ExitStack | None = None
        self._parent_fd = -1

    def _open(self) -> os.stat_result:
        stack = contextlib.ExitStack()
        parent = stack.enter_context(self._store.directory_of(self._parts, True))
        mode = self._store.rules.file_mode
        try:
            fd = os.open(self._parts[-1], _FLAGS, mode, dir_fd=parent)
        except OSError as exc:
            stack.close()
            raise not_followed("/".join(self._parts), exc) from None
        self._fd, self._parent, self._parent_fd = fd, stack, parent
        _open_locks.add(self)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise CorruptFileError(f"lock file {'/'.join(self._parts)!r} is not a regular file")
            if st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) != mode:
                os.fchmod(fd, mode)
        except BaseException:
            self._drop()
            raise
        return st

    def _still_named(self, st: os.stat_result) -> bool:
        try:
            current = os.stat(self._parts[-1], dir_fd=self._parent_fd, follow_symlinks=False)
        except OSError:
            return False
        return (current.st_ino, current.st_dev) == (st.st_ino, st.st_dev)

    def _drop(self) -> None:
        """Close the lock file and its directory (releasing the lock, if this process holds it)."""
        _open_locks.discard(self)
        fd, self._fd = self._fd, None
        self._held = False
        if fd is not None:
            os.close(fd)
        parent, self._parent = self._parent, None
        if parent is not None:
            parent.close()

    def acquire(self, timeout: float) -> bool:
        from filelock import lock_descriptor, unlock_descriptor  # loaded by the first lock, not the import

        deadline = time.monotonic() + timeout
        delay = 0.001
        while True:
            st = self._open()
            fd = self._fd
            assert fd is not None
            while not lock_descriptor(fd, blocking=False):
                if time.monotonic() >= deadline:
                    self._drop()
                    return False
                time.sleep(delay)
                delay = min(delay * 2, 0.05)
            if self._still_named(st):
                self._held = True
                return True
            unlock_descriptor(fd)
            self._drop()  # it was removed by the holder we waited for: take the new one

    def release(self) -> None:
        fd = self._fd
        if fd is None or not self._held:
            return
        with contextlib.suppress(OSError):
            if self._still_named(os.fstat(fd)):
                os.unlink(self._parts[-1], dir_fd=self._parent_fd)
        from filelock import unlock_descriptor

        with contextlib.suppress(OSError):
            unlock_descriptor(fd)
        self._drop()

    def forget(self) -> None:
        """In a forked child: close this process's copies of the lock's descriptors, nothing else.

        Closing a copy never releases a ``flock`` (the parent's descriptor keeps the
        description alive); unlocking would, and so would removing the file.
        """
        with contextlib.suppress(OSError):
            self._drop()


_open_locks: set[FileLock] = set()  # lock files open in this process (set.add/discard are atomic)


def _forget_open_locks() -> None:
    """In a forked child: close every lock file the parent had open, held or waited for."""
    for lock in list(_open_locks):
        lock.forget()
    _open_locks.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_open_locks)
