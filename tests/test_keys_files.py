"""Files a call reads: recorded during a miss, checked on every hit by identity, then content.

The key of ``load(path)`` holds the path string; the file it names is what the result
depends on. Files here are real, edited, touched, replaced, deleted, listed and read
by threads; readers are numpy, pandas and plain ``open``; each hit must equal the
direct call, and what cannot be checked later is not stored (with one warning).
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import threading
import time
import warnings

import numpy as np
import pytest
from _keysupport import Project, agrees
from _system import arena, fork_cli, owned_dir, run_as, users
from helpers import slow_except

import cachelib
from cachelib._keys import depends, files

__all__ = ["arena", "users"]  # the fixtures, imported so that the tests here can use them

pytestmark = pytest.mark.timeout(180)


def _write_npy(path, values) -> None:
    np.save(path, np.asarray(values, dtype=np.int64))


def _read_csv_sum(path: str) -> float:
    pandas = pytest.importorskip("pandas")
    return float(pandas.read_csv(path)["v"].sum())


# --- fresh processes: each reader, a file edited between runs -----------------------------------

_READERS = {
    "np.load": ("float(np.load(path).sum())", "data.npy"),
    "np.load mmap": ("float(np.load(path, mmap_mode='r').sum())", "data.npy"),
    "np.fromfile": ("float(np.fromfile(path, dtype=np.int64).sum())", "data.bin"),
    "open": ("float(sum(int(v) for v in open(path).read().split()))", "data.txt"),
    "Path.read_bytes": ("float(sum(pathlib.Path(path).read_bytes()))", "data.bin"),
    "os.open": ("float(sum(os.read(os.open(path, os.O_RDONLY), 1 << 20)))", "data.bin"),
    "pandas": ("float(pd.read_csv(path)['v'].sum())", "data.csv"),
}

_MAIN = """
import os, pathlib
import numpy as np
import cachelib
{imports}
cache = cachelib.Cache(CACHE_DIR)
ARGUMENT = {name!r}

@cache.memoize
def work(path):
    return {expression}
"""


def _fill(path: pathlib.Path, version: int) -> None:
    values = [version, 2, 3, 4]
    if path.suffix == ".npy":
        _write_npy(path, values)
    elif path.suffix == ".csv":
        path.write_text("v\n" + "\n".join(map(str, values)) + "\n")
    elif path.suffix == ".txt":
        path.write_text(" ".join(map(str, values)))
    else:
        path.write_bytes(np.asarray(values, dtype=np.int64).tobytes())


# The readers that leave their file open (fine in a process that exits) run in fresh processes
# in the fast tier; the others are slow there, quick in test_each_reader_is_seen_in_this_process.
_LEAVE_OPEN = ("open", "os.open")


@pytest.mark.parametrize("reader", slow_except(list(_READERS), *_LEAVE_OPEN))
def test_a_file_edited_between_runs_misses_and_says_which(tmp_path, reader):
    if reader == "pandas":
        pytest.importorskip("pandas")
    expression, name = _READERS[reader]
    project = Project(tmp_path / "project")
    imports = "import pandas as pd" if reader == "pandas" else ""  # pandas takes a while to import
    project.write("main.py", _MAIN.format(name=name, expression=expression, imports=imports))
    data = project.root / name
    _fill(data, 1)
    first = project.check(stored=False)
    project.check(stored=True)
    _fill(data, 5)
    edited = project.check(stored=False)
    assert edited["memoized"] != first["memoized"]
    assert f"file `{data}` changed" in edited["explain"]
    project.check(stored=True)


def _read_with(path, read):
    return read(path)


@pytest.mark.parametrize("reader", [name for name in _READERS if name not in _LEAVE_OPEN])
def test_each_reader_is_seen_in_this_process(tmp_path, cache, reader):
    """The reads of test_a_file_edited_between_runs_misses_and_says_which, in this process: an
    edit misses, says which file changed, and the new result is stored."""
    pd = pytest.importorskip("pandas") if reader == "pandas" else None
    expression, name = _READERS[reader]
    read = eval(f"lambda path: {expression}", {"np": np, "os": os, "pathlib": pathlib, "pd": pd})
    work = cache.memoize(ignore=["read"])(_read_with)
    data = tmp_path / name
    _fill(data, 1)
    first = agrees(work, str(data), read)
    assert work.check_call_in_cache(str(data), read)
    _fill(data, 5)
    assert not work.check_call_in_cache(str(data), read)
    assert f"file `{data}` changed" in work.explain(str(data), read)
    assert agrees(work, str(data), read) != first
    assert work.check_call_in_cache(str(data), read)


# --- one process: every way a file can change ---------------------------------------------------


@pytest.fixture
def summed(cache):
    """A memoized function summing the int64 values of a file, and a log of its computations."""
    computed = []

    @cache.memoize(ignore=["computed"])
    def total(path):
        computed.append(path)
        with open(path, "rb") as handle:
            return int(np.frombuffer(handle.read(), dtype=np.int64).sum())

    total.computed = computed
    return total


def _put(path, *values, mtime_ns=None) -> None:
    path.write_bytes(np.asarray(values, dtype=np.int64).tobytes())
    if mtime_ns is not None:
        os.utime(path, ns=(mtime_ns, mtime_ns))


def test_touch_and_same_bytes_hit_other_bytes_miss(tmp_path, summed):
    data = tmp_path / "data.bin"
    _put(data, 1, 2)
    assert summed(str(data)) == 3
    os.utime(data)  # touched
    assert summed(str(data)) == 3
    replacement = tmp_path / "new.bin"
    _put(replacement, 1, 2)
    os.replace(replacement, data)  # re-downloaded: the same bytes in a new file
    assert summed(str(data)) == 3
    assert len(summed.computed) == 1
    _put(data, 1, 5)
    assert summed(str(data)) == 6
    assert len(summed.computed) == 2


def test_a_rewrite_that_keeps_size_and_time_still_misses(tmp_path, summed):
    """Same size, mtime set back to what it was: the change time and the content still tell."""
    data = tmp_path / "data.bin"
    _put(data, 1, 2, mtime_ns=1_600_000_000_000_000_000)
    assert summed(str(data)) == 3
    _put(data, 2, 2, mtime_ns=1_600_000_000_000_000_000)
    assert "data.bin` changed" in summed.explain(str(data))
    assert summed(str(data)) == 4


def test_a_rewrite_within_the_same_clock_tick_misses(tmp_path, summed):
    """Rewritten at once (identity possibly unchanged at a coarse clock): the content is compared."""
    data = tmp_path / "data.bin"
    for version in range(20):
        _put(data, version, 1)
        assert summed(str(data)) == version + 1


def test_a_deleted_file_misses_and_one_that_appears_misses(tmp_path, cache):
    data = tmp_path / "maybe.txt"

    @cache.memoize
    def size(path):
        try:
            with open(path) as handle:
                return len(handle.read())
        except FileNotFoundError:  # an open that fails is still a read: its path is recorded
            return -1

    data.write_text("abc")
    assert size(str(data)) == 3
    data.unlink()
    assert "is gone" in size.explain(str(data))
    assert size(str(data)) == -1
    assert size.check_call_in_cache(str(data))
    data.write_text("abcdef")
    assert size(str(data)) == 6


def test_a_path_argument_is_checked_where_the_function_reads_it(tmp_path, cache):
    data = tmp_path / "table.csv"
    data.write_text("1,2\n")

    @cache.memoize
    def count(path: pathlib.Path):
        return path.read_text().count(",")

    assert count(data) == 1
    data.write_text("1,2,3\n")
    assert count(data) == 2


def test_a_file_the_call_writes_and_reads_back_is_its_output_not_an_input(tmp_path, cache):
    scratch = tmp_path / "scratch.txt"

    @cache.memoize
    def roundtrip(text):
        scratch.write_text(text * 2)
        return scratch.read_text()

    assert roundtrip("ab") == "abab"
    scratch.write_text("something else")
    assert roundtrip.check_call_in_cache("ab")
    assert roundtrip("ab") == "abab"
    assert not any(str(scratch) in str(metadata.get("depends")) for metadata in _metadata(cache))


def test_a_listed_directory_misses_when_its_names_change_only(tmp_path, cache):
    folder = tmp_path / "inputs"
    folder.mkdir()
    (folder / "a").write_text("1")

    @cache.memoize
    def names(path):
        return sorted(os.listdir(path))

    assert names(str(folder)) == ["a"]
    (folder / "a").write_text("changed content, same name")
    assert names.check_call_in_cache(str(folder))
    (folder / "b").write_text("2")
    assert "inputs` changed" in names.explain(str(folder))
    assert names(str(folder)) == ["a", "b"]


def test_files_read_by_threads_the_call_starts_are_recorded(tmp_path, cache):
    parts = [tmp_path / f"part{i}.bin" for i in range(4)]
    for i, part in enumerate(parts):
        _put(part, i)

    @cache.memoize
    def total(paths):
        out = []

        def read(path):
            out.append(np.fromfile(path, np.int64).sum())

        threads = [threading.Thread(target=read, args=(path,)) for path in paths]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return int(sum(out))

    names = [str(part) for part in parts]
    assert total(names) == 6
    _put(parts[3], 10)
    assert total(names) == 13


def test_thousands_of_small_files_are_checked_and_one_edit_misses(tmp_path, cache):
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(3000):
        (folder / f"{i}.txt").write_text(str(i))

    @cache.memoize
    def total(path):
        return sum(int((pathlib.Path(path) / f"{i}.txt").read_text()) for i in range(3000))

    assert total(str(folder)) == sum(range(3000))
    assert total.check_call_in_cache(str(folder))
    (folder / "1234.txt").write_text("0")
    assert total(str(folder)) == sum(range(3000)) - 1234


@pytest.mark.slow  # writes 10,001 files
def test_more_files_than_can_be_checked_are_not_stored_with_one_warning(tmp_path, cache):
    folder = tmp_path / "too-many"
    folder.mkdir()
    count = files.MAX_FILES + 1
    for i in range(count):
        (folder / str(i)).write_bytes(b"1")

    @cache.memoize
    def total(path):
        return sum(len((pathlib.Path(path) / str(i)).read_bytes()) for i in range(count))

    with pytest.warns(cachelib.CacheWarning, match=f"more than {files.MAX_FILES} files"):
        assert total(str(folder)) == count
    assert not total.check_call_in_cache(str(folder))


def test_a_fifo_is_read_but_its_results_are_not_stored(tmp_path, cache):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)

    @cache.memoize
    def first_line(path):
        with open(path) as handle:
            return handle.readline()

    def feed():
        with open(fifo, "w") as handle:
            handle.write("hello\n")

    for attempt in range(2):
        writer = threading.Thread(target=feed)
        writer.start()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert first_line(str(fifo)) == "hello\n"
        writer.join(10)
        said = [str(w.message) for w in caught if issubclass(w.category, cachelib.CacheWarning)]
        assert len(said) == (1 if attempt == 0 else 0), said  # said once per function and reason
        assert "is a FIFO" in " ".join(said) or attempt
    assert not first_line.check_call_in_cache(str(fifo))


def test_dev_zero_and_library_files_are_not_dependencies(tmp_path, cache):
    @cache.memoize
    def zeros(n):
        with open("/dev/zero", "rb") as handle:
            data = handle.read(n)
        with open(np.__file__) as handle:  # an installed package's own file
            handle.read(10)
        return len(data)

    assert zeros(5) == 5
    assert zeros.check_call_in_cache(5)
    assert all("depends" not in metadata for metadata in _metadata(cache))


def test_a_file_changed_by_another_writer_during_the_call_is_not_stored(tmp_path, cache):
    data = tmp_path / "live.bin"
    _put(data, 1)

    rewrite = f"import numpy as np; np.asarray([100], np.int64).tofile({str(data)!r})"

    @cache.memoize
    def read_then_wait(path):
        value = int(np.fromfile(path, np.int64).sum())
        subprocess.run([sys.executable, "-c", rewrite], check=True, timeout=60)  # another process writes
        return value

    with pytest.warns(cachelib.CacheWarning, match="changed while the call ran"):
        assert read_then_wait(str(data)) == 1
    assert not read_then_wait.check_call_in_cache(str(data))


def test_track_files_false_stores_regardless(tmp_path, cache):
    data = tmp_path / "d.bin"
    _put(data, 1)

    @cache.memoize(track_files=False)
    def total(path):
        return int(np.fromfile(path, np.int64).sum())

    assert total(str(data)) == 1
    _put(data, 2)
    assert total(str(data)) == 1  # stale, as asked


def test_the_content_of_a_large_file_is_hashed_once_per_identity(tmp_path, summed):
    data = tmp_path / "big.bin"
    data.write_bytes(np.arange(8 << 20, dtype=np.int64).tobytes())  # 64 MiB
    _settle(data)
    hashed = []
    original = files.file_tree

    def counting(fd, size):
        hashed.append(size)
        return original(fd, size)

    files.file_tree = counting
    try:
        summed(str(data))  # recorded: hashed once
        files._known.clear()  # as in a fresh process
        for _ in range(3):
            summed(str(data))  # identity unchanged: a stat, no read
        assert hashed == [data.stat().st_size]
        os.utime(data)  # touched: its content is compared again
        _settle(data)
        for _ in range(3):
            summed(str(data))
    finally:
        files.file_tree = original
    assert hashed == [data.stat().st_size] * 2
    assert len(summed.computed) == 1


def test_a_file_recorded_racy_is_hashed_once_settled_then_checked_by_a_stat(tmp_path, summed, monkeypatch):
    """Written just before the call, a file's identity does not vouch for it in the entry; once this
    process has hashed it settled, that identity does, and any change to it is still a miss."""
    data = tmp_path / "fresh.bin"
    data.write_bytes(np.arange(1000, dtype=np.int64).tobytes())
    assert summed(str(data)) == 499500  # recorded while racy
    (item,) = [i for m in _metadata(summed.cache) for i in m["depends"] if i[0] == "file"]
    assert item[8], "the file was written just before the call: recorded racy"
    _settle(data)
    files._known.clear()  # as in a fresh process
    hashed, looked_closer = [], []
    original, closer = files.file_tree, depends.check_file_item
    monkeypatch.setattr(files, "file_tree", lambda fd, size: hashed.append(size) or original(fd, size))
    monkeypatch.setattr(depends, "check_file_item", lambda item: looked_closer.append(1) or closer(item))
    for _ in range(4):
        assert summed(str(data)) == 499500
    assert hashed == [8000] and len(summed.computed) == 1  # one hash, then stats
    assert looked_closer == [1]  # only the first hit looks past the stat
    with open(data, "r+b") as handle:  # same size, same bytes count: only the times say so
        handle.write(np.int64(7).tobytes())
    assert summed(str(data)) == 499500 + 7
    assert len(summed.computed) == 2


def _settle(path) -> None:
    """Wait until a file's last change is past the clock tick that could hide another one."""
    info = path.stat()
    while files.racy_at((info.st_size, info.st_mtime_ns, info.st_ctime_ns, 0, 0), time.time_ns()):
        time.sleep(0.01)


def _metadata(cache):
    for namespace in cache.entries.namespaces():
        for key, _ in cache.entries.entries(namespace):
            yield cache.entries.head(namespace, key).metadata


# --- another user of a shared cache ---------------------------------------------------------------

SECRET = b"k" * 32


def _read_private(location: str, path: str) -> str:
    cache = cachelib.Cache(location, share="group", secret=SECRET)

    def read(path):
        with open(path) as handle:
            return handle.read()

    read.__qualname__ = read.__name__ = "read_private"
    return cache.memoize(read)(path)


def test_a_member_cannot_read_another_members_private_input_through_the_cache(arena, users):
    """Alice's entry came from her own 0600 file: bob's call checks it as bob, and fails as bob would."""
    location = owned_dir(arena / "lab", 0o3770, 0, users.lab)
    secret_file = arena / "alice-only.txt"
    secret_file.write_text("alice's data")
    os.chown(secret_file, users.alice.uid, users.alice.gid)
    os.chmod(secret_file, 0o600)
    assert run_as(users.alice, _read_private, str(location), str(secret_file)).result() == "alice's data"
    outcome = run_as(users.bob, _read_private, str(location), str(secret_file))
    assert isinstance(outcome.error, PermissionError), outcome.error


def test_ls_names_what_each_entry_depends_on(tmp_path, monkeypatch):
    monkeypatch.setenv("CACHELIB_TEST_MODE", "fast")
    cache = cachelib.Cache(tmp_path / "cache", depends_on=["env:CACHELIB_TEST_MODE"])
    data = tmp_path / "inputs.bin"
    _put(data, 1, 2)

    @cache.memoize
    def total(path):
        return int(np.fromfile(path, np.int64).sum())

    total(str(data))
    done = fork_cli("--location", tmp_path / "cache", "ls")
    assert done.returncode == 0, done.stderr
    assert "[depends on: files inputs.bin; declared environment CACHELIB_TEST_MODE]" in done.stdout


# Most of the time goes to writing the file. 64 MiB take tens of milliseconds to hash, against an
# append every millisecond or so (32 MiB sometimes finished between two appends on a busy machine).
@pytest.mark.parametrize("mib", [64, pytest.param(256, marks=pytest.mark.slow)])  # 256: see [64]
def test_a_file_that_grows_while_it_is_hashed_is_a_problem_not_a_digest(tmp_path, mib):
    """Another writer appends while the content is hashed: never a digest of bytes that were not there."""
    path = tmp_path / "growing.bin"
    path.write_bytes(os.urandom(1 << 20) * mib)
    stop = threading.Event()

    def append():
        with open(path, "ab") as handle:
            while not stop.is_set():
                handle.write(b"x" * 4096)
                handle.flush()
                time.sleep(0.0005)

    writer = threading.Thread(target=append)
    writer.start()
    try:
        time.sleep(0.01)
        outcomes = [files.describe_path(str(path)) for _ in range(3)]
    finally:
        stop.set()
        writer.join(10)
    for item, problem in outcomes:
        assert item is None and "changed while it was hashed" in problem, (item, problem)
