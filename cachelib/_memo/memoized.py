"""``MemoizedFunction``: what ``@cache.memoize`` returns, and its call path.

Rule: a hit returns exactly what the function returned, or it is a miss. A hit
takes no lock; a miss takes the key's lock, looks again (another process may have
just stored it), computes, publishes, and lets go: one path (``Miss``) for sync
calls, ``async def`` calls and ``Memory.call``, with the function run by the caller
so that one cachelib frame stands between a call and the function. The function's
own exceptions are never cached, and a failure to store warns but still returns
the result. A verbose function's long loads and stores show progress (``progress``).
"""

from __future__ import annotations

import functools
import inspect
import logging
import time
import types
import warnings
from collections.abc import Callable, Iterator
from typing import Any, Concatenate, Generic, Protocol, TypeVar, cast, overload

from .._codecs.registry import Compressor
from .._entries.policy import Entries, Missing, Stale
from .._entries.stats import CallStats, StatsRecorder
from .._errors import (
    CacheError,
    CacheWarning,
    FileAccessError,
    LockTimeout,
    SerializationError,
    UnhashableError,
    warn,
)
from .._keys.calls import CallKeyer, function_identity, unwrap
from .._keys.depends import Recorded, Recording, Validator, note_hit, recording_now
from .._keys.explain import explain_miss
from .._keys.files import ignore_files_under
from .._sizes import format_size
from .._text import duration
from .._typing import P, Q, R, S, T
from .display import Explanation, describe_options, html_fields
from .info import FunctionInfo
from .options import MemoizeOptions
from .pickling import reduce_wrapper
from .progress import showing_progress
from .summary import CallSummary

__all__ = ["AsyncMemoizedFunction", "CacheSettings", "MemoizedFunction", "Miss", "memoized"]


class CacheSettings(Protocol):
    """What a memoized function asks of its cache (``_cache.Cache``, which imports this module)."""

    entries: Entries | None
    strict: bool
    lock_timeout: float
    on_lock_timeout: str
    verbose: int

    @property
    def location(self) -> str | None: ...

    @property
    def logger(self) -> logging.Logger: ...

    def _after_store(self, size: int) -> None: ...

    def _function_info(self, func: MemoizedFunction[Any, Any]) -> FunctionInfo: ...


_DEFAULTS = MemoizeOptions()
_EXPLAIN_ENTRIES = 200  # the most recent entries whose key parts explain a miss
M = TypeVar("M", bound="MemoizedFunction[Any, Any]")


class MemoizedFunction(Generic[P, R]):
    """A function whose results are stored in a ``Cache``, one entry per distinct call.

    For type checkers it keeps the signature and return type of the function it wraps.
    """

    __wrapped__: Callable[P, R]

    __cachelib_passthrough__ = True  # calls __wrapped__ with its own arguments: keys see through it

    def __init__(
        self, func: Callable[P, R], cache: CacheSettings, options: MemoizeOptions = _DEFAULTS
    ) -> None:
        self._setup(func, cache, options)

    def _setup(self, func: Callable[P, R], cache: CacheSettings, options: MemoizeOptions) -> None:
        """Wrap ``func`` (also for an instance made by ``__new__`` while being unpickled)."""
        functools.update_wrapper(self, func)
        self.__wrapped__ = func
        if not hasattr(self, "__qualname__"):  # a functools.partial or a callable object
            inner = unwrap(func)
            self.__qualname__ = getattr(inner, "__qualname__", type(inner).__qualname__)
            self.__name__ = getattr(inner, "__name__", type(inner).__name__)
            self.__module__ = getattr(inner, "__module__", None) or ""
        self.cache = cache
        self.options = options  # resolved: a pickled copy behaves the same in a worker
        self._keyer = CallKeyer(
            func, options.ignore, options.track_callees, strict=cache.strict, declared=options.depends_on
        )
        self._validator = Validator(self._keyer.follow)
        self._stale: tuple[str, str] | None = None  # (key, why) of the last entry found stale
        self._unstorable: set[str] = set()  # why results could not be stored, each said once
        location = cache.location
        if location and "://" not in location:
            ignore_files_under(location)  # its own entries are never a dependency
        self._summary = CallSummary(func, options.ignore)
        self.name, identity = function_identity(func)
        self.namespace = f"{self.name}-{identity}"
        self._about = {"function": self.name, "identity": identity}
        self._recorder = StatsRecorder(cache.entries, self.namespace)
        self._refused = False  # the location (or this function's directory) cannot be trusted
        self._check = self._check_depends  # bound once: handed to every lookup
        self._checked_changes = False  # whether a miss was checked for changing its own state
        if self.mmap_mode is not None and self.compressor is not None:
            warnings.warn(
                f"{self.__qualname__}: compressed entries cannot be memory-mapped; its hits are "
                "loaded into memory (use compress=False with mmap_mode)",
                CacheWarning,
                stacklevel=4,
            )

    def __repr__(self) -> str:
        return f"<MemoizedFunction {self.__qualname__} in {self.cache!r}>"

    def _repr_html_(self) -> str:
        """A notebook's view: the function, where it stores, its options, and what it has stored."""
        options = self.options
        fields = [("function", self.name), ("cache", self.cache.location or "none: calls compute"),
                  *describe_options(options.compressor, options.mmap_mode, options.expires_after),
                  ("ignore", ", ".join(options.ignore) or "-")]
        if self.cache.entries is not None:
            fields.append(("stored", str(self.cache_info()).split(": ", 1)[-1]))
        return html_fields(f"cachelib: memoized {self.__qualname__}", fields)

    def __reduce__(self) -> Any:
        """Pickle by name, or by value where other processes cannot import it (``_memo.pickling``).

        Workers (multiprocessing, joblib, dask) then share the same cache location.
        """
        return reduce_wrapper(self)

    @property
    def compressor(self) -> Compressor | None:
        """The codec of this function's entries (None: raw)."""
        return self.options.compressor

    @property
    def mmap_mode(self) -> str | None:
        """How hits return arrays: None (in memory), ``"r"`` or ``"c"`` (mapped)."""
        return self.options.mmap_mode

    @property
    def expires_after(self) -> float | None:
        """Seconds after which an entry is recomputed (None: never)."""
        return self.options.expires_after

    @overload
    def __get__(self: M, instance: None, owner: type | None = None) -> M: ...

    @overload
    def __get__(
        self: MemoizedFunction[Concatenate[S, Q], T], instance: S, owner: type | None = None
    ) -> Callable[Q, T]: ...

    def __get__(self, instance: Any, owner: type | None = None) -> Any:
        """Bind like a function, so that decorated methods receive ``self``."""
        return self if instance is None else types.MethodType(self, instance)

    @property
    def _entries(self) -> Entries:
        """The cache's entries (the call path runs only for a cache that has a location)."""
        entries = self.cache.entries
        if entries is None:
            raise CacheError(f"{self.__qualname__}: its cache has no location")
        return entries

    @property
    def logger(self) -> logging.Logger:
        """Where this function reports its hits and misses (its cache's logger)."""
        return self.cache.logger

    @property
    def _chatty(self) -> bool:
        """Whether the user asked this function for output (``verbose``): long loads and stores show."""
        return bool(self.cache.verbose)

    # -- keys ------------------------------------------------------------------------------

    def cache_key(self, *args: P.args, **kwargs: P.kwargs) -> str:
        """Return the key of this call: 32 hex digits, the same in every process and run.

        It is what the call's entry is stored under, made exactly as a call makes it
        (arguments bound, defaults applied, ``ignore`` honoured, code, closure,
        helpers and globals read now). Raises ``UnhashableError`` naming the
        argument that cannot be keyed, as the call would.
        """
        return self._keyer.key(args, kwargs)

    def _key(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
        return self._keyer.key(args, kwargs)

    @property
    def stats(self) -> CallStats:
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
        cache = self.cache
        entries = cache.entries
        if entries is None:
            return False, None
        logger = cache.logger
        debug = logger.isEnabledFor(logging.DEBUG)
        started = time.perf_counter() if debug else 0.0
        try:
            if cache.verbose:  # long loads show their progress
                with showing_progress("loading", self.__qualname__, True):
                    metadata, result = self._get(entries, key)
            else:
                metadata, result = self._get(entries, key)
        except Stale as exc:
            self._stale = (key, exc.reason)
            return False, None
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
        self._recorder.record_hit(_seconds(metadata))
        if recording_now():  # a call that records depends on what this hit depended on
            note_hit(metadata.get("depends"), unwrap(self.__wrapped__), self._keyer.follow)
        if debug:
            logger.debug("hit %s: loaded in %s", self.__qualname__, duration(time.perf_counter() - started))
        return True, result

    def _get(self, entries: Entries, key: str) -> tuple[dict[str, Any], Any]:
        """The entry of ``key``: its metadata and result (``Missing``, ``Stale`` or damage otherwise)."""
        options = self.options
        return entries.get(self.namespace, key, mmap_mode=options.mmap_mode, max_age=options.expires_after,
                           check=self._check)

    def _check_depends(self, metadata: dict[str, Any]) -> str | None:
        """None if what the entry's call recorded still holds (code run, files read), else what changed."""
        items = metadata.get("depends")
        return None if items is None else self._validator.stale(items)

    def _recording(self) -> Recording | None:
        """A recording of what a miss runs and reads, or None when this function tracks neither."""
        options = self.options
        code = options.track_runtime and options.track_callees  # keyed on its own code: nothing else
        if not (code or options.track_files):
            return None
        return Recording(code, options.track_files, self._keyer.covered_codes(), self._keyer.follow)

    def _storable(self, recorded: Recorded | None) -> bool:
        """False (said once per reason) when what the call read cannot be checked on later hits."""
        if recorded is None or not recorded.problems:
            return True
        problem = recorded.problems[0]
        if problem not in self._unstorable:
            self._unstorable.add(problem)
            warn(
                f"the results of {self.__qualname__} are not stored: {problem}; pass track_files=False to "
                "store them regardless (its hits then ignore the files it reads)"
            )
        return False

    def _acquire(self, key: str) -> Any:
        """Return the held lock of ``key``, or None to compute without one."""
        try:
            lock = self._entries.lock(self.namespace, key, self._about)
        except FileAccessError as exc:
            self._refuse(exc)
            return None
        except (OSError, CacheError) as exc:  # storing will fail too, and say so once
            self.logger.debug("no lock for %s: %s", self.__qualname__, exc)
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
                "another process computing it; raise lock_timeout or use on_lock_timeout='compute'",
                timeout=self.cache.lock_timeout,
            )
        return None

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        if self.cache.entries is None or self._refused:
            return self.__wrapped__(*args, **kwargs)
        key = self._keyer.key(args, kwargs)
        hit, result = self._lookup(key)
        if hit:
            return cast(R, result)
        if self._refused:
            return self.__wrapped__(*args, **kwargs)
        with Miss(self, key, args, kwargs) as miss:
            if miss.hit:  # stored by another process while this one waited for the lock
                return cast(R, miss.value)
            return cast(R, miss.store(self.__wrapped__(*args, **kwargs)))

    def _store(
        self,
        key: str,
        result: Any,
        seconds: float,
        parts: dict[str, str] | None = None,
        call: str | None = None,
        why: str = "",
        recorded: Recorded | None = None,
    ) -> Any:
        """Publish ``result``; return it (as stored memmaps when ``mmap_mode`` asks).

        ``parts`` are the key's parts (for ``explain``), ``call`` the call's short
        summary (``_memo.summary``) and ``recorded`` what the call ran and read beyond
        its key (``_keys.depends``), all kept in the entry's metadata.
        """
        started = time.perf_counter()
        metadata: dict[str, Any] = {"function": self.__qualname__, "compute_seconds": seconds,
                                    "key_parts": parts or {}}
        if call is not None:
            metadata["call"] = call
        self._recorder.record(False, seconds)
        if not self._storable(recorded):
            return result
        if recorded is not None and recorded.items:
            metadata["depends"] = recorded.items
        if recorded is not None and not recorded.complete:
            metadata["depends_complete"] = False
        try:
            with showing_progress("storing", call or self.__qualname__, self._chatty):
                size, returned = self._entries.put(
                    self.namespace, key, result, metadata, self.compressor,
                    about=self._about, mmap_mode=self.mmap_mode,
                )
        except SerializationError as exc:
            raise SerializationError(
                f"the result of {self.__qualname__} (a {type(result).__module__}."
                f"{type(result).__qualname__}) cannot be pickled, so it cannot be stored: "
                f"{exc.__cause__ or exc}"
            ) from exc
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
        stored_in = duration(time.perf_counter() - started)
        self.logger.info("miss %s: %s; computed in %s, stored %s in %s", call or self.__qualname__,
                         why or "not stored yet", duration(seconds), format_size(size), stored_in)
        self.cache._after_store(size)
        return returned

    # -- why a call misses -------------------------------------------------------------------

    def _miss_parts(
        self, args: tuple[Any, ...], kwargs: dict[str, Any], key: str
    ) -> tuple[dict[str, str], str]:
        """The key parts of a call that missed (stored with its entry), and why it missed when verbose."""
        try:
            parts = self._keyer.key_parts(args, kwargs)
            verbose = self.logger.isEnabledFor(logging.INFO)
            stale = self._stale
            if stale is not None and stale[0] == key:
                why = stale[1]
            else:
                why = explain_miss(parts, self._stored_key_parts()) if verbose else ""
        except Exception as exc:  # an explanation must never cost the call its result
            self.logger.debug("cannot explain the miss of %s: %r", self.__qualname__, exc)
            return {}, ""
        return parts, why

    def _check_own_changes(self, parts: dict[str, str]) -> None:
        """After the first miss, warn if the call changed what its key is made of besides arguments.

        A function that appends to a list it captures, or changes ``self`` or a
        constant it reads, has a new key after every call: it misses every time.
        Said once per function and process; the call and its result are not affected.
        """
        if self._checked_changes or not parts:
            return
        self._checked_changes = True
        try:
            now = self._keyer.state_parts()
        except Exception as exc:  # a diagnosis must never cost the call its result
            self.logger.debug("cannot compare the state of %s: %r", self.__qualname__, exc)
            return
        changed = [label for label, digest in now.items() if label in parts and parts[label] != digest]
        if not changed:
            return
        named = [_STATE_NAMES.get(label, "") or _describe_part(label) for label in changed]
        names = [label.split(" ", 1)[1] for label in changed if label.split(" ", 1)[0] in _SPECIFIC]
        # A global object changes with its class's attributes: name it only when nothing narrower changed.
        names = names or [label.split(" ", 1)[1] for label in changed if label.startswith("global ")]
        advice = (f"; if its results do not depend on {', '.join(names)}, pass ignore={names!r}"
                  if names else "")
        warn(
            f"{self.__qualname__} changed {', '.join(named)} while it ran, so the same call misses again "
            f"(a key includes what it reads as it is at the call){advice}"
        )

    def explain(self, *args: Any, **kwargs: Any) -> str:
        """Say why this call would miss: what differs from this function's nearest entries.

        For example ``"argument `x` changed"``, ``"helper `prep` edited"``,
        ``"constant `SCALE` changed"`` or ``"new code version"``; or that it hits.
        """
        try:
            parts = self._keyer.key_parts(args, kwargs)
            key = self._key(args, kwargs)
        except UnhashableError as exc:
            return Explanation(f"the call cannot be keyed: {exc}")
        entries = self.cache.entries
        if entries is not None and not self._refused:
            try:
                head = entries.head(self.namespace, key)
            except (Missing, CacheError, OSError):
                pass
            else:
                stale = self._check_depends(head.metadata)
                return Explanation("the call hits: its entry is stored" if stale is None else stale)
        return Explanation(explain_miss(parts, self._stored_key_parts()))

    def _stored_key_parts(self) -> Iterator[dict[str, str]]:
        """Yield the key parts recorded by this function's most recent entries (newest first).

        Reads only entries' headers and metadata (JSON): nothing is unpickled.
        """
        if self.cache.entries is None:
            return
        for metadata in self.cache.entries.recent_metadata(self.namespace, _EXPLAIN_ENTRIES):
            parts = metadata.get("key_parts")
            if isinstance(parts, dict):
                yield parts

    # -- management ------------------------------------------------------------------------

    def check_call_in_cache(self, *args: P.args, **kwargs: P.kwargs) -> bool:
        """Return True if this call's result is stored (and not expired)."""
        if self.cache.entries is None or self._refused:
            return False
        key = self._key(args, kwargs)
        return self.cache.entries.contains(self.namespace, key, self.expires_after, self._check_depends)

    def clear(self) -> None:
        """Remove every stored result of this function (all versions of its code)."""
        if self.cache.entries is not None:
            self.cache.entries.clear(self.namespace)
            self.reset_stats()

    def reset_stats(self) -> None:
        """Count afresh after this function's entries were cleared."""
        self._recorder = StatsRecorder(self.cache.entries, self.namespace)

    def cache_info(self) -> FunctionInfo:
        """Return this function's entries, bytes, hits, misses and time saved."""
        return self.cache._function_info(self)


class AsyncMemoizedFunction(MemoizedFunction[P, R]):
    """The ``MemoizedFunction`` of an ``async def`` function: calling it returns a coroutine.

    A hit is read without awaiting; a miss awaits the function, then stores its
    result. Concurrent callers are not locked against each other (a file lock
    would block the event loop): two may compute the same call, both correctly.
    """

    async def __call__(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        if self.cache.entries is None or self._refused:
            return await cast(Any, self.__wrapped__)(*args, **kwargs)
        key = self._keyer.key(args, kwargs)
        hit, result = self._lookup(key)
        if hit or self._refused:
            return result if hit else await cast(Any, self.__wrapped__)(*args, **kwargs)
        with Miss(self, key, args, kwargs, locked=False) as miss:
            return miss.store(await cast(Any, self.__wrapped__)(*args, **kwargs))


class Miss:
    """One call that missed, from its key's lock to its stored result: the one miss path.

    Sync calls, ``async def`` calls and ``Memory.call`` all go through it. Inside the
    block the key's lock is held (``locked``: another caller of the same key waits
    for this one); ``hit`` says that another process stored the call while this one
    waited, and ``value`` is then its result. Otherwise the caller runs the function
    itself (so that exactly one cachelib frame stands between a call and the
    function) and hands the result to ``store``, which returns what the call returns.
    """

    __slots__ = ("_args", "_call", "_function", "_key", "_kwargs", "_lock", "_locked", "_parts", "_recording",
                 "_started", "_why", "hit", "seconds", "value")

    def __init__(
        self, function: MemoizedFunction[Any, Any], key: str, args: tuple[Any, ...], kwargs: dict[str, Any],
        locked: bool = True,
    ) -> None:
        self._function, self._key, self._args, self._kwargs = function, key, args, kwargs
        self._locked = locked
        self._lock: Any = None
        self._recording: Recording | None = None
        self.hit, self.value = False, None
        self.seconds = 0.0  # how long the function computed, once stored

    def __enter__(self) -> Miss:
        function = self._function
        self._lock = function._acquire(self._key) if self._locked else None
        try:
            if self._lock is not None:
                self.hit, self.value = function._lookup(self._key, warn=False)  # computed while we waited?
            if not self.hit:
                self._parts, self._why = function._miss_parts(self._args, self._kwargs, self._key)
                self._call = function._summary.describe(self._args, self._kwargs)
                self._recording = function._recording()
                self._started = time.perf_counter()
                if self._recording is not None:
                    self._recording.__enter__()
        except BaseException:
            self._release()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._release()

    def _release(self) -> None:
        recording, self._recording = self._recording, None
        if recording is not None:
            recording.stop()
        lock, self._lock = self._lock, None
        if lock is not None:
            lock.release()

    def store(self, result: Any) -> Any:
        """Store the function's ``result``; return what the call returns (stored memmaps with mmap_mode)."""
        self.seconds = time.perf_counter() - self._started
        recording, self._recording = self._recording, None
        recorded = recording.finish() if recording is not None else None
        self._function._check_own_changes(self._parts)
        function = self._function
        return function._store(self._key, result, self.seconds, self._parts, self._call, self._why, recorded)

    @property
    def call(self) -> str | None:
        """The call's short summary, as its entry keeps it."""
        return self._call


_STATE_NAMES = {"callable": "its own state (a bound self, a partial's arguments or the object's attributes)"}
_SPECIFIC = frozenset({"closure", "constant", "attribute"})  # the narrowest state ``ignore=`` can name
_KINDS = {"closure": "closure variable", "constant": "global", "attribute": "class attribute"}


def _describe_part(label: str) -> str:
    """``"closure acc"`` -> ``"its closure variable `acc`"`` (a key part's label, for a message)."""
    kind, _, name = label.partition(" ")
    return f"its {_KINDS.get(kind, kind)} `{name}`"


def _seconds(metadata: dict[str, Any]) -> float:
    """The compute time an entry's metadata records (0 if it holds something else)."""
    seconds = metadata.get("compute_seconds")
    if type(seconds) is float:  # what cachelib writes: the common case first
        return seconds
    return float(seconds) if isinstance(seconds, (int, float)) and not isinstance(seconds, bool) else 0.0


def memoized(
    func: Any,
    cache: CacheSettings,
    kinds: tuple[type[MemoizedFunction[Any, Any]], type[MemoizedFunction[Any, Any]]],
    options: MemoizeOptions,
) -> Any:
    """Wrap ``func`` (a function, method, static or class method, partial, coroutine).

    ``kinds`` are the wrapper classes of plain and of ``async def`` functions.
    """
    if isinstance(func, (staticmethod, classmethod)):
        return type(func)(memoized(func.__func__, cache, kinds, options))
    kind = kinds[1] if inspect.iscoroutinefunction(func) else kinds[0]
    wrapper = kind.__new__(kind)
    wrapper._setup(func, cache, options)
    return wrapper
