"""Helpers the test modules share: plain functions and values (fixtures live in conftest.py)."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import pytest

import cachelib
from cachelib._entries.envelope import HEADER, HEADER_SIZE, TRAILER
from cachelib._format.records import ALIGNMENT


class Calls(list):  # type: ignore[type-arg]
    """A test's record of the calls its memoized functions made.

    Memoized functions append to it, a global they read: it pickles (and so hashes)
    as an empty record whatever it holds, so that recording a call does not change
    the function's key (as ``ignore=["CALLS"]`` would say for a plain list).
    """

    def __reduce__(self) -> tuple[type, tuple[()]]:
        return (Calls, ())


# The real calls of the memoized functions of the tests (the ``calls`` fixture empties it
# around each test). A module global, never a closure: closure values are part of every
# key (hashed when the function is memoized); a ``Calls`` hashes alike whatever it holds.
CALLS = Calls()


# --- the test tiers -------------------------------------------------------------------


def slow_except(values: list[Any], *fast: Any) -> list[Any]:
    """The parameters ``values`` of a one-argument parametrize, each one but those in ``fast``
    marked slow: ``pytest -m "not slow"`` runs only the ``fast`` ones (ids are unchanged)."""
    return [value if value in fast else pytest.param(value, marks=pytest.mark.slow) for value in values]


# --- what is on disk ------------------------------------------------------------------


def files_under(root: Path) -> list[Path]:
    """Every non-directory under ``root`` (symlinks not followed), sorted."""
    found = []
    for directory, dirs, names in os.walk(root):
        found += [Path(directory, name) for name in names]
        found += [Path(directory, name) for name in dirs if os.path.islink(os.path.join(directory, name))]
    return sorted(found)


def entry_files(root: Path) -> list[Path]:
    """The cache entries (``*.cl`` regular files) under ``root``, sorted."""
    return [p for p in files_under(root) if p.name.endswith(".cl") and p.is_file() and not p.is_symlink()]


def new_entry(root: Path, before: list[Path]) -> Path:
    """The one entry under ``root`` that is not in ``before``."""
    created = sorted(set(entry_files(root)) - set(before))
    assert len(created) == 1, f"expected one new entry, found {created}"
    return created[0]


def entry_path(memoized: Any, *args: Any, **kwargs: Any) -> Path:
    """The file of the entry of ``memoized(*args, **kwargs)`` in its cache (a local location)."""
    from cachelib._entries import names

    key = memoized._key(args, kwargs)
    return Path(memoized.cache.location) / names.entry(memoized.namespace, key)


# --- inside an entry ------------------------------------------------------------------

ENTRY_MAGIC = b"\x89CLENT\r\n"  # docs/FORMAT.rst, "Cache entries"


def entry_stream_offset(data: bytes) -> int:
    """Where the stream of the entry ``data`` starts: after its header and metadata, aligned."""
    assert data[: len(ENTRY_MAGIC)] == ENTRY_MAGIC
    metadata_length = HEADER.unpack_from(data)[3]
    return -(-(HEADER_SIZE + metadata_length) // ALIGNMENT) * ALIGNMENT


def entry_stream(data: bytes) -> bytes:
    """The stream an entry file holds: after its header, metadata and padding, before its trailer."""
    return data[entry_stream_offset(data) : -TRAILER.size]


# --- streams --------------------------------------------------------------------------


def dumped_bytes(value: Any, compress: Any = False) -> bytes:
    """The bytes ``cachelib.dump`` writes for ``value`` into a stream."""
    stream = io.BytesIO()
    cachelib.dump(value, stream, compress=compress)
    return stream.getvalue()


class NonSeekable(io.RawIOBase):
    """A read-only, non-seekable raw stream over some bytes (a pipe without the thread)."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        return self._data.readinto(buffer)


# --- keys -----------------------------------------------------------------------------


def assert_distinct_hashes(values: list[Any]) -> None:
    """Assert that every pair of ``values`` hashes differently."""
    digests = [cachelib.hash(v) for v in values]
    for i in range(len(values)):
        for j in range(i + 1, len(values)):
            assert digests[i] != digests[j], f"{values[i]!r} and {values[j]!r} hash alike"
