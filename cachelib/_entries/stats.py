"""Call statistics that survive restarts and kills: hits, misses, compute and saved time.

Rule: counting can never hurt a call. Each process counts in memory; the
process's background worker (``_stores.background``) writes, about a second after
a call and at exit, what was counted since the last write as a new small object of its own,
``names.counts`` (host, pid, token and sequence number), through the store's atomic
write. An I/O failure costs those counts and one warning, nothing else (and not even
the warning when the location was deleted meanwhile: nothing is recreated); nothing
is mapped, so nobody can make a call fault by truncating a file; the caller never
waits for the store. A killed process loses at most its last second.

A reader sums every merged object (``names.merged``) and the counts objects none of them
has absorbed. ``compact`` (run by ``info``, ``prune`` and now and then by writers)
folds counts objects into its owner's merged object under a lock, naming them as
absorbed before deleting them, so that a crash never counts one twice. Writers fold
every ``_COMPACT_EVERY`` flushes, and a process that wrote counts looks at exit: if
more than ``FOLD_AT_EXIT`` of its user's counts objects wait in a function's
statistics, it folds them. So a job of many short processes (a SLURM array, a pool
with one task per child) leaves at most about ``FOLD_AT_EXIT`` plus the processes
exiting at that moment, without a reader.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import threading
import uuid
import warnings
import weakref
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from .._errors import CacheError, CacheWarning
from .._stores.background import worker
from .._stores.leases import Lease
from .._stores.processes import HOST_ID
from . import names

if TYPE_CHECKING:
    from .policy import Entries

__all__ = ["FOLD_AT_EXIT", "CallStats", "StatsRecorder", "compact_stats", "read_stats"]

FOLD_AT_EXIT = 16
"""Counts objects of one user and function past which an exiting process folds them."""
_FLUSH_EVERY = 1.0  # seconds
_COMPACT_EVERY = 64  # flushes between two attempts to fold
_COUNTS_LIMIT = 4096
_MERGED_LIMIT = 1 << 20
_MERGE_AT_MOST = 10_000  # counts objects folded per pass: keeps merged objects small
_warned: set[str] = set()


@dataclass
class CallStats:
    """Hits, misses, seconds spent computing, and seconds that hits saved."""

    hits: int = 0
    misses: int = 0
    compute_seconds: float = 0.0
    saved_seconds: float = 0.0

    def record(self, hit: bool, seconds: float) -> None:
        if hit:
            self.hits += 1
            self.saved_seconds += seconds
        else:
            self.misses += 1
            self.compute_seconds += seconds

    def add(self, other: CallStats) -> None:
        self.hits += other.hits
        self.misses += other.misses
        self.compute_seconds += other.compute_seconds
        self.saved_seconds += other.saved_seconds

    def __bool__(self) -> bool:
        return bool(self.hits or self.misses)


def _parsed_stats(raw: Any) -> CallStats | None:
    """Return the counts a JSON object holds, or None if it is not a valid one."""
    if not isinstance(raw, dict):
        return None
    hits, misses = raw.get("hits"), raw.get("misses")
    compute, saved = raw.get("compute_seconds"), raw.get("saved_seconds")
    if not (type(hits) is int and type(misses) is int and hits >= 0 and misses >= 0):
        return None
    compute, saved = _seconds(compute), _seconds(saved)
    if compute is None or saved is None:
        return None
    return CallStats(hits, misses, compute, saved)


def _seconds(value: Any) -> float | None:
    """A finite number of seconds >= 0 (an int or a float, not a bool) as a float; else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) and value >= 0 else None


def _warn_once(topic: str, message: str) -> None:
    if topic not in _warned:
        _warned.add(topic)
        warnings.warn(message, CacheWarning, stacklevel=4)


class StatsRecorder:
    """Counts the calls of one function: in memory, flushed to the store as deltas."""

    def __init__(self, entries: Entries | None, namespace: str) -> None:
        self.stats = CallStats()  # this process's totals
        self._entries = entries
        self._namespace = namespace
        self._lock = threading.Lock()
        self._queued = False  # held in ``_unflushed`` until the flusher writes its counts
        self._reset()
        if entries is not None:
            _live.add(self)

    def _reset(self) -> None:
        """Start afresh: in a new process (after a fork) or after the function was cleared."""
        self._flushed = CallStats()  # the part of ``stats`` already written
        self._token = uuid.uuid4().hex[:12]
        self._pid = os.getpid()
        self._sequence = 0
        self._wrote = False  # a counts object was written since the exit's last look

    def __reduce__(self) -> Any:
        return (StatsRecorder, (self._entries, self._namespace))

    def record(self, hit: bool, seconds: float) -> None:
        """Count one call (written by the flusher within about a second). Never raises."""
        with self._lock:
            self.stats.record(hit, seconds)
        if self._entries is not None:
            self._hold()
            _schedule()

    def _hold(self) -> None:
        """Keep this recorder alive until its counts are written, even if its function is dropped.

        A worker that unpickles a memoized function for each task drops it right after
        the call, a second before the flusher runs: its counts would go with it.
        """
        if not self._queued:
            self._queued = True
            _unflushed.add(self)

    def record_hit(self, seconds: float) -> None:
        """Count one hit that saved ``seconds``: ``record(True, seconds)`` on the hot path."""
        with self._lock:
            stats = self.stats
            stats.hits += 1
            stats.saved_seconds += seconds
        if self._entries is not None:
            if not self._queued:
                self._hold()
            if not _scheduled:
                _schedule()

    def flush(self) -> None:
        """Write what was counted since the last flush (at exit, and before reading)."""
        with self._lock:
            self._flush_locked()

    def _flush_locked(self) -> None:
        total = self.stats
        pending = CallStats(total.hits - self._flushed.hits, total.misses - self._flushed.misses,
                            total.compute_seconds - self._flushed.compute_seconds,
                            total.saved_seconds - self._flushed.saved_seconds)
        self._flushed = CallStats(**asdict(total))
        if not pending or self._entries is None:
            return
        self._sequence += 1
        name = names.counts(self._namespace, f"{HOST_ID}-{self._pid}-{self._token}-{self._sequence}")
        try:
            with self._entries.store.write(name) as writer:
                writer.file.write(json.dumps(asdict(pending)).encode())
        except Exception as exc:  # statistics never make a call fail
            if _location_gone(self._entries):
                _live.discard(self)  # deleted after use (a TemporaryDirectory): nothing to count into
                return
            _warn_once(f"write {self._entries.store.url}", f"cachelib could not record call statistics in "
                       f"{self._entries.store.url!r} ({exc}); those counts are lost")
            return
        self._wrote = True
        if self._sequence % _COMPACT_EVERY == 0:
            with contextlib.suppress(Exception):
                compact_stats(self._entries, self._namespace, wait=0.0)


def _location_gone(entries: Entries) -> bool:
    """True if the location no longer exists (its marker is gone): its counts are dropped quietly."""
    try:
        return not entries.store.exists(names.LOCATION_MARKER)
    except Exception:  # a location that cannot even be looked at is not known to be gone
        return False


_live: weakref.WeakSet[StatsRecorder] = weakref.WeakSet()
_unflushed: set[StatsRecorder] = set()  # recorders with counts not yet written: held strongly


_scheduled = False  # a flush is due on the worker: the hot path reads this flag only


def _schedule() -> None:
    """Have the worker write pending counts in about a second (once, however many calls ask)."""
    global _scheduled
    _scheduled = True
    worker.later("statistics", _FLUSH_EVERY, _flush_all)


def _flush_all() -> None:
    global _scheduled
    _scheduled = False
    for recorder in list(_unflushed):  # the ones held now: calls meanwhile wait for the next turn
        _unflushed.discard(recorder)
        recorder._queued = False  # before flushing: a call counted meanwhile holds it again
        with contextlib.suppress(Exception):
            recorder.flush()
    for recorder in list(_live):
        with contextlib.suppress(Exception):
            recorder.flush()


def _after_fork() -> None:
    """A forked child counts afresh: its parent's unflushed counts are the parent's."""
    global _scheduled
    _scheduled = False
    _unflushed.clear()
    for recorder in list(_live):
        recorder._lock = threading.Lock()
        recorder.stats = CallStats()
        recorder._queued = False
        recorder._reset()


def _flush_and_fold() -> None:
    """At exit: write what is pending, then fold where this user's counts objects pile up."""
    _flush_all()
    for recorder in list(_live):
        entries = recorder._entries
        if entries is None or not recorder._wrote:
            continue  # wrote nothing since the last look
        recorder._wrote = False
        with contextlib.suppress(Exception):
            waiting = sum(1 for item in entries.store.list(names.stats(recorder._namespace))
                          if item.own and names.is_counts(item.key.rsplit("/", 1)[-1]))
            if waiting > FOLD_AT_EXIT:
                compact_stats(entries, recorder._namespace, wait=0.0)


worker.at_exit(_flush_and_fold)
worker.on_fork(_after_fork)


def _owner_tag() -> str:
    return f"u{os.geteuid()}" if hasattr(os, "geteuid") else "all"


def _read_json(entries: Entries, key: str, limit: int) -> Any:
    """Return the JSON an object holds, or None (with one warning) if it is unusable."""
    try:
        return json.loads(entries.store.read_bytes(key, limit))
    except KeyError:
        return None
    except (CacheError, OSError, ValueError) as exc:
        _warn_once(f"read {entries.store.url}/{key}", f"cachelib ignores the statistics file {key!r} "
                   f"in {entries.store.url!r} ({exc}); it is rebuilt")
        return None


def _merged_objects(entries: Entries, namespace: str) -> list[tuple[str, CallStats, list[str]]]:
    found = []
    for item in entries.store.list(names.stats(namespace)):
        name = item.key.rsplit("/", 1)[-1]
        if names.merged_owner(name) is not None:
            raw = _read_json(entries, item.key, _MERGED_LIMIT)
            stats = _parsed_stats(raw.get("stats")) if isinstance(raw, dict) else None
            absorbed = raw.get("absorbed") if isinstance(raw, dict) else None
            if stats is not None and isinstance(absorbed, list) and all(isinstance(a, str) for a in absorbed):
                found.append((item.key, stats, absorbed))
            elif raw is not None:
                _warn_once(f"read {entries.store.url}/{item.key}", f"cachelib ignores the statistics file "
                           f"{item.key!r} in {entries.store.url!r} (it does not hold counts); it is rebuilt")
    return found


def _counts(entries: Entries, key: str) -> CallStats | None:
    raw = _read_json(entries, key, _COUNTS_LIMIT)
    counts = _parsed_stats(raw)
    if counts is None and raw is not None:
        _warn_once(f"read {entries.store.url}/{key}", f"cachelib ignores the statistics file {key!r} "
                   f"in {entries.store.url!r} (it does not hold counts)")
    return counts


def read_stats(entries: Entries, namespace: str) -> CallStats:
    """Return the counts of every process that has called one function (to its last flush)."""
    for recorder in list(_live):
        same = recorder._entries is not None and recorder._entries.store.url == entries.store.url
        if same and recorder._namespace == namespace:
            recorder.flush()
    total = CallStats()
    absorbed: set[str] = set()
    for _, stats, folded in _merged_objects(entries, namespace):
        total.add(stats)
        absorbed.update(folded)
    for item in entries.store.list(names.stats(namespace)):
        name = item.key.rsplit("/", 1)[-1]
        if names.is_counts(name) and name not in absorbed:
            counts = _counts(entries, item.key)
            if counts is not None:
                total.add(counts)
    return total


def compact_stats(entries: Entries, namespace: str, wait: float = 5.0) -> int:
    """Fold this user's counts objects into its merged object; return how many were folded."""
    merged_key = names.merged(namespace, _owner_tag())
    lock_key = names.merge_lock(namespace, _owner_tag())
    lock = entries.store.lock(lock_key) or Lease(entries.store.shared, lock_key)
    if not lock.acquire(wait):
        return 0
    try:
        mine = [m for m in _merged_objects(entries, namespace) if m[0] == merged_key]
        stats, absorbed = (mine[0][1], mine[0][2]) if mine else (CallStats(), [])
        present = {i.key.rsplit("/", 1)[-1]: i for i in entries.store.list(names.stats(namespace))}
        for name in absorbed:  # folded by the last pass, which may have died before deleting them
            if name in present:
                with contextlib.suppress(OSError, KeyError):
                    entries.store.delete(present[name].key)
        fresh: list[str] = []
        for name, item in present.items():
            if names.is_counts(name) and name not in absorbed and item.own and len(fresh) < _MERGE_AT_MOST:
                counts = _counts(entries, item.key)
                if counts is not None:
                    stats.add(counts)
                fresh.append(name)
        if not fresh:
            return 0
        with entries.store.write(merged_key) as writer:
            writer.file.write(json.dumps({"stats": asdict(stats), "absorbed": fresh}).encode())
        for name in fresh:  # recorded as absorbed first: deleting is now safe
            with contextlib.suppress(OSError, KeyError):
                entries.store.delete(present[name].key)
        return len(fresh)
    finally:
        lock.release()
