"""Durability of published files: when their bytes and their names reach the disk.

Rule: a file is published (written, then renamed into place) at page-cache speed;
what may follow is only making it durable, which never changes what readers see.
``fsync="always"`` syncs the file before its rename and the directory after it;
``"background"`` (the default) hands both syncs to the process's background worker
(``background``), at most ``queue_limit()`` files at a time (two descriptors each: at
most ``QUEUE_LIMIT``, and a thirty-second of the descriptor limit, ``descriptors``;
past that the writer syncs its own file), finished at exit for up to
``background.EXIT_WAIT`` seconds and abandoned after that;
``"never"`` leaves it to the kernel. An entry that did not reach the disk before a
crash is torn or missing afterwards, which its checksums detect: a recomputation,
never a wrong result (a mapped read of such an entry checks its arrays, see
``_entries.envelope``). On a network filesystem another machine could see the renamed file
before its bytes, so there "background" syncs before the rename, as "always" does.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from typing import Any

from .._errors import InvalidOptionError
from .background import worker
from .descriptors import share_of_limit

__all__ = ["FSYNC_MODES", "QUEUE_LIMIT", "can_defer", "checked_fsync_mode", "defer", "queue_limit",
           "written_since_boot"]

FSYNC_MODES = ("always", "background", "never")
QUEUE_LIMIT = 64
"""Files waiting for their background sync, at most (each holds two descriptors)."""


def queue_limit() -> int:
    """Files that may wait for their background sync now: ``QUEUE_LIMIT``, less under a low
    descriptor limit (8 under 256, 2 under 64)."""
    return min(QUEUE_LIMIT, share_of_limit(32, 1, QUEUE_LIMIT))
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


class _Sync:
    """Sync a file, then the directory that names it; close both descriptors (a background job)."""

    def __init__(self, file_fd: int, dir_fd: int) -> None:
        self._descriptors = (file_fd, dir_fd)

    def run(self) -> None:
        try:
            for fd in self._descriptors:  # the file first: its name must not outlive its bytes
                with contextlib.suppress(OSError):  # not every filesystem syncs directories
                    os.fsync(fd)
        finally:
            self.forget()

    def forget(self) -> None:
        for fd in self._descriptors:
            with contextlib.suppress(OSError):
                os.close(fd)


def defer(file_fd: int, dir_fd: int) -> None:
    """Sync ``file_fd`` and then ``dir_fd`` soon, and close them; takes both descriptors.

    When ``queue_limit()`` files already wait, the caller syncs them itself, now.
    """
    job = _Sync(file_fd, dir_fd)
    if not worker.submit(job, limit=queue_limit()):
        job.run()
