"""Entries: the cache's policy, written once above any store.

Rule: callers above name a function's namespace and a key; this module decides
how their entries are read, written, framed (``envelope``), signed, trusted,
expired, locked, listed and cleared, under the names ``names`` gives them. Only
what carries cachelib's names inside marked directories is ever deleted, never
another user's (an object the store says is not the user's own is left, and
counted), and never what another process is using: a temporary object is removed
once its writer is gone (or after ``LEFTOVER_AGE``), a lock only while nobody holds
it. Leases are taken in the store's ``shared`` store.
"""

from __future__ import annotations

import collections
import contextlib
import heapq
import io
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from .._codecs.registry import Compressor
from .._errors import CacheError, CorruptFileError, FileAccessError, InvalidOptionError, NotACacheError
from .._format.reader import Parsed, unpickle_parsed
from .._stores.base import ItemInfo, KeyLock, Readable, Store
from .._stores.leases import Lease
from . import names
from .envelope import EntryHead, parse_entry, read_entry, read_head, verify_entry, write_entry
from .signing import Signer

__all__ = ["LEFTOVER_AGE", "Check", "ClearReport", "Entries", "Missing", "Stale"]

LOCK_KINDS = ("file", "soft", "none")
_LOCATION_TEXT = b"cachelib location 1\n"
_LEGACY_TAG = b"created by cachelib"
_SMALL_ENTRY = 1 << 16
_MEMO_ENTRIES = 256  # small entries kept checked and parsed: at most 16 MiB
_ACCESS_RESOLUTION = 60.0  # seconds: how stale a recorded last use may get
LEFTOVER_AGE = 3600.0  # seconds after which a temp or lock file is presumed left behind


class Missing(KeyError):
    """No usable entry: none stored, or expired."""


class Stale(Missing):
    """An entry whose recorded dependencies changed: ``reason`` says which."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(name)
        self.reason = reason

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.args[0], self.reason)


Check = Callable[[dict[str, Any]], "str | None"]
"""Called with an entry's metadata before its value is read: None to use it, else why not."""


@dataclass(frozen=True)
class _Known:
    """A small entry as last read and checked, kept while its file stays the same."""

    identity: Any
    stored: float
    metadata: dict[str, Any]
    parsed: Parsed
    own: bool


@dataclass
class ClearReport:
    """What ``clear`` did: entries removed and files left (to other members)."""

    removed: int = 0
    left: int = 0
    failures: list[str] = field(default_factory=list)


class Entries:
    """The entries of one cache location, on one store."""

    def __init__(self, store: Store, *, secret: bytes | None = None, lock: str = "file") -> None:
        if lock not in LOCK_KINDS:
            raise InvalidOptionError(f"lock must be one of {LOCK_KINDS}, got {lock!r}")
        self.store = store
        self.signer = Signer(secret) if secret is not None else None
        self.lock_kind = lock
        self._memo: collections.OrderedDict[str, _Known] = collections.OrderedDict()
        self._memo_lock = threading.Lock()
        self._marked: set[str] = set()

    def __repr__(self) -> str:
        return f"Entries({self.store!r})"

    def __getstate__(self) -> dict[str, Any]:
        """Pickle the settings, never the entries kept in memory."""
        return {"store": self.store, "signer": self.signer, "lock_kind": self.lock_kind}

    def __setstate__(self, state: dict[str, Any]) -> None:
        Entries.__init__(self, state["store"], lock=state["lock_kind"])
        self.signer = state["signer"]

    # -- markers ---------------------------------------------------------------------------

    def _ensure_marked(self, namespace: str, about: dict[str, Any]) -> None:
        """Mark the location and the function's directory as cachelib's before writing in them."""
        if namespace in self._marked:
            return
        self.prepare()
        self._create_once(names.function_marker(namespace), json.dumps(about).encode())
        self._marked.add(namespace)

    def prepare(self) -> None:
        """Create the location and mark it as cachelib's (as a first write would)."""
        self.store.initialize()
        self._create_once(names.LOCATION_MARKER, _LOCATION_TEXT)

    def _create_once(self, key: str, payload: bytes) -> None:
        if not self.store.exists(key):
            with contextlib.suppress(FileExistsError), self.store.write(key, exclusive=True) as writer:
                writer.file.write(payload)

    def location_state(self) -> str:
        """Return "absent", "cache" (a marked cachelib location) or "foreign".

        A location that cannot be used at all (not a directory, not to be trusted)
        raises its ``FileAccessError``.
        """
        try:
            if self.store.exists(names.LOCATION_MARKER):
                return "cache"
            tag = self.store.read_bytes(names.CACHEDIR_TAG, 4096)
        except KeyError:
            return "absent" if not self._has_anything() else "foreign"
        except FileAccessError:
            raise
        except (CacheError, OSError):
            return "foreign"
        return "cache" if _LEGACY_TAG in tag else "foreign"

    def _has_anything(self) -> bool:
        try:
            return bool(self.store.list_dirs("")) or next(iter(self.store.list("")), None) is not None
        except (KeyError, OSError):
            return False

    def require_cache(self) -> bool:
        """Return False for an absent location; raise ``NotACacheError`` for a foreign one."""
        state = self.location_state()
        if state == "foreign":
            raise NotACacheError(
                f"{self.store.url!r} is not a cachelib location (it has no {names.LOCATION_MARKER} marker); "
                "cachelib changes nothing in it"
            )
        return state == "cache"

    def namespaces(self) -> list[str]:
        """Return the marked function directories of the location."""
        try:
            found = self.store.list_dirs("")
        except (KeyError, OSError):
            return []
        return [n for n in found if names.is_namespace(n) and self.store.exists(names.function_marker(n))]

    def about(self, namespace: str) -> dict[str, Any]:
        """Return what a function's marker says of it (its readable name), or {}."""
        try:
            about = json.loads(self.store.read_bytes(names.function_marker(namespace), 4096))
        except (KeyError, CacheError, OSError, ValueError):
            return {}
        return about if isinstance(about, dict) else {}

    # -- reading ---------------------------------------------------------------------------

    def get(
        self, namespace: str, key: str, *, mmap_mode: str | None = None, max_age: float | None = None,
        check: Check | None = None,
    ) -> tuple[dict[str, Any], Any]:
        """Return ``(metadata, value)`` of an entry; ``Missing`` if there is none usable.

        ``check`` sees the metadata before the value is read (``Stale`` if it refuses).
        Raises a ``CacheError`` for an entry that is damaged, forged or untrusted.
        """
        name = names.entry(namespace, key)
        try:
            probe = self.store.probe(name)
        except KeyError:
            raise Missing(name) from None
        if probe is not None and mmap_mode is None and probe[1] <= _SMALL_ENTRY:
            identity, _, used = probe
            known = self._memo.get(name)
            if known is None or known.identity != identity:
                known = self._read_small(name, key)
            now = time.time()
            if max_age is not None and now - known.stored > max_age:
                raise Missing(name)
            if check is not None:
                _check_metadata(check, known.metadata, name)
            if now - used > _ACCESS_RESOLUTION:
                self.store.touch(name)
            return known.metadata, unpickle_parsed(known.parsed, fresh=True, restricted=not known.own)
        with self._open(name) as handle:
            head = read_head(handle.file, handle.size)
            _check_head(head, key, max_age, name)
            if check is not None:
                _check_metadata(check, head.metadata, name)
            mapped = mmap_mode if handle.mappable else None
            if self.signer is None and handle.own:
                value = read_entry(handle.file, handle.size, head, mmap_mode=mapped)
            else:  # checked whole before anything is unpickled: signed, or rebuilt as plain data only
                parsed = parse_entry(
                    handle.file, handle.size, head, signer=self.signer, context=name, mmap_mode=mapped
                )
                value = unpickle_parsed(parsed, restricted=not handle.own)
        if probe is None or time.time() - probe[2] > _ACCESS_RESOLUTION:
            self.store.touch(name)
        return head.metadata, value

    def _open(self, name: str) -> Readable:
        try:
            return self.store.open(name)
        except KeyError:
            raise Missing(name) from None

    def _read_small(self, name: str, key: str) -> _Known:
        with self._open(name) as handle:
            data = handle.file.read(_SMALL_ENTRY + 1)
        buffer = io.BytesIO(data)
        head = read_head(buffer, len(data))
        _check_head(head, key, None, name)
        parsed = parse_entry(buffer, len(data), head, signer=self.signer, context=name)
        known = _Known(handle.identity, head.stored, head.metadata, parsed, handle.own)
        with self._memo_lock:
            self._memo[name] = known
            while len(self._memo) > _MEMO_ENTRIES:
                self._memo.popitem(last=False)
        return known

    def head(self, namespace: str, key: str) -> EntryHead:
        """Return the checked header and metadata of an entry (``Missing`` if none)."""
        name = names.entry(namespace, key)
        with self._open(name) as handle:
            head = read_head(handle.file, handle.size)
        _check_head(head, key, None, name)
        return head

    def contains(
        self, namespace: str, key: str, max_age: float | None = None, check: Check | None = None
    ) -> bool:
        """True if an intact-looking, unexpired entry is stored for ``key`` (and ``check`` accepts it)."""
        try:
            head = self.head(namespace, key)
            _check_age(head.stored, max_age, namespace)
            if check is not None:
                _check_metadata(check, head.metadata, namespace)
        except (Missing, CacheError, OSError):
            return False
        return True

    # -- writing ---------------------------------------------------------------------------

    def put(
        self,
        namespace: str,
        key: str,
        value: Any,
        metadata: dict[str, Any],
        compressor: Compressor | None,
        *,
        about: dict[str, Any],
        mmap_mode: str | None = None,
    ) -> tuple[int, Any]:
        """Store ``value``; return the entry's size and the value to hand back.

        With ``mmap_mode`` the value handed back is the stored one, mapped from the
        very file just written (in memory where the store cannot map).
        """
        name = names.entry(namespace, key)
        for attempt in range(2):
            self._ensure_marked(namespace, about)
            try:
                with self.store.write(name, keep=mmap_mode is not None) as writer:
                    write_entry(
                        writer.file, value, key=key, stored_ns=time.time_ns(), metadata=metadata,
                        compressor=compressor, signer=self.signer, context=name, deferred=writer.deferred,
                    )
                    size = writer.file.tell()
                break
            except (KeyError, FileNotFoundError):  # a concurrent clear removed a directory
                self._marked.discard(namespace)
                if attempt:
                    raise
        with self._memo_lock:
            self._memo.pop(name, None)
        reader = writer.reader()
        if reader is None:  # a store that cannot hand the object back (nothing maps from it)
            return size, value
        with reader:
            head = read_head(reader.file, reader.size)
            mapped = read_entry(reader.file, reader.size, head,
                                mmap_mode=mmap_mode if reader.mappable else None)
        return size, mapped

    def lock(self, namespace: str, key: str, about: dict[str, Any]) -> KeyLock | None:
        """Return the (not yet acquired) lock that keeps concurrent callers of one key apart."""
        self._ensure_marked(namespace, about)
        return self.lock_for(names.lock(namespace, key))

    def lock_for(self, name: str) -> KeyLock | None:
        """Return a lock on the store key ``name``: native where the store has one, else a lease.

        A store without conditional writes gets none: a lease there could have two
        holders, so concurrent callers each compute (correctly) instead.
        """
        if self.lock_kind == "none":
            return None
        native = self.store.lock(name) if self.lock_kind == "file" else None
        if native is not None:
            return native
        return Lease(self.store.shared, name) if self.store.conditional_writes else None

    # -- listing, clearing, checking ---------------------------------------------------------

    def entries(self, namespace: str) -> Iterator[tuple[str, ItemInfo]]:
        """Yield ``(key, item)`` for every entry file of a function."""
        for item in self.store.list(namespace):
            key = names.entry_key(namespace, item.key)
            if key is not None:
                yield key, item

    def recent_metadata(self, namespace: str, limit: int) -> Iterator[dict[str, Any]]:
        """Yield the metadata of a function's ``limit`` most recently stored entries, newest first."""
        newest = heapq.nlargest(limit, self.entries(namespace), key=lambda pair: pair[1].stored)
        for key, _ in newest:
            try:
                yield self.head(namespace, key).metadata
            except (Missing, CacheError, OSError):
                continue

    def all_entries(self) -> Iterator[tuple[str, str, ItemInfo]]:
        """Yield ``(namespace, key, item)`` for every entry of the location."""
        for namespace in self.namespaces():
            for key, item in self.entries(namespace):
                yield namespace, key, item

    def clear(self, namespace: str | None = None) -> ClearReport:
        """Remove entries and cachelib's other files (all functions', or one's).

        Function directories and their markers stay, so that a process writing at
        the same moment never writes into an unmarked directory. Raises
        ``NotACacheError`` for a location that is not cachelib's, and
        ``FileAccessError`` if files could not be removed (a read-only filesystem).
        """
        report = ClearReport()
        if not self.require_cache():
            return report
        targets = [namespace] if namespace is not None else self.namespaces()
        for target in targets:
            if not self.store.exists(names.function_marker(target)):
                continue
            self._clear_one(target, report)
        with self._memo_lock:
            self._memo.clear()
        if report.failures:
            raise FileAccessError(
                f"could not remove {len(report.failures)} files under {self.store.url!r} "
                f"({report.removed} removed): {report.failures[0]}"
            )
        return report

    def _clear_one(self, namespace: str, report: ClearReport) -> None:
        """Remove a function's entries and statistics, and what nobody uses of its other files.

        The key directories stay: removing one would pull it from under a writer
        that has just opened it.
        """
        now = time.time()
        for item in list(self.store.list(namespace)):
            if not names.is_ours(item.key) or names.is_lock(item.key):
                with contextlib.suppress(CacheError, OSError):
                    self.remove_if_unused(item, now)
                continue
            if not item.own:
                report.left += 1  # another member's, in a shared location: never theirs to lose
                continue
            try:
                self.store.delete(item.key)
            except PermissionError:
                report.left += 1
                continue
            except OSError as exc:
                report.failures.append(f"{item.key}: {exc.strerror or exc}")
                continue
            report.removed += names.is_entry(item.key)

    def remove_if_unused(self, item: ItemInfo, now: float, older_than: float = LEFTOVER_AGE) -> bool:
        """Remove a temporary object or a lock nobody uses any more; True if it was removed.

        A temporary object (of a write of one of cachelib's names) is unused once its
        writer is gone, or when it is older than ``older_than``; a lock when nobody
        holds it (a lease: when its holder is gone, or the store dated it long ago).
        """
        if names.is_ours(item.key):
            return names.is_lock(item.key) and self._remove_unheld_lock(item.key, now - item.stored)
        unfinished = self.store.unfinished(item.key)
        if unfinished is None or not names.is_namespace(item.key.partition("/")[0]):
            return False
        target, gone = unfinished
        if target is not None and not names.is_ours(target):
            return False
        if not item.own or not (gone or now - item.stored > older_than):
            return False
        try:
            return self.store.delete(item.key)
        except KeyError:
            return False

    def _remove_unheld_lock(self, key: str, age: float) -> bool:
        native = self.store.lock(key)
        if native is None:
            return Lease(self.store.shared, key).break_if_stale(age)
        if not native.acquire(0.0):
            return False
        native.release()  # releasing an unheld lock file removes it
        return True

    def verify(self, namespace: str, key: str) -> str | None:
        """Return what is wrong with an entry, or None if it is intact (never unpickles)."""
        name = names.entry(namespace, key)
        try:
            with self.store.open(name) as handle:
                head = verify_entry(
                    handle.file, handle.size, signer=self.signer, context=name
                )
        except KeyError:
            return "it vanished while being checked"
        except (CacheError, OSError) as exc:
            return str(exc)
        if head.key != key:
            return f"it holds the entry of another key ({head.key})"
        return None

    def delete(self, namespace: str, key: str) -> bool:
        """Remove one entry."""
        name = names.entry(namespace, key)
        with self._memo_lock:
            self._memo.pop(name, None)
        return self.store.delete(name)


def _check_metadata(check: Check, metadata: dict[str, Any], name: str) -> None:
    reason = check(metadata)
    if reason is not None:
        raise Stale(name, reason)


def _check_age(stored: float, max_age: float | None, name: str) -> None:
    if max_age is not None and time.time() - stored > max_age:
        raise Missing(name)


def _check_head(head: EntryHead, key: str, max_age: float | None, name: str) -> None:
    if head.key != key:
        raise CorruptFileError(f"{name!r} holds the entry of another key ({head.key})")
    _check_age(head.stored, max_age, name)
