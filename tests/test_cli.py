"""The command line, each command run in a process of its own on a cache filled through the API.

The commands run in a forked child (``_system.fork_cli``, some 50 ms); what depends on how
the command line starts (``python -m cachelib``, the console script, ``--help``, the working
directory and the environment) runs in a new interpreter (``_system.run_cli``, a quarter of a
second or more), and the fast tier keeps one case of each of those.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from _system import fork_cli, run_cli
from helpers import entry_files, slow_except

import cachelib
from cachelib._cli.main import build_parser

pytestmark = pytest.mark.timeout(120)


def square(x):
    return np.full(1000, x, dtype=np.float64) ** 2  # about 8 KB per entry


def negate(x):
    return -x


def run(location, *args, fresh=False, **options):
    """Run ``cachelib --location LOCATION ARGS`` in a forked child or, with ``fresh``, as
    ``python -m cachelib`` in a new interpreter (``options``: its ``cwd`` and ``env``); either
    way it must end in time, without a traceback, and fail in one line. Return the process."""
    where = () if location is None else ("--location", location)
    return run_cli(*where, *args, **options) if fresh else fork_cli(*where, *args)


@pytest.fixture
def filled(tmp_path):
    """A cache with square(0..2) (two of them hit once) and negate(1); returns its functions."""
    location = tmp_path / "cache"
    cache = cachelib.Cache(location)
    sq = cache.memoize(square)
    neg = cache.memoize(negate)
    for x in range(3):
        sq(x)
    sq(0)
    sq(1)
    neg(1)
    cache.info()  # counts reach the store about a second after a call; info() writes this process's now
    return location, sq, neg


def table_rows(stdout: str) -> dict:
    """Parse the ``info`` table: function name -> {column: cell}."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("function"))
    header = re.split(r"\s{2,}", lines[start].strip())
    rows = {}
    for line in lines[start + 1 :]:
        if line.startswith("total"):
            break
        cells = re.split(r"\s{2,}", line.strip())
        assert len(cells) == len(header), (header, cells)
        rows[cells[0]] = dict(zip(header, cells))
    return rows


def test_info_lists_functions_with_entries_and_hits(filled):
    location, sq, neg = filled
    done = run(location, "info")
    assert done.returncode == 0, done.stderr
    assert str(location) in done.stdout
    rows = table_rows(done.stdout)
    assert set(rows) == {sq.name, neg.name}
    assert rows[sq.name]["entries"] == "3"
    assert rows[sq.name]["hits"] == "2"
    assert rows[sq.name]["misses"] == "3"
    assert rows[neg.name]["entries"] == "1"
    assert rows[neg.name]["hits"] == "0"
    assert "total: 4 entries" in done.stdout


def test_info_of_an_empty_location(tmp_path):
    done = run(tmp_path, "info")
    assert done.returncode == 0, done.stderr
    assert "total: 0 entries" in done.stdout


def ls_rows(stdout: str) -> list[list[str]]:
    """The rows of ``ls``'s table (after its location line and header), split into cells."""
    lines = stdout.splitlines()
    assert lines[0].startswith("cache at "), lines
    header = ["function", "key", "size", "stored", "used", "call [depends on]"]
    assert re.split(r"\s{2,}", lines[1].strip()) == header
    return [re.split(r"\s{2,}", line.strip(), maxsplit=5) for line in lines[2:]]


def test_ls_lists_the_entries_of_one_function(filled):
    location, sq, _ = filled
    done = run(location, "ls", "--func", "square")
    assert done.returncode == 0, done.stderr
    rows = ls_rows(done.stdout)
    assert len(rows) == 3
    keys = {p.stem for p in entry_files(location / sq.namespace)}
    assert {row[1] for row in rows} == keys
    assert {row[0] for row in rows} == {sq.name}
    assert all(re.fullmatch(r"\d+\.\d KiB", row[2]) for row in rows), rows  # about 8 KB each
    assert all(row[3] == "just now" for row in rows), rows
    by_full_name = run(location, "ls", "--func", sq.name)
    assert by_full_name.returncode == 0
    assert len(ls_rows(by_full_name.stdout)) == 3


def test_ls_order_is_by_function_then_oldest_first(filled):
    location, sq, _ = filled
    listed = json.loads(run(location, "ls", "--json").stdout)["entries"]
    names = [entry["function"] for entry in listed]
    assert names == sorted(names)
    squares = [entry for entry in listed if entry["function"] == sq.name]
    assert [entry["call"] for entry in squares] == ["square(x=0)", "square(x=1)", "square(x=2)"]
    text = [row[1] for row in ls_rows(run(location, "ls").stdout)]
    assert text == [entry["key"] for entry in listed]


def test_ls_of_an_unknown_function_fails(filled):
    location, _, _ = filled
    done = run(location, "ls", "--func", "no_such_function")
    assert done.returncode == 1
    assert "no_such_function" in done.stderr


def test_clear_one_function(filled):
    location, sq, neg = filled
    done = run(location, "clear", "--func", "square")
    assert done.returncode == 0, done.stderr
    assert entry_files(location / sq.namespace) == []
    assert len(entry_files(location / neg.namespace)) == 1
    assert not sq.check_call_in_cache(0)
    assert neg.check_call_in_cache(1)


def test_clear_everything_keeps_the_location(filled):
    location, sq, neg = filled
    done = run(location, "clear")
    assert done.returncode == 0, done.stderr
    assert entry_files(location) == []
    assert location.is_dir()
    assert not neg.check_call_in_cache(1)
    assert not sq.check_call_in_cache(0)


def test_prune_max_size(filled):
    location, sq, neg = filled
    for path in entry_files(location / sq.namespace):  # last used an hour before negate(1)
        used = path.stat().st_mtime - 3600
        os.utime(path, (used, used))
    done = run(location, "prune", "--max-size", "1K")
    assert done.returncode == 0, done.stderr
    remaining = entry_files(location)
    assert sum(p.stat().st_size for p in remaining) <= 1024
    assert len(remaining) == 1
    assert neg.check_call_in_cache(1)  # the small, most recently stored entry fits and stays
    assert "removed 3 entries" in done.stdout


def test_prune_older_than(filled):
    location, sq, neg = filled
    old = entry_files(location / sq.namespace)
    for path in old:
        stored = path.stat().st_mtime - 3600
        os.utime(path, (stored, stored))
    done = run(location, "prune", "--older-than", "30m")  # the old ones are an hour old
    assert done.returncode == 0, done.stderr
    assert not any(p.exists() for p in old)
    assert neg.check_call_in_cache(1)  # stored just now: kept
    assert "removed 3 entries" in done.stdout


def test_prune_without_limits_is_a_usage_error(filled):
    location, _, _ = filled
    done = run(location, "prune")
    assert done.returncode == 2
    assert len(entry_files(location)) == 4


def test_verify_clean_then_damaged_then_fixed(filled):
    location, sq, _ = filled
    clean = run(location, "verify")
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "4 entries checked, 0 damaged" in clean.stdout

    victim = entry_files(location / sq.namespace)[0]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    damaged = run(location, "verify")
    assert damaged.returncode == 1, damaged.stdout + damaged.stderr
    assert str(victim) in damaged.stdout
    assert victim.exists()  # verify alone changes nothing

    fixed = run(location, "verify", "--fix")
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert str(victim) in fixed.stdout
    assert not victim.exists()
    assert len(entry_files(location)) == 3
    assert run(location, "verify").returncode == 0


@pytest.mark.parametrize(
    "command", [["info"], ["ls", "--func", "square"], ["clear"], ["verify"], ["prune", "--max-size", "1K"]]
)
def test_missing_location_is_a_usage_error(tmp_path, command):
    missing = tmp_path / "nowhere"
    done = run(missing, *command)
    assert done.returncode == 2
    assert "nowhere" in done.stderr
    assert not missing.exists()


@pytest.mark.slow  # the location: see test_demo_with_location_before_the_command
def test_location_from_the_environment(filled, tmp_path):
    location, sq, _ = filled
    env = dict(os.environ, CACHELIB_LOCATION=str(location))
    done = run(None, "info", fresh=True, cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    assert sq.name in done.stdout


def test_demo_with_location_before_the_command(tmp_path):
    location = tmp_path / "demo"
    done = run(location, "demo", "--size", "200", fresh=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "hit" in done.stdout
    assert len(entry_files(location)) == 2  # the cache was kept at the location


@pytest.mark.slow  # demo: see test_demo_with_location_before_the_command
def test_demo_with_location_after_the_command(tmp_path):
    location = tmp_path / "demo"
    done = run(None, "demo", "--size", "200", "--location", location, fresh=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "hit" in done.stdout


def test_console_script_runs_help():
    script = Path(sys.executable).parent / "cachelib"
    assert script.exists()
    done = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert "usage: cachelib" in done.stdout
    for command in ("info", "ls", "clear", "prune", "verify", "demo"):
        assert command in done.stdout


def test_ls_without_a_function_lists_every_entry_with_its_call(filled):
    location, _, _ = filled
    done = run(None, "ls", location)
    assert done.returncode == 0, done.stderr
    calls = sorted(row[-1] for row in ls_rows(done.stdout))
    assert calls == ["negate(x=1)", "square(x=0)", "square(x=1)", "square(x=2)"]


def test_ls_shows_arrays_as_shape_and_dtype(tmp_path):
    location = tmp_path / "cache"
    neg = cachelib.Cache(location).memoize(negate)
    neg(np.zeros((3, 4), dtype=np.float32))
    done = run(location, "ls")
    assert done.returncode == 0, done.stderr
    assert done.stdout.rstrip().endswith("negate(x=ndarray(shape=(3, 4), dtype=float32))")


@pytest.mark.parametrize("command", slow_except(["info", "ls", "clear", "prune", "verify", "demo"], "prune"))
def test_every_command_has_a_help_that_describes_it_and_its_options(command):
    done = run(None, command, "--help", fresh=True)
    assert done.returncode == 0, done.stderr
    text = done.stdout
    assert f"usage: cachelib {command}" in text
    description = text.split("\n\n")[1]
    assert len(description.split()) >= 5, text  # a sentence, not a bare name
    assert "--location DIR" in text
    if command != "demo":
        assert "positional arguments:\n  DIR" in text
        assert "--secret-file FILE" in text
    subparsers = next(a for a in build_parser()._actions if a.dest == "command")
    for action in subparsers.choices[command]._actions:
        assert action.help, f"{command}: {action.option_strings or action.dest} has no help"


def test_a_group_location_is_opened_in_group_mode_only_when_asked(tmp_path):
    """The command line opens a location as ``Cache`` does: group mode comes from ``--share group``,
    never from the directory's mode bits; without it, a group's location is refused with the fix."""
    location = tmp_path / "shared"
    location.mkdir()
    os.chmod(location, 0o3770)
    secret = b"s" * 32
    cachelib.Cache(location, share="group", secret=secret).memoize(square)(3)
    refused = run(None, "info", location)
    assert refused.returncode == 1
    assert "--share group" in refused.stderr and "Traceback" not in refused.stderr
    shared = run(None, "ls", location, "--share", "group")
    assert shared.returncode == 0, shared.stderr
    assert "square(x=3)" in shared.stdout
