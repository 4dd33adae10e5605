"""Faults on real filesystems: a full tmpfs, a read-only remount, statistics files changed underfoot.

Every case ends in the right result, at most a ``CacheWarning``, or a ``CacheError``:
never a signal (a child killed by SIGBUS fails the test), a hang, a traceback from the
command line, or a temporary file left behind. Fresh interpreters (``run_fresh``) and
forked children do the calls, so that a dying process shows as a failure, not as a
dead test run.
"""

from __future__ import annotations

import gc
import json
import multiprocessing
import os
import pickle
import re
import select
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from _system import (
    TESTS,
    ChildFailed,
    fill,
    fork_cli,
    kept_full,
    leftovers,
    readonly,
    run_fresh,
    run_with_timeout,
    snapshot,
    start_child,
    tmpfs,
    used_bytes,
    wait_until,
)
from _victims import block, computations, digest, memoized, square, square_calls
from helpers import entry_files, new_entry, slow_except, statistics_files

import cachelib

__all__ = ["tmpfs"]  # the fixture, imported so that the tests here can use it

pytestmark = pytest.mark.timeout(240)


def options(log: Path, **cache: Any) -> str:
    """The JSON options of a ``call`` scenario: the computation log and the cache's arguments."""
    return json.dumps({"log": str(log), **cache})


def digests(fresh: Any) -> list[str]:
    return [result["digest"] for result in fresh.report["results"]]


@pytest.fixture
def small(tmpfs: Any) -> Path:
    """A 4 MiB tmpfs with 4,096 inodes."""
    return tmpfs("4m", inodes=4096)  # type: ignore[no-any-return]


# --- a full filesystem ------------------------------------------------------------------


# Each case starts three interpreters on a full disk: the fast tier keeps a miss out of bytes.
@pytest.mark.parametrize(("call", "inodes"), [
    pytest.param("hit", False, id="hit-bytes", marks=pytest.mark.slow),
    pytest.param("hit", True, id="hit-bytes-and-inodes", marks=pytest.mark.slow),
    pytest.param("miss", False, id="miss-bytes"),
    pytest.param("miss", True, id="miss-bytes-and-inodes", marks=pytest.mark.slow),
])
def test_the_first_call_of_a_fresh_process_on_a_full_disk(
    small: Path, tmp_path: Path, call: str, inodes: bool
) -> None:
    """A fresh interpreter's first calls on a full filesystem return the right result: no SIGBUS."""
    location, log = small / "cache", tmp_path / "log"
    run_with_timeout(square_calls, str(location), str(log), [1]).result()  # set-up: forked
    fill(small, inodes=inodes)
    x = 1 if call == "hit" else 2
    fresh = run_fresh("call", location, options(log), f"square:{x}", f"square:{x}")
    assert digests(fresh) == [digest(square(x))] * 2
    warned = fresh.cache_warnings()
    if call == "hit":
        assert computations(log) == ["square 1"], "a hit on a full disk is still a hit"
    else:
        assert computations(log) == ["square 1", "square 2", "square 2"]
        assert warned, "a result that could not be stored must say so"
    assert leftovers(location) == []


def _calls_while_the_disk_fills(location: str, log: str, mount: Path) -> list[str]:
    f = memoized(location, square)
    results = [f(1, log=log)]
    fill(mount)
    results += [f(1, log=log), f(2, log=log), f(2, log=log)]
    time.sleep(1.5)  # the statistics of those calls are written meanwhile, and fail
    results += [f(1, log=log), f(3, log=log)]
    return [digest(result) for result in results]


@pytest.mark.slow  # waits 1.5 s for statistics: test_the_first_call_..._on_a_full_disk[miss-bytes] is quick
def test_calls_of_a_running_process_when_the_disk_fills(small: Path, tmp_path: Path) -> None:
    """Hits keep hitting and misses keep computing once the disk is full under a running process."""
    location, log = small / "cache", tmp_path / "log"
    outcome = run_with_timeout(_calls_while_the_disk_fills, str(location), str(log), small)
    assert outcome.result() == [digest(square(x)) for x in (1, 1, 2, 2, 1, 3)]
    assert outcome.cache_warnings()
    assert computations(log) == ["square 1", "square 2", "square 2", "square 3"]
    assert leftovers(location) == []


def _big_write(location: str, log: str, mount: Path, mmap_mode: str | None, compress: Any) -> list[Any]:
    f = memoized(location, block, mmap_mode=mmap_mode, compress=compress)
    f(0, 4096, log=log)  # the location and the function's directory exist from here on
    before = used_bytes(mount)
    first = f(1, 50_000_000, log=log)
    after = used_bytes(mount)
    second = f(1, 50_000_000, log=log)
    return [digest(first), digest(second), after - before]


# A 50 MB write each: the fast tier keeps the compressed one (frames); a raw write failing for
# want of space is test_the_first_call_of_a_fresh_process_on_a_full_disk[miss-bytes].
@pytest.mark.parametrize(("mmap_mode", "compress"), [
    pytest.param(None, False, id="raw", marks=pytest.mark.slow),
    pytest.param("r", False, id="mmap", marks=pytest.mark.slow),
    pytest.param(None, "zstd", id="zstd"),
])
def test_a_50_mb_result_on_a_filesystem_too_small_for_it(
    tmpfs: Any, tmp_path: Path, mmap_mode: str | None, compress: Any
) -> None:
    """A write that runs out of space mid-way returns the result, warns, and leaves no partial file."""
    mount = tmpfs("16m")
    location, log = mount / "cache", tmp_path / "log"
    outcome = run_with_timeout(_big_write, str(location), str(log), mount, mmap_mode, compress, timeout=120)
    first, second, growth = outcome.result()
    assert first == second == digest(block(1, 50_000_000))
    assert outcome.cache_warnings(), "a result that could not be stored must say so"
    assert growth < 256 * 1024, f"the failed write left {growth} bytes on the filesystem"
    assert computations(log) == ["block 0 4096", "block 1 50000000", "block 1 50000000"]
    assert leftovers(location) == []


def test_reduce_size_on_a_full_disk_frees_it(small: Path, tmp_path: Path) -> None:
    """Eviction works on a full filesystem (it only deletes), and the cache stores again after it."""
    location, log = small / "cache", tmp_path / "log"
    run_fresh("call", location, options(log), *[f"block:{i}:65536" for i in range(24)])
    fill(small, inodes=True)

    def evict_then_store() -> tuple[int, str]:
        cache = cachelib.Cache(str(location))
        removed = cache.reduce_size(bytes_limit=300_000)
        f = cache.memoize(ignore=["log"])(block)
        return removed, digest(f(99, 65536, log=str(log)))

    outcome = run_with_timeout(evict_then_store)
    removed, result = outcome.result()
    outcome.cache_warnings()
    assert result == digest(block(99, 65536))
    assert removed >= 20
    assert len(entry_files(location)) == 24 - removed + 1, "the freed space stores the next result"
    assert leftovers(location) == []


@pytest.mark.slow  # two fresh interpreters on a full disk: test_the_first_call_... is the quick case
def test_a_write_under_bytes_limit_that_fills_the_disk(small: Path, tmp_path: Path) -> None:
    """An entry that takes the last free pages, then the size bookkeeping fails: the result is right."""
    location, log = small / "cache", tmp_path / "log"
    run_fresh("call", location, options(log, bytes_limit="1M"), "block:0:65536")
    size = entry_files(location)[0].stat().st_size
    filler = fill(small)
    filler.release(size)
    fresh = run_fresh("call", location, options(log, bytes_limit="1M"), "block:1:65536", "block:1:65536")
    assert digests(fresh) == [digest(block(1, 65536))] * 2
    fresh.cache_warnings()
    assert leftovers(location) == []


@pytest.mark.slow
def test_eviction_while_another_process_keeps_the_disk_full(small: Path, tmp_path: Path) -> None:
    """Writes under bytes_limit while every freed page is taken at once: right results, no leftovers."""
    location, log = small / "cache", tmp_path / "log"
    calls = [f"block:{i}:32768" for i in range(40)]
    run_fresh("call", location, options(log, bytes_limit="200K"), *calls[:8])
    with kept_full(small):
        fresh = run_fresh("call", location, options(log, bytes_limit="200K"), *calls, timeout=120)
    assert digests(fresh) == [digest(block(i, 32768)) for i in range(40)]
    fresh.cache_warnings()
    assert leftovers(location) == []


def _cache_entries(location: Path) -> dict[str, Any]:
    state = snapshot(location)
    return {path: value for path, value in state.items() if path.endswith(".cl")}


def _counts(location: str) -> tuple[int, int]:
    info = cachelib.Cache(location).info()
    return info.hits, info.misses


def _wait_for_counts(location: str, expected: tuple[int, int], seconds: float = 30.0) -> None:
    """Return once ``location`` counts ``expected`` (hits, misses), or after ``seconds``."""
    wait_until(lambda: _counts(location) == expected, seconds, interval=0.1)


@pytest.mark.slow  # three fresh interpreters and a count: test_reduce_size_on_a_full_disk_frees_it is quick
def test_prune_on_a_full_disk(small: Path, tmp_path: Path) -> None:
    """``cachelib prune`` with nothing to evict on a full disk: no traceback, no temp file, no lost count."""
    location, log = small / "cache", tmp_path / "log"
    for x in range(3):
        run_fresh("call", location, options(log), f"square:{x}", f"square:{x}")
    entries = _cache_entries(location)
    filler = fill(small, inodes=True)
    fork_cli("--location", location, "prune", "--older-than", "1000d")
    assert leftovers(location) == []
    assert _cache_entries(location) == entries
    filler.remove()
    assert run_with_timeout(_counts, str(location)).result() == (3, 3), "counts lost or counted twice"


@pytest.mark.slow  # three fresh interpreters: test_reduce_size_on_a_full_disk_frees_it is the quick case
def test_prune_that_evicts_on_a_full_disk(small: Path, tmp_path: Path) -> None:
    """``cachelib prune --max-size 0`` on a full disk removes every entry and succeeds."""
    location, log = small / "cache", tmp_path / "log"
    for x in range(3):
        run_fresh("call", location, options(log), f"square:{x}", f"square:{x}")
    fill(small, inodes=True)
    process = fork_cli("--location", location, "prune", "--max-size", "0")
    assert process.returncode == 0, process.stderr
    assert entry_files(location) == []
    assert leftovers(location) == []


# --- a read-only filesystem ----------------------------------------------------------------


class Frozen:
    """A cache on a tmpfs remounted read-only: square(1) intact, square(2) damaged."""

    def __init__(self, mount: Path, log: Path) -> None:
        self.mount = mount
        self.location = mount / "cache"
        self.log = log
        run_with_timeout(square_calls, str(self.location), str(log), [1, 1]).result()  # set-up: forked
        before = entry_files(self.location)
        run_with_timeout(square_calls, str(self.location), str(log), [2]).result()
        self.damaged = new_entry(self.location, before)
        data = bytearray(self.damaged.read_bytes())
        data[len(data) // 2] ^= 0xFF
        self.damaged.write_bytes(bytes(data))
        self.before = snapshot(self.location)


@pytest.fixture
def frozen(tmpfs: Any, tmp_path: Path) -> Any:
    """A cache on a read-only filesystem (read-write again after the test)."""
    cache = Frozen(tmpfs("8m"), tmp_path / "log")
    with readonly(cache.mount):
        yield cache


@pytest.mark.slow  # a read-only cache: test_misses_compute_... and test_verify_fix_... are the quick cases
def test_hits_still_hit_on_a_read_only_filesystem(frozen: Frozen) -> None:
    """A read-only remount keeps every intact entry usable: hits, no computation."""
    fresh = run_fresh("call", frozen.location, options(frozen.log), "square:1", "square:1")
    assert digests(fresh) == [digest(square(1))] * 2
    fresh.cache_warnings()
    assert computations(frozen.log) == ["square 1", "square 2"], "a hit recomputed"


def test_misses_compute_with_a_warning_on_a_read_only_filesystem(frozen: Frozen) -> None:
    """A miss on a read-only filesystem computes and returns the result, with a CacheWarning."""
    fresh = run_fresh("call", frozen.location, options(frozen.log), "square:3", "square:2")
    assert digests(fresh) == [digest(square(3)), digest(square(2))]
    assert fresh.cache_warnings(), "a result that could not be stored must say so"
    assert computations(frozen.log) == ["square 1", "square 2", "square 3", "square 2"]
    assert snapshot(frozen.location) == frozen.before


@pytest.mark.slow  # the command line on a read-only cache: test_prune_... and test_verify_fix_... are quick
def test_cachelib_clear_on_a_read_only_filesystem_fails_in_one_line(frozen: Frozen) -> None:
    """``cachelib clear`` that removes nothing exits non-zero with one line, never "cleared"."""
    process = fork_cli("--location", frozen.location, "clear")
    assert process.returncode != 0
    assert process.stderr.strip(), "the failure is said on stderr"
    assert not re.search(r"^cleared", process.stdout, re.MULTILINE), process.stdout
    assert snapshot(frozen.location) == frozen.before


@pytest.mark.parametrize("what", slow_except(["cache.clear", "function.clear"], "cache.clear"))
def test_clear_on_a_read_only_filesystem_is_never_silent(frozen: Frozen, what: str) -> None:
    """``Cache.clear()`` and ``f.clear()`` that cannot remove entries raise a CacheError or warn."""

    def clear() -> None:
        cache = cachelib.Cache(str(frozen.location))
        if what == "cache.clear":
            cache.clear()
        else:
            cache.memoize(ignore=["log"])(square).clear()

    outcome = run_with_timeout(clear)
    if outcome.error is not None:
        assert isinstance(outcome.error, cachelib.CacheError), outcome.trace
    else:
        assert outcome.cache_warnings(), "clear() claimed success and removed nothing"
    assert snapshot(frozen.location) == frozen.before


def test_prune_on_a_read_only_filesystem_fails_in_one_line(frozen: Frozen) -> None:
    """``cachelib prune`` that must evict but cannot: non-zero exit, one line, entries still there."""
    process = fork_cli("--location", frozen.location, "prune", "--older-than", "0s")
    assert process.returncode != 0
    assert process.stderr.strip()
    assert snapshot(frozen.location) == frozen.before


def test_verify_fix_on_a_read_only_filesystem(frozen: Frozen) -> None:
    """``cachelib verify --fix`` finds the damaged entry, cannot remove it, and does not claim it did."""
    process = fork_cli("--location", frozen.location, "verify", "--fix")
    assert process.returncode != 0
    claimed = [line for line in process.stdout.splitlines() if line.startswith("removed")]
    assert not claimed, claimed
    assert frozen.damaged.exists()
    assert snapshot(frozen.location) == frozen.before


@pytest.mark.slow  # the command line on a read-only cache: test_prune_... and test_verify_fix_... are quick
@pytest.mark.parametrize("command", [["info"], ["ls", "--func", "square"], ["verify"]])
def test_reading_commands_on_a_read_only_filesystem(frozen: Frozen, command: list[str]) -> None:
    """``info``, ``ls`` and ``verify`` work on a read-only cache (verify reports the damaged entry)."""
    process = fork_cli("--location", frozen.location, *command)
    assert process.returncode == (1 if command == ["verify"] else 0), process.stderr
    if command != ["verify"]:
        assert "square" in process.stdout


# --- statistics files changed under a running process ---------------------------------------


def _hammer(location: str, seconds: float) -> tuple[int, int]:
    f = memoized(location, square)
    expected = [digest(square(x)) for x in range(8)]
    deadline = time.monotonic() + seconds
    calls = wrong = 0
    while time.monotonic() < deadline:
        x = calls % 8
        wrong += digest(f(x)) != expected[x]
        calls += 1
    return calls, wrong


def _tamper(path: Path, round_: int) -> None:
    """Do one of the things another process can do to a statistics file."""
    action = round_ % 7
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return  # a FIFO or link planted in an earlier round: opening it here would block the test
        if action == 0:
            os.truncate(path, 0)
        elif action == 1:
            path.write_bytes(b"\xff" * 100)
        elif action == 2:
            path.write_text('{"hits": "many", "misses": -1, "stats": [1], "absorbed": {"a": 1}}')
        elif action == 3:
            os.unlink(path)
        elif action == 4:
            os.unlink(path)
            os.mkfifo(path)
        elif action == 5:
            os.unlink(path)
            os.symlink("/dev/zero", path)
        else:
            os.truncate(path, 1 << 33)  # a sparse 8 GiB file
    except OSError:
        pass


# A stress test, 5 s of calls while the files change: test_hostile_paths's
# test_hostile_state_files_never_hurt_a_call[garbage] gives each call damaged statistics quickly.
@pytest.mark.slow
def test_statistics_files_changed_under_a_running_process(tmp_path: Path) -> None:
    """Truncating, replacing or removing statistics files never makes a call fail, hang or die."""
    location = tmp_path / "cache"
    child = start_child(_hammer, str(location), 5.0)
    deadline = time.monotonic() + 5.0
    round_ = 0
    while time.monotonic() < deadline:
        for path in statistics_files(location):
            _tamper(path, round_)
            round_ += 1
        time.sleep(0.01)
    outcome = child.wait(60)
    calls, wrong = outcome.result()
    assert wrong == 0
    assert calls > 100
    outcome.cache_warnings()
    assert round_ > 0, "no statistics file appeared to tamper with"
    hits, misses = run_with_timeout(_counts, str(location)).result()
    assert hits >= 0 and misses >= 0
    for command in (["info"], ["prune", "--older-than", "1000d"], ["verify"]):
        fork_cli("--location", location, *command)


def test_forked_workers_count_every_call(tmp_path: Path) -> None:
    """A process's calls and its forked workers' calls are all counted, none twice."""
    location = tmp_path / "cache"
    fresh = run_fresh("workers", location, 3)
    assert fresh.report["exit codes"] == [0, 0, 0]
    fresh.cache_warnings()
    assert run_with_timeout(_counts, str(location)).result() == (3, 4)


@pytest.mark.slow  # 31 processes: test_forked_workers_count_every_call is the quick case
def test_counts_of_many_finished_processes_are_folded(tmp_path: Path) -> None:
    """After 31 processes, ``info()`` counts them all and leaves few statistics files behind."""
    location = tmp_path / "cache"
    run_fresh("workers", location, 30, timeout=120)
    long_ago = time.time() - 2 * 86400
    for path in statistics_files(location):
        os.utime(path, (long_ago, long_ago), follow_symlinks=False)
    assert run_with_timeout(_counts, str(location)).result() == (30, 31)
    remaining = statistics_files(location)
    assert len(remaining) <= 4, remaining
    assert run_with_timeout(_counts, str(location)).result() == (30, 31)


@pytest.mark.slow  # waits a second for the counts: test_forked_workers_count_every_call is the quick case
def test_counts_survive_sigkill_after_they_were_written(tmp_path: Path) -> None:
    """A process killed with SIGKILL keeps the counts it made seconds before dying."""
    location = tmp_path / "cache"
    launch = "import sys; sys.path.insert(0, sys.argv.pop(1)); import _victims; _victims.main(sys.argv[1:])"
    command = [sys.executable, "-c", launch, str(TESTS), "killed", str(location), "5"]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) as process:
        try:
            assert process.stdout is not None
            ready, _, _ = select.select([process.stdout], [], [], 60)
            if not ready or process.stdout.readline().strip() != "ready":
                raise ChildFailed("the process did not get ready to be killed")
            _wait_for_counts(str(location), (5, 5))  # written about a second after the calls
        finally:
            process.send_signal(signal.SIGKILL)
            process.wait(30)
    assert run_with_timeout(_counts, str(location)).result() == (5, 5)


def test_counts_of_a_function_dropped_right_after_its_call_are_kept(tmp_path: Path) -> None:
    """A worker unpickling the function for each task and dropping it keeps its counts (written in 1 s)."""
    location = str(tmp_path / "cache")
    process = multiprocessing.get_context("fork").Process(target=_wait_then_exit,
                                                           args=(location, 5, 30.0))
    process.start()
    process.join(60)
    assert process.exitcode == 0
    info = cachelib.Cache(location).info()
    assert (info.hits, info.misses) == (4, 1)


def _wait_then_exit(location: str, calls: int, seconds: float) -> None:
    f = cachelib.Cache(location).memoize(ignore=["log"])(square)
    payload = pickle.dumps(f)
    for _ in range(calls):
        pickle.loads(payload)(3)
    gc.collect()
    _wait_for_counts(location, (calls - 1, 1), seconds)  # the flusher writes about 1 s after a call
    os._exit(0)  # then leave as a killed worker does: no at-exit flush
