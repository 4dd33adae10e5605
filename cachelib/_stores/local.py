"""The local store: objects as files under a directory on a local (or NFS) filesystem.

Rule: every file and directory is reached through descriptors that were opened
without following symbolic links and judged by ``_stores.trust`` (owner and mode) before
use; nothing is opened that could block (FIFOs, devices) or read without bound.
Everything created gets an explicit mode, whatever the umask. A write goes to a
temporary file beside its key, then is renamed over it: readers see the old
object, the new one, or none; ``fsync`` decides when it reaches the disk
(``_stores.durability``). Layout: a key ``a/b/c`` is the file ``<location>/a/b/c``.
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import os
import re
import stat
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from filelock import lock_descriptor, unlock_descriptor

from .._errors import CorruptFileError, FileAccessError, UnsafeLocationError
from .base import ItemInfo, KeyLock, Probe, Readable, Store, Unfinished, Writer, check_key
from .durability import can_defer, checked_fsync_mode, defer
from .processes import writer_gone, writer_id
from .trust import DIRECTORY_MODES, FILE_MODES, judge_directory, judge_file

__all__ = ["LocalStore", "temporary_name"]

_BUFFER_SIZE = 1 << 20
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_DIRECTORY = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | _NOFOLLOW | _CLOEXEC
_O_READ = os.O_RDONLY | _NOFOLLOW | getattr(os, "O_NONBLOCK", 0) | _CLOEXEC
_O_CREATE = os.O_RDWR | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC
_ABSENT = (errno.ENOENT, errno.ENOTDIR)
_RETIRED_MAX = 256  # replaced directory descriptors kept open (see _retire)
_CREATE_ATTEMPTS = 8  # a directory made and removed again by a concurrent clear is made again
_CACHEDIR_TAG = (
    "Signature: 8a477f597d28d172789f06886806bc55\n"
    "# This file is a cache directory tag created by cachelib.\n"
    "# For information about cache directory tags see https://bford.info/cachedir/\n"
)
_GITIGNORE = "# Created by cachelib: cache entries are not source.\n*\n"


# ``<name>.<writer tag>-<pid>-<token>.tmp``: the writer's tag and pid say whether it is gone.
_TEMPORARY = re.compile(r"^(?P<target>.+)\.(?P<tag>[0-9a-f]{8})-(?P<pid>\d+)-[0-9a-f]{12}\.tmp$")
_EARLIER_TEMPORARY = re.compile(r"-\d+-[0-9a-f]{12}\.tmp$")  # written by cachelib 0.2: host-scope-pid


def temporary_name(name: str, pid: int | None = None) -> str:
    """The name of a temporary file that a write of ``name`` by this process (or ``pid``) uses."""
    return f"{name}.{writer_id(pid)}-{uuid.uuid4().hex[:12]}.tmp"


def _not_followed(path: str, exc: OSError) -> CorruptFileError:
    if exc.errno == errno.ELOOP:
        return CorruptFileError(f"{path!r} is a symbolic link; cachelib never follows links inside a cache")
    return CorruptFileError(f"{path!r} cannot be opened: {exc.strerror or exc}")


class LocalStore(Store):
    """Objects as files under ``location``; ``share="group"`` for a location a group shares."""

    def __init__(
        self, location: str | os.PathLike[str], *, share: str | None = None, fsync: bool | str = "background"
    ) -> None:
        self.location = Path(location).expanduser().absolute()
        self.url = str(self.location)
        self.share = share
        self.fsync = checked_fsync_mode(fsync)
        self._deferred: bool | None = None  # whether syncs may follow renames here: known at the first write
        self._dir_mode = DIRECTORY_MODES[share]
        self._file_mode = FILE_MODES[share]
        self._lock = threading.Lock()
        self._root: int | None = None
        self._group: int | None = None
        self._dirs: dict[str, int] = {}  # top-level directory -> descriptor, never closed early
        self._retired: list[int] = []

    def __repr__(self) -> str:
        return f"LocalStore({self.url!r})"

    def __getstate__(self) -> dict[str, Any]:
        return {"location": self.location, "share": self.share, "fsync": self.fsync}

    def __setstate__(self, state: dict[str, Any]) -> None:
        LocalStore.__init__(self, state["location"], share=state["share"], fsync=state["fsync"])

    def __del__(self) -> None:
        if not hasattr(self, "_retired"):
            return  # __init__ refused its arguments
        for fd in [*self._dirs.values(), *self._retired, *([self._root] if self._root is not None else [])]:
            with contextlib.suppress(OSError):
                os.close(fd)

    # -- directories ---------------------------------------------------------------------

    def _root_fd(self, create: bool) -> int:
        """Return the location's descriptor, opened and judged once (created if asked)."""
        root = self._root
        if root is not None:
            return root
        with self._lock:
            if self._root is None:
                self._root = self._open_location(create)
            return self._root

    def _open_location(self, create: bool) -> int:
        path = str(self.location)
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | _CLOEXEC)
        except FileNotFoundError:
            if not create:
                raise KeyError(path) from None
            self._create_location()
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | _CLOEXEC)
        except NotADirectoryError:
            raise FileAccessError(
                f"cache location {path!r} exists and is not a directory; choose a directory", path=path
            ) from None
        except OSError as exc:
            raise FileAccessError(
                f"cache location {path!r} cannot be opened: {exc.strerror or exc}", path=path
            ) from exc
        st = os.fstat(fd)
        verdict = judge_directory(st, self.share)
        if verdict.reason is not None:
            os.close(fd)
            raise UnsafeLocationError(
                f"cache location {path!r} cannot be used safely: {verdict.reason}", path=path
            )
        self._group = st.st_gid
        return fd

    def initialize(self) -> None:
        """Create the location, with the tags that keep backup and version-control tools out."""
        root = self._root_fd(True)
        for name, text in (("CACHEDIR.TAG", _CACHEDIR_TAG), (".gitignore", _GITIGNORE)):
            with contextlib.suppress(OSError):
                self._create_small(root, name, text.encode())

    def exists(self, key: str) -> bool:
        parts = check_key(key)
        try:
            with self._parent(parts, False) as parent:
                st = os.stat(parts[-1], dir_fd=parent, follow_symlinks=False)
        except (KeyError, FileNotFoundError, NotADirectoryError):
            return False
        return stat.S_ISREG(st.st_mode)

    def _create_location(self) -> None:
        """Make the location and any missing parents, each with this mode's permissions."""
        missing = []
        path = self.location
        while not path.exists() and path != path.parent:
            missing.append(path)
            path = path.parent
        for directory in reversed(missing):
            with contextlib.suppress(FileExistsError):
                os.mkdir(directory, self._dir_mode)
                fd = os.open(directory, _O_DIRECTORY)
                try:
                    os.fchmod(fd, self._dir_mode)
                finally:
                    os.close(fd)

    def _create_small(self, parent: int, name: str, data: bytes) -> None:
        """Create a small file if it does not exist yet (never replacing one)."""
        try:
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC, self._file_mode,
                         dir_fd=parent)
        except FileExistsError:
            return
        try:
            os.fchmod(fd, self._file_mode)
            os.write(fd, data)
        finally:
            os.close(fd)

    def _open_dir(self, parent: int, name: str, create: bool, where: str) -> int:
        """Open (or create) the directory ``name`` below ``parent``, without following links, and judge it."""
        try:
            fd = os.open(name, _O_DIRECTORY, dir_fd=parent)
        except FileNotFoundError:
            if not create:
                raise KeyError(where) from None
            for attempt in range(_CREATE_ATTEMPTS):
                try:
                    os.mkdir(name, self._dir_mode, dir_fd=parent)
                    created = True
                except FileExistsError:
                    created = False
                try:
                    fd = self._open_dir(parent, name, False, where)
                except KeyError:  # a concurrent clear removed it between mkdir and open
                    if attempt == _CREATE_ATTEMPTS - 1:
                        raise
                    continue
                if created:
                    os.fchmod(fd, self._dir_mode)
                return fd
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise UnsafeLocationError(
                    f"{where!r} in the cache is a symbolic link or not a directory; cachelib does not use it",
                    path=self.locate(where),
                ) from None
            raise
        verdict = judge_directory(os.fstat(fd), self.share, self._group)
        if verdict.reason is not None:
            os.close(fd)
            raise UnsafeLocationError(
                f"{where!r} in the cache at {self.url!r} cannot be used safely: {verdict.reason}",
                path=self.locate(where),
            )
        return fd

    def _top(self, name: str, create: bool, fresh: bool = False) -> int:
        """Return the descriptor of a top-level directory, kept open for this store's life.

        ``fresh`` checks that the directory at that name is still the one held, and
        reopens it if another process removed (and maybe recreated) it.
        """
        fd = self._dirs.get(name)
        if fd is not None and not (fresh and self._replaced(name, fd)):
            return fd
        root = self._root_fd(create)
        with self._lock:
            current = self._dirs.get(name)
            if current is not None and current != fd:
                return current
            opened = self._open_dir(root, name, create, name)
            if fd is not None:
                self._retire(fd)
            self._dirs[name] = opened
            return opened

    def _replaced(self, name: str, fd: int) -> bool:
        try:
            held = os.fstat(fd)
            current = os.stat(name, dir_fd=self._root_fd(False), follow_symlinks=False)
        except (OSError, KeyError):
            return True
        return held.st_nlink == 0 or (held.st_ino, held.st_dev) != (current.st_ino, current.st_dev)

    def _retire(self, fd: int) -> None:
        """Keep a replaced descriptor open a while: another thread may still be using its number."""
        self._retired.append(fd)
        if len(self._retired) > _RETIRED_MAX:
            with contextlib.suppress(OSError):
                os.close(self._retired.pop(0))

    @contextlib.contextmanager
    def _parent(self, parts: list[str], create: bool) -> Iterator[int]:
        """Yield a descriptor of the directory holding the key ``parts``, every level judged."""
        if len(parts) == 1:
            yield self._root_fd(create)
            return
        top = self._top(parts[0], create, fresh=create)
        opened: list[int] = []
        try:
            current = top
            for depth, name in enumerate(parts[1:-1], 2):
                current = self._open_dir(current, name, create, "/".join(parts[:depth]))
                opened.append(current)
            yield current
        finally:
            for fd in opened:
                os.close(fd)

    # -- reading -------------------------------------------------------------------------

    def probe(self, key: str) -> Probe | None:
        top, _, rest = key.partition("/")
        try:
            fd = self._dirs.get(top) if rest else self._root_fd(False)
            if fd is None:
                fd = self._top(top, False)
            st = os.stat(rest or top, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            raise KeyError(key) from None
        except OSError as exc:
            if exc.errno in _ABSENT:
                raise KeyError(key) from None
            raise
        return (st.st_ino, st.st_dev, st.st_size, st.st_mtime_ns), st.st_size, st.st_atime

    def open(self, key: str) -> Readable:
        parts = check_key(key)
        with self._parent(parts, False) as parent:
            try:
                fd = os.open(parts[-1], _O_READ, dir_fd=parent)
            except OSError as exc:
                if exc.errno in _ABSENT:
                    raise KeyError(key) from None
                raise _not_followed(key, exc) from None
        try:
            st = os.fstat(fd)
            verdict = judge_file(st, self.share)
            if verdict.reason is not None:  # a damaged entry: recomputed and replaced
                raise CorruptFileError(f"{key!r} in the cache at {self.url!r} is not used: {verdict.reason}")
            file = open(fd, "rb", closefd=True)  # noqa: SIM115 - the Readable closes it
        except BaseException:
            os.close(fd)
            raise
        return Readable(file, st.st_size, own=verdict.own, mappable=verdict.own, identity=_identity(st))

    def read_bytes(self, key: str, limit: int) -> bytes:
        with self.open(key) as handle:
            data = os.read(handle.file.fileno(), limit + 1)
        if len(data) > limit:
            raise CorruptFileError(f"{key!r} in the cache holds more than the {limit} bytes expected")
        return data

    def touch(self, key: str) -> None:
        top, _, rest = key.partition("/")
        with contextlib.suppress(OSError, KeyError, NotImplementedError):
            fd = self._dirs.get(top)
            if fd is None:
                fd = self._top(top, False)
            st = os.stat(rest, dir_fd=fd, follow_symlinks=False)
            os.utime(rest, ns=(time.time_ns(), st.st_mtime_ns), dir_fd=fd, follow_symlinks=False)

    # -- writing -------------------------------------------------------------------------

    @contextlib.contextmanager
    def write(self, key: str, *, exclusive: bool = False, keep: bool = False) -> Iterator[Writer]:
        parts = check_key(key)
        name = parts[-1]
        with self._parent(parts, True) as parent:
            temporary = temporary_name(name)
            fd = os.open(temporary, _O_CREATE, self._file_mode, dir_fd=parent)
            file = open(fd, "wb+", buffering=_BUFFER_SIZE)  # noqa: SIM115 - closed below
            try:
                os.fchmod(fd, self._file_mode)
                sync = self._sync_mode()
                writer = Writer(file, deferred=sync != "always")
                yield writer
                file.flush()
                if sync == "always":
                    os.fsync(fd)
                if exclusive:
                    os.link(temporary, name, src_dir_fd=parent, dst_dir_fd=parent, follow_symlinks=False)
                    os.unlink(temporary, dir_fd=parent)
                else:
                    os.replace(temporary, name, src_dir_fd=parent, dst_dir_fd=parent)
                if sync == "always":
                    _fsync_quietly(parent)
                elif sync == "background":
                    defer(os.dup(fd), os.dup(parent))
                if keep:
                    size = file.tell()
                    copy = open(os.dup(fd), "rb")  # noqa: SIM115 - the Readable closes it
                    copy.seek(0)  # a duplicate shares the offset, left at the end
                    writer.hand_back(Readable(copy, size, own=True, mappable=True))
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(temporary, dir_fd=parent)
                raise
            finally:
                file.close()

    def _sync_mode(self) -> str:
        """Return how a write is made durable: "background" is "always" on a network filesystem."""
        if self.fsync != "background":
            return self.fsync
        if self._deferred is None:
            self._deferred = can_defer(str(self.location))
        return "background" if self._deferred else "always"

    def delete(self, key: str) -> bool:
        parts = check_key(key)
        try:
            with self._parent(parts, False) as parent:
                os.unlink(parts[-1], dir_fd=parent)
        except KeyError:
            return False
        except OSError as exc:
            if exc.errno in _ABSENT:
                return False
            raise
        return True

    # -- listing -------------------------------------------------------------------------

    @contextlib.contextmanager
    def _opened(self, prefix: str) -> Iterator[int]:
        """Yield a fresh descriptor of the directory ``prefix`` (the location for "")."""
        if not prefix:
            fd = os.open(".", _O_DIRECTORY, dir_fd=self._root_fd(False))
        else:
            parts = check_key(prefix)
            with self._parent(parts, False) as parent:
                fd = self._open_dir(parent, parts[-1], False, prefix)
        try:
            yield fd
        finally:
            os.close(fd)

    def list_dirs(self, prefix: str) -> builtins.list[str]:
        try:
            with self._opened(prefix) as fd, os.scandir(fd) as entries:
                return sorted(e.name for e in entries if e.is_dir(follow_symlinks=False))
        except (KeyError, FileNotFoundError, NotADirectoryError):
            return []

    def list(self, prefix: str) -> Iterator[ItemInfo]:
        try:
            with self._opened(prefix) as fd:
                yield from self._walk(fd, prefix)
        except (KeyError, FileNotFoundError, NotADirectoryError):
            return

    def _walk(self, fd: int, prefix: str) -> Iterator[ItemInfo]:
        uid = os.geteuid()
        with os.scandir(fd) as scanned:
            entries = list(scanned)
        for entry in entries:
            key = f"{prefix}/{entry.name}" if prefix else entry.name
            try:
                if entry.is_dir(follow_symlinks=False):
                    sub = self._open_dir(fd, entry.name, False, key)
                    try:
                        yield from self._walk(sub, key)
                    finally:
                        os.close(sub)
                elif entry.is_file(follow_symlinks=False):
                    st = entry.stat(follow_symlinks=False)
                    yield ItemInfo(key, st.st_size, st.st_mtime, max(st.st_atime, st.st_mtime),
                                   own=st.st_uid in (uid, 0))
            except (KeyError, FileNotFoundError, UnsafeLocationError):
                continue  # gone meanwhile, or not ours to walk into

    # -- locks ---------------------------------------------------------------------------

    def lock(self, key: str) -> KeyLock | None:
        return _FileLock(self, key)

    def unfinished(self, key: str) -> Unfinished | None:
        match = _TEMPORARY.match(key)
        if match is not None:
            return match.group("target"), writer_gone(match.group("tag"), int(match.group("pid")))
        return (None, False) if _EARLIER_TEMPORARY.search(key) else None


class _FileLock(KeyLock):
    """A ``flock`` on a lock file opened without following links, never truncated.

    The kernel releases it when its holder dies. The file is removed on release;
    a waiter that wins a file already removed opens the new one and waits again,
    so two holders never overlap. A ``flock`` belongs to the open file description,
    which a forked child shares: the child closes its copies of the descriptors of
    every lock file open in the parent, held or waited for (``_forget_open_locks``),
    so that a lock goes with the process that took it, and the child never
    releases or removes it.
    """

    def __init__(self, store: LocalStore, key: str) -> None:
        self._store = store
        self._parts = check_key(key)
        self._fd: int | None = None  # the lock file, while open (held or waited for)
        self._held = False
        self._parent: contextlib.ExitStack | None = None
        self._parent_fd = -1

    def _open(self) -> os.stat_result:
        stack = contextlib.ExitStack()
        parent = stack.enter_context(self._store._parent(self._parts, True))
        flags = os.O_RDONLY | os.O_CREAT | _NOFOLLOW | getattr(os, "O_NONBLOCK", 0) | _CLOEXEC
        try:
            fd = os.open(self._parts[-1], flags, self._store._file_mode, dir_fd=parent)
        except OSError as exc:
            stack.close()
            raise _not_followed("/".join(self._parts), exc) from None
        self._fd, self._parent, self._parent_fd = fd, stack, parent
        _open_locks.add(self)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise CorruptFileError(f"lock file {'/'.join(self._parts)!r} is not a regular file")
            if st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) != self._store._file_mode:
                os.fchmod(fd, self._store._file_mode)
        except BaseException:
            self._drop()
            raise
        return st

    def _still_named(self, st: os.stat_result) -> bool:
        try:
            current = os.stat(self._parts[-1], dir_fd=self._parent_fd, follow_symlinks=False)
        except OSError:
            return False
        return (current.st_ino, current.st_dev) == (st.st_ino, st.st_dev)

    def _drop(self) -> None:
        """Close the lock file and its directory (releasing the lock, if this process holds it)."""
        _open_locks.discard(self)
        fd, self._fd = self._fd, None
        self._held = False
        if fd is not None:
            os.close(fd)
        parent, self._parent = self._parent, None
        if parent is not None:
            parent.close()

    def acquire(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        delay = 0.001
        while True:
            st = self._open()
            fd = self._fd
            assert fd is not None
            while not lock_descriptor(fd, blocking=False):
                if time.monotonic() >= deadline:
                    self._drop()
                    return False
                time.sleep(delay)
                delay = min(delay * 2, 0.05)
            if self._still_named(st):
                self._held = True
                return True
            unlock_descriptor(fd)
            self._drop()  # it was removed by the holder we waited for: take the new one

    def release(self) -> None:
        fd = self._fd
        if fd is None or not self._held:
            return
        with contextlib.suppress(OSError):
            if self._still_named(os.fstat(fd)):
                os.unlink(self._parts[-1], dir_fd=self._parent_fd)
        with contextlib.suppress(OSError):
            unlock_descriptor(fd)
        self._drop()

    def forget(self) -> None:
        """In a forked child: close this process's copies of the lock's descriptors, nothing else.

        Closing a copy never releases a ``flock`` (the parent's descriptor keeps the
        description alive); unlocking would, and so would removing the file.
        """
        with contextlib.suppress(OSError):
            self._drop()


_open_locks: set[_FileLock] = set()  # lock files open in this process (set.add/discard are atomic)


def _forget_open_locks() -> None:
    """In a forked child: close every lock file the parent had open, held or waited for."""
    for lock in list(_open_locks):
        lock.forget()
    _open_locks.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_open_locks)


def _identity(st: os.stat_result) -> tuple[int, int, int, int]:
    """What changes whenever a file's bytes may have: entries are replaced, never edited."""
    return (st.st_ino, st.st_dev, st.st_size, st.st_mtime_ns)


def _fsync_quietly(fd: int) -> None:
    """Make a rename durable where the filesystem lets a directory be fsynced."""
    with contextlib.suppress(OSError):
        os.fsync(fd)

