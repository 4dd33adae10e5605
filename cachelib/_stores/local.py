"""The local store: objects as files under a directory on a local (or NFS) filesystem.

Rule: every file and directory is reached through descriptors that were opened
without following symbolic links and judged by ``_stores.trust`` (owner and mode,
under the ``Rules`` of the tree) before use; nothing is opened that could block
(FIFOs, devices) or read without bound. Everything created gets an explicit mode,
whatever the umask. A write goes to a temporary file beside its key, then is renamed
over it: readers see the old object, the new one, or none; ``fsync`` decides when it
reaches the disk (``_stores.durability``). Layout: a key ``a/b/c`` is the file
``<location>/a/b/c``. The descriptors of the location and of its top-level
directories are borrowed from the process's bounded table (``_stores.descriptors``)
for one operation at a time, never kept per store. A location a group shares is a
``GroupStore`` (``_stores.group``), whose trees are local stores under other rules.
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import os
import re
import stat
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .._errors import CorruptFileError, FileAccessError, InvalidOptionError, UnsafeLocationError
from .base import ItemInfo, KeyLock, Probe, Readable, Store, Unfinished, Writer, check_key
from .descriptors import DIRECTORIES, Handle, give_back
from .durability import can_defer, checked_fsync_mode, defer
from .filelock import FileLock
from .processes import writer_gone, writer_id
from .trust import PRIVATE, SHARED, Rules, judge_directory, judge_file, not_followed

__all__ = ["LocalStore", "temporary_name"]

_BUFFER_SIZE = 1 << 20
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_DIRECTORY = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | _NOFOLLOW | _CLOEXEC
_O_READ = os.O_RDONLY | _NOFOLLOW | getattr(os, "O_NONBLOCK", 0) | _CLOEXEC
_O_CREATE = os.O_RDWR | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC
_ABSENT = (errno.ENOENT, errno.ENOTDIR)
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


def _reopened(kind: type[LocalStore], location: Path, fsync: str) -> LocalStore:
    """Unpickle a local store (settings only: descriptors are opened afresh)."""
    return kind(location, fsync=fsync)


class LocalStore(Store):
    """Objects as files under ``location``; ``share="group"`` for a location a group shares."""

    def __init__(
        self, location: str | os.PathLike[str], *, share: str | None = None, fsync: bool | str = "background"
    ) -> None:
        if share is not None and type(self) is LocalStore:
            raise InvalidOptionError(
                f"LocalStore takes share=None; a location a group shares is GroupStore({str(location)!r}) "
                "(or Cache(location, share='group', secret=...))"
            )
        rules = SHARED if share == "group" else PRIVATE
        self._setup(Path(location).expanduser().absolute(), rules, share, checked_fsync_mode(fsync), None)

    def _setup(self, location: Path, rules: Rules, share: str | None, fsync: str,
               parent: LocalStore | None) -> None:
        """Make this store the tree at ``location`` under ``rules``: the location itself, or for
        ``parent``, its top-level directory ``location.name`` (opened below the parent's descriptor)."""
        self.location = location
        self.url = str(location)
        self.share = share
        self.fsync = fsync
        self.rules = rules
        self._parent_store = parent
        self._deferred: bool | None = None  # whether syncs may follow renames here: known at the first write
        self._group: int | None = None  # the location's group, once it is opened
        self._dirs: dict[str, Handle] = {}  # open directories: "" the top, else top-level names

    @classmethod
    def tree(cls, parent: LocalStore, name: str, rules: Rules) -> LocalStore:
        """The top-level directory ``name`` of ``parent`` as a store of its own, under ``rules``."""
        store = super().__new__(cls)
        store._setup(parent.location / name, rules, parent.share, parent.fsync, parent)
        return store

    def __repr__(self) -> str:
        return f"LocalStore({self.url!r})"

    def __reduce__(self) -> Any:
        return _reopened, (type(self), self.location, self.fsync)

    # -- directories ---------------------------------------------------------------------

    def _root(self, create: bool) -> Handle:
        """Borrow the descriptor of the tree's top (the location), opened and judged when it is not open."""
        handle = self._dirs.get("")
        if handle is not None and handle.borrow():
            return handle
        return DIRECTORIES.add(self._dirs, "", self._open_root(create))

    @contextlib.contextmanager
    def _root_fd(self, create: bool) -> Iterator[int]:
        handle = self._root(create)
        try:
            yield handle.fd
        finally:
            give_back(handle)

    def _open_root(self, create: bool) -> int:
        parent = self._parent_store
        if parent is None:
            return self._open_location(create)
        with parent._root_fd(create) as top:
            self._group = parent._group
            return self._open_dir(top, self.location.name, create, self.location.name)

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
        verdict = judge_directory(st, self.rules)
        if verdict.reason is not None:
            os.close(fd)
            raise UnsafeLocationError(
                f"cache location {path!r} cannot be used safely: {verdict.reason}", path=path
            )
        self._group = st.st_gid
        return fd

    def initialize(self) -> None:
        """Create the location, with the tags that keep backup and version-control tools out."""
        with self._root_fd(True) as root:
            for name, text in (("CACHEDIR.TAG", _CACHEDIR_TAG), (".gitignore", _GITIGNORE)):
                with contextlib.suppress(OSError):
                    self._create_small(root, name, text.encode())

    def exists(self, key: str) -> bool:
        parts = check_key(key)
        try:
            with self.directory_of(parts, False) as parent:
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
        mode = self.rules.directory_mode
        for directory in reversed(missing):
            with contextlib.suppress(FileExistsError):
                os.mkdir(directory, mode)
                fd = os.open(directory, _O_DIRECTORY)
                try:
                    os.fchmod(fd, mode)
                finally:
                    os.close(fd)

    def _create_small(self, parent: int, name: str, data: bytes) -> None:
        """Create a small file if it does not exist yet (never replacing one)."""
        mode = self.rules.file_mode
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC
        try:
            fd = os.open(name, flags, mode, dir_fd=parent)
        except FileExistsError:
            return
        try:
            os.fchmod(fd, mode)
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
            mode = self.rules.directory_mode
            for attempt in range(_CREATE_ATTEMPTS):
                try:
                    os.mkdir(name, mode, dir_fd=parent)
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
                    os.fchmod(fd, mode)
                return fd
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise UnsafeLocationError(
                    f"{where!r} in the cache is a symbolic link or not a directory; cachelib does not use it",
                    path=self.locate(where),
                ) from None
            raise
        verdict = judge_directory(os.fstat(fd), self.rules, self._group)
        if verdict.reason is not None:
            os.close(fd)
            raise UnsafeLocationError(
                f"{where!r} in the cache at {self.url!r} cannot be used safely: {verdict.reason}",
                path=self.locate(where),
            )
        return fd

    def _top(self, name: str, create: bool, fresh: bool = False) -> Handle:
        """Borrow the descriptor of a top-level directory (give it back with ``give_back``).

        ``fresh`` checks that the directory at that name is still the one held, and
        reopens it if another process removed (and maybe recreated) it.
        """
        handle = self._dirs.get(name)
        if handle is not None and handle.borrow():
            if not (fresh and self._replaced(name, handle.fd)):
                return handle
            DIRECTORIES.replace(handle)
            give_back(handle)
        return DIRECTORIES.add(self._dirs, name, self._open_top(name, create))

    def _open_top(self, name: str, create: bool) -> int:
        with self._root_fd(create) as root:
            return self._open_dir(root, name, create, name)

    def _replaced(self, name: str, fd: int) -> bool:
        try:
            held = os.fstat(fd)
            with self._root_fd(False) as root:
                current = os.stat(name, dir_fd=root, follow_symlinks=False)
        except (OSError, KeyError):
            return True
        return held.st_nlink == 0 or (held.st_ino, held.st_dev) != (current.st_ino, current.st_dev)

    @contextlib.contextmanager
    def directory_of(self, parts: list[str], create: bool) -> Iterator[int]:
        """Yield a descriptor of the directory holding the key ``parts``, every level judged."""
        if len(parts) == 1:
            with self._root_fd(create) as root:
                yield root
            return
        top = self._top(parts[0], create, fresh=create)
        opened: list[int] = []
        try:
            current = top.fd
            for depth, name in enumerate(parts[1:-1], 2):
                current = self._open_dir(current, name, create, "/".join(parts[:depth]))
                opened.append(current)
            yield current
        finally:
            for fd in opened:
                os.close(fd)
            give_back(top)

    # -- reading -------------------------------------------------------------------------

    def probe(self, key: str) -> Probe | None:
        top, _, rest = key.partition("/")
        try:
            handle = self._dirs.get(top) if rest else None  # the hit path: borrowed inline
            if handle is not None:
                handle.users.append(None)
                if handle.retired:
                    give_back(handle)
                    handle = None
                else:
                    handle.used = True
            if handle is None:
                handle = self._top(top, False) if rest else self._root(False)
            try:
                st = os.stat(rest or top, dir_fd=handle.fd, follow_symlinks=False)
            finally:
                handle.users.pop()
                if handle.retired and not handle.users:
                    DIRECTORIES.close_unused(handle)
        except FileNotFoundError:
            raise KeyError(key) from None
        except OSError as exc:
            if exc.errno in _ABSENT:
                raise KeyError(key) from None
            raise
        return (st.st_ino, st.st_dev, st.st_size, st.st_mtime_ns), st.st_size, st.st_atime

    def open(self, key: str) -> Readable:
        parts = check_key(key)
        with self.directory_of(parts, False) as parent:
            try:
                fd = os.open(parts[-1], _O_READ, dir_fd=parent)
            except OSError as exc:
                if exc.errno in _ABSENT:
                    raise KeyError(key) from None
                raise not_followed(key, exc) from None
        try:
            st = os.fstat(fd)
            verdict = judge_file(st, self.rules)
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
            handle = self._top(top, False)
            try:
                st = os.stat(rest, dir_fd=handle.fd, follow_symlinks=False)
                os.utime(rest, ns=(time.time_ns(), st.st_mtime_ns), dir_fd=handle.fd, follow_symlinks=False)
            finally:
                give_back(handle)

    # -- writing -------------------------------------------------------------------------

    @contextlib.contextmanager
    def write(self, key: str, *, exclusive: bool = False, keep: bool = False) -> Iterator[Writer]:
        parts = check_key(key)
        name = parts[-1]
        mode = self.rules.file_mode
        with self.directory_of(parts, True) as parent:
            temporary = temporary_name(name)
            fd = os.open(temporary, _O_CREATE, mode, dir_fd=parent)
            file = open(fd, "wb+", buffering=_BUFFER_SIZE)  # noqa: SIM115 - closed below
            try:
                os.fchmod(fd, mode)
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
            with self.directory_of(parts, False) as parent:
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
            with self._root_fd(False) as root:
                fd = os.open(".", _O_DIRECTORY, dir_fd=root)
        else:
            parts = check_key(prefix)
            with self.directory_of(parts, False) as parent:
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
        return FileLock(self, key)

    def unfinished(self, key: str) -> Unfinished | None:
        match = _TEMPORARY.match(key)
        if match is not None:
            return match.group("target"), writer_gone(match.group("tag"), int(match.group("pid")))
        return (None, False) if _EARLIER_TEMPORARY.search(key) else None


def _identity(st: os.stat_result) -> tuple[int, int, int, int]:
    """What changes whenever a file's bytes may have: entries are replaced, never edited."""
    return (st.st_ino, st.st_dev, st.st_size, st.st_mtime_ns)


def _fsync_quietly(fd: int) -> None:
    """Make a rename durable where the filesystem lets a directory be fsynced."""
    with contextlib.suppress(OSError):
        os.fsync(fd)
