"""Who wrote something: this host's name, and whether a process on it still runs.

Rule: one definition of "this host" for every name that carries one (temporary
files, leases, statistics), so that leftovers of dead processes are recognised
the same way everywhere. ``CACHELIB_HOST_ID`` overrides the host name (workers
that share a store from different machines must have different ids).
``PID_SCOPE`` names the kernel boot and pid namespace this process runs in: a
pid is only judged dead where the scope matches too, so that two containers that
share a host name (``--network host``) never take each other's live processes
for dead ones.
"""

from __future__ import annotations

import contextlib
import hashlib
import os

__all__ = ["HOST_ID", "PID_SCOPE", "WRITER_TAG", "process_alive", "writer_gone", "writer_id"]

HOST_ID = os.environ.get("CACHELIB_HOST_ID") or os.uname().nodename  # what gethostname(2) returns


def _pid_scope() -> str:
    """Return the boot id and pid namespace of this process ("" where the system does not say)."""
    parts = []
    with contextlib.suppress(OSError), open("/proc/sys/kernel/random/boot_id") as handle:
        parts.append(handle.read(64).strip())
    with contextlib.suppress(OSError):
        parts.append(str(os.stat("/proc/self/ns/pid").st_ino))
    return "/".join(parts)


PID_SCOPE = _pid_scope()
WRITER_TAG = hashlib.blake2s(f"{HOST_ID}\0{PID_SCOPE}".encode(), digest_size=4).hexdigest()
"""This host and ``PID_SCOPE`` in eight hex digits, for names that must stay short."""


def writer_id(pid: int | None = None) -> str:
    """Return ``<writer tag>-<pid>`` of the calling process (after a fork, the child's), or of ``pid``."""
    return f"{WRITER_TAG}-{os.getpid() if pid is None else pid}"


def writer_gone(tag: str, pid: int) -> bool:
    """True if ``tag`` is this host's and pid scope's ``WRITER_TAG`` and process ``pid`` no longer
    exists (a pid of another host or scope is never judged)."""
    return tag == WRITER_TAG and not process_alive(pid)


def process_alive(pid: int) -> bool:
    """True unless process ``pid`` (on this host) certainly does not exist."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True
