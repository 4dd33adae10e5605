"""The local store: where entries live on disk, and how they are published and locked.

Rule: an entry is one file, and it appears whole or not at all. It is written to a
temporary file beside its final name, fsynced, then renamed over it; readers take
no lock and see the old file, the new one, or none. A per-key file lock only keeps
concurrent callers from computing the same entry twice: correctness never rests on it.

Layout under the location::

    .gitignore, CACHEDIR.TAG
    <module.qualname>-<12 hex>/        one directory per function
        <2 hex>/<32 hex>.cl            entries, sharded by key prefix
        <2 hex>/<32 hex>.lock          the key's lock file (empty)
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import shutil
import socket
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any

import filelock

from ._compressors import Compressor
from ._errors import CacheError, FileAccessError, InvalidOptionError, LockTimeout
from ._eviction import plan_eviction
from ._format import MAGIC, Parsed, parse_bytes, unpickle_parsed
from ._persistence import read_value, verify, write_value
from ._signing import SIGNATURE_SIZE, SIGNED_MAGIC, Signer
from ._sizes import format_size

__all__ = ["ENTRY_SUFFIX", "TEMP_SUFFIX", "LocalStore"]

ENTRY_SUFFIX = ".cl"
LOCK_SUFFIX = ".lock"
LOCK_KINDS = ("file", "soft", "none")
SIZE_FILE = ".size"  # "<bytes> <unix time>": the total the last scan found
TEMP_SUFFIX = ".tmp"
_GITIGNORE = "# Created by cachelib: cache entries are not source.\n*\n"
_CACHEDIR_TAG = (
    "Signature: 8a477f597d28d172789f06886806bc55\n"
    "# This file is a cache directory tag created by cachelib.\n"
    "# For information about cache directory tags see https://bford.info/cachedir/\n"
)
_BUFFER_SIZE = 1 << 20
logger = logging.getLogger("cachelib")
_SMALL_ENTRY = 1 << 16
_RECENT_ENTRIES = 256  # small entries whose checked bytes are kept: at most 16 MiB
_ACCESS_RESOLUTION = 60.0  # seconds: how stale a recorded last use may get
_SHARD = re.compile(r"^[0-9a-f]{2}$")
_LEFTOVER_AGE = 3600.0  # seconds after which a temp or lock file is presumed left behind


class LocalStore:
    """Entries of one cache location on a local (or NFS) filesystem."""

    def __init__(
        self,
        location: str | os.PathLike[str],
        *,
        fsync: bool = True,
        secret: bytes | None = None,
        lock: str = "file",
        stale_lock_after: float = _LEFTOVER_AGE,
    ) -> None:
        if lock not in LOCK_KINDS:
            raise InvalidOptionError(f"lock must be one of {LOCK_KINDS}, got {lock!r}")
        self.location = Path(location).expanduser().absolute()
        self.fsync = fsync
        self.signer = Signer(secret) if secret is not None else None
        self.lock_kind = lock
        self.stale_lock_after = stale_lock_after
        self._ready = False
        self._written_since_check = 0
        self._size_after_check: int | None = None  # read from SIZE_FILE on first use
        self._recent: dict[str | Path, tuple[tuple[int, int, int], Parsed | bytes]] = {}

    def __repr__(self) -> str:
        return f"LocalStore({str(self.location)!r})"

    # -- layout ----------------------------------------------------------------------

    def _ensure_location(self) -> None:
        if self._ready:
            return
        if self.location.exists() and not self.location.is_dir():
            raise FileAccessError(f"cache location {str(self.location)!r} exists and is not a directory")
        try:
            self.location.mkdir(mode=0o700, parents=True, exist_ok=True)
            for name, text in ((".gitignore", _GITIGNORE), ("CACHEDIR.TAG", _CACHEDIR_TAG)):
                marker = self.location / name
                if not marker.exists():
                    with contextlib.suppress(FileExistsError), open(marker, "x") as handle:
                        handle.write(text)
        except OSError as exc:
            raise FileAccessError(
                f"cannot create the cache location {str(self.location)!r}: {exc.strerror or exc}; "
                "choose a writable directory"
            ) from exc
        self._ready = True

    def function_dir(self, name: str, identity: str) -> Path:
        """Return the directory of one function's entries (a plain name: never escapes)."""
        return self.location / f"{name}-{identity}"

    @staticmethod
    def entry_path(function_dir: Path, key: str) -> Path:
        """Return the path of the entry ``key`` (32 hex digits) under ``function_dir``."""
        return Path(os.path.join(function_dir, key[:2], key + ENTRY_SUFFIX))

    # -- reading ---------------------------------------------------------------------

    def read(self, path: str | Path, mmap_mode: str | None = None, max_age: float | None = None) -> Any:
        """Return the value stored at ``path``.

        Raises ``FileNotFoundError`` if there is none or it is older than ``max_age``
        seconds, and ``CacheError`` subclasses if it is damaged.
        """
        stat = os.stat(path)
        now = time.time()
        if max_age is not None and now - stat.st_mtime > max_age:
            raise FileNotFoundError(path)
        if now - stat.st_atime > _ACCESS_RESOLUTION:
            _stamp_access(path, stat)
        if mmap_mode is None and stat.st_size <= _SMALL_ENTRY:
            return self._read_small(path, stat)
        with open(path, "rb") as fileobj:
            if self.signer is not None:
                self.signer.check(fileobj, _context(Path(path)))
            else:
                _skip_signature(fileobj)
            return read_value(fileobj, mmap_mode, os.fspath(path))

    def _read_small(self, path: str | Path, stat: os.stat_result) -> Any:
        """Read a small entry, keeping its checked bytes while the file stays the same.

        A file is "the same" while its inode, size and modification time are: entries
        are replaced by rename, never rewritten in place, so a hit costs one ``stat``
        and an unpickling of bytes checked when they were read. Values are rebuilt on
        every hit, so callers never share (or see each other's changes to) a result.
        """
        identity = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
        known = self._recent.get(path)
        if known is None or known[0] != identity:
            descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
            try:  # no file object: a small read is mostly the cost of making one
                data = os.read(descriptor, _SMALL_ENTRY + 1)
            finally:
                os.close(descriptor)
            if self.signer is not None:
                self.signer.check(io.BytesIO(data), _context(Path(path)))
            if data.startswith(SIGNED_MAGIC):
                data = data[SIGNATURE_SIZE:]
            known = (identity, parse_bytes(data) if data.startswith(MAGIC) else data)
            if len(self._recent) >= _RECENT_ENTRIES:
                self._recent.pop(next(iter(self._recent)))
            self._recent[path] = known
        content = known[1]
        if isinstance(content, Parsed):
            return unpickle_parsed(content)
        return read_value(io.BytesIO(content))  # a small compressed entry

    # -- writing ---------------------------------------------------------------------

    def publish(self, path: str | Path, value: Any, compressor: Compressor | None) -> int:
        """Store ``value`` at ``path`` atomically; return the entry's size in bytes.

        If a concurrent ``clear`` removes the directory mid-write, the write is
        retried once in a fresh directory.
        """
        path = Path(path)
        self._ensure_location()
        for attempt in range(2):
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            try:
                return self._publish_once(path, value, compressor)
            except FileNotFoundError:
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def _publish_once(self, path: Path, value: Any, compressor: Compressor | None) -> int:
        writer = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:12]}"
        temporary = path.with_name(f"{path.name}.{writer}{TEMP_SUFFIX}")
        try:
            with open(temporary, "xb", buffering=_BUFFER_SIZE) as fileobj:
                if self.signer is None:
                    write_value(value, fileobj, compressor)
                else:
                    signing = self.signer.begin(fileobj, _context(path))
                    write_value(value, signing, compressor)  # type: ignore[arg-type]
                    self.signer.finish(fileobj, signing)
                fileobj.flush()
                if self.fsync:
                    os.fsync(fileobj.fileno())
                size = fileobj.tell()
            os.replace(temporary, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise
        if self.fsync:
            _fsync_directory(path.parent)
        return size

    def lock(self, path: str | Path, timeout: float) -> filelock.BaseFileLock | None:
        """Return the per-key lock of the entry at ``path`` (not yet acquired), or None.

        ``lock="file"`` uses ``flock``/``fcntl`` locks, which the kernel releases when
        a process dies; ``"soft"`` uses lock files for filesystems without working
        ``flock`` (some NFS mounts), removing one older than ``stale_lock_after``
        seconds as left behind by a dead process; ``"none"`` never locks (concurrent
        callers may then compute the same call twice, still safely).
        """
        if self.lock_kind == "none":
            return None
        path = Path(path)
        self._ensure_location()
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        lock_path = path.with_suffix(LOCK_SUFFIX)
        if self.lock_kind == "file":
            return filelock.FileLock(lock_path, timeout=timeout)
        with contextlib.suppress(OSError):
            if time.time() - lock_path.stat().st_mtime > self.stale_lock_after:
                os.unlink(lock_path)
        return filelock.SoftFileLock(lock_path, timeout=timeout)

    # -- deleting and listing --------------------------------------------------------------

    def delete(self, path: Path) -> None:
        """Remove one entry if it exists."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)

    def clear(self, function_dir: Path | None = None) -> None:
        """Remove one function's entries, or every entry under the location."""
        targets = [function_dir] if function_dir is not None else list(self.function_dirs())
        for target in targets:
            shutil.rmtree(target, ignore_errors=True)
        if function_dir is None and (self.location / SIZE_FILE).exists():
            self._record_size(0)

    def function_dirs(self) -> Iterator[Path]:
        """Yield the directory of every function that has stored something."""
        try:
            with os.scandir(self.location) as entries:
                for entry in entries:
                    if entry.is_dir(follow_symlinks=False) and not entry.name.startswith("."):
                        yield Path(entry.path)
        except FileNotFoundError:
            return

    def evict(
        self,
        bytes_limit: int | None = None,
        items_limit: int | None = None,
        max_age: float | None = None,
        progress: Callable[[Iterable[Any], str], Iterable[Any]] | None = None,
        low_water: float = 1.0,
    ) -> int:
        """Delete least recently used entries until the limits hold; return how many went.

        ``max_age`` removes entries stored longer ago than that many seconds; the
        size and count limits remove the entries whose last use is oldest, down to
        ``low_water`` times the limit. ``progress`` wraps each pass (the command
        line draws a counter with it). Memory stays flat: see ``_eviction``.
        """
        show = progress or (lambda items, label: items)
        plan = plan_eviction(
            show(self._entry_times(), "scanned"), time.time(), bytes_limit, items_limit, max_age, low_water
        )
        removed = freed = 0
        if plan.needed:
            for path, used, stored, size in show(self._entry_times(with_paths=True), "checked"):
                if plan.should_delete(used, stored, size):
                    self.delete(Path(path))
                    removed += 1
                    freed += size
        self._written_since_check = 0
        self._size_after_check = plan.bytes - freed
        self._record_size(self._size_after_check)
        if removed:
            logger.info(
                "evicted %d of %d entries (%s of %s) from %s",
                removed, plan.entries, format_size(freed), format_size(plan.bytes), self.location,
            )
        return removed

    def _recorded_size(self) -> int | None:
        """Return the total size the last scan of the location found, or None."""
        try:
            return int((self.location / SIZE_FILE).read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def _record_size(self, size: int) -> None:
        """Leave the total a scan found for other processes' estimates (best effort)."""
        temporary = self.location / f"{SIZE_FILE}.{uuid.uuid4().hex}.tmp"
        with contextlib.suppress(OSError):
            temporary.write_text(f"{size} {time.time():.0f}\n")
            os.replace(temporary, self.location / SIZE_FILE)
        with contextlib.suppress(OSError):
            temporary.unlink()

    def _entry_times(self, with_paths: bool = False) -> Iterator[Any]:
        """Yield (last used, stored, size) of every entry, with its path first if asked."""
        for directory in self.function_dirs():
            for entry in self.entries(directory):
                try:
                    stat = entry.stat()
                except FileNotFoundError:
                    continue
                times = (max(stat.st_atime, stat.st_mtime), stat.st_mtime, stat.st_size)
                yield (entry.path, *times) if with_paths else times

    def note_write(self, size: int, bytes_limit: int) -> None:
        """Keep ``bytes_limit`` after a write, scanning only when it may be exceeded.

        The store keeps an estimate of the location's size: the total the last scan
        found (by any process: scans record it in ``SIZE_FILE``; a location never
        scanned is scanned at its first write under a limit) plus what this process
        wrote since. It scans when the estimate passes the limit, or, since
        other processes write too, once this process alone has written a tenth of
        the limit. A scan over the limit evicts down to 90% of it, so the next one
        is a tenth of the limit of writes away.
        """
        self._written_since_check += size
        if self._size_after_check is None:
            recorded = self._recorded_size()
            if recorded is None:  # never scanned under a limit: learn its size once
                self.evict(bytes_limit=bytes_limit, low_water=0.9)
                return
            self._size_after_check = recorded
        estimate = self._size_after_check + self._written_since_check
        if estimate > bytes_limit or self._written_since_check >= max(bytes_limit // 10, 1):
            self.evict(bytes_limit=bytes_limit, low_water=0.9)

    def verify(self, path: str | os.PathLike[str]) -> str | None:
        """Return what is wrong with the entry at ``path``, or None if it is intact."""
        try:
            verify(path)
        except (CacheError, OSError) as exc:
            return str(exc)
        return None

    def clean_leftovers(self, older_than: float = _LEFTOVER_AGE) -> int:
        """Remove temporary files of dead or long-gone writers and old unused lock files."""
        removed = 0
        now = time.time()
        for directory in self.function_dirs():
            for shard in _shards(directory):
                with contextlib.suppress(FileNotFoundError), os.scandir(shard) as files:
                    for entry in files:
                        if _is_leftover(entry, now, older_than):
                            with contextlib.suppress(OSError):
                                os.unlink(entry.path)
                                removed += 1
        return removed

    @staticmethod
    def entries(function_dir: Path) -> Iterator[os.DirEntry[str]]:
        """Yield the entry files of one function, one shard at a time."""
        for shard in _shards(function_dir):
            with contextlib.suppress(FileNotFoundError), os.scandir(shard) as files:
                for entry in files:
                    if entry.name.endswith(ENTRY_SUFFIX):
                        yield entry


def _skip_signature(fileobj: IO[bytes]) -> None:
    """Position a cache without a secret after the signature block of a signed entry."""
    if fileobj.read(len(SIGNED_MAGIC)) == SIGNED_MAGIC:
        fileobj.seek(SIGNATURE_SIZE)
    else:
        fileobj.seek(0)


def _context(path: Path) -> str:
    """Name an entry for its signature: function directory and key."""
    return f"{path.parent.parent.name}/{path.name}"


def _shards(function_dir: Path) -> list[str]:
    """Return the shard directories (two hex digits) of one function, in order."""
    try:
        with os.scandir(function_dir) as entries:
            return sorted(e.path for e in entries if _SHARD.match(e.name) and e.is_dir(follow_symlinks=False))
    except FileNotFoundError:
        return []


def _is_leftover(entry: os.DirEntry[str], now: float, older_than: float) -> bool:
    """True for a temp file whose writer is gone, or an old lock file."""
    if not entry.name.endswith((TEMP_SUFFIX, LOCK_SUFFIX)):
        return False
    try:
        age = now - entry.stat().st_mtime
    except FileNotFoundError:
        return False
    if entry.name.endswith(TEMP_SUFFIX) and f".{socket.gethostname()}-" in entry.name:
        pid = entry.name.rsplit(".", 2)[-2].rsplit("-", 2)[-2]
        if pid.isdigit() and not _process_alive(int(pid)):
            return True
    return age > older_than


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _stamp_access(path: str | Path, stat: os.stat_result) -> None:
    """Record a use of an entry in its access time, keeping its modification time.

    The modification time says when the entry was stored (for expiry); the access
    time, set here explicitly, says when it was last used (for LRU eviction). The
    kernel's own atime updates (relatime, noatime) are neither needed nor trusted.
    """
    with contextlib.suppress(OSError, NotImplementedError):
        os.utime(path, ns=(time.time_ns(), stat.st_mtime_ns))


def _fsync_directory(directory: Path) -> None:
    """Make a rename in ``directory`` durable (a no-op where directories cannot be opened)."""
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def release(lock: filelock.BaseFileLock) -> None:
    """Release a held key lock and remove its file, so locks never pile up on disk.

    The file goes while still locked: a waiter already blocked on it wakes, finds the
    entry and loads it; a newcomer creates a fresh file. If the computation failed,
    two of them may compute at once, which is wasteful but never wrong.
    """
    if isinstance(lock, filelock.UnixFileLock):
        with contextlib.suppress(OSError):
            os.unlink(lock.lock_file)
    lock.release()


def acquire(lock: filelock.BaseFileLock | None, on_timeout: str) -> bool:
    """Acquire ``lock``; on timeout return False, or raise ``LockTimeout`` if asked.

    A lock that cannot be taken at all (its directory vanished under a concurrent
    ``clear``, a read-only filesystem) returns False: the caller computes unlocked.
    """
    if lock is None:
        return False
    try:
        Path(lock.lock_file).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        lock.acquire()
        return True
    except filelock.Timeout as exc:  # a TimeoutError, so an OSError: caught first
        if on_timeout == "raise":
            raise LockTimeout(
                f"waited {lock.timeout} s for {lock.lock_file!r}, held by another process "
                "computing the same call; raise lock_timeout or use on_lock_timeout='compute'"
            ) from exc
        return False
    except OSError:
        return False
