"""``hash``: a stable content hash of any value, and the short digests of key parts.

Rule: what ``cachelib.hash`` returns is ``_keys.encoding``'s canonical encoding with
functions and classes followed into everything they reach (``_keys.reach``), so that
a function passed as a value hashes as the memoized function itself is keyed.
"""

from __future__ import annotations

from typing import Any

from .._errors import UnhashableError
from .encoding import HASH_ALGORITHM, Follow, Hasher
from .reach import REACHED

__all__ = ["HASH_ALGORITHM", "hash", "short_digest"]


def hash(obj: Any) -> str:
    """Return a stable content hash of ``obj``, e.g. ``"xxh3_128:9f2c..."``.

    Raises ``UnhashableError`` (a ``CacheError`` and ``TypeError``) naming where in
    ``obj`` the value that cannot be hashed sits.
    """
    hasher = Hasher(REACHED)
    try:
        hasher.update(obj)
    except UnhashableError as exc:
        if exc.path:
            raise UnhashableError(f"at obj{exc.path}: {exc}", path=exc.path) from exc.__cause__
        raise
    return hasher.hexdigest()


def short_digest(obj: Any, follow: Follow | None = REACHED) -> str:
    """Return 12 hex digits naming ``obj``'s hash (for key parts), or ``"unhashable"``."""
    hasher = Hasher(follow)
    try:
        hasher.update(obj)
    except UnhashableError:
        return "unhashable"
    return hasher.digest().hex()[:12]
