"""Logging: one line per event whatever the application configured, and no handler of our own.

Each case runs in a fresh interpreter, as an application would, and counts the lines
that reach its stdout and stderr: a quiet cache, then a verbose=1 and a verbose=2 one,
each calling ``square(3)`` (a miss), ``square(3)`` (a hit) and ``square(4)`` (a miss).
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
for verbose in (0, 1, 2):
    print(f"-- verbose={{verbose}}", flush=True)
    cache = cachelib.Cache(sys.argv[1] + str(verbose), verbose=verbose)

    @cache.memoize
    def square(x):
        return x * x

    square(3)
    square(3)
    square(4)
    sys.stderr.flush()
"""

SETUPS = {
    "none": "",
    "basicConfig": "logging.basicConfig(level=logging.DEBUG, stream=sys.stdout)",
    # what a notebook kernel or a dask worker does: a handler on the root logger
    "root handler": "logging.getLogger().addHandler(logging.StreamHandler(sys.stdout))\n"
                    "logging.getLogger().setLevel(logging.INFO)",
}


def run(tmp_path, setup: str) -> dict[int, list[str]]:
    """The lines each cache made, by its verbose level (stderr merged into stdout, in order)."""
    source = textwrap.dedent(PROGRAM).format(setup=SETUPS[setup])
    done = subprocess.run([sys.executable, "-c", source, str(tmp_path / "cache")], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=60, check=False, cwd=tmp_path)
    assert done.returncode == 0, done.stdout
    lines: dict[int, list[str]] = {}
    for line in done.stdout.splitlines():
        if line.startswith("-- verbose="):
            level = int(line.split("=")[1])
            lines[level] = []
        elif "cachelib" in line:
            lines[level].append(line)
    return lines


@pytest.mark.parametrize("setup", list(SETUPS))
def test_each_event_is_printed_once_whatever_the_application_configured(tmp_path, setup):
    lines = run(tmp_path, setup)
    one, two = lines[1], lines[2]
    assert len(one) == 2, one  # two misses, each once; the hit says nothing
    assert one[0].startswith("[cachelib] miss square(x=3): nothing stored for this function yet; computed")
    assert " B in " in one[0]  # sizes in one unit system: B, KiB, MiB ...
    assert [line.split()[1] for line in two] == ["miss", "hit", "miss"], two
    if setup == "basicConfig":  # a quiet cache's records reach the application's handlers, once
        levels = [line.split(":")[0:2] for line in lines[0]]  # the application asked for DEBUG
        assert levels == [["INFO", "cachelib"], ["DEBUG", "cachelib"], ["INFO", "cachelib"]], lines[0]
        assert lines[0][0].startswith("INFO:cachelib:miss square(x=3)")
    elif setup == "none":
        assert lines[0] == []


def test_the_package_logger_has_only_a_null_handler():
    done = subprocess.run(
        [sys.executable, "-c", "import logging, cachelib; print([type(h).__name__ for h in "
         "logging.getLogger('cachelib').handlers], logging.getLogger('cachelib').propagate)"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert done.stdout.split() == ["['NullHandler']", "True"], done.stderr
