"""Peak memory of storing and loading a large result on S3 (moto), measured in a child process.

The child resets its peak resident size (``/proc/self/clear_refs`` "5") before each
step and reads ``VmHWM`` after it, so the numbers are the step's own peak. Bounds
from DESIGN.md: storing adds at most 5% of the data + 64 MB; loading peaks at one
copy of the result + 5% + 64 MB.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest
from helpers import run_python

pytest.importorskip("fsspec", reason="remote caches need fsspec: pip install 'cachelib-numpy[fsspec]'")

MB = 1 << 20
CHILD = textwrap.dedent('''
    import gc, json, sys
    import numpy as np
    import cachelib

    def status(field):
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError(field)

    def reset():
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")

    url, options, size = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
    cache = cachelib.Cache(url, storage_options=options)
    values = {"result": np.arange(size // 8, dtype=np.float64)}

    @cache.memoize(ignore=["values"])  # it only hands the prepared result over
    def make(n):
        return values.pop("result") if n else np.zeros(10)

    make(0), make(0)  # clients, connections and imports in place
    gc.collect()
    reset()
    base = status("VmRSS")
    result = make(1)
    stored = status("VmHWM") - base
    expected = float(result[-1])
    del result
    gc.collect()
    reset()
    base = status("VmRSS")
    result = make(1)
    loaded = status("VmHWM") - base
    assert float(result[-1]) == expected and result.nbytes == size // 8 * 8
    print(json.dumps({"stored": stored, "loaded": loaded}))
''')


def _peaks(tmp_path: Path, bucket: str, options: dict[str, Any], size: int) -> dict[str, int]:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    return run_python(script, f"s3://{bucket}/memory", json.dumps(options), size,  # type: ignore[no-any-return]
                      timeout=600)


@pytest.mark.parametrize("size", [
    pytest.param(96 * MB, id="96MB", marks=pytest.mark.slow),
    pytest.param(400 * MB, id="400MB", marks=pytest.mark.slow),
])
@pytest.mark.timeout(600)
def test_storing_and_loading_on_s3_stay_within_the_memory_bounds(
    tmp_path: Path, s3_bucket: tuple[str, dict[str, Any]], size: int
) -> None:
    """A result streamed to S3 and loaded back never needs more than the design's bounds."""
    bucket, options = s3_bucket
    peaks = _peaks(tmp_path, bucket, options, size)
    print(f"{size // MB} MB: store +{peaks['stored'] // MB} MB, load {peaks['loaded'] // MB} MB")
    assert peaks["stored"] <= 0.05 * size + 64 * MB, peaks
    assert peaks["loaded"] <= 1.05 * size + 64 * MB, peaks
