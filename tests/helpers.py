"""Helpers the test modules share (fixtures live in conftest.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def entry_path(memoized: Any, *args: Any, **kwargs: Any) -> Path:
    """The file of the entry of ``memoized(*args, **kwargs)`` in its cache (a local location)."""
    from cachelib._entries import names

    key = memoized._key(args, kwargs)
    return Path(memoized.cache.location) / names.entry(memoized.namespace, key)
