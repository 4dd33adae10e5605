"""Keeping a location within bounds: size limits, eviction, and leftovers of dead writers.

Rule: policy over ``Entries`` and the store's listing, with memory flat at any
number of entries (``_entries.eviction`` plans in bins). Everything of the user's that
takes room counts against a limit: entries, and the temporary files of writes. A
scan for a limit removes, as it goes, the temporary files whose writers are gone
(killed mid-store), as ``prune`` does, and counts those of live writers as room that
cannot be freed. The size a scan found is left in the location's size record
(``names.SIZE_RECORD``) for other processes' estimates; it is a hint, read with a
size cap and validated, never trusted for anything but when to scan.
"""

from __future__ import annotations

import contextlib
import logging
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from .._errors import CacheError, CacheWarning, FileAccessError
from .._sizes import format_size
from . import names
from .eviction import plan_eviction
from .policy import LEFTOVER_AGE, Entries

__all__ = ["SizeBudget", "clean_leftovers", "evict"]

logger = logging.getLogger("cachelib")
Progress = Callable[[Iterable[Any], str], Iterable[Any]]


Row = tuple[str, str, float | None, float, int]
"""namespace, key, last use (None: a temporary file, unevictable), stored, size."""


def _entry_times(entries: Entries, sweep: bool) -> Iterator[Row]:
    """Yield the user's own entries; with ``sweep``, also remove leftovers of gone writers and
    yield the live temporary files as unevictable rows (key "")."""
    if not sweep:
        for namespace, key, item in entries.all_entries():
            if item.own:
                yield namespace, key, item.used, item.stored, item.size
        return
    now = time.time()
    for namespace in entries.namespaces():
        for item in entries.store.list(namespace):
            if not item.own:
                continue
            entry = names.entry_key(namespace, item.key)
            if entry is not None:
                yield namespace, entry, item.used, item.stored, item.size
            elif entries.store.unfinished(item.key) is not None:
                try:
                    removed = entries.remove_if_unused(item, now)
                except (CacheError, OSError):
                    removed = False
                if not removed:
                    yield namespace, "", None, item.stored, item.size


def evict(
    entries: Entries,
    bytes_limit: int | None = None,
    items_limit: int | None = None,
    max_age: float | None = None,
    progress: Progress | None = None,
    low_water: float = 1.0,
    sweep: bool = True,
) -> tuple[int, int]:
    """Delete least recently used entries until the limits hold; return (removed, total bytes left).

    ``max_age`` removes entries stored longer ago than that many seconds; the size
    and count limits remove the entries whose last use is oldest, down to
    ``low_water`` times the limit. Only the user's own entries are candidates.
    ``sweep`` removes the temporary files of gone writers on the way and counts
    those of live ones in the total.
    """
    show = progress or (lambda items, label: items)
    plan = plan_eviction(
        (times[2:] for times in show(_entry_times(entries, sweep), "scanned")),
        time.time(), bytes_limit, items_limit, max_age, low_water,
    )
    removed = freed = 0
    failures: list[str] = []
    if plan.needed:
        for namespace, key, used, stored, size in show(_entry_times(entries, False), "checked"):
            if used is None or not plan.should_delete(used, stored, size):
                continue
            try:
                if entries.delete(namespace, key):
                    removed += 1
                    freed += size
            except OSError as exc:
                failures.append(f"{namespace}/{key}: {exc.strerror or exc}")
    if failures:
        raise FileAccessError(
            f"could not evict {len(failures)} entries from {entries.store.url!r} "
            f"({removed} evicted): {failures[0]}"
        )
    if removed:
        logger.info(
            "evicted %d of %d entries (%s of %s) from %s",
            removed, plan.entries, format_size(freed), format_size(plan.bytes), entries.store.url,
        )
    return removed, plan.bytes - freed


class SizeBudget:
    """Keeps ``bytes_limit`` after writes, scanning only when the limit may be exceeded.

    The estimate of the location's size is the total the last scan found (by any
    process: scans record it in the size record; a location never scanned is scanned at
    its first write under a limit) plus what this process wrote since. A scan
    runs when the estimate passes the limit, or, since other processes write too,
    once this process alone has written a tenth of the limit; a scan over the
    limit evicts down to 90% of it.
    """

    def __init__(self, entries: Entries) -> None:
        self._entries = entries
        self._written = 0
        self._known: int | None = None

    def recorded(self) -> int | None:
        """Return the total the last scan recorded, or None (a bad record warns once)."""
        try:
            text = self._entries.store.read_bytes(names.SIZE_RECORD, 256).decode("ascii")
            size, _ = text.split()
            value = int(size)
            if value < 0:
                raise ValueError(size)
        except KeyError:
            return None
        except (CacheError, OSError, ValueError, UnicodeDecodeError) as exc:
            warnings.warn(
                f"cachelib ignores the size record of {self._entries.store.url!r} ({exc}); it is rebuilt",
                CacheWarning,
                stacklevel=5,
            )
            return None
        return value

    def record(self, size: int) -> None:
        """Leave the total a scan found for other processes (best effort)."""
        self._written = 0
        self._known = size
        with contextlib.suppress(CacheError, OSError), self._entries.store.write(names.SIZE_RECORD) as writer:
            writer.file.write(f"{size} {time.time():.0f}\n".encode())

    def note_write(self, size: int, bytes_limit: int) -> None:
        """Account for a write of ``size`` bytes; evict if the limit may be exceeded."""
        self._written += size
        if self._known is None:
            self._known = self.recorded()
            if self._known is None:  # never scanned under a limit: learn its size once
                self.enforce(bytes_limit)
                return
        estimate = self._known + self._written
        if estimate > bytes_limit or self._written >= max(bytes_limit // 10, 1):
            self.enforce(bytes_limit)

    def enforce(self, bytes_limit: int) -> int:
        """Scan now and evict down to 90% of ``bytes_limit`` if it is exceeded."""
        removed, left = evict(self._entries, bytes_limit=bytes_limit, low_water=0.9)
        self.record(left)
        return removed


def clean_leftovers(entries: Entries, older_than: float = LEFTOVER_AGE) -> int:
    """Remove temporary files of dead or long-gone writers, and lock files nobody holds.

    On a store without native locks, lock objects are leases: those whose holder
    is gone or whose record expired are broken, whatever their age.
    """
    removed = 0
    now = time.time()
    for namespace in entries.namespaces():
        # Lazily: a listing of every entry would hold a few hundred bytes per entry, and
        # removing the odd leftover during a directory's listing is safe.
        for item in entries.store.list(namespace):
            with contextlib.suppress(CacheError, OSError):
                removed += entries.remove_if_unused(item, now, older_than)
    return removed
