"""A pytest plugin that makes ``joblib.Memory`` be ``cachelib.Memory``: ``pytest -p joblib_swap``.

Loaded before the tests it runs import anything, it replaces joblib's ``Memory`` (and
``MemorizedFunc``, ``expires_after``) where client code finds them (``joblib.Memory``,
``joblib.memory.Memory``), so that a library's own test suite exercises cachelib as
its users would after changing one import. It reports how many ``Memory`` objects the
tests built and whether the swap held to the end, so that a run which silently used
joblib's is caught.
"""

from __future__ import annotations

from typing import Any

import joblib
import joblib.memory

import cachelib

BUILT = [0]  # how many Memory objects the tests built: the swap was exercised


class Memory(cachelib.Memory):
    """``cachelib.Memory``, counting the instances the tests build."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        BUILT[0] += 1
        super().__init__(*args, **kwargs)


_SWAPPED = {"Memory": Memory, "MemorizedFunc": cachelib.MemorizedFunc,
            "expires_after": cachelib.expires_after}

for _name, _replacement in _SWAPPED.items():
    setattr(joblib, _name, _replacement)
    setattr(joblib.memory, _name, _replacement)


def pytest_report_header(config: Any) -> str:
    return f"joblib.Memory is cachelib.Memory (cachelib {cachelib.__version__})"


def pytest_terminal_summary(terminalreporter: Any) -> None:
    still = joblib.Memory is Memory
    terminalreporter.write_line(f"joblib_swap: {BUILT[0]} cachelib.Memory built; swap kept: {still}")
