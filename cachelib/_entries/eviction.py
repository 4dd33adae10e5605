"""Eviction: which entries to delete so that size, count and age limits hold.

Rule: memory stays flat whatever the number of entries. Pass one sorts entries
into bins by the age of their last use, on a log scale (64 bins per doubling of
age, so an age is known within about 1%), keeping only the bytes and count of
each bin. It then finds the bin where deleting stops. Pass two, if anything must
go, deletes the entries in older bins and, from that boundary bin, just enough
to meet the limits. Least recently used goes first, to within that resolution.
Bytes that count against the limits but cannot be evicted (a write in progress)
are in the totals and in no bin.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["EvictionPlan", "plan_eviction"]

_BINS_PER_DOUBLING = 64
_BINS = 48 * _BINS_PER_DOUBLING  # ages up to 2**48 seconds


def _age_bin(age: float) -> int:
    return min(int(math.log2(max(age, 0.0) + 1.0) * _BINS_PER_DOUBLING), _BINS - 1)


@dataclass
class EvictionPlan:
    """The decision of pass one, applied entry by entry in pass two."""

    now: float
    max_age: float | None
    entries: int = 0
    bytes: int = 0
    cutoff: int = _BINS  # delete entries whose age bin is above this ...
    boundary_bytes: int = 0  # ... and, in the cutoff bin, this many bytes
    boundary_count: int = 0  # ... and this many entries
    expired: int = 0

    @property
    def needed(self) -> bool:
        """True if pass two has anything to delete."""
        return self.cutoff < _BINS or self.expired > 0

    def should_delete(self, used: float, stored: float, size: int) -> bool:
        """Decide one entry; call once per entry, in any order."""
        if self.max_age is not None and self.now - stored > self.max_age:
            return True
        age_bin = _age_bin(self.now - used)
        if age_bin > self.cutoff:
            return True
        if age_bin == self.cutoff and (self.boundary_bytes > 0 or self.boundary_count > 0):
            self.boundary_bytes -= size
            self.boundary_count -= 1
            return True
        return False


def plan_eviction(
    entries: Iterable[tuple[float | None, float, int]],
    now: float,
    bytes_limit: int | None = None,
    items_limit: int | None = None,
    max_age: float | None = None,
    low_water: float = 1.0,
) -> EvictionPlan:
    """Plan the deletions for ``entries``, an iterable of (last used, stored, size).

    When a limit is exceeded, entries go until the total is ``low_water`` times the
    limit (below 1 leaves headroom, so that the next eviction is not the next write).
    A row whose last use is None is bytes that count but cannot be evicted (a write in
    progress): in the totals, never deleted.
    """
    plan = EvictionPlan(now=now, max_age=max_age)
    bin_bytes = [0] * _BINS
    bin_count = [0] * _BINS
    kept_bytes = kept_count = pinned = 0
    for used, stored, size in entries:
        if used is None:  # bytes that count but cannot be evicted
            plan.bytes += size
            pinned += size
            continue
        plan.entries += 1
        plan.bytes += size
        if max_age is not None and now - stored > max_age:
            plan.expired += 1
            continue
        age_bin = _age_bin(now - used)
        bin_bytes[age_bin] += size
        bin_count[age_bin] += 1
        kept_bytes += size
        kept_count += 1
    need_bytes = need_count = 0
    if bytes_limit is not None and kept_bytes + pinned > bytes_limit:
        need_bytes = min(kept_bytes, kept_bytes + pinned - int(bytes_limit * low_water))
    if items_limit is not None and kept_count > items_limit:
        need_count = kept_count - int(items_limit * low_water)
    if need_bytes <= 0 and need_count <= 0:
        return plan
    freed_bytes = freed_count = 0
    for age_bin in range(_BINS - 1, -1, -1):  # oldest first
        if freed_bytes + bin_bytes[age_bin] >= need_bytes and freed_count + bin_count[age_bin] >= need_count:
            plan.cutoff = age_bin
            plan.boundary_bytes = need_bytes - freed_bytes
            plan.boundary_count = need_count - freed_count
            break
        freed_bytes += bin_bytes[age_bin]
        freed_count += bin_count[age_bin]
    return plan
