"""When stored entries reach the disk (``fsync=``), and why a crash before then costs at
most a recomputation: every prefix of an entry is a miss, holes in an entry published
before it was durable are found, the background queue is bounded, forks and exits are safe.
"""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from helpers import CALLS, entry_path

import cachelib
from cachelib._entries import envelope as _entry
from cachelib._stores import background
from cachelib._stores import durability as _durability

pytestmark = pytest.mark.timeout(120)


def _small(x: int) -> dict:
    CALLS.append(x)
    return {"x": x, "v": np.arange(40.0) * x, "s": f"value {x}"}


def _large(x: int) -> np.ndarray:
    CALLS.append(x)
    return np.arange(50_000.0) * x  # 400 kB: an array record, mapped with mmap_mode


def _head_of(path: Path) -> _entry.EntryHead:
    with open(path, "rb") as handle:
        return _entry.read_head(handle, os.fstat(handle.fileno()).st_size)


# --- the option ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "mode"),
    [(None, "background"), (True, "always"), (False, "never"), ("always", "always"), ("never", "never")],
)
def test_the_fsync_option(given, mode, tmp_path):
    """fsync defaults to "background"; True and False keep meaning "always" and "never"."""
    cache = cachelib.Cache(tmp_path) if given is None else cachelib.Cache(tmp_path, fsync=given)
    assert cache.store.fsync == mode
    if given is None:
        assert cachelib.Cache(tmp_path, fsync=None).store.fsync == "background"  # None: the default


@pytest.mark.parametrize("bad", ["sometimes", 1, "", 0.5])
def test_an_unknown_fsync_mode_is_refused(bad, tmp_path):
    """Any other fsync value is an InvalidOptionError naming the modes (even for a cache
    that stores nothing)."""
    for location in (tmp_path, None):
        with pytest.raises(cachelib.InvalidOptionError, match="background"):
            cachelib.Cache(location, fsync=bad)


@pytest.mark.parametrize(("fsync", "deferred"), [("always", False), ("background", True), ("never", True)])
def test_an_entry_says_whether_it_was_published_before_it_was_durable(fsync, deferred, tmp_path, calls):
    """Only entries synced before their rename are marked durable in their header."""
    compute = cachelib.Cache(tmp_path, fsync=fsync).memoize(_small)
    compute(1)
    assert _head_of(entry_path(compute, 1)).deferred is deferred


def _spy_on_fsync(monkeypatch, entry: list[Path]) -> list[tuple[str, bool]]:
    """Record, for every real fsync of the entry's file (or its temporary file), the thread and
    whether the entry exists yet; the statistics and markers written meanwhile are other files."""
    seen: list[tuple[str, bool]] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        if os.readlink(f"/proc/self/fd/{fd}").startswith(str(entry[0])):
            seen.append((threading.current_thread().name, entry[0].exists()))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return seen


def test_always_syncs_the_file_before_its_rename(tmp_path, calls, monkeypatch):
    """With "always", the entry's bytes are synced, in the caller, before its name appears."""
    compute = cachelib.Cache(tmp_path, fsync="always").memoize(_small)
    assert background.worker.drain(30)  # syncs queued by earlier tests are not this entry's
    entry = [entry_path(compute, 2)]
    seen = _spy_on_fsync(monkeypatch, entry)
    compute(2)
    assert seen and all(not exists and "cachelib-background" not in who for who, exists in seen[-1:])


def test_background_syncs_after_the_call_returns(tmp_path, calls, monkeypatch):
    """With "background", the call returns before any sync, and the entry is synced afterwards
    by the background thread, once its name is in place."""
    compute = cachelib.Cache(tmp_path).memoize(_small)
    compute(0)  # the location and its markers exist: what follows is the entry alone
    assert background.worker.drain(30)
    entry = [entry_path(compute, 3)]
    seen = _spy_on_fsync(monkeypatch, entry)
    compute(3)
    assert all("cachelib-background" in who for who, _ in seen)
    assert background.worker.drain(30)
    assert seen and all("cachelib-background" in who and exists for who, exists in seen)


def test_never_does_not_sync(tmp_path, calls, monkeypatch):
    """With "never", nothing is synced, now or later."""
    compute = cachelib.Cache(tmp_path, fsync="never").memoize(_small)
    assert background.worker.drain(30)  # syncs queued by earlier tests are not this entry's
    entry = [entry_path(compute, 4)]
    seen = _spy_on_fsync(monkeypatch, entry)
    compute(4)
    assert background.worker.drain(30)
    assert seen == []


# --- a crash costs at most a recomputation ------------------------------------------------------


def _call_and_count(compute, x: int) -> tuple[object, int, list[warnings.WarningMessage]]:
    before = len(CALLS)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value = compute(x)
    return value, len(CALLS) - before, caught


def _assert_miss_then_right(compute, x: int, expected, where: str) -> None:
    value, computed, caught = _call_and_count(compute, x)
    assert computed == 1, f"{where}: a damaged entry was used"
    assert all(issubclass(w.category, cachelib.CacheWarning) for w in caught), where
    if isinstance(expected, dict):
        assert value["x"] == expected["x"] and np.array_equal(value["v"], expected["v"]), where
    else:
        assert np.array_equal(value, expected), where


@pytest.mark.slow  # a call per byte of the entry: test_prefixes_of_a_large_entry_... is the quick case
def test_every_prefix_of_an_entry_is_a_miss(tmp_path, calls):
    """An entry cut at any byte (what a crash before its sync can leave) is recomputed, with
    at most a CacheWarning, and the right value is returned: never a wrong or partial hit."""
    compute = cachelib.Cache(tmp_path).memoize(_small)
    expected = _small(5)
    compute(5)
    path = entry_path(compute, 5)
    whole = path.read_bytes()
    for cut in range(len(whole)):
        path.write_bytes(whole[:cut])
        _assert_miss_then_right(compute, 5, expected, f"cut at {cut} of {len(whole)}")
    path.write_bytes(whole)
    assert _call_and_count(compute, 5)[1] == 0  # and the whole entry hits


@pytest.mark.parametrize("mmap_mode", [None, "r"])
def test_prefixes_of_a_large_entry_are_misses(mmap_mode, tmp_path, calls):
    """Prefixes of an entry holding a 400 kB array (every 4093rd byte and the last 64),
    read in memory or mapped: each one is a miss."""
    compute = cachelib.Cache(tmp_path, mmap_mode=mmap_mode).memoize(_large)
    expected = np.arange(50_000.0) * 6
    compute(6)
    path = entry_path(compute, 6)
    whole = path.read_bytes()
    for cut in [*range(0, len(whole), 4093), *range(len(whole) - 64, len(whole))]:
        path.write_bytes(whole[:cut])
        _assert_miss_then_right(compute, 6, expected, f"cut at {cut} of {len(whole)}")


def _before_boot(path: Path) -> None:
    """Give ``path`` the modification time of a file written an hour before this machine started."""
    boot = time.time() - time.clock_gettime(time.CLOCK_BOOTTIME)
    os.utime(path, (boot - 3600, boot - 3600))


def _zero_inside_the_array(path: Path, value: np.ndarray) -> None:
    """Zero one page of the array's bytes in the file, as a crash can leave unwritten blocks."""
    data = path.read_bytes()
    start = data.index(value[1000:1010].tobytes())
    with open(path, "r+b") as handle:
        handle.seek(start)
        handle.write(bytes(4096))


needs_boottime = pytest.mark.skipif(not hasattr(time, "CLOCK_BOOTTIME"), reason="no CLOCK_BOOTTIME here")


@needs_boottime
@pytest.mark.parametrize("fsync", ["background", "never"])
def test_a_hole_in_an_entry_from_before_a_reboot_is_found_by_a_mapped_hit(fsync, tmp_path, calls):
    """A mapped hit does not read its arrays, but an entry published before it was durable and
    older than the last boot may hold blocks a crash left unwritten: their checksums are
    checked, and a damaged one is a miss."""
    compute = cachelib.Cache(tmp_path, mmap_mode="r", fsync=fsync).memoize(_large)
    expected = compute(7).copy()
    path = entry_path(compute, 7)
    _zero_inside_the_array(path, expected)
    _before_boot(path)
    _assert_miss_then_right(compute, 7, expected, "a zeroed page")
    assert isinstance(compute(7), np.memmap)


@needs_boottime
def test_an_intact_entry_from_before_a_reboot_still_maps(tmp_path, calls):
    """The same check passes for an intact entry: the hit is mapped, right, and not recomputed;
    the file is remembered as checked."""
    compute = cachelib.Cache(tmp_path, mmap_mode="r").memoize(_large)
    expected = compute(8).copy()
    path = entry_path(compute, 8)
    _before_boot(path)
    for _ in range(2):
        value, computed, caught = _call_and_count(compute, 8)
        assert computed == 0 and not caught
        assert isinstance(value, np.memmap) and np.array_equal(value, expected)
    st = path.stat()
    assert (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns) in _entry._checked_files


def test_a_file_written_now_is_written_since_boot(tmp_path):
    """The rule behind the check: a file written now is; one from before the boot is not."""
    path = tmp_path / "f"
    path.write_bytes(b"x")
    assert _durability.written_since_boot(path.stat().st_mtime) is hasattr(time, "CLOCK_BOOTTIME")
    if hasattr(time, "CLOCK_BOOTTIME"):
        _before_boot(path)
        assert not _durability.written_since_boot(path.stat().st_mtime)


# --- the background queue -----------------------------------------------------------------------


def test_the_queue_is_bounded_and_closes_what_it_takes(tmp_path):
    """The background worker never holds more files than the queue's limit (the writer syncs the
    rest itself) and closes every descriptor it was given.

    It runs in a fresh interpreter: in the test process, threads and finalizers left by
    other tests open and close descriptors of their own while this one counts.
    """
    script = textwrap.dedent(
        f"""
        import os
        from cachelib._stores import durability as _durability
        from cachelib._stores.background import worker

        _durability.QUEUE_LIMIT = 2
        directory = os.open({str(tmp_path)!r}, os.O_RDONLY)
        before = sorted(os.listdir("/proc/self/fd"))
        most = 0
        for i in range(50):
            path = os.path.join({str(tmp_path)!r}, f"file{{i}}")
            with open(path, "wb") as handle:
                handle.write(os.urandom(100_000))
            _durability.defer(os.open(path, os.O_RDONLY), os.dup(directory))
            most = max(most, worker.pending())
        assert worker.drain(60)
        after = sorted(os.listdir("/proc/self/fd"))
        print(most, worker.pending(), before == after, before, after)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=90, check=True
    )
    most, pending, same, *listings = result.stdout.split(maxsplit=3)
    assert int(most) <= 2
    assert int(pending) == 0
    assert same == "True", listings


def _write_in_a_child(location: str, start: int) -> None:
    compute = cachelib.Cache(location).memoize(_large)
    for x in range(start, start + 5):
        compute(x)


def test_a_forked_child_writes_with_its_own_worker(tmp_path, calls):
    """A child forked while the parent's worker has work writes and syncs its own entries and
    exits; the parent's entries and the child's all load."""
    compute = cachelib.Cache(tmp_path).memoize(_large)
    for x in range(5):
        compute(x)  # the parent's worker thread is started and may still be busy
    context = multiprocessing.get_context("fork")
    child = context.Process(target=_write_in_a_child, args=(str(tmp_path), 10))
    child.start()
    child.join(60)
    assert child.exitcode == 0
    assert background.worker.drain(30)
    for x in [*range(5), *range(10, 15)]:
        assert np.array_equal(cachelib.load(entry_path(compute, x)), np.arange(50_000.0) * x)


def test_a_process_exits_promptly_with_syncs_pending(tmp_path):
    """A process that stores many entries and exits at once finishes (or abandons) its pending
    syncs within the exit wait, and every entry it stored is whole."""
    script = textwrap.dedent(
        f"""
        import numpy as np, cachelib
        compute = cachelib.Cache({str(tmp_path)!r}).memoize(lambda x: np.full(100_000, float(x)))
        for x in range(40):
            compute(x)
        """
    )
    started = time.monotonic()
    subprocess.run([sys.executable, "-c", script], check=True, timeout=90)
    assert time.monotonic() - started < 60
    entries = list(tmp_path.rglob("*.cl"))
    assert len(entries) == 40
    values = sorted(float(cachelib.load(p)[0]) for p in entries)
    assert values == [float(x) for x in range(40)]


# Loaded by every process of the test (sitecustomize), workers included: fsync as a slow disk
# does it, recorded with the process that asked and the file it synced.
_SLOW_RECORDED_FSYNC = """
import os, time

_fsync = os.fsync


def slow_recorded_fsync(fd):
    time.sleep(0.2)  # a slow disk: syncs are still queued when a worker is done
    _fsync(fd)
    with open(os.environ["FSYNC_LOG"], "a") as log:
        log.write(f"{os.getpid()} {os.readlink(f'/proc/self/fd/{fd}')}\\n")


os.fsync = slow_recorded_fsync
"""

_WORKERS_EXIT = """
import os, sys
import numpy as np

import cachelib

compute = cachelib.Cache(sys.argv[1]).memoize(lambda x: np.full(1000, float(x)))


def work(x):
    compute(x)
    return os.getpid()


if __name__ == "__main__":
    how = sys.argv[3]
    if how == "loky":
        from joblib.externals.loky import get_reusable_executor

        executor = get_reusable_executor(max_workers=2)
        pids = list(executor.map(work, range(8)))
        executor.shutdown(wait=True)
    else:
        import multiprocessing

        pool = multiprocessing.get_context(how).Pool(2)
        pids = pool.map(work, range(8))
        pool.close()  # the workers finish and leave by os._exit
        pool.join()
    print(" ".join(map(str, sorted(set(pids)))))
"""


@pytest.mark.slow
@pytest.mark.parametrize("how", ["fork", "spawn", "loky"])
def test_workers_that_leave_by_os_exit_make_their_entries_durable_first(tmp_path, how):
    """multiprocessing and loky workers leave by ``os._exit``, past ``atexit``: the background
    worker's exit rule still syncs every entry they stored (on a slow disk, syncs are still
    queued when they finish their tasks)."""
    if how == "loky":
        pytest.importorskip("joblib", reason="the loky workers come with joblib")
    script, log, site = tmp_path / "script.py", tmp_path / "fsync.log", tmp_path / "site"
    script.write_text(_WORKERS_EXIT)
    site.mkdir()
    (site / "sitecustomize.py").write_text(_SLOW_RECORDED_FSYNC)
    location = tmp_path / "cache"
    path = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))
    result = subprocess.run([sys.executable, str(script), str(location), str(log), how],
                            env={**os.environ, "PYTHONPATH": path, "FSYNC_LOG": str(log)},
                            capture_output=True, text=True, timeout=100, check=True)
    workers = {int(pid) for pid in result.stdout.split()}
    entries = {str(path) for path in location.rglob("*.cl")}
    assert len(entries) == 8
    synced = {}
    for line in log.read_text().splitlines():
        pid, path = line.split(" ", 1)
        synced.setdefault(path, set()).add(int(pid))
    for entry in entries:
        assert synced.get(entry, set()) & workers, f"{entry} was not synced by the worker that stored it"


# --- where syncs may follow renames --------------------------------------------------------------


MOUNTS = """\
/dev/vda / ext4 rw,relatime 0 0
server:/export /home nfs4 rw 0 0
/dev/vdb /home/local xfs rw 0 0
sshfs#me@host: /mnt/remote\\040dir fuse.sshfs rw 0 0
tmpfs /tmp tmpfs rw 0 0
"""


@pytest.mark.parametrize(
    ("path", "kind"),
    [
        ("/", "ext4"),
        ("/var/cache", "ext4"),
        ("/home/me/cache", "nfs4"),
        ("/home/local/cache", "xfs"),
        ("/home/localother", "nfs4"),
        ("/mnt/remote dir/c", "fuse.sshfs"),
        ("/tmp/x", "tmpfs"),
    ],
)
def test_the_filesystem_of_a_path(path, kind):
    """The longest mount point holding the path decides its filesystem (escaped spaces too)."""
    assert _durability.filesystem_type(path, MOUNTS) == kind


def test_background_syncs_before_the_rename_on_a_network_filesystem(tmp_path, calls, monkeypatch):
    """Where other machines could see a rename before the bytes it names, "background" syncs
    before the rename, as "always" does, and the entry is marked durable."""
    monkeypatch.setattr(_durability, "_NETWORK_FILESYSTEMS", _durability._NETWORK_FILESYSTEMS | {
        _durability.filesystem_type(os.path.realpath(tmp_path), Path("/proc/self/mounts").read_text())
    })
    monkeypatch.setattr(cachelib._stores.local, "can_defer", _durability.can_defer)
    compute = cachelib.Cache(tmp_path).memoize(_small)
    compute(9)
    assert _head_of(entry_path(compute, 9)).deferred is False
