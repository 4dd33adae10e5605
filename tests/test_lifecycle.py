"""Processes that fork or exit while cachelib's work is in flight: real forks, real kills, real exits.

A forked child shares its parent's open file descriptions, so a key lock the parent
holds must not outlive the parent in the child; a call made while the interpreter
shuts down (a non-daemon thread still running after the main thread returned, an
``atexit`` handler) works as the plain function does, stored and counted; and a job
of many short processes leaves a bounded number of statistics files behind.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from _system import TESTS, files_under, run_with_timeout, start_child
from _victims import computations, digest, memoized, note, square

import cachelib
from cachelib._entries.stats import FOLD_AT_EXIT

fork = multiprocessing.get_context("fork")
pytestmark = pytest.mark.timeout(180)


# --- key locks and forked children ---------------------------------------------------------


def _sleep_forever(log: str) -> None:
    note(log, f"child {os.getpid()}")
    time.sleep(120)


def _compute(x: int, hold: bool = False, log: str | None = None) -> int:
    """Quick; or, holding the key, start a forked worker that outlives this process, then compute
    for a minute (the holder is killed long before)."""
    if hold:
        assert log is not None
        fork.Process(target=_sleep_forever, args=(log,), daemon=False).start()
        note(log, f"parent {os.getpid()}")
        time.sleep(60)
    note(log, "computed")
    return x


def _keyed_on_x(location: str, lock: str, **options: Any) -> Any:
    cache = cachelib.Cache(location, lock=lock, **options)
    return cache.memoize(ignore=["hold", "log"])(_compute)


def _hold_while_a_child_lives(location: str, log: str, lock: str) -> None:
    _keyed_on_x(location, lock)(3, hold=True, log=log)


def _waiting_caller(location: str, log: str, lock: str) -> tuple[int, float]:
    f = _keyed_on_x(location, lock, lock_timeout=60, on_lock_timeout="raise")
    started = time.monotonic()
    result = f(3, log=log)
    return result, time.monotonic() - started


@pytest.mark.parametrize("lock", ["file", "soft"])
def test_a_forked_child_does_not_keep_its_killed_parents_key_lock(tmp_path: Path, lock: str) -> None:
    """A holder computing a key starts a 'fork' worker, then is killed: the next caller takes the
    key at once, not after lock_timeout (60 s here), though the child still runs."""
    location, log = str(tmp_path / "cache"), str(tmp_path / "log")
    holder = start_child(_hold_while_a_child_lives, location, log, lock)
    children: list[int] = []
    try:
        deadline = time.monotonic() + 30
        while not (lines := computations(log)) or not any(line.startswith("parent") for line in lines) \
                or not any(line.startswith("child") for line in lines):
            assert time.monotonic() < deadline, f"the holder did not start its child: {computations(log)}"
            time.sleep(0.02)
        children = [int(line.split()[1]) for line in computations(log) if line.startswith("child")]
        os.kill(holder.pid, signal.SIGKILL)
        _, status = os.waitpid(holder.pid, 0)
        assert os.WIFSIGNALED(status)
        os.kill(children[0], 0)  # the child lives on, holding whatever it inherited
        result, waited = run_with_timeout(_waiting_caller, location, log, lock, timeout=90).result()
    finally:
        holder.kill()
        os.close(holder.pipe)
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    assert result == 3
    assert waited < 30, f"the caller waited {waited:.1f} s for a lock its killed holder's child kept"
    assert computations(log)[-1] == "computed"


def _take_fork_and_let_the_child_release(location: str, lock_kind: str) -> bool:
    """Hold a key lock, fork a child that releases its copy and exits; say if the lock is still ours."""
    entries = cachelib.Cache(location, lock=lock_kind).entries
    assert entries is not None
    lock = entries.lock("f-000000000000", "ab" * 16, {"function": "f"})
    assert lock is not None and lock.acquire(5.0)
    pid = os.fork()
    if pid == 0:  # the child: leave through the lock's release, as a call path forked inside would
        try:
            lock.release()
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    other = run_with_timeout(_try_lock, location, lock_kind, timeout=30).result()
    lock.release()
    return other


def _try_lock(location: str, lock_kind: str) -> bool:
    entries = cachelib.Cache(location, lock=lock_kind).entries
    assert entries is not None
    lock = entries.lock("f-000000000000", "ab" * 16, {"function": "f"})
    assert lock is not None
    taken = lock.acquire(0.5)
    if taken:
        lock.release()
    return taken


@pytest.mark.parametrize("lock", ["file", "soft"])
def test_a_forked_child_releasing_its_copy_leaves_the_parents_lock_held(tmp_path: Path, lock: str) -> None:
    """A child that unwinds through an inherited lock's release neither unlocks nor removes it."""
    location = str(tmp_path / "cache")
    assert run_with_timeout(_take_fork_and_let_the_child_release, location, lock).result() is False
    assert run_with_timeout(_try_lock, location, lock).result() is True  # released by its holder


# --- interpreter shutdown ----------------------------------------------------------------------

_SHUTDOWN_SCRIPT = """
import atexit, sys, threading, time
sys.path.insert(0, sys.argv[1])
import numpy as np
import cachelib
from _victims import memoized, note

location, log, how = sys.argv[2], sys.argv[3], sys.argv[4]


def total(a, log=None):
    note(log, "total")
    return float(a.sum())


f = memoized(location, total)
big = np.arange(2_000_000, dtype=np.float64)  # 16 MB: hashed on the thread pool, when there is one


def call():
    print("result", f(big, log=log), flush=True)


if how == "thread":
    def after_main():
        while not threading._SHUTTING_DOWN:  # until the main thread has returned
            time.sleep(0.01)
        call()
    threading.Thread(target=after_main).start()
else:
    atexit.register(call)
"""


@pytest.mark.parametrize("how", ["thread", pytest.param("atexit", marks=pytest.mark.slow)])
def test_a_call_during_interpreter_shutdown_works_and_is_stored(tmp_path: Path, how: str) -> None:
    """A memoized call with a large argument from a non-daemon thread outliving the main thread, or
    from an atexit handler, returns the right result, stores it and counts it; a second run hits."""
    location, log = tmp_path / "cache", tmp_path / "log"
    script = tmp_path / "shutdown.py"
    script.write_text(_SHUTDOWN_SCRIPT)
    expected = float(sum(range(2_000_000)))
    for _ in range(2):
        process = subprocess.run([sys.executable, str(script), str(TESTS), str(location), str(log), how],
                                 capture_output=True, text=True, timeout=120, check=False)
        assert process.returncode == 0, process.stderr
        assert process.stderr == "", process.stderr
        assert process.stdout.split() == ["result", repr(expected)]
    assert computations(log) == ["total"], "the second run did not hit what the first stored"
    info = run_with_timeout(_info_counts, str(location)).result()
    assert info == (1, 1), f"hits and misses counted: {info}"


def _info_counts(location: str) -> tuple[int, int]:
    info = cachelib.Cache(location).info()
    return info.hits, info.misses


# --- statistics of many short processes -----------------------------------------------------------


def _one_call(args: tuple[str, int]) -> str:
    location, x = args
    return digest(memoized(location, square)(x % 7))


def _statistics_files(location: Path) -> list[Path]:
    return [p for p in files_under(location) if "stats" in p.relative_to(location).parts[:-1]]


@pytest.mark.slow
def test_statistics_files_of_many_short_processes_stay_few(tmp_path: Path) -> None:
    """200 worker processes of one call each (``maxtasksperchild=1``) leave a bounded number of
    statistics files, without anyone running info or prune; every call is still counted."""
    location = tmp_path / "cache"
    pool = fork.Pool(4, maxtasksperchild=1)
    results = pool.map(_one_call, [(str(location), x) for x in range(200)], chunksize=1)
    pool.close()  # not terminate(), which would kill the last workers as they write their counts
    pool.join()
    assert results == [digest(square(x % 7)) for x in range(200)]
    files = _statistics_files(location)
    bound = FOLD_AT_EXIT + 4 + 2  # + the processes exiting together, + a merged object and its lock
    assert len(files) <= bound, f"{len(files)} statistics files left by 200 processes"
    hits, misses = run_with_timeout(_info_counts, str(location)).result()
    assert hits + misses == 200 and misses >= 7, (hits, misses)
