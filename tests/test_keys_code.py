"""A function's key changes whenever its behaviour can (issue 10, item 2).

The whole code object counts (the exception table too); two scripts' ``__main__``
functions stay apart while one script keeps its identity however it is started;
memoized and ``lru_cache`` functions are keyed by what they wrap; a ``wraps``
wrapper is bound with its own signature.
"""

from __future__ import annotations

import functools
import os
import sys
import textwrap

import pytest
from _keysupport import Project
from helpers import run_python

import cachelib

pytestmark = pytest.mark.timeout(120)

h = cachelib.hash


def _define(source: str, name: str = "f"):
    namespace: dict = {"__name__": "cachelib_code_tests"}
    exec(compile(textwrap.dedent(source), "<user code>", "exec"), namespace)
    return namespace[name]


_TRY_BODY = """
def f(x):
    try:
        y = 1 / x
        y = y + 1
    except ZeroDivisionError:
        y = 0
    return y
"""
_TRY_ELSE = """
def f(x):
    try:
        y = 1 / x
    except ZeroDivisionError:
        y = 0
    else:
        y = y + 1
    return y
"""


def test_the_exception_table_is_part_of_the_code():
    body, orelse = _define(_TRY_BODY), _define(_TRY_ELSE)
    if sys.version_info >= (3, 11):
        assert body.__code__.co_code == orelse.__code__.co_code  # only the exception table differs
    assert h(body) != h(orelse)


def test_moving_a_statement_into_else_misses(cache):
    body = cache.memoize(_define(_TRY_BODY))
    assert body(2) == 1.5
    orelse = cache.memoize(_define(_TRY_ELSE))
    assert orelse.namespace == body.namespace
    assert not orelse.check_call_in_cache(2)
    assert orelse.explain(2) == "new code version"


def test_code_identity_ignores_line_numbers_not_constants():
    first = _define("def f(x):\n    return x + 1\n")
    moved = _define("\n\n\ndef f(x):\n    return x + 1\n")
    other = _define("def f(x):\n    return x + 2\n")
    assert h(first) == h(moved)
    assert h(first) != h(other)


def test_a_memoized_function_passed_as_an_argument_is_keyed_by_its_code(cache):
    @cache.memoize
    def apply(function, x):
        return function(x)

    first = cache.memoize(_define("def f(x):\n    return x + 1\n"))
    edited = cache.memoize(_define("def f(x):\n    return x + 2\n"))
    assert apply(first, 1) == 2
    assert apply(edited, 1) == 3  # the same name, another body


def test_an_lru_cached_function_passed_as_an_argument_is_keyed_by_its_code(cache):
    @cache.memoize
    def apply(function, x):
        return function(x)

    first = functools.lru_cache(_define("def f(x):\n    return x + 1\n"))
    edited = functools.lru_cache(_define("def f(x):\n    return x + 2\n"))
    typed = functools.lru_cache(typed=True)(_define("def f(x):\n    return x + 1\n"))
    assert apply(first, 1) == 2
    assert apply(edited, 1) == 3
    assert h(first) != h(typed)


def test_memoize_stacked_on_lru_cache_keys_on_the_wrapped_code(cache):
    first = cache.memoize(functools.lru_cache(_define("def f(x):\n    return x + 1\n")))
    edited = cache.memoize(functools.lru_cache(_define("def f(x):\n    return x + 2\n")))
    assert first(1) == 2
    assert edited(1) == 3
    assert first(x=1) == 2  # the wrapped function's signature binds through lru_cache


def _defaulting(func):
    @functools.wraps(func)
    def wrapper(x, y=1, *, verbose=False):
        return func(x) + y

    return wrapper


def test_a_wraps_wrapper_is_bound_with_its_own_signature(cache):
    @cache.memoize
    @_defaulting
    def add(x):
        return x

    assert add(1) == 2
    assert add(1, 1) == 2  # the wrapper's default, applied: one key
    assert add(1, 5) == 6
    assert add(1, verbose=True) == 2  # a keyword only the wrapper takes
    assert add.check_call_in_cache(1, y=1)


def test_singledispatch_functions_can_be_memoized(cache):
    @functools.singledispatch
    def describe(x):
        return "thing"

    @describe.register
    def _(x: int):
        return "int"

    describe = cache.memoize(describe)
    assert describe(1) == "int"
    assert describe("a") == "thing"
    assert describe(1) == "int"

    @describe.__wrapped__.register
    def _(x: str):
        return "str"

    assert describe("a") == "str"  # a new implementation is a new key


# --- __main__ functions: the script is part of the identity -----------------------------------

_SCRIPT = """
import json, multiprocessing, sys
import cachelib

cache = cachelib.Cache({location!r})
DATA = {data!r}


@cache.memoize
def work(x):
    return x + sum(DATA)


def stored(x):
    return work.check_call_in_cache(x)


if __name__ == "__main__":
    before = work.check_call_in_cache(1)
    result = work(1)
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        in_worker = pool.apply(stored, (1,))
    print(json.dumps({{"before": before, "result": result, "worker": in_worker,
                      "directory": work.namespace}}))
"""


def _run(*arguments, cwd):
    return run_python(*arguments, cwd=cwd, timeout=100, env=dict(os.environ, PYTHONDONTWRITEBYTECODE="1"))


@pytest.mark.slow  # fresh interpreters: test_one_script_keeps_its_entries_... is the quick case
def test_two_scripts_main_functions_never_share_entries(tmp_path):
    location = str(tmp_path / "cache")
    for name, data in (("first", [1]), ("second", [100])):
        (tmp_path / name).mkdir()
        (tmp_path / name / "script.py").write_text(_SCRIPT.format(location=location, data=data))
    first = _run("script.py", cwd=tmp_path / "first")
    second = _run("script.py", cwd=tmp_path / "second")
    assert (first["result"], second["result"]) == (2, 101)
    assert second["before"] is False
    assert first["directory"] != second["directory"]


def test_one_script_keeps_its_entries_as_a_file_with_dash_m_and_in_spawned_workers(tmp_path):
    location = str(tmp_path / "cache")
    (tmp_path / "project").mkdir()
    (tmp_path / "project" / "script.py").write_text(_SCRIPT.format(location=location, data=[1]))
    as_file = _run(str(tmp_path / "project" / "script.py"), cwd=tmp_path)
    assert as_file["before"] is False
    assert as_file["worker"] is True  # a spawned worker finds the entry
    as_module = _run("-m", "script", cwd=tmp_path / "project")
    assert as_module["before"] is True
    relative = _run(os.path.join("project", "script.py"), cwd=tmp_path)
    assert relative["before"] is True
    assert as_file["directory"] == as_module["directory"] == relative["directory"]


def test_an_exception_table_edit_misses_in_a_fresh_process(tmp_path):
    project = Project(tmp_path / "project")
    main = (
        "import cachelib\ncache = cachelib.Cache(CACHE_DIR)\nARGUMENT = 2\n"
        "@cache.memoize\n" + textwrap.dedent(_TRY_BODY).replace("def f", "def work")
    )
    project.write("main.py", main)
    project.check(stored=False)
    project.write("main.py", main.replace(textwrap.dedent(_TRY_BODY).replace("def f", "def work"),
                                          textwrap.dedent(_TRY_ELSE).replace("def f", "def work")))
    assert project.check(stored=False)["explain"] == "new code version"
