"""Real conditions for tests: small tmpfs mounts, full and read-only filesystems, other users, children.

Rule: every condition is real (a mounted tmpfs filled to its last byte, a read-only
remount, Unix users made with ``useradd``, processes that really fork) and bounded
(every child runs under a deadline; a hang, a signal or an uncaught exception in a
child fails the test with what happened). Mounts and users are undone at teardown,
also when the test fails. What needs root skips with the reason where it is not root.

Code runs as another user in a *forked* child that drops its privileges: the
interpreter lives under ``/root`` (mode 0700), so other users cannot exec it, and a
child must not import anything new after it changed user. This module imports up
front what children need.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import errno
import grp
import hashlib
import itertools
import json
import mmap  # numpy imports it lazily when mapping, and children cannot import anything later
import os
import pickle
import pwd
import re
import resource
import runpy
import secrets
import select
import shutil
import signal
import stat
import struct
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import files_under, statistics_files

import cachelib

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
needs_root = pytest.mark.skipif(
    not IS_ROOT, reason="needs root: mounts tmpfs, remounts it read-only and creates Unix users"
)
TESTS = Path(__file__).resolve().parent
PAGE = mmap.PAGESIZE


# --- filesystems ----------------------------------------------------------------------


def _run(*command: str) -> None:
    subprocess.run(command, check=True, capture_output=True, timeout=60)


@contextlib.contextmanager
def mounted_tmpfs(directory: Path, size: str = "4m", inodes: int | None = None) -> Iterator[Path]:
    """Mount a tmpfs of ``size`` (and ``inodes`` inodes) on ``directory``; unmount it afterwards."""
    directory.mkdir(parents=True, exist_ok=True)
    options = f"size={size},mode=0755" + (f",nr_inodes={inodes}" if inodes else "")
    _run("mount", "-t", "tmpfs", "-o", options, "tmpfs", str(directory))
    try:
        yield directory
    finally:
        if subprocess.run(["umount", str(directory)], capture_output=True, check=False).returncode:
            subprocess.run(["umount", "-l", str(directory)], capture_output=True, check=False)


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Callable[..., Path]]:
    """``tmpfs(size="4m", inodes=None)``: a fresh tmpfs under tmp_path, unmounted at teardown."""
    if not IS_ROOT:
        pytest.skip("needs root to mount a tmpfs")
    counter = itertools.count()
    with contextlib.ExitStack() as stack:

        def mount(size: str = "4m", inodes: int | None = None) -> Path:
            return stack.enter_context(mounted_tmpfs(tmp_path / f"tmpfs{next(counter)}", size, inodes))

        yield mount


@dataclasses.dataclass
class Filler:
    """The files that fill a filesystem; ``release`` gives some bytes back, ``remove`` all."""

    directory: Path
    big: Path

    def release(self, nbytes: int) -> None:
        """Free ``nbytes`` (rounded up to whole pages) at the end of the big filler file."""
        pages = -(-nbytes // PAGE)
        size = self.big.stat().st_size
        os.truncate(self.big, max(0, size - pages * PAGE))

    def remove(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


def fill(mount: Path, *, inodes: bool = False) -> Filler:
    """Fill the filesystem at ``mount`` to its last byte (and last inode if asked)."""
    directory = mount / f"filler-{secrets.token_hex(4)}"
    directory.mkdir()
    big = directory / "big"
    fd = os.open(big, os.O_WRONLY | os.O_CREAT, 0o600)
    chunk = 1 << 20
    zeros = bytes(chunk)
    try:
        while chunk:
            try:
                if os.write(fd, zeros[:chunk]) < chunk:
                    chunk //= 2
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                chunk //= 2
    finally:
        os.close(fd)
    for index in itertools.count():  # another file's first page, should a partial page remain
        try:
            with open(directory / f"page{index}", "wb") as handle:
                handle.write(b"x")
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
            with contextlib.suppress(OSError):
                os.unlink(directory / f"page{index}")
            break
    if inodes:
        for index in itertools.count():
            try:
                os.close(os.open(directory / f"inode{index}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                break
    return Filler(directory, big)


@contextlib.contextmanager
def kept_full(mount: Path) -> Iterator[None]:
    """Keep the filesystem at ``mount`` full: a process takes every page freed by anyone."""
    directory = mount / f"keeper-{secrets.token_hex(4)}"
    directory.mkdir()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            page = bytes(PAGE)
            for index in itertools.count():
                with contextlib.suppress(OSError), open(directory / f"p{index % 100_000}", "ab") as handle:
                    handle.write(page)
        finally:
            os._exit(0)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        shutil.rmtree(directory, ignore_errors=True)


@contextlib.contextmanager
def readonly(mount: Path) -> Iterator[None]:
    """Remount the filesystem at ``mount`` read-only; remount it read-write afterwards."""
    _run("mount", "-o", "remount,ro", str(mount))
    try:
        yield
    finally:
        _run("mount", "-o", "remount,rw", str(mount))


def used_bytes(mount: Path) -> int:
    """Bytes in use on the filesystem at ``mount``."""
    st = os.statvfs(mount)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


# --- what is on disk ------------------------------------------------------------------


def leftovers(root: Path) -> list[Path]:
    """Temporary files under ``root`` (what a failed write must not leave behind)."""
    return [p for p in files_under(root) if re.search(r"\.tmp\b|\.tmp$", p.name)]


def snapshot(root: Path) -> dict[str, tuple[Any, ...]]:
    """Everything under ``root``: kind, mode, owner and content (or link target) of each path."""
    state: dict[str, tuple[Any, ...]] = {}
    for path in [root, *sorted(root.rglob("*"))]:
        st = os.lstat(path)
        relative = str(path.relative_to(root))
        if stat.S_ISLNK(st.st_mode):
            state[relative] = ("link", os.readlink(path))
        elif stat.S_ISREG(st.st_mode):
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            state[relative] = ("file", st.st_mode, st.st_uid, st.st_size, st.st_mtime_ns, digest)
        else:
            state[relative] = (stat.S_IFMT(st.st_mode), st.st_mode, st.st_uid)
    return state


def file_state(path: Path) -> tuple[Any, ...] | None:
    """A regular file's mode, size, modification time and content digest (None if absent)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    return (st.st_mode, st.st_size, st.st_mtime_ns, hashlib.sha256(path.read_bytes()).hexdigest())


# --- children -------------------------------------------------------------------------


class ChildFailed(AssertionError):
    """A child process hung, died of a signal, or raised."""


@dataclasses.dataclass
class Outcome:
    """What a child's function did: its value or exception, and the warnings it raised."""

    value: Any
    error: BaseException | None
    trace: str
    warnings: list[tuple[type[Warning], str]]

    def result(self) -> Any:
        """The value; a ``ChildFailed`` with the child's traceback if it raised."""
        if self.error is not None:
            raise ChildFailed(f"the child raised {self.error!r}:\n{self.trace}")
        return self.value

    def cache_warnings(self) -> list[str]:
        """The messages of its ``CacheWarning`` warnings, after checking it raised no other kind."""
        others = [(c.__name__, m) for c, m in self.warnings if not issubclass(c, cachelib.CacheWarning)]
        assert not others, f"warnings other than CacheWarning: {others}"
        return [message for _, message in self.warnings]


def _child(function: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], write: int,
           user: User | None, umask: int | None, memory: int | None) -> None:
    """Run in a forked child: drop to ``user``, cap memory, call, send the outcome, exit."""
    status = 0
    try:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
        if memory is not None:
            limit = _address_space() + memory
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        if user is not None:
            os.setgroups(user.groups)
            os.setgid(user.gid)
            os.setuid(user.uid)
        if umask is not None:
            os.umask(umask)
        value: Any = None
        error: BaseException | None = None
        trace = ""
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                value = function(*args, **kwargs)
            except BaseException as exc:
                error, trace = exc, traceback.format_exc()
        seen = [(w.category, str(w.message)) for w in caught]
        del caught
        try:
            data = pickle.dumps((value, error, trace, seen))
        except Exception as exc:
            data = pickle.dumps((None, ChildFailed(f"unpicklable outcome: {exc!r}; {error!r}"), trace, seen))
        view = memoryview(data)
        while view:
            view = view[os.write(write, view):]
    except BaseException:
        status = 70
        with contextlib.suppress(BaseException):
            os.write(2, traceback.format_exc().encode())
    finally:
        os._exit(status)


def _address_space() -> int:
    """This process's virtual memory size in bytes."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmSize in /proc/self/status")


def start_child(function: Callable[..., Any], *args: Any, user: User | None = None,
                umask: int | None = None, memory: int | None = None, **kwargs: Any) -> Child:
    """Fork a child that runs ``function(*args, **kwargs)`` (as ``user``, under ``umask``, capped)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.close(read)
        _child(function, args, kwargs, write, user, umask, memory)
    os.close(write)
    return Child(pid, read, getattr(function, "__name__", repr(function)))


@dataclasses.dataclass
class Child:
    """A forked child whose outcome is collected with ``wait``."""

    pid: int
    pipe: int
    name: str

    def wait(self, timeout: float) -> Outcome:
        """The child's outcome; ``ChildFailed`` if it does not end within ``timeout`` s or dies."""
        deadline = time.monotonic() + timeout
        chunks = []
        try:
            while True:
                left = deadline - time.monotonic()
                ready, _, _ = select.select([self.pipe], [], [], max(left, 0))
                if not ready:
                    self.kill()
                    raise ChildFailed(f"{self.name} did not finish within {timeout} s: it hangs")
                chunk = os.read(self.pipe, 1 << 20)
                if not chunk:
                    break
                chunks.append(chunk)
        finally:
            os.close(self.pipe)
        status = self._reap(deadline)
        if os.WIFSIGNALED(status):
            number = os.WTERMSIG(status)
            raise ChildFailed(f"{self.name} was killed by signal {signal.Signals(number).name}")
        if os.WEXITSTATUS(status) or not chunks:
            raise ChildFailed(f"{self.name} exited with status {os.WEXITSTATUS(status)} and no outcome")
        value, error, trace, seen = pickle.loads(b"".join(chunks))
        return Outcome(value, error, trace, seen)

    def _reap(self, deadline: float) -> int:
        while True:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                return status
            if time.monotonic() > deadline:
                self.kill()
                raise ChildFailed(f"{self.name} did not exit after sending its outcome")
            time.sleep(0.005)

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.pid, 0)


def wait_until(condition: Callable[[], bool], seconds: float = 30.0, interval: float = 0.05) -> None:
    """Return once ``condition()`` is true, or after ``seconds`` (the caller asserts what it needs).

    For what background threads write about once a second (call counts, statistics files):
    a fixed sleep is too short on a loaded machine and too long on an idle one.
    """
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(interval)


def wait_for_new_statistics(location: Path, seen: Iterable[Path] = (), seconds: float = 30.0) -> None:
    """Return once the cache at ``location`` has a statistics file not in ``seen`` (a process
    writes its counts about a second after its calls), or after ``seconds``."""
    old = set(seen)
    wait_until(lambda: not set(statistics_files(location)) <= old, seconds)


def run_with_timeout(
    function: Callable[..., Any], *args: Any, timeout: float = 30.0, **kwargs: Any
) -> Outcome:
    """Run ``function(*args, **kwargs)`` in a forked child; a hang or a signal fails the test."""
    return start_child(function, *args, **kwargs).wait(timeout)


def run_as(user: User, function: Callable[..., Any], *args: Any, timeout: float = 30.0,
           umask: int | None = None, **kwargs: Any) -> Outcome:
    """Run ``function(*args, **kwargs)`` as ``user`` in a forked child that dropped root."""
    return start_child(function, *args, user=user, umask=umask, **kwargs).wait(timeout)


def memory_capped(nbytes: int, function: Callable[..., Any], *args: Any, timeout: float = 60.0) -> Outcome:
    """Run ``function(*args)`` in a child that may map at most ``nbytes`` more than at its fork."""
    return start_child(function, *args, memory=nbytes).wait(timeout)


# --- fresh interpreters ---------------------------------------------------------------

_LAUNCH = (
    "import sys; sys.path.insert(0, sys.argv.pop(1)); import _victims; sys.exit(_victims.main(sys.argv[1:]))"
)


@dataclasses.dataclass
class Fresh:
    """What a fresh interpreter running a ``_victims`` scenario reported."""

    process: subprocess.CompletedProcess[str]
    report: dict[str, Any]

    def cache_warnings(self) -> list[str]:
        """Its ``CacheWarning`` messages, after checking it raised no other kind of warning."""
        others = [w for w in self.report["warnings"] if w[0] != "CacheWarning"]
        assert not others, f"warnings other than CacheWarning: {others}"
        return [message for _, message in self.report["warnings"]]


def _checked(process: subprocess.CompletedProcess[str], what: str) -> None:
    if process.returncode < 0:
        raise ChildFailed(f"{what} was killed by signal {signal.Signals(-process.returncode).name}:\n"
                          f"{process.stderr}")
    assert "Traceback" not in process.stderr, f"{what} printed a traceback:\n{process.stderr}"


def run_fresh(*args: Any, timeout: float = 60.0) -> Fresh:
    """Run ``_victims.main(args)`` in a new interpreter; it must exit 0 with no signal."""
    command = [sys.executable, "-c", _LAUNCH, str(TESTS), *map(str, args)]
    what = f"a fresh interpreter running {' '.join(map(str, args))}"
    try:
        process = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise ChildFailed(f"{what} did not finish within {timeout} s: it hangs") from None
    _checked(process, what)
    assert process.returncode == 0, f"{what} exited {process.returncode}:\n{process.stderr}"
    lines = process.stdout.strip().splitlines()
    assert lines, f"{what} reported nothing:\n{process.stderr}"
    return Fresh(process, json.loads(lines[-1]))


def run_cli(
    *args: Any, timeout: float = 60.0, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m cachelib ARGS``: it must finish in time, with no signal and no traceback.

    It exits 0, 1 or 2, and when it fails it says so in at most one line on stderr (``verify``
    reports damaged entries on stdout, with nothing on stderr).
    """
    command = [sys.executable, "-m", "cachelib", *map(str, args)]
    what = f"cachelib {' '.join(map(str, args))}"
    try:
        process = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False,
                                 env=env, cwd=cwd)
    except subprocess.TimeoutExpired:
        raise ChildFailed(f"{what} did not finish within {timeout} s: it hangs") from None
    return _cli_checked(process, what)


def _cli_checked(process: subprocess.CompletedProcess[str], what: str) -> subprocess.CompletedProcess[str]:
    _checked(process, what)
    assert process.returncode in (0, 1, 2), f"{what} exited {process.returncode}:\n{process.stderr}"
    if process.returncode:
        lines = process.stderr.strip().splitlines()
        assert len(lines) <= 1, f"{what} failed ({process.returncode}) with more than one line: {lines}"
    return process


def fork_cli(*args: Any, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """``run_cli`` in a forked child: the same command line, checked the same way, without the
    start of a new interpreter (a tenth of the time). For what commands do to a cache; what
    depends on how the command line starts (``--help``, the environment, the working
    directory) is for ``run_cli``."""
    what = f"cachelib {' '.join(map(str, args))}"
    out_read, out_write = os.pipe()
    err_read, err_write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        status = 70
        try:
            os.close(out_read)
            os.close(err_read)
            os.dup2(out_write, 1)
            os.dup2(err_write, 2)
            sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115 - flushed before _exit
            sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            warnings.resetwarnings()  # the command line's own filters, not the test run's
            try:
                status = cli_here(*args)
            except BaseException:
                traceback.print_exc()
                status = 1
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(status)
    os.close(out_write)
    os.close(err_write)
    output = {out_read: bytearray(), err_read: bytearray()}
    deadline = time.monotonic() + timeout
    child = Child(pid, out_read, what)
    try:
        open_pipes = set(output)
        while open_pipes:
            ready, _, _ = select.select(list(open_pipes), [], [], max(deadline - time.monotonic(), 0))
            if not ready:
                child.kill()
                raise ChildFailed(f"{what} did not finish within {timeout} s: it hangs")
            for pipe in ready:
                chunk = os.read(pipe, 1 << 16)
                if chunk:
                    output[pipe] += chunk
                else:
                    open_pipes.discard(pipe)
    finally:
        os.close(out_read)
        os.close(err_read)
    status = child._reap(deadline)
    code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
    process = subprocess.CompletedProcess(["cachelib", *map(str, args)], code, output[out_read].decode(),
                                          output[err_read].decode())
    return _cli_checked(process, what)


def cli_here(*args: Any) -> int:
    """Run the command line in this process (a child that changed user cannot exec python)."""
    saved = sys.argv
    sys.argv = ["cachelib", *map(str, args)]
    try:
        runpy.run_module("cachelib", run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        return int(exc.code or 0)
    finally:
        sys.argv = saved
    return 0


# --- users ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class User:
    """A Unix user made for the tests: name, uid, primary gid and every group it is in."""

    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class Users:
    """``alice`` and ``bob``, both in group ``lab`` (gid ``lab``); ``mallory``, in no group of theirs."""

    alice: User
    bob: User
    mallory: User
    lab: int


@pytest.fixture(scope="session")
def users() -> Iterator[Users]:
    """Create alice and bob (group lab) and mallory for the session; delete them afterwards."""
    if not IS_ROOT:
        pytest.skip("needs root to create Unix users and run code as them")
    tag = f"cl{secrets.token_hex(3)}"
    group = f"{tag}lab"
    made: list[str] = []
    _run("groupadd", group)
    try:
        for role in ("alice", "bob", "mallory"):
            extra = ["-G", group] if role != "mallory" else []
            name = f"{tag}{role}"
            _run("useradd", "-M", "-U", "-d", "/nonexistent", "-s", "/usr/sbin/nologin", *extra, name)
            made.append(name)
        lab = grp.getgrnam(group).gr_gid
        people = {}
        for name in made:
            entry = pwd.getpwnam(name)
            groups = (entry.pw_gid, lab) if not name.endswith("mallory") else (entry.pw_gid,)
            people[name[len(tag):]] = User(name, entry.pw_uid, entry.pw_gid, groups)
        yield Users(people["alice"], people["bob"], people["mallory"], lab)
    finally:
        for name in made:
            subprocess.run(["userdel", name], capture_output=True, check=False)
        subprocess.run(["groupdel", group], capture_output=True, check=False)


@pytest.fixture
def arena() -> Iterator[Path]:
    """A directory every user may create in (mode 1777, like /tmp), removed afterwards."""
    directory = Path(tempfile.mkdtemp(prefix="cachelib-users-", dir="/tmp"))
    os.chmod(directory, 0o1777)
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def owned_dir(path: Path, mode: int, uid: int = 0, gid: int = 0) -> Path:
    """Make a directory with exactly ``mode`` and owner ``uid:gid`` (what an admin would make)."""
    path.mkdir()
    os.chown(path, uid, gid)
    os.chmod(path, mode)
    return path


# --- inotify (no module is installed: libc through ctypes) ------------------------------

IN_ACCESS, IN_MODIFY, IN_OPEN = 0x1, 0x2, 0x20
_EVENT = struct.Struct("iIII")
_libc = ctypes.CDLL("libc.so.6", use_errno=True)


class Inotify:
    """inotify(7) events for a few paths, read with a timeout."""

    def __init__(self) -> None:
        self.fd = _libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")

    def watch(self, path: str | os.PathLike[str], mask: int) -> int:
        wd = _libc.inotify_add_watch(self.fd, os.fsencode(path), mask)
        if wd < 0:
            raise OSError(ctypes.get_errno(), "inotify_add_watch", str(path))
        return int(wd)

    def wait(self, timeout: float) -> list[tuple[int, int, str]]:
        """Return the (watch, mask, name) events that arrive within ``timeout`` s (maybe none)."""
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return []
        try:
            data = os.read(self.fd, 1 << 16)
        except BlockingIOError:
            return []
        events, offset = [], 0
        while offset < len(data):
            wd, mask, _, length = _EVENT.unpack_from(data, offset)
            name = data[offset + _EVENT.size:offset + _EVENT.size + length].rstrip(b"\0")
            events.append((wd, mask, os.fsdecode(name)))
            offset += _EVENT.size + length
        return events

    def close(self) -> None:
        os.close(self.fd)
