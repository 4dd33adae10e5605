"""``MemoizedFunction``: what ``@cache.memoize`` returns, and its call path.

Rule: a hit returns exactly what the function returned, or it is a miss. A hit
takes no lock; a miss takes the key's lock, looks again (another process may have
just stored it), computes, publishes, and lets go. The function's own exceptions
are never cached, and a failure to store warns but still returns the result.
"""

from __future__ import annotations

import functools
import heapq
import inspect
import logging
import os
import sys
import time
import types
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._calls import CallKeyer, function_identity, unwrap
from ._compressors import Compressor
from ._errors import CacheError, CacheWarning, CorruptFileError, SerializationError, UnhashableError
from ._explain import explain_miss
from ._format import MAGIC
from ._persistence import read_value
from ._stats import StatsRecorder
from ._store import ENTRY_SUFFIX, _context, _skip_signature, acquire, release

if TYPE_CHECKING:
    from ._cache import Cache

__all__ = ["AsyncMemoizedFunction", "MemoizedFunction", "memoized"]

_EXPLAIN_ENTRIES = 200  # the most recent entries whose key parts explain a miss
_SMALL_TO_READ = 16 << 20  # a compressed entry up to this size is read whole for its metadata


class MemoizedFunction:
    """A function whose results are stored in a ``Cache``, one entry per distinct call."""

    __cachelib_passthrough__ = True  # calls __wrapped__ with its own arguments: keys see through it

    def __init__(
        self,
        func: Callable[..., Any],
        cache: Cache,
        *,
        ignore: list[str] | tuple[str, ...] = (),
        compress: Any = None,
        mmap_mode: Any = None,
        expires_after: Any = None,
        track_callees: bool = True,
    ) -> None:
        functools.update_wrapper(self, func)
        self.__wrapped__ = func
        if not hasattr(self, "__qualname__"):  # a functools.partial or a callable object
            inner = unwrap(func)
            self.__qualname__ = getattr(inner, "__qualname__", type(inner).__qualname__)
            self.__name__ = getattr(inner, "__name__", type(inner).__name__)
            self.__module__ = getattr(inner, "__module__", None)
        self.cache = cache
        self.compressor: Compressor | None = cache._compressor_for(compress)
        self.mmap_mode: str | None = cache._mmap_mode_for(mmap_mode)
        self.expires_after: float | None = cache._seconds_for(expires_after)
        # The options as resolved, so that a pickled copy behaves the same in a worker.
        self._options = {"ignore": tuple(ignore), "compress": self.compressor or False,
                         "mmap_mode": self.mmap_mode, "expires_after": self.expires_after,
                         "track_callees": track_callees}
        self._keyer = CallKeyer(func, ignore, track_callees)
        self.name, identity = function_identity(func)
        self.function_dir = cache.store.function_dir(self.name, identity) if cache.store else None
        self._recorder = StatsRecorder(self.function_dir)
        self._prefix = os.path.join(self.function_dir, "") if self.function_dir else ""

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

    # -- keys and paths ------------------------------------------------------------------

    def _entry(self, args: tuple, kwargs: dict) -> Path:
        """Return the path of this call's entry."""
        return Path(self._entry_name(args, kwargs))

    def _entry_name(self, args: tuple, kwargs: dict) -> str:
        # A plain string on the hot path: building a Path costs as much as the key.
        key = self._keyer.key(args, kwargs)
        return f"{self._prefix}{key[:2]}{os.sep}{key}{ENTRY_SUFFIX}"

    @property
    def stats(self) -> Any:
        """This process's hits, misses and seconds for this function."""
        return self._recorder.stats

    # -- the call path -----------------------------------------------------------------------

    def _lookup(self, path: Any, warn: bool = True) -> tuple[bool, Any]:
        """Return (True, result) on a hit, (False, None) on a miss; damaged entries miss."""
        started = time.perf_counter()
        try:
            metadata, result = _unpacked(self.cache.store.read(path, self.mmap_mode, self.expires_after))  # type: ignore[union-attr]
        except (FileNotFoundError, NotADirectoryError):
            return False, None
        except (CacheError, OSError, ValueError, TypeError) as exc:
            if not warn:
                return False, None
            warnings.warn(
                f"cache entry {str(path)!r} of {self.__qualname__} cannot be read ({exc}); "
                "recomputing it",
                CacheWarning,
                stacklevel=4,
            )
            return False, None
        self._recorder.record(True, float(metadata.get("compute_seconds", 0.0)))
        self.cache.logger.debug("hit %s in %.6f s", self.__qualname__, time.perf_counter() - started)
        return True, result

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.cache.store is None:
            return self.__wrapped__(*args, **kwargs)
        path = self._entry_name(args, kwargs)
        hit, result = self._lookup(path)
        if hit:
            return result
        try:
            lock = self.cache.store.lock(path, self.cache.lock_timeout)
        except (OSError, CacheError) as exc:
            warnings.warn(
                f"cannot use the cache location for {self.__qualname__} ({exc}); "
                "computing without storing the result",
                CacheWarning,
                stacklevel=2,
            )
            self._recorder.record(False, 0.0)
            return self.__wrapped__(*args, **kwargs)
        locked = acquire(lock, self.cache.on_lock_timeout)
        try:
            if locked:
                hit, result = self._lookup(path, warn=False)  # computed while we waited?
                if hit:
                    return result
            parts = self._miss_parts(args, kwargs)
            started = time.perf_counter()
            result = self.__wrapped__(*args, **kwargs)
            return self._store(path, result, time.perf_counter() - started, parts)
        finally:
            if locked:
                release(lock)

    def _store(self, path: Any, result: Any, seconds: float, parts: dict[str, str] | None = None) -> Any:
        """Publish ``result``; return it (re-read as memmaps when ``mmap_mode`` asks)."""
        started = time.perf_counter()
        metadata = {"function": self.__qualname__, "compute_seconds": seconds, "time": time.time(),
                    "key_parts": parts}
        try:
            size = self.cache.store.publish(path, (metadata, result), self.compressor)  # type: ignore[union-attr]
        except SerializationError as exc:
            raise SerializationError(
                f"the result of {self.__qualname__} (a {type(result).__module__}."
                f"{type(result).__qualname__}) cannot be pickled, so it cannot be stored: "
                f"{exc.__cause__ or exc}"
            ) from exc
        except (OSError, CacheError) as exc:
            self._recorder.record(False, seconds)
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
        self.cache._after_store(size)
        self._recorder.record(False, seconds)
        if self.mmap_mode is not None:
            try:  # the first call returns memmaps too, like every later hit
                return self.cache.store.read(path, self.mmap_mode)[1]  # type: ignore[union-attr]
            except (CacheError, OSError):
                pass
        return result

    # -- why a call misses -------------------------------------------------------------------

    def _miss_parts(self, args: tuple, kwargs: dict) -> dict[str, str]:
        """The key parts of a call that missed, stored with its entry; logged when verbose."""
        logger = self.cache.logger
        try:
            parts = self._keyer.key_parts(args, kwargs)
            if logger.isEnabledFor(logging.INFO):
                logger.info("miss %s: %s", self.__qualname__, explain_miss(parts, self._stored_key_parts()))
        except Exception as exc:  # an explanation must never cost the call its result
            logger.debug("cannot explain the miss of %s: %r", self.__qualname__, exc)
            return {}
        return parts

    def explain(self, *args: Any, **kwargs: Any) -> str:
        """Say why this call would miss: what differs from this function's nearest entries.

        For example ``"argument `x` changed"``, ``"helper `prep` edited"``,
        ``"constant `SCALE` changed"`` or ``"new code version"``; or that it hits.
        """
        try:
            parts = self._keyer.key_parts(args, kwargs)
        except UnhashableError as exc:
            return f"the call cannot be keyed: {exc}"
        if self.check_call_in_cache(*args, **kwargs):
            return "the call hits: its entry is stored"
        return explain_miss(parts, self._stored_key_parts())

    def _stored_key_parts(self) -> Iterator[dict[str, str]]:
        """Yield the key parts recorded by this function's most recent entries (newest first).

        Reads only entry metadata: arrays are mapped, not loaded; a large entry that
        cannot be mapped (compressed) is passed over, and so is a damaged one.
        """
        store = self.cache.store
        if store is None or self.function_dir is None:
            return
        dated = []
        for entry in store.entries(self.function_dir):
            try:
                stat = entry.stat()
            except OSError:
                continue
            dated.append((stat.st_mtime, stat.st_size, entry.path))
        for _, size, path in heapq.nlargest(_EXPLAIN_ENTRIES, dated):
            try:
                with open(path, "rb") as fileobj, warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    if store.signer is not None:
                        store.signer.check(fileobj, _context(Path(path)))
                    else:
                        _skip_signature(fileobj)
                    start = fileobj.tell()
                    if size > _SMALL_TO_READ and fileobj.read(len(MAGIC)) != MAGIC:
                        continue  # compressed and large: reading its metadata means decompressing it
                    fileobj.seek(start)
                    metadata = read_value(fileobj, "r", path)[0]
            except (CacheError, OSError, ValueError, TypeError, IndexError, KeyError):
                continue
            parts = metadata.get("key_parts") if isinstance(metadata, dict) else None
            if isinstance(parts, dict):
                yield parts

    # -- management ------------------------------------------------------------------------

    def check_call_in_cache(self, *args: Any, **kwargs: Any) -> bool:
        """Return True if this call's result is stored (and not expired)."""
        if self.cache.store is None:
            return False
        path = self._entry(args, kwargs)
        try:
            age = time.time() - path.stat().st_mtime
        except OSError:  # absent, or the location is unusable
            return False
        return self.expires_after is None or age <= self.expires_after

    def clear(self) -> None:
        """Remove every stored result of this function (all versions of its code)."""
        if self.cache.store is not None:
            self.cache.store.clear(self.function_dir)
            self._reset_stats()

    def _reset_stats(self) -> None:
        """Count afresh, in a new file, after this function's directory was cleared."""
        self._recorder = StatsRecorder(self.function_dir)

    def cache_info(self) -> Any:
        """Return this function's entries, bytes, hits, misses and time saved."""
        return self.cache._function_info(self)


class AsyncMemoizedFunction(MemoizedFunction):
    """The ``MemoizedFunction`` of an ``async def`` function: calling it returns a coroutine.

    A hit is read without awaiting; a miss awaits the function, then stores its
    result. Concurrent callers are not locked against each other (a file lock
    would block the event loop): two may compute the same call, both correctly.
    """

    async def __call__(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        if self.cache.store is None:
            return await self.__wrapped__(*args, **kwargs)
        path = self._entry_name(args, kwargs)
        hit, result = self._lookup(path)
        if hit:
            return result
        parts = self._miss_parts(args, kwargs)
        started = time.perf_counter()
        result = await self.__wrapped__(*args, **kwargs)
        return self._store(path, result, time.perf_counter() - started, parts)


def _unpacked(entry: Any) -> tuple[dict, Any]:
    """Split an entry into (metadata, result), refusing anything else as damaged."""
    if type(entry) is not tuple or len(entry) != 2 or type(entry[0]) is not dict:
        raise CorruptFileError("the file is not a cache entry (no metadata and result)")
    return entry


def memoized(func: Callable[..., Any], cache: Cache, **options: Any) -> Any:
    """Wrap ``func`` (a function, method, static or class method, partial, coroutine)."""

    if isinstance(func, (staticmethod, classmethod)):
        return type(func)(memoized(func.__func__, cache, **options))
    kind = AsyncMemoizedFunction if inspect.iscoroutinefunction(func) else MemoizedFunction
    return kind(func, cache, **options)


def _restore(func: Callable[..., Any], cache: Cache, options: dict) -> Any:
    """Rebuild a pickled ``MemoizedFunction`` (used by ``__reduce__``)."""
    return memoized(func, cache, **options)
