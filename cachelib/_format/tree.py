"""The tree of xxh3 digests: one digest of many bytes, computed in leaves on every core.

Rule: the digest is a function of the bytes and the leaf size alone, never of the
number of threads or of the memory layout, so that it can stand in a key or a
checksum. The definition::

    leaf size  L = max(1, LEAF_BYTES // item size) * item size
    leaves     the bytes, in order, cut every L bytes (the last leaf may be shorter)
    digest     xxh3_128( xxh3_128(leaf 0) || xxh3_128(leaf 1) || ... )   (16-byte digests)

An array's bytes are its elements in logical C order; the item size keeps leaves
on element boundaries, so a strided view is hashed by copying whole leaves (a few
MiB per thread), never the whole array. Each thread hashes one run of leaves.
"""

from __future__ import annotations

import concurrent.futures
import math
import os
import threading
from collections.abc import Iterator
from typing import Any, cast

import numpy as np
import xxhash

from .._codecs.pool import run_all, submit, thread_count
from .dtypes import byte_view

__all__ = ["LEAF_BYTES", "TreeHasher", "array_tree", "file_tree", "leaf_size", "root_of"]

LEAF_BYTES = 1 << 20
_TASK_LEAVES = 4  # leaves per pool task when hashing alongside the caller


def leaf_size(itemsize: int) -> int:
    """Return the leaf size, in bytes, for items of ``itemsize`` bytes."""
    return max(1, LEAF_BYTES // max(1, itemsize)) * max(1, itemsize)


def root_of(leaf_digests: bytes) -> bytes:
    """Return the tree's digest from its leaves' concatenated 16-byte digests."""
    return xxhash.xxh3_128_digest(leaf_digests)


def _runs(count: int, parts: int) -> list[tuple[int, int]]:
    """Split ``range(count)`` into at most ``parts`` consecutive runs of nearly equal length."""
    parts = max(1, min(parts, count))
    bounds = [count * i // parts for i in range(parts + 1)]
    return [(bounds[i], bounds[i + 1]) for i in range(parts)]


def _contiguous_leaves(data: memoryview, leaf: int, first: int, last: int) -> bytes:
    digest = xxhash.xxh3_128_digest
    return b"".join(digest(data[i * leaf : (i + 1) * leaf]) for i in range(first, last))


def _pieces(array: np.ndarray, start: int, stop: int) -> Iterator[np.ndarray]:
    """Yield views of ``array`` that hold its elements ``start:stop`` (C order), in order."""
    if start >= stop:
        return
    if array.ndim <= 1:
        yield array.reshape(-1)[start:stop]
        return
    inner = math.prod(array.shape[1:])
    first, offset = divmod(start, inner)
    last, end = divmod(stop, inner)
    if first == last:
        yield from _pieces(array[first], offset, end)
        return
    if offset:
        yield from _pieces(array[first], offset, inner)
        first += 1
    if last > first:
        yield array[first:last]
    if end:
        yield from _pieces(array[last], 0, end)


def _strided_leaves(array: np.ndarray, per_leaf: int, first: int, last: int) -> bytes:
    """Hash leaves ``first:last`` of a non-contiguous array, copying one leaf at a time."""
    total = array.size
    buffer = np.empty(per_leaf, array.dtype)
    digests = []
    for index in range(first, last):
        start = index * per_leaf
        stop = min(total, start + per_leaf)
        filled = 0
        for piece in _pieces(array, start, stop):
            np.copyto(buffer[filled : filled + piece.size].reshape(piece.shape), piece)
            filled += piece.size
        digests.append(xxhash.xxh3_128_digest(byte_view(buffer[:filled].view(np.uint8))))
    return b"".join(digests)


def array_tree(array: np.ndarray) -> tuple[int, bytes]:
    """Return ``(leaf size, tree digest)`` of an array's bytes in logical C order."""
    itemsize = array.dtype.itemsize
    leaf = leaf_size(itemsize)
    count = -(-array.nbytes // leaf)
    runs = _runs(count, thread_count())
    if array.flags.c_contiguous:
        data = byte_view(array.reshape(-1).view(np.uint8))
        tasks = [lambda a=a, b=b: _contiguous_leaves(data, leaf, a, b) for a, b in runs]
    else:
        per_leaf = leaf // itemsize
        tasks = [lambda a=a, b=b: _strided_leaves(array, per_leaf, a, b) for a, b in runs]
    return leaf, root_of(b"".join(run_all(tasks)))


class TreeHasher:
    """The tree digest of bytes fed in pieces of any size, in order (item size 1).

    Whole leaves inside a piece are hashed straight from it; a leaf that spans
    pieces is gathered in a streaming state. With ``stable=True`` the caller
    promises that the pieces' bytes stay as they are until ``digest()``: their
    leaves are then hashed on the pool while the caller goes on (reading or
    writing the next piece); otherwise they are hashed before ``update`` returns.
    """

    def __init__(self, stable: bool = False) -> None:
        self._stable = stable
        self._parts: list[bytes | concurrent.futures.Future[bytes]] = []  # leaf digests, in order
        self._partial: Any = None  # xxh3_128 state of the leaf being gathered
        self._filled = 0  # bytes in the leaf being gathered

    def update(self, data: Any) -> None:
        """Feed the next bytes."""
        view = memoryview(data).cast("B")
        if self._filled:
            take = min(LEAF_BYTES - self._filled, view.nbytes)
            self._partial.update(view[:take])
            self._filled += take
            view = view[take:]
            if self._filled == LEAF_BYTES:
                self._parts.append(self._partial.digest())
                self._filled = 0
        whole = view.nbytes // LEAF_BYTES
        if whole and self._stable:
            for first in range(0, whole, _TASK_LEAVES):
                last = min(whole, first + _TASK_LEAVES)
                self._parts.append(submit(_contiguous_leaves, view, LEAF_BYTES, first, last))
        elif whole:
            runs = _runs(whole, thread_count())
            tasks = [lambda a=a, b=b: _contiguous_leaves(view, LEAF_BYTES, a, b) for a, b in runs]
            self._parts.extend(run_all(tasks))
        view = view[whole * LEAF_BYTES :]
        if view.nbytes:
            self._partial = xxhash.xxh3_128(view)
            self._filled = view.nbytes

    def digest(self) -> bytes:
        """Return the tree digest of everything fed (waiting for the leaves still being hashed)."""
        if self._filled:
            self._parts.append(self._partial.digest())
            self._filled = 0
        return root_of(b"".join(p if isinstance(p, bytes) else p.result() for p in self._parts))


_buffers = threading.local()  # .file: each thread's buffer for runs of a file's leaves


def _file_leaves(fd: int, first: int, last: int, size: int) -> bytes | None:
    """Hash leaves ``first:last`` of a file of ``size`` bytes, read with ``pread``; None if it is shorter."""
    buffer = getattr(_buffers, "file", None)
    if buffer is None:
        buffer = _buffers.file = memoryview(bytearray(_TASK_LEAVES * LEAF_BYTES))
    start = first * LEAF_BYTES
    wanted = min(size, last * LEAF_BYTES) - start
    view = buffer[:wanted]
    filled = 0
    while filled < wanted:
        count = os.preadv(fd, [view[filled:]], start + filled)
        if not count:
            return None
        filled += count
    digest = xxhash.xxh3_128_digest
    return b"".join(digest(view[i : i + LEAF_BYTES]) for i in range(0, wanted, LEAF_BYTES))


def file_tree(fd: int, size: int) -> bytes | None:
    """Return the tree digest of a file's ``size`` bytes (item size 1), or None if it is not that long.

    Each pool thread reads its own runs of leaves (``pread`` into a buffer of a few
    MiB that it reuses, so the bytes are hashed from the CPU's cache) and hashes them:
    a file in the page cache is hashed at memory speed on every core. Nothing is
    mapped, so a file truncated meanwhile is a short read, never a fault.
    """
    count = -(-size // LEAF_BYTES)
    tasks = [lambda a=a: _file_leaves(fd, a, min(count, a + _TASK_LEAVES), size)
             for a in range(0, count, _TASK_LEAVES)]
    leaves = run_all(tasks)
    if any(run is None for run in leaves) or os.pread(fd, 1, size):
        return None
    return root_of(b"".join(cast(bytes, run) for run in leaves))
