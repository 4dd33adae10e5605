"""Shelved results: ``call_and_shelve`` hands out a reference to a stored result, not the result.

Rule: a ``MemorizedResult`` is small and picklable (the cache's settings, a namespace
and a key), so that it can be sent to other processes sharing the location; it
reads the entry only when ``get()`` is called. A result that is not stored (no
cache, or storing failed) is shelved in memory as a ``NotMemorizedResult``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Generic, cast

from .._entries.policy import Missing
from .._errors import CacheError
from .._typing import R

if TYPE_CHECKING:
    from .._memo.memoized import CacheSettings

__all__ = ["MemorizedResult", "NotMemorizedResult"]


class MemorizedResult(Generic[R]):
    """A reference to the stored result of one call; ``get()`` loads it, ``clear()`` removes it."""

    def __init__(
        self, cache: CacheSettings, namespace: str, key: str, *, func: str, mmap_mode: str | None = None
    ) -> None:
        self.cache = cache
        self.namespace = namespace
        self.args_id = key
        self.func = func
        self.mmap_mode = mmap_mode

    @property
    def location(self) -> str | None:
        """The cache location holding the result."""
        return self.cache.location

    @property
    def func_id(self) -> str:
        """The function's directory in the location."""
        return self.namespace

    def get(self) -> R:
        """Load and return the result; ``KeyError`` if it is no longer stored or is damaged."""
        if self.cache.entries is None:
            raise KeyError(f"the result of {self.func} is not stored: its cache has no location")
        try:
            _, value = self.cache.entries.get(self.namespace, self.args_id, mmap_mode=self.mmap_mode)
        except Missing:
            raise KeyError(
                f"the result of {self.func} ({self.args_id}) is no longer stored in {self.location!r}: "
                "it was cleared or evicted; call the function again"
            ) from None
        except (CacheError, OSError) as exc:
            raise KeyError(
                f"the result of {self.func} ({self.args_id}) in {self.location!r} cannot be read ({exc}); "
                "call the function again to recompute it"
            ) from exc
        return cast(R, value)

    def clear(self) -> None:
        """Remove the result from the cache (nothing happens if it is already gone)."""
        if self.cache.entries is not None:
            self.cache.entries.delete(self.namespace, self.args_id)

    def __repr__(self) -> str:
        return f'MemorizedResult(location="{self.location}", func="{self.func_id}", args_id="{self.args_id}")'


class NotMemorizedResult(Generic[R]):
    """A result kept in memory, with the ``get()`` and ``clear()`` of ``MemorizedResult``."""

    def __init__(self, value: R) -> None:
        self.value: R | None = value
        self.valid = True

    def get(self) -> R:
        """Return the value; ``KeyError`` after ``clear()``."""
        if not self.valid:
            raise KeyError("no value stored: the result was cleared")
        return cast(R, self.value)

    def clear(self) -> None:
        """Forget the value."""
        self.valid = False
        self.value = None

    def __repr__(self) -> str:
        return f"NotMemorizedResult({self.value!r})" if self.valid else "NotMemorizedResult with no value"
