"""``MemoizedFunction``: what ``@cache.memoize`` returns, and its call path.

Rule: a hit returns exactly what the function returned, or it is a miss. A hit
takes no lock; a miss takes the key's lock, looks again (another process may have
just stored it), computes, publishes, and lets go. The function's own exceptions
are never cached, and a failure to store warns but still returns the result.
"""

from __future__ import annotations

import functools
import inspect
import logging
import sys
import time
import types
import warnings
from collections.abc import Callable
from typing import Any, Protocol

from ._calls import CallKeyer, function_identity, unwrap
from ._compressors import Compressor
from ._entries import Entries, Missing
from ._errors import CacheError, CacheWarning, FileAccessError, LockTimeout, SerializationError
from ._stats import StatsRecorder

__all__ = ["AsyncMemoizedFunction", "CacheSettings", "MemoizedFunction", "memoized"]


class CacheSettings(Protocol):
    """What a memoized function asks of its cache (``_cache.Cache``, which imports this module)."""

    entries: Entries | None
    strict: bool
    lock_timeout: float
    on_lock_timeout: str

    @property
    def logger(self) -> logging.Logger: ...

    def compressor_for(self, compress: Any) -> Compressor | None: ...

    def mmap_mode_for(self, mmap_mode: Any) -> str | None: ...

    def seconds_for(self, expires_after: Any) -> float | None: ...

    def after_store(self, size: int) -> None: ...

    def function_info(self, func: MemoizedFunction) -> Any: ...


class MemoizedFunction:
    """A function whose results are stored in a ``Cache``, one entry per distinct call."""

    def __init__(
        self,
        func: Callable[..., Any],
        cache: CacheSettings,
        *,
        ignore: list[str] | tuple[str, ...] = (),
        compress: Any = None,
        mmap_mode: Any = None,
        expires_after: Any = None,
    ) -> None:
        functools.update_wrapper(self, func)
        self.__wrapped__ = func
        if not hasattr(self, "__qualname__"):  # a functools.partial or a callable object
            inner = unwrap(func)
            self.__qualname__ = getattr(inner, "__qualname__", type(inner).__qualname__)
            self.__name__ = getattr(inner, "__name__", type(inner).__name__)
            self.__module__ = getattr(inner, "__module__", None)
        self.cache = cache
        self.compressor: Compressor | None = cache.compressor_for(compress)
        self.mmap_mode: str | None = cache.mmap_mode_for(mmap_mode)
        self.expires_after: float | None = cache.seconds_for(expires_after)
        # The options as resolved, so that a pickled copy behaves the same in a worker.
        self._options = {"ignore": tuple(ignore), "compress": self.compressor or False,
                         "mmap_mode": self.mmap_mode, "expires_after": self.expires_after}
        self._keyer = CallKeyer(func, ignore)
        self.name, identity = function_identity(func)
        self.namespace = f"{self.name}-{identity}"
        self._about = {"function": self.name, "identity": identity}
        self._recorder = StatsRecorder(cache.entries, self.namespace if cache.entries else None)
        self._refused = False  # the location (or this function's directory) cannot be trusted
        if self.mmap_mode is not None and self.compressor is not None:
            warnings.warn(
                f"{self.__qualname__}: compressed entries cannot be memory-mapped; its hits are "
                "loaded into memory (use compress=False with mmap_mode)",
                CacheWarning,
                stacklevel=4,
            )

    def __repr__(self) -> str:
        return f"<MemoizedFunction {self.__qualname__} in {self.cache!r}>"

    def __reduce__(self) -> Any:
        """Pickle by name when the module holds this wrapper, else rebuild it from parts.

        Workers (multiprocessing, joblib, dask) then share the same cache location.
        """
        target: Any = sys.modules.get(self.__module__)
        for part in self.__qualname__.split("."):
            target = getattr(target, part, None)
        if target is self:
            return self.__qualname__
        return _restore, (self.__wrapped__, self.cache, self._options)

    def __get__(self, instance: Any, owner: type | None = None) -> Any:
        """Bind like a function, so that decorated methods receive ``self``."""
        return self if instance is None else types.MethodType(self, instance)

    # -- keys ------------------------------------------------------------------------------

    def _key(self, args: tuple, kwargs: dict) -> str:
        """Return the key (32 hex digits) of one call."""
        return self._keyer.key(args, kwargs)

    @property
    def stats(self) -> Any:
        """This process's hits, misses and seconds for this function."""
        return self._recorder.stats

    # -- the call path -----------------------------------------------------------------------

    def _refuse(self, exc: FileAccessError) -> None:
        """Stop using the cache for this function, saying why once (or raise, if strict)."""
        if self.cache.strict:
            raise exc
        if not self._refused:
            self._refused = True
            warnings.warn(
                f"{self.__qualname__} computes without the cache: {exc}", CacheWarning, stacklevel=4
            )

    def _lookup(self, key: str, warn: bool = True) -> tuple[bool, Any]:
        """Return (True, result) on a hit, (False, None) on a miss; damaged entries miss."""
        started = time.perf_counter()
        try:
            metadata, result = self.cache.entries.get(  # type: ignore[union-attr]
                self.namespace, key, mmap_mode=self.mmap_mode, max_age=self.expires_after
            )
        except Missing:
            return False, None
        except FileAccessError as exc:
            self._refuse(exc)
            return False, None
        except (CacheError, OSError, ValueError, TypeError) as exc:
            if warn:
                warnings.warn(
                    f"the cache entry {key} of {self.__qualname__} cannot be read ({exc}); recomputing it",
                    CacheWarning,
                    stacklevel=4,
                )
            return False, None
        self._recorder.record(True, _seconds(metadata))
        self.cache.logger.debug("hit %s in %.6f s", self.__qualname__, time.perf_counter() - started)
        return True, result

    def _acquire(self, key: str) -> Any:
        """Return the held lock of ``key``, or None to compute without one."""
        try:
            lock = self.cache.entries.lock(self.namespace, key, self._about)  # type: ignore[union-attr]
        except FileAccessError as exc:
            self._refuse(exc)
            return None
        except (OSError, CacheError) as exc:  # storing will fail too, and say so once
            self.cache.logger.debug("no lock for %s: %s", self.__qualname__, exc)
            return None
        if lock is None:
            return None
        try:
            if lock.acquire(self.cache.lock_timeout):
                return lock
        except (OSError, CacheError):
            return None  # the lock cannot be taken here (a read-only filesystem): compute unlocked
        if self.cache.on_lock_timeout == "raise":
            raise LockTimeout(
                f"waited {self.cache.lock_timeout} s for the lock of a call of {self.__qualname__}, held by "
                "another process computing it; raise lock_timeout or use on_lock_timeout='compute'"
            )
        return None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.cache.entries is None or self._refused:
            return self.__wrapped__(*args, **kwargs)
        key = self._key(args, kwargs)
        hit, result = self._lookup(key)
        if hit:
            return result
        if self._refused:
            return self.__wrapped__(*args, **kwargs)
        lock = self._acquire(key)
        try:
            if lock is not None:
                hit, result = self._lookup(key, warn=False)  # computed while we waited?
                if hit:
                    return result
            started = time.perf_counter()
            result = self.__wrapped__(*args, **kwargs)
            return self._store(key, result, time.perf_counter() - started)
        finally:
            if lock is not None:
                lock.release()

    def _store(self, key: str, result: Any, seconds: float) -> Any:
        """Publish ``result``; return it (as stored memmaps when ``mmap_mode`` asks)."""
        started = time.perf_counter()
        metadata = {"function": self.__qualname__, "compute_seconds": seconds}
        self._recorder.record(False, seconds)
        try:
            size, returned = self.cache.entries.put(  # type: ignore[union-attr]
                self.namespace, key, result, metadata, self.compressor,
                about=self._about, mmap_mode=self.mmap_mode,
            )
        except SerializationError:
            raise
        except FileAccessError as exc:
            self._refuse(exc)
            return result
        except (OSError, CacheError, KeyError) as exc:
            warnings.warn(
                f"the result of {self.__qualname__} could not be stored ({exc}); "
                "it is returned but will be computed again next time",
                CacheWarning,
                stacklevel=3,
            )
            return result
        self.cache.logger.info(
            "miss %s: computed in %.3f s, stored %d bytes in %.3f s",
            self.__qualname__, seconds, size, time.perf_counter() - started,
        )
        self.cache.after_store(size)
        return returned

    # -- management ------------------------------------------------------------------------

    def check_call_in_cache(self, *args: Any, **kwargs: Any) -> bool:
        """Return True if this call's result is stored (and not expired)."""
        if self.cache.entries is None or self._refused:
            return False
        return self.cache.entries.contains(self.namespace, self._key(args, kwargs), self.expires_after)

    def clear(self) -> None:
        """Remove every stored result of this function (all versions of its code)."""
        if self.cache.entries is not None:
            self.cache.entries.clear(self.namespace)
            self.reset_stats()

    def reset_stats(self) -> None:
        """Count afresh after this function's entries were cleared."""
        self._recorder = StatsRecorder(self.cache.entries, self.namespace)

    def cache_info(self) -> Any:
        """Return this function's entries, bytes, hits, misses and time saved."""
        return self.cache.function_info(self)


class AsyncMemoizedFunction(MemoizedFunction):
    """The ``MemoizedFunction`` of an ``async def`` function: calling it returns a coroutine.

    A hit is read without awaiting; a miss awaits the function, then stores its
    result. Concurrent callers are not locked against each other (a file lock
    would block the event loop): two may compute the same call, both correctly.
    """

    async def __call__(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        if self.cache.entries is None or self._refused:
            return await self.__wrapped__(*args, **kwargs)
        key = self._key(args, kwargs)
        hit, result = self._lookup(key)
        if hit or self._refused:
            return result if hit else await self.__wrapped__(*args, **kwargs)
        started = time.perf_counter()
        result = await self.__wrapped__(*args, **kwargs)
        return self._store(key, result, time.perf_counter() - started)


def _seconds(metadata: dict[str, Any]) -> float:
    """The compute time an entry's metadata records (0 if it holds something else)."""
    seconds = metadata.get("compute_seconds")
    return float(seconds) if isinstance(seconds, (int, float)) and not isinstance(seconds, bool) else 0.0


def memoized(func: Callable[..., Any], cache: CacheSettings, **options: Any) -> Any:
    """Wrap ``func`` (a function, method, static or class method, partial, coroutine)."""

    if isinstance(func, (staticmethod, classmethod)):
        return type(func)(memoized(func.__func__, cache, **options))
    kind = AsyncMemoizedFunction if inspect.iscoroutinefunction(func) else MemoizedFunction
    return kind(func, cache, **options)


def _restore(func: Callable[..., Any], cache: CacheSettings, options: dict) -> Any:
    """Rebuild a pickled ``MemoizedFunction`` (used by ``__reduce__``)."""
    return memoized(func, cache, **options)
