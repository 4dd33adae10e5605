"""Every global name the code reads is keyed by one rule, or refused out loud.

User code by its code digest (followed through wrappers, partials, tuples, class
members, imports in the body, namespace packages); modules and library objects by a
qualified reference checked to resolve back to the object; values by value, read at
the call; what cannot be keyed (a lock, a connection) is left out with one
``CacheWarning`` (``strict`` refuses it). Each edit below is made as users make it: in
a fresh process (edit, call, revert, call: a miss, then the old entry hits) and, where
it applies, in the same process (a notebook cell run again).
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys
import textwrap
import threading
import warnings

import numpy as np
import pytest
from _keysupport import Project
from _keysupport import agrees as _agrees

import cachelib

pytestmark = pytest.mark.timeout(120)

# --- in a fresh process: main.py defines ``work``; each case edits what it reads -----------------

_MAIN = """
import collections, contextlib, dataclasses, datetime, enum, functools, typing
import numpy as np
import cachelib
{imports}
cache = cachelib.Cache(CACHE_DIR)
ARGUMENT = 3
{definitions}

@cache.memoize
def work(x):
    return {expression}
"""

# (name, imports, definitions, expression, old, new, what explain says)
_EDITS = [
    ("dtype class", "", "DTYPE = np.float32", "int(np.zeros(x, DTYPE).nbytes)",
     "np.float32", "np.float64", "library object `DTYPE` is now `numpy.float64`"),
    ("dtype value", "", 'DTYPE = np.dtype("f4")', "int(np.zeros(x, DTYPE).nbytes)", '"f4"', '"f8"',
     "global `DTYPE` changed"),
    ("imported function", "from numpy import mean as agg", "", "float(agg([x, 1, 10]))",
     "mean as agg", "median as agg", "library object `agg` is now `numpy.median`"),
    ("class alias", "", "Box = list", "repr(Box((x, 1)))", "Box = list", "Box = tuple",
     "library object `Box` is now `builtins.tuple`"),
    ("named tuple", "", 'Config = typing.NamedTuple("Config", [("lr", float)])\nCFG = Config(0.1)',
     "x * CFG.lr", "Config(0.1)", "Config(0.2)", "global `CFG` changed"),
    ("date", "", "CUTOFF = datetime.date(2024, 1, 1)", "CUTOFF.year + x", "2024", "2025",
     "constant `CUTOFF` changed"),
    ("frozen dataclass", "",
     "@dataclasses.dataclass(frozen=True)\nclass S:\n    lr: float = 0.1\nSETTINGS = S()", "x * SETTINGS.lr",
     "SETTINGS = S()", "SETTINGS = S(0.5)", "global `SETTINGS` changed"),
    ("dict config", "", 'CONFIG = {"lr": 0.1}', 'x * CONFIG["lr"]', "0.1", "0.3", "global `CONFIG` changed"),
    ("helper default function", "", "def helper(v, agg=np.mean):\n    return float(agg(v))",
     "helper([x, 1, 10])", "agg=np.mean", "agg=np.median", "library object `helper.<default agg>`"),
    ("helper default list", "", "def helper(v, weights=[1, 2]):\n    return v * sum(weights)",
     "helper(x)", "[1, 2]", "[1, 5]", "default `"),
    ("helper default dtype", "",
     "def helper(v, dtype=np.float32):\n    return int(np.zeros(v, dtype).nbytes)", "helper(x)",
     "dtype=np.float32", "dtype=np.float64", "library object `helper.<default dtype>`"),
    ("partial", "", "def mul(v, factor):\n    return v * factor\nscaled = functools.partial(mul, factor=2)",
     "scaled(x)", "factor=2)", "factor=5)", "global `scaled` changed"),
    ("functions in a tuple", "", "def clean(v):\n    return v + 1\ndef scale(v):\n    return v * 2\n"
     "STEPS = (clean, scale)", "STEPS[1](STEPS[0](x))", "return v + 1", "return v + 100",
     "helper `clean` edited"),
    ("vectorized helper", "", "@np.vectorize\ndef h(v):\n    return v + 1", "int(h(np.arange(x)).sum())",
     "return v + 1", "return v + 2", "global `h` changed"),
    ("errstate helper", "", "@np.errstate(all='ignore')\ndef h(v):\n    return v + 1", "h(x)",
     "return v + 1", "return v + 2", "global `h` changed"),
    ("context manager helper", "", "@contextlib.contextmanager\ndef ctx(v):\n    yield v + 1",
     "ctx(x).__enter__()", "yield v + 1", "yield v + 2", "global `ctx` changed"),
    ("cached property", "", "class M:\n    @functools.cached_property\n    def f(self):\n        return 1",
     "M().f + x", "return 1", "return 2", "helper `M.f` edited"),
    ("static library method", "", "class M:\n    agg = staticmethod(np.mean)", "float(M.agg([x, 1, 10]))",
     "np.mean", "np.median", "library object `M.agg` is now `numpy.median`"),
    ("class dtype attribute", "", "class M:\n    dtype = np.float32", "int(np.zeros(x, M.dtype).nbytes)",
     "np.float32", "np.float64", "library object `M.dtype` is now `numpy.float64`"),
    ("enum method", "",
     "class E(enum.Enum):\n    A = 1\n    def double(self):\n        return self.value * 2\nCHOICE = E.A",
     "CHOICE.double() + x", "return self.value * 2", "return self.value * 3",
     "helper `E.double` edited"),
]


def _source(imports: str, definitions: str, expression: str) -> str:
    return _MAIN.format(imports=imports, definitions=definitions, expression=expression)


@pytest.mark.parametrize(("imports", "definitions", "expression", "old", "new", "why"),
                         [pytest.param(*case[1:], id=case[0]) for case in _EDITS])
def test_an_edit_of_what_a_function_reads_misses_and_a_revert_hits(
    tmp_path, imports, definitions, expression, old, new, why
):
    project = Project(tmp_path / "project")
    source = _source(imports, definitions, expression)
    assert old in source
    project.write("main.py", source)
    first = project.check(stored=False)
    project.check(stored=True)
    project.write("main.py", source.replace(old, new, 1))
    edited = project.check(stored=False)
    assert edited["memoized"] != first["memoized"]
    assert why in edited["explain"], edited["explain"]
    project.write("main.py", source)
    assert project.check(stored=True)["memoized"] == first["memoized"]


_HELPERS = "def h(v):\n    return v + 1\n"


@pytest.mark.parametrize("body", [
    "from helpers import h\n    return h(x)",
    "import helpers\n    return helpers.h(x)",
    "from tools.inner import h\n    return h(x)",  # a namespace package: no __init__.py
    "import tools.inner\n    return tools.inner.h(x)",
])
def test_code_imported_in_the_function_body_is_followed(tmp_path, body):
    """An import inside the function, of a module or of a namespace package: an edit of the
    imported helper misses, its revert hits."""
    project = Project(tmp_path / "project")
    project.write("helpers.py", _HELPERS)
    (project.root / "tools").mkdir()
    project.write("tools/inner.py", _HELPERS)
    source = ("import cachelib\ncache = cachelib.Cache(CACHE_DIR)\nARGUMENT = 3\n\n"
              f"@cache.memoize\ndef work(x):\n    {body}\n")
    project.write("main.py", source)
    first = project.check(stored=False)
    project.check(stored=True)
    edited_module = "tools/inner.py" if "tools" in body else "helpers.py"
    project.write(edited_module, _HELPERS.replace("v + 1", "v + 5"))
    edited = project.check(stored=False)
    assert edited["memoized"] == first["memoized"] + 4
    assert "helper `h` edited" in edited["explain"], edited["explain"]
    project.write(edited_module, _HELPERS)
    project.check(stored=True)


def test_a_namespace_package_chain_is_followed(tmp_path):
    """``pkg.mod.f`` through a package without ``__init__.py``, imported at the top of the module."""
    project = Project(tmp_path / "project")
    (project.root / "pkg").mkdir()
    project.write("pkg/mod.py", _HELPERS)
    project.write("main.py", "import cachelib\nimport pkg.mod\ncache = cachelib.Cache(CACHE_DIR)\n"
                             "ARGUMENT = 3\n\n@cache.memoize\ndef work(x):\n    return pkg.mod.h(x)\n")
    project.check(stored=False)
    project.write("pkg/mod.py", _HELPERS.replace("v + 1", "v - 1"))
    assert "helper `h` edited" in project.check(stored=False)["explain"]


_NOTEBOOK = """
import json, sys
import cachelib
cache = cachelib.Cache(sys.argv[1])

class CFG:
    lr = {lr}

@cache.memoize
def work(x):
    return x * CFG.lr

print(json.dumps([work.check_call_in_cache(2), work(2)]))
"""


def test_a_class_without_methods_in_python_c_is_user_code(tmp_path):
    """``class CFG: lr = 0.1`` in a notebook or ``python -c`` is followed as it is in a script."""
    def run(lr: float) -> list:
        done = subprocess.run([sys.executable, "-c", _NOTEBOOK.format(lr=lr), str(tmp_path / "cache")],
                              capture_output=True, text=True, timeout=60, check=True)
        return json.loads(done.stdout)

    assert run(0.1) == [False, 0.2]
    assert run(0.1) == [True, 0.2]
    assert run(0.5) == [False, 1.0]
    assert run(0.1) == [True, 0.2]


# --- in the same process: a notebook cell run again ------------------------------------------------


@pytest.fixture
def cache(tmp_path):
    return cachelib.Cache(tmp_path / "cache")


def _notebook(source: str) -> dict:
    """Run a notebook cell: code of ``__main__`` without a file."""
    namespace = {"__name__": "__main__", "np": np}
    exec(compile(textwrap.dedent(source), "<ipython-input-1>", "exec"), namespace)
    return namespace


def test_a_mutable_global_edited_in_place_misses_and_its_old_value_hits_again(cache):
    cell = _notebook("CONFIG = {'lr': 0.1}\nARRAY = np.arange(5.0)\ndef work(x):\n"
                     "    return x * CONFIG['lr'] + ARRAY.sum()\n")
    work = cache.memoize(cell["work"])
    assert _agrees(work, 2) == pytest.approx(10.2)
    cell["CONFIG"]["lr"] = 0.5
    assert work.explain(2) == "global `CONFIG` changed"
    assert _agrees(work, 2) == pytest.approx(11.0)
    cell["ARRAY"][0] = 100.0  # changed in place
    assert work.explain(2) == "global `ARRAY` changed"
    assert _agrees(work, 2) == pytest.approx(111.0)
    cell["CONFIG"]["lr"], cell["ARRAY"][0] = 0.1, 0.0
    assert work.check_call_in_cache(2)


def test_a_global_frame_reloaded_with_other_data_misses(cache):
    pd = pytest.importorskip("pandas")
    cell = _notebook("def work(x):\n    return float(FRAME['a'].sum()) * x\n")
    cell["FRAME"] = pd.DataFrame({"a": [1.0, 2.0]})
    work = cache.memoize(cell["work"])
    assert _agrees(work, 2) == 6.0
    cell["FRAME"] = pd.DataFrame({"a": [1.0, 5.0]})  # reloaded
    assert _agrees(work, 2) == 12.0


def test_a_redefined_helper_in_a_later_cell_misses(cache):
    cell = _notebook("def helper(x):\n    return x + 1\ndef work(x):\n    return helper(x)\n")
    work = cache.memoize(cell["work"])
    assert _agrees(work, 1) == 2
    exec("def helper(x):\n    return x + 2\n", cell)
    assert work.explain(1) == "helper `helper` edited"
    assert _agrees(work, 1) == 3


def test_two_notebooks_with_the_same_code_but_other_imports_do_not_share_entries(cache):
    first = _notebook("from numpy import mean as agg\ndef work(x):\n    return float(agg([x, 1.0, 10.0]))\n")
    second = _notebook("from numpy import median as agg\n"
                       "def work(x):\n    return float(agg([x, 1.0, 10.0]))\n")
    one, other = cache.memoize(first["work"]), cache.memoize(second["work"])
    assert one.namespace == other.namespace  # same name, same code: told apart by what agg is
    assert one.cache_key(2.0) != other.cache_key(2.0)
    assert _agrees(one, 2.0) == pytest.approx(13 / 3) and _agrees(other, 2.0) == 2.0


def test_helper_keyword_defaults_assigned_in_place_miss(cache):
    cell = _notebook("def helper(x, *, k=1):\n    return x + k\n"
                     "def work(x, *, k=1):\n    return helper(x) + k\n")
    work = cache.memoize(cell["work"])
    assert _agrees(work, 1) == 3
    cell["helper"].__kwdefaults__["k"] = 10
    assert _agrees(work, 1) == 12
    cell["work"].__kwdefaults__["k"] = 20
    assert _agrees(work, 1) == 31


# --- values whose identity was assumed ------------------------------------------------------------


def test_two_frompyfunc_ufuncs_never_share_a_key():
    """A ufunc made at run time names itself by a name that leads to nothing: it cannot stand by name."""
    first, second = np.frompyfunc(lambda v: v + 1, 1, 1), np.frompyfunc(lambda v: v + 2, 1, 1)
    with pytest.raises(cachelib.UnhashableError, match="names another object"):
        cachelib.hash(first)
    assert cachelib.hash(np.add) != cachelib.hash(np.multiply)
    del second


def test_structured_field_names_renamed_in_place_change_the_hash():
    array = np.zeros(2, dtype=[("a", "f4"), ("b", "i4")])
    before = cachelib.hash(array)
    array.dtype.names = ("c", "d")
    assert cachelib.hash(array) != before
    array.dtype.names = ("a", "b")
    assert cachelib.hash(array) == before


def test_masked_arrays_differing_in_hard_mask_differ_and_the_masked_constant_hashes():
    soft = np.ma.array([1, 2, 3], mask=[0, 1, 0])
    hard = np.ma.array([1, 2, 3], mask=[0, 1, 0], hard_mask=True)
    assert cachelib.hash(soft) != cachelib.hash(hard)
    assert cachelib.hash(soft[1]) == cachelib.hash(np.ma.masked) != cachelib.hash(None)


# --- keys that must not move when nothing changed ---------------------------------------------------


def test_lazily_cached_attributes_do_not_change_a_key():
    scipy_sparse = pytest.importorskip("scipy.sparse")
    parts = (np.array([1.0, 2.0]), np.array([1, 0]), np.array([0, 2, 2]))
    matrix = scipy_sparse.csr_matrix(parts, shape=(2, 2))
    before = cachelib.hash(matrix)
    assert matrix.has_sorted_indices is False  # computed now, and kept on the object
    assert cachelib.hash(matrix) == before
    vectorized = np.vectorize(lambda v: v + 1, otypes=[float])
    before = cachelib.hash(vectorized)
    vectorized(np.arange(3))  # builds and keeps its ufunc
    assert cachelib.hash(vectorized) == before

    class Model:
        def __init__(self, weight):
            self.weight = weight

        @functools.cached_property
        def squared(self):
            return self.weight**2

    model = Model(3)
    before = cachelib.hash(model)
    assert model.squared == 9
    assert cachelib.hash(model) == before
    assert cachelib.hash(Model(4)) != before


def test_a_class_attribute_the_method_changes_warns_once_and_ignore_fixes_it(cache):
    cell = _notebook("""
        class Model:
            fits = 0
            def fit(self, x):
                type(self).fits += 1
                return x * 2
        MODEL = Model()
        def work(x):
            return MODEL.fit(x)
    """)
    work = cache.memoize(cell["work"])
    with pytest.warns(cachelib.CacheWarning, match=r"class attribute `Model.fits`.*ignore=\['Model.fits'\]"):
        work(1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        work(1)  # misses again (fits changed), said once
    assert cell["Model"].fits == 2
    fixed = cache.memoize(cell["work"], ignore=["Model.fits"])
    fixed(5)
    fixed(5)
    assert cell["Model"].fits == 3  # the second call hit


# --- what cannot be keyed is said, or refused --------------------------------------------------------


def test_a_global_lock_is_left_out_with_one_warning_refused_when_strict_and_ignorable(tmp_path):
    cell = _notebook("def work(x):\n    with GUARD:\n        return x + 1\n")
    cell["GUARD"] = threading.Lock()
    cache = cachelib.Cache(tmp_path / "cache")
    work = cache.memoize(cell["work"])
    with pytest.warns(cachelib.CacheWarning, match=r"`GUARD` \(cannot hash a _thread.lock.*\['GUARD'\]"):
        assert work(1) == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert work(1) == 2 and work(2) == 3  # said once; hits as usual
        assert cache.memoize(cell["work"], ignore=["GUARD"])(3) == 4
    strict = cachelib.Cache(tmp_path / "strict", strict=True).memoize(cell["work"])
    with pytest.raises(cachelib.UnhashableError, match="GUARD"):
        strict(1)


def test_ignore_names_must_be_read_or_defined(cache):
    cell = _notebook("LIMIT = 3\ndef work(x):\n    return x\n")
    with pytest.raises(cachelib.InvalidOptionError, match="does not take or read"):
        cache.memoize(cell["work"], ignore=["NOWHERE"])
    cache.memoize(cell["work"], ignore=["LIMIT", "helpers.SCALE"])  # defined, or another module's


def test_no_module_of_cachelib_counts_as_user_code():
    """cachelib's own modules, in every layer, are library code: never followed, never recorded."""
    import pkgutil

    from cachelib._keys.code import is_user_file

    modules = [info.name for info in pkgutil.walk_packages(cachelib.__path__, "cachelib.")]
    assert len(modules) > 30
    for name in modules:
        module = __import__(name, fromlist=["_"])
        assert not is_user_file(module.__file__), name
