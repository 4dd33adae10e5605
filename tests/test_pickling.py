"""Memoized functions of a script's ``__main__`` in other processes: joblib (loky), spawn, fork.

Each test runs a real script as ``__main__`` in a subprocess; the script's memoized
function appends every real call to a log file, so the counts cover all processes.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(180)
joblib = pytest.importorskip("joblib")

HEADER = """
import os, pickle, sys
import numpy as np
import cachelib

cache = cachelib.Cache(sys.argv[1])
LOG = sys.argv[2]

def logged(x):
    with open(LOG, "a") as log:
        log.write(f"{os.getpid()} {x}\\n")

@cache.memoize
def square(x):
    logged(x)
    return np.full(1000, x) ** 2

@cache.memoize
def fib(n):
    return n if n < 2 else fib(n - 1) + fib(n - 2)
"""


def run_script(tmp_path: Path, body: str, *extra: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    """Run HEADER + ``body`` as a script's ``__main__``; return the process and the logged calls."""
    script = tmp_path / "script.py"
    script.write_text(HEADER + textwrap.dedent(body))
    log = tmp_path / "calls.log"
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "cache"), str(log), *extra],
        capture_output=True, text=True, timeout=150, check=False, cwd=tmp_path,
    )
    calls = log.read_text().split("\n") if log.exists() else []
    return done, [line.split()[1] for line in calls if line]


def test_joblib_parallel_loky_computes_each_distinct_argument_once(tmp_path):
    done, calls = run_script(tmp_path, """
        if __name__ == "__main__":
            from joblib import Parallel, delayed
            out = Parallel(n_jobs=2)(delayed(square)(x % 6) for x in range(30))
            assert [int(o[0]) for o in out] == [(x % 6) ** 2 for x in range(30)], out
            again = Parallel(n_jobs=2)(delayed(square)(x) for x in range(6))
            assert [int(o[0]) for o in again] == [x * x for x in range(6)]
            # the workers rebuilt the function by value: their entries are the script's own
            assert all(square.check_call_in_cache(x) for x in range(6))
    """)
    assert done.returncode == 0, done.stderr
    assert sorted(calls) == [str(x) for x in range(6)]


@pytest.mark.slow  # loky workers: test_joblib_parallel_loky_... is the quick case
def test_recursive_main_function_runs_in_loky_workers(tmp_path):
    done, _ = run_script(tmp_path, """
        if __name__ == "__main__":
            from joblib import Parallel, delayed
            print(Parallel(n_jobs=2)(delayed(fib)(n) for n in range(12)))
    """)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[0, 1, 1, 2, 3, 5, 8, 13, 21, 34, 55, 89]"


@pytest.mark.parametrize("method", ["spawn", "fork"])
def test_multiprocessing_pool_shares_the_cache(tmp_path, method):
    done, calls = run_script(tmp_path, f"""
        if __name__ == "__main__":
            import multiprocessing
            with multiprocessing.get_context("{method}").Pool(2) as pool:
                out = pool.map(square, [x % 4 for x in range(12)])
            assert [int(o[0]) for o in out] == [(x % 4) ** 2 for x in range(12)]
            assert square.check_call_in_cache(3)
    """)
    assert done.returncode == 0, done.stderr
    assert sorted(calls) == ["0", "1", "2", "3"]


def test_pickled_wrapper_is_small_and_holds_no_cached_data(tmp_path):
    done, _ = run_script(tmp_path, """
        if __name__ == "__main__":
            before = len(pickle.dumps(square))
            for x in range(50):
                square(x)
            after = len(pickle.dumps(square))
            print(before, after)
    """)
    assert done.returncode == 0, done.stderr
    before, after = map(int, done.stdout.split())
    assert before == after
    assert after < 8192


def test_a_redefined_function_of_the_same_name_is_not_taken_for_the_pickled_one(tmp_path):
    """A notebook redefines a function: a pickle of the old one still runs the old code."""
    done, _ = run_script(tmp_path, """
        if __name__ == "__main__":
            @cache.memoize
            def version(x):
                return ("old", x)

            old = pickle.dumps(version)

            @cache.memoize
            def version(x):
                return ("new", x)

            print(pickle.loads(old)(1)[0], version(1)[0])
    """)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["old", "new"]


def test_without_cloudpickle_a_process_lacking_the_function_says_what_to_install(tmp_path):
    done, _ = run_script(tmp_path, """
        if __name__ == "__main__":
            sys.modules["cloudpickle"] = None  # as if neither were installed
            sys.modules["joblib.externals.cloudpickle"] = None
            cachelib._memo.pickling._cloudpickle.cache_clear()
            with open(sys.argv[3], "wb") as out:
                pickle.dump(square, out)
    """, str(tmp_path / "square.pkl"))
    assert done.returncode == 0, done.stderr
    loader = f"import pickle; pickle.load(open({str(tmp_path / 'square.pkl')!r}, 'rb'))"
    loaded = subprocess.run([sys.executable, "-c", loader], capture_output=True, text=True, timeout=60,
                            check=False)
    assert loaded.returncode == 1
    assert "DeserializationError" in loaded.stderr
    assert "pip install cloudpickle" in loaded.stderr
