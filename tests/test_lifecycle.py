"""Processes that fork or exit while cachelib's work is in flight: real forks, real kills, real exits.

A call made while the interpreter shuts down (a non-daemon thread still running
after the main thread returned, an ``atexit`` handler) works as the plain function
does, stored and counted.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from _system import TESTS, run_with_timeout
from _victims import computations

import cachelib

pytestmark = pytest.mark.timeout(180)


# --- interpreter shutdown ----------------------------------------------------------------------

_SHUTDOWN_SCRIPT = """
import atexit, sys, threading, time
sys.path.insert(0, sys.argv[1])
import numpy as np
import cachelib
from _victims import memoized, note

location, log, how = sys.argv[2], sys.argv[3], sys.argv[4]


def total(a, log=None):
    note(log, "total")
    return float(a.sum())


f = memoized(location, total)
big = np.arange(2_000_000, dtype=np.float64)  # 16 MB: hashed on the thread pool, when there is one


def call():
    print("result", f(big, log=log), flush=True)


if how == "thread":
    def after_main():
        time.sleep(0.3)  # the main thread has returned by now
        assert threading._SHUTTING_DOWN
        call()
    threading.Thread(target=after_main).start()
else:
    atexit.register(call)
"""


@pytest.mark.parametrize("how", ["thread", "atexit"])
def test_a_call_during_interpreter_shutdown_works_and_is_stored(tmp_path: Path, how: str) -> None:
    """A memoized call with a large argument from a non-daemon thread outliving the main thread, or
    from an atexit handler, returns the right result, stores it and counts it; a second run hits."""
    location, log = tmp_path / "cache", tmp_path / "log"
    script = tmp_path / "shutdown.py"
    script.write_text(_SHUTDOWN_SCRIPT)
    expected = float(sum(range(2_000_000)))
    for _ in range(2):
        process = subprocess.run([sys.executable, str(script), str(TESTS), str(location), str(log), how],
                                 capture_output=True, text=True, timeout=120, check=False)
        assert process.returncode == 0, process.stderr
        assert process.stderr == "", process.stderr
        assert process.stdout.split() == ["result", repr(expected)]
    assert computations(log) == ["total"], "the second run did not hit what the first stored"
    info = run_with_timeout(_info_counts, str(location)).result()
    assert info == (1, 1), f"hits and misses counted: {info}"


def _info_counts(location: str) -> tuple[int, int]:
    info = cachelib.Cache(location).info()
    return info.hits, info.misses
