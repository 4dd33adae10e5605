"""What the command line prints: JSON that follows its schemas, and nothing a terminal would act on.

The escaping is checked on the bytes a real subprocess writes; the JSON documents are
read from ``main`` run in this process.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import cachelib
from cachelib._cli.main import main
from cachelib._cli.report import load_schema
from cachelib._text import age, duration, plural, printable

pytestmark = pytest.mark.timeout(120)
jsonschema = pytest.importorskip("jsonschema", reason="the schema checks need jsonschema (the test extra)")

# What a hostile group member could plant: retitle the terminal, clear it, fake a line of output,
# and a bidirectional override that reorders what follows.
EVIL = "\x1b]2;pwned\x07\x1b[2J\x1b[1;31mALL GOOD\x1b[0m\r\nfake line\u202eexe.txt\x9b31m"


def cli(location, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "cachelib", *args, str(location)], capture_output=True,
                          timeout=60, check=False)


def square(x):
    return np.full(100, x) ** 2


@pytest.fixture
def planted(tmp_path):
    """A cache with one honest entry and one whose function name, call, files and metadata carry escapes."""
    location = tmp_path / "cache"
    cache = cachelib.Cache(location)
    honest = cache.memoize(square)
    honest(3)
    key = "0123456789abcdef" * 2
    metadata = {"function": EVIL, "call": EVIL, "compute_seconds": 1.0, "key_parts": {EVIL: EVIL},
                "depends": [["file", f"/data/{EVIL}", "0" * 32]]}
    cache.entries.put("evil.name-0123456789ab", key, [1, 2], metadata, None,
                      about={"function": EVIL, "identity": "0123456789ab"})
    cache.info()  # counts reach the store now
    return location, honest


def validate(document, command: str) -> None:
    jsonschema.validate(document, load_schema(command), format_checker=jsonschema.FormatChecker())


def json_of(capsys, location, *args: str, status: int = 0):
    """Run ``cachelib ARGS --json LOCATION`` in this process; its document, checked against the schema."""
    assert main([*args, "--json", str(location)]) == status
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out
    document = json.loads(out)
    validate(document, args[0])
    return document


@pytest.mark.parametrize("command", [["info"], ["ls"], ["verify"], ["clear", "--func", "evil.name"]])
def test_text_from_a_cache_reaches_the_terminal_escaped(planted, command):
    location, _ = planted
    done = cli(location, *command)
    assert done.returncode == 0, done.stderr
    for control in (b"\x1b", b"\x07", b"\r", b"\x9b", "\u202e".encode(), "\x9b".encode()):
        assert control not in done.stdout, (command, done.stdout)
        assert control not in done.stderr, (command, done.stderr)
    if command == ["ls"]:
        assert b"\\x1b]2;pwned\\x07\\x1b[2J" in done.stdout
        assert b"\\u202e" in done.stdout
        assert done.stdout.count(b"\n") == 4  # location, header, two entries: no injected line break


def test_json_keeps_the_text_exactly_escaped_by_json(planted, capsys):
    location, honest = planted
    by_function = {entry["function"]: entry for entry in json_of(capsys, location, "ls")["entries"]}
    assert by_function[EVIL]["call"] == EVIL
    assert by_function[EVIL]["depends"] == f"files {EVIL}"
    assert by_function[honest.name]["call"] == "square(x=3)"
    assert by_function[honest.name]["key"] == honest.cache_key(3)
    info = json_of(capsys, location, "info")
    assert {f["function"] for f in info["functions"]} == {EVIL, honest.name}
    assert info["entries"] == 2
    assert json_of(capsys, location, "verify")["checked"] == 2


def test_json_of_verify_reports_damage_and_fixes(planted, capsys):
    location, honest = planted
    path = location / honest.namespace / honest.cache_key(3)[:2] / f"{honest.cache_key(3)}.cl"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    document = json_of(capsys, location, "verify", status=1)
    assert (document["checked"], document["damaged_count"], document["removed"]) == (2, 1, 0)
    assert [d["path"] for d in document["damaged"]] == [str(path)]
    fixed = json_of(capsys, location, "verify", "--fix")
    assert fixed["damaged"][0]["removed"] is True
    assert not path.exists()


def test_json_of_an_empty_location(tmp_path, capsys):
    for command in ("info", "ls", "verify"):
        json_of(capsys, tmp_path, command)


def test_human_forms():
    assert plural(1, "entry") == "1 entry"
    assert plural(2, "entry") == "2 entries"
    assert plural(1200, "hit") == "1,200 hits"
    assert age(1000.0, now=1030.0) == "just now"
    assert age(1000.0, now=1000.0 + 180) == "3 min ago"
    assert age(1000.0, now=1000.0 + 2 * 86400 + 5) == "2 days ago"
    assert age(None) == "-"
    assert duration(0.25) == "250 ms"
    assert duration(1.5) == "1.50 s"
    assert duration(0) == "0 s"
    assert printable("a\x1b[2Jb\tc\u202e") == "a\\x1b[2Jb\\tc\\u202e"
    assert printable("plain text, é and 漢字") == "plain text, é and 漢字"
