"""Durability of published files: when their bytes and their names reach the disk.

Rule: a file is published (written, then renamed into place) at page-cache speed;
what may follow is only making it durable, which never changes what readers see.
``fsync="always"`` syncs the file before its rename and the directory after it;
``"background"`` (the default) hands both syncs to one thread per process, through
a queue of at most ``QUEUE_LIMIT`` files (a full queue makes the writer sync its own
file), finished at exit for up to ``EXIT_WAIT`` seconds and abandoned after that;
``"never"`` leaves it to the kernel. An entry that did not reach the disk before a
crash is torn or missing afterwards, which its checksums detect: a recomputation,
never a wrong result (a mapped read of such an entry checks its arrays, see
``_entries.envelope``). On a network filesystem another machine could see the renamed file
before its bytes, so there "background" syncs before the rename, as "always" does.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import os
import re
import threading
import time
from typing import Any

from .._errors import InvalidOptionError

__all__ = [
    "FSYNC_MODES",
    "Flusher",
    "can_defer",
    "checked_fsync_mode",
    "flusher",
    "written_since_boot",
]

FSYNC_MODES = ("always", "background", "never")
QUEUE_LIMIT = 64
"""Files waiting for their background sync, at most (each holds two descriptors)."""
EXIT_WAIT = 10.0
"""Seconds an exiting process waits for its pending syncs before abandoning them."""
_BOOT_SLACK = 1.0  # seconds: a file this close to the boot may predate it

# Filesystems on which other machines read what this one writes: a rename can be
# seen there before the bytes it names, so they are synced before the rename.
_NETWORK_FILESYSTEMS = frozenset(
    {
        "nfs", "nfs4", "cifs", "smb3", "smbfs", "ceph", "lustre", "gpfs", "beegfs", "glusterfs",
        "9p", "afs", "virtiofs", "panfs", "orangefs", "pvfs2", "ocfs2", "gfs2", "fuseblk", "fuse",
    }
)


def checked_fsync_mode(fsync: Any) -> str:
    """Return the mode named by ``fsync``: one of ``FSYNC_MODES``, or True/False for "always"/"never"."""
    if fsync is True:
        return "always"
    if fsync is False:
        return "never"
    if fsync not in FSYNC_MODES:
        raise InvalidOptionError(f"fsync must be one of {FSYNC_MODES} (or True/False), got {fsync!r}")
    return str(fsync)


def _unescape(field: str) -> str:
    """Undo the octal escapes of /proc/self/mounts (``\\040`` for a space ...)."""
    return re.sub(r"\\([0-7]{3})", lambda match: chr(int(match.group(1), 8)), field)


def filesystem_type(path: str, mounts: str) -> str | None:
    """Return the type of the filesystem holding ``path``, from the text of a mount table."""
    best, kind = "", None
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        point = _unescape(fields[1])
        inside = path == point or path.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, kind = point, fields[2]
    return kind


def can_defer(path: str) -> bool:
    """True if files under ``path`` may be synced after their rename (a local filesystem)."""
    try:
        with open("/proc/self/mounts") as table:
            mounts = table.read()
    except OSError:
        return False  # no mount table: nothing says the filesystem is local
    kind = filesystem_type(os.path.realpath(path), mounts)
    return kind is not None and kind.split(".")[0] not in _NETWORK_FILESYSTEMS


def _boot_time() -> float | None:
    """Return when this machine last started (unix seconds), or None if unknown."""
    clock = getattr(time, "CLOCK_BOOTTIME", None)
    if clock is None:
        return None
    try:
        return time.time() - time.clock_gettime(clock)
    except OSError:
        return None


def written_since_boot(mtime: float) -> bool:
    """True if a file modified at ``mtime`` was written after this machine last started.

    Such a file reads back as it was written, durable or not: no crash came between.
    """
    boot = _boot_time()
    return boot is not None and boot + _BOOT_SLACK < mtime <= time.time() + _BOOT_SLACK


def _sync_and_close(file_fd: int, dir_fd: int) -> None:
    """Sync a file, then the directory that names it; close both descriptors."""
    try:
        with contextlib.suppress(OSError):
            os.fsync(file_fd)
        with contextlib.suppress(OSError):  # not every filesystem syncs directories
            os.fsync(dir_fd)
    finally:
        for fd in (file_fd, dir_fd):
            with contextlib.suppress(OSError):
                os.close(fd)


class Flusher:
    """A bounded queue of published files and the one thread that syncs them."""

    def __init__(self, limit: int = QUEUE_LIMIT) -> None:
        self.limit = limit
        self._reset()

    def _reset(self) -> None:
        self._queue: collections.deque[tuple[int, int]] = collections.deque()
        self._changed = threading.Condition(threading.Lock())
        self._busy = 0  # items taken off the queue and not yet synced
        self._thread: threading.Thread | None = None

    def defer(self, file_fd: int, dir_fd: int) -> None:
        """Sync ``file_fd`` and then ``dir_fd`` soon, and close them; takes both descriptors.

        When the queue is full the caller syncs them itself, now.
        """
        with self._changed:
            if len(self._queue) + self._busy < self.limit:
                self._queue.append((file_fd, dir_fd))
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="cachelib-fsync", daemon=True)
                    self._thread.start()
                self._changed.notify_all()
                return
        _sync_and_close(file_fd, dir_fd)

    def pending(self) -> int:
        """Return how many files wait for their sync (queued or being synced)."""
        with self._changed:
            return len(self._queue) + self._busy

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until every file handed over so far is synced; False if ``timeout`` ran out first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._changed:
            while self._queue or self._busy:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._changed.wait(remaining)
        return True

    def _run(self) -> None:
        while True:
            with self._changed:
                while not self._queue:
                    self._changed.wait()
                item = self._queue.popleft()
                self._busy += 1
            try:
                _sync_and_close(*item)
            finally:
                with self._changed:
                    self._busy -= 1
                    self._changed.notify_all()

    def forget(self) -> None:
        """In a forked child: the parent syncs what it queued; close the copies, start afresh."""
        for descriptors in self._queue:
            for fd in descriptors:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._reset()


flusher = Flusher()
"""The process's flusher, shared by every store."""

atexit.register(flusher.drain, EXIT_WAIT)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=flusher.forget)
