"""``python -m cachelib demo``: a real computation memoized, shown step by step.

Rule: the demo uses only the public API, exactly as the README shows it.
"""

from __future__ import annotations

import tempfile
import time

import numpy as np

import cachelib


def run_demo(location: str | None = None, size: int = 1200) -> None:
    """Memoize an SVD of a ``size`` x ``size`` matrix and show a miss, a hit and an mmap hit."""
    with tempfile.TemporaryDirectory(prefix="cachelib-demo-") as scratch:
        where = location or scratch
        cache = cachelib.Cache(where, compress="zstd")
        print(f"cachelib {cachelib.__version__} demo: cache at {where}")

        @cache.memoize(compress=False, mmap_mode="r")
        def singular_vectors(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            """An expensive numpy computation: the full SVD of a square matrix."""
            return np.linalg.svd(matrix)

        @cache.memoize
        def spectrum(matrix: np.ndarray) -> np.ndarray:
            """Another one, stored zstd-compressed: the magnitude of a 2-D FFT."""
            return np.abs(np.fft.fft2(matrix))

        matrix = np.random.default_rng(0).standard_normal((size, size))
        print(f"input: a {size}x{size} float64 matrix ({matrix.nbytes / 1e6:.0f} MB)\n")

        for label in ("first call (miss: compute and store)", "second call (hit: load, arrays mapped)"):
            started = time.perf_counter()
            u, s, vt = singular_vectors(matrix)
            print(f"  svd   {label:<42} {time.perf_counter() - started:8.4f} s  -> {type(u).__name__}")

        for label in ("first call (miss: compute and store zstd)", "second call (hit: load and decompress)"):
            started = time.perf_counter()
            power = spectrum(matrix)
            print(f"  fft2  {label:<42} {time.perf_counter() - started:8.4f} s  -> {type(power).__name__}")

        assert np.allclose((u * s) @ vt, matrix), "the cached SVD must reconstruct the matrix"
        print("\nthe cached SVD reconstructs the matrix: results are exact, not approximations")
        print(f"\n{cache.info()}")
        if location is None:
            print("\n(the demo's cache was temporary; pass --location DIR to keep it)")
