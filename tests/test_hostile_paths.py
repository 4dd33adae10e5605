"""Hostile paths: FIFOs, links, devices, sockets and foreign files wherever cachelib looks.

Every case runs in a forked child under a deadline (a blocking open of a FIFO is a
hang, not a slow test), ends in the right result with at most a ``CacheWarning``, and
leaves every file outside the cache exactly as it was. The command line answers each
case in at most one line on stderr, never a traceback. Also here: ``clear`` of
directories that are not cachelib's, concurrent ``clear()`` against ``mmap_mode`` hits
in real processes, threads hammering one cache, and hostile files for ``load`` under a
memory cap.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pickle
import random
import shutil
import socket
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zstandard
from _system import (
    Outcome,
    fork_cli,
    memory_capped,
    run_with_timeout,
    snapshot,
    start_child,
    wait_for_new_statistics,
    wait_until,
)
from _victims import computations, digest, memoized, plain, square, square_calls, stamp_problem, stamped
from helpers import (
    end_record,
    entry_files,
    files_under,
    forge,
    new_entry,
    record,
    slow_except,
    statistics_files,
    stream_header,
)

import cachelib
from cachelib._entries import stats as _stats
from cachelib._stores.local import temporary_name

pytestmark = pytest.mark.timeout(240)

# Objects that are not regular files, and links, planted where cachelib expects a file.
PLANTED = ["fifo", "dev-zero", "outside-link", "dangling-link", "directory", "socket"]
# ... and, for the small state files cachelib reads, files with hostile content.
CONTENT = ["garbage", "wrong-types", "sparse-8-gib"]


@dataclasses.dataclass
class Outside:
    """Files outside the cache that links point to: they must stay exactly as they are."""

    directory: Path

    def __post_init__(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.target = self.directory / "thesis.tex"
        self.target.write_bytes(b"\\documentclass{article} ... three years of work\n")
        self.absent = self.directory / "not-there"
        self.before = snapshot(self.directory)

    def assert_untouched(self) -> None:
        assert snapshot(self.directory) == self.before, "a file outside the cache changed"


def _remove(path: Path) -> bytes | None:
    """Remove whatever is at ``path``; return a regular file's content."""
    content = None
    if path.is_symlink() or not path.exists():
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    elif path.is_dir():
        shutil.rmtree(path)
    else:
        if path.is_file():
            content = path.read_bytes()
        os.unlink(path)
    return content


def _confused(content: bytes | None) -> bytes:
    """Valid JSON of the wrong shape: numbers as strings, lists as objects, strings as lists."""

    def turn(value: Any) -> Any:
        if isinstance(value, bool) or value is None:
            return "yes"
        if isinstance(value, (int, float)):
            return str(value)
        if isinstance(value, str):
            return [value]
        if isinstance(value, list):
            return {"items": [turn(v) for v in value]}
        return {key: turn(v) for key, v in value.items()}

    try:
        return json.dumps(turn(json.loads(content or b""))).encode()
    except ValueError:
        return b'{"hits": "many", "misses": [1], "stats": "x", "absorbed": 7}'


def plant(path: Path, kind: str, outside: Outside) -> None:
    """Replace whatever is at ``path`` by a hostile object of ``kind``."""
    content = _remove(path)
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "dev-zero":
        os.symlink("/dev/zero", path)
    elif kind == "outside-link":
        os.symlink(outside.target, path)
    elif kind == "dangling-link":
        os.symlink(outside.absent, path)
    elif kind == "directory":
        path.mkdir()
        (path / "inside").write_bytes(b"not cachelib's")
    elif kind == "socket":
        directory = os.open(path.parent, os.O_RDONLY)
        try:  # bound through /proc: the path itself may be too long for a socket address
            with socket.socket(socket.AF_UNIX) as sock:
                sock.bind(f"/proc/self/fd/{directory}/{path.name}")
        finally:
            os.close(directory)
    elif kind == "garbage":
        path.write_bytes(bytes(random.Random(path.name).randrange(256) for _ in range(300)))
    elif kind == "wrong-types":
        path.write_bytes(_confused(content))
    elif kind == "sparse-8-gib":
        with open(path, "wb") as handle:
            handle.truncate(8 << 30)
    else:
        raise AssertionError(kind)


@pytest.fixture
def outside(tmp_path: Path) -> Outside:
    return Outside(tmp_path / "home")


def _stored(location: Path, log: Path, x: int, **options: Any) -> Path:
    """Store square(x) from a child; return its entry file."""
    before = entry_files(location)
    run_with_timeout(square_calls, str(location), str(log), [x], **options).result()
    return new_entry(location, before)


def _right(outcome: Outcome, calls: list[int]) -> list[str]:
    assert outcome.result() == [digest(square(x)) for x in calls]
    return outcome.cache_warnings()


# --- entries and lock files -----------------------------------------------------------------


@pytest.mark.parametrize("mmap_mode", [None, "r"], ids=["load", "mmap"])
@pytest.mark.parametrize("kind", PLANTED)
def test_a_hostile_object_at_an_entry_path_is_a_miss(
    tmp_path: Path, outside: Outside, kind: str, mmap_mode: str | None
) -> None:
    """Where an entry should be, a FIFO, link, device, socket or directory is a warned miss."""
    location, log = tmp_path / "cache", tmp_path / "log"
    entry = _stored(location, log, 1, mmap_mode=mmap_mode)
    forged = _stored(location, log, 2, mmap_mode=mmap_mode)
    outside.target.write_bytes(forged.read_bytes())  # a valid entry of another call: followed, it lies
    outside.before = snapshot(outside.directory)
    plant(entry, kind, outside)
    outcome = run_with_timeout(square_calls, str(location), str(log), [1, 1], mmap_mode=mmap_mode)
    assert _right(outcome, [1, 1]), "a hostile object at an entry's path is a miss with a warning"
    assert computations(log)[:3] == ["square 1", "square 2", "square 1"], "the planted object was used"
    outside.assert_untouched()


@pytest.mark.parametrize("kind", slow_except(PLANTED, "fifo"))  # two children and six commands each
def test_commands_over_a_hostile_entry(tmp_path: Path, outside: Outside, kind: str) -> None:
    """``info``, ``ls``, ``verify [--fix]``, ``prune`` and ``clear`` step over a hostile entry."""
    location, log = tmp_path / "cache", tmp_path / "log"
    _stored(location, log, 2)
    entry = _stored(location, log, 1)
    plant(entry, kind, outside)
    for command in (["info"], ["ls"], ["verify"], ["verify", "--fix"], ["prune", "--older-than", "1000d"],
                    ["clear"]):
        if not os.path.lexists(entry):  # a command replaced or removed it: plant it again
            plant(entry, kind, outside)
        fork_cli("--location", location, *command)
        if kind == "directory":
            assert (entry / "inside").exists(), f"{command} removed a directory that is not cachelib's"
    outside.assert_untouched()


@pytest.mark.parametrize("lock", ["file", "soft"])
@pytest.mark.parametrize("kind", PLANTED)
def test_a_hostile_object_at_a_lock_path(tmp_path: Path, outside: Outside, kind: str, lock: str) -> None:
    """A planted lock file is never followed, truncated or waited on for the whole lock_timeout."""
    location, log = tmp_path / "cache", tmp_path / "log"
    entry = _stored(location, log, 1, lock=lock)
    os.unlink(entry)
    plant(entry.with_suffix(".lock"), kind, outside)
    outcome = run_with_timeout(square_calls, str(location), str(log), [1, 1], lock=lock, lock_timeout=600,
                               timeout=60)
    _right(outcome, [1, 1])
    assert computations(log)[:2] == ["square 1", "square 1"]
    outside.assert_untouched()


# --- state files: markers, the size record, statistics --------------------------------------


def _use(location: str, log: str) -> dict[str, Any]:
    """Everything a program does with a cache: hits, misses under a limit, info, evict, clear."""
    cache = cachelib.Cache(location, bytes_limit="10M")
    f = cache.memoize(ignore=["log"])(square)
    results = [f(1, log=log), f(3, log=log), f(1, log=log)]
    info = cache.info()
    cache.reduce_size(bytes_limit="10M")
    in_cache = f.check_call_in_cache(3)
    try:
        cache.clear()
        cleared = "cleared"
    except cachelib.CacheError as exc:
        cleared = type(exc).__name__
    results.append(f(1, log=log))
    return {"digests": [digest(r) for r in results], "entries": info.entries, "in cache": in_cache,
            "cleared": cleared}


def _state_files(location: Path) -> list[Path]:
    """The files a cache keeps besides its entries: markers, the size record, statistics."""
    return [p for p in files_under(location) if not p.name.endswith(".cl")]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache with entries, markers, a size record and statistics (folded and not): copy it to use it."""
    directory = tmp_path_factory.mktemp("pristine")
    location, log = directory / "cache", directory / "log"

    def fill() -> None:
        _stats._FLUSH_EVERY = 0.05  # in this child only: its statistics are written at once, not after 1 s
        cache = cachelib.Cache(str(location), bytes_limit="10M")
        f = cache.memoize(ignore=["log"])(square)
        f(1, log=str(log))
        f(1, log=str(log))
        f(2, log=str(log))
        wait_for_new_statistics(location)  # the statistics are written
        cache.info()  # ... and folded
        folded = statistics_files(location)
        f(2, log=str(log))
        wait_for_new_statistics(location, folded)  # one more counts file, not folded yet
        cache.reduce_size(bytes_limit="10M")

    run_with_timeout(fill).result()
    names = {p.name for p in _state_files(location)}
    assert {".size", ".cachelib", "CACHEDIR.TAG", ".cachelib-function"} <= names, names
    assert any("stats" in p.parts for p in _state_files(location)), "no statistics were written"
    return location


def _copy(pristine: Path, to: Path) -> Path:
    shutil.copytree(pristine, to, symlinks=True)
    return to


@pytest.mark.parametrize("kind", slow_except(PLANTED + CONTENT, "garbage"))  # a child per state file: 1 s
def test_hostile_state_files_never_hurt_a_call(pristine: Path, tmp_path: Path, outside: Outside,
                                               kind: str) -> None:
    """Each marker, the size record and each statistics file, made hostile in turn: calls stay right."""
    expected = [digest(square(x)) for x in (1, 3, 1, 1)]
    for index, state in enumerate(_state_files(pristine)):
        location = _copy(pristine, tmp_path / f"case{index}")
        target = location / state.relative_to(pristine)
        plant(target, kind, outside)
        outcome = run_with_timeout(_use, str(location), str(tmp_path / "log"))
        report = outcome.result()
        where = f"{kind} at {state.relative_to(pristine)}"
        assert report["digests"] == expected, where
        warned = outcome.cache_warnings()
        if state.name == ".size":
            assert warned, f"{where}: a bad size record is ignored with a warning"
            if kind != "directory":
                assert target.is_file() and not target.is_symlink(), f"{where}: the size record is rebuilt"
        outside.assert_untouched()


@pytest.mark.parametrize("kind", slow_except(PLANTED + CONTENT, "fifo"))  # six commands each
def test_commands_over_hostile_state_files(pristine: Path, tmp_path: Path, outside: Outside,
                                           kind: str) -> None:
    """Every state file hostile at once: each command ends in time, in at most one line."""
    location = _copy(pristine, tmp_path / "cache")
    for state in _state_files(location):
        plant(state, kind, outside)
    for command in (["info"], ["ls"], ["verify"], ["verify", "--fix"], ["prune", "--max-size", "1M"],
                    ["clear"]):
        fork_cli("--location", location, *command)
    outside.assert_untouched()


# --- directories: linked function directories, foreign directories and files --------------


@pytest.mark.parametrize("linked", ["function", "shard"])
def test_a_linked_directory_is_neither_read_written_nor_cleared_through(
    tmp_path: Path, outside: Outside, linked: str
) -> None:
    """A function directory (or shard) that is a symbolic link is refused by calls, info and clear."""
    location, log = tmp_path / "cache", tmp_path / "log"
    entry = _stored(location, log, 1)
    directory = entry.parent.parent if linked == "function" else entry.parent
    moved = outside.directory / directory.name
    shutil.move(str(directory), str(moved))
    os.symlink(moved, directory)
    outside.before = snapshot(outside.directory)

    def use() -> dict[str, Any]:
        cache = cachelib.Cache(str(location))
        f = cache.memoize(ignore=["log"])(square)
        results = [digest(f(1, log=str(log))), digest(f(1, log=str(log)))]
        entries = cache.info().entries
        for clear in (cache.clear, f.clear):
            with contextlib.suppress(cachelib.CacheError):
                clear()
        return {"results": results, "entries": entries}

    outcome = run_with_timeout(use)
    report = outcome.result()
    outcome.cache_warnings()
    assert report["results"] == [digest(square(1))] * 2
    assert computations(log)[:2] == ["square 1", "square 1"], "a hit was read through the link"
    assert report["entries"] == 0, "info() counted entries through the link"
    for command in (["info"], ["ls"], ["verify", "--fix"], ["prune", "--max-size", "0"], ["clear"]):
        fork_cli("--location", location, *command)
    outside.assert_untouched()


def _project(root: Path) -> Path:
    """A project directory: sources, data, and a directory that only looks like cachelib's."""
    for relative, content in {
        "README.md": b"# my project\n",
        "src/main.py": b"print('hello')\n",
        "src/pkg/model.py": b"WEIGHTS = 3\n",
        "data/raw.csv": b"a,b\n1,2\n",
        "data/run-0123456789ab/00/00112233445566778899aabbccddeeff.cl": b"looks like an entry",
        "analysis.square-0123456789ab/ff/ffeeddccbbaa99887766554433221100.cl": b"also not one",
    }.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    return root


@pytest.mark.parametrize("how", ["clear", "clear-cwd", "reduce_size", "info"])
def test_a_directory_that_is_not_a_cache_is_refused(tmp_path: Path, how: str) -> None:
    """``clear``, ``reduce_size`` and ``info`` on a project directory raise NotACacheError, change nothing."""
    project = _project(tmp_path / "project")
    before = snapshot(project)

    def act() -> None:
        if how == "clear-cwd":
            os.chdir(project)
            cachelib.Cache(".").clear()
            return
        cache = cachelib.Cache(str(project))
        if how == "reduce_size":
            cache.reduce_size(bytes_limit=0)
        else:
            getattr(cache, how)()

    outcome = run_with_timeout(act)
    assert isinstance(outcome.error, cachelib.NotACacheError), outcome.error or "no error"
    assert isinstance(outcome.error, cachelib.CacheError)
    assert snapshot(project) == before


@pytest.mark.parametrize("command", [["clear"], ["prune", "--max-size", "0"], ["verify", "--fix"],
                                     ["info"], ["ls"]])
def test_the_command_line_refuses_a_directory_that_is_not_a_cache(tmp_path: Path, command: list[str]) -> None:
    """Every command pointed at a project directory exits 2 with one line and changes nothing."""
    project = _project(tmp_path / "project")
    before = snapshot(project)
    process = fork_cli("--location", project, *command)
    assert process.returncode == 2, (process.stdout, process.stderr)
    assert process.stderr.strip()
    assert snapshot(project) == before


def test_memoizing_into_a_project_directory_then_clearing_keeps_the_project(tmp_path: Path) -> None:
    """A cache pointed at a project directory by mistake: clearing it removes none of the project."""
    project = _project(tmp_path / "project")
    before = snapshot(project)

    def use_then_clear() -> None:
        cache = cachelib.Cache(str(project))
        f = cache.memoize(ignore=["log"])(square)
        f(1)
        f(2)
        for clear in (cache.clear, f.clear, lambda: cache.reduce_size(bytes_limit=0)):
            with contextlib.suppress(cachelib.NotACacheError):
                clear()

    outcome = run_with_timeout(use_then_clear)
    outcome.result()
    outcome.cache_warnings()
    fork_cli("--location", project, "clear")
    fork_cli("--location", project, "prune", "--max-size", "0")
    after = snapshot(project)
    changed = {path: state for path, state in before.items() if path != "." and after.get(path) != state}
    assert not changed, f"the project lost or changed {sorted(changed)}"


def _foreign(location: Path) -> dict[Path, bytes]:
    """Files that are not cachelib's, put inside a cache: at its top, in a function dir, in a shard."""
    entry = entry_files(location)[0]
    function_dir = entry.parent.parent
    planted = {
        location / "notes.txt": b"my notes",
        location / "results" / "table.csv": b"x,y\n",
        location / "fake.func-0123456789ab" / "00" / "00112233445566778899aabbccddeeff.cl": b"not ours",
        function_dir / "README": b"about this function",
        function_dir / "keep" / "data.bin": b"\x00\x01",
        entry.parent / "notes.txt": b"in a shard",
    }
    for path, content in planted.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    return planted


@pytest.mark.parametrize("how", ["cache.clear", "function.clear", "reduce_size", "cli clear", "cli prune"])
def test_files_that_are_not_cachelibs_survive_clear_and_prune(tmp_path: Path, how: str) -> None:
    """Inside a cache, only cachelib's entries go: everything else stays, byte for byte."""
    location, log = tmp_path / "cache", tmp_path / "log"
    run_with_timeout(square_calls, str(location), str(log), [1, 2, 3]).result()
    planted = _foreign(location)

    def clear() -> None:
        cache = cachelib.Cache(str(location))
        if how == "cache.clear":
            cache.clear()
        elif how == "function.clear":
            cache.memoize(ignore=["log"])(square).clear()
        else:
            cache.reduce_size(bytes_limit=0)

    if how.startswith("cli"):
        command = ["clear"] if how == "cli clear" else ["prune", "--max-size", "0"]
        assert fork_cli("--location", location, *command).returncode == 0
    else:
        run_with_timeout(clear).result()
    assert {path: path.read_bytes() for path in planted} == planted
    real = [p for p in entry_files(location) if p not in planted]
    assert real == [], f"{how} left entries: {real}"


# --- mmap_mode hits against concurrent clear() ------------------------------------------------


def _read_stamped(location: str, seconds: float) -> dict[str, Any]:
    f = memoized(location, stamped, mmap_mode="r")
    deadline = time.monotonic() + seconds
    calls, problems, tokens = 0, [], set()
    while time.monotonic() < deadline:
        result = f(1)
        problem = stamp_problem(result, memmap=True)
        if problem is not None and len(problems) < 5:
            problems.append(problem)
        tokens.add(result["token"] if problem is None else None)
        calls += 1
        del result
    return {"calls": calls, "problems": problems, "tokens": len(tokens)}


def _clear_and_recompute(location: str, seconds: float) -> int:
    cache = cachelib.Cache(location, mmap_mode="r")
    f = cache.memoize(ignore=["log"])(stamped)
    deadline = time.monotonic() + seconds
    clears = 0
    while time.monotonic() < deadline:
        (cache.clear if clears % 2 else f.clear)()
        f(1)
        clears += 1
        time.sleep(0.002)
    return clears


@pytest.mark.slow
def test_mmap_hits_under_concurrent_clear_are_always_one_files_content(tmp_path: Path) -> None:
    """Two processes hitting with mmap_mode while a third clears and recomputes: no torn result, ever."""
    location = str(tmp_path / "cache")
    seconds = 15.0
    readers = [start_child(_read_stamped, location, seconds) for _ in range(2)]
    clearer = start_child(_clear_and_recompute, location, seconds)
    outcomes = [child.wait(seconds + 60) for child in [*readers, clearer]]
    assert outcomes[2].result() > 100
    for outcome in outcomes[:2]:
        report = outcome.result()
        outcome.cache_warnings()
        assert report["problems"] == []
        assert report["calls"] > 1000
        assert report["tokens"] > 10, "the readers did not see the entry change"


def test_mmap_mode_returns_memmaps_on_every_call(tmp_path: Path) -> None:
    """An mmap_mode function returns np.memmap arrays on a miss, on hits, and after a clear."""
    location = str(tmp_path / "cache")

    def calls() -> list[str | None]:
        cache = cachelib.Cache(location, mmap_mode="r")
        f = cache.memoize(ignore=["log"])(stamped)
        copy_on_write = cache.memoize(ignore=["log"], mmap_mode="c")(stamped)
        problems = [stamp_problem(f(1), memmap=True), stamp_problem(f(1), memmap=True)]
        f.clear()
        problems += [stamp_problem(f(1), memmap=True), stamp_problem(f(1), memmap=True)]
        cache.clear()
        problems += [stamp_problem(f(2), memmap=True), stamp_problem(copy_on_write(3), memmap=True),
                     stamp_problem(copy_on_write(3), memmap=True)]
        return problems

    outcome = run_with_timeout(calls)
    assert outcome.result() == [None] * 7
    assert outcome.cache_warnings() == []


def slow_stamped(x: int, delay: float = 0.0, log: str | None = None) -> dict[str, Any]:
    """``stamped`` after ``delay`` seconds: time for another process to clear meanwhile."""
    result = stamped(x, log)
    time.sleep(delay)
    return result


def _call_slow_stamped(location: str, log: str, delay: float) -> tuple[str | None, int]:
    f = cachelib.Cache(location, mmap_mode="r").memoize(ignore=["log", "delay"])(slow_stamped)
    result = f(1, delay=delay, log=log)
    return stamp_problem(result, memmap=True), result["token"]


# The first call computes for 3 s, the time the second needs to reach its lock: clear sparing a
# write in flight is test_clear_removes_a_dead_writers_temporary_file_and_keeps_a_live_ones[cache.clear].
@pytest.mark.slow
def test_clearing_while_a_result_is_computed_keeps_its_lock(tmp_path: Path) -> None:
    """``clear`` leaves a held lock: a caller arriving after it waits for the result, never recomputing it."""
    location, log = str(tmp_path / "cache"), str(tmp_path / "log")
    first = start_child(_call_slow_stamped, location, log, 3.0)
    wait_until(lambda: computations(log) == ["stamped 1"], 30, interval=0.01)
    assert computations(log) == ["stamped 1"], "the first call never started computing"
    locks = [p for p in files_under(Path(location)) if p.name.endswith(".lock")]
    assert len(locks) == 1
    cachelib.Cache(location).clear()
    assert locks[0].exists(), "clear removed the lock of a computation in progress"
    second = start_child(_call_slow_stamped, location, log, 0.0)
    outcomes = [first.wait(60), second.wait(60)]
    (problem_1, token_1), (problem_2, token_2) = (outcome.result() for outcome in outcomes)
    assert (problem_1, problem_2) == (None, None)
    assert token_1 == token_2, "the second caller computed instead of waiting for the first"
    assert computations(log) == ["stamped 1"]
    assert [outcome.cache_warnings() for outcome in outcomes] == [[], []]


def _dead_pid() -> int:
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os._exit(0)
    os.waitpid(pid, 0)
    return pid


@pytest.mark.parametrize("how", ["cache.clear", "cli clear", "cli prune"])
def test_clear_removes_a_dead_writers_temporary_file_and_keeps_a_live_ones(tmp_path: Path, how: str) -> None:
    """A temporary file of a writer still running is its write in flight: clear and prune leave it alone."""
    location, log = tmp_path / "cache", tmp_path / "log"
    run_with_timeout(square_calls, str(location), str(log), [1]).result()
    entry = entry_files(location)[0]
    live = entry.with_name(temporary_name(entry.name))
    dead = entry.with_name(temporary_name(entry.name, _dead_pid()))
    for path in (live, dead):
        path.write_bytes(b"a write in flight")
        path.chmod(0o600)
    if how.startswith("cli"):
        command = ["clear"] if how == "cli clear" else ["prune", "--max-size", "0"]
        assert fork_cli("--location", location, *command).returncode == 0
    else:
        run_with_timeout(cachelib.Cache(str(location)).clear).result()
    assert not entry.exists()
    assert live.read_bytes() == b"a write in flight"
    assert not dead.exists(), f"{how} left a dead writer's temporary file"


_IN_ANOTHER_NAMESPACE = """
import os, sys
from cachelib._stores.local import temporary_name

pid, directory, name = int(sys.argv[1]), sys.argv[2], sys.argv[3]
with open("/proc/sys/kernel/ns_last_pid", "w") as last:
    last.write(str(pid - 1))  # the next process of this pid namespace gets ``pid``
child = os.fork()
if child == 0:
    path = os.path.join(directory, temporary_name(name))
    with open(path, "wb") as handle:
        handle.write(b"a write in flight")
    os.chmod(path, 0o600)
    print(os.getpid(), path, flush=True)
    sys.stdin.read()  # writes until the test closes its stdin
    os._exit(0)
os.waitpid(child, 0)
"""


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0 or shutil.which("unshare") is None,
                    reason="needs root and unshare(1) to run a writer in its own pid namespace")
@pytest.mark.parametrize("how", slow_except(["cache.clear", "cli prune"], "cache.clear"))  # an interpreter
def test_a_writer_in_another_pid_namespace_is_never_taken_for_dead(tmp_path: Path, how: str) -> None:
    """A container sharing the host name: its writer's pid is dead here, alive in its own pid
    namespace. Its temporary file is a write in flight and stays (until ``LEFTOVER_AGE``)."""
    location, log = tmp_path / "cache", tmp_path / "log"
    run_with_timeout(square_calls, str(location), str(log), [1]).result()
    entry = entry_files(location)[0]
    pid = _dead_pid()
    command = ["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c", _IN_ANOTHER_NAMESPACE,
               str(pid), str(entry.parent), entry.name]
    with subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as writer:
        assert writer.stdin is not None and writer.stdout is not None
        try:
            got, path = writer.stdout.readline().split()
            if int(got) != pid:
                pytest.skip(f"the pid namespace gave pid {got}, not {pid}")
            assert not os.path.exists(f"/proc/{pid}"), "the pid is taken here: not a dead one"
            if how == "cli prune":
                assert fork_cli("--location", location, "prune", "--max-size", "0").returncode == 0
            else:
                run_with_timeout(cachelib.Cache(str(location)).clear).result()
            assert not entry.exists()
            assert Path(path).read_bytes() == b"a write in flight", f"{how} removed a live writer's file"
        finally:
            writer.stdin.close()
            writer.wait(30)


# --- threads ----------------------------------------------------------------------------------


def _hammer_threads(location: str, seconds: float, clearing: bool) -> dict[str, Any]:
    sys.setswitchinterval(1e-6)
    cache = cachelib.Cache(location)
    f = cache.memoize(ignore=["log"])(plain)
    expected = {x: digest(plain(x)) for x in range(400)}
    errors: list[str] = []
    wrong: list[int] = []
    calls = [0]
    stop = time.monotonic() + seconds

    def work(seed: int) -> None:
        rng = random.Random(seed)
        try:
            while time.monotonic() < stop:
                x = rng.randrange(400)
                if digest(f(x)) != expected[x]:
                    wrong.append(x)
                calls[0] += 1
        except BaseException as exc:
            errors.append(repr(exc))

    def clear() -> None:
        try:
            while time.monotonic() < stop:
                (cache.clear if random.random() < 0.5 else f.clear)()
                time.sleep(0.01)
        except BaseException as exc:
            errors.append(repr(exc))

    threads = [threading.Thread(target=work, args=(seed,)) for seed in range(8)]
    if clearing:
        threads.append(threading.Thread(target=clear))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    seen = [(w.category.__name__, str(w.message)) for w in caught]
    return {"errors": errors, "wrong": wrong, "calls": calls[0], "warnings": seen}


# A stress test, 4 s of calls and 1 s more to warm up: threads on one cache, quickly, are
# test_memoize's test_threads_compute_a_slow_call_once[file] and test_lock_none_works.
@pytest.mark.slow
@pytest.mark.parametrize("clearing", [False, True], ids=["hits-and-misses", "with-clears"])
def test_threads_hammering_one_cache(tmp_path: Path, clearing: bool) -> None:
    """Eight threads (and a clearing one) over 400 small keys with a 1 us switch interval: all right."""
    location = str(tmp_path / "cache")
    if clearing:  # start warm, so that hits race with the clears
        run_with_timeout(_hammer_threads, location, 1.0, False).result()
    report = run_with_timeout(_hammer_threads, location, 4.0, clearing, timeout=120).result()
    assert report["errors"] == []
    assert report["wrong"] == []
    assert report["calls"] > 500
    if clearing:
        assert all(category == "CacheWarning" for category, _ in report["warnings"]), report["warnings"]
    else:
        assert report["warnings"] == []


def test_a_pickled_memoized_function_stays_small_after_many_hits(tmp_path: Path) -> None:
    """Pickling a memoized function carries its settings and function, never cached data."""
    location = str(tmp_path / "cache")

    def sizes() -> tuple[int, int, str]:
        f = cachelib.Cache(location).memoize(ignore=["log"])(plain)
        before = len(pickle.dumps(f))
        for x in range(300):
            f(x)
            f(x)
        after = pickle.dumps(f)
        return before, len(after), digest(pickle.loads(after)(7))

    before, after, result = run_with_timeout(sizes).result()
    assert result == digest(plain(7))
    assert after <= before + 256, f"a memoized function grew from {before} to {after} bytes pickled"
    assert after < 16_384


# --- hostile files for load, under a memory cap -------------------------------------------------


def _empty_array_records(count: int) -> bytes:
    """A stream of ``count`` empty array records that no pickle uses: 64 raw bytes each."""
    first = record("A", b"", 16)  # records from offset 72 on repeat exactly (same padding)
    steady = record("A", b"", 16 + len(first))
    assert len(steady) == 64
    body = stream_header(1) + first + steady * (count - 1)
    body += record("P", pickle.dumps(None, protocol=5), len(body))
    return body + end_record(count + 1, len(body))


class _Huge:
    """Pickles as cachelib's array rebuild claiming 2**40 float64 from an empty buffer."""

    def __reduce__(self) -> Any:
        from cachelib._format import rebuild_array  # the name docs/FORMAT.rst specifies

        return rebuild_array, ((np.dtype("f8"), (2**40,), "C", None), pickle.PickleBuffer(b""))


def _hostile_files(directory: Path) -> dict[str, Path]:
    """Small files that claim, or expand to, far more than any memory cap."""
    zstd = zstandard.ZstdCompressor(level=3)
    head = stream_header(1)
    huge_array = head + record("A", b"", 16)[:8] + (2**62).to_bytes(8, "little") + bytes(100)
    huge_pickle = head + b"P\x00\x00\x00\x00\x00\x00\x00" + (2**40).to_bytes(8, "little") + bytes(100)
    lying_bytes = b"\x80\x05\x8e" + (2**40).to_bytes(8, "little") + b"abc."  # BINBYTES8 of 2**40 bytes
    files = {
        "empty-array-records.zst": zstd.compress(_empty_array_records(1_000_000)),
        "huge-array-length.raw": huge_array,
        "huge-array-length.zst": zstd.compress(huge_array),
        "huge-pickle-record.zst": zstd.compress(huge_pickle),
        "pickle-claims-2-40-bytes.raw": forge([("P", lying_bytes)], version=1),
        "array-claims-2-40-elements.zst": zstd.compress(
            forge([("A", b""), ("P", pickle.dumps(_Huge(), protocol=5, buffer_callback=lambda _: False))],
                  version=1)
        ),
    }
    directory.mkdir()
    paths = {}
    for name, data in files.items():
        assert len(data) < 200_000, (name, len(data))
        paths[name] = directory / name
        paths[name].write_bytes(data)
    return paths


@pytest.fixture(scope="module")
def hostile_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return _hostile_files(tmp_path_factory.mktemp("hostile") / "files")


# Lies in the stream's records (``verify`` sees them) and in the pickle (only ``load`` does).
_MILLION_RECORDS = "empty-array-records.zst"  # a million records to read: about a second
STREAM_LIES = [_MILLION_RECORDS, "huge-array-length.raw", "huge-array-length.zst",
               "huge-pickle-record.zst"]
PICKLE_LIES = ["pickle-claims-2-40-bytes.raw", "array-claims-2-40-elements.zst"]


@pytest.mark.parametrize(("reader", "name"), [
    *(pytest.param(reader, name, marks=[pytest.mark.slow] if name == _MILLION_RECORDS else [])
      for reader, names in (("load", STREAM_LIES + PICKLE_LIES), ("verify", STREAM_LIES)) for name in names)
])
def test_hostile_files_fail_as_corrupt_under_a_memory_cap(hostile_files: dict[str, Path], reader: str,
                                                          name: str) -> None:
    """``load`` and ``verify`` of a hostile file raise CorruptFileError in 384 MiB, never MemoryError."""
    outcome = memory_capped(384 << 20, getattr(cachelib, reader), str(hostile_files[name]), timeout=120)
    assert isinstance(outcome.error, cachelib.CorruptFileError), f"{name}: {outcome.error!r}\n{outcome.trace}"
