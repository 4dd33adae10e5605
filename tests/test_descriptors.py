"""Descriptors: what cachelib keeps open under a low ``RLIMIT_NOFILE`` (64, and macOS's 256).

A fresh interpreter lowers its own limit, holds a quarter of it in files of its own,
and memoizes 300 functions: stores, hits, clears and background syncs, checking after
every call that its own ``open()`` still works. Every function must keep storing and
hitting, nothing may fail with ``EMFILE``, and no warning may be needed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.timeout(240), pytest.mark.slow]

_SCRIPT = """
import json, os, resource, sys, warnings
limit = int(sys.argv[2])
resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
import numpy as np
import cachelib

location = sys.argv[1]
mine = [open(__file__, "rb") for _ in range(limit // 4)]  # the program's own open files
cache = cachelib.Cache(location)  # fsync="background": syncs queue on the worker thread
functions, computed = [], []
for i in range(300):
    def compute(x, i=i):
        computed.append(i)
        return np.full(64, x * 1000 + i)
    compute.__qualname__ = compute.__name__ = f"compute{i}"
    functions.append(cache.memoize(compute, ignore=["computed"]))

failures, wrong, most = [], 0, 0


def my_open():
    global most
    try:
        open(__file__, "rb").close()
    except OSError as exc:
        failures.append(repr(exc))
    most = max(most, len(os.listdir("/proc/self/fd")))


with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    for round_ in range(3):
        for i, f in enumerate(functions):
            for _ in range(2):  # a miss, then a hit
                wrong += int(f(round_)[0]) != round_ * 1000 + i
                my_open()
            if round_ == 1 and i % 50 == 0:
                f.clear()
                my_open()
        if round_ == 0:
            cache.clear()
    info = cache.info()
stored = sum(1 for _, _, names in os.walk(location) for name in names if name.endswith(".cl"))
print(json.dumps({"failures": failures[:5], "wrong": wrong, "most": most, "stored": stored,
                  "computed": len(computed), "entries": info.entries,
                  "warnings": sorted({str(w.message)[:200] for w in caught})}))
"""


@pytest.mark.parametrize("limit", [64, 256])
def test_300_functions_under_a_low_descriptor_limit(tmp_path: Path, limit: int) -> None:
    """Under RLIMIT_NOFILE of 64 or 256, 300 memoized functions store, hit, clear and sync in the
    background while the program holds a quarter of the limit itself: its own open() never fails,
    every function keeps storing (each call computes once, then hits), and nothing warns."""
    script = tmp_path / "descriptors.py"
    script.write_text(_SCRIPT)
    process = subprocess.run([sys.executable, str(script), str(tmp_path / "cache"), str(limit)],
                             capture_output=True, text=True, timeout=200, check=False)
    assert process.returncode == 0, process.stderr[-3000:]
    assert "Too many open files" not in process.stderr, process.stderr[-3000:]
    report = json.loads(process.stdout.strip().splitlines()[-1])
    assert report["failures"] == [], f"the program's own open() failed: {report['failures']}"
    assert report["warnings"] == [], report["warnings"]
    assert report["wrong"] == 0
    assert report["computed"] == 900, "calls that should have hit computed again: a store was lost"
    assert report["stored"] == 594 and report["entries"] == 594, report  # rounds 1 and 2, less 6 cleared
    assert report["most"] <= limit * 3 // 4, f"{report['most']} descriptors open under a limit of {limit}"


_THREADS = """
import json, random, resource, sys, threading, time, warnings
resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))  # four directory descriptors in all
import numpy as np
import cachelib

cache = cachelib.Cache(sys.argv[1])
functions = []
for i in range(50):
    def compute(x, i=i):
        return np.full(8, x * 100 + i)
    compute.__qualname__ = compute.__name__ = f"compute{i}"
    functions.append(cache.memoize(compute))
errors, wrong, calls = [], [0], [0]


def hammer(seed):
    rng = random.Random(seed)
    deadline = time.monotonic() + float(sys.argv[2])
    while time.monotonic() < deadline:
        i, x = rng.randrange(50), rng.randrange(4)
        try:
            if rng.random() < 0.01:
                functions[i].clear()
            elif int(functions[i](x)[0]) != x * 100 + i:
                wrong[0] += 1
            calls[0] += 1
        except Exception as exc:
            errors.append(repr(exc))


with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    threads = [threading.Thread(target=hammer, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
print(json.dumps({"errors": errors[:5], "wrong": wrong[0], "calls": calls[0],
                  "warnings": sorted({str(w.message)[:200] for w in caught})}))
"""


def test_threads_evicting_each_others_directories_never_misuse_a_descriptor(tmp_path: Path) -> None:
    """Four threads calling 50 functions under a budget of four directory descriptors: directories
    are evicted and reopened all the time, one thread's in use while another evicts it, and every
    result is right, with no error and no warning (no descriptor closed under a user, none reused)."""
    script = tmp_path / "threads.py"
    script.write_text(_THREADS)
    process = subprocess.run([sys.executable, str(script), str(tmp_path / "cache"), "2"],
                             capture_output=True, text=True, timeout=120, check=False)
    assert process.returncode == 0, process.stderr[-3000:]
    report = json.loads(process.stdout.strip().splitlines()[-1])
    assert report["errors"] == [] and report["warnings"] == [], report
    assert report["wrong"] == 0
    assert report["calls"] > 200, report
