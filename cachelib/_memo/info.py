"""What ``info()`` reports: entries on disk and calls counted, per function and in all.

Rule: plain data, no I/O: ``_memo.cache`` fills these in, the command line and users
read them. They show themselves in the one human form (binary sizes, ages, "1 entry"):
``str`` and ``repr`` as text, ``_repr_html_`` as a table in notebooks.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .._sizes import format_size
from .._text import age, duration, plural, table_lines
from .display import html_table

__all__ = ["HEADER", "CacheInfo", "FunctionInfo"]

HEADER = ("function", "entries", "size", "hits", "misses", "saved", "oldest", "newest")


@dataclass(repr=False)
class FunctionInfo:
    """What one function has in the cache: entries on disk and calls counted by every process.

    ``oldest`` and ``newest`` are when its entries were stored (seconds since the epoch).
    """

    name: str
    entries: int = 0
    bytes: int = 0
    hits: int = 0
    misses: int = 0
    compute_seconds: float = 0.0
    saved_seconds: float = 0.0
    oldest: float | None = None
    newest: float | None = None

    def cells(self) -> tuple[str, ...]:
        """This function's row of the ``info`` table, in human form."""
        return (self.name, f"{self.entries:,}", format_size(self.bytes), f"{self.hits:,}", f"{self.misses:,}",
                duration(self.saved_seconds), age(self.oldest), age(self.newest))

    def __str__(self) -> str:
        return f"{self.name}: {_summary(self)}, newest {age(self.newest)}"

    def __repr__(self) -> str:
        return f"<FunctionInfo {self}>"

    def _repr_html_(self) -> str:
        return html_table(f"cachelib: {self.name}", HEADER, [self.cells()])


@dataclass(repr=False)
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
        lines = [f"cache at {self.location}: {_summary(self)}"]
        if self.functions:
            lines += table_lines(HEADER, [info.cells() for info in self.functions.values()])
        return "\n".join(lines)

    __repr__ = __str__

    def _repr_html_(self) -> str:
        total = ("total", f"{self.entries:,}", format_size(self.bytes), f"{self.hits:,}", f"{self.misses:,}",
                 duration(self.saved_seconds), "", "")
        rows = [info.cells() for info in self.functions.values()]
        return html_table(f"cachelib cache at {self.location}", HEADER, rows, footer=total)


def _summary(info: CacheInfo | FunctionInfo) -> str:
    return (f"{plural(info.entries, 'entry')}, {format_size(info.bytes)}, {plural(info.hits, 'hit')}, "
            f"{plural(info.misses, 'miss')}, {duration(info.saved_seconds)} saved")
