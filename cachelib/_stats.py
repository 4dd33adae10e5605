"""Call statistics that survive restarts and kills: hits, misses, compute and saved time.

Rule: each process keeps its running totals for a function in a file of its own,
``<function dir>/stats/<host>-<pid>-<token>.counts`` (32 bytes), mapped into memory.
Counting a call writes that memory: no system call on the hot path, no contention
between processes, and because the mapping is shared with the page cache, the
totals are in the file even when the process is killed a moment later. A reader
sums ``merged.json`` and the counts files it has not absorbed; ``compact_stats``
folds the files of finished processes into ``merged.json`` (under a lock, naming
what it absorbed before deleting it, so a crash never counts a file twice).
"""

from __future__ import annotations

import contextlib
import json
import mmap
import os
import socket
import struct
import threading
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

import filelock

__all__ = ["STATS_DIR", "CallStats", "StatsRecorder", "compact_stats", "read_stats"]

STATS_DIR = "stats"
_TOTALS = struct.Struct("<QQdd")  # hits, misses, compute seconds, saved seconds
_SUFFIX = ".counts"
_MERGED = "merged.json"
_HOST = socket.gethostname()


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


class StatsRecorder:
    """Counts calls of one function in memory and in this process's mapped counts file."""

    def __init__(self, function_dir: Path | None) -> None:
        self.stats = CallStats()
        self._directory = function_dir / STATS_DIR if function_dir is not None else None
        self._mapping: mmap.mmap | None = None
        self._pid = -1
        self._lock = threading.Lock()

    def _map(self) -> mmap.mmap | None:
        """Return this process's mapped counts file, creating it on first use."""
        if self._pid == os.getpid():
            return self._mapping
        if self._pid != -1:  # a forked child counts afresh, in a file of its own
            self.stats = CallStats()
        self._pid, self._mapping = os.getpid(), None
        assert self._directory is not None
        with contextlib.suppress(OSError, ValueError):
            self._directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            name = f"{_HOST}-{self._pid}-{uuid.uuid4().hex[:12]}{_SUFFIX}"
            descriptor = os.open(self._directory / name, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.ftruncate(descriptor, _TOTALS.size)
                self._mapping = mmap.mmap(descriptor, _TOTALS.size)
            finally:
                os.close(descriptor)
        return self._mapping

    def record(self, hit: bool, seconds: float) -> None:
        """Count one call; statistics never make a call fail."""
        with self._lock:
            self.stats.record(hit, seconds)
            if self._directory is None:
                return
            mapping = self._map()
            if mapping is not None:
                stats = self.stats
                _TOTALS.pack_into(mapping, 0, stats.hits, stats.misses,
                                  stats.compute_seconds, stats.saved_seconds)


def _read_counts(path: str) -> CallStats:
    with open(path, "rb") as handle:
        data = handle.read(_TOTALS.size)
    if len(data) < _TOTALS.size:
        return CallStats()  # created, not yet written
    return CallStats(*_TOTALS.unpack(data))


@dataclass
class _Merged:
    stats: CallStats = field(default_factory=CallStats)
    absorbed: list[str] = field(default_factory=list)


def _read_merged(directory: Path) -> _Merged:
    with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
        with open(directory / _MERGED) as handle:
            raw = json.load(handle)
        return _Merged(CallStats(**raw["stats"]), list(raw["absorbed"]))
    return _Merged()


def _counts_files(directory: Path) -> list[os.DirEntry[str]]:
    try:
        return [e for e in os.scandir(directory) if e.name.endswith(_SUFFIX)]
    except FileNotFoundError:
        return []


def read_stats(function_dir: Path) -> CallStats:
    """Return the counts of every process that has called one function."""
    directory = function_dir / STATS_DIR
    merged = _read_merged(directory)
    total = CallStats()
    total.add(merged.stats)
    absorbed = set(merged.absorbed)
    for entry in _counts_files(directory):
        if entry.name not in absorbed:
            with contextlib.suppress(OSError):
                total.add(_read_counts(entry.path))
    return total


def _is_finished(name: str) -> bool:
    """True if the counts file's process ran on this host and is gone."""
    host, _, pid = name[: -len(_SUFFIX)].rpartition("-")[0].rpartition("-")
    if host != _HOST:
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except (OSError, ValueError):
        return False
    return False


def compact_stats(function_dir: Path) -> int:
    """Fold the counts of finished processes into ``merged.json``; return how many."""
    directory = function_dir / STATS_DIR
    if not directory.is_dir():
        return 0
    with filelock.FileLock(directory / "merge.lock", timeout=30):
        merged = _read_merged(directory)
        present = {e.name: e.path for e in _counts_files(directory)}
        absorbed = [name for name in merged.absorbed if name in present]
        fresh = [name for name in present if name not in absorbed and _is_finished(name)]
        for name in fresh:
            with contextlib.suppress(OSError):
                merged.stats.add(_read_counts(present[name]))
        payload = {"stats": asdict(merged.stats), "absorbed": absorbed + fresh}
        temporary = directory / f"{_MERGED}.{uuid.uuid4().hex}.tmp"
        temporary.write_text(json.dumps(payload))
        os.replace(temporary, directory / _MERGED)
        for name in absorbed + fresh:  # recorded as absorbed first: deleting is now safe
            with contextlib.suppress(OSError):
                os.unlink(present[name])
        return len(fresh)
