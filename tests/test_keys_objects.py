"""Objects hash by everything that decides their behaviour (issue 10, items 4 and 5).

Dataclasses keep the state pickle keeps; only a real ``functools.partial`` is a
partial; enum members hash by value; torch tensors by content in any process;
polars frames by their Arrow buffers, in place; order counts where a program can
see it (dict insertion order, ``OrderedDict``, ``**kwargs``), sets stay order-free.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import enum
import functools
import json
import os
import re
import subprocess
import sys
import textwrap
import warnings
from unittest import mock

import pytest
from helpers import run_python

import cachelib

h = cachelib.hash


@dataclasses.dataclass
class Point:
    x: int
    y: int = 0


class Registry(dict):
    """A dict subclass: its items are its state, besides its attributes."""


def test_a_dataclass_hashes_state_set_after_init():
    plain, tagged = Point(1), Point(1)
    tagged.label = "late"
    assert h(plain) == h(Point(1))
    assert h(plain) != h(tagged)
    assert h(Point(1, 2)) != h(Point(2, 1))


def test_a_dict_subclass_hashes_its_items_and_attributes():
    first, second = Registry(a=1), Registry(a=2)
    assert h(first) != h(second)
    assert h(first) != h({"a": 1})
    first.owner = "me"
    assert h(first) != h(Registry(a=1))


def test_only_a_real_partial_is_a_partial():
    class LooksLikeOne:
        def __init__(self, tag):
            self.func, self.args, self.keywords, self.tag = print, (), {}, tag

        def __call__(self):
            return self.tag

    assert h(LooksLikeOne(1)) != h(LooksLikeOne(2))
    assert h(functools.partial(max, 1)) != h(functools.partial(min, 1))


def test_a_mock_hashes_or_refuses_but_never_recurses():
    with contextlib.suppress(cachelib.UnhashableError):
        h(mock.Mock())


def test_a_dask_delayed_hashes_by_its_graph():
    dask = pytest.importorskip("dask", reason="dask is not installed")
    first = dask.delayed(sum)([1, 2])
    second = dask.delayed(sum)([1, 3])
    assert h(first) == h(first)
    assert h(first) != h(second)


class Permission(enum.Flag):
    READ = 1
    WRITE = 2


class Level(enum.IntFlag):
    LOW = 1


class Color(enum.Enum):
    RED = 1
    CRIMSON = 1  # an alias: the same member


def test_enum_members_hash_by_value_even_without_a_name():
    _ = [h(Permission(0)), h(Level(8)), h(Permission.READ | Permission.WRITE)]
    assert h(Permission(0)) != h(Permission.READ)
    assert h(Level(8)) != h(Level(0))
    assert h(Color.RED) == h(Color.CRIMSON)
    assert h(Permission.READ | Permission.WRITE) == h(Permission(3))


class Mode(enum.Enum):
    FAST = "fast"
    SAFE = "safe"

    def _missing_(cls, value):  # a method of the user's own: part of the class's code
        return None


def test_a_users_enum_is_keyed_by_members_and_code_without_its_bookkeeping(cache):
    """The enum machinery's tables (``_member_map_`` and the like, which hold the members
    themselves) are derived from the members: walking them only recursed, and warned."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "left out of its key" warning
        assert h(Mode.FAST) != h(Mode.SAFE)
        assert h(Level.LOW) == h(Level.LOW) and h(Color.RED) == h(Color.CRIMSON)

        namespace = {"enum": enum, "__name__": "test_keys_objects_enum_edit"}
        source = "class Speed(enum.Enum):\n    SLOW = {}\n\ndef pick(x):\n    return x * Speed.SLOW.value\n"
        exec(source.format(1), namespace)
        pick = cache.memoize(namespace["pick"])
        assert pick(3) == 3
        exec(source.format(2), namespace)  # the enum redefined with another value: a miss
        pick = cache.memoize(namespace["pick"])
        assert pick(3) == 6


_ENUM_SCRIPT = """
import enum, json, warnings, cachelib
caught = warnings.catch_warnings(record=True).__enter__()
warnings.simplefilter("always")

class Flavour(enum.Enum):
    PLAIN = 1
    SWEET = 2

class Weight(enum.IntFlag):
    LIGHT = 1
    HEAVY = 2

print(json.dumps([cachelib.hash(Flavour.PLAIN) != cachelib.hash(Flavour.SWEET),
                  cachelib.hash(Weight.LIGHT | Weight.HEAVY) == cachelib.hash(Weight(3)),
                  [str(warning.message) for warning in caught]]))
"""


def test_an_enum_of_a_script_hashes_without_warnings(tmp_path):
    """In ``__main__``, walking the enum's tables recursed through its members and warned."""
    script = tmp_path / "flavours.py"
    script.write_text(_ENUM_SCRIPT)
    assert run_python(script) == [True, True, []]


# --- torch ------------------------------------------------------------------------------------

_TORCH_SCRIPT = """
import json, torch, cachelib
torch.manual_seed(0)
values = torch.arange(12, dtype=torch.float32).reshape(3, 4)
print(json.dumps([cachelib.hash(values), cachelib.hash(values.T), cachelib.hash(torch.nn.Linear(2, 2))]))
"""


def test_torch_tensors_hash_by_content_in_every_process():
    torch = pytest.importorskip("torch", reason="torch is not installed")
    a = torch.arange(6, dtype=torch.float32)
    assert h(a) == h(a.clone())
    assert h(a) != h(a + 1)
    assert h(a) != h(a.to(torch.float64))
    assert h(a.reshape(2, 3).T) == h(a.reshape(2, 3).T.contiguous())
    assert h(a) != h(a.requires_grad_(True))
    assert h(torch.tensor([1.0], dtype=torch.bfloat16)) != h(torch.tensor([1.0], dtype=torch.float16))
    runs = [subprocess.run([sys.executable, "-c", _TORCH_SCRIPT], capture_output=True, text=True,
                           timeout=100, check=True).stdout for _ in range(2)]
    assert json.loads(runs[0]) == json.loads(runs[1])


def test_hashing_a_non_tensor_never_imports_torch():
    script = ("import sys, numpy, cachelib; cachelib.hash([numpy.arange(3), {'a': 1}]); "
              "print('torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60, check=True)
    assert done.stdout.strip() == "False"


# --- polars and pandas ---------------------------------------------------------------------------


def test_polars_frames_hash_by_their_arrow_buffers():
    pl = pytest.importorskip("polars", reason="polars is not installed")
    frame = pl.DataFrame({"a": [1, 2, 3], "s": ["x", "y" * 30, None], "f": [1.5, None, 2.0]})
    same = pl.DataFrame({"a": [1, 2, 3], "s": ["x", "y" * 30, None], "f": [1.5, None, 2.0]})
    assert h(frame) == h(same)
    _distinct_all([
        frame,
        frame.with_columns(pl.col("a") + 1),
        frame.rename({"a": "b"}),
        frame.select(["s", "a", "f"]),
        frame.with_columns(pl.col("a").cast(pl.Int32)),
        frame.with_columns(pl.col("s").fill_null("z")),
        frame.head(2),
        frame["a"],
    ])
    categorical = pl.DataFrame({"c": pl.Series(["u", "v", "u"], dtype=pl.Categorical)})
    assert h(categorical) != h(pl.DataFrame({"c": ["u", "v", "u"]}))
    assert h(pl.DataFrame({"l": [[1], [2, 3]]})) != h(pl.DataFrame({"l": [[1, 2], [3]]}))


_POLARS_MEMORY = textwrap.dedent(
    """
    import json, re
    import numpy as np, polars as pl, cachelib

    def peak():
        with open("/proc/self/status") as f:
            return int(re.search(r"VmHWM:\\s+(\\d+) kB", f.read()).group(1)) * 1024

    frame = pl.DataFrame({"a": np.random.default_rng(0).random(40_000_000)})  # 320 MB
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = peak()
    cachelib.hash(frame)
    print(json.dumps(peak() - before))
    """
)


@pytest.mark.slow  # a 320 MB frame: test_polars_frames_hash_by_their_arrow_buffers is the quick case
@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux /proc")
def test_polars_frames_are_hashed_without_a_copy():
    pytest.importorskip("polars", reason="polars is not installed")
    assert run_python("-c", _POLARS_MEMORY, timeout=100) < 64 * 2**20  # far below the frame's 320 MB


def test_pandas_frames_hash_their_columns_in_order():
    pd = pytest.importorskip("pandas", reason="pandas is not installed")
    frame = pd.DataFrame({"a": [1, 2], "b": ["x", "y"]})
    assert h(frame) == h(pd.DataFrame({"a": [1, 2], "b": ["x", "y"]}))
    _distinct_all([frame, frame[["b", "a"]], frame.assign(a=[1, 3]), frame.set_index("a")])


def _distinct_all(values: list) -> None:
    digests = [h(v) for v in values]
    assert len(set(digests)) == len(digests), [i for i, d in enumerate(digests) if digests.count(d) > 1]


# --- order where a program can see it ---------------------------------------------------------


def test_dict_and_ordered_dict_order_counts_and_set_order_does_not():
    assert h({"b": 1, "a": 2}) != h({"a": 2, "b": 1})
    assert h(collections.OrderedDict(a=1, b=2)) != h(collections.OrderedDict(b=2, a=1))
    assert h(collections.OrderedDict(a=1)) != h({"a": 1})
    assert h({3, 1, 2}) == h({2, 3, 1})
    assert h(frozenset("abc")) == h(frozenset("cba"))


def test_a_frame_built_from_kwargs_keeps_their_order(cache):
    """``frame(b=..., a=...)`` must not return the columns of ``frame(a=..., b=...)``."""

    @cache.memoize
    def columns(**values):
        return list(values)

    assert columns(a=1, b=2) == ["a", "b"]
    assert columns(b=2, a=1) == ["b", "a"]
    assert columns(a=1, b=2) == ["a", "b"]


def test_named_arguments_bind_in_signature_order(cache):
    """Order is only visible through ``**kwargs``: named parameters still share one key."""

    @cache.memoize
    def f(a, b):
        return a - b

    assert f(a=3, b=1) == 2
    assert f.check_call_in_cache(b=1, a=3)
    assert re.fullmatch(r"[0-9a-f]{32}", f._keyer.key((3, 1), {}))
