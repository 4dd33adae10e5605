"""``Cache``: a location on disk and the defaults of the functions memoized in it.

Rule: a ``Cache`` resolves its options once (the store ``_stores.locations`` opens,
the entries policy above it, the ``MemoizeOptions`` its functions start from, how
long a caller waits for a lock) and hands out ``MemoizedFunction`` wrappers; what
happens on a call lives in ``_memo.memoized``.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import sys
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, overload

from .._codecs.registry import Compressor
from .._entries.budget import SizeBudget, evict
from .._entries.policy import Entries
from .._entries.stats import compact_stats, read_stats
from .._errors import CacheError, CacheWarning, InvalidOptionError
from .._format.persistence import resolve_compress
from .._keys.declared import Declared
from .._sizes import format_size, parse_size
from .._stores.base import Store
from .._stores.locations import StoreOptions, open_store
from .display import describe_options, html_fields
from .info import CacheInfo, FunctionInfo
from .memoized import AsyncMemoizedFunction, MemoizedFunction, memoized
from .options import MemoizeArguments, MemoizeOptions, checked_mmap_mode, seconds_of

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from .._typing import P, R, T

__all__ = ["Cache", "CacheInfo", "FunctionInfo"]

logger = logging.getLogger("cachelib")
_LOCK_TIMEOUT_ACTIONS = ("compute", "raise")


class Cache:
    """A directory of memoized results, and the defaults of the functions that use it.

    ``location=None`` disables caching: memoized functions just call through.
    ``compress`` and ``mmap_mode`` are defaults each ``memoize`` may override;
    ``verbose`` makes this cache print to stderr (1 misses, 2 hits too), through
    loggers of its own that never reach the application's handlers a second time;
    a quiet cache's records go to the ``cachelib`` logger, silent unless configured.
    ``lock_timeout`` bounds how long a caller waits for another process computing
    the same call; after it the caller computes anyway, or raises ``LockTimeout``
    with ``on_lock_timeout="raise"``. ``lock="soft"`` suits filesystems without
    working ``flock`` (some NFS mounts); ``lock="none"`` never waits. ``fsync``
    says when a stored entry reaches the disk: ``"background"`` (the default) just
    after the call returns, on a background thread; ``"always"`` before it returns;
    ``"never"`` whenever the kernel writes it back (``True``/``False`` mean "always"
    and "never"). A crash before then costs a recomputation, never a wrong result:
    entries are checksummed. ``secret`` signs every entry (HMAC-SHA256) and
    refuses, before unpickling, any entry that fails the check. ``share="group"``
    is the group-sharing mode (needs ``secret``; see the README's Security
    section). Where the location cannot be used safely, calls warn once and
    compute without it, or raise ``UnsafeLocationError`` with ``strict=True``.

    ``location`` may also be an fsspec URL (``"s3://bucket/prefix"``, ``"memory://name"``),
    with ``storage_options`` for its filesystem, or ``store=`` may give any ``Store``.
    On an object store, concurrent callers of one key across machines compute it once
    through leases; ``mmap_mode`` loads into memory there (nothing is mapped remotely).

    ``depends_on`` declares what every function of this cache depends on besides its
    arguments and code (paths and globs, ``"env:NAME"``, ``"package:NAME"``, callables
    returning a token); ``memoize(depends_on=...)`` adds to it.
    """

    def __init__(
        self,
        location: str | os.PathLike[str] | None = None,
        compress: Any = False,
        mmap_mode: str | None = None,
        bytes_limit: int | str | None = None,
        verbose: int = 0,
        *,
        expires_after: float | datetime.timedelta | None = None,
        lock_timeout: float = 600.0,
        on_lock_timeout: str = "compute",
        lock: str = "file",
        fsync: bool | str | None = None,
        secret: bytes | None = None,
        share: str | None = None,
        strict: bool = False,
        store: Store | None = None,
        storage_options: dict[str, Any] | None = None,
        depends_on: Any = None,
    ) -> None:
        store_options = StoreOptions.resolved(storage_options, share, fsync)
        if store is not None:
            _check_no_store_options(location, share, fsync, storage_options)
        elif location is not None:
            store = open_store(location, store_options)
        if getattr(store, "share", None) == "group" and secret is None:
            raise InvalidOptionError(
                "share='group' needs secret=...: members load only entries signed with the group's secret"
            )
        self.store = store
        self.entries = Entries(self.store, secret=secret, lock=lock) if self.store is not None else None
        self._budget = SizeBudget(self.entries) if self.entries is not None else None
        self.strict = strict
        self._defaults = MemoizeOptions(
            compressor=resolve_compress(compress), mmap_mode=checked_mmap_mode(mmap_mode),
            expires_after=seconds_of(expires_after, "expires_after"),
            depends_on=Declared.of(depends_on),
        )
        self.bytes_limit = parse_size(bytes_limit) if bytes_limit is not None else None
        if on_lock_timeout not in _LOCK_TIMEOUT_ACTIONS:
            raise InvalidOptionError(f"on_lock_timeout must be one of {_LOCK_TIMEOUT_ACTIONS}")
        self.lock_timeout = float(lock_timeout)
        self.on_lock_timeout = on_lock_timeout
        self.verbose = verbose
        self._functions: dict[str, MemoizedFunction[Any, Any]] = {}

    def __repr__(self) -> str:
        return f"Cache({self.location!r})"

    def _repr_html_(self) -> str:
        """A notebook's view: where the cache stores, its defaults and the functions memoized so far."""
        fields = [("location", self.location or "none: functions just call"),
                  *describe_options(self.compressor, self.mmap_mode, self.expires_after),
                  ("bytes_limit", format_size(self.bytes_limit) if self.bytes_limit is not None else "none"),
                  ("functions", ", ".join(sorted(self._functions)) or "none memoized yet")]
        return html_fields("cachelib.Cache", fields)

    def __getstate__(self) -> dict[str, Any]:
        """Pickle settings only: a worker's cache registers its own functions."""
        state = self.__dict__.copy()
        state["_functions"] = {}
        state["_budget"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._budget = SizeBudget(self.entries) if self.entries is not None else None

    @property
    def logger(self) -> logging.Logger:
        """Where this cache reports: ``cachelib``, or a printing child of it when verbose.

        A verbose cache prints through ``cachelib.verbose1`` (misses) or
        ``cachelib.verbose2`` (hits too); other caches stay quiet.
        """
        return verbose_logger(self.verbose)

    @property
    def location(self) -> str | None:
        """The cache directory or URL, or None for a cache that stores nothing."""
        return self.store.url if self.store else None

    @property
    def compressor(self) -> Compressor | None:
        """The codec of entries of functions that do not choose their own (None: raw)."""
        return self._defaults.compressor

    @property
    def mmap_mode(self) -> str | None:
        """How hits return arrays unless a function says otherwise."""
        return self._defaults.mmap_mode

    @property
    def expires_after(self) -> float | None:
        """Seconds after which entries are recomputed unless a function says otherwise."""
        return self._defaults.expires_after

    # -- the decorator --------------------------------------------------------------------

    # The overloads keep the decorated function's signature and return type for type
    # checkers, bare (``@cache.memoize``) and called (``@cache.memoize(...)``).
    @overload
    def memoize(  # type: ignore[overload-overlap]  # callable since 3.10, yet stays a staticmethod
        self, func: staticmethod[P, R], **options: Unpack[MemoizeArguments]
    ) -> staticmethod[P, R]: ...

    @overload
    def memoize(
        self, func: classmethod[T, P, R], **options: Unpack[MemoizeArguments]
    ) -> classmethod[T, P, R]: ...

    @overload
    def memoize(
        self, func: Callable[P, R], **options: Unpack[MemoizeArguments]
    ) -> MemoizedFunction[P, R]: ...

    @overload
    def memoize(
        self, func: None = None, **options: Unpack[MemoizeArguments]
    ) -> Callable[[Callable[P, R]], MemoizedFunction[P, R]]: ...

    def memoize(self, func: Any = None, **options: Unpack[MemoizeArguments]) -> Any:
        """Decorate ``func`` so that each distinct call is computed once and then loaded.

        Use bare (``@cache.memoize``) or with options (``@cache.memoize(ignore=["verbose"])``):

        * ``ignore``: names of arguments (and closure variables) left out of the key;
        * ``compress``, ``mmap_mode``, ``expires_after``: this function's own, over the
          cache's defaults;
        * ``track_callees=False`` keys on the function's own code only: edits of the
          helpers it calls and of the constants it reads then hit old entries;
        * ``depends_on``: files, globs and directories (by content), ``"env:NAME"``,
          ``"package:NAME"`` (its installed version) and callables returning a token,
          added to what the cache declares, all part of every key;
        * ``track_runtime=False`` / ``track_files=False``: do not record, during a miss,
          the user code that runs beyond what the key follows / the files it reads
          (each checked on every hit otherwise).

        ``cache.cache`` is the same method under joblib.Memory's name, so that
        scikit-learn's ``memory=`` takes a ``Cache``.
        """
        resolved = self._defaults.updated(options)
        if func is None:
            return lambda f: self._wrap(f, (MemoizedFunction, AsyncMemoizedFunction), resolved)
        return self._wrap(func, (MemoizedFunction, AsyncMemoizedFunction), resolved)

    def _wrap(
        self, func: Any, kinds: tuple[type[MemoizedFunction[Any, Any]], type[MemoizedFunction[Any, Any]]],
        options: MemoizeOptions,
    ) -> Any:
        """Wrap ``func`` in ``kinds`` (plain, async) and register it for ``clear``."""
        wrapper = memoized(func, self, kinds, options)
        inner = getattr(wrapper, "__func__", wrapper)
        self._functions[inner.name] = inner
        return wrapper

    cache = memoize

    # -- management --------------------------------------------------------------------------

    def clear(self) -> None:
        """Remove every stored result under the location (the location itself stays).

        Raises ``NotACacheError`` if the location is not a cachelib location, and
        ``FileAccessError`` if entries could not be removed (a read-only filesystem).
        """
        if self.entries is not None:
            self.entries.clear()
            for func in self._functions.values():
                func.reset_stats()
            if self._budget is not None:
                self._budget.record(0)

    def _function_info(self, func: MemoizedFunction[Any, Any]) -> FunctionInfo:
        """Return what one of this cache's functions has stored and how often it was called."""
        if self.entries is None:
            return FunctionInfo(func.name)
        return function_info(self.entries, func.namespace)

    def info(self) -> CacheInfo:
        """Return entries and bytes on disk, and hits, misses and time saved, per function.

        Counts include every process that used the location, across restarts.
        """
        summary = CacheInfo(self.location)
        if self.entries is None or not self.entries.require_cache():
            return summary
        for namespace in self.entries.namespaces():
            with contextlib.suppress(CacheError, OSError):
                compact_stats(self.entries, namespace, wait=1.0)
            info = function_info(self.entries, namespace)
            if not info.entries and not info.hits and not info.misses:
                continue
            # Two functions whose readable names coincide keep apart by directory name.
            key = info.name if info.name not in summary.functions else namespace
            summary.functions[key] = info
        return summary

    def reduce_size(
        self,
        bytes_limit: int | str | None = None,
        items_limit: int | None = None,
        age_limit: float | datetime.timedelta | None = None,
    ) -> int:
        """Evict least recently used entries until every given limit holds; return how many."""
        if self.entries is None or not self.entries.require_cache():
            return 0
        limit = parse_size(bytes_limit) if bytes_limit is not None else self.bytes_limit
        max_age = seconds_of(age_limit, "age_limit")
        removed, left = evict(self.entries, bytes_limit=limit, items_limit=items_limit, max_age=max_age)
        if self._budget is not None:
            self._budget.record(left)
        return removed

    def _after_store(self, size: int) -> None:
        """Keep ``bytes_limit`` after a write (amortised in the size budget)."""
        if self.bytes_limit is not None and self._budget is not None:
            try:
                self._budget.note_write(size, self.bytes_limit)
            except (CacheError, OSError) as exc:
                warnings.warn(f"cachelib could not keep bytes_limit ({exc})", CacheWarning, stacklevel=4)


def _check_no_store_options(location: Any, share: Any, fsync: Any, storage_options: Any) -> None:
    """``store=`` comes configured: a location or store option beside it would be ignored."""
    given = [name for name, value in (("location", location), ("share", share), ("fsync", fsync),
                                      ("storage_options", storage_options)) if value is not None]
    if given:
        raise InvalidOptionError(
            f"Cache(store=...) takes no {', '.join(given)}: the store is opened already; give them to "
            "the store itself (LocalStore(path, fsync=...), GroupStore(path, fsync=...), "
            "FsspecStore(url, storage_options))"
        )


class _Stderr(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at the time (a notebook's, pytest's capture, a redirect)."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter("[cachelib] %(message)s"))

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _: Any) -> None:
        pass


def verbose_logger(verbose: int) -> logging.Logger:
    """The ``cachelib`` logger, or for ``verbose`` 1 or more a child of it that prints to stderr.

    ``cachelib.verbose1`` prints misses, ``cachelib.verbose2`` hits too. They do not
    propagate: whatever handlers the application set up (``logging.basicConfig``, a
    notebook's, a dask worker's) never print a verbose line a second time. An
    application that wants these lines in its own handlers adds them to those loggers.
    """
    if not verbose:
        return logger
    level = min(int(verbose), 2)
    chatty = logging.getLogger(f"cachelib.verbose{level}")
    if not chatty.handlers:
        chatty.addHandler(_Stderr())
        chatty.setLevel(logging.DEBUG if level > 1 else logging.INFO)
        chatty.propagate = False
    return chatty


def function_name(entries: Entries, namespace: str) -> str:
    """A function's qualified name, as its marker records it (else its directory's name)."""
    name = entries.about(namespace).get("function")
    return name if isinstance(name, str) and name else namespace.rsplit("-", 1)[0]


def function_info(entries: Entries, namespace: str) -> FunctionInfo:
    """Summarise one function: entries on disk and recorded calls."""
    info = FunctionInfo(function_name(entries, namespace))
    for _, item in entries.entries(namespace):
        info.entries += 1
        info.bytes += item.size
        info.oldest = item.stored if info.oldest is None else min(info.oldest, item.stored)
        info.newest = item.stored if info.newest is None else max(info.newest, item.stored)
    stats = read_stats(entries, namespace)
    info.hits, info.misses = stats.hits, stats.misses
    info.compute_seconds, info.saved_seconds = stats.compute_seconds, stats.saved_seconds
    return info
