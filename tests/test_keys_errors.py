"""A key is right or refused with ``UnhashableError`` naming where, never a raw exception (item 6)."""

from __future__ import annotations

import pickle
import sys
import threading

import numpy as np
import pytest

import cachelib
from cachelib._keys import encoding

pytestmark = pytest.mark.timeout(60)

h = cachelib.hash


class _Exploding:
    def __init__(self, error: BaseException) -> None:
        self.error = error

    def __reduce_ex__(self, protocol):
        raise self.error


class _Endless:
    """An object whose reduction holds a new object every time: pickle recurses too."""

    def __reduce_ex__(self, protocol):
        return (_Endless, (), {"next": _Endless()})


@pytest.mark.parametrize("error", [ValueError("v"), AttributeError("a"), KeyError("k"), RuntimeError("r")])
def test_any_failure_while_hashing_is_an_unhashable_error_naming_the_path(error):
    with pytest.raises(cachelib.UnhashableError, match=r"obj\['data'\]\[1\].*_Exploding") as info:
        h({"data": [0, _Exploding(error)]})
    assert isinstance(info.value, TypeError)


# The real limit takes seconds to reach: the fast tier lowers it, the slow tier reaches it.
@pytest.mark.parametrize("limit", [1_000, pytest.param(None, marks=pytest.mark.slow)],
                         ids=["lowered", "real"])
def test_an_endless_reduction_is_refused_not_a_recursion_error(limit, monkeypatch):
    if limit is not None:
        monkeypatch.setattr(encoding, "_MAX_DEPTH", limit)
    with pytest.raises(cachelib.UnhashableError):
        h(_Endless())


def test_the_argument_and_the_path_inside_it_are_named(cache):
    @cache.memoize
    def f(x, options):
        return x

    with pytest.raises(cachelib.UnhashableError, match=r"argument 'options' at options\['k'\]\[0\]"):
        f(1, {"k": [threading.Lock()]})


@pytest.mark.parametrize("kind", [list, tuple, dict])
def test_values_as_deep_as_pickle_writes_hash(kind):
    levels = [kind()]
    while len(levels) < 3000:  # as deep as pickle goes (about 1,000 levels before Python 3.13, more since)
        value = levels[-1]
        deeper = [value] if kind is list else (value,) if kind is tuple else {"k": value}
        try:
            pickle.loads(pickle.dumps(deeper))
        except RecursionError:
            break
        levels.append(deeper)
    # A few levels short of the edge: how deep pickle reaches depends on the stack at the call.
    value, depth = levels[-10], len(levels) - 10
    assert depth > 100
    assert h(value) == h(pickle.loads(pickle.dumps(value)))
    for _ in range(20 * depth):  # far deeper still, within its 100,000 levels: the hasher keeps its own stack
        value = [value]
    h(value)


def test_a_deep_chain_of_objects_hashes():
    class Node:
        def __init__(self, child):
            self.child = child

    node = None
    for _ in range(3000):
        node = Node(node)
    h(node)


def test_ignore_exempts_an_argument_whose_default_is_unhashable(cache):
    @cache.memoize(ignore=["out"])
    def report(x, out=sys.stdout):
        return x * 2

    assert report(2) == 4
    assert report.check_call_in_cache(2)


def test_an_unhashable_default_that_is_not_ignored_fails_at_the_call_naming_it(cache):
    @cache.memoize
    def report(x, out=sys.stdout):
        return x

    with pytest.raises(cachelib.UnhashableError, match="argument 'out'"):
        report(1)


def test_serialization_error_names_the_result_not_an_internal_tuple(cache):
    @cache.memoize
    def make_lock(x):
        return threading.Lock()

    expected = r"result of .*make_lock \(a _thread\.lock\)"
    with pytest.raises(cachelib.SerializationError, match=expected) as info:
        make_lock(1)
    assert "a tuple" not in str(info.value)


def test_a_wrong_call_raises_type_error_like_the_function(cache):
    @cache.memoize
    def f(x):
        return x

    with pytest.raises(TypeError):
        f(1, 2)
    with pytest.raises(TypeError):
        f(y=1)


def test_object_arrays_that_contain_themselves_hash():
    array = np.empty(2, dtype=object)
    array[0] = array
    array[1] = [array]
    assert h(array) == h(array)


def _hash_a_lock_in_a_worker():
    import threading

    return cachelib.hash([1, {"k": threading.Lock()}])


def test_a_workers_errors_reach_the_parent_with_their_data():
    """Errors carry their data as constructor attributes, which pickling keeps: a worker's
    ``UnhashableError`` reaches the parent with ``path``, a ``FileAccessError`` with ``path``."""
    import multiprocessing
    import pickle

    spawn = multiprocessing.get_context("spawn")
    with spawn.Pool(1) as pool, pytest.raises(cachelib.UnhashableError) as caught:
        pool.apply(_hash_a_lock_in_a_worker)
    assert caught.value.path == "[1]['k']"
    errors = (cachelib.FileAccessError("gone", path="/tmp/x"), cachelib.UnsafeLocationError("no", path="/d"),
              cachelib.CorruptFileError("torn", path="/f"), cachelib.LockTimeout("late", timeout=2.5),
              cachelib.UnknownCompressorError("which", name="zz"),
              cachelib.MissingDependencyError("pip", package="lz4"))
    for error in errors:
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is type(error) and str(copy) == str(error) and copy.__dict__ == error.__dict__
