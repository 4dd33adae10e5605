"""The call summary each entry keeps in its metadata (``metadata["call"]``, shown by ``cachelib ls``)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import Calls

import cachelib
from cachelib._memo.summary import LIMIT, CallSummary, describe_value

REPRS = Calls()


class Counted:
    """A value that records each time it is repr'd."""

    def __repr__(self) -> str:
        REPRS.append(1)
        return "Counted()"

    def __reduce__(self):
        return (Counted, ())


class Broken:
    def __repr__(self) -> str:
        raise RuntimeError("no repr")


class CountingList(list):
    """A list subclass that counts the items read from it."""

    read = 0

    def __iter__(self):
        for item in super().__iter__():
            CountingList.read += 1
            yield item


def fit(data, labels=None, *extra, verbose=False, **options):
    return 0


def describe(*args, ignore=(), **kwargs) -> str:
    summary = CallSummary(fit, ignore).describe(args, kwargs)
    assert summary is not None
    return summary


def test_arrays_show_shape_and_dtype_never_values():
    big = np.arange(10**6, dtype=np.int32).reshape(1000, 1000)
    text = describe(big, labels=np.zeros(3, dtype="<U2"))
    assert text == (
        "fit(data=ndarray(shape=(1000, 1000), dtype=int32), labels=ndarray(shape=(3,), dtype=<U2), "
        "*extra=(), verbose=False, **options={})"
    )


def test_arguments_are_bound_with_defaults_and_ignored_ones_left_out():
    assert describe(1, 2, 3, verbose=True, alpha=0.5, ignore=["verbose", "**"]) == (
        "fit(data=1, labels=2, *extra=(3,))"
    )


@pytest.mark.parametrize(
    "value",
    [
        "x" * 10**6,
        b"\x00" * 10**6,
        list(range(10**5)),
        {str(i): i for i in range(10**5)},
        set(range(10**5)),
        10**5000,
        [[[[[[1]]]]]],
        "\u00e9\U0001f600" * 1000,
        "\x00\x01" * 1000,
    ],
    ids=["str", "bytes", "list", "dict", "set", "int", "nested", "unicode", "control"],
)
def test_summaries_are_bounded_ascii(value):
    text = describe(value, value)
    assert text.isascii()
    assert len(json.dumps(text)) <= LIMIT
    assert text.startswith("fit(data=")


def test_containers_are_read_only_as_far_as_shown():
    CountingList.read = 0
    text = describe_value(CountingList(range(10**6)))
    assert text == "CountingList([0, 1, 2, 3, ...])"
    assert CountingList.read <= 5


def test_a_failing_repr_never_fails_the_summary():
    assert describe(Broken()).startswith("fit(data=<Broken instance at")


def test_functions_without_a_signature_are_summarised_by_position():
    summary = CallSummary(max).describe((3, 4), {"default": 0})
    assert summary == "max(3, 4, default=0)"


def test_a_miss_stores_the_summary_a_hit_computes_none(tmp_path):
    cache = cachelib.Cache(tmp_path / "cache")
    memoized = cache.memoize(fit)
    REPRS.clear()
    memoized(Counted(), verbose=True)
    assert REPRS == [1]
    memoized(Counted(), verbose=True)
    assert REPRS == [1]
    key = memoized._key((Counted(),), {"verbose": True})
    metadata = cache.entries.head(memoized.namespace, key).metadata
    assert metadata["call"] == "fit(data=Counted(), labels=None, *extra=(), verbose=True, **options={})"
