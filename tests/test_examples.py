"""Every Python example of the README and the docs runs as written.

Each ``.. code-block:: python`` is a whole program: it is run by itself in a fresh
interpreter, in an empty working directory, with warnings as errors. What an example
needs from outside is provided the way a user would have it, never by editing it: an
S3 server (moto's) stands in for ``s3://my-bucket`` through fsspec's configuration
(``FSSPEC_S3``) with an AWS profile ``research``; the group-sharing example gets the
directory and key its administrator recipe makes, where ``/shared`` is a temporary
directory (the one substitution, as tests must not write to ``/shared``).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [ROOT / "README.rst", *sorted((ROOT / "docs").glob("*.rst"))]


def code_blocks(path: Path) -> list[tuple[str, str]]:
    """``(name, source)`` of each ``.. code-block:: python`` of an rst file, dedented."""
    blocks = []
    lines = path.read_text().splitlines()
    for number, line in enumerate(lines):
        if line.strip() != ".. code-block:: python":
            continue
        indent = len(line) - len(line.lstrip())
        body: list[str] = []
        for text in lines[number + 1 :]:
            if text.strip() and len(text) - len(text.lstrip()) <= indent:
                break
            body.append(text)
        depth = min(len(t) - len(t.lstrip()) for t in body if t.strip())
        blocks.append((f"{path.name}:{number + 1}", "\n".join(t[depth:] for t in body).strip() + "\n"))
    return blocks


EXAMPLES = [block for path in SOURCES for block in code_blocks(path)]


def test_the_readme_has_its_examples():
    assert len([name for name, _ in EXAMPLES if name.startswith("README")]) >= 9


@pytest.fixture
def s3_environment(tmp_path, s3_endpoint):
    """fsspec and AWS configured as a user of ``s3://my-bucket`` with a ``research`` profile would be."""
    import s3fs
    from conftest import s3_options

    options = s3_options(s3_endpoint)
    filesystem = s3fs.S3FileSystem(skip_instance_cache=True, **options)
    if not filesystem.exists("my-bucket"):
        filesystem.mkdir("my-bucket")
    (tmp_path / "aws-config").write_text(
        "[default]\nregion = eu-west-1\n[profile research]\nregion = eu-west-1\n"
    )
    (tmp_path / "aws-credentials").write_text(
        "[default]\naws_access_key_id = testing\naws_secret_access_key = testing\n"
        "[research]\naws_access_key_id = testing\naws_secret_access_key = testing\n"
    )
    return {"FSSPEC_S3": json.dumps({"client_kwargs": options["client_kwargs"]}),
            "AWS_CONFIG_FILE": str(tmp_path / "aws-config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "aws-credentials"),
            "AWS_EC2_METADATA_DISABLED": "true"}


def _group_location(tmp_path: Path) -> Path:
    """What the README's administrator recipe makes, under a temporary ``/shared``."""
    shared = tmp_path / "shared"
    (shared / "cache").mkdir(parents=True)
    os.chmod(shared, 0o755)
    os.chmod(shared / "cache", 0o3770)
    key = shared / "lab-cache.key"
    key.write_bytes(os.urandom(32))
    os.chmod(key, 0o640)
    return shared


@pytest.mark.parametrize(("name", "source"), EXAMPLES, ids=[name for name, _ in EXAMPLES])
def test_example_runs_as_written(name, source, tmp_path, request):
    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if "s3://" in source:
        pytest.importorskip("s3fs", reason="the S3 examples need s3fs: pip install 'cachelib-numpy[s3]'")
        env.update(request.getfixturevalue("s3_environment"))
    if "distributed" in source:
        pytest.importorskip("distributed", reason="the dask example needs the dask extra")
    if "sklearn" in source:
        pytest.importorskip("sklearn", reason="the scikit-learn example needs scikit-learn (the test extra)")
    if "/shared/" in source:
        source = source.replace("/shared/", f"{_group_location(tmp_path)}/")
    script = work / "example.py"
    script.write_text(source)
    warnings = [] if "distributed" in source else ["-W", "error"]  # dask warns of its own affairs
    done = subprocess.run([sys.executable, *warnings, str(script)], capture_output=True, text=True,
                          timeout=500, cwd=work, env=env, check=False)
    assert done.returncode == 0, f"{name}:\n{source}\n{done.stdout}\n{done.stderr}"
    assert not re.search(r"Warning\b", done.stderr), done.stderr
