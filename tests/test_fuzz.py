"""Hostile files: mutated files load as the original value or raise a CacheError, quickly."""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import assert_same, dumped_bytes, entry_path, peak_rss_growth_below, reset_peak_rss
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cachelib

VALUE = {
    "ints": np.arange(40, dtype="<i8").reshape(5, 8),
    "floats": np.linspace(0.0, 1.0, 33, dtype=">f4"),
    "fortran": np.asfortranarray(np.arange(12.0).reshape(3, 4)),
    "objects": np.array([1, "two", (3.0,)], dtype=object),
    "text": "C'est l'\u00e9t\u00e9",
    "nested": [None, True, 2**70, {"k": b"\x00\xff"}],
}


SAMPLES = {name: dumped_bytes(VALUE, compress) for name, compress in
           [("raw", False), ("zstd", "zstd"), ("gzip", "gzip"), ("xz", "xz")]}

mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 10**6), st.integers(1, 255)),
    st.tuples(st.just("set"), st.integers(0, 10**6), st.integers(0, 255)),
    st.tuples(st.just("insert"), st.integers(0, 10**6), st.binary(min_size=1, max_size=16)),
    st.tuples(st.just("delete"), st.integers(0, 10**6), st.integers(1, 64)),
    st.tuples(st.just("truncate"), st.integers(0, 10**6), st.just(0)),
    st.tuples(st.just("length"), st.integers(0, 10**6), st.sampled_from([2**31, 2**40, 2**62, 2**64 - 1])),
)


def _mutate(data: bytes, steps: list[tuple[str, int, Any]]) -> bytes:
    out = bytearray(data)
    for kind, where, what in steps:
        if not out:
            break
        at = where % len(out)
        if kind == "flip":
            out[at] ^= what
        elif kind == "set":
            out[at] = what
        elif kind == "insert":
            out[at:at] = what
        elif kind == "delete":
            del out[at : at + what]
        elif kind == "truncate":
            del out[at:]
        else:  # overwrite 8 bytes with a huge little-endian length
            out[at : at + 8] = what.to_bytes(8, "little")
    return bytes(out)


def _loads_right_or_raises_a_cache_error(sample: str, steps: list) -> None:
    data = _mutate(SAMPLES[sample], steps)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            loaded = cachelib.load(io.BytesIO(data))
        except cachelib.CacheError:
            return
    assert_same(loaded, VALUE, f"the value a mutated {sample} file loaded")


@pytest.mark.timeout(300)
@pytest.mark.parametrize("examples", [100, pytest.param(400, marks=pytest.mark.slow)])  # 400: see [100]
def test_a_mutated_file_loads_right_or_raises_a_cache_error(examples: int) -> None:
    """Any mutation ends in the original value or a CacheError: never a crash or a wrong value."""
    settings(max_examples=examples, deadline=2000, suppress_health_check=[HealthCheck.too_slow])(
        given(sample=st.sampled_from(sorted(SAMPLES)), steps=st.lists(mutation, min_size=1, max_size=4))(
            _loads_right_or_raises_a_cache_error
        )
    )()


@pytest.mark.timeout(120)
def test_mutated_files_stay_within_bounded_memory(tmp_path: Path) -> None:
    """Huge lengths planted in a file raise CacheError without a huge allocation."""
    if not reset_peak_rss():
        pytest.skip("needs Linux /proc to read the peak RSS")
    raw = SAMPLES["raw"]
    with peak_rss_growth_below(200):
        for offset in range(16, len(raw) - 8, 3):
            for huge in (2**40, 2**62):
                data = raw[:offset] + huge.to_bytes(8, "little") + raw[offset + 8 :]
                path = tmp_path / "f.pkl"
                path.write_bytes(data)
                with contextlib.suppress(cachelib.CacheError):
                    cachelib.load(path)


@pytest.mark.timeout(120)
@settings(max_examples=60, deadline=5000, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(mutation, min_size=1, max_size=3))
def test_a_mutated_entry_is_a_miss_and_is_rewritten(tmp_path: Path, steps: list) -> None:
    """A damaged cache entry never returns a wrong result: it is recomputed and overwritten."""
    cache = cachelib.Cache(tmp_path / "cache", fsync=False)
    calls = []

    @cache.memoize(ignore=["calls"])  # a closure's values are part of the key, unless ignored
    def compute(n: int) -> dict:
        calls.append(n)
        return {"n": n, "values": np.arange(n, dtype=np.float64) * 1.5}

    first = compute(50)
    entry = entry_path(compute, 50)
    entry.write_bytes(_mutate(entry.read_bytes(), steps))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", cachelib.CacheWarning)
        again = compute(50)
    assert again["n"] == 50
    np.testing.assert_array_equal(again["values"], first["values"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_array_equal(compute(50)["values"], first["values"])  # whole again
