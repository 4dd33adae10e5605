"""Call statistics that survive restarts and kills: hits, misses, compute and saved time.

Rule: each process appends fixed-size records to its own log,
``<function dir>/stats/<host>-<pid>-<token>.log``, one ``os.write`` per call, so
concurrent processes never contend and a process killed at any moment loses at
most the record it was writing. A reader sums ``merged.json`` and the logs it has
not absorbed; ``compact`` folds the logs of finished processes into ``merged.json``
(under a lock, naming what it absorbed before deleting it, so a crash never counts
a log twice).
"""

from __future__ import annotations

import contextlib
import json
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
_RECORD = struct.Struct("<Bd")  # 1 = hit, 0 = miss; seconds computed (or saved, for a hit)
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
    """Counts calls of one function in memory and in this process's log file."""

    def __init__(self, function_dir: Path | None) -> None:
        self.stats = CallStats()
        self._directory = function_dir / STATS_DIR if function_dir is not None else None
        self._descriptor: int | None = None
        self._pid = -1
        self._lock = threading.Lock()

    def _open(self) -> int | None:
        if self._pid != os.getpid():  # first use, or a forked child: a log of its own
            if self._pid != -1:
                self.stats = CallStats()
            self._pid, self._descriptor = os.getpid(), None
            assert self._directory is not None
            self._directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            name = f"{_HOST}-{self._pid}-{uuid.uuid4().hex[:12]}.log"
            self._descriptor = os.open(
                self._directory / name, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600
            )
        return self._descriptor

    def record(self, hit: bool, seconds: float) -> None:
        """Count one call; statistics never make a call fail."""
        with self._lock:
            if self._directory is None:
                self.stats.record(hit, seconds)
                return
            descriptor = None
            with contextlib.suppress(OSError):
                descriptor = self._open()
            self.stats.record(hit, seconds)
            if descriptor is not None:
                with contextlib.suppress(OSError):
                    os.write(descriptor, _RECORD.pack(hit, seconds))

    def __del__(self) -> None:
        if self._descriptor is not None and self._pid == os.getpid():
            with contextlib.suppress(OSError):
                os.close(self._descriptor)


def _read_log(path: str) -> CallStats:
    stats = CallStats()
    with open(path, "rb") as handle:
        data = handle.read()
    usable = len(data) - len(data) % _RECORD.size  # a record cut by a kill is ignored
    for hit, seconds in _RECORD.iter_unpack(data[:usable]):
        stats.record(bool(hit), seconds)
    return stats


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


def _logs(directory: Path) -> list[os.DirEntry[str]]:
    try:
        return [e for e in os.scandir(directory) if e.name.endswith(".log")]
    except FileNotFoundError:
        return []


def read_stats(function_dir: Path) -> CallStats:
    """Return the counts of every process that has called one function."""
    directory = function_dir / STATS_DIR
    merged = _read_merged(directory)
    total = CallStats()
    total.add(merged.stats)
    absorbed = set(merged.absorbed)
    for entry in _logs(directory):
        if entry.name not in absorbed:
            with contextlib.suppress(OSError):
                total.add(_read_log(entry.path))
    return total


def _is_finished(log_name: str) -> bool:
    """True if the log's process ran on this host and is gone."""
    host, _, rest = log_name.rpartition(".log")[0].rpartition("-")[0].rpartition("-")
    if host != _HOST:
        return False
    try:
        os.kill(int(rest), 0)
    except ProcessLookupError:
        return True
    except (OSError, ValueError):
        return False
    return False


def compact_stats(function_dir: Path) -> int:
    """Fold the logs of finished processes into ``merged.json``; return how many."""
    directory = function_dir / STATS_DIR
    if not directory.is_dir():
        return 0
    with filelock.FileLock(directory / "merge.lock", timeout=30):
        merged = _read_merged(directory)
        present = {e.name: e.path for e in _logs(directory)}
        absorbed = [name for name in merged.absorbed if name in present]
        fresh = [name for name in present if name not in absorbed and _is_finished(name)]
        for name in fresh:
            with contextlib.suppress(OSError):
                merged.stats.add(_read_log(present[name]))
        payload = {"stats": asdict(merged.stats), "absorbed": absorbed + fresh}
        temporary = directory / f"{_MERGED}.{uuid.uuid4().hex}.tmp"
        temporary.write_text(json.dumps(payload))
        os.replace(temporary, directory / _MERGED)
        for name in absorbed + fresh:  # recorded as absorbed first: deleting is now safe
            with contextlib.suppress(OSError):
                os.unlink(present[name])
        return len(fresh)
