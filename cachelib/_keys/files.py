"""Files a call reads: seen through Python's audit hook, keyed by identity, then by content.

Rule: while a miss runs, every file that any thread opens for reading and every
directory it lists is noted, its path made absolute at once (``FileRecording``).
Afterwards each is described by its identity (size, ``mtime_ns``, inode, device) and
its content: a file by its tree digest, a directory by the digest of its names. A
hit checks each identity with one ``stat``, and the content only when the identity
moved, so that a ``touch`` or a re-download of the same bytes still hits; a content
is hashed at most once per process for one identity. An identity seen within one
clock tick of its last change proves nothing (a write in the same tick keeps it):
its content is compared until it settles (``racy``: ``RACY_SECONDS``, or
``COARSE_SECONDS`` on filesystems that keep whole seconds).

Left out, as documented: the interpreter's, installed packages' and cachelib's
files, imported code (``.py``, ``.pyc``, extension modules), ``/dev``, ``/proc``,
``/sys``, ``/run``, cache locations, files opened by descriptor or by C code that
bypasses Python's ``open``, and files the call writes (its outputs). What cannot be
checked later (a FIFO, a socket or a device elsewhere, a file that changed while
the call ran, more than ``MAX_FILES``) is a ``problem``: the result is not stored.
Entries record paths and digests, never contents; a hit checks them with the
reader's own permissions.
"""

from __future__ import annotations

import errno
import os
import stat
import sys
import threading
import time
from typing import Any

import xxhash

from .._format.tree import file_tree
from .code import LIBRARY_ROOTS

__all__ = [
    "COARSE_SECONDS",
    "CONTENT_LIMIT",
    "MAX_FILES",
    "RACY_SECONDS",
    "FileRecording",
    "check_file_item",
    "content_digest",
    "describe_files",
    "describe_path",
    "ignore_files_under",
    "racy_at",
    "unchanged_file",
]

MAX_FILES = 10_000
"""The most files and directories one call may read and still be stored."""
RACY_SECONDS = 0.05
"""How long after a change an identity is not trusted alone, where file times have nanoseconds."""
COARSE_SECONDS = 2.0
"""The same where they are whole seconds (FAT keeps two)."""
CONTENT_LIMIT = 4 << 30
"""Files larger than this are keyed by identity alone: reading them whole at each change costs too much."""

Identity = tuple[int, int, int, int, int]
"""size, mtime_ns, ctime_ns, inode, device (a directory's size is -1)."""

_SYSTEM = tuple(os.path.join(path, "") for path in ("/dev", "/proc", "/sys", "/run"))
_CODE_SUFFIXES = (".py", ".pyc", ".pyo", ".pyd", ".so", ".pth")
_WRITING = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
_IMPORT_SYSTEM = "<frozen importlib"
_RACY_NS, _COARSE_NS = int(RACY_SECONDS * 1e9), int(COARSE_SECONDS * 1e9)
_KNOWN_MAX = 65_536  # contents remembered per process


def _excluded_roots() -> tuple[str, ...]:
    prefixes = {sys.prefix, sys.base_prefix, sys.exec_prefix}
    roots = {os.path.join(os.path.realpath(path), "") for path in prefixes if path}
    return tuple(sorted(roots | set(LIBRARY_ROOTS) | set(_SYSTEM)))


_EXCLUDED = _excluded_roots()
_cache_roots: tuple[str, ...] = ()


def ignore_files_under(directory: str) -> None:
    """Leave files under ``directory`` (a cache location) out of every recording."""
    global _cache_roots
    root = os.path.join(os.path.realpath(directory), "")
    if root not in _cache_roots:
        _cache_roots = (*_cache_roots, root)


# -- recording --------------------------------------------------------------------------------


class FileRecording:
    """The files and directories read, and the files written, while it is active (any thread)."""

    __slots__ = ("listed", "read", "written")

    def __init__(self) -> None:
        self.read: dict[str, Identity | None] = {}  # path: identity when first opened
        self.written: set[str] = set()
        self.listed: dict[str, None] = {}

    def __enter__(self) -> FileRecording:
        _install()
        with _lock:
            global _active
            _active = (*_active, self)
        return self

    def __exit__(self, *exc: object) -> None:
        global _active
        with _lock:
            _active = tuple(recording for recording in _active if recording is not self)


_active: tuple[FileRecording, ...] = ()
_lock = threading.Lock()
_installed = False


def _install() -> None:
    """Add the audit hook once per process, on the first recording (it cannot be removed)."""
    global _installed
    with _lock:
        if not _installed:
            sys.addaudithook(_audit)
            _installed = True


def _audit(event: str, args: tuple[Any, ...]) -> None:
    """Note an ``open`` or a listing for every active recording; one test when none is active."""
    if not _active:
        return
    try:
        if event == "open":
            path, _, flags = args
            if isinstance(path, int) or path is None:
                return  # an open descriptor: its path was seen when it was opened
            full = os.path.abspath(os.fsdecode(path))
            if flags & _WRITING:
                for recording in _active:
                    recording.written.add(full)
                return
            if full.endswith(_CODE_SUFFIXES):
                return  # imported code: keyed as code
            seen = _opened_identity(full)
            for recording in _active:
                recording.read.setdefault(full, seen)
        elif event in ("os.listdir", "os.scandir"):
            path = args[0]
            if isinstance(path, int) or sys._getframe(1).f_code.co_filename.startswith(_IMPORT_SYSTEM):
                return  # the import system looking for modules
            full = os.path.abspath(os.fsdecode(path if path is not None else "."))
            for recording in _active:
                recording.listed[full] = None
    except Exception:  # an audit hook that raises would fail the user's own open
        return


def _opened_identity(path: str) -> Identity | None:
    """The identity of a file as it is opened: compared with the one it has when the call ends."""
    try:
        return _identity(os.stat(path))
    except OSError:
        return None


def _forget_in_child() -> None:
    global _active, _lock
    _active, _lock = (), threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_in_child)


# -- describing what was read -------------------------------------------------------------------


def _skipped(path: str, written: set[str]) -> bool:
    if path in written or path.endswith(_CODE_SUFFIXES):
        return True
    real = os.path.realpath(path)
    return real.startswith(_EXCLUDED) or real.startswith(_cache_roots) or real in written


def racy_at(identity: Identity, now_ns: int) -> bool:
    """True while a change could still happen without changing ``identity`` (within its clock tick)."""
    changed = max(identity[1], identity[2])
    window = _COARSE_NS if changed % 1_000_000_000 == 0 else _RACY_NS
    return now_ns - changed < window


def _identity(info: os.stat_result) -> Identity:
    """What changes whenever a file's bytes do: size, modification and change times, inode, device."""
    return info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_ino, info.st_dev


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file"


def describe_files(recording: FileRecording) -> tuple[list[list[Any]], list[str]]:
    """Return the JSON items describing what ``recording`` saw, and the problems that forbid storing.

    Items are ``["file", path, size, mtime_ns, ctime_ns, inode, device, digest, racy]``,
    ``["dir", path, mtime_ns, ctime_ns, inode, device, digest, racy]`` and
    ``["absent", path]`` (read, then gone when the call ended). ``racy`` is 1 when
    the identity was seen before its last change had settled (``racy``).
    """
    items: list[list[Any]] = []
    problems: list[str] = []
    written = recording.written
    paths = [("file", path, seen) for path, seen in recording.read.items()]
    paths += [("dir", path, None) for path in recording.listed]
    for kind, path, seen in paths:
        if _skipped(path, written):
            continue
        if len(items) >= MAX_FILES:
            problems.append(f"it read more than {MAX_FILES} files and directories")
            break
        try:
            item, problem = _describe(kind, path, seen)
        except OSError as exc:
            item, problem = None, f"`{path}` cannot be checked ({exc.strerror or exc})"
        if problem:
            problems.append(problem)
        elif item is not None:
            items.append(item)
    return items, problems


def describe_path(path: str) -> tuple[list[Any] | None, str]:
    """The item of one file as it is now (a module's source, read by an import), or its problem."""
    try:
        return _describe("file", path, None)
    except OSError as exc:
        return None, f"`{path}` cannot be checked ({exc.strerror or exc})"


def _describe(kind: str, path: str, seen: Identity | None) -> tuple[list[Any] | None, str]:
    """The item of one path, or the problem that keeps it from being checked later."""
    try:
        before = os.stat(path)
    except FileNotFoundError:
        return ["absent", path], ""
    except OSError as exc:
        return None, f"`{path}` cannot be checked ({exc.strerror or exc})"
    racy = int(racy_at(_identity(before), time.time_ns()))
    if stat.S_ISDIR(before.st_mode):
        names = _listing(path, before)
        if names is None:
            return None, f"the directory `{path}` changed while it was listed"
        return ["dir", path, *_identity(before)[1:], names, racy], ""
    if kind == "dir" or not stat.S_ISREG(before.st_mode):
        return None, f"`{path}` is {_kind(before.st_mode)}, whose content cannot be checked later"
    if seen is not None and seen != _identity(before):
        return None, f"`{path}` changed while the call ran"
    digest = _content(path, before)
    if digest is None:
        return None, f"`{path}` changed while it was hashed"
    return ["file", path, *_identity(before), digest, racy], ""


# The identity and digest of the contents this process hashed, by path (directories with size -1).
_known: dict[str, tuple[Identity, str]] = {}


def _remember(path: str, identity: Identity, digest: str) -> None:
    """Keep a digest for its identity once that identity has settled (then it stands for the content)."""
    if not racy_at(identity, time.time_ns()):
        if len(_known) >= _KNOWN_MAX:
            _known.clear()
        _known[path] = (identity, digest)


def _listing(path: str, info: os.stat_result) -> str | None:
    """The digest of a directory's names (remembered, or listed now); None if it changed meanwhile."""
    identity = (-1, info.st_mtime_ns, info.st_ctime_ns, info.st_ino, info.st_dev)
    known = _known.get(path)
    if known is not None and known[0] == identity:
        return known[1]
    names = sorted(os.listdir(path))
    if os.stat(path).st_mtime_ns != info.st_mtime_ns:
        return None
    digest = xxhash.xxh3_128_hexdigest("\0".join(names).encode("utf-8", "surrogateescape"))
    _remember(path, identity, digest)
    return digest


def content_digest(path: str) -> str:
    """The digest of what ``path`` holds now: a file's bytes, a directory's names, or ``"absent"``.

    Raises ``OSError`` for a path that cannot be read, or that keeps changing.
    """
    for _ in range(3):
        try:
            info = os.stat(path)
        except FileNotFoundError:
            return "absent"
        if stat.S_ISDIR(info.st_mode):
            digest = _listing(path, info)
        elif stat.S_ISREG(info.st_mode):
            digest = _content(path, info)
        else:
            raise OSError(errno.EINVAL, f"{_kind(info.st_mode)}, whose content cannot be keyed", path)
        if digest is not None:
            return digest
    raise OSError(errno.EAGAIN, "it changes while it is read", path)


def _content(path: str, info: os.stat_result) -> str | None:
    """The digest of a regular file whose ``stat`` is ``info``: remembered, or hashed now.

    None if the file is not what ``info`` says any more (replaced, grown, shrunk, or
    changed while it was read).
    """
    identity = _identity(info)
    known = _known.get(path)
    if known is not None and known[0] == identity:
        return known[1]
    if info.st_size > CONTENT_LIMIT:
        return ""  # keyed by identity alone
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            return None
        raise
    try:
        opened = os.fstat(fd)
        if not stat.S_ISREG(opened.st_mode) or _identity(opened) != identity:
            return None
        digest = file_tree(fd, info.st_size)
        if digest is None or _identity(os.fstat(fd)) != identity:
            return None
    finally:
        os.close(fd)
    hexdigest = digest.hex()
    _remember(path, identity, hexdigest)
    return hexdigest


# -- checking on a hit --------------------------------------------------------------------------


def unchanged_file(item: list[Any], uid: int) -> bool:
    """The hit path: True if a file item has the same identity and owner ``uid``, and was recorded
    settled or has been hashed settled by this process since (same identity, same digest).

    One ``stat``; False sends the item to ``check_file_item``, which says why or looks closer.
    """
    try:
        info = os.stat(item[1])
    except OSError:
        return False
    if not (info.st_mtime_ns == item[3] and info.st_ctime_ns == item[4] and info.st_size == item[2]
            and info.st_ino == item[5] and info.st_dev == item[6] and info.st_uid == uid):
        return False
    if not item[8]:
        return True
    # Recorded while it could still change unseen: its content vouches for it, once this
    # process has hashed it settled with this very identity.
    known = _known.get(item[1])
    return known is not None and known[1] == item[7] and known[0] == _identity(info)


def check_file_item(item: list[Any]) -> str | None:
    """Return None if a recorded file, directory or absence is as recorded, else what changed.

    Checked with this process's own permissions: a file of another user's that this
    one cannot read is not vouched for by a stat alone.
    """
    kind, path = item[0], item[1]
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return None if kind == "absent" else f"file `{path}` is gone"
    except OSError as exc:
        return f"file `{path}` cannot be checked ({exc.strerror or exc})"
    if info.st_uid != os.geteuid() and not os.access(path, os.R_OK):
        return f"file `{path}` cannot be read here"
    if kind == "absent":
        return f"file `{path}` appeared"
    identity = list(_identity(info))
    if kind == "dir":
        if not stat.S_ISDIR(info.st_mode):
            return f"directory `{path}` is not a directory any more"
        if identity[1:] == item[2:6] and not item[7]:
            return None
        try:
            return None if _listing(path, info) == item[6] else f"directory `{path}` changed"
        except OSError as exc:
            return f"directory `{path}` cannot be listed ({exc.strerror or exc})"
    if not stat.S_ISREG(info.st_mode):
        return f"file `{path}` is {_kind(info.st_mode)} now"
    if identity == item[2:7] and not item[8]:
        return None
    if not item[7]:  # too large to hash: by identity alone
        return f"file `{path}` changed"
    try:
        digest = _content(path, info)
    except OSError as exc:
        return f"file `{path}` cannot be read ({exc.strerror or exc})"
    return None if digest == item[7] else f"file `{path}` changed"

