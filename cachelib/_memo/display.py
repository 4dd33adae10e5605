"""How caches, their functions and their reports show themselves in notebooks: HTML tables.

Rule: Jupyter's convention (``_repr_html_``, as pandas and xarray): a fragment of
well-formed XHTML, a ``<table>`` with a caption, whose text is the same human form as
the objects' plain text (``_text``, ``_sizes``), every piece of it escaped. No I/O
happens here: callers hand over what to show.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from .._text import duration

__all__ = ["Explanation", "describe_options", "html_fields", "html_table"]

_OPEN = '<table class="cachelib" style="border-collapse: collapse; text-align: right">'


def _cell(tag: str, value: object, left: bool = False) -> str:
    import html  # only in a notebook: not part of ``import cachelib``

    align = ' style="text-align: left"' if left else ""
    return f"<{tag}{align}>{html.escape(str(value))}</{tag}>"


def _row(tag: str, values: Sequence[object]) -> str:
    """One row, its first cell left-aligned."""
    return "<tr>" + "".join(_cell(tag, value, left=i == 0) for i, value in enumerate(values)) + "</tr>"


def html_table(
    caption: str,
    header: Sequence[str],
    rows: Iterable[Sequence[object]],
    footer: Sequence[object] | None = None,
) -> str:
    """A table: ``caption``, a header row, body rows and an optional footer row; the first column left."""
    parts = [_OPEN, _cell("caption", caption, left=True), "<thead>", _row("th", header), "</thead><tbody>"]
    parts += [_row("td", row) for row in rows]
    parts.append("</tbody>")
    if footer is not None:
        parts += ["<tfoot>", _row("th", footer), "</tfoot>"]
    parts.append("</table>")
    return "".join(parts)


def html_fields(caption: str, fields: Iterable[tuple[str, object]]) -> str:
    """A two-column table of named values (``compress``, ``mmap_mode`` ...)."""
    rows = "".join(f"<tr>{_cell('th', name, True)}{_cell('td', value, True)}</tr>" for name, value in fields)
    return f'{_OPEN}{_cell("caption", caption, left=True)}<tbody>{rows}</tbody></table>'


def describe_options(
    compressor: Any, mmap_mode: str | None, expires_after: float | None
) -> list[tuple[str, str]]:
    """The options a cache or a function stores with, in words."""
    codec = f"{compressor.name} level {compressor.level}" if compressor is not None else "none (raw)"
    return [("compress", codec), ("mmap_mode", mmap_mode or "none (loaded into memory)"),
            ("expires_after", duration(expires_after) if expires_after is not None else "never")]


class Explanation(str):
    """What ``f.explain(...)`` returns: its text, shown in notebooks as one row per difference."""

    __slots__ = ()

    def _repr_html_(self) -> str:
        rows = [(reason.strip(),) for reason in self.split(";")]
        return html_table("cachelib: why this call would miss", ("what differs",), rows)
