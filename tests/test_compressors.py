"""Compressed cachelib files are standard frames of their codec: the codec's own Python
module and its command-line tool turn them into the raw cachelib file, and files those
tools compress from a raw cachelib file load with cachelib."""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import shutil
import subprocess
import zlib
from typing import Any

import numpy as np
import pytest

import cachelib

pytestmark = pytest.mark.timeout(60)

VALUE = {
    "ints": np.arange(30_000, dtype="<i8"),
    "noise": np.random.default_rng(7).standard_normal(2_000).astype(">f4"),
    "fortran": np.asfortranarray(np.arange(12.0).reshape(3, 4)),
    "objects": np.array([np.arange(3), "x", None], dtype=object),
    "text": "ünïcode",
}


def _zstd_decompress(data: bytes) -> bytes:
    zstandard = pytest.importorskip("zstandard", reason="python-zstandard is not installed")
    with zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data)) as reader:
        return reader.read()  # type: ignore[no-any-return]


def _zstd_compress(data: bytes) -> bytes:
    zstandard = pytest.importorskip("zstandard", reason="python-zstandard is not installed")
    return zstandard.ZstdCompressor(level=5, write_checksum=True).compress(data)  # type: ignore[no-any-return]


def _lz4_frame() -> Any:
    return pytest.importorskip("lz4.frame", reason="the lz4 package is not installed")


# Each codec's own Python module, used independently of cachelib.
MODULE_DECOMPRESS = {
    "zlib": zlib.decompress,
    "gzip": gzip.decompress,
    "bz2": bz2.decompress,
    "lzma": lambda data: lzma.decompress(data, format=lzma.FORMAT_ALONE),
    "xz": lambda data: lzma.decompress(data, format=lzma.FORMAT_XZ),
    "zstd": _zstd_decompress,
    "lz4": lambda data: _lz4_frame().decompress(data),
}
MODULE_COMPRESS = {
    "zlib": lambda data: zlib.compress(data, 9),
    "gzip": lambda data: gzip.compress(data, 6),
    "bz2": lambda data: bz2.compress(data, 1),
    "lzma": lambda data: lzma.compress(data, format=lzma.FORMAT_ALONE, preset=1),
    "xz": lambda data: lzma.compress(data, format=lzma.FORMAT_XZ, check=lzma.CHECK_SHA256),
    "zstd": _zstd_compress,
    "lz4": lambda data: _lz4_frame().compress(data, compression_level=9, content_checksum=True),
}

# Each codec's command-line tool (zlib has no standard one).
CLI_DECOMPRESS = {
    "gzip": ["gzip", "-dc"],
    "bz2": ["bzip2", "-dc"],
    "lzma": ["xz", "--format=lzma", "-dc"],
    "xz": ["xz", "-dc"],
    "zstd": ["zstd", "-q", "-dc"],
    "lz4": ["lz4", "-q", "-dc"],
}
CLI_COMPRESS = {
    "gzip": ["gzip", "-c", "-n"],
    "bz2": ["bzip2", "-c"],
    "lzma": ["xz", "--format=lzma", "-c"],
    "xz": ["xz", "-c", "--check=crc32"],
    "zstd": ["zstd", "-q", "-c", "--check"],
    "lz4": ["lz4", "-q", "-c"],
}


def _run_tool(command: list[str], source: Any) -> bytes:
    if shutil.which(command[0]) is None:
        pytest.skip(f"the command-line tool {command[0]!r} is not installed")
    result = subprocess.run([*command, str(source)], capture_output=True, timeout=30, check=False)
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    return result.stdout


@pytest.fixture(scope="module")
def raw_bytes() -> bytes:
    """The raw cachelib file of VALUE, as dump writes it without compression."""
    stream = io.BytesIO()
    cachelib.dump(VALUE, stream)
    return stream.getvalue()


@pytest.mark.parametrize("level", ["default", "lowest"])
def test_python_module_decompresses_to_the_raw_file(codec, level, raw_bytes, tmp_path, same):
    """The codec's Python module decompresses a compressed cachelib file into exactly the
    raw cachelib file, which loads back equal to the value."""
    compress = codec if level == "default" else (codec, cachelib.compressors[codec].levels.start)
    path = tmp_path / "value.cmp"
    cachelib.dump(VALUE, path, compress=compress)
    decompressed = MODULE_DECOMPRESS[codec](path.read_bytes())
    assert decompressed == raw_bytes
    raw_path = tmp_path / "value.pkl"
    raw_path.write_bytes(decompressed)
    same(cachelib.load(raw_path), VALUE)


@pytest.mark.parametrize("codec", list(CLI_DECOMPRESS))
def test_command_line_tool_decompresses_to_the_raw_file(codec, raw_bytes, tmp_path, same):
    """gzip -dc, bzip2 -dc, xz -dc, xz --format=lzma -dc, zstd -dc and lz4 -dc turn a
    compressed cachelib file into exactly the raw one, which loads back equal."""
    if codec == "lz4":
        _lz4_frame()
    path = tmp_path / f"value{cachelib.compressors[codec].extension}"
    cachelib.dump(VALUE, path, compress=codec)
    decompressed = _run_tool(CLI_DECOMPRESS[codec], path)
    assert decompressed == raw_bytes
    raw_path = tmp_path / "decompressed.pkl"
    raw_path.write_bytes(decompressed)
    same(cachelib.load(raw_path), VALUE)


def test_python_module_compressed_files_load(codec, raw_bytes, tmp_path, same):
    """A raw cachelib file compressed by the codec's own module (other levels, checksums
    and header options than cachelib's) loads, the codec found from its magic number."""
    path = tmp_path / "value.bin"
    path.write_bytes(MODULE_COMPRESS[codec](raw_bytes))
    same(cachelib.load(path), VALUE)
    same(cachelib.load(io.BytesIO(path.read_bytes())), VALUE)


@pytest.mark.parametrize("codec", list(CLI_COMPRESS))
def test_command_line_tool_compressed_files_load(codec, raw_bytes, tmp_path, same):
    """A raw cachelib file compressed by the codec's command-line tool loads with cachelib."""
    if codec == "lz4":
        _lz4_frame()
    raw_path = tmp_path / "value.pkl"
    raw_path.write_bytes(raw_bytes)
    path = tmp_path / "value.cmp"
    path.write_bytes(_run_tool(CLI_COMPRESS[codec], raw_path))
    same(cachelib.load(path), VALUE)
