"""Code reached only at run time: dispatch through dicts, ``getattr``, objects and registries.

No static walk sees a handler picked by name, a plugin found by ``getattr`` or a class
looked up in a module inside the call. A miss records the user code that actually
ran; a hit checks it. Each case runs as a fresh process on an edited project, and in
one process with modules edited in place; a hit must always equal the direct call.
"""

from __future__ import annotations

import importlib
import json
import sys
import textwrap
import threading

import pytest
from _keysupport import Project
from _keysupport import agrees as _agrees
from helpers import slow_except

import cachelib
from cachelib._keys.runtime import MONITORED

pytestmark = pytest.mark.timeout(180)

_MAIN = """
import importlib
import cachelib

cache = cachelib.Cache(CACHE_DIR)
ARGUMENT = 3
NAMES = {"fast": "run", "model": "Model"}

@cache.memoize
def work(x):
    {body}
"""

_BODIES = {
    "getattr": 'return getattr(importlib.import_module("plugins"), NAMES["fast"])(x)',
    "dict": 'return importlib.import_module("plugins").TABLE["fast"](x)',
    "object": 'return getattr(importlib.import_module("plugins"), NAMES["model"])(2).apply(x)',
    "registry lambda": 'return importlib.import_module("plugins").LAMBDAS["inc"](x)',
    "factory": 'return getattr(importlib.import_module("plugins"), "made")(x)',
}

_PLUGINS = """
SCALE = 2

def helper(x):
    return x + 1

def run(x):
    return helper(x) * SCALE

def unused(x):
    return -1

TABLE = {"fast": run}

class Model:
    OFFSET = 10

    def __init__(self, k):
        self.k = k

    def apply(self, x):
        return x * self.k + self.OFFSET

LAMBDAS = {"inc": lambda x: x + 100}

def make(k):
    def made(x):
        return x * k
    return made

made = make(7)
"""

# (dispatch, edit of plugins.py, what explain names)
_EDITS = [
    ("getattr", "return x + 1", "return x + 5", "`plugins.run` edited"),
    ("getattr", "SCALE = 2", "SCALE = 4", "`plugins.run` edited"),
    ("dict", "return x + 1", "return x + 5", "`plugins.run` edited"),
    ("object", "x * self.k + self.OFFSET", "x * self.k - self.OFFSET", "`plugins.Model` edited"),
    ("object", "OFFSET = 10", "OFFSET = 20", "`plugins.Model` edited"),
    ("registry lambda", "lambda x: x + 100", "lambda x: x + 200", "plugins.py` changed"),
    ("factory", "made = make(7)", "made = make(8)", "`plugins.made` edited"),
]


def _project(tmp_path, dispatch: str) -> Project:
    project = Project(tmp_path / "project")
    project.write("main.py", _MAIN.replace("{body}", _BODIES[dispatch]))
    project.write("plugins.py", _PLUGINS)
    return project


# Four fresh interpreters a case: the fast tier keeps one edit of each thing a dispatch can reach.
# Slow: the dict case (the registry lambda case is called through a dict too, and the getattr
# case edits the same function), the edit of a global (SCALE: assigned in one process by
# test_redefining_a_dispatched_function_in_place_misses) and of a class attribute (the object
# case above edits the same class).
_SLOW_EDITS = {("dict", "return x + 1"), ("getattr", "SCALE = 2"), ("object", "OFFSET = 10")}


@pytest.mark.parametrize(("dispatch", "old", "new", "why"), [
    pytest.param(*edit, id=f"{edit[0]}: {edit[1]}", marks=[pytest.mark.slow] * (edit[:2] in _SLOW_EDITS))
    for edit in _EDITS
])
def test_an_edit_of_code_reached_at_run_time_misses(tmp_path, dispatch, old, new, why):
    """A fresh process on an edited plugin misses, says what was edited, and returns the new result."""
    project = _project(tmp_path, dispatch)
    first = project.check(stored=False)
    project.check(stored=True)  # unchanged: a hit in a fresh process
    project.write("plugins.py", _PLUGINS.replace(old, new))
    edited = project.check(stored=False)
    assert edited["memoized"] != first["memoized"]
    assert why in edited["explain"], edited
    project.check(stored=True)


# Two fresh interpreters a case: dict and object are slow; test_the_entry_names_what_ran shows
# quickly what an object dispatch records (the class it ran, not the function it did not).
@pytest.mark.parametrize("dispatch", slow_except(["getattr", "dict", "object"], "getattr"))
def test_an_edit_of_code_that_did_not_run_still_hits(tmp_path, dispatch):
    """Only what ran counts: a function of the same module that the call never ran may change."""
    project = _project(tmp_path, dispatch)
    project.check(stored=False)
    project.write("plugins.py", _PLUGINS.replace("return -1", "return -2"))
    project.check(stored=True)


def test_the_entry_names_what_ran(tmp_path):
    """The recorded code is kept with the entry: module and name of each function or class."""
    project = _project(tmp_path, "object")
    project.check(stored=False)
    depends = [item for _, metadata in _metadata(project.cache) for item in metadata.get("depends", [])]
    assert ["code", "plugins", "Model"] in [item[:3] for item in depends]
    assert ["code", "plugins", "run"] not in [item[:3] for item in depends]


def _metadata(location):
    cache = cachelib.Cache(location)
    for namespace in cache.entries.namespaces():
        for key, _ in cache.entries.entries(namespace):
            yield key, cache.entries.head(namespace, key).metadata


# --- in one process: modules edited in place, as a notebook does -------------------------------


@pytest.fixture
def plugins(tmp_path, monkeypatch):
    """The plugins module, imported from a real file."""
    (tmp_path / "mods").mkdir()
    name = f"plugins_{abs(hash(str(tmp_path)))}"
    (tmp_path / "mods" / f"{name}.py").write_text(textwrap.dedent(_PLUGINS))
    monkeypatch.syspath_prepend(str(tmp_path / "mods"))
    module = importlib.import_module(name)
    yield module
    sys.modules.pop(name, None)


def test_redefining_a_dispatched_function_in_place_misses(tmp_path, plugins):
    cache = cachelib.Cache(tmp_path / "cache")
    table = {"fast": plugins.__name__}

    @cache.memoize
    def work(x):
        return importlib.import_module(table["fast"]).run(x)

    assert _agrees(work, 1) == 4
    exec("def run(x):\n    return helper(x) * 100\n", plugins.__dict__)  # a notebook cell run again
    assert not work.check_call_in_cache(1)
    assert "run` edited" in work.explain(1)
    assert _agrees(work, 1) == 200
    plugins.SCALE = 3  # a global the dispatched code reads, assigned at run time
    exec("def run(x):\n    return helper(x) * SCALE\n", plugins.__dict__)
    assert _agrees(work, 1) == 6
    plugins.SCALE = 5
    assert _agrees(work, 1) == 10


def test_a_nested_hit_hands_its_dependencies_to_the_outer_call(tmp_path):
    """An outer call that hits an inner entry depends on the files that inner entry read."""
    cache = cachelib.Cache(tmp_path / "cache")
    data = tmp_path / "data.txt"
    data.write_text("1")

    @cache.memoize
    def inner(path):
        with open(path) as handle:
            return int(handle.read())

    @cache.memoize
    def outer(path):
        return inner(path) * 10

    assert inner(str(data)) == 1  # stored alone first
    assert outer(str(data)) == 10  # a hit of inner inside outer's miss
    data.write_text("2")
    assert not outer.check_call_in_cache(str(data))
    assert "data.txt` changed" in outer.explain(str(data))
    assert outer(str(data)) == 20


def test_code_run_by_a_thread_the_call_starts(tmp_path, plugins):
    """A thread started by the call runs a plugin: recorded with sys.monitoring (Python 3.12+)."""
    cache = cachelib.Cache(tmp_path / "cache")
    name = plugins.__name__

    @cache.memoize
    def work(x):
        out = []
        thread = threading.Thread(target=lambda: out.append(importlib.import_module(name).run(x)))
        thread.start()
        thread.join()
        return out[0]

    assert _agrees(work, 1) == 4
    exec("def run(x):\n    return helper(x) * 100\n", plugins.__dict__)
    if MONITORED:
        assert _agrees(work, 1) == 200
    else:  # before 3.12 only the calling thread is profiled: documented, and said by the entry
        assert work(1) == 4


def test_a_long_python_loop_is_recorded_in_full_or_said_to_be_partial(tmp_path, plugins):
    """Python before 3.12 profiles a budget of events; the entry says when the budget ran out."""
    cache = cachelib.Cache(tmp_path / "cache")
    name = plugins.__name__

    @cache.memoize
    def work(n):
        module = importlib.import_module(name)
        total = module.run(0)
        for i in range(n):
            total += module.helper(i)
        return total

    work(50_000)
    (_, metadata), = _metadata(tmp_path / "cache")
    assert metadata.get("depends_complete", True) is MONITORED
    assert [item[2] for item in metadata["depends"] if item[0] == "code"] == ["run"]  # helper: run reaches it
    exec("def run(x):\n    return helper(x) * 100\n", plugins.__dict__)
    assert _agrees(work, 50_000) == work.__wrapped__(50_000)


def test_track_runtime_false_keys_on_what_the_walk_sees(tmp_path, plugins):
    cache = cachelib.Cache(tmp_path / "cache")
    name = plugins.__name__

    @cache.memoize(track_runtime=False)
    def work(x):
        return importlib.import_module(name).run(x)

    assert work(1) == 4
    exec("def run(x):\n    return -1\n", plugins.__dict__)
    assert work(1) == 4  # stale, as asked
    (_, metadata), = _metadata(tmp_path / "cache")
    assert "depends" not in metadata


def test_recorded_items_that_are_damaged_or_unknown_are_stale(tmp_path):
    """An entry whose recorded items were tampered with or come from a newer version misses."""
    from cachelib._keys.depends import Validator
    from cachelib._keys.reach import REACHED

    validator = Validator(REACHED)
    for items in [None, "x", [["code"]], [["unknown kind", 1]], [["file", 3]], [["code", "no_such_module_x",
                                                                                  "f", "0", ""]]]:
        assert validator.stale(items) is not None, items
    assert validator.stale([]) is None
    assert json.dumps(validator.stale([["live", "m", "f", "00", None]]))


def test_code_replaced_in_a_session_is_released(tmp_path, plugins):
    """Keys and recordings keep no code alive: a notebook redefining a helper 30 times does not leak."""
    import gc
    import weakref

    cache = cachelib.Cache(tmp_path / "cache")
    name = plugins.__name__

    @cache.memoize
    def work(x):
        return importlib.import_module(name).run(x)

    old = []
    for version in range(30):
        exec(f"def run(x):\n    return x + {version}\n", plugins.__dict__)
        old.append(weakref.ref(plugins.run.__code__))
        assert _agrees(work, 1) == 1 + version
    gc.collect()
    assert sum(ref() is not None for ref in old) == 1  # the current one


def _square_file(path: str) -> int:
    with open(path) as handle:
        return int(handle.read()) ** 2


def test_a_forked_worker_started_inside_a_miss_records_for_itself(tmp_path):
    """A fork pool inside a miss: the workers' own misses store and record what they read.

    What another process reads is not seen by the outer call (a documented limit):
    ``depends_on`` declares it.
    """
    import multiprocessing

    cache = cachelib.Cache(tmp_path / "cache")
    inner = cache.memoize(_square_file)
    data = tmp_path / "n.txt"
    data.write_text("3")

    @cache.memoize(depends_on=[str(data)])
    def outer(path):
        with multiprocessing.get_context("fork").Pool(1) as pool:
            return pool.apply(inner, (path,)) + 1

    assert outer(str(data)) == 10
    assert inner.check_call_in_cache(str(data))  # stored by the worker, with the file it read
    (_, metadata), = [(k, m) for k, m in _metadata(tmp_path / "cache") if m["function"] == "_square_file"]
    assert [item[1] for item in metadata["depends"]] == [str(data)]
    assert outer(str(data)) == 10
    data.write_text("4")
    assert not inner.check_call_in_cache(str(data))
    assert outer(str(data)) == 17
