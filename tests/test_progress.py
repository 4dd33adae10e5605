"""Long loads and stores show progress on stderr when the cache is verbose, and only then.

A value whose pickling (or unpickling) takes seconds makes a store (or a load) long
without depending on the machine's speed. Each case runs in a fresh interpreter whose
stderr is a pipe (as in a notebook or a log file) or a terminal (a pseudo-terminal).
"""

from __future__ import annotations

import os
import pty
import subprocess
import sys
import textwrap

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

PROGRAM = textwrap.dedent("""
    import sys, time
    import cachelib

    def rebuild():
        time.sleep(2.5)
        return Slow()

    class Slow:
        def __reduce__(self):
            time.sleep(2.5)
            return (rebuild, ())

    cache = cachelib.Cache(sys.argv[1], verbose=int(sys.argv[2]))

    @cache.memoize
    def make(n):
        return Slow()

    make(1)   # a long store
    make(1)   # a long load
    print("done", flush=True)
""")


def run_on_pipe(tmp_path, verbose: int) -> list[str]:
    done = subprocess.run([sys.executable, "-c", PROGRAM, str(tmp_path / "cache"), str(verbose)],
                          capture_output=True, text=True, timeout=100, check=False)
    assert done.returncode == 0, done.stderr
    return done.stderr.splitlines()


def test_a_verbose_cache_shows_long_stores_and_loads_once_each(tmp_path):
    lines = run_on_pipe(tmp_path, 2)
    assert lines[0] == "[cachelib] storing make(n=1) ... (running for more than 1 s)", lines
    assert lines[1].startswith("[cachelib] miss make(n=1): nothing stored for this function yet; computed in")
    assert lines[2] == "[cachelib] loading make ... (running for more than 1 s)", lines
    assert lines[3].startswith("[cachelib] hit make: loaded in ")
    assert len(lines) == 4, lines


def test_a_quiet_cache_shows_nothing(tmp_path):
    assert run_on_pipe(tmp_path, 0) == []


def test_on_a_terminal_the_line_is_redrawn_then_erased(tmp_path):
    controller, terminal = pty.openpty()
    process = subprocess.Popen([sys.executable, "-c", PROGRAM, str(tmp_path / "cache"), "1"],
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=terminal)
    os.close(terminal)
    output = b""
    while True:
        try:
            chunk = os.read(controller, 4096)
        except OSError:  # the terminal closed: the program has ended
            break
        if not chunk:
            break
        output += chunk
    assert process.wait(timeout=100) == 0
    os.close(controller)
    text = output.decode()
    drawn = text.index("\r[cachelib] storing make(n=1) ... ")
    erased = text.index("\r" + " " * len("[cachelib] storing make(n=1) ... 1 s"), drawn)
    assert text.index("[cachelib] miss make(n=1)", erased) > erased
    assert "\r[cachelib] loading make ... " in text
    assert "running for more than" not in text  # that is the form for pipes
