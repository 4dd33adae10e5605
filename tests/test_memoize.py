"""``Cache.memoize``: one computation per distinct call, across threads, processes and restarts.

Every test uses a fresh cache under ``tmp_path`` and counts the real calls.
"""

from __future__ import annotations

import asyncio
import datetime
import functools
import logging
import multiprocessing
import os
import re
import shutil
import stat
import threading
import time
import warnings

import numpy as np
import pytest
from _system import wait_until
from helpers import CALLS, Calls, entry_files, entry_stream, entry_stream_offset, new_entry, slow_except

import cachelib
from cachelib._entries.envelope import HEADER_SIZE
from cachelib._sizes import parse_size

pytestmark = pytest.mark.timeout(60)

FORK = multiprocessing.get_context("fork")
CACHELIB_MAGIC = b"\x89CLIB\r\n\x1a"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"

# Real calls are counted in CALLS (the ``calls`` fixture), never in a closure.
_GUARD = threading.Lock()


def tmp_files(root) -> list:
    return sorted(p for p in root.rglob("*.tmp"))


class no_warnings(warnings.catch_warnings):
    """A block in which any warning is an error."""

    def __enter__(self):
        result = super().__enter__()
        warnings.simplefilter("error")
        return result


# --- one computation per distinct input -----------------------------------------------------


def test_computes_once_per_distinct_input(cache, calls):

    @cache.memoize
    def square(x):
        CALLS.append(x)
        return np.arange(5) * x

    for _ in range(3):
        for x in (1, 2, 3):
            assert np.array_equal(square(x), np.arange(5) * x)
    assert calls == [1, 2, 3]
    assert np.array_equal(square(np.int64(2)), np.arange(5) * 2)  # another type: another key
    assert calls == [1, 2, 3, np.int64(2)]


def test_positional_and_keyword_give_one_key(cache, calls):

    @cache.memoize
    def f(x, y):
        CALLS.append((x, y))
        return x - y

    assert f(5, 2) == 3
    assert f(5, y=2) == 3
    assert f(x=5, y=2) == 3
    assert f(y=2, x=5) == 3
    assert calls == [(5, 2)]
    assert f(2, 5) == -3
    assert len(calls) == 2


def keyed(x, y=1):
    return x + y


def _key_in_a_child(location: str, queue) -> None:
    queue.put(cachelib.Cache(location).memoize(keyed).cache_key(7, y=2))


def test_cache_key_is_the_key_a_call_is_stored_under(location):
    """``f.cache_key(...)`` is public: the name of the call's entry, the same however the call is
    spelled and in every process; what cannot be keyed raises as the call would."""
    f = cachelib.Cache(location).memoize(keyed)
    f(7, 2)
    key = f.cache_key(7, 2)
    assert re.fullmatch(r"[0-9a-f]{32}", key)
    assert [p.stem for p in entry_files(location)] == [key]
    assert f.cache_key(7, y=2) == f.cache_key(x=7, y=2) == key
    assert f.cache_key(7) == f.cache_key(7, 1) != key
    queue = multiprocessing.get_context("spawn").Queue()
    child = multiprocessing.get_context("spawn").Process(target=_key_in_a_child, args=(str(location), queue))
    child.start()
    assert queue.get(timeout=60) == key
    child.join(60)
    with pytest.raises(cachelib.UnhashableError, match="argument 'x'"):
        f.cache_key(threading.Lock())
    with pytest.raises(TypeError):
        f.cache_key(1, 2, 3)


def test_defaults_are_applied(cache, calls):

    @cache.memoize
    def f(x, y=2):
        CALLS.append((x, y))
        return x * y

    assert f(1) == 2
    assert f(1, y=2) == 2
    assert f(1, 2) == 2
    assert calls == [(1, 2)]
    assert f(1, 3) == 3
    assert len(calls) == 2


def test_var_positional_and_var_keyword(cache, calls):

    @cache.memoize
    def f(a, *args, **kwargs):
        CALLS.append(1)
        return a, args, sorted(kwargs.items())

    expected = (1, (2, 3), [("x", 1), ("y", 2)])
    assert f(1, 2, 3, x=1, y=2) == expected
    assert f(1, 2, 3, x=1, y=2) == expected
    assert len(calls) == 1
    assert f(1, 2, 3, y=2, x=1) == expected  # the order of **kwargs is visible to f: another key
    assert len(calls) == 2
    assert f(1, 2, x=1, y=2) == (1, (2,), [("x", 1), ("y", 2)])
    assert f(1, 2, 3, x=1, y=3) == (1, (2, 3), [("x", 1), ("y", 3)])
    assert f(1, 2, 3, x=1) == (1, (2, 3), [("x", 1)])
    assert len(calls) == 5


def test_keyword_only_arguments(cache, calls):

    @cache.memoize
    def f(a, *, b=1, c):
        CALLS.append(1)
        return a + 10 * b + 100 * c

    assert f(1, c=2) == 211
    assert f(1, b=1, c=2) == 211
    assert f(1, c=2, b=1) == 211
    assert len(calls) == 1
    assert f(1, b=2, c=2) == 221
    assert f(1, c=3) == 311
    assert len(calls) == 3


def test_ignored_argument_does_not_change_the_key(cache, calls):

    @cache.memoize(ignore=["verbose"])
    def f(x, verbose=0):
        CALLS.append((x, verbose))
        return x * 2

    assert f(1) == 2
    assert f(1, verbose=1) == 2
    assert f(1, verbose=5) == 2
    assert calls == [(1, 0)]
    assert f(2, verbose=1) == 4
    assert calls == [(1, 0), (2, 1)]


def test_ignore_of_an_unknown_name_raises(cache):
    def f(x, verbose=0):
        return x

    with pytest.raises(cachelib.InvalidOptionError):
        cache.memoize(f, ignore=["verbos"])
    with pytest.raises(cachelib.InvalidOptionError):
        cache.memoize(ignore=["nope"])(f)


def test_ignore_given_as_a_string_raises(cache):
    def f(x, verbose=0):
        return x

    with pytest.raises(cachelib.InvalidOptionError):
        cache.memoize(f, ignore="verbose")


def test_unhashable_argument_raises_unhashable_error(cache, calls):

    @cache.memoize
    def f(x, data):
        CALLS.append(1)
        return x

    with pytest.raises(cachelib.UnhashableError) as info:
        f(1, {"k": [threading.Lock()]})
    assert "data" in str(info.value)
    assert calls == []


# --- what can be memoized -------------------------------------------------------------------


def test_methods_include_instance_state_in_the_key(cache, calls):

    class Scaler:
        def __init__(self, factor):
            self.factor = factor

        @cache.memoize
        def scale(self, x):
            CALLS.append((self.factor, x))
            return self.factor * x

    two, three = Scaler(2), Scaler(3)
    assert two.scale(5) == 10
    assert three.scale(5) == 15
    assert Scaler(2).scale(5) == 10  # an equal instance hits
    assert calls == [(2, 5), (3, 5)]
    two.factor = 4
    assert two.scale(5) == 20
    assert len(calls) == 3


def test_static_and_class_methods_in_both_decorator_orders(location, calls):
    cache = cachelib.Cache(location)

    class K:
        base = 100

        @staticmethod
        @cache.memoize
        def static_outer(x):
            CALLS.append(("static_outer", x))
            return x + 1

        @cache.memoize
        @staticmethod
        def static_inner(x):
            CALLS.append(("static_inner", x))
            return x + 2

        @classmethod
        @cache.memoize
        def class_outer(cls, x):
            CALLS.append(("class_outer", x))
            return cls.base + x

        @cache.memoize
        @classmethod
        def class_inner(cls, x):
            CALLS.append(("class_inner", x))
            return cls.base + 2 * x

    for _ in range(2):
        assert K.static_outer(1) == 2
        assert K().static_outer(1) == 2
        assert K.static_inner(1) == 3
        assert K().static_inner(1) == 3
        assert K.class_outer(1) == 101
        assert K().class_outer(1) == 101
        assert K.class_inner(1) == 102
        assert K().class_inner(1) == 102
    assert sorted(calls) == sorted(
        [("static_outer", 1), ("static_inner", 1), ("class_outer", 1), ("class_inner", 1)]
    )


def test_functools_partial(cache, calls):

    def power(base, exponent):
        CALLS.append((base, exponent))
        return base**exponent

    square = cache.memoize(functools.partial(power, exponent=2))
    cube = cache.memoize(functools.partial(power, exponent=3))
    assert square(3) == 9
    assert cube(3) == 27  # the partial's arguments are part of the key
    assert square(3) == 9
    assert cube(3) == 27
    assert calls == [(3, 2), (3, 3)]


def test_two_lambdas_never_collide(cache, location):
    plus = cache.memoize(lambda x: x + 1)
    times = cache.memoize(lambda x: x * 10)
    assert plus(3) == 4
    assert times(3) == 30
    assert plus(3) == 4
    assert times(3) == 30
    assert len(entry_files(location)) == 2


def _make_nested(flag):
    if flag:

        def inner(x):
            return x + 1

    else:

        def inner(x):
            return x * 10

    return inner


def _make_closure(amount):
    def inner(x):
        return x + amount

    return inner


def test_nested_functions_of_one_name_never_collide(cache):
    first, second = _make_nested(True), _make_nested(False)
    assert first.__qualname__ == second.__qualname__
    first, second = cache.memoize(first), cache.memoize(second)
    assert first(3) == 4
    assert second(3) == 30
    assert first(3) == 4
    with_one, with_two = cache.memoize(_make_closure(1)), cache.memoize(_make_closure(2))
    assert with_one(3) == 4
    assert with_two(3) == 5  # same code, another captured value
    assert cache.memoize(_make_closure(1))(3) == 4


def test_bound_builtin_method_arguments_never_share_a_key(cache):
    @cache.memoize
    def apply(function, values):
        return function(values)

    values = np.arange(1, 5)
    assert apply(np.add.reduce, values) == 10
    assert apply(np.multiply.reduce, values) == 24


def test_async_functions_are_awaited_and_cached(cache, calls):

    @cache.memoize
    async def double(x):
        CALLS.append(x)
        await asyncio.sleep(0)
        return np.arange(3) * 2 * x

    assert np.array_equal(asyncio.run(double(2)), [0, 4, 8])
    assert np.array_equal(asyncio.run(double(2)), [0, 4, 8])
    assert calls == [2]
    assert double.check_call_in_cache(2)
    assert np.array_equal(asyncio.run(double(3)), [0, 6, 12])
    assert calls == [2, 3]


# --- code changes ---------------------------------------------------------------------------

_VERSION_1 = "def compute(x):\n    CALLS.append('v1')\n    return x + 1\n"
_VERSION_2 = "def compute(x):\n    CALLS.append('v2')\n    return x + 2\n"


def test_code_change_misses_and_reverting_hits_the_old_entry(cache, location, calls):

    def define(source):
        namespace = {"__name__": "cachelib_test_module", "CALLS": calls}
        exec(source, namespace)
        return cache.memoize(namespace["compute"])

    first = define(_VERSION_1)
    assert first(1) == 2
    assert calls == ["v1"]
    assert len(entry_files(location)) == 1

    edited = define(_VERSION_2)
    assert edited.namespace == first.namespace  # same function, same directory
    assert edited(1) == 3  # the edit misses
    assert calls == ["v1", "v2"]
    assert len(entry_files(location)) == 2  # nothing was wiped

    reverted = define(_VERSION_1)
    assert reverted(1) == 2  # the old entry hits again
    assert edited(1) == 3
    assert calls == ["v1", "v2"]


def test_replacing_code_object_misses(cache, calls):

    def f(x):
        CALLS.append("a")
        return x + 1

    def g(x):
        CALLS.append("b")
        return x + 100

    assert cache.memoize(f)(1) == 2
    f.__code__ = g.__code__
    assert cache.memoize(f)(1) == 101
    assert calls == ["a", "b"]


# --- results, errors and options -------------------------------------------------------------


def test_exceptions_are_not_cached(cache, location, calls):

    @cache.memoize
    def fails(x):
        CALLS.append(x)
        raise ValueError(f"bad {x}")

    for expected in (1, 2):
        with pytest.raises(ValueError, match="bad 1"):
            fails(1)
        assert len(calls) == expected
    assert entry_files(location) == []
    assert not fails.check_call_in_cache(1)


def test_per_function_compress_overrides_the_cache(location):
    cache = cachelib.Cache(location, compress=False)

    @cache.memoize(compress="zstd")
    def packed(x):
        return np.zeros(10000) + x

    @cache.memoize
    def raw(x):
        return np.zeros(10000) + x

    before = entry_files(location)
    assert np.array_equal(packed(1), np.ones(10000))
    data = entry_stream(new_entry(location, before).read_bytes())
    assert data[:4] == ZSTD_MAGIC
    before = entry_files(location)
    assert np.array_equal(raw(1), np.ones(10000))
    assert entry_stream(new_entry(location, before).read_bytes())[:8] == CACHELIB_MAGIC
    assert np.array_equal(packed(1), np.ones(10000))  # and it reads back


def test_per_function_mmap_mode_overrides_the_cache(location, calls):
    cache = cachelib.Cache(location, mmap_mode=None)

    @cache.memoize(mmap_mode="r")
    def mapped(x):
        CALLS.append(x)
        return np.arange(10000.0) * x

    @cache.memoize
    def plain(x):
        return np.arange(10000.0) * x

    first = mapped(2)
    again = mapped(2)
    assert isinstance(first, np.memmap)
    assert isinstance(again, np.memmap)
    assert np.array_equal(first, np.arange(10000.0) * 2)
    assert np.array_equal(again, np.arange(10000.0) * 2)
    assert calls == [2]
    plain(2)
    assert type(plain(2)) is np.ndarray
    del first, again


def test_cache_none_memoizes_nothing(tmp_path, calls):
    cache = cachelib.Cache(None)

    @cache.memoize
    def f(x):
        CALLS.append(x)
        return x + 1

    assert f(1) == 2
    assert f(1) == 2
    assert f(1) == 2
    assert calls == [1, 1, 1]
    assert not f.check_call_in_cache(1)
    assert cache.location is None
    assert cache.info().entries == 0
    assert list(tmp_path.iterdir()) == []


# --- management -----------------------------------------------------------------------------


def test_clear_check_call_in_cache_and_wrapped(cache, calls):

    def original(x):
        CALLS.append(x)
        return x

    f = cache.memoize(original)
    assert f.__wrapped__ is original
    assert f.__name__ == "original"
    assert not f.check_call_in_cache(1)
    f(1)
    f(2)
    assert f.check_call_in_cache(1)
    assert f.check_call_in_cache(x=2)
    assert not f.check_call_in_cache(3)
    assert calls == [1, 2]
    f.clear()
    assert not f.check_call_in_cache(1)
    f(1)
    assert calls == [1, 2, 1]


def test_clear_of_one_function_keeps_the_others(cache):
    a = cache.memoize(lambda x: x + 1)

    def other(x):
        return x * 2

    b = cache.memoize(other)
    a(1)
    b(1)
    a.clear()
    assert not a.check_call_in_cache(1)
    assert b.check_call_in_cache(1)


def test_cache_clear_removes_entries_and_keeps_location(cache, location):
    @cache.memoize
    def f(x):
        return x

    @cache.memoize
    def g(x):
        return -x

    for x in range(3):
        f(x)
        g(x)
    assert len(entry_files(location)) == 6
    cache.clear()
    assert entry_files(location) == []
    assert location.is_dir()
    assert (location / "CACHEDIR.TAG").exists()
    assert not f.check_call_in_cache(0)
    assert f(5) == 5  # still usable


def test_info_reports_entries_bytes_hits_misses_and_saved_time(cache, location):
    @cache.memoize
    def slow(x):
        time.sleep(0.05)
        return np.arange(100) * x

    @cache.memoize
    def quick(x):
        return x

    slow(1)
    slow(2)
    slow(1)
    slow(1)
    quick(1)
    info = cache.info()
    assert set(info.functions) == {slow.name, quick.name}
    item = info.functions[slow.name]
    files = entry_files(location / slow.namespace)
    assert item.entries == 2 == len(files)
    assert item.bytes == sum(p.stat().st_size for p in files)
    assert (item.hits, item.misses) == (2, 2)
    assert item.compute_seconds >= 0.1
    assert item.saved_seconds >= 0.09  # two hits, each saved a >= 0.05 s computation
    assert (info.functions[quick.name].hits, info.functions[quick.name].misses) == (0, 1)
    assert (info.entries, info.hits, info.misses) == (3, 2, 3)
    assert info.bytes == sum(p.stat().st_size for p in entry_files(location))
    assert slow.cache_info().hits == 2

    reopened = cachelib.Cache(location).info()  # counts survive a new Cache object
    again = reopened.functions[slow.name]
    assert (again.entries, again.hits, again.misses) == (2, 2, 2)
    assert again.saved_seconds == pytest.approx(item.saved_seconds)


def test_info_counts_functions_whose_long_names_share_a_prefix(cache):
    module = "my_project.analysis.pipelines.preprocessing"
    memoized = []
    for suffix in ("one", "two"):

        def f(x):
            return x

        f.__module__ = module
        f.__qualname__ = f"compute_spectral_features_for_subject_and_session_version_{suffix}"
        memoized.append(cache.memoize(f))
    first, second = memoized
    first(1)
    second(1)
    second(2)
    info = cache.info()
    assert info.entries == 3
    assert len(info.functions) == 2


_POOL_FUNCTION = None


def _pool_call(x):
    return _POOL_FUNCTION(x)


@pytest.mark.timeout(60)
def test_info_includes_counts_from_pool_workers(location):
    global _POOL_FUNCTION
    cache = cachelib.Cache(location)

    def cube(x):
        time.sleep(0.02)
        return x**3

    _POOL_FUNCTION = cache.memoize(cube)
    try:
        pool = FORK.Pool(2)
        assert pool.map(_pool_call, [1, 2, 3, 1, 2, 3], chunksize=1) == [1, 8, 27, 1, 8, 27]
        pool.close()  # workers that exit (not terminate()d) write their last counts
        pool.join()
    finally:
        memoized, _POOL_FUNCTION = _POOL_FUNCTION, None
    assert memoized.stats.hits == memoized.stats.misses == 0  # nothing ran in this process
    assert memoized(2) == 8  # a hit here too
    info = cachelib.Cache(location).info().functions[memoized.name]
    assert info.entries == 3
    assert info.misses == 3
    assert info.hits == 4


# --- logging --------------------------------------------------------------------------------


@pytest.fixture
def restore_cachelib_logger():
    """Start from a pristine ``cachelib`` logger (as in a fresh process); restore it after."""
    logger = logging.getLogger("cachelib")
    level, handlers = logger.level, list(logger.handlers)
    logger.setLevel(logging.NOTSET)
    logger.handlers[:] = []
    yield logger
    logger.setLevel(level)
    logger.handlers[:] = handlers


def test_verbose_prints_one_line_per_miss(location, capsys, restore_cachelib_logger):
    cache = cachelib.Cache(location, verbose=1)

    @cache.memoize
    def f(x):
        return x

    f(1)
    f(1)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("[cachelib] miss f(x=1): nothing stored for this function yet; computed in ")


def test_default_prints_nothing(location, capsys, restore_cachelib_logger):
    cache = cachelib.Cache(location)

    @cache.memoize
    def f(x):
        return x

    f(1)
    f(1)
    cache.info()
    cache.reduce_size(items_limit=0)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == ""


def test_default_cache_is_quiet_after_a_verbose_one(tmp_path, capsys, restore_cachelib_logger):
    cachelib.Cache(tmp_path / "loud", verbose=1)
    quiet = cachelib.Cache(tmp_path / "quiet")
    quiet.memoize(lambda x: x)(1)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == ""


# --- store layout ---------------------------------------------------------------------------


def test_layout_function_directories_shards_and_markers(cache, location):
    @cache.memoize
    def square(x):
        return x * x

    square(3)
    square(4)
    directories = [p for p in location.iterdir() if p.is_dir()]
    assert len(directories) == 1
    assert re.fullmatch(
        r"[\w.-]*test_layout_function_directories_shards_and_markers\.square-[0-9a-f]{12}",
        directories[0].name,
    ), directories[0].name
    entries = entry_files(location)
    assert len(entries) == 2
    for entry in entries:
        relative = entry.relative_to(location).parts
        assert len(relative) == 3, relative
        assert relative[0] == directories[0].name
        assert re.fullmatch(r"[0-9a-f]{2}", relative[1])
        assert re.fullmatch(r"[0-9a-f]{32}\.cl", relative[2])
        assert relative[2].startswith(relative[1])
    assert "*" in (location / ".gitignore").read_text().splitlines()
    assert (location / "CACHEDIR.TAG").read_text().startswith("Signature: 8a477f597d28d172789f06886806bc55")


def test_location_is_created_private(tmp_path):
    location = tmp_path / "deeper" / "cache"
    old = os.umask(0o022)
    try:
        cache = cachelib.Cache(location)
        cache.memoize(lambda x: x)(1)
    finally:
        os.umask(old)
    assert stat.S_IMODE(location.stat().st_mode) == 0o700


ODD_NAMES = [
    ("../../..", "../../escape"),
    ("/etc", "/passwd"),
    ("mod", "a/../../b"),
    ("..", ".."),
    (".", "."),
    ("mod", "x" * 400),
    ("mod", "sp ace\ttab\nnew"),
    ("mod", "..\\..\\windows"),
    ("mod", "<lambda>.<locals>.<genexpr>"),
    ("mod", "ünï/cödé"),
    ("", ""),
]


def test_odd_qualnames_never_make_paths_outside_the_location(tmp_path, location):
    cache = cachelib.Cache(location)
    for index, (module, qualname) in enumerate(ODD_NAMES):

        def f(x, _index=index):
            return x + _index

        f.__module__ = module
        f.__qualname__ = qualname
        memoized = cache.memoize(f)
        assert memoized(1) == 1 + index
        assert memoized.check_call_in_cache(1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"]
    for path in tmp_path.rglob("*"):
        assert path.resolve().is_relative_to(location.resolve()), path
    function_dirs = [p for p in location.iterdir() if p.is_dir()]
    assert len(function_dirs) == len(ODD_NAMES)  # no two collide


# --- damage and failures --------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty", "flipped"])
def test_corrupt_entry_warns_once_recomputes_and_is_rewritten(cache, location, damage, calls):

    @cache.memoize
    def f(x):
        CALLS.append(x)
        return np.arange(1000) * x

    f(2)
    (entry,) = entry_files(location)
    data = entry.read_bytes()
    if damage == "garbage":
        entry.write_bytes(os.urandom(len(data)))
    elif damage == "truncated":
        entry.write_bytes(data[: len(data) // 2])
    elif damage == "empty":
        entry.write_bytes(b"")
    else:
        flipped = bytearray(data)
        flipped[len(data) // 2] ^= 0xFF
        entry.write_bytes(bytes(flipped))
    with pytest.warns(cachelib.CacheWarning) as record:
        result = f(2)
    assert len(record) == 1
    assert np.array_equal(result, np.arange(1000) * 2)
    assert calls == [2, 2]
    assert entry_stream(entry.read_bytes())[:8] == CACHELIB_MAGIC  # rewritten whole
    with no_warnings():
        assert np.array_equal(f(2), np.arange(1000) * 2)
    assert calls == [2, 2]


def test_unpicklable_result_raises_and_leaves_nothing(cache, location, calls):

    @cache.memoize
    def make_lock(x):
        CALLS.append(x)
        return threading.Lock()

    for expected in (1, 2):
        with pytest.raises(cachelib.SerializationError):
            make_lock(1)
        assert len(calls) == expected
    assert entry_files(location) == []
    assert tmp_files(location) == []
    assert not make_lock.check_call_in_cache(1)


def test_unusable_location_still_returns_the_value(tmp_path, calls):
    blocker = tmp_path / "afile"
    blocker.write_text("a regular file")
    cache = cachelib.Cache(blocker / "cache")

    @cache.memoize
    def f(x):
        CALLS.append(x)
        return np.arange(3) + x

    with pytest.warns(cachelib.CacheWarning) as record:
        result = f(1)
    assert len(record) == 1
    assert np.array_equal(result, [1, 2, 3])
    assert calls == [1]
    assert blocker.read_text() == "a regular file"


def test_check_call_in_cache_on_unusable_location_is_false(tmp_path):
    blocker = tmp_path / "afile"
    blocker.write_text("")
    f = cachelib.Cache(blocker / "cache").memoize(lambda x: x)
    assert f.check_call_in_cache(1) is False


# --- expiry ---------------------------------------------------------------------------------


# Each case sleeps past its expiry: the slow timedelta case's quick counterpart is
# test_expiry_reads_the_time_stored_inside_the_entry, whose expiry is a timedelta.
@pytest.mark.parametrize("expiry", [
    pytest.param(0.5, id="seconds"),
    pytest.param(datetime.timedelta(seconds=0.5), id="timedelta", marks=pytest.mark.slow),  # see above
])
def test_expired_entry_is_recomputed(cache, location, expiry, calls):

    @cache.memoize(expires_after=expiry)
    def f(x):
        CALLS.append(x)
        return x

    f(1)
    f(1)
    assert calls == [1]
    time.sleep(0.6)
    assert not f.check_call_in_cache(1)
    assert f(1) == 1
    assert calls == [1, 1]
    assert f.check_call_in_cache(1)
    assert f(1) == 1
    assert calls == [1, 1]


def test_expiry_reads_the_time_stored_inside_the_entry(cache, location, calls):
    """Touching an expired entry, or restoring an old copy of it, does not revive it."""

    @cache.memoize(expires_after=datetime.timedelta(seconds=0.5))
    def f(x):
        CALLS.append(x)
        return x

    f(1)
    (entry,) = entry_files(location)
    old = entry.read_bytes()
    time.sleep(0.6)
    os.utime(entry)  # fresh mtime and atime
    assert not f.check_call_in_cache(1)
    assert f(1) == 1
    assert calls == [1, 1]
    entry.write_bytes(old)  # a replayed copy of the expired entry
    assert f(1) == 1
    assert calls == [1, 1, 1]


def test_expiry_in_real_time(location, calls):
    cache = cachelib.Cache(location, expires_after=0.5)

    @cache.memoize
    def f(x):
        CALLS.append(x)
        return x

    f(1)
    f(1)
    assert calls == [1]
    time.sleep(0.7)
    f(1)
    assert calls == [1, 1]


def test_negative_expiry_raises(cache, location):
    with pytest.raises(cachelib.InvalidOptionError):
        cache.memoize(lambda x: x, expires_after=-1)
    with pytest.raises(cachelib.InvalidOptionError):
        cachelib.Cache(location, expires_after=datetime.timedelta(seconds=-3))


# --- signed entries -------------------------------------------------------------------------

UNPICKLED = Calls()


class Tracked:
    """A result that records every time it is unpickled."""

    def __init__(self, value):
        self.value = value

    def __setstate__(self, state):
        UNPICKLED.append(state)
        self.__dict__.update(state)


@pytest.fixture
def tracked():
    UNPICKLED.clear()
    yield UNPICKLED
    UNPICKLED.clear()


def _signed_function(location, secret, **options):
    cache = cachelib.Cache(location, secret=secret, **options)

    def compute(x):
        CALLS.append(x)
        return {"tracked": Tracked(x), "array": np.arange(50) * x}

    return cache.memoize(compute)


def _check(result, x):
    assert result["tracked"].value == x
    assert np.array_equal(result["array"], np.arange(50) * x)


def test_signed_cache_hits(location, tracked, calls):
    f = _signed_function(location, os.urandom(32))
    _check(f(1), 1)
    with no_warnings():
        _check(f(1), 1)
    assert calls == [1]
    assert len(tracked) == 1  # the hit was unpickled once


def test_signed_cache_hits_with_mmap(location, calls):
    cache = cachelib.Cache(location, secret=os.urandom(32), mmap_mode="r")

    @cache.memoize
    def f(x):
        CALLS.append(x)
        return np.arange(20000.0) * x

    first = f(3)
    with no_warnings():
        second = f(3)
    assert isinstance(second, np.memmap)
    assert np.array_equal(first, np.arange(20000.0) * 3)
    assert np.array_equal(second, np.arange(20000.0) * 3)
    assert calls == [3]
    del first, second


@pytest.mark.parametrize(
    "where", ["magic", "tag_start", "tag_end", "metadata_start", "stream_start", "middle", "last"]
)
def test_signed_entry_with_a_flipped_byte_is_refused_before_unpickling(location, tracked, where, calls):
    f = _signed_function(location, os.urandom(32))
    f(1)
    (entry,) = entry_files(location)
    data = bytearray(entry.read_bytes())
    position = {
        "magic": 0,
        "tag_start": 8,
        "tag_end": 39,
        "metadata_start": HEADER_SIZE,
        "stream_start": entry_stream_offset(data),
        "middle": len(data) // 2,
        "last": len(data) - 1,
    }[where]
    data[position] ^= 0x01
    entry.write_bytes(bytes(data))
    with pytest.warns(cachelib.CacheWarning) as record:
        result = f(1)
    assert len(record) == 1
    _check(result, 1)
    assert calls == [1, 1]
    assert tracked == []  # the altered entry was never unpickled
    with no_warnings():
        _check(f(1), 1)  # rewritten and signed again
    assert calls == [1, 1]


def test_signed_entry_with_a_flipped_reserved_byte_is_refused(location, tracked, calls):
    f = _signed_function(location, os.urandom(32))
    f(1)
    (entry,) = entry_files(location)
    data = bytearray(entry.read_bytes())
    data[50] ^= 0x01
    entry.write_bytes(bytes(data))
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        _check(f(1), 1)
    assert [w for w in record if issubclass(w.category, cachelib.CacheWarning)]
    assert calls == [1, 1]


def test_signed_entry_copied_to_another_key_is_refused(location, tracked, calls):
    f = _signed_function(location, os.urandom(32))
    before = entry_files(location)
    f(1)
    one = new_entry(location, before)
    before = entry_files(location)
    f(2)
    two = new_entry(location, before)
    tracked.clear()
    shutil.copyfile(one, two)
    with pytest.warns(cachelib.CacheWarning):
        result = f(2)
    _check(result, 2)  # never the copied value 1
    assert calls == [1, 2, 2]
    assert tracked == []


def test_entry_signed_with_another_secret_is_refused(location, tracked, calls):
    writer = _signed_function(location, os.urandom(32))
    writer(1)
    reader = _signed_function(location, os.urandom(32))
    assert reader.check_call_in_cache(1)  # same key: only the signature differs
    tracked.clear()
    with pytest.warns(cachelib.CacheWarning):
        result = reader(1)
    _check(result, 1)
    assert calls == [1, 1]
    assert tracked == []


def test_unsigned_entry_is_refused_by_a_signed_cache(location, tracked, calls):
    unsigned = cachelib.Cache(location)

    def compute(x):
        CALLS.append(x)
        return {"tracked": Tracked(x), "array": np.arange(50) * x}

    unsigned.memoize(compute)(1)
    signed = cachelib.Cache(location, secret=os.urandom(32)).memoize(compute)
    assert signed.check_call_in_cache(1)  # same key: only the signature is missing
    tracked.clear()
    with pytest.warns(cachelib.CacheWarning):
        _check(signed(1), 1)
    assert calls == [1, 1]
    assert tracked == []


@pytest.mark.parametrize("secret", [b"", b"short", os.urandom(15), "a text secret of enough length"])
def test_bad_secret_raises(location, secret):
    with pytest.raises(cachelib.InvalidOptionError):
        cachelib.Cache(location, secret=secret)


def test_secret_of_16_bytes_is_accepted(location):
    f = cachelib.Cache(location, secret=os.urandom(16)).memoize(lambda x: x + 1)
    assert f(1) == 2
    assert f(1) == 2


# --- locks ----------------------------------------------------------------------------------


def _run_threads(target, count):
    results: list = []
    errors: list = []

    def run():
        try:
            results.append(target())
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not any(thread.is_alive() for thread in threads)
    assert errors == []
    return results


@pytest.mark.timeout(30)
@pytest.mark.parametrize("lock", slow_except(["file", "soft"], "file"))  # soft locks poll: a second
def test_threads_compute_a_slow_call_once(location, lock, calls):
    cache = cachelib.Cache(location, lock=lock)

    @cache.memoize(ignore=["_GUARD"])  # a lock: not part of what the result depends on
    def slow(x):
        with _GUARD:
            CALLS.append(x)
        time.sleep(0.3)
        return np.arange(4) * x

    results = _run_threads(lambda: slow(5), 8)
    assert calls == [5]
    assert len(results) == 8
    for result in results:
        assert np.array_equal(result, np.arange(4) * 5)


@pytest.mark.timeout(30)
def test_lock_none_works(location, calls):
    cache = cachelib.Cache(location, lock="none")

    @cache.memoize(ignore=["_GUARD"])
    def slow(x):
        with _GUARD:
            CALLS.append(x)
        time.sleep(0.1)
        return x * 2

    results = _run_threads(lambda: slow(5), 4)
    assert results == [10] * 4
    assert 1 <= len(calls) <= 4
    computed = len(calls)
    assert slow(5) == 10
    assert len(calls) == computed  # stored by then
    assert not list(location.rglob("*.lock"))


def test_mmap_mode_r_plus_is_refused(location, cache):
    with pytest.raises(cachelib.InvalidOptionError):
        cachelib.Cache(location, mmap_mode="r+")
    with pytest.raises(cachelib.InvalidOptionError):
        cache.memoize(lambda x: x, mmap_mode="r+")
    with pytest.raises(cachelib.InvalidOptionError):
        cache.memoize(lambda x: x, mmap_mode="w")


def test_bad_lock_options_raise(location):
    with pytest.raises(cachelib.InvalidOptionError):
        cachelib.Cache(location, lock="hard")
    with pytest.raises(cachelib.InvalidOptionError):
        cachelib.Cache(location, on_lock_timeout="wait")


def _logged_computation(log, seconds):
    """A function that appends ``pid start end`` to ``log`` for each real computation."""

    def compute(x):
        started = time.time()
        time.sleep(seconds)
        with open(log, "a") as handle:
            handle.write(f"{os.getpid()} {started} {time.time()}\n")
        return x * 3

    return compute


def _log_lines(log):
    return [line.split() for line in log.read_text().splitlines()] if log.exists() else []


@pytest.mark.timeout(60)
def test_processes_compute_the_same_key_once(tmp_path, location):
    log = tmp_path / "log.txt"
    f = cachelib.Cache(location).memoize(_logged_computation(log, 0.5))
    go = FORK.Event()

    def child():
        go.wait(20)
        assert f(7) == 21

    processes = [FORK.Process(target=child) for _ in range(4)]
    for process in processes:
        process.start()
    time.sleep(0.2)
    go.set()
    for process in processes:
        process.join(30)
    assert [p.exitcode for p in processes] == [0, 0, 0, 0]
    assert len(_log_lines(log)) == 1
    assert f(7) == 21
    assert len(_log_lines(log)) == 1


@pytest.mark.slow  # two processes computing for a second each; test_processes_compute_the_same_key_once locks
@pytest.mark.timeout(60)
def test_processes_compute_different_keys_concurrently(tmp_path, location):
    seconds = 1.0
    log = tmp_path / "log.txt"
    f = cachelib.Cache(location).memoize(_logged_computation(log, seconds))
    go = FORK.Event()

    def child(x):
        go.wait(20)
        assert f(x) == 3 * x

    processes = [FORK.Process(target=child, args=(x,)) for x in (1, 2)]
    for process in processes:
        process.start()
    time.sleep(0.2)
    go.set()
    for process in processes:
        process.join(30)
    assert [p.exitcode for p in processes] == [0, 0]
    lines = _log_lines(log)
    assert len(lines) == 2
    starts = [float(line[1]) for line in lines]
    ends = [float(line[2]) for line in lines]
    assert max(starts) < min(ends), "the two computations did not overlap"


def _hold_key_in_child(tmp_path, location):
    """Start a child computing ``compute(1)`` that holds the key's lock until ``release()`` is called;
    return (process, log, compute, release) once it holds the lock. In this process, ``compute``
    computes at once."""
    log = tmp_path / "log.txt"
    marker = tmp_path / "started"
    released = tmp_path / "released"
    logged = _logged_computation(log, 0.0)
    parent = os.getpid()

    def compute(x):
        if os.getpid() != parent:  # the child: hold the lock until the test releases it
            marker.write_text("x")
            wait_until(released.exists, 30, interval=0.01)
        return logged(x)

    def release():
        released.write_text("x")

    holder = cachelib.Cache(location).memoize(compute)
    process = FORK.Process(target=holder, args=(1,))
    process.start()
    wait_until(marker.exists, 20, interval=0.01)
    assert marker.exists(), "the child never started computing"
    return process, log, compute, release


@pytest.mark.timeout(60)
def test_lock_timeout_raise(tmp_path, location):
    process, log, compute, release = _hold_key_in_child(tmp_path, location)
    try:
        impatient = cachelib.Cache(location, lock_timeout=0.2, on_lock_timeout="raise").memoize(compute)
        started = time.perf_counter()
        with pytest.raises(cachelib.LockTimeout) as info:
            impatient(1)
        elapsed = time.perf_counter() - started
        assert isinstance(info.value, TimeoutError)
        assert isinstance(info.value, cachelib.CacheError)
        assert 0.15 <= elapsed < 5.0, elapsed  # gave up after lock_timeout, not when the child was done
        assert _log_lines(log) == []  # the caller did not compute
    finally:
        release()
        process.join(30)
    assert process.exitcode == 0
    assert len(_log_lines(log)) == 1
    assert impatient(1) == 3  # stored by the child: a hit
    assert len(_log_lines(log)) == 1


@pytest.mark.timeout(60)
def test_lock_timeout_compute_computes_anyway(tmp_path, location):
    process, log, compute, release = _hold_key_in_child(tmp_path, location)
    try:
        impatient = cachelib.Cache(location, lock_timeout=0.2).memoize(compute)
        assert impatient(1) == 3
        # This process computed it itself (a wait for the child would have been a hit).
        assert os.getpid() in [int(line[0]) for line in _log_lines(log)]
    finally:
        release()
        process.join(30)
    assert process.exitcode == 0
    assert len(_log_lines(log)) == 2
    assert impatient(1) == 3


# --- size limits ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("500M", 500 * 2**20),
        ("10G", 10 * 2**30),
        ("1.5K", 1536),
        ("1K", 1024),
        ("10GB", 10 * 2**30),
        (" 7 ", 7),
        (1024, 1024),
        (0, 0),
    ],
)
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("bad", ["", "abc", "10X", "-1", "1.2.3M", "M", -5, True, None, 1.5])
def test_parse_size_rejects_bad_sizes(bad):
    with pytest.raises(cachelib.InvalidOptionError):
        parse_size(bad)


def test_bad_bytes_limit_raises(location):
    with pytest.raises(cachelib.InvalidOptionError):
        cachelib.Cache(location, bytes_limit="lots")


def _five_entries(cache, location):
    """Store f(0)..f(4), each stored (and last used) further in the past the lower its x."""

    @cache.memoize
    def f(x):
        CALLS.append(x)
        return np.full(1000, x, dtype=np.float64)

    paths = {}
    now = time.time()
    for x in range(5):
        before = entry_files(location)
        f(x)
        paths[x] = new_entry(location, before)
    for x, path in paths.items():
        moment = now - 1000 + 10 * x
        os.utime(path, (moment, moment))
    return f, paths


def test_reduce_size_items_limit_keeps_the_recently_used(cache, location, calls):
    f, paths = _five_entries(cache, location)
    stored = paths[0].stat().st_mtime
    assert f(0)[0] == 0  # a hit: f(0) is now the most recently used
    assert calls == [0, 1, 2, 3, 4]
    assert paths[0].stat().st_atime > time.time() - 60  # the use was stamped ...
    assert paths[0].stat().st_mtime == stored  # ... without changing when it was stored
    assert cache.reduce_size(items_limit=3) == 2
    kept = {x for x in range(5) if f.check_call_in_cache(x)}
    assert kept == {0, 3, 4}
    assert cache.reduce_size(items_limit=3) == 0


def test_reduce_size_bytes_limit(cache, location, calls):
    f, paths = _five_entries(cache, location)
    f(0)
    sizes = {x: p.stat().st_size for x, p in paths.items()}
    limit = sizes[0] + sizes[3] + sizes[4] + 100
    assert cache.reduce_size(bytes_limit=limit) == 2
    assert {x for x in range(5) if f.check_call_in_cache(x)} == {0, 3, 4}
    assert sum(p.stat().st_size for p in entry_files(location)) <= limit
    assert cache.reduce_size(bytes_limit="1K") == 3
    assert entry_files(location) == []


def test_reduce_size_age_limit_removes_entries_stored_long_ago(cache, location, calls):
    f, paths = _five_entries(cache, location)
    for x in (2, 3, 4):  # stored recently
        os.utime(paths[x], None)
    f(0)  # used recently, but stored long ago
    assert cache.reduce_size(age_limit=500) == 2
    assert {x for x in range(5) if f.check_call_in_cache(x)} == {2, 3, 4}
    assert cache.reduce_size(age_limit=datetime.timedelta(seconds=500)) == 0


@pytest.mark.timeout(60)
def test_bytes_limit_is_enforced_automatically(location):
    limit = 100 * 1024
    cache = cachelib.Cache(location, bytes_limit="100K")

    @cache.memoize
    def f(x):
        return np.full(1000, x, dtype=np.float64)  # about 8 KB per entry

    largest = 0
    for x in range(40):
        f(x)
        total = sum(p.stat().st_size for p in entry_files(location))
        largest = max(largest, total)
    assert largest <= limit * 1.05, largest
    assert len(entry_files(location)) >= 5  # it evicts down to the limit, not to nothing
    assert f.check_call_in_cache(39)  # the newest entry survives
