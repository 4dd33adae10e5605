"""Who wrote something: this host's name, and whether a process on it still runs.

Rule: one definition of "this host" for every name that carries one (temporary
files, leases, statistics), so that leftovers of dead processes are recognised
the same way everywhere. ``CACHELIB_HOST_ID`` overrides the host name (workers
that share a store from different machines must have different ids).
"""

from __future__ import annotations

import os
import socket

__all__ = ["HOST_ID", "process_alive", "writer_id"]

HOST_ID = os.environ.get("CACHELIB_HOST_ID") or socket.gethostname()


def writer_id() -> str:
    """Return ``<host>-<pid>`` of the calling process (after a fork, the child's)."""
    return f"{HOST_ID}-{os.getpid()}"


def process_alive(pid: int) -> bool:
    """True unless process ``pid`` (on this host) certainly does not exist."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True
