"""Large arrays of a plain file are read by the pool's threads: the same value, the same checks.

Arrays of at least ``reader.PARALLEL_READ`` bytes in a file on disk (a ``cachelib.dump``
file or a cache entry) are filled by positional reads on the pool while the checksum
follows in order; everything else (codecs, pipes) reads in order. Whatever the path,
a damaged or truncated file is a ``CorruptFileError``, never a wrong value.
"""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest
from helpers import entry_files

import cachelib
from cachelib._codecs import pool
from cachelib._format import reader

ELEMENTS = (reader.PARALLEL_READ + (3 << 20)) // 8 + 5  # past the threshold, not a whole number of pieces


@pytest.fixture(params=["1", "2", "3"])
def threads(request, monkeypatch):
    monkeypatch.setenv(pool.THREADS_VARIABLE, request.param)
    return int(request.param)


@pytest.fixture(scope="module")
def value():
    rng = np.random.default_rng(7)
    return {"big": rng.random(ELEMENTS), "small": np.arange(10), "after": rng.random(ELEMENTS // 3)}


def _array_start(data: bytes, array: np.ndarray) -> int:
    """Where ``array``'s bytes begin in the file ``data``."""
    at = data.find(array[:64].tobytes())
    assert at > 0
    return at


def test_a_dump_file_loads_the_same_at_any_thread_count(tmp_path, value, threads):
    path = tmp_path / "value"
    cachelib.dump(value, path)
    loaded = cachelib.load(path)
    for name, array in value.items():
        np.testing.assert_array_equal(loaded[name], array)
        assert loaded[name].flags.writeable and loaded[name].flags.c_contiguous


def test_the_pool_reads_a_large_array_of_a_plain_file(tmp_path, value, monkeypatch):
    """The threshold is honoured: the pool's threads take part in the reading when there are two."""
    monkeypatch.setenv(pool.THREADS_VARIABLE, "2")
    path = tmp_path / "value"
    cachelib.dump(value, path)
    readers: set[str] = set()
    original = reader._pread_into

    def spy(fd, view, offset):
        readers.add(threading.current_thread().name)
        return original(fd, view, offset)

    monkeypatch.setattr(reader, "_pread_into", spy)
    np.testing.assert_array_equal(cachelib.load(path)["big"], value["big"])
    assert readers - {threading.current_thread().name}  # pool threads read (the caller may help)


@pytest.mark.parametrize("where", [0.0, 0.5, 0.999])
def test_a_flipped_byte_anywhere_in_a_large_array_is_a_checksum_mismatch(tmp_path, value, threads, where):
    path = tmp_path / "value"
    cachelib.dump(value, path)
    data = bytearray(path.read_bytes())
    start = _array_start(bytes(data), value["big"])
    data[start + int(where * (value["big"].nbytes - 1))] ^= 0x40
    path.write_bytes(bytes(data))
    with pytest.raises(cachelib.CorruptFileError, match="checksum"):
        cachelib.load(path)


@pytest.mark.parametrize("kept", [0.25, 0.9])
def test_a_file_truncated_inside_a_large_array_is_corrupt(tmp_path, value, threads, kept):
    path = tmp_path / "value"
    cachelib.dump(value, path)
    data = path.read_bytes()
    start = _array_start(data, value["big"])
    path.write_bytes(data[: start + int(kept * value["big"].nbytes)])
    with pytest.raises(cachelib.CorruptFileError):
        cachelib.load(path)


def test_a_file_truncated_while_it_is_read_is_corrupt(tmp_path, value, monkeypatch):
    """Truncated between the header's size check and the reads: a short pread, never a wrong value."""
    monkeypatch.setenv(pool.THREADS_VARIABLE, "2")
    path = tmp_path / "value"
    cachelib.dump(value, path)
    size = os.path.getsize(path)
    original = reader._pread_into
    cut = threading.Event()

    def truncating(fd, view, offset):
        if not cut.is_set():
            cut.set()
            os.truncate(path, size // 2)
        return original(fd, view, offset)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(reader, "_pread_into", truncating)
        with pytest.raises(cachelib.CorruptFileError, match="truncated"):
            cachelib.load(path)


def test_a_cache_entry_hit_reads_in_parallel_and_checks(tmp_path, value, threads):
    cache = cachelib.Cache(tmp_path / "cache")
    made = cache.memoize(lambda seed: value)
    made(1)
    np.testing.assert_array_equal(made(1)["big"], value["big"])
    (entry,) = entry_files(tmp_path / "cache")
    data = bytearray(entry.read_bytes())
    data[_array_start(bytes(data), value["big"]) + value["big"].nbytes // 2] ^= 1
    entry.write_bytes(bytes(data))
    with pytest.warns(cachelib.CacheWarning):  # a damaged entry is recomputed, with a warning
        again = made(1)
    np.testing.assert_array_equal(again["big"], value["big"])


def test_a_compressed_file_and_a_pipe_read_in_order(tmp_path, value):
    path = tmp_path / "value.lz4"
    cachelib.dump(value, path, compress="lz4")
    np.testing.assert_array_equal(cachelib.load(path)["big"], value["big"])
    read, write = os.pipe()
    with os.fdopen(read, "rb") as pipe:
        assert reader.positional(pipe) is None
    os.close(write)
