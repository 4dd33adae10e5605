"""Byte sizes written by people: ``"500M"``, ``"10G"``, ``"1.5T"``, or plain ints.

Rule: suffixes are binary (K = 1024), as in joblib's ``bytes_limit``; anything else
is an ``InvalidOptionError`` that shows an example.
"""

from __future__ import annotations

import re

from ._errors import InvalidOptionError

__all__ = ["format_size", "parse_size"]

_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([KMGTP]?)(?:I?B)?\s*$", re.IGNORECASE)


def parse_size(size: int | str) -> int:
    """Return ``size`` in bytes: an int, or a string like ``"500M"`` or ``"10GB"``."""
    if isinstance(size, int) and not isinstance(size, bool):
        if size < 0:
            raise InvalidOptionError(f"a size must be >= 0, got {size}")
        return size
    match = _SIZE.match(size) if isinstance(size, str) else None
    if match is None:
        raise InvalidOptionError(f"cannot read {size!r} as a size; write e.g. 500M, 10G or 1048576")
    number, unit = match.groups()
    return int(float(number) * _UNITS[unit.upper()])


def format_size(size: float) -> str:
    """Return ``size`` bytes as a short human string, e.g. ``"1.5 GiB"``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")
