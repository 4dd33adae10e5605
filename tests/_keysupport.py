"""Support for the key tests: run a memoized script in a fresh process, edit it, run again."""

from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
from helpers import run_python

# The script prints whether the call was stored before it ran, why it would miss, the
# memoized result and the result of calling the function directly, as JSON.
RUNNER = """
import json, sys
import cachelib
from main import work, ARGUMENT
stored = work.check_call_in_cache(ARGUMENT)
why = work.explain(ARGUMENT)
print(json.dumps({"stored": stored, "memoized": work(ARGUMENT), "direct": work.__wrapped__(ARGUMENT),
                  "explain": why}))
"""


def agrees(func: Any, *args: Any, **kwargs: Any) -> Any:
    """Call a memoized function; assert it returns what the direct call returns, and return it."""
    memoized, direct = func(*args, **kwargs), func.__wrapped__(*args, **kwargs)
    assert np.array_equal(memoized, direct), (memoized, direct)
    return memoized


class Project:
    """A directory of user modules (``main.py`` defines the memoized ``work``) and a cache."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.cache = root / "cache"
        root.mkdir(parents=True, exist_ok=True)
        (root / "run.py").write_text(RUNNER)

    def write(self, name: str, source: str) -> None:
        """(Re)write one module of the project."""
        (self.root / name).write_text(textwrap.dedent(source).replace("CACHE_DIR", repr(str(self.cache))))

    def run(self, python: str = sys.executable) -> dict:
        """Run the script in a fresh interpreter (``python``); return what it printed."""
        env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", PYTHONPATH=str(self.root))
        return run_python(self.root / "run.py", python=str(python), cwd=self.root, env=env)

    def check(self, stored: bool, python: str = sys.executable) -> dict:
        """Run; assert the memoized result equals the direct one and whether it was stored."""
        out = self.run(python)
        assert out["memoized"] == out["direct"], out
        assert out["stored"] is stored, out
        return out
