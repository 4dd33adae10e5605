"""The built wheel installs into a fresh venv and works there: the distribution users get.

The wheel is built from this tree (PEP 517, pyproject.toml's build requirements), installed
with its dependencies into a new venv, and used from a directory outside the source tree.
"""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[1]

CHECK = """
import json, sys, cachelib
from cachelib._cli.report import load_schema
print(json.dumps({"file": cachelib.__file__, "version": cachelib.__version__,
                  "schema": load_schema("ls")["title"], "cache": hasattr(cachelib, "Cache")}))
"""


def run(*command: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=cwd, check=False)
    assert done.returncode == 0, f"{command}:\n{done.stdout}\n{done.stderr}"
    return done


def test_the_wheel_installs_and_runs_in_a_fresh_venv(tmp_path):
    wheels = tmp_path / "wheels"
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(ROOT), cwd=tmp_path)
    [wheel] = wheels.glob("*.whl")
    assert wheel.name.startswith("cachelib_numpy-")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata = archive.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "cachelib/py.typed" in names
    assert {f"cachelib/_cli/schemas/{c}.json" for c in ("info", "ls", "verify")} <= set(names)
    assert not any(name.startswith(("tests/", "benchmarks/", "docs/")) for name in names)
    assert "Name: cachelib-numpy" in metadata and "Requires-Python: >=3.10" in metadata
    assert any(name.endswith("LICENSE") for name in names)

    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", str(venv), cwd=tmp_path)
    python = venv / "bin" / "python"
    run(str(python), "-m", "pip", "install", "-q", str(wheel), cwd=tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    report = json.loads(run(str(python), "-c", CHECK, cwd=elsewhere).stdout)
    assert report["file"].startswith(str(venv)), report  # the installed copy, not this tree
    assert report["schema"] == "cachelib ls --json" and report["cache"]
    assert run(str(venv / "bin" / "cachelib"), "--version", cwd=elsewhere).stdout.split() == [
        "cachelib", report["version"]]
    demo = run(str(python), "-m", "cachelib", "demo", "--size", "100", cwd=elsewhere)
    assert "a hit, arrays memory-mapped" in demo.stdout
    extras = run(str(python), "-m", "pip", "show", "cachelib-numpy", cwd=elsewhere).stdout
    assert "Requires: filelock, numpy, xxhash, zstandard" in extras  # no test tool comes along
