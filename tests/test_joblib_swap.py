"""scikit-learn's own memory tests pass with ``joblib.Memory`` swapped for ``cachelib.Memory``.

They run from the installed scikit-learn (its wheel ships its tests) in a subprocess, with
the ``joblib_swap`` plugin loaded first; the plugin's summary says that the tests built
cachelib Memory objects and that the swap held.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
pytest.importorskip("sklearn", reason="scikit-learn (the test extra) is not installed")

TESTS = Path(__file__).resolve().parent
SKLEARN_MEMORY_TESTS = ["sklearn.tests.test_pipeline", "sklearn.utils.tests.test_validation",
                        "sklearn.cluster.tests.test_hierarchical"]


def test_scikit_learns_memory_tests_pass_on_cachelib(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "joblib_swap", "-p", "no:cacheprovider", "-q", "--rootdir",
         str(tmp_path), "-c", os.devnull, "--pyargs", *SKLEARN_MEMORY_TESTS, "-k", "memory or cache"],
        capture_output=True, text=True, timeout=850, cwd=tmp_path, env=env, check=False,
    )
    assert done.returncode == 0, done.stdout[-5000:] + done.stderr[-2000:]
    built = re.search(r"joblib_swap: (\d+) cachelib.Memory built; swap kept: (\w+)", done.stdout)
    assert built is not None, done.stdout[-3000:]
    assert int(built.group(1)) >= 5 and built.group(2) == "True", built.group(0)
    passed = re.search(r"(\d+) passed", done.stdout)
    assert passed is not None and int(passed.group(1)) >= 10, done.stdout[-3000:]
