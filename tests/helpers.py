"""Helpers the test modules share (fixtures live in conftest.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def entry_path(memoized: Any, *args: Any, **kwargs: Any) -> Path:
    """The file of the entry of ``memoized(*args, **kwargs)`` in its cache (a local location)."""
    from cachelib._entries import names

    key = memoized._key(args, kwargs)
    return Path(memoized.cache.location) / names.entry(memoized.namespace, key)


class Calls(list):  # type: ignore[type-arg]
    """A test's record of the calls its memoized functions made.

    Memoized functions append to it, a global they read: it pickles (and so hashes)
    as an empty record whatever it holds, so that recording a call does not change
    the function's key (as ``ignore=["CALLS"]`` would say for a plain list).
    """

    def __reduce__(self) -> tuple[type, tuple[()]]:
        return (Calls, ())
