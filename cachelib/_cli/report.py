"""What the command line prints: aligned tables for people, JSON documents for scripts.

Rule: every piece of text that came from a cache (function names, call summaries,
problems found in files) passes through ``_text.printable`` before it reaches a
table, so that no entry can write escape sequences to a terminal; JSON output is
made by ``json`` alone, which escapes control characters itself, and follows the
schemas in ``cachelib/_cli/schemas/`` (``load_schema``, shown in the docs). Times are
ages in tables and ISO 8601 (UTC) in JSON.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Iterable, Sequence
from importlib import resources
from typing import Any, TextIO

from .._text import printable

__all__ = ["JsonList", "Table", "iso_time", "load_schema"]


def iso_time(timestamp: float | None) -> str | None:
    """A time as ISO 8601 in UTC (``"2026-12-07T01:02:03Z"``), or None."""
    if timestamp is None:
        return None
    when = datetime.datetime.fromtimestamp(timestamp, datetime.timezone.utc)
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def load_schema(command: str) -> dict[str, Any]:
    """The JSON schema of ``cachelib COMMAND --json`` (``info``, ``ls`` or ``verify``)."""
    text = resources.files(__package__).joinpath("schemas", f"{command}.json").read_text("utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


class Table:
    """Rows of cells under a header, each column padded to a width; the first ``left`` columns left-aligned.

    ``widths`` fixes columns' widths up front (so that rows can be printed as they
    come); a cell wider than its column pushes the rest of its row to the right.
    The last column is never padded. Every cell is made printable.
    """

    def __init__(
        self, header: Sequence[str], widths: Sequence[int], left: Iterable[int], out: TextIO
    ) -> None:
        self._widths = [max(w, len(h)) for w, h in zip(widths, header)]
        self._left = frozenset(left)
        self._out = out
        self.row(header)

    def row(self, cells: Sequence[object]) -> None:
        """Print one row."""
        shown = []
        last = len(cells) - 1
        for index, (cell, width) in enumerate(zip(cells, self._widths)):
            text = printable(cell)
            if index == last:
                shown.append(text)
            elif index in self._left:
                shown.append(text.ljust(width))
            else:
                shown.append(text.rjust(width))
        print("  ".join(shown).rstrip(), file=self._out)


class JsonList:
    """A JSON document with one list written item by item: ``{...fields, "<name>": [items]}``.

    Memory stays bounded however many items there are; the document is complete
    (valid JSON) once ``close`` has run.
    """

    def __init__(self, fields: dict[str, Any], name: str, out: TextIO) -> None:
        self._out = out
        head = json.dumps({**fields, name: []}, ensure_ascii=True)
        self._tail = head[head.rindex("[") + 1 :]
        out.write(head[: head.rindex("[") + 1])
        self._first = True

    def add(self, item: dict[str, Any]) -> None:
        self._out.write(("\n  " if self._first else ",\n  ") + json.dumps(item, ensure_ascii=True))
        self._first = False

    def close(self, **after: Any) -> None:
        """End the list, then write the fields known only at the end (counts)."""
        tail = self._tail if self._first else "\n" + self._tail
        if after:
            extra = json.dumps(after, ensure_ascii=True)[1:-1]
            tail = tail[:-1] + ", " + extra + "}"
        self._out.write(tail + "\n")
