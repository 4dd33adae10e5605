"""Keys cover the helpers a function calls and the simple constants it reads (issue 10, item 7).

joblib, cachier and diskcache return stale results when a helper or a module-level
constant changes. Here a memoized call must equal the direct call after each kind
of change, in the same process and in a fresh process running an edited script.
"""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
from _keysupport import Project
from _keysupport import agrees as _agrees

import cachelib

pytestmark = pytest.mark.timeout(120)


def _module(name: str, source: str) -> types.ModuleType:
    """A real module of the user's (in sys.modules, with a file-less user origin)."""
    module = types.ModuleType(name)
    module.__file__ = f"/nonexistent/user/{name}.py"
    sys.modules[name] = module
    exec(compile(source, module.__file__, "exec"), module.__dict__)
    return module


@pytest.fixture
def user_module():
    created = []

    def make(source: str) -> types.ModuleType:
        name = f"cachelib_user_module_{len(created)}_{id(created)}"
        created.append(name)
        return _module(name, source)

    yield make
    for name in created:
        sys.modules.pop(name, None)


def _memoized(cache, module, name="work", **options):
    return cache.memoize(getattr(module, name), **options)


# --- same process ------------------------------------------------------------------------

_SOURCE = """
SCALE = 2
NAMES = ("a", "b")
TABLE = {"k": 1}

def prep(x):
    return x * SCALE

class Model:
    FACTOR = 10
    def predict(self, x):
        return x * self.FACTOR

MODEL = Model()

def work(x):
    return prep(x) + len(NAMES) + MODEL.predict(x) + TABLE["k"] * 0
"""


def test_an_edited_helper_misses(cache, user_module):
    module = user_module(_SOURCE)
    work = _memoized(cache, module)
    assert _agrees(work, 1) == 2 + 2 + 10
    exec("def prep(x):\n    return x * SCALE + 100\n", module.__dict__)  # an edit, as a reload does
    assert work.explain(1) == "helper `prep` edited"
    assert _agrees(work, 1) == 114


def test_a_helper_whose_code_is_replaced_in_place_misses(cache, user_module):
    module = user_module(_SOURCE)
    work = _memoized(cache, module)
    assert _agrees(work, 1) == 14
    replacement = _module("cachelib_replacement", "def prep(x):\n    return -x\n")
    module.prep.__code__ = replacement.prep.__code__  # IPython's autoreload does this
    assert _agrees(work, 1) == 11
    del sys.modules["cachelib_replacement"]


def test_a_changed_constant_misses_and_the_old_value_hits_again(cache, user_module):
    module = user_module(_SOURCE)
    work = _memoized(cache, module)
    assert _agrees(work, 3) == 6 + 2 + 30
    module.SCALE = 3
    assert work.explain(3) == "constant `SCALE` changed"
    assert _agrees(work, 3) == 9 + 2 + 30
    module.NAMES = ("a", "b", "c")
    assert _agrees(work, 3) == 9 + 3 + 30
    module.SCALE, module.NAMES = 2, ("a", "b")
    assert work.check_call_in_cache(3)  # back to the first values: the first entry


def test_an_edited_method_of_a_global_object_misses(cache, user_module):
    module = user_module(_SOURCE)
    work = _memoized(cache, module)
    assert _agrees(work, 1) == 14
    module.Model.FACTOR = 20
    assert _agrees(work, 1) == 24
    exec("def predict(self, x):\n    return -x\n", module.__dict__, namespace := {})
    module.Model.predict = namespace["predict"]
    assert _agrees(work, 1) == 3


def test_a_mutable_global_is_keyed_by_its_value_at_the_call(cache, user_module):
    """A dict edited in place (a notebook cell changing CONFIG) misses; the old value hits again."""
    module = user_module("TABLE = {'k': 1}\ndef work(x):\n    return x + TABLE['k']\n")
    work = _memoized(cache, module)
    assert _agrees(work, 1) == 2
    module.TABLE["k"] = 5
    assert work.explain(1) == "global `TABLE` changed"
    assert _agrees(work, 1) == 6
    module.TABLE["k"] = 1
    assert work.check_call_in_cache(1)


def test_a_global_the_function_changes_misses_every_time_and_says_so_once(cache, user_module):
    """A call counter: the key reads it at the call, so every call misses; one warning names the
    global and the ``ignore=`` that fixes it, which then makes the second call hit."""
    source = "COUNT = 0\ndef work(x):\n    global COUNT\n    COUNT += 1\n    return x\n"
    module = user_module(source)
    work = _memoized(cache, module)
    with pytest.warns(cachelib.CacheWarning, match=r"global `COUNT`.*ignore=\['COUNT'\]"):
        work(1)
    work(1)
    assert module.COUNT == 2
    counted = user_module(source)
    work = _memoized(cache, counted, ignore=["COUNT"])
    work(1)
    work(1)
    assert counted.COUNT == 1  # the second call hit


def test_helpers_are_followed_transitively_and_through_modules(cache, user_module):
    low = user_module("BASE = 1\ndef low(x):\n    return x + BASE\n")
    mid = user_module(f"import {low.__name__} as low_module\ndef mid(x):\n    return low_module.low(x) * 2\n")
    top = user_module(f"from {mid.__name__} import mid\ndef work(x):\n    return mid(x)\n")
    work = _memoized(cache, top)
    assert _agrees(work, 1) == 4
    low.BASE = 5
    assert _agrees(work, 1) == 12
    exec("def low(x):\n    return x - BASE\n", low.__dict__)
    assert _agrees(work, 1) == -8


def test_a_memoized_or_lru_cached_helper_is_followed(cache, user_module):
    module = user_module(
        "import functools\nK = 1\n@functools.lru_cache\ndef helper(x):\n    return x + K\n"
        "def work(x):\n    return helper(x) + stored(x)\n"
    )
    module.stored = cache.memoize(module.helper.__wrapped__)
    work = _memoized(cache, module)
    assert _agrees(work, 1) == 4
    module.K = 10
    module.helper.cache_clear()
    assert _agrees(work, 1) == 22
    exec("def replaced(x):\n    return -x\n", module.__dict__)
    module.stored.__wrapped__.__code__ = module.replaced.__code__
    assert _agrees(work, 1) == 10


def test_library_code_is_not_walked(cache, user_module):
    module = user_module("import numpy as np\ndef work(x):\n    return float(np.sum(np.arange(x)))\n")
    work = _memoized(cache, module)
    assert work(4) == 6.0
    labels = work._keyer.key_parts((4,), {})
    assert not any(label.startswith(("helper numpy", "class numpy")) for label in labels), labels


def test_track_callees_false_keys_on_the_own_code_only(cache, user_module):
    module = user_module(_SOURCE)
    work = _memoized(cache, module, track_callees=False)
    assert work(1) == 14
    module.SCALE = 3
    assert work(1) == 14  # stale, as asked
    assert not any(label.startswith(("helper", "constant")) for label in work._keyer.key_parts((1,), {}))


def test_tracking_follows_rebinding_to_a_new_function(cache, user_module):
    module = user_module(_SOURCE)
    work = _memoized(cache, module)
    assert _agrees(work, 2) == 4 + 2 + 20
    module.prep = np.negative  # rebound to a library function: still a different key
    assert _agrees(work, 2) == -2 + 2 + 20


def test_shadowing_a_builtin_misses(cache, user_module):
    module = user_module("def work(x):\n    return len(x)\n")
    work = _memoized(cache, module)
    assert _agrees(work, "abc") == 3
    exec("def len(x):\n    return 42\n", module.__dict__)
    assert _agrees(work, "abc") == 42


# --- a fresh process per run, the script edited between runs -----------------------------------

_HELPERS = """
SCALE = 2

def prep(x):
    return x * SCALE

class Shape:
    SIDES = 4
    def area(self, x):
        return x * self.SIDES
"""

_MAIN = """
import cachelib
import helpers
from helpers import Shape

cache = cachelib.Cache(CACHE_DIR)
ARGUMENT = 3
OFFSET = 1

@cache.memoize
def work(x):
    return helpers.prep(x) + Shape().area(x) + OFFSET
"""


# Four fresh interpreters a case, about a second: the fast tier keeps an edited helper (the same
# process checks every kind of change quickly, above).
_SLOW = pytest.mark.slow


@pytest.mark.parametrize(
    "module, old, new, why",
    [
        ("helpers.py", "return x * SCALE", "return x * SCALE + 1", "helper `prep` edited"),
        pytest.param("helpers.py", "SCALE = 2", "SCALE = 5", "constant `helpers.SCALE` changed", marks=_SLOW),
        pytest.param("helpers.py", "SIDES = 4", "SIDES = 6", "class attribute `Shape.SIDES` changed",
                     marks=_SLOW),
        pytest.param("helpers.py", "return x * self.SIDES", "return x * self.SIDES * 2",
                     "helper `Shape.area` edited", marks=_SLOW),
        pytest.param("main.py", "OFFSET = 1", "OFFSET = 7", "constant `OFFSET` changed", marks=_SLOW),
        pytest.param("main.py", "+ OFFSET\n", "- OFFSET\n", "new code version", marks=_SLOW),
    ],
)
def test_an_edit_between_processes_misses_and_a_revert_hits(tmp_path, module, old, new, why):
    project = Project(tmp_path / "project")
    project.write("helpers.py", _HELPERS)
    project.write("main.py", _MAIN)
    first = project.check(stored=False)
    project.check(stored=True)
    source = (_HELPERS if module == "helpers.py" else _MAIN)
    assert old in source
    project.write(module, source.replace(old, new))
    edited = project.check(stored=False)
    assert edited["memoized"] != first["memoized"]
    assert why in edited["explain"], edited["explain"]
    project.write(module, source)
    assert project.check(stored=True)["memoized"] == first["memoized"]


def test_moving_a_helper_within_its_file_keeps_the_entries(tmp_path):
    """Line numbers are not behaviour: adding lines above a helper keeps its key."""
    project = Project(tmp_path / "project")
    project.write("helpers.py", _HELPERS)
    project.write("main.py", _MAIN)
    project.check(stored=False)
    project.write("helpers.py", "# a comment\n\n\n" + _HELPERS)
    project.check(stored=True)
