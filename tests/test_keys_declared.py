"""Declared dependencies (``depends_on=``): paths and globs, environment variables, packages, tokens.

Each is part of every key of the function and named by ``explain``; two states of one
(two package versions, two values of a variable) keep entries of their own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile

import pytest
from _keysupport import Project

import cachelib

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def cache(tmp_path):
    return cachelib.Cache(tmp_path / "cache")


def test_a_glob_misses_when_a_matched_file_changes_appears_or_goes(tmp_path, cache, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.csv").write_text("1")
    computed = []

    @cache.memoize(depends_on=["data/*.csv"], ignore=["computed"])
    def report(n, computed=computed):
        computed.append(n)
        return len(os.listdir("data")) * n

    assert report(1) == 1
    assert report(1) == 1
    os.utime(tmp_path / "data" / "a.csv")  # touched: the same content
    assert report(1) == 1
    assert len(computed) == 1
    (tmp_path / "data" / "a.csv").write_text("2")
    assert report.explain(1) == "file `data/*.csv` changed"
    assert report(1) == 1
    (tmp_path / "data" / "b.csv").write_text("3")
    assert report(1) == 2
    (tmp_path / "data" / "b.csv").unlink()
    assert report(1) == 1  # the state of the first edit: its entry is still there
    assert len(computed) == 3


def test_a_declared_directory_covers_everything_under_it(tmp_path, cache):
    model = tmp_path / "model"
    (model / "weights").mkdir(parents=True)
    (model / "weights" / "w.bin").write_bytes(b"\x01")
    calls = []

    @cache.memoize(depends_on=[model], ignore=["calls"])
    def predict(x, calls=calls):
        calls.append(x)
        return x

    predict(1)
    (model / "weights" / "w.bin").write_bytes(b"\x02")
    predict(1)
    predict(1)
    assert len(calls) == 2
    assert "file `" in predict.explain(2) or predict.explain(2).startswith("argument")


def test_a_missing_path_is_a_state_of_its_own(tmp_path, cache):
    flag = tmp_path / "flag"

    @cache.memoize(depends_on=[str(flag)])
    def read_flag():
        return flag.exists()

    assert read_flag() is False
    flag.write_text("")
    assert read_flag() is True
    flag.unlink()
    assert read_flag.check_call_in_cache()


def test_environment_variables_are_keyed_by_value_never_stored_in_clear(tmp_path, cache, monkeypatch):
    monkeypatch.delenv("CACHELIB_TEST_THREADS", raising=False)

    @cache.memoize(depends_on=["env:CACHELIB_TEST_THREADS"])
    def threads():
        return len(os.environ.get("CACHELIB_TEST_THREADS", ""))

    assert threads() == 0
    monkeypatch.setenv("CACHELIB_TEST_THREADS", "s3cr3t-value-4")
    assert threads.explain() == "environment `CACHELIB_TEST_THREADS` changed"
    assert threads() == 14
    monkeypatch.setenv("CACHELIB_TEST_THREADS", "8")
    assert threads() == 1
    monkeypatch.delenv("CACHELIB_TEST_THREADS")
    assert threads.check_call_in_cache()
    stored = b"".join(path.read_bytes() for path in (tmp_path / "cache").rglob("*.cl"))
    assert b"s3cr3t" not in stored


def test_a_token_callable_is_called_at_each_call(cache):
    version = {"schema": 1}

    def schema_version():
        return version["schema"]

    @cache.memoize(depends_on=[schema_version])
    def parse(x):
        return (x, version["schema"])

    assert parse(1) == (1, 1)
    version["schema"] = 2
    assert "token `" in parse.explain(1) and "schema_version` changed" in parse.explain(1)
    assert parse(1) == (1, 2)


def test_the_cache_declares_for_all_its_functions_and_memoize_adds(tmp_path, monkeypatch):
    monkeypatch.setenv("CACHELIB_TEST_A", "1")
    monkeypatch.setenv("CACHELIB_TEST_B", "1")
    cache = cachelib.Cache(tmp_path / "cache", depends_on=["env:CACHELIB_TEST_A"])

    @cache.memoize(depends_on="env:CACHELIB_TEST_B")
    def both():
        return os.environ["CACHELIB_TEST_A"] + os.environ["CACHELIB_TEST_B"]

    @cache.memoize
    def only_a():
        return os.environ["CACHELIB_TEST_A"]

    assert (both(), only_a()) == ("11", "1")
    monkeypatch.setenv("CACHELIB_TEST_B", "2")
    assert both() == "12"
    assert only_a.check_call_in_cache()
    monkeypatch.setenv("CACHELIB_TEST_A", "3")
    assert (both(), only_a()) == ("32", "3")


@pytest.mark.parametrize("wrong", [3, b"bytes", [None], ["env:"], [""]])
def test_what_depends_on_cannot_take_is_refused_naming_it(cache, wrong):
    with pytest.raises(cachelib.InvalidOptionError, match="depends_on takes"):
        cache.memoize(depends_on=wrong)(len)


def test_a_token_that_raises_is_a_cache_error_naming_it(cache):
    def broken():
        raise RuntimeError("no database")

    @cache.memoize(depends_on=[broken])
    def work():
        return 1

    with pytest.raises(cachelib.CacheError, match="broken raised RuntimeError"):
        work()


# --- a package installed at two versions ----------------------------------------------------------

_MAIN = """
import cachelib
cache = cachelib.Cache(CACHE_DIR)
ARGUMENT = 1

@cache.memoize(depends_on=["package:cachelib-throwaway"])
def work(x):
    import cachelib_throwaway
    return cachelib_throwaway.VALUE * x
"""


def _wheel(folder, version: str, value: int):
    """A wheel of the distribution ``cachelib-throwaway`` at ``version`` (a zip, as any wheel is)."""
    name = f"cachelib_throwaway-{version}"
    files = {
        "cachelib_throwaway.py": f"VALUE = {value}\n",
        f"{name}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: cachelib-throwaway\n"
                                      f"Version: {version}\n",
        f"{name}.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\n"
                                   "Tag: py3-none-any\n",
    }
    record = "".join(f"{path},,\n" for path in files) + f"{name}.dist-info/RECORD,,\n"
    files[f"{name}.dist-info/RECORD"] = record
    wheel = folder / f"{name}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, text in files.items():
            archive.writestr(path, text)
    return wheel


def _venv(root):
    """A venv of its own that also sees this interpreter's packages (cachelib, numpy) through a .pth."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True, timeout=120)
    site = next((root / "lib").glob("python*/site-packages"))
    outer = [path for path in sys.path if path.endswith("site-packages")]
    (site / "outer.pth").write_text("".join(f"import site; site.addsitedir({path!r})\n" for path in outer))
    return root / "bin" / "python"


def _install(folder, python, version: str, value: int) -> None:
    """Install (or upgrade to) ``version`` in the venv of ``python`` with pip, as a user would."""
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-index",
         "--no-deps", "--upgrade", str(_wheel(folder, version, value))],
        check=True, timeout=240, capture_output=True,
    )


@pytest.mark.slow  # a venv and two pip installs
def test_a_package_upgrade_misses_where_it_was_declared_and_says_both_versions(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    python = _venv(tmp_path / "venv")
    project = Project(tmp_path / "project")
    project.write("main.py", _MAIN)
    _install(wheels, python, "1.0", 10)
    first = _run_with(project, python)
    assert first["stored"] is False and first["memoized"] == 10
    assert _run_with(project, python)["stored"] is True
    _install(wheels, python, "2.0", 20)
    upgraded = _run_with(project, python)
    assert upgraded["stored"] is False and upgraded["memoized"] == 20
    assert "package `cachelib-throwaway` 1.0 → 2.0" in upgraded["explain"]
    _install(wheels, python, "1.0", 10)  # downgraded again: its entry is still there
    assert _run_with(project, python)["stored"] is True


def _run_with(project: Project, python) -> dict:
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", PYTHONPATH=str(project.root))
    done = subprocess.run([str(python), str(project.root / "run.py")], cwd=project.root, env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["memoized"] == out["direct"], out
    return out
