"""``python -m cachelib demo``: a real computation memoized, shown step by step.

Rule: the demo uses only the public API, exactly as the README shows it, takes a few
seconds, and says what it is about to do before each step, so that nothing is silent.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np

import cachelib


def _step(label: str, call: Callable[[], Any]) -> Any:
    """Say what is about to run, run it, then say how long it took."""
    print(f"  {label:<58}", end=" ", flush=True)
    started = time.perf_counter()
    result = call()
    print(f"{time.perf_counter() - started:8.4f} s", flush=True)
    return result


def run_demo(location: str | None = None, size: int = 600) -> None:
    """Memoize an SVD of a ``size`` x ``size`` matrix and an FFT; show misses, hits and ``info``."""
    with tempfile.TemporaryDirectory(prefix="cachelib-demo-") as scratch:
        where = location or scratch
        print(f"cachelib {cachelib.__version__} demo: a cache at {where}", flush=True)
        cache = cachelib.Cache(where, compress="zstd")

        @cache.memoize(compress=False, mmap_mode="r")
        def singular_values(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            """An expensive numpy computation: the SVD of a square matrix (stored raw, hits mapped)."""
            return np.linalg.svd(matrix, full_matrices=False)

        @cache.memoize
        def spectrum(matrix: np.ndarray) -> np.ndarray:
            """Another one, stored zstd-compressed: the magnitude of a 2-D FFT."""
            return np.abs(np.fft.fft2(matrix))

        matrix = np.random.default_rng(0).standard_normal((size, size))
        print(f"input: a {size}x{size} float64 matrix ({matrix.nbytes / 2**20:.1f} MiB)\n", flush=True)

        _step("svd,  first call: a miss, computed and stored", lambda: singular_values(matrix))
        u, s, vt = _step("svd,  second call: a hit, arrays memory-mapped", lambda: singular_values(matrix))
        _step("fft2, first call: a miss, computed and stored with zstd", lambda: spectrum(matrix))
        _step("fft2, second call: a hit, loaded and decompressed", lambda: spectrum(matrix))

        print(f"\nthe hit returned {type(u).__name__} views of the stored file, not copies")
        assert np.allclose((u * s) @ vt, matrix), "the cached SVD must reconstruct the matrix"
        print("the cached SVD reconstructs the matrix: a hit is exactly what the call returned")
        print(f"\n{cache.info()}")
        if location is None:
            print("\n(the demo's cache was temporary; pass --location DIR to keep it)")
