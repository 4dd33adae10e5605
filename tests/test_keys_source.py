"""Code identity from normalized source: what counts, what does not, and another Python sharing a cache.

A function's code digest is its syntax tree's where the source is the source of the
running code, so that Python 3.10, 3.11, 3.12 and 3.13 key the same code alike.
Comments, blank lines, line numbers, quotes and docstrings never count; any change of
meaning does. Code whose file changed since it was imported is keyed by its bytecode.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from cachelib._keys.code import bytecode_digest, code_digest

pytestmark = pytest.mark.timeout(120)


def _digest_of(tmp_path: Path, source: str, name: str = "f") -> bytes:
    """The code digest of function ``name`` of a fresh module holding ``source``."""
    module_name = f"cachelib_source_{tmp_path.name}"
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / f"{module_name}.py"
    path.write_text(textwrap.dedent(source))
    sys.path.insert(0, str(tmp_path))
    try:
        module = importlib.import_module(module_name)
        return code_digest(getattr(module, name).__code__)
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop(module_name, None)


_BASE = '''
def f(x, y=2):
    """Add things."""
    total = 0
    for value in range(x):
        try:
            total += value / y
        except ZeroDivisionError:
            total = -1
        else:
            total += 1
    return f"{total:.2f}"
'''


@pytest.mark.parametrize("edit", [
    lambda s: s.replace("    total = 0\n", "    # start from nothing\n    total = 0  # the sum\n\n"),
    lambda s: "\n\n# a comment above\n" + s,
    lambda s: s.replace('"""Add things."""', "'''Add things, documented at length.'''"),
    lambda s: s.replace('f"{total:.2f}"', "f'{total:.2f}'"),
    lambda s: s.replace("return f", "return (f").replace('.2f}"', '.2f}")'),
])
def test_what_does_not_change_meaning_keeps_the_digest(tmp_path, edit):
    assert _digest_of(tmp_path / "a", _BASE) == _digest_of(tmp_path / "b", edit(_BASE))


@pytest.mark.parametrize("edit", [
    lambda s: s.replace("        else:\n            total += 1\n", "").replace(
        "total += value / y\n", "total += value / y\n            total += 1\n"),
    lambda s: s.replace("y=2", "y=3"),
    lambda s: s.replace("total = -1", "total = -2"),
    lambda s: s.replace("value / y", "value // y"),
    lambda s: s.replace(".2f", ".3f"),
])
def test_a_change_of_meaning_changes_the_digest(tmp_path, edit):
    """Moving a statement from ``else`` into the ``try`` is another program, as bytecode would say."""
    changed = edit(_BASE)
    assert changed != _BASE
    assert _digest_of(tmp_path / "a", _BASE) != _digest_of(tmp_path / "b", changed)


def test_code_whose_file_changed_since_import_is_keyed_by_its_bytecode(tmp_path):
    """The key follows the code that runs: an edit on disk without a reload is not that code."""
    path = tmp_path / "edited_later.py"
    path.write_text("def f(x):\n    return x + 1\n")
    sys.path.insert(0, str(tmp_path))
    try:
        module = importlib.import_module("edited_later")
        path.write_text("def f(x):\n    return x + 2\n")
        os.utime(path, ns=(0, 0))
        code = module.f.__code__
        assert code_digest(code) == bytecode_digest(code)
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("edited_later", None)


# --- another interpreter sharing the cache ---------------------------------------------------------

_SCRIPT = '''
import json, sys
import numpy as np
import cachelib

cache = cachelib.Cache(sys.argv[1])
SCALE = 3
NAMES = {"h": "helper"}

class Model:
    weight = 2.0

    def predict(self, x):
        return [v * self.weight for v in x]

def helper(x):
    squares = [v * v for v in range(x)]
    return sum(squares) * SCALE

@cache.memoize
def work(x, *, offset=1):
    try:
        values = Model().predict(range(x))
    except ValueError:
        values = []
    else:
        values.append(globals()[NAMES["h"]](x))  # found by name at run time: recorded
    with open(sys.argv[2]) as handle:  # a file read: recorded
        values.append(float(handle.read()))
    return float(np.sum(values)) + offset

stored = work.check_call_in_cache(4)
print(json.dumps({"stored": stored, "value": work(4), "explain": work.explain(5),
                  "python": sys.version_info[:2]}))
'''


def _other_pythons() -> list[str]:
    """Interpreters of other Python versions that can import cachelib: ``CACHELIB_PYTHONS`` (.ci/run)."""
    found = []
    for path in os.environ.get("CACHELIB_PYTHONS", "").split(os.pathsep):
        if path and os.access(path, os.X_OK):
            version = subprocess.run([path, "-c", "import sys, cachelib; print(sys.version_info[:2])"],
                                     capture_output=True, text=True, check=False)
            if version.returncode == 0 and version.stdout.strip() != str(sys.version_info[:2]):
                found.append(path)
    return found


_OTHERS = _other_pythons()


@pytest.mark.skipif(not _OTHERS, reason="no other Python with cachelib (CACHELIB_PYTHONS, set by .ci/run)")
@pytest.mark.parametrize("python", _OTHERS)
def test_another_python_version_hits_what_this_one_stored(tmp_path, python):
    """The same script under this Python and another minor version: the second hits the first's entry."""
    script = tmp_path / "shared.py"
    script.write_text(_SCRIPT)
    cache, data = tmp_path / "cache", tmp_path / "data.txt"
    data.write_text("1.5")

    def run(interpreter: str) -> dict:
        done = subprocess.run([interpreter, str(script), str(cache), str(data)], capture_output=True,
                              text=True, timeout=90, check=False)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout.strip().splitlines()[-1])

    first = run(sys.executable)
    assert first["stored"] is False
    other = run(python)
    assert other["python"] != first["python"]
    assert other["stored"] is True, other
    assert other["value"] == first["value"]
    data.write_text("2.5")
    assert run(python)["stored"] is False  # a file edited since misses there
    script.write_text(_SCRIPT.replace("return sum(squares) * SCALE", "return sum(squares) * SCALE + 1"))
    edited = run(python)
    assert edited["stored"] is False  # and so does an edit of code found at run time
    assert run(sys.executable)["stored"] is True  # which this version then hits
