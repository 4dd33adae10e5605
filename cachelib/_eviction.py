"""Eviction: which entries to delete so that size, count and age limits hold.

Rule: two passes over the entries, holding three numbers per entry (last use, time
stored, size) in compact arrays and never a list of paths. Pass one decides a
cut-off in last-use time; pass two deletes the entries that fall below it. Entries
used between the passes survive, which is what least-recently-used means.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

__all__ = ["EvictionPlan", "plan_eviction"]


@dataclass
class EvictionPlan:
    """The decision of pass one, applied entry by entry in pass two."""

    now: float
    max_age: float | None
    used_cutoff: float = -math.inf  # delete entries last used before this ...
    ties: int = 0  # ... and this many of those last used exactly at it
    entries: int = 0
    bytes: int = 0

    def should_delete(self, used: float, stored: float) -> bool:
        """Decide one entry; call once per entry, in any order."""
        if self.max_age is not None and self.now - stored > self.max_age:
            return True
        if used < self.used_cutoff:
            return True
        if used == self.used_cutoff and self.ties > 0:
            self.ties -= 1
            return True
        return False


def plan_eviction(
    entries: Iterable[tuple[float, float, int]],
    now: float,
    bytes_limit: int | None = None,
    items_limit: int | None = None,
    max_age: float | None = None,
) -> EvictionPlan:
    """Plan the deletions for ``entries``, an iterable of (last used, stored, size)."""
    used, stored, sizes = array("d"), array("d"), array("q")
    for entry_used, entry_stored, size in entries:
        used.append(entry_used)
        stored.append(entry_stored)
        sizes.append(size)
    plan = EvictionPlan(now=now, max_age=max_age, entries=len(sizes), bytes=sum(sizes))
    used_times = np.frombuffer(used, dtype=np.float64)
    keep = np.ones(len(used_times), dtype=bool)
    if max_age is not None:
        keep &= now - np.frombuffer(stored, dtype=np.float64) <= max_age
    used_times = used_times[keep]
    kept_sizes = np.frombuffer(sizes, dtype=np.int64)[keep]
    order = np.argsort(used_times, kind="stable")
    freed = np.concatenate(([0], np.cumsum(kept_sizes[order])))  # bytes freed by the k oldest
    total, count = int(kept_sizes.sum()), len(kept_sizes)
    k = 0
    if bytes_limit is not None:
        k = int(np.searchsorted(freed, total - bytes_limit, side="left"))
    if items_limit is not None:
        k = max(k, count - items_limit)
    k = min(max(k, 0), count)
    if k:
        ordered = used_times[order]
        plan.used_cutoff = float(ordered[k - 1])
        plan.ties = int(np.count_nonzero(ordered[:k] == plan.used_cutoff))
    return plan
