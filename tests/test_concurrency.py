"""Many workers, crashes and kills: real processes racing on one real cache directory."""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _system import wait_until
from _victims import computations, note
from helpers import entry_path

import cachelib
from cachelib._entries.budget import clean_leftovers

fork = multiprocessing.get_context("fork")


def _stampede_worker(location: str, log: str, start: float, queue: multiprocessing.Queue) -> None:
    cache = cachelib.Cache(location)

    @cache.memoize
    def slow_square(x: int) -> np.ndarray:
        note(log, str(x))
        time.sleep(0.5)
        return np.full(1000, x * x)

    time.sleep(max(0.0, start - time.time()))
    queue.put(int(slow_square(7)[0]))


@pytest.mark.slow  # eight processes: test_memoize's test_processes_compute_the_same_key_once has four
@pytest.mark.timeout(60)
def test_a_stampede_of_eight_processes_computes_once(tmp_path: Path) -> None:
    """Eight processes calling one uncached key at the same moment run it exactly once."""
    log = tmp_path / "calls.log"
    queue = fork.Queue()
    start = time.time() + 0.5
    workers = [
        fork.Process(target=_stampede_worker, args=(str(tmp_path / "c"), str(log), start, queue))
        for _ in range(8)
    ]
    for worker in workers:
        worker.start()
    results = [queue.get(timeout=30) for _ in workers]
    for worker in workers:
        worker.join(10)
        assert worker.exitcode == 0
    assert results == [49] * 8
    assert computations(log) == ["7"]


def _hold_key_then_die(location: str, log: str) -> None:
    cache = cachelib.Cache(location)

    @cache.memoize
    def slow_square(x: int) -> int:
        note(log, str(x))
        time.sleep(60)  # killed long before this ends
        return x * x

    slow_square(3)


@pytest.mark.timeout(60)
def test_a_lock_held_by_a_killed_process_does_not_block(tmp_path: Path) -> None:
    """The kernel frees a dead process's lock: the next caller computes at once."""
    location, log = tmp_path / "c", tmp_path / "calls.log"
    holder = fork.Process(target=_hold_key_then_die, args=(str(location), str(log)))
    holder.start()
    wait_until(lambda: bool(computations(log)), 20, interval=0.02)
    os.kill(holder.pid, signal.SIGKILL)
    holder.join()

    cache = cachelib.Cache(location, lock_timeout=30, on_lock_timeout="raise")

    @cache.memoize
    def slow_square(x: int) -> int:
        note(log, str(x))
        return x * x

    started = time.perf_counter()
    assert slow_square(3) == 9
    assert time.perf_counter() - started < 10  # far below the 30 s lock timeout
    assert computations(log) == ["3", "3"]


def _big_result(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(1_000_000)  # 8 MB


def _write_then_get_killed(location: str, seed: int) -> None:
    cachelib.Cache(location).memoize(_big_result)(seed)


# 200 writers killed one after the other: the fast tier keeps a killed holder
# (test_a_lock_held_by_a_killed_process_does_not_block) and torn entries (test_durability's
# test_prefixes_of_a_large_entry_are_misses)
@pytest.mark.slow
@pytest.mark.timeout(240)
def test_sigkill_at_random_points_never_leaves_a_torn_entry(tmp_path: Path) -> None:
    """200 writers killed at random moments: every entry is absent or whole and right."""
    location = tmp_path / "c"
    cache = cachelib.Cache(location)
    make = cache.memoize(_big_result)  # the same function the writers memoize

    # How long one writer takes here, so that kills land before, during and after it.
    started = time.perf_counter()
    timing = fork.Process(target=_write_then_get_killed, args=(str(location / "timing"), 0))
    timing.start()
    timing.join()
    window = 1.3 * (time.perf_counter() - started)

    rng = random.Random(1234)
    outcomes = {"absent": 0, "complete": 0}
    for trial in range(200):
        seed = trial % 20
        writer = fork.Process(target=_write_then_get_killed, args=(str(location), seed))
        writer.start()
        time.sleep(rng.uniform(0.0, window))
        os.kill(writer.pid, signal.SIGKILL)
        writer.join()
        entry = entry_path(make, seed)
        if entry.exists():
            stored = cachelib.load(entry)  # raises if torn: the test fails
            np.testing.assert_array_equal(stored, _big_result(seed))
            outcomes["complete"] += 1
        else:
            outcomes["absent"] += 1
        entry.unlink(missing_ok=True)  # every trial is a fresh write to interrupt
    print(f"\n200 SIGKILL trials within {window * 1000:.0f} ms of start: {outcomes}")
    assert outcomes["absent"] and outcomes["complete"], outcomes

    leftovers = list(location.rglob("*.tmp"))
    removed = clean_leftovers(cache.entries)
    assert removed >= len(leftovers)
    assert not list(location.rglob("*.tmp"))
    for seed in range(20):  # and the next calls recompute or hit, always right
        np.testing.assert_array_equal(make(seed), _big_result(seed))


def _stress_worker(location: str, seconds: float, worker: int, queue: multiprocessing.Queue) -> None:
    warnings.simplefilter("ignore", cachelib.CacheWarning)  # counted below, never silent
    cache = cachelib.Cache(location, fsync=False)

    @cache.memoize
    def vector(i: int) -> np.ndarray:
        return np.arange(i * 1000, dtype=np.float64) + i

    @cache.memoize(compress="zstd")
    def table(i: int) -> dict:
        return {"i": i, "squares": np.arange(i) ** 2, "label": f"row-{i}"}

    rng = random.Random(worker)
    counts = {"calls": 0, "wrong": 0, "errors": 0, "clears": 0, "reduces": 0}
    deadline = time.time() + seconds
    while time.time() < deadline:
        action = rng.random()
        try:
            if action < 0.01:
                cache.clear()
                counts["clears"] += 1
            elif action < 0.03:
                cache.reduce_size(bytes_limit="2M")
                counts["reduces"] += 1
            elif action < 0.55:
                i = rng.randrange(40)
                counts["calls"] += 1
                if not np.array_equal(vector(i), np.arange(i * 1000, dtype=np.float64) + i):
                    counts["wrong"] += 1
            else:
                i = rng.randrange(40)
                counts["calls"] += 1
                got = table(i)
                if got["i"] != i or got["label"] != f"row-{i}" or not np.array_equal(
                    got["squares"], np.arange(i) ** 2
                ):
                    counts["wrong"] += 1
        except Exception as exc:  # any exception is a failure of the cache
            counts["errors"] += 1
            print(f"worker {worker}: {type(exc).__name__}: {exc}")
    queue.put(counts)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_stress_random_calls_clears_and_evictions(tmp_path: Path) -> None:
    """Six processes calling, clearing and evicting on one directory: no error, no wrong result."""
    seconds = float(os.environ.get("CACHELIB_STRESS_SECONDS", "30"))
    queue = fork.Queue()
    started = time.perf_counter()
    workers = [
        fork.Process(target=_stress_worker, args=(str(tmp_path / "c"), seconds, n, queue))
        for n in range(6)
    ]
    for worker in workers:
        worker.start()
    totals: dict[str, int] = {}
    for _ in workers:
        for name, value in queue.get(timeout=seconds + 60).items():
            totals[name] = totals.get(name, 0) + value
    for worker in workers:
        worker.join(10)
        assert worker.exitcode == 0
    elapsed = time.perf_counter() - started
    print(f"\nstress: {totals['calls']:,} calls, {totals['clears']} clears, "
          f"{totals['reduces']} evictions by 6 processes in {elapsed:.1f} s")
    assert totals["calls"] > 1000
    assert totals["errors"] == 0
    assert totals["wrong"] == 0


class _Stall:
    """Pickles only after a long pause: a writer pickling it is stopped mid-store, its file half written."""

    def __init__(self, ready: str) -> None:
        self.ready = ready

    def __reduce__(self) -> Any:
        Path(self.ready).touch()
        time.sleep(120)
        return (_Stall, (self.ready,))


def _write_big_then_stall(location: str, ready: str, seed: int) -> None:
    cache = cachelib.Cache(location, bytes_limit="30M")

    @cache.memoize(ignore=["ready"])
    def big_and_stalling(seed: int, ready: str) -> tuple[np.ndarray, _Stall]:
        return np.random.default_rng(seed).integers(0, 2**63, 25 << 17, dtype=np.uint64), _Stall(ready)

    big_and_stalling(seed, ready)


def _store_under_a_limit(location: str, count: int) -> None:
    cache = cachelib.Cache(location, bytes_limit="30M")

    @cache.memoize
    def block(seed: int) -> np.ndarray:
        return np.random.default_rng(seed).integers(0, 2**63, 1 << 17, dtype=np.uint64)  # 1 MiB

    for seed in range(count):
        block(seed)


def _bytes_under(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_writers_killed_mid_store_do_not_escape_bytes_limit(tmp_path: Path) -> None:
    """8 writers killed (SIGTERM, SIGKILL) halfway through a 25 MB store leave temporary files;
    the next stores under bytes_limit="30M" remove them with the entries they evict."""
    location = tmp_path / "cache"
    for writer in range(8):
        ready = tmp_path / f"ready-{writer}"
        process = fork.Process(target=_write_big_then_stall, args=(str(location), str(ready), writer))
        process.start()
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert time.monotonic() < deadline and process.is_alive(), "the writer never reached its pause"
            time.sleep(0.02)
        os.kill(process.pid, signal.SIGTERM if writer % 2 else signal.SIGKILL)
        process.join(30)
    leftovers = list(location.rglob("*.tmp"))
    assert len(leftovers) == 8, "the killed writers left no half-written files"
    assert _bytes_under(location) > (160 << 20), "the writers were killed before writing 20 MB each"
    writer = fork.Process(target=_store_under_a_limit, args=(str(location), 40))
    writer.start()
    writer.join(120)
    assert writer.exitcode == 0
    assert not list(location.rglob("*.tmp")), "temporary files of killed writers outlived the limit's scans"
    used = _bytes_under(location)
    assert used <= (30 << 20) + (2 << 20), f"{used >> 20} MiB under a 30 MiB limit"
