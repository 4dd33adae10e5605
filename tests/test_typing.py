"""Type checkers see through cachelib's decorators: mypy --strict and pyright run on a sample.

Each line of the sample that a type checker must reject ends with ``# E: <code>`` (mypy's
code; pyright must reject the same lines); every other line must pass. So a decorator
that turned functions or methods into ``Any`` or ``(...) -> R`` (where a wrong argument,
a misspelt keyword and a wrong return type all pass) fails this test.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]  # mypy takes seconds; no quicker check sees types
pytest.importorskip("mypy", reason="mypy (the test extra) is not installed")


SAMPLE = '''
from __future__ import annotations

import gzip
import io
from typing import Any

import numpy as np
import numpy.typing as npt

import cachelib

cache = cachelib.Cache(None)
memory = cachelib.Memory(None)


@cache.memoize
def bare(x: int, y: str = "a") -> float:
    return 1.0


@cache.memoize(ignore=["verbose"], mmap_mode="r")
def called(a: npt.NDArray[np.float64], verbose: bool = False) -> list[int]:
    return [1]


@memory.cache
def joblib_bare(x: int) -> int:
    return x


@memory.cache(ignore=["y"], verbose=0)
def joblib_called(x: int, y: int = 0) -> str:
    return str(x)


class Model:
    @cache.memoize
    def predict(self, x: int, scale: float = 1.0) -> int:
        return x

    @memory.cache
    def fit(self, x: int) -> str:
        return ""


good_float: float = bare(1, y="b")
good_list: list[int] = called(np.ones(3), verbose=True)
good_int: int = joblib_bare(3)
good_str: str = joblib_called(1, y=2)
good_pair: tuple[int, dict[str, Any]] = joblib_bare.call(3)
good_shelved: int = joblib_bare.call_and_shelve(3).get()
good_check: bool = bare.check_call_in_cache(1)
good_method: int = Model().predict(1)
good_method_keyword: int = Model().predict(1, scale=2.0)
good_unbound: int = Model.predict(Model(), 1)
good_joblib_method: str = Model().fit(2)
good_info: int = cache.info().entries
good_function_info: int = bare.cache_info().hits
good_wrapped: float = bare.__wrapped__(2)
loaded: Any = cachelib.load("file.pkl")
loaded_stream: Any = cachelib.load(io.BytesIO(), mmap_mode=None)
loaded_gzip: Any = cachelib.load(gzip.GzipFile("file.gz"))

bad_argument = bare("one")  # E: arg-type
bad_keyword = bare(1, z="b")  # E: call-arg
bad_return: str = bare(1)  # E: assignment
bad_called_argument = called([1, 2])  # E: arg-type
bad_called_return: int = called(np.ones(3))  # E: assignment
bad_joblib_argument = joblib_bare("x")  # E: arg-type
bad_joblib_keyword = joblib_called(1, z=2)  # E: call-arg
bad_joblib_return: int = joblib_called(1)  # E: assignment
bad_shelved: str = joblib_bare.call_and_shelve(3).get()  # E: assignment
bad_check = bare.check_call_in_cache("one")  # E: arg-type
bad_method: str = Model().predict(1)  # E: assignment
bad_method_argument = Model().predict("one")  # E: arg-type
bad_method_keyword = Model().predict(1, sclae=2.0)  # E: call-arg
bad_method_arity = Model().predict(1, 2.0, 3)  # E: call-arg
bad_joblib_method_argument = Model().fit("x")  # E: arg-type
bad_joblib_method_return: int = Model().fit(1)  # E: assignment
bad_info: str = cache.info().entries  # E: assignment
bad_load = cachelib.load(3)  # E: arg-type
bad_mmap_mode = cachelib.load("file.pkl", mmap_mode="w")  # E: arg-type
'''


def test_decorated_functions_keep_their_signature_and_return_type(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text(SAMPLE)
    # No MYPYPATH: mypy must find cachelib as the developer install put it (editable_mode=compat).
    env = {name: value for name, value in os.environ.items() if name != "MYPYPATH"}
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--follow-imports=silent", "--no-error-summary",
         "--show-error-codes", "--cache-dir", str(tmp_path / "mypy-cache"), str(sample)],
        capture_output=True, text=True, timeout=280, env=env, cwd=tmp_path, check=False,
    )
    assert "error:" in done.stdout or done.returncode == 0, done.stdout + done.stderr
    assert "import-not-found" not in done.stdout, (
        "mypy cannot see cachelib: install it as the README does, pip install -e . --config-settings "
        "editable_mode=compat (setuptools' default editable mode is an import hook type checkers ignore)"
    )
    found = set()
    for line in done.stdout.splitlines():
        match = re.match(r".*sample\.py:(\d+): error: .*\[([a-z-]+)\]$", line)
        if match:
            found.add((int(match.group(1)), match.group(2)))
    expected = {
        (number, line.rsplit("# E: ", 1)[1])
        for number, line in enumerate(SAMPLE.splitlines(), 1)
        if "# E: " in line
    }
    assert found == expected, done.stdout


def expected_lines() -> set[int]:
    return {number for number, line in enumerate(SAMPLE.splitlines(), 1) if "# E: " in line}


@pytest.mark.slow
def test_pyright_sees_the_same_signatures(tmp_path):
    pyright = shutil.which("pyright", path=os.path.dirname(sys.executable)) or shutil.which("pyright")
    if pyright is None:
        pytest.skip("pyright (the test extra) is not installed")
    if shutil.which("node") is None and shutil.which("nodejs") is None:
        pytest.skip("pyright needs Node.js, which is not on PATH")
    sample = tmp_path / "sample.py"
    sample.write_text(SAMPLE)
    # No extra paths: pyright must find cachelib as the developer install put it (editable_mode=compat).
    (tmp_path / "pyrightconfig.json").write_text(json.dumps(
        {"pythonVersion": f"{sys.version_info[0]}.{sys.version_info[1]}"}
    ))
    done = subprocess.run(
        [pyright, "--outputjson", "--pythonpath", sys.executable, str(sample)],
        capture_output=True, text=True, timeout=280, cwd=tmp_path, check=False,
    )
    diagnostics = json.loads(done.stdout)["generalDiagnostics"]
    found = {d["range"]["start"]["line"] + 1 for d in diagnostics if d["severity"] == "error"}
    messages = [(d["range"]["start"]["line"] + 1, d["message"]) for d in diagnostics]
    assert found == expected_lines(), messages
