"""How cachelib writes for people: counts, ages and durations, and text read from a cache.

Rule: one human form everywhere (``str(cache.info())``, notebooks' HTML, log lines, the
command line): sizes in binary units (``_sizes.format_size``: ``"1.5 MiB"``), counts
with their noun agreeing (``"1 entry"``, ``"2 entries"``), ages relative to now
(``"3 min ago"``), durations with a unit (``"0.25 s"``). Text that came from a cache
(a call summary, a function name, a problem found in a file) may hold anything a
writer put there, terminal escape sequences included: ``printable`` escapes every
control and format character before it reaches a terminal or a page.
"""

from __future__ import annotations

import time
import unicodedata
from collections.abc import Iterable, Sequence

__all__ = ["age", "duration", "plural", "printable", "table_lines"]

_IRREGULAR = {"entry": "entries", "miss": "misses"}
_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def plural(count: int, noun: str) -> str:
    """``plural(1, "entry")`` -> ``"1 entry"``; ``plural(3, "hit")`` -> ``"3 hits"`` (thousands separated)."""
    word = noun if count == 1 else _IRREGULAR.get(noun, noun + "s")
    return f"{count:,} {word}"


def duration(seconds: float) -> str:
    """A duration with its unit: ``"850 us"``, ``"12 ms"``, ``"1.25 s"``, ``"3.5 min"``, ``"2.0 h"``."""
    if seconds <= 0:
        return "0 s"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} us"
    if seconds < 1:
        return f"{seconds * 1e3:.0f} ms"
    if seconds < 120:
        return f"{seconds:.2f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def age(timestamp: float | None, now: float | None = None) -> str:
    """How long ago a time (seconds since the epoch) was: ``"just now"``, ``"3 min ago"``, ``"2 days ago"``.

    ``None`` (never) is ``"-"``; a time in the future (another host's clock) is ``"in the future"``.
    """
    if timestamp is None:
        return "-"
    elapsed = (time.time() if now is None else now) - timestamp
    if elapsed < -1:
        return "in the future"
    if elapsed < 60:
        return "just now"
    for unit, seconds in (("day", 86400), ("h", 3600), ("min", 60)):
        if elapsed >= seconds:
            count = int(elapsed // seconds)
            return f"{plural(count, unit) if unit == 'day' else f'{count} {unit}'} ago"
    raise AssertionError("unreachable")


def printable(text: object) -> str:
    """``text`` with every control and format character escaped (``\\x1b``, ``\\n``, ``\\u202e``).

    What a terminal would act on (ESC sequences that retitle, clear or recolour it,
    carriage returns that overwrite a line, bidirectional overrides that reorder
    it) is shown as an escape instead, so that printing the result is safe.
    """
    text = str(text)
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() or ch == " " else _escape(ch) for ch in text)


def _escape(ch: str) -> str:
    if ch in _ESCAPES:
        return _ESCAPES[ch]
    code = ord(ch)
    if code < 0x100:
        return f"\\x{code:02x}"
    if unicodedata.category(ch) == "Zs":  # other spaces are harmless, but visible as escapes
        return ch
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def table_lines(
    header: Sequence[str], rows: Sequence[Sequence[object]], left: Iterable[int] = (0,)
) -> list[str]:
    """A table as lines of text: each column as wide as its widest cell, the ``left`` ones left-aligned.

    Every cell is made ``printable``; the last column is not padded.
    """
    shown = [[printable(cell) for cell in row] for row in [header, *rows]]
    widths = [max(len(row[i]) for row in shown) for i in range(len(header))]
    aligned = frozenset(left)
    lines = []
    for row in shown:
        cells = [cell if i == len(row) - 1 else cell.ljust(w) if i in aligned else cell.rjust(w)
                 for i, (cell, w) in enumerate(zip(row, widths))]
        lines.append("  ".join(cells).rstrip())
    return lines
