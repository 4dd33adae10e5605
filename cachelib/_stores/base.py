"""The store interface: a handful of primitives on string keys, and what they promise.

Rule: a store moves bytes and knows nothing of entries, functions, signatures,
expiry or eviction; that policy is written once, above it, in ``_entries.policy``. A key
is a relative name of ``/``-separated segments made of ``[A-Za-z0-9_.-]``, none
``.`` or ``..``: it can never leave the store. The primitives:

* ``open(key)`` returns a readable, seekable binary file of one object, with its
  ``size``; ``KeyError`` if there is none. What is opened is what is read: a
  reader never opens a key twice for one use.
* ``write(key)`` is a context manager around a writable binary file: the object
  appears whole when the block ends without an exception, and not at all
  otherwise. ``exclusive=True`` makes the first writer win (``FileExistsError``).
* ``delete(key)`` removes one object; ``list(prefix)`` yields the objects under a
  prefix; ``list_dirs(prefix)`` the "directories" one level below it.

Optional capabilities have defaults: ``probe`` (a cheap identity check, so that
unchanged small objects need not be read again), ``touch`` (record a use),
``unfinished`` (what a temporary object that a write left behind was to become),
``lock`` (a native per-key lock; without one the policy uses leases built on
exclusive writes in ``shared``, the store every process sharing the location writes)
and ``read_bytes`` (a bounded read of a small state object).
``conditional_writes`` is False for a store whose exclusive writes are only a
check before the write (not atomic): the policy then takes no leases on it, and
concurrent callers of one key may each compute it (never a wrong result, since
every write is still atomic). ``lease_ttl`` is how long such a lease lives
without renewal.
"""

from __future__ import annotations

import abc
import builtins
import contextlib
import re
from collections.abc import Hashable, Iterator
from dataclasses import dataclass
from typing import IO, Protocol

from .._errors import CorruptFileError, InvalidOptionError
from .._typing import Sink

__all__ = ["ItemInfo", "KeyLock", "Probe", "Readable", "Store", "Unfinished", "Writer", "check_key"]

_SEGMENT = re.compile(r"^[A-Za-z0-9_.-]+$")


def check_key(key: str) -> list[str]:
    """Return the segments of ``key``, or raise ``InvalidOptionError`` if it could escape."""
    parts = key.split("/")
    if not key or any(p in (".", "..") or not _SEGMENT.match(p) for p in parts):
        raise InvalidOptionError(f"invalid store key {key!r}")
    return parts


@dataclass(frozen=True)
class ItemInfo:
    """One object found by ``Store.list``."""

    key: str
    size: int
    stored: float  # when it was last written (unix seconds)
    used: float  # when it was last used, as far as the store records it (>= stored)
    own: bool = True  # written by this user (always True where the store has no owners)


Probe = tuple[Hashable, int, float]
"""A cheap look at an object: (an identity that changes whenever its bytes may have, size, last use)."""

Unfinished = tuple[str | None, bool]
"""A temporary object of a write: (the key it was to become, or None if unknown; whether its
writer is certainly gone)."""


class Readable:
    """An opened object: a binary file plus what the store knows about it.

    ``own`` is False for an object another user wrote; ``mappable`` is True when its
    bytes can be mapped from this very file and nobody else can change them;
    ``identity`` is what ``Store.probe`` would report for it (None if unknown).
    """

    def __init__(
        self,
        file: IO[bytes],
        size: int,
        *,
        own: bool = True,
        mappable: bool = False,
        identity: Hashable = None,
    ) -> None:
        self.file = file
        self.size = size
        self.own = own
        self.mappable = mappable
        self.identity = identity

    def close(self) -> None:
        self.file.close()

    def __enter__(self) -> Readable:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Output(Sink, Protocol):
    """The file a ``Store.write`` block writes to: it counts what was written."""

    def tell(self) -> int: ...


class Writer:
    """The file a ``Store.write`` block writes to; after the block, optionally readable back.

    ``deferred`` is True when the object may be published before its bytes are
    durable (a crash soon after can leave it torn); what is written may record it.
    """

    def __init__(self, file: Output, *, deferred: bool = False) -> None:
        self.file = file
        self.deferred = deferred
        self._reader: Readable | None = None

    def reader(self) -> Readable | None:
        """After a committed ``write(..., keep=True)``: the written object, from the same file."""
        reader, self._reader = self._reader, None
        return reader

    def hand_back(self, reader: Readable) -> None:
        """For the store: once committed, the written object, for ``reader()`` to hand out."""
        self._reader = reader


class KeyLock(abc.ABC):
    """A lock held around computing one key, so that concurrent callers compute it once."""

    @abc.abstractmethod
    def acquire(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds; True if held, False if it timed out."""

    @abc.abstractmethod
    def release(self) -> None:
        """Let go (and tidy up what the lock left on the store)."""


class Store(abc.ABC):
    """Objects under string keys. See the module docstring for the contract."""

    url: str
    conditional_writes: bool = True  # ``write(exclusive=True)`` is atomic: the first writer wins
    lease_ttl: float = 60.0  # seconds a lease on this store lives unless its holder renews it

    @abc.abstractmethod
    def open(self, key: str) -> Readable:
        """Open the object ``key`` for reading; ``KeyError`` if there is none."""

    @abc.abstractmethod
    def write(
        self, key: str, *, exclusive: bool = False, keep: bool = False
    ) -> contextlib.AbstractContextManager[Writer]:
        """Write the object ``key`` atomically (see the module docstring)."""

    @abc.abstractmethod
    def delete(self, key: str) -> bool:
        """Remove the object ``key``; False if there was none."""

    @abc.abstractmethod
    def list(self, prefix: str) -> Iterator[ItemInfo]:
        """Yield every object whose key starts with ``prefix`` + ``/`` (or every one for "")."""

    @abc.abstractmethod
    def list_dirs(self, prefix: str) -> builtins.list[str]:
        """Return the names one level below ``prefix`` that hold objects."""

    # -- optional capabilities ---------------------------------------------------------

    def probe(self, key: str) -> Probe | None:
        """Return a cheap identity of the object ``key`` (``KeyError`` if absent), or None if unknown."""
        return None

    def touch(self, key: str) -> None:  # noqa: B027 - a capability whose default is to do nothing
        """Record that ``key`` was just used (for least-recently-used eviction)."""

    def lock(self, key: str) -> KeyLock | None:
        """Return a native lock for ``key``, or None to let the policy use a lease."""
        return None

    def unfinished(self, key: str) -> Unfinished | None:
        """For a temporary object a write left (or is writing): what it was to become; else None."""
        return None

    def initialize(self) -> None:  # noqa: B027 - most stores need nothing before a first write
        """Prepare the store for its first write (create a directory, tag it)."""

    def read_bytes(self, key: str, limit: int) -> bytes:
        """Return the whole object ``key``, refusing one larger than ``limit`` bytes."""
        with self.open(key) as handle:
            if handle.size > limit:
                raise CorruptFileError(f"{key!r} holds {handle.size} bytes, more than the {limit} expected")
            return handle.file.read(limit + 1)[: limit + 1]

    def exists(self, key: str) -> bool:
        """True if the object ``key`` exists."""
        try:
            self.open(key).close()
        except KeyError:
            return False
        return True

    def locate(self, key: str) -> str:
        """Return where the object ``key`` lives, for messages (a path or a URL)."""
        return f"{self.url.rstrip('/')}/{key}"

    @property
    def shared(self) -> Store:
        """The store leases are taken in: one that every process sharing the location writes
        (the store itself, but for a location a group shares, ``_stores.group``)."""
        return self
