"""Whether the interpreter is shutting down: the one test asked before work is handed to a thread.

Rule: from the moment the main thread has returned (``threading`` runs its exit
callbacks, then waits for non-daemon threads), through ``atexit`` handlers, to
finalization, a process may start no thread pool work and should start no new
thread: ``concurrent.futures`` refuses new work (or even its own import) then. Code
that would hand work to the shared pool or to the background worker asks
``shutting_down()`` first and does the work in the calling thread instead, so that a
memoized call made from a non-daemon thread still running or from an ``atexit``
handler works as the plain function does.
"""

from __future__ import annotations

import sys
import threading

__all__ = ["shutting_down"]


def shutting_down() -> bool:
    """True once the main thread has returned and the interpreter is on its way out."""
    return bool(getattr(threading, "_SHUTTING_DOWN", False)) or sys.is_finalizing()
