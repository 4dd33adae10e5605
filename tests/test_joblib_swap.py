"""Libraries' own caching tests pass with ``joblib.Memory`` swapped for ``cachelib.Memory``.

They run from the installed scikit-learn and nilearn (their wheels ship their tests) in a
subprocess, with the ``joblib_swap`` plugin loaded first; the plugin's summary says that
the tests built cachelib Memory objects and that the swap held.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

TESTS = Path(__file__).resolve().parent
SKLEARN_MEMORY_TESTS = ["sklearn.tests.test_pipeline", "sklearn.utils.tests.test_validation",
                        "sklearn.cluster.tests.test_hierarchical"]


# nilearn's tests that read joblib's folder layout (<location>/joblib/<module>/<function>/<hash>/),
# which cachelib does not have on purpose (README, "Coming from joblib": Layout).
NILEARN_LAYOUT_TESTS = ["test_cache_memory_level", "test_cache_shelving"]


def run_swapped(tmp_path: Path, modules: list[str], selection: str, least: int) -> None:
    """Run ``modules``' tests matching ``selection`` with the swap; all must pass, at least ``least``."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "joblib_swap", "-p", "no:cacheprovider", "-q", "--rootdir",
         str(tmp_path), "-c", os.devnull, "--pyargs", *modules, "-k", selection],
        capture_output=True, text=True, timeout=850, cwd=tmp_path, env=env, check=False,
    )
    assert done.returncode == 0, done.stdout[-5000:] + done.stderr[-2000:]
    built = re.search(r"joblib_swap: (\d+) cachelib.Memory built; swap kept: (\w+)", done.stdout)
    assert built is not None, done.stdout[-3000:]
    assert int(built.group(1)) >= 3 and built.group(2) == "True", built.group(0)
    passed = re.search(r"(\d+) passed", done.stdout)
    assert passed is not None and int(passed.group(1)) >= least, done.stdout[-3000:]


def test_scikit_learns_memory_tests_pass_on_cachelib(tmp_path):
    pytest.importorskip("sklearn", reason="scikit-learn (the test extra) is not installed")
    run_swapped(tmp_path, SKLEARN_MEMORY_TESTS, "memory or cache", least=10)


def test_nilearns_caching_tests_pass_on_cachelib_but_for_joblibs_layout(tmp_path):
    pytest.importorskip("nilearn", reason="nilearn is not installed: pip install 'cachelib-numpy[clients]'")
    selection = " and ".join(f"not {name}" for name in NILEARN_LAYOUT_TESTS)
    run_swapped(tmp_path, ["nilearn._utils.tests.test_cache_mixin", "nilearn._utils.tests.test_logger"],
                selection, least=6)
