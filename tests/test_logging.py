"""Logging: one line per event whatever the application configured, and no handler of our own.

Each case runs in a fresh interpreter, as an application would, and counts the lines
that reach its stdout and stderr.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.timeout(120)

PROGRAM = """
import logging, sys
import cachelib

{setup}
cache = cachelib.Cache({location!r}, verbose={verbose})

@cache.memoize
def square(x):
    return x * x

square(3)
square(3)
square(4)
"""

SETUPS = {
    "none": "",
    "basicConfig": "logging.basicConfig(level=logging.DEBUG)",
    # what a notebook kernel or a dask worker does: a handler on the root logger
    "root handler on stdout": "logging.getLogger().addHandler(logging.StreamHandler(sys.stdout))\n"
                              "logging.getLogger().setLevel(logging.INFO)",
}


def run(tmp_path, setup: str, verbose: int) -> list[str]:
    location = str(tmp_path / f"cache-{setup}-{verbose}")
    source = textwrap.dedent(PROGRAM).format(setup=SETUPS[setup], location=location, verbose=verbose)
    done = subprocess.run([sys.executable, "-c", source], capture_output=True, text=True, timeout=60,
                          check=False, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    return (done.stdout + done.stderr).splitlines()


@pytest.mark.parametrize("setup", list(SETUPS))
def test_verbose_1_prints_each_miss_once(tmp_path, setup):
    lines = [line for line in run(tmp_path, setup, 1) if "cachelib" in line]
    assert len(lines) == 2, lines  # two misses, each once; the hit says nothing
    assert lines[0].startswith("[cachelib] miss square(x=3): nothing stored for this function yet; computed")
    assert " B in " in lines[0]  # sizes in one unit system: bytes, KiB, MiB ...


@pytest.mark.parametrize("setup", list(SETUPS))
def test_verbose_2_prints_each_hit_once_too(tmp_path, setup):
    lines = [line for line in run(tmp_path, setup, 2) if "cachelib" in line]
    assert [line.split()[1] for line in lines] == ["miss", "hit", "miss"], lines


def test_a_quiet_cache_reaches_the_application_handlers_only(tmp_path):
    assert [line for line in run(tmp_path, "none", 0) if "cachelib" in line] == []
    configured = [line for line in run(tmp_path, "basicConfig", 0) if "miss" in line]
    assert len(configured) == 2, configured  # the application asked for INFO from every logger
    assert configured[0].startswith("INFO:cachelib:miss square(x=3)")


def test_the_package_logger_has_only_a_null_handler():
    done = subprocess.run(
        [sys.executable, "-c", "import logging, cachelib; print([type(h).__name__ for h in "
         "logging.getLogger('cachelib').handlers], logging.getLogger('cachelib').propagate)"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert done.stdout.split() == ["['NullHandler']", "True"], done.stderr
