"""The value stored in every golden file, and the golden files' names.

``make_golden.py`` writes this value and ``test_golden.py`` compares what it loads
with it: it is defined here only. Never change it for existing files: a golden file
records what an old cachelib wrote, and must keep loading as exactly this value.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

RAW_EXTENSION = "pkl"
PATTERN = "cachelib_*_format*.*"


def golden_name(version: str, format_version: int, extension: str) -> str:
    """``cachelib_<version>_format<FORMAT_VERSION>.<ext>``; ext is "pkl" for raw files."""
    return f"cachelib_{version}_format{format_version}.{extension}"


def golden_value() -> list[Any]:
    """A fixed, fully deterministic value covering the kinds of data cachelib stores."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PendingDeprecationWarning)  # numpy discourages np.matrix
        matrix = np.matrix([0, 1, 2], dtype="<i8")
    return [
        np.arange(5, dtype="<i8"),
        np.arange(5, dtype="<f8"),
        np.array([1, "abc", {"a": 1, "b": 2}], dtype=object),
        bytes(range(256)),
        matrix,
        "C'est l'\xe9t\xe9 !",
        np.arange(12, dtype=">i4").reshape(3, 4, order="F"),
        np.zeros(3, dtype=[("x", "<f4"), ("y", "S3")]),
        {"nested": [np.float32(1.5), (1, 2.0, None)]},
    ]
