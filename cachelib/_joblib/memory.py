"""``cachelib.Memory``: joblib.Memory's names and meanings, built on ``Cache``.

Rule: a translation layer only. Every option is turned into the ``Cache`` and
``MemoizedFunction`` option that means the same (``compress=3`` is zlib level 3, as
in joblib; ``mmap_mode=False`` is "the Memory's own"), and every call goes through
the one call path of ``_memo.memoized``. Where joblib acts at a given moment, so does
this layer: ``Memory(...)`` creates its location; a ``compress`` joblib would refuse
only when storing makes each call compute, warn and store nothing. What differs
from joblib on purpose is listed in the README's "Coming from joblib" table.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import functools
import inspect
import os
import time
from collections.abc import Callable, Coroutine
from typing import Any, Generic, cast, overload

from .._codecs.registry import Compressor
from .._entries.policy import Missing
from .._errors import CacheError, InvalidOptionError, warn
from .._format.persistence import resolve_compress
from .._memo.cache import Cache, CacheInfo, logger, verbose_logger
from .._memo.memoized import AsyncMemoizedFunction, MemoizedFunction, Miss
from .._memo.options import MemoizeOptions
from .._typing import P, R
from .logger import JoblibLogger
from .shelve import MemorizedResult, NotMemorizedResult

__all__ = ["AsyncMemorizedFunc", "MemorizedFunc", "Memory", "NotMemorizedFunc", "expires_after"]

Validator = Callable[[dict[str, Any]], Any]
BACKENDS = ("local",)
_JOBLIB_LEVELS = {"zlib": 3, "gzip": 3, "bz2": 9, "lzma": 6, "xz": 6}  # joblib's levels for a bare name
# What backend_options may hold: the Cache options Memory has no parameter for.
_BACKEND_OPTIONS = (
    "bytes_limit",
    *(name for name, p in inspect.signature(Cache).parameters.items() if p.kind is p.KEYWORD_ONLY),
)


class ExpiresAfter:
    """A ``cache_validation_callback``: valid while younger than ``seconds`` (``expires_after``)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def __call__(self, metadata: dict[str, Any]) -> bool:
        return bool(time.time() - metadata["time"] < self.seconds)

    def __repr__(self) -> str:
        return f"expires_after(seconds={self.seconds})"


def expires_after(
    days: float = 0, seconds: float = 0, microseconds: float = 0, milliseconds: float = 0,
    minutes: float = 0, hours: float = 0, weeks: float = 0,
) -> ExpiresAfter:
    """Return a ``cache_validation_callback`` that recomputes results older than the duration.

    joblib's ``expires_after``. Under ``Memory.cache`` it becomes the cache's own
    expiry, which reads the time stored inside each entry.
    """
    delta = datetime.timedelta(days=days, seconds=seconds, microseconds=microseconds,
                               milliseconds=milliseconds, minutes=minutes, hours=hours, weeks=weeks)
    return ExpiresAfter(delta.total_seconds())


def joblib_compress(compress: Any) -> Any:
    """Translate joblib's ``compress`` into cachelib's (an int is a zlib level, as in joblib)."""
    if compress is None or compress is False or (type(compress) is int and compress == 0):
        return False
    if compress is True:
        return ("zlib", 3)
    if type(compress) is int:
        if not 1 <= compress <= 9:
            raise InvalidOptionError(f"compress={compress}: an integer is a zlib level, 0 (none) to 9")
        return ("zlib", compress)
    if isinstance(compress, str):
        return (compress, _JOBLIB_LEVELS[compress]) if compress in _JOBLIB_LEVELS else compress
    if isinstance(compress, tuple) and len(compress) == 2 and compress[1] == 0:
        return False  # joblib writes ("zlib", 0) uncompressed
    if isinstance(compress, (tuple, Compressor)):
        return compress
    raise InvalidOptionError(
        f"compress={compress!r}: give False, True, a zlib level 1-9, a codec name or a (name, level) tuple"
    )


def _joblib_codec(compress: Any) -> tuple[Any, str | None]:
    """The codec of joblib's ``compress``, or (no codec, why not) for a value joblib accepts here.

    joblib takes any ``compress`` in ``Memory(...)`` and refuses a bad one only when it
    stores a result: each call then computes, warns and stores nothing. So does
    cachelib (librosa passes an environment variable's string, such as ``"3"``).
    """
    try:
        return resolve_compress(joblib_compress(compress)), None
    except InvalidOptionError as exc:
        return False, f"Memory(compress={compress!r}) cannot store results: {exc}"


def joblib_metadata(metadata: dict[str, Any], stored: float) -> dict[str, Any]:
    """An entry's metadata under joblib's names: ``duration``, ``time``, plus ``call`` and ``function``."""
    seconds = metadata.get("compute_seconds")
    return {"duration": seconds if isinstance(seconds, (int, float)) else None, "time": stored,
            "call": metadata.get("call"), "function": metadata.get("function")}


class MemorizedFunc(MemoizedFunction[P, R], JoblibLogger):
    """What ``Memory.cache`` returns: a ``MemoizedFunction`` with joblib's ``MemorizedFunc`` methods.

    ``call_and_shelve`` returns a ``MemorizedResult`` without loading a stored result;
    ``call`` recomputes and returns ``(result, metadata)``; a ``cache_validation_callback``
    gets each stored entry's metadata (``duration``, ``time``, ``call``) and a false
    answer recomputes.
    """

    def __init__(
        self,
        func: Callable[P, R],
        cache: Cache | str | os.PathLike[str] | None,
        *joblib_arguments: Any,
        verbose: int | None = None,
        cache_validation_callback: Validator | None = None,
        **arguments: Any,
    ) -> None:
        if isinstance(cache, Cache):
            if joblib_arguments:
                raise TypeError("MemorizedFunc(func, cache) takes its other options by keyword")
            options = JoblibOptions.over(
                cache._defaults.updated(arguments), verbose, cache_validation_callback
            )
        else:  # joblib's MemorizedFunc(func, location, backend, ignore, ...)
            cache, options = _joblib_construction(
                cache, joblib_arguments, verbose, cache_validation_callback, arguments
            )
        self._setup(func, cache, options)

    def _setup(self, func: Callable[P, R], cache: Any, options: MemoizeOptions) -> None:
        super()._setup(func, cache, options)
        verbose = getattr(options, "verbose", None)
        self._verbose = cache.verbose if verbose is None else verbose
        self.cache_validation_callback = getattr(options, "cache_validation_callback", None)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(func={self.__wrapped__!r}, location={self.cache.location})"

    @property
    def logger(self) -> Any:
        return verbose_logger(self._verbose)

    @property
    def _chatty(self) -> bool:
        return bool(self._verbose)

    @property
    def func(self) -> Callable[P, R]:
        """The original, undecorated function (joblib's name for ``__wrapped__``)."""
        return self.__wrapped__

    @property
    def ignore(self) -> list[str]:
        """The names of the arguments left out of the key."""
        return list(self.options.ignore)

    # -- validity ------------------------------------------------------------------------

    def _is_valid(self, key: str) -> bool:
        """Ask the validation callback about the stored entry of ``key`` (False if none)."""
        if self.cache_validation_callback is None:
            return True
        try:
            head = self._entries.head(self.namespace, key)
        except Missing:
            return False
        except (CacheError, OSError):
            return True  # a damaged entry: the lookup warns and recomputes
        return bool(self.cache_validation_callback(joblib_metadata(head.metadata, head.stored)))

    def _lookup(self, key: str, warn: bool = True) -> tuple[bool, Any]:
        if not self._is_valid(key):
            return False, None
        return super()._lookup(key, warn)

    def _store(self, key: str, result: Any, seconds: float, *args: Any, **kwargs: Any) -> Any:
        reason = getattr(self.options, "unusable_compress", None)
        if reason is not None:  # as joblib: computed, returned, not stored
            warn(f"{self.__qualname__}: {reason}; the result is returned but not stored")
            return result
        return super()._store(key, result, seconds, *args, **kwargs)

    def check_call_in_cache(self, *args: P.args, **kwargs: P.kwargs) -> bool:
        """Return True if this call's result is stored and its validation callback accepts it."""
        return super().check_call_in_cache(*args, **kwargs) and self._is_valid(self._key(args, kwargs))

    # -- joblib's methods --------------------------------------------------------------------

    def _shelved(self, key: str) -> MemorizedResult[R] | None:
        stored = self._entries.contains(self.namespace, key, self.expires_after) and self._is_valid(key)
        if not stored:
            return None
        return MemorizedResult(
            self.cache, self.namespace, key, func=self.__qualname__, mmap_mode=self.mmap_mode
        )

    def _disabled(self) -> bool:
        return self.cache.entries is None or self._refused

    def call_and_shelve(
        self, *args: P.args, **kwargs: P.kwargs
    ) -> MemorizedResult[R] | NotMemorizedResult[R]:
        """Compute the call if it is not stored, and return a reference to its stored result.

        A stored result is not read. Without a cache, or if the result could not be
        stored, the reference holds the result in memory (``NotMemorizedResult``).
        """
        if self._disabled():
            return NotMemorizedResult(self.__wrapped__(*args, **kwargs))
        key = self._key(args, kwargs)
        shelved = self._shelved(key)
        if shelved is None:
            value = self(*args, **kwargs)
            shelved = self._shelved(key)
            if shelved is None:
                return NotMemorizedResult(value)
        return shelved

    def call(self, *args: P.args, **kwargs: P.kwargs) -> tuple[R, dict[str, Any]]:
        """Compute the call even if it is stored, store it, and return ``(result, metadata)``."""
        if self._disabled():
            return self.__wrapped__(*args, **kwargs), {}
        with Miss(self, self._key(args, kwargs), args, kwargs, locked=False) as miss:
            result = miss.store(self.__wrapped__(*args, **kwargs))
            return result, _call_metadata(self, miss.seconds, miss.call)

    def clear(self, warn: bool = True) -> None:
        """Remove every stored result of this function; say so when ``warn`` and verbose."""
        if warn and self._verbose:
            self.logger.info("clearing the stored results of %s", self.__qualname__)
        super().clear()


class AsyncMemorizedFunc(MemorizedFunc[P, R], AsyncMemoizedFunction[P, R]):
    """``MemorizedFunc`` of an ``async def`` function: its call methods are coroutines."""

    async def call_and_shelve(  # type: ignore[override]
        self, *args: P.args, **kwargs: P.kwargs
    ) -> MemorizedResult[R] | NotMemorizedResult[R]:
        if self._disabled():
            return NotMemorizedResult(await cast(Any, self.__wrapped__)(*args, **kwargs))
        key = self._key(args, kwargs)
        shelved = self._shelved(key)
        if shelved is None:
            value = await cast(Any, self)(*args, **kwargs)
            shelved = self._shelved(key)
            if shelved is None:
                return NotMemorizedResult(value)
        return shelved

    async def call(self, *args: P.args, **kwargs: P.kwargs) -> tuple[Any, dict[str, Any]]:  # type: ignore[override]
        if self._disabled():
            return await cast(Any, self.__wrapped__)(*args, **kwargs), {}
        with Miss(self, self._key(args, kwargs), args, kwargs, locked=False) as miss:
            result = miss.store(await cast(Any, self.__wrapped__)(*args, **kwargs))
            return result, _call_metadata(self, miss.seconds, miss.call)


def _call_metadata(function: MemorizedFunc[Any, Any], seconds: float, call: str | None) -> dict[str, Any]:
    """What ``call`` returns beside the result: joblib's metadata of the call just stored."""
    metadata = {"function": function.__qualname__, "compute_seconds": seconds, "call": call}
    return joblib_metadata(metadata, time.time())


class NotMemorizedFunc(Generic[P, R]):
    """joblib's stand-in for a memoized function that caches nothing: calls ``func`` every time."""

    def __init__(self, func: Callable[P, R]) -> None:
        self.func = func

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.func(*args, **kwargs)

    def call_and_shelve(self, *args: P.args, **kwargs: P.kwargs) -> NotMemorizedResult[R]:
        """Compute the call; return its result held in memory."""
        return NotMemorizedResult(self.func(*args, **kwargs))

    def call(self, *args: P.args, **kwargs: P.kwargs) -> tuple[R, dict[str, Any]]:
        """Compute the call; return ``(result, {})``."""
        return self.func(*args, **kwargs), {}

    def check_call_in_cache(self, *args: P.args, **kwargs: P.kwargs) -> bool:
        """False: nothing is ever stored."""
        return False

    def clear(self, warn: bool = True) -> None:
        """Nothing to remove."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(func={self.func})"


@dataclasses.dataclass(frozen=True)
class JoblibOptions(MemoizeOptions):
    """``MemoizeOptions`` plus what joblib's ``Memory.cache`` sets per function."""

    verbose: int | None = None
    cache_validation_callback: Validator | None = None
    unusable_compress: str | None = None  # why the Memory's compress cannot store anything

    @classmethod
    def over(
        cls, options: MemoizeOptions, verbose: int | None, cache_validation_callback: Validator | None
    ) -> JoblibOptions:
        """``options`` with joblib's per-function settings; joblib's ``expires_after`` becomes the expiry."""
        values = {field.name: getattr(options, field.name) for field in dataclasses.fields(MemoizeOptions)}
        if isinstance(cache_validation_callback, ExpiresAfter):
            # joblib's negative durations expire everything; the cache's expiry is at least 0.
            values["expires_after"] = max(cache_validation_callback.seconds, 0.0)
            cache_validation_callback = None
        return cls(**values, verbose=verbose, cache_validation_callback=cache_validation_callback)


def _function_options(
    cache: Cache, ignore: list[str] | None, verbose: int | None, mmap_mode: Any,
    cache_validation_callback: Validator | None,
) -> JoblibOptions:
    """The options that mean what joblib's ``Memory.cache`` arguments mean.

    ``mmap_mode=False`` is the Memory's own.
    """
    arguments: dict[str, Any] = {"ignore": tuple(ignore or ())}
    if mmap_mode is not False:
        arguments["mmap_mode"] = mmap_mode
    return JoblibOptions.over(cache._defaults.updated(arguments), verbose, cache_validation_callback)


_JOBLIB_POSITIONAL = ("backend", "ignore", "mmap_mode", "compress", "verbose", "timestamp",
                      "cache_validation_callback")


def _joblib_construction(
    location: str | os.PathLike[str] | None,
    arguments: tuple[Any, ...],
    verbose: int | None,
    cache_validation_callback: Validator | None,
    options: dict[str, Any],
) -> tuple[Cache, JoblibOptions]:
    """The cache and options of joblib's ``MemorizedFunc(func, location, backend, ignore, ...)``."""
    if len(arguments) > len(_JOBLIB_POSITIONAL):
        raise TypeError(f"MemorizedFunc takes at most {len(_JOBLIB_POSITIONAL) + 2} positional arguments")
    given = dict(zip(_JOBLIB_POSITIONAL, arguments))
    twice = sorted(set(given) & set(options))
    if twice:
        raise TypeError(f"MemorizedFunc got {twice} both by position and by keyword")
    given.update(options)
    given.setdefault("verbose", verbose)
    given.setdefault("cache_validation_callback", cache_validation_callback)
    unknown = sorted(set(given) - set(_JOBLIB_POSITIONAL))
    if unknown:
        raise TypeError(f"MemorizedFunc got unexpected arguments {unknown}")
    verbose = 1 if given["verbose"] is None else given["verbose"]
    memory = Memory(location, backend=given.get("backend", "local"), mmap_mode=given.get("mmap_mode"),
                    compress=given.get("compress", False), verbose=verbose)
    function_options = _function_options(memory.as_cache, given.get("ignore"), given["verbose"], False,
                                         given["cache_validation_callback"])
    return memory.as_cache, dataclasses.replace(function_options, unusable_compress=memory._unusable_compress)


class Memory(JoblibLogger):
    """joblib.Memory's constructor and methods, on a ``cachelib.Cache``.

    ``location=None`` caches nothing. ``backend`` must be ``"local"``;
    ``backend_options`` takes the ``Cache`` options Memory has no parameter for
    (``secret``, ``lock``, ``fsync``, ``bytes_limit`` ...). ``compress`` has joblib's
    meaning (an integer is a zlib level); ``mmap_mode`` is applied to every hit, and
    ``memory.cache(mmap_mode=...)`` overrides it per function. ``verbose`` 1 or more
    prints misses (through the ``cachelib`` logger), 2 or more hits too.
    ``memory.as_cache`` is the ``Cache`` underneath.
    """

    def __init__(
        self,
        location: str | os.PathLike[str] | None = None,
        backend: str = "local",
        mmap_mode: str | None = None,
        compress: Any = False,
        verbose: int = 1,
        backend_options: dict[str, Any] | None = None,
    ) -> None:
        if backend not in BACKENDS:
            raise InvalidOptionError(
                f"backend {backend!r} is not available: cachelib.Memory stores in a local directory "
                f"(backend='local'); its other options go in backend_options={{...}}"
            )
        options = dict(backend_options or {})
        unknown = sorted(set(options) - set(_BACKEND_OPTIONS))
        if unknown:
            raise InvalidOptionError(
                f"backend_options {unknown} are not options of a cachelib cache; "
                f"it takes {sorted(_BACKEND_OPTIONS)}"
            )
        self.backend = backend
        self.backend_options = options
        self.compress = compress
        self.mmap_mode = mmap_mode
        self.verbose = verbose
        self.timestamp = time.time()
        codec, self._unusable_compress = _joblib_codec(compress)
        self.as_cache = Cache(location, compress=codec, mmap_mode=mmap_mode, verbose=verbose, **options)
        if self.as_cache.entries is not None:  # joblib creates the location here, not at the first store
            with contextlib.suppress(CacheError, OSError):  # an unusable one warns at the first call
                self.as_cache.entries.prepare()

    def __repr__(self) -> str:
        return f"Memory(location={self.location})"

    @property
    def location(self) -> str | None:
        """The cache directory, or None for a Memory that caches nothing."""
        return self.as_cache.location

    @overload
    def cache(
        self, func: Callable[P, Coroutine[Any, Any, R]], ignore: list[str] | None = ...,
        verbose: int | None = ..., mmap_mode: str | bool | None = ...,
        cache_validation_callback: Validator | None = ...,
    ) -> AsyncMemorizedFunc[P, Coroutine[Any, Any, R]]: ...

    @overload
    def cache(
        self, func: Callable[P, R], ignore: list[str] | None = ..., verbose: int | None = ...,
        mmap_mode: str | bool | None = ..., cache_validation_callback: Validator | None = ...,
    ) -> MemorizedFunc[P, R]: ...

    @overload
    def cache(
        self, func: None = None, ignore: list[str] | None = ..., verbose: int | None = ...,
        mmap_mode: str | bool | None = ..., cache_validation_callback: Validator | None = ...,
    ) -> Callable[[Callable[P, R]], MemorizedFunc[P, R]]: ...

    def cache(
        self,
        func: Any = None,
        ignore: list[str] | None = None,
        verbose: int | None = None,
        mmap_mode: str | bool | None = False,
        cache_validation_callback: Validator | None = None,
    ) -> Any:
        """Decorate ``func`` (bare, or called with options) so that each distinct call is computed once.

        ``mmap_mode=False`` keeps the Memory's; ``verbose=None`` too. A
        ``cache_validation_callback(metadata)`` returning false makes a stored result
        be recomputed.
        """
        if cache_validation_callback is not None and not callable(cache_validation_callback):
            raise InvalidOptionError(
                f"cache_validation_callback needs to be callable. Got {cache_validation_callback!r}."
            )
        if func is None:
            return functools.partial(self.cache, ignore=ignore, verbose=verbose, mmap_mode=mmap_mode,
                                     cache_validation_callback=cache_validation_callback)
        if isinstance(func, MemoizedFunction):
            func = func.__wrapped__
        options = _function_options(self.as_cache, ignore, verbose, mmap_mode, cache_validation_callback)
        options = dataclasses.replace(options, unusable_compress=self._unusable_compress)
        return self.as_cache._wrap(func, (MemorizedFunc, AsyncMemorizedFunc), options)

    def eval(self, func: Callable[..., R], *args: Any, **kwargs: Any) -> R:
        """Call ``func(*args, **kwargs)`` through the cache."""
        if self.location is None:
            return func(*args, **kwargs)
        return self.cache(func)(*args, **kwargs)

    def clear(self, warn: bool = True) -> None:
        """Remove every stored result under the location; log a warning first when ``warn``."""
        if warn:
            logger.warning("[%r]: flushing the whole cache", self)
        self.as_cache.clear()

    def reduce_size(
        self,
        bytes_limit: int | str | None = None,
        items_limit: int | None = None,
        age_limit: datetime.timedelta | None = None,
    ) -> int:
        """Evict least recently used entries until every given limit holds; return how many."""
        return self.as_cache.reduce_size(
            bytes_limit=bytes_limit, items_limit=items_limit, age_limit=age_limit
        )

    @overload
    def info(self) -> CacheInfo: ...

    @overload
    def info(self, msg: str) -> None: ...

    def info(self, msg: str | None = None) -> CacheInfo | None:
        """Entries, bytes, hits, misses and time saved, per function (``Cache.info``).

        Given a message, logs it instead, as joblib's ``Memory.info(msg)`` does.
        """
        if msg is not None:
            JoblibLogger.info(self, msg)
            return None
        return self.as_cache.info()
