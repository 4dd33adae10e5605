"""How one function is memoized: the options of ``memoize``, resolved once into a value.

Rule: options arrive as users write them (``compress=3``, ``mmap_mode="r"``,
``expires_after=timedelta(days=7)``) exactly once, at ``Cache(...)`` or
``memoize(...)``, and leave as a frozen ``MemoizeOptions`` of resolved values (a
compressor, a mode, seconds). Everything below takes that value, and a memoized
function pickled to a worker carries it as it is.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Mapping
from typing import Any, TypedDict, cast

from .._codecs.registry import Compressor
from .._errors import InvalidOptionError
from .._format.persistence import MMAP_MODES, resolve_compress
from .._keys.declared import NOTHING_DECLARED, Declared

__all__ = ["MemoizeArguments", "MemoizeOptions", "checked_mmap_mode", "seconds_of"]

CACHE_MMAP_MODES = tuple(mode for mode in MMAP_MODES if mode != "r+")


class MemoizeArguments(TypedDict, total=False):
    """The keyword arguments of ``Cache.memoize``, as users write them (for type checkers)."""

    ignore: list[str] | tuple[str, ...]
    compress: Any
    mmap_mode: str | None
    expires_after: float | datetime.timedelta | None
    track_callees: bool
    track_runtime: bool
    track_files: bool
    depends_on: Any


@dataclasses.dataclass(frozen=True)
class MemoizeOptions:
    """How one function is memoized, resolved: what ``memoize`` was given over its cache's defaults.

    ``ignore`` names arguments (``"*"``/``"**"`` for the variadic ones) and closure
    variables left out of the key; ``compressor`` is None for raw entries;
    ``expires_after`` is in seconds; ``track_callees=False`` keys on the function's
    own code only; ``track_runtime`` and ``track_files`` record, during a miss, the
    user code that ran and the files read (``_keys.depends``), checked on each hit;
    ``depends_on`` are the declared dependencies, the cache's and the function's.
    """

    ignore: tuple[str, ...] = ()
    compressor: Compressor | None = None
    mmap_mode: str | None = None
    expires_after: float | None = None
    track_callees: bool = True
    track_runtime: bool = True
    track_files: bool = True
    depends_on: Declared = NOTHING_DECLARED

    def updated(self, arguments: Mapping[str, Any]) -> MemoizeOptions:
        """Return these options with ``memoize(**arguments)`` applied (each checked and resolved)."""
        unknown = sorted(set(arguments) - MemoizeArguments.__optional_keys__)
        if unknown:
            raise TypeError(f"memoize() got unexpected keyword arguments {unknown}")
        changes: dict[str, Any] = {}
        if "ignore" in arguments:
            changes["ignore"] = checked_ignore(arguments["ignore"])
        if "compress" in arguments:
            changes["compressor"] = resolve_compress(arguments["compress"])
        if "mmap_mode" in arguments:
            changes["mmap_mode"] = checked_mmap_mode(arguments["mmap_mode"])
        if "expires_after" in arguments:
            changes["expires_after"] = seconds_of(arguments["expires_after"], "expires_after")
        for flag in ("track_callees", "track_runtime", "track_files"):
            if flag in arguments:
                changes[flag] = bool(arguments[flag])
        if "depends_on" in arguments:
            changes["depends_on"] = self.depends_on + Declared.of(arguments["depends_on"])
        return dataclasses.replace(self, **changes)


def checked_ignore(ignore: Any) -> tuple[str, ...]:
    """Return ``ignore`` as a tuple of names; a bare string is refused (it is not a list of names)."""
    if isinstance(ignore, str) or not all(isinstance(name, str) for name in ignore or ()):
        raise InvalidOptionError(f"ignore must be a list of argument names, got {ignore!r}")
    return tuple(ignore or ())


def checked_mmap_mode(mmap_mode: Any) -> str | None:
    """Return a cache's ``mmap_mode``; ``"r+"`` is refused (a caller could change later hits)."""
    if mmap_mode == "r+":
        raise InvalidOptionError(
            "mmap_mode='r+' would let callers write into stored results and change what "
            "later hits return; use 'c' for writable copy-on-write arrays, or 'r'"
        )
    if mmap_mode not in CACHE_MMAP_MODES:
        raise InvalidOptionError(f"mmap_mode must be one of {CACHE_MMAP_MODES}, got {mmap_mode!r}")
    return cast("str | None", mmap_mode)


def seconds_of(duration: Any, name: str) -> float | None:
    """Return ``duration`` (seconds >= 0 or a timedelta, or None) in seconds."""
    if duration is None:
        return None
    if isinstance(duration, datetime.timedelta):
        duration = duration.total_seconds()
    is_number = isinstance(duration, (int, float)) and not isinstance(duration, bool)
    if not is_number or duration < 0:
        raise InvalidOptionError(f"{name} must be seconds >= 0 or a timedelta, got {duration!r}")
    return float(duration)
