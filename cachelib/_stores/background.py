"""The one background thread of a process: the work that follows a call, and its fork and exit rules.

Rule: whatever cachelib does after a call has returned runs on this one daemon
thread, made at first use: jobs handed over now (durability syncs, ``durability``)
and jobs named to run a little later (the statistics a second after a call,
``_entries.stats``), plus the jobs registered to run at exit. One fork rule: a
forked child forgets the work its parent queued (releasing what those jobs hold;
the parent finishes them) and makes its own thread when it needs one. One exit
rule: an exiting process runs its exit jobs and the delayed calls on the thread and
waits for them and the queue for at most ``EXIT_WAIT`` seconds in all, then
abandons what is left; it does so as soon as the main thread returns (``threading``'s
exit callbacks, which run before ``concurrent.futures`` and fsspec's executors shut
down), again at ``atexit`` for what came later, and, as multiprocessing and loky
workers leave by ``os._exit``, after multiprocessing's finalizers (registered when the
thread starts in a process that has loaded multiprocessing, as every such worker has
before it runs a task). Once the
interpreter is shutting down (``_lifecycle``) nothing is queued or delayed: work
handed over runs in the caller, so a call made by a thread that outlives the main
thread, or by an ``atexit`` handler, is synced and counted before it returns.
"""
from __future__ import annotations

import atexit
import collections
import concurrent.futures.thread  # noqa: F401 - its exit callback must be registered before ours
import contextlib
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Protocol

from .._lifecycle import shutting_down

__all__ = ["EXIT_WAIT", "Job", "Worker", "worker"]

EXIT_WAIT = 10.0
"""Seconds an exiting process waits for its pending work before abandoning it."""


class Job(Protocol):
    """Work handed to the worker now."""

    def run(self) -> None:
        """Do the work (errors are the job's own business: nothing escapes to the worker)."""

    def forget(self) -> None:
        """In a forked child: let go of what the job holds (the parent runs it)."""


class Worker:
    """A queue of jobs and named delayed calls, run in order by one daemon thread."""

    def __init__(self) -> None:
        self._exit_jobs: list[Callable[[], None]] = []
        self._fork_jobs: list[Callable[[], None]] = []
        self._reset()

    def _reset(self) -> None:
        self._changed = threading.Condition(threading.Lock())
        self._queue: collections.deque[Job] = collections.deque()
        self._due: dict[str, tuple[float, Callable[[], None]]] = {}  # name -> (monotonic time, call)
        self._busy = 0  # jobs taken off the queue and not finished yet
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        self._finalizer_pid: int | None = None  # the process whose multiprocessing finalizer runs ``exit``
        self._exit_deadline: float | None = None  # set by the first exit: later ones share its time

    # -- handing work over ------------------------------------------------------------------

    def submit(self, job: Job, limit: int | None = None) -> bool:
        """Queue ``job``; False (the job not taken) if ``limit`` jobs are pending already.

        Where no thread should run it (interpreter shutdown), the job runs here and now.
        """
        if shutting_down():
            _quietly(job.run)
            return True
        with self._changed:
            if limit is not None and len(self._queue) + self._busy >= limit:
                return False
            self._queue.append(job)
            started = self._ensure_thread()
            self._changed.notify_all()
        if not started:
            self._run_queued_here()
        return True

    def later(self, name: str, delay: float, call: Callable[[], None]) -> None:
        """Run ``call`` in about ``delay`` seconds, once, however often it is asked for meanwhile.

        Once the interpreter is shutting down, nothing is left for later: ``call`` runs now.
        """
        if shutting_down():
            _quietly(call)
            return
        with self._changed:
            if name in self._due:
                return
            self._due[name] = (time.monotonic() + delay, call)
            started = self._ensure_thread()
            self._changed.notify_all()
        if not started:
            with self._changed:
                self._due.pop(name, None)
            _quietly(call)

    def at_exit(self, call: Callable[[], None]) -> None:
        """Run ``call`` when the process exits, before the queue is waited for."""
        self._exit_jobs.append(call)

    def on_fork(self, call: Callable[[], None]) -> None:
        """Run ``call`` in a forked child, once the parent's pending work is forgotten."""
        self._fork_jobs.append(call)

    # -- waiting --------------------------------------------------------------------------

    def pending(self) -> int:
        """How many queued jobs are not finished yet."""
        with self._changed:
            return len(self._queue) + self._busy

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until every job queued so far has run; False if ``timeout`` ran out first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._changed:
            while self._queue or self._busy:
                if self._thread is None or not self._thread.is_alive():
                    break  # nobody would run them: run them here, below
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._changed.wait(remaining)
        self._run_queued_here()
        return True

    # -- the thread -----------------------------------------------------------------------

    def _ensure_thread(self) -> bool:
        """Start the thread if this process has none (called holding the lock); False if it cannot."""
        if self._thread is not None and self._thread.is_alive():
            return True
        thread = threading.Thread(target=self._loop, name="cachelib-background", daemon=True)
        try:
            thread.start()
        except RuntimeError:  # interpreter shutdown: no new threads
            return False
        self._thread = thread
        self._exit_with_multiprocessing()
        return True

    def _exit_with_multiprocessing(self) -> None:
        """Have a multiprocessing worker, which leaves by ``os._exit``, run ``exit`` after its finalizers.

        Once per process: a forked worker's registry is emptied before it runs a task, and
        its thread, started afresh, registers again.
        """
        util = sys.modules.get("multiprocessing.util")
        if util is not None and self._finalizer_pid != os.getpid():
            util.Finalize(None, self.exit, exitpriority=0)
            self._finalizer_pid = os.getpid()

    def _loop(self) -> None:
        while True:
            with self._changed:
                while not self._queue and not self._ripe():
                    self._changed.wait(self._next_wait())
                job = self._queue.popleft() if self._queue else None
                calls = [] if job is not None else self._take_ripe()
                self._busy += job is not None
            try:
                if job is not None:
                    _quietly(job.run)
                for call in calls:
                    _quietly(call)
            finally:
                with self._changed:
                    self._busy -= job is not None
                    self._changed.notify_all()

    def _ripe(self) -> bool:
        now = time.monotonic()
        return any(due <= now for due, _ in self._due.values())

    def _next_wait(self) -> float | None:
        if not self._due:
            return None
        return max(0.0, min(due for due, _ in self._due.values()) - time.monotonic())

    def _take_ripe(self) -> list[Callable[[], None]]:
        now = time.monotonic()
        ripe = [name for name, (due, _) in self._due.items() if due <= now]
        return [self._due.pop(name)[1] for name in ripe]

    def _run_queued_here(self) -> None:
        """Run, in the calling thread, the jobs that no worker thread will run."""
        while True:
            with self._changed:
                if (self._thread is not None and self._thread.is_alive()) or not self._queue:
                    return
                job = self._queue.popleft()
            _quietly(job.run)

    # -- the fork and exit rules --------------------------------------------------------------

    def after_fork(self) -> None:
        """In a forked child: the parent's pending work is the parent's; start afresh."""
        for job in self._queue:
            _quietly(job.forget)
        self._reset()
        for call in self._fork_jobs:
            _quietly(call)

    def exit(self) -> None:
        """At exit: run the exit jobs and the delayed calls, and wait for the queue: ``EXIT_WAIT`` s in all.

        They run on the thread, so that a job stuck on a stalled store is abandoned
        when the time is up; where no thread can start (finalization), they run here.
        """
        if self._pid != os.getpid():
            self._reset()
        if self._exit_deadline is None:
            self._exit_deadline = time.monotonic() + EXIT_WAIT
        with self._changed:
            delayed = [call for _, call in self._due.values()]
            self._due.clear()
            self._queue.append(_Calls([*self._exit_jobs, *delayed]))
            started = self._ensure_thread()
            self._changed.notify_all()
        if not started:
            self._run_queued_here()
        self.drain(max(0.0, self._exit_deadline - time.monotonic()))


class _Calls:
    """Calls run one after another as one job (the exit jobs)."""

    def __init__(self, calls: list[Callable[[], None]]) -> None:
        self._calls = calls

    def run(self) -> None:
        for call in self._calls:
            _quietly(call)

    def forget(self) -> None:
        """In a forked child: the parent runs them."""


def _quietly(call: Callable[[], None]) -> None:
    """Run ``call``; background work never raises into whoever runs it (jobs report their own errors)."""
    with contextlib.suppress(Exception):
        call()


worker = Worker()
"""The process's worker, shared by every store and cache."""

_register_threading_exit = getattr(threading, "_register_atexit", None)
if _register_threading_exit is not None:
    _register_threading_exit(worker.exit)  # when the main thread returns, before executors shut down
atexit.register(worker.exit)  # and for what threads still running then did afterwards
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=worker.after_fork)
