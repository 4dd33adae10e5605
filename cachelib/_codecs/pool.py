"""The worker threads that hash, checksum and compress large data in parallel.

Rule: one small pool per process, shared by every layer, made on first use and
forgotten in a forked child (whose copy has no threads). What runs on it is leaf
work that releases the GIL (xxh3 over a buffer, a codec over a frame, a copy) and
never waits for other pool work, so the pool cannot deadlock; a task that asks for
parallel work from a worker thread runs it inline, and so does every task once the
interpreter is shutting down (``_lifecycle``: a call from a thread still running
after the main thread returned, or from an ``atexit`` handler, when
``concurrent.futures`` takes no new work). Results never depend on the number of
threads: callers split work at fixed boundaries, not per thread.

``CACHELIB_THREADS`` sets the number of threads (1 turns parallel work off); by
default it is the number of cores this process may use, at most ``MAX_THREADS``.
"""

from __future__ import annotations

import concurrent.futures
import os
import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from .._errors import InvalidOptionError
from .._lifecycle import shutting_down

__all__ = ["MAX_THREADS", "THREADS_VARIABLE", "run_all", "submit", "thread_count"]

THREADS_VARIABLE = "CACHELIB_THREADS"
MAX_THREADS = 8
"""The default's cap: past it, memory bandwidth rather than cores limits hashing and copies."""

T = TypeVar("T")

_lock = threading.Lock()
_pool: concurrent.futures.ThreadPoolExecutor | None = None
_pool_size = 0
_local = threading.local()  # .worker is True on the pool's own threads


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def thread_count() -> int:
    """Return how many threads parallel work uses: ``CACHELIB_THREADS``, else the usable cores (capped)."""
    text = os.environ.get(THREADS_VARIABLE)
    if not text:
        return max(1, min(_usable_cores(), MAX_THREADS))
    try:
        count = int(text)
    except ValueError:
        count = 0
    if count < 1:
        raise InvalidOptionError(
            f"{THREADS_VARIABLE} must be a positive integer (1 disables parallel work), got {text!r}"
        )
    return count


def _mark_worker() -> None:
    _local.worker = True


def _executor(size: int) -> concurrent.futures.ThreadPoolExecutor:
    """Return the shared pool with ``size`` threads, replacing one of another size."""
    global _pool, _pool_size
    with _lock:
        if _pool is None or _pool_size != size:
            # The old pool is dropped, not shut down: a thread may be submitting to it
            # right now. Its idle threads end once it is collected.
            _pool = concurrent.futures.ThreadPoolExecutor(
                size, thread_name_prefix="cachelib", initializer=_mark_worker
            )
            _pool_size = size
        return _pool


def _forget_pool() -> None:
    """In a forked child: the parent's threads do not exist here; make a new pool on demand."""
    global _pool, _pool_size, _lock
    _lock = threading.Lock()
    _pool, _pool_size = None, 0


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)


def _in_worker() -> bool:
    return getattr(_local, "worker", False)


def _inline() -> bool:
    """True where parallel work runs in the calling thread: on the pool, or at shutdown."""
    return _in_worker() or shutting_down()


def submit(function: Callable[..., T], *args: Any) -> concurrent.futures.Future[T]:
    """Run ``function(*args)`` on the pool (inline from the pool, with one thread, or at shutdown)."""
    threads = thread_count()
    if threads > 1 and not _inline():
        try:
            return _executor(threads).submit(function, *args)
        except RuntimeError:  # the interpreter began shutting down just now: no new pool work
            pass
    future: concurrent.futures.Future[T] = concurrent.futures.Future()
    try:
        future.set_result(function(*args))
    except BaseException as exc:  # delivered by result(), as the pool would
        future.set_exception(exc)
    return future


def run_all(tasks: Sequence[Callable[[], T]]) -> list[T]:
    """Run every task, the first in the calling thread and the rest on the pool; return results in order.

    Every task has finished when this returns or raises (the first failure is raised).
    """
    if len(tasks) <= 1 or thread_count() == 1 or _inline():
        return [task() for task in tasks]
    pending = [submit(task) for task in tasks[1:]]
    try:
        first = tasks[0]()
    finally:
        concurrent.futures.wait(pending)
    return [first, *(future.result() for future in pending)]
