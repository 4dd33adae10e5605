"""``cachelib.Memory``: joblib.Memory's documented interface and meanings, on a ``Cache``.

Written from joblib's documentation (``Memory``, ``MemorizedFunc``, ``MemorizedResult``,
``expires_after``); every test counts the real calls in ``helpers.CALLS`` (the ``calls`` fixture).
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import multiprocessing
import pickle
import pprint
import subprocess
import sys
import zlib

import numpy as np
import pytest
from helpers import CALLS, entry_path, entry_stream

import cachelib

pytestmark = pytest.mark.timeout(60)


def square(x, y=1):
    CALLS.append(x)
    return x * x + y


def ones(n):
    CALLS.append(n)
    return np.ones(n)


@pytest.fixture
def memory(location):
    return cachelib.Memory(location, verbose=0)


# -- the constructor ----------------------------------------------------------------------


def test_cache_computes_each_distinct_call_once(memory, calls):
    f = memory.cache(square)
    assert [f(2), f(2), f(x=2), f(2, 1), f(3)] == [5, 5, 5, 5, 10]
    assert calls == [2, 3]


def test_location_none_caches_nothing(calls):
    memory = cachelib.Memory(None, verbose=0)
    f = memory.cache(square)
    assert memory.location is None
    assert [f(2), f(2)] == [5, 5]
    assert calls == [2, 2]
    assert not f.check_call_in_cache(2)
    shelved = f.call_and_shelve(2)
    assert isinstance(shelved, cachelib.NotMemorizedResult)
    assert shelved.get() == 5
    assert f.call(2) == (5, {})
    assert memory.eval(square, 4) == 17
    f.clear()
    memory.clear(warn=False)
    assert memory.reduce_size(items_limit=0) == 0


@pytest.mark.parametrize(
    ("compress", "level"), [(3, 3), (True, 3), (9, 9), ("zlib", 3), (("zlib", 6), 6)]
)
def test_compress_means_zlib_as_in_joblib(location, compress, level):
    f = cachelib.Memory(location, compress=compress, verbose=0).cache(ones)
    f(10_000)
    stream = entry_stream(entry_path(f, 10_000).read_bytes())
    assert stream[:1] == b"\x78", "not a zlib stream"
    raw = zlib.decompress(stream)
    assert zlib.compress(raw, level) == stream


@pytest.mark.parametrize("compress", [False, 0, None, ("zlib", 0)])
def test_compress_off_writes_raw_entries(location, compress):
    f = cachelib.Memory(location, compress=compress, verbose=0).cache(ones)
    f(100)
    stream = entry_stream(entry_path(f, 100).read_bytes())
    assert stream[:8] == b"\x89CLIB\r\n\x1a"


@pytest.mark.parametrize("compress", ["3", 10, -1, 1.5, {"zlib": 3}])
def test_a_compress_joblib_refuses_when_storing_computes_and_warns_at_each_call(location, calls, compress):
    """As joblib: ``Memory(compress="3")`` is built (librosa passes an environment variable's
    string); each call computes, warns and stores nothing."""
    memory = cachelib.Memory(location, compress=compress, verbose=0)  # no error, no warning
    f = memory.cache(ones)
    for _ in range(2):
        with pytest.warns(cachelib.CacheWarning, match=r"compress=.*cannot store results") as caught:
            np.testing.assert_array_equal(f(3), np.ones(3))
        assert caught[0].filename == __file__  # attributed to the call
    assert calls == [3, 3]
    assert not f.check_call_in_cache(3)


def test_memory_creates_its_location_when_built(tmp_path):
    """As joblib: the location exists once ``Memory(...)`` returns (nilearn checks it)."""
    location = tmp_path / "deep" / "cache"
    cachelib.Memory(location, verbose=0)
    assert location.is_dir()
    assert (location.stat().st_mode & 0o777) == 0o700
    assert cachelib.Memory(location, verbose=0).info().entries == 0  # a marked cachelib location
    assert not (tmp_path / "none").exists()
    cachelib.Memory(None)


def test_memory_and_memorized_func_have_joblibs_logger_methods(memory, caplog):
    """librosa's cache manager calls ``memory.format(...)`` and ``memory.warn(...)``."""
    nested = {"a": [1, [2, [3, [4, [5]]]]]}
    assert memory.format(nested) == pprint.pformat(nested, depth=3)
    assert memory.format(nested, indent=2) == pprint.pformat(nested, indent=2, depth=3)
    f = memory.cache(square)
    assert f.format(nested) == memory.format(nested)
    with caplog.at_level(logging.DEBUG, logger="cachelib"):
        memory.warn("careful")
        f.warn("careful too")
        memory.debug("details")
        assert memory.info("noted") is None
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("WARNING", f"[{memory!r}]: careful"), ("WARNING", f"[{f!r}]: careful too"),
        ("DEBUG", f"[{memory!r}]: details"), ("INFO", f"[{memory!r}]: noted"),
    ]
    assert isinstance(memory.info(), cachelib.CacheInfo)


def test_backend_is_the_second_positional_argument(location, calls):
    memory = cachelib.Memory(location, "local", verbose=0)
    assert memory.backend == "local"
    f = memory.cache(square)
    assert f(1) == f(1) == 2
    assert calls == [1]


def test_unknown_backend_raises_naming_local(location):
    with pytest.raises(ValueError, match="backend='local'"):
        cachelib.Memory(location, backend="s3")
    with pytest.raises(ValueError, match="backend='local'"):
        cachelib.Memory(location, "zstd")  # a codec where joblib expects a backend


def test_backend_options_take_the_cache_options(location, calls):
    memory = cachelib.Memory(location, backend_options={"secret": b"s" * 32, "fsync": False}, verbose=0)
    f = memory.cache(square)
    f(2)
    assert entry_path(f, 2).read_bytes()[10] & 1, "entry not signed"
    assert cachelib.Memory(location, backend_options={"secret": b"s" * 32}, verbose=0).cache(square)(2) == 5
    assert calls == [2]
    with pytest.raises(ValueError, match="not options of a cachelib cache"):
        cachelib.Memory(location, backend_options={"compresslevel": 3})


def test_mmap_mode_maps_first_calls_and_hits_and_cache_overrides_it(location, calls):
    memory = cachelib.Memory(location, mmap_mode="r", verbose=0)
    mapped = memory.cache(ones)
    big = 1000  # 8 KB: arrays under 4 KiB are stored in the pickle and never mapped
    first, again = mapped(big), mapped(big)
    assert isinstance(first, np.memmap) and isinstance(again, np.memmap)
    assert first.mode == again.mode == "r"
    kept = memory.cache(ones, mmap_mode=False)  # False: the Memory's own
    assert isinstance(kept(big), np.memmap)
    plain = memory.cache(ones, mmap_mode=None)
    result = plain(5)
    assert type(result) is np.ndarray
    np.testing.assert_array_equal(result, np.ones(5))
    assert calls == [big, 5]


def test_mmap_mode_r_plus_is_refused_with_the_fix(location):
    with pytest.raises(ValueError, match="'c'"):
        cachelib.Memory(location, mmap_mode="r+")


def test_memory_attributes_and_repr(location):
    memory = cachelib.Memory(location, compress=3, verbose=0)
    assert memory.location == str(location)
    assert memory.compress == 3
    assert memory.mmap_mode is None
    assert memory.verbose == 0
    assert repr(memory) == f"Memory(location={location})"
    assert isinstance(memory.as_cache, cachelib.Cache)


def test_memory_pickles_and_its_functions_hit_in_a_worker(memory, calls):
    f = memory.cache(square)
    f(3)
    clone = pickle.loads(pickle.dumps(memory))
    assert clone.location == memory.location
    assert clone.cache(square)(3) == 10
    with multiprocessing.get_context("fork").Pool(1) as pool:
        assert pool.map(f, [3, 4]) == [10, 17]
    assert calls == [3]  # 4 was computed in the worker
    assert f.check_call_in_cache(4)


# -- Memory.cache -------------------------------------------------------------------------


def test_cache_with_options_only_returns_a_decorator(memory, calls):
    @memory.cache(ignore=["y"], verbose=0)
    def g(x, y=1):
        CALLS.append(x)
        return x

    assert g(1, y=1) == g(1, y=2) == 1
    assert calls == [1]
    assert g.ignore == ["y"]
    assert g.func(5, 6) == 5
    assert g.__wrapped__ is g.func

    @memory.cache()
    def h(x):
        return x

    assert isinstance(h, cachelib.MemorizedFunc)


def test_ignore_none_is_no_argument_ignored(memory, calls):
    f = memory.cache(square, ignore=None)
    assert f.ignore == []
    f(1, 1)
    f(1, 2)
    assert calls == [1, 1]


def test_cache_of_a_memoized_function_wraps_the_original(memory, calls):
    once = memory.cache(square)
    twice = memory.cache(once)
    assert twice.func is square
    twice(2)
    once(2)
    assert calls == [2]


def test_per_function_verbose_overrides_the_memory(location, capsys):
    """Verbose functions print (to stderr, through ``cachelib.verbose1``), quiet ones not."""
    chatty = cachelib.Memory(location, verbose=0).cache(square, verbose=1)
    silent = cachelib.Memory(location, verbose=1).cache(ones, verbose=0)
    silent(3)
    chatty(7)
    printed = capsys.readouterr().err.splitlines()
    assert len(printed) == 1 and printed[0].startswith("[cachelib] miss square"), printed


def test_eval_memoizes_the_call(memory, calls):
    assert memory.eval(square, 3, y=2) == 11
    assert memory.eval(square, 3, y=2) == 11
    assert calls == [3]


def test_clear_removes_the_functions_results(memory, calls, caplog):
    f = memory.cache(square)
    g = memory.cache(ones)
    f(1)
    g(2)
    f.clear(warn=False)
    assert not f.check_call_in_cache(1)
    assert g.check_call_in_cache(2)
    with caplog.at_level(logging.WARNING, logger="cachelib"):
        memory.clear()
    assert any("flushing" in r.getMessage() for r in caplog.records)
    assert not g.check_call_in_cache(2)
    caplog.clear()
    f(1)
    with caplog.at_level(logging.WARNING, logger="cachelib"):
        memory.clear(warn=False)
    assert not caplog.records
    assert not f.check_call_in_cache(1)


def test_reduce_size_keeps_the_limits(memory, calls):
    f = memory.cache(ones)
    for n in range(5):
        f(n)
    assert memory.reduce_size(items_limit=2) == 3
    assert sum(f.check_call_in_cache(n) for n in range(5)) == 2
    assert memory.reduce_size(age_limit=datetime.timedelta(0)) == 2


# -- call_and_shelve and MemorizedResult --------------------------------------------------


def test_call_and_shelve_returns_a_reference_to_the_stored_result(memory, calls):
    f = memory.cache(square)
    shelved = f.call_and_shelve(4)
    assert isinstance(shelved, cachelib.MemorizedResult)
    assert calls == [4]
    assert shelved.get() == 17
    again = f.call_and_shelve(4)
    assert calls == [4]
    assert (again.args_id, again.func_id) == (shelved.args_id, shelved.func_id)
    assert repr(again) == (
        f'MemorizedResult(location="{memory.location}", func="{f.namespace}", args_id="{again.args_id}")'
    )


def test_call_and_shelve_does_not_read_a_stored_result(memory, calls):
    f = memory.cache(ones)
    f(1000)
    path = entry_path(f, 1000)
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF  # damage the result's bytes, not the header
    path.write_bytes(bytes(data))
    shelved = f.call_and_shelve(1000)  # the header is intact: a hit, not read
    assert calls == [1000]
    with pytest.raises(KeyError, match="cannot be read"):
        shelved.get()


def test_shelved_result_clear_and_get(memory, calls):
    f = memory.cache(square)
    shelved = f.call_and_shelve(2)
    shelved.clear()
    with pytest.raises(KeyError, match="no longer stored"):
        shelved.get()
    shelved.clear()  # already gone: nothing happens
    assert not f.check_call_in_cache(2)
    assert f(2) == 5
    assert calls == [2, 2]


def test_shelved_result_pickles_small_and_loads_in_another_process(memory, location, calls):
    f = memory.cache(ones)
    shelved = f.call_and_shelve(100_000)
    data = pickle.dumps(shelved)
    assert len(data) < 2000, "the pickle holds the result"
    script = (
        "import pickle, sys\n"
        "result = pickle.loads(sys.stdin.buffer.read()).get()\n"
        "print(result.shape, result.sum())\n"
    )
    done = subprocess.run([sys.executable, "-c", script], input=data, capture_output=True, timeout=60,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.decode().split() == ["(100000,)", "100000.0"]


def test_shelved_result_keeps_the_functions_mmap_mode(location, calls):
    f = cachelib.Memory(location, mmap_mode="r", verbose=0).cache(ones)
    result = pickle.loads(pickle.dumps(f.call_and_shelve(1000))).get()  # 8 KB: a mapped record
    assert isinstance(result, np.memmap)


def test_a_result_that_cannot_be_stored_is_shelved_in_memory(tmp_path, calls):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    f = cachelib.Memory(blocker, verbose=0).cache(square)
    with pytest.warns(cachelib.CacheWarning):
        shelved = f.call_and_shelve(3)
    assert isinstance(shelved, cachelib.NotMemorizedResult)
    assert shelved.get() == 10
    shelved.clear()
    with pytest.raises(KeyError):
        shelved.get()


# -- call, check_call_in_cache, validation callbacks ---------------------------------------


def test_call_recomputes_stores_and_returns_metadata(memory, calls):
    f = memory.cache(square)
    f(5)
    result, metadata = f.call(5)
    assert result == 26
    assert calls == [5, 5]
    assert metadata["call"] == "square(x=5, y=1)"
    assert metadata["duration"] >= 0
    assert abs(metadata["time"] - __import__("time").time()) < 600
    assert f(5) == 26
    assert calls == [5, 5]


def test_validation_callback_must_be_callable(memory):
    with pytest.raises(ValueError, match=r"cache_validation_callback needs to be callable\. Got True\."):
        memory.cache(square, cache_validation_callback=True)


@pytest.mark.parametrize("valid", [True, False])
def test_constant_validation_callback(memory, calls, valid):
    f = memory.cache(square, cache_validation_callback=lambda metadata: valid)
    f(2)
    assert f.check_call_in_cache(2) is valid
    f(2)
    assert calls == [2] if valid else [2, 2]


def test_validation_callback_sees_the_entrys_metadata(memory, calls):
    seen = []

    def keep_slow_ones(metadata):
        seen.append(metadata)
        return metadata["duration"] > 3600

    f = memory.cache(square, cache_validation_callback=keep_slow_ones)
    f(2)
    f(2)
    assert calls == [2, 2]  # never slow enough to keep
    assert seen and set(seen[0]) >= {"duration", "time", "call"}
    assert seen[0]["call"] == "square(x=2, y=1)"
    shelved = f.call_and_shelve(2)  # stored, but not valid: held in memory
    assert isinstance(shelved, cachelib.NotMemorizedResult)


@pytest.mark.parametrize("helper", [cachelib.expires_after, pytest.importorskip("joblib").expires_after])
def test_expires_after(memory, calls, helper):
    fresh = memory.cache(square, cache_validation_callback=helper(days=1))
    fresh(3)
    fresh(3)
    assert calls == [3]
    stale = memory.cache(square, cache_validation_callback=helper(seconds=-1))
    stale(3)
    assert calls == [3, 3]
    assert not stale.check_call_in_cache(3)


def test_cachelib_expires_after_becomes_the_caches_expiry(memory):
    f = memory.cache(square, cache_validation_callback=cachelib.expires_after(minutes=2))
    assert f.expires_after == 120.0
    assert f.cache_validation_callback is None
    assert cachelib.expires_after(hours=1)({"time": __import__("time").time()})


# -- async functions ----------------------------------------------------------------------


async def add_async(x):
    CALLS.append(x)
    return x + 1


def test_async_functions(memory, calls):
    f = memory.cache(add_async)
    assert isinstance(f, cachelib.MemorizedFunc)

    async def scenario():
        first = await f(1)
        second = await f(1)
        shelved = await f.call_and_shelve(1)
        forced = await f.call(1)
        return first, second, shelved.get(), forced[0]

    assert asyncio.run(scenario()) == (2, 2, 2, 2)
    assert calls == [1, 1]


# -- Cache for scikit-learn --------------------------------------------------------------


def test_cache_has_joblibs_cache_and_location(location, calls):
    cache = cachelib.Cache(location)
    f = cache.cache(square, ignore=["y"])
    f(1, y=1)
    f(1, y=2)
    assert calls == [1]
    assert cache.location == str(location)
    assert cachelib.Cache(None).location is None


def test_call_records_key_parts_and_a_summary_like_a_miss(tmp_path):
    """``call()`` stores the same metadata a miss does: explain() and ls can read it."""
    memory = cachelib.Memory(tmp_path / "m", verbose=0)

    def double(x):
        return 2 * x

    f = memory.cache(double)
    assert f.call(3)[0] == 6
    (metadata,) = memory.as_cache.entries.recent_metadata(f.namespace, 10)
    assert isinstance(metadata["key_parts"], dict) and "argument x" in metadata["key_parts"]
    assert metadata["call"].startswith("double(")
    assert "argument `x` changed" in f.explain(4)


# -- joblib's MemorizedFunc(func, location, ...) and NotMemorizedFunc -------------------------


def test_memorized_func_built_from_a_location_as_in_joblib(location, calls):
    """``MemorizedFunc(func, location, backend, ignore, mmap_mode, compress, verbose)``, as in joblib."""
    f = cachelib.MemorizedFunc(square, str(location), "local", ["y"], None, 3, 0)
    assert [f(2, y=1), f(2, y=5)] == [5, 5]
    assert calls == [2]
    assert f.ignore == ["y"]
    assert f.check_call_in_cache(2)
    assert cachelib.MemorizedFunc(square, location, ignore=["y"], verbose=0)(2) == 5
    assert calls == [2], "a second MemorizedFunc on the same location hits the first's entry"
    stream = entry_stream(entry_path(f, 2).read_bytes())
    assert zlib.compress(zlib.decompress(stream), 3) == stream  # compress=3: zlib level 3, as in joblib
    shelved = f.call_and_shelve(3)
    assert isinstance(shelved, cachelib.MemorizedResult)
    assert shelved.get() == 10


def test_memorized_func_from_a_location_takes_the_validation_callback(location, calls):
    f = cachelib.MemorizedFunc(square, location, verbose=0, cache_validation_callback=lambda metadata: False)
    assert [f(2), f(2)] == [5, 5]
    assert calls == [2, 2]
    assert not f.check_call_in_cache(2)


def test_memorized_func_from_no_location_caches_nothing(calls):
    f = cachelib.MemorizedFunc(square, None, verbose=0)
    assert [f(2), f(2)] == [5, 5]
    assert calls == [2, 2]
    assert isinstance(f.call_and_shelve(2), cachelib.NotMemorizedResult)


@pytest.mark.parametrize(
    ("arguments", "options", "message"),
    [
        (("local", None, None, False, 0, None, None, "extra"), {}, "positional"),
        (("local",), {"backend": "local"}, "both by position and by keyword"),
        ((), {"colour": "red"}, "unexpected"),
    ],
)
def test_memorized_func_from_a_location_rejects_bad_arguments(location, arguments, options, message):
    with pytest.raises(TypeError, match=message):
        cachelib.MemorizedFunc(square, location, *arguments, **options)


def test_memorized_func_from_a_cache_takes_no_joblib_positionals(location):
    with pytest.raises(TypeError, match="by keyword"):
        cachelib.MemorizedFunc(square, cachelib.Cache(location), "local")


def test_not_memorized_func_calls_every_time(calls):
    f = cachelib.NotMemorizedFunc(square)
    assert [f(2), f(2, y=0)] == [5, 4]
    assert calls == [2, 2]
    shelved = f.call_and_shelve(3)
    assert isinstance(shelved, cachelib.NotMemorizedResult)
    assert shelved.get() == 10
    assert f.call(1) == (2, {})
    assert not f.check_call_in_cache(2)
    f.clear(warn=False)
    assert repr(f) == f"NotMemorizedFunc(func={square})"
    assert pickle.loads(pickle.dumps(f))(4) == 17
