"""What ``info()`` reports: entries on disk and calls counted, per function and in all.

Rule: plain data, no I/O: ``_memo.cache`` fills these in, the command line and users read them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["CacheInfo", "FunctionInfo"]


@dataclass
class FunctionInfo:
    """What one function has in the cache: entries on disk and calls in this process."""

    name: str
    entries: int = 0
    bytes: int = 0
    hits: int = 0
    misses: int = 0
    compute_seconds: float = 0.0
    saved_seconds: float = 0.0
    oldest: float | None = None
    newest: float | None = None


@dataclass
class CacheInfo:
    """A summary of a cache location, with one ``FunctionInfo`` per function."""

    location: str | None
    functions: dict[str, FunctionInfo] = field(default_factory=dict)

    @property
    def entries(self) -> int:
        return sum(info.entries for info in self.functions.values())

    @property
    def bytes(self) -> int:
        return sum(info.bytes for info in self.functions.values())

    @property
    def hits(self) -> int:
        return sum(info.hits for info in self.functions.values())

    @property
    def misses(self) -> int:
        return sum(info.misses for info in self.functions.values())

    @property
    def saved_seconds(self) -> float:
        return sum(info.saved_seconds for info in self.functions.values())

    def __str__(self) -> str:
        def line(name: str, info: CacheInfo | FunctionInfo) -> str:
            return (f"{name}: {info.entries} entries, {info.bytes / 1e6:.1f} MB, {info.hits} hits, "
                    f"{info.misses} misses, {info.saved_seconds:.2f} s saved")

        lines = [line(f"cache at {self.location}", self)]
        lines += [line(f"  {info.name}", info) for info in self.functions.values()]
        return "\n".join(lines)
