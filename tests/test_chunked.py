"""Large arrays hashed as a tree of xxh3 digests, on every core: the same key whatever the
threads, the layout or the process; small arrays keep the flat encoding.

The tree is recomputed here from its documented definition (``cachelib/_format/tree.py``,
the README's Keys section) rather than read from cachelib.
"""

from __future__ import annotations

import multiprocessing
import os
import struct
import threading

import numpy as np
import pytest
import xxhash

import cachelib
from cachelib._codecs import pool as _pool
from cachelib._format import tree as _chunked
from cachelib._keys import encoding as _encoding

pytestmark = pytest.mark.timeout(120)

LEAF = 1 << 20
TREE_MIN = 1 << 22


def reference_tree(array: np.ndarray) -> tuple[int, bytes]:
    """The documented tree: leaves of L bytes of the C-order bytes, xxh3_128 of their digests."""
    data = np.ascontiguousarray(array).tobytes()
    leaf = max(1, LEAF // array.itemsize) * array.itemsize
    digests = b"".join(xxhash.xxh3_128_digest(data[i : i + leaf]) for i in range(0, len(data), leaf))
    return leaf, xxhash.xxh3_128_digest(digests)


@pytest.fixture(params=["1", "2", "5"])
def threads(request, monkeypatch):
    """Each thread count in turn (5 is more threads than this machine has cores)."""
    monkeypatch.setenv(_pool.THREADS_VARIABLE, request.param)
    return int(request.param)


def _base(shape, dtype="<f8", seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 255, size=int(np.prod(shape)) * np.dtype(dtype).itemsize, dtype=np.uint8).view(
        dtype
    ).reshape(shape)


LAYOUTS = {
    "contiguous": lambda: _base((700, 1000)),
    "fortran": lambda: np.asfortranarray(_base((700, 1000))),
    "every-other-row": lambda: _base((1400, 1000))[::2],
    "columns": lambda: _base((700, 3000))[:, 1::3],
    "reversed": lambda: _base((6_000_000,), "<i1")[::-1],
    "3d-transposed": lambda: _base((40, 50, 300)).transpose(2, 0, 1),
    "odd-itemsize": lambda: _base((1_500_001,), "S3")[::1],
    "odd-itemsize-strided": lambda: _base((3_000_002,), "S3")[::2],
    "itemsize-above-leaf": lambda: _base((3,), "V1500000"),
    "datetime-strided": lambda: _base((1_200_000,), "<M8[ns]")[::2],
    "struct-field": lambda: _base((600_000,), [("a", "<f8"), ("b", "<i4"), ("c", "u1")])["a"],
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_the_tree_follows_its_definition(layout, threads):
    """For every layout and thread count, the tree is the documented one over the C-order bytes."""
    array = LAYOUTS[layout]()
    assert array.nbytes >= TREE_MIN
    assert _chunked.array_tree(array) == reference_tree(array)


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_a_view_and_its_copy_hash_alike(layout, threads):
    """A large strided or Fortran array hashes like its C-contiguous copy."""
    array = LAYOUTS[layout]()
    assert cachelib.hash(array) == cachelib.hash(np.ascontiguousarray(array))


def test_the_key_does_not_depend_on_the_threads(monkeypatch):
    """One array, hashed with 1, 2, 3 and 8 threads: one hash."""
    array = _base((3000, 1000))
    hashes = set()
    for count in ("1", "2", "3", "8"):
        monkeypatch.setenv(_pool.THREADS_VARIABLE, count)
        hashes.add(cachelib.hash(array))
        hashes.add(cachelib.hash(array[:, ::-1][:, ::-1]))
    assert len(hashes) == 1


def test_large_arrays_are_encoded_as_the_tree():
    """From TREE_MIN bytes on, the array's bytes are replaced by "T", the leaf size and the root."""
    array = _base((TREE_MIN // 8,))
    hasher = _encoding.Hasher()
    hasher._array_bytes(array)
    leaf, root = reference_tree(array)
    expected = xxhash.xxh3_128(b"=" + struct.pack("<Q", array.nbytes) + b"T" + struct.pack("<Q", leaf) + root)
    assert hasher.digest() == expected.digest()


def test_arrays_below_the_threshold_keep_the_flat_encoding():
    """Below TREE_MIN bytes, the array's bytes themselves are hashed (the encoding of before)."""
    array = _base((TREE_MIN // 8 - 1,))
    hasher = _encoding.Hasher()
    hasher._array_bytes(array)
    expected = xxhash.xxh3_128(b"=" + struct.pack("<Q", array.nbytes) + array.tobytes())
    assert hasher.digest() == expected.digest()


@pytest.mark.parametrize("where", [0, LEAF - 1, LEAF, 3 * LEAF + 5, TREE_MIN + LEAF - 1])
def test_one_changed_byte_changes_the_hash(where):
    """A single byte changed in any leaf (first, last byte of a leaf, the last leaf) changes the key."""
    array = _base((TREE_MIN + LEAF,), "u1")
    before = cachelib.hash(array)
    array[where] ^= 1
    assert cachelib.hash(array) != before


def test_arrays_that_differ_only_in_shape_or_dtype_still_differ():
    """The tree stands for the bytes only: shape and dtype still tell arrays apart."""
    array = _base((1 << 20,))
    variants = (array, array.reshape(1024, 1024), array.view("<i8"))
    assert len({cachelib.hash(v) for v in variants}) == 3


def test_threads_hashing_at_once_agree(monkeypatch):
    """Eight threads hashing large arrays at once on the shared pool all get the right keys."""
    monkeypatch.setenv(_pool.THREADS_VARIABLE, "2")
    arrays = [_base((600, 1000), seed=i) for i in range(4)]
    expected = [cachelib.hash(a) for a in arrays]
    results: list[list[str]] = []

    def work() -> None:
        results.append([cachelib.hash(a) for a in arrays for _ in range(3)][::3])

    workers = [threading.Thread(target=work) for _ in range(8)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert results == [expected] * 8


def _hash_in_child(queue: multiprocessing.Queue) -> None:
    queue.put(cachelib.hash(_base((700, 1000))[::-1]))


def test_a_forked_child_hashes_with_its_own_pool(monkeypatch):
    """After the parent used its pool, a forked child (without the parent's threads) still hashes."""
    monkeypatch.setenv(_pool.THREADS_VARIABLE, "2")
    expected = cachelib.hash(_base((700, 1000))[::-1])  # the parent's pool now has threads
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_hash_in_child, args=(queue,))
    child.start()
    assert queue.get(timeout=60) == expected
    child.join(30)
    assert child.exitcode == 0


@pytest.mark.parametrize("value", ["0", "-2", "two", "1.5"])
def test_an_invalid_thread_count_names_the_variable(value, monkeypatch):
    """CACHELIB_THREADS that is not a positive integer is an InvalidOptionError naming it."""
    monkeypatch.setenv(_pool.THREADS_VARIABLE, value)
    with pytest.raises(cachelib.InvalidOptionError, match="CACHELIB_THREADS"):
        cachelib.hash(_base((TREE_MIN // 8,)))


def test_the_default_thread_count_is_the_usable_cores_capped(monkeypatch):
    """Without CACHELIB_THREADS, parallel work uses the cores this process may run on, at most 8."""
    monkeypatch.delenv(_pool.THREADS_VARIABLE, raising=False)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert _pool.thread_count() == min(cores, _pool.MAX_THREADS)
    monkeypatch.setenv(_pool.THREADS_VARIABLE, "16")
    assert _pool.thread_count() == 16


def test_the_tree_hasher_matches_the_tree_of_the_same_bytes():
    """TreeHasher fed in pieces of odd sizes gives the tree digest of the whole (item size 1)."""
    data = _base((5 * LEAF + 12345,), "u1")
    hasher = _chunked.TreeHasher()
    position = 0
    for size in (1, LEAF - 1, 7, 2 * LEAF + 3, 100, LEAF):
        hasher.update(memoryview(data)[position : position + size])
        position += size
    hasher.update(memoryview(data)[position:])
    assert hasher.digest() == reference_tree(data)[1]
