"""The Sphinx site builds without a warning and documents every public name.

``.ci/run`` builds it too (``sphinx-build -W``); this test also reads what was built.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import cachelib

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
pytest.importorskip("sphinx", reason="the docs need sphinx: pip install 'cachelib-numpy[docs]'")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp("site")
    command = [sys.executable, "-m", "sphinx", "-W", "-q", "-b", "html", str(ROOT / "docs"), str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=280, check=False)
    assert done.returncode == 0, done.stderr
    return out


def test_every_public_name_has_its_reference(site):
    api = (site / "api.html").read_text()
    public = [name for name in cachelib.__all__ if name != "__version__"]
    assert [name for name in public if f'id="cachelib.{name}"' not in api] == []


def test_the_site_has_the_guide_the_format_the_schemas_and_the_changelog(site):
    assert "Coming from joblib" in (site / "guide.html").read_text()
    assert "Cache entries" in (site / "FORMAT.html").read_text()
    cli = (site / "cli.html").read_text()
    assert all(f"cachelib {command} --json" in cli for command in ("info", "ls", "verify"))
    assert "Unreleased" in (site / "CHANGELOG.html").read_text()
