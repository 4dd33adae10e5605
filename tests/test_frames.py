"""zstd and lz4 files as independent frames, (de)compressed on every core: files stay standard
(the codecs' own tools decode them), do not depend on the threads, take other writers' frames,
stay within the memory bounds, and a damaged frame is a CorruptFileError.
"""

from __future__ import annotations

import functools
import io
import os
import shutil
import struct
import subprocess

import numpy as np
import pytest
from _system import memory_capped
from helpers import NonSeekable, assert_same, codec_params, dumped_bytes, peak_rss_growth, reset_peak_rss

import cachelib
from cachelib._codecs import frames
from cachelib._codecs import pool as _pool

pytestmark = pytest.mark.timeout(120)

FRAME = 4 << 20
MAGIC = {"zstd": b"\x28\xb5\x2f\xfd", "lz4": b"\x04\x22\x4d\x18"}
TOOLS = {"zstd": ["zstd", "-d", "-c", "-q"], "lz4": ["lz4", "-d", "-c", "-q"]}


@pytest.fixture(params=codec_params(["zstd", "lz4"]))
def codec(request):
    """The codecs that write frames of their own (conftest's ``codec``, narrowed)."""
    return request.param


@functools.cache  # made once (a tenth of a second): the tests only dump it and compare with it
def _value(megabytes: int = 11, seed: int = 0) -> dict:
    """A value of several frames: smooth (compressible) floats, noise, and small parts."""
    rng = np.random.default_rng(seed)
    n = megabytes * (1 << 20) // 8
    return {
        "smooth": np.round(np.cumsum(rng.standard_normal(n // 2)), 1),
        "noise": rng.standard_normal(n // 2),
        "names": [f"item {i}" for i in range(1000)],
        "small": np.arange(10),
    }


def test_a_large_value_is_written_as_several_frames(codec):
    """A value of 11 MiB becomes one frame per 4 MiB of raw stream, each a standard frame."""
    data = dumped_bytes(_value(), codec)
    frames = data.count(MAGIC[codec])
    assert frames >= -(-len(dumped_bytes(_value())) // FRAME)
    assert data.startswith(MAGIC[codec])


@pytest.mark.parametrize("threads", ["1", "2", "5"])
def test_the_file_does_not_depend_on_the_threads(codec, threads, monkeypatch):
    """The same value gives the same bytes with 1, 2 or 5 threads, and loads back."""
    monkeypatch.setenv(_pool.THREADS_VARIABLE, "1")
    reference = dumped_bytes(_value(), codec)
    monkeypatch.setenv(_pool.THREADS_VARIABLE, threads)
    assert dumped_bytes(_value(), codec) == reference
    assert_same(cachelib.load(io.BytesIO(reference)), _value())


@pytest.mark.parametrize("via", ["path", "stream"])
def test_frames_load_from_a_path_and_a_pipe(codec, via, tmp_path, monkeypatch):
    """A multi-frame file loads from a path and from a non-seekable stream, with 2 threads."""
    monkeypatch.setenv(_pool.THREADS_VARIABLE, "2")
    path = tmp_path / "value.bin"
    cachelib.dump(_value(), path, compress=codec)
    if via == "path":
        assert_same(cachelib.load(path), _value())
        return
    with open(path, "rb") as handle, io.BufferedReader(NonSeekable(handle.read())) as pipe:
        assert_same(cachelib.load(pipe), _value())


@pytest.mark.parametrize("where", ["dump", "cache"])
def test_the_codec_tool_decodes_the_frames(codec, where, tmp_path):
    """``zstd -d`` / ``lz4 -d`` turn a multi-frame file into the raw file, which loads (the
    tools are not pip packages: the test is skipped where they are missing)."""
    if shutil.which(TOOLS[codec][0]) is None:
        pytest.skip(f"the {TOOLS[codec][0]} command-line tool is not installed")
    path = tmp_path / "value.bin"
    cachelib.dump(_value(), path, compress=codec)
    decoded = subprocess.run([*TOOLS[codec], str(path)], capture_output=True, check=True).stdout
    assert decoded == dumped_bytes(_value())
    assert_same(cachelib.load(io.BytesIO(decoded)), _value())


ENCODERS = [
    ["zstd", "-3"], pytest.param(["zstd", "-19", "--check"], marks=pytest.mark.slow),  # level 19: seconds
    ["zstd", "--no-check", "--no-content-size"], ["zstd", "--fast=5", "-B1000000"],
    ["lz4", "--content-size"], ["lz4", "--content-size", "-BX", "-B4"],
    ["lz4", "--content-size", "-BD", "-B5", "--no-frame-crc"], ["lz4", "-9", "-B7"],
    pytest.param(["lz4", "--content-size", "-12", "-B6"], marks=pytest.mark.slow),  # level 12: a second
]


@pytest.mark.parametrize("command", ENCODERS, ids=" ".join)
def test_files_the_codec_tool_wrote_load(command, tmp_path):
    """Frames as the command-line tools write them (block and content checksums, linked blocks,
    other block sizes, with and without a content size, several frames in a row) load; the
    frame walker takes each whole or hands it to the streaming reader."""
    if command[0] == "lz4":
        pytest.importorskip("lz4", reason="the optional lz4 package is not installed")
    if shutil.which(command[0]) is None:
        pytest.skip(f"the {command[0]} command-line tool is not installed")
    raw = dumped_bytes(_value(megabytes=6))
    cut = len(raw) // 3
    encoded = b"".join(
        subprocess.run([*command, "-c", "-q"], input=part, capture_output=True, check=True).stdout
        for part in (raw[:cut], raw[cut:])
    )
    assert_same(cachelib.load(io.BytesIO(encoded)), _value(megabytes=6))
    with pytest.raises(cachelib.CorruptFileError):
        cachelib.load(io.BytesIO(encoded[: len(encoded) - 7]))


def _stream_compressed(codec: str, data: bytes) -> bytes:
    """``data`` as other writers write it: one streamed frame without a content size."""
    out = io.BytesIO()
    if codec == "zstd":
        import zstandard

        with zstandard.ZstdCompressor(level=3).stream_writer(out, closefd=False) as writer:
            writer.write(data)
    else:
        import lz4.frame

        with lz4.frame.LZ4FrameFile(out, mode="wb") as writer:
            writer.write(data)
    return out.getvalue()


def test_a_frame_without_content_size_is_streamed(codec):
    """A file written as one streamed frame (no content size, as the codecs' streaming APIs and
    older cachelib write it) loads through the codec's streaming reader."""
    assert_same(cachelib.load(io.BytesIO(_stream_compressed(codec, dumped_bytes(_value())))), _value())


def test_frames_then_a_streamed_frame(codec):
    """Frames taken whole, then a frame without a content size: the reader hands the rest to the
    codec's streaming reader at that frame boundary."""
    raw = dumped_bytes(_value())
    one_shot = io.BytesIO()
    writer = cachelib.compressors[codec].open_writer(one_shot)
    writer.write(raw[: 2 * FRAME])
    writer.close()
    data = one_shot.getvalue() + _stream_compressed(codec, raw[2 * FRAME :])
    assert_same(cachelib.load(io.BytesIO(data)), _value())


def test_skippable_frames_are_skipped(codec):
    """Skippable frames (magic 0x184D2A5?, both formats) between and after frames are ignored,
    as the codecs' tools ignore them (a file must still start with a frame: its magic names
    the codec)."""
    data = dumped_bytes(_value(), codec)
    magic = MAGIC[codec]
    second = data.index(magic, 1)
    skippable = struct.pack("<II", 0x184D2A53, 5) + b"hello"
    patched = data[:second] + skippable + data[second:] + skippable
    assert_same(cachelib.load(io.BytesIO(patched)), _value())


def test_a_long_skippable_frame_is_skipped_in_pieces(codec, tmp_path):
    """A skippable frame longer than the read-ahead is passed over; one claiming 4 GiB in a small
    file is a CorruptFileError in 256 MiB of memory, never an attempt to read it in one piece."""
    data = dumped_bytes(_value(), codec)
    second = data.index(MAGIC[codec], 1)
    padding = os.urandom(3 << 20)
    long = data[:second] + struct.pack("<II", 0x184D2A51, len(padding)) + padding + data[second:]
    assert_same(cachelib.load(io.BytesIO(long)), _value())
    lying = tmp_path / "lying"
    lying.write_bytes(data[:second] + struct.pack("<II", 0x184D2A51, 0xFFFFFFF0) + data[second:])
    outcome = memory_capped(256 << 20, cachelib.load, str(lying))
    assert isinstance(outcome.error, cachelib.CorruptFileError), f"{outcome.error!r}\n{outcome.trace}"


@pytest.mark.parametrize("fraction", [0.1, 0.3, 0.5, 0.7, 0.95, 0.9999])
def test_a_multi_frame_file_cut_short(codec, fraction):
    """A multi-frame file cut anywhere (inside a block, between frames) is a CorruptFileError."""
    data = dumped_bytes(_value(), codec)
    with pytest.raises(cachelib.CorruptFileError):
        cachelib.load(io.BytesIO(data[: int(len(data) * fraction)]))


def test_a_frame_that_holds_more_than_its_header_says():
    """A zstd frame whose header claims fewer bytes than it decompresses to is a CorruptFileError
    (nothing is decompressed past the claimed size)."""
    data = bytearray(dumped_bytes(_value(), "zstd"))
    descriptor = data[4]
    assert descriptor >> 6 == 2  # a 4-byte content size follows the window descriptor
    position = 5 + (0 if descriptor & 0x20 else 1)
    data[position : position + 4] = struct.pack("<I", 1000)
    with pytest.raises(cachelib.CorruptFileError):
        cachelib.load(io.BytesIO(bytes(data)))


def _content_size_field(data: bytes, start: int, codec: str) -> slice:
    """Where the content size of the frame at ``start`` is written."""
    if codec == "lz4":
        assert data[start + 4] & 0x08  # cachelib's lz4 frames carry their content size
        return slice(start + 6, start + 14)
    descriptor = data[start + 4]
    size_bytes = (1 if descriptor & 0x20 else 0, 2, 4, 8)[descriptor >> 6]
    end = start + 5 + (0 if descriptor & 0x20 else 1) + (0, 1, 2, 4)[descriptor & 3] + size_bytes
    return slice(end - size_bytes, end)


@pytest.mark.parametrize("delta", [-1000, 1000, -(1 << 20), 1 << 20])
def test_a_large_frame_whose_header_lies_about_its_size(codec, delta):
    """A full frame in the middle of a stream claiming more or fewer bytes than it holds (still a
    size the reader decodes whole, on the pool for zstd) is a CorruptFileError, never a value
    shifted by the difference."""
    data = bytearray(dumped_bytes(_value(), codec))
    second = data.index(MAGIC[codec], 1)
    field = _content_size_field(bytes(data), second, codec)
    width = field.stop - field.start
    size = int.from_bytes(data[field], "little") - (256 if width == 2 else 0)
    assert size == FRAME
    data[field] = (size + delta).to_bytes(width, "little")
    with pytest.raises(cachelib.CorruptFileError):
        cachelib.load(io.BytesIO(bytes(data)))


def test_a_frame_claiming_a_huge_content_size_is_not_allocated():
    """A frame whose header claims 2**60 bytes is streamed, never allocated whole: the load
    fails as a damaged file, without the memory."""
    data = dumped_bytes({"a": np.zeros(1000)}, "zstd")
    descriptor = data[4]
    single = descriptor & 0x20
    size_bytes = (1 if single else 0, 2, 4, 8)[descriptor >> 6]
    start = 5 + (0 if single else 1) + (0, 1, 2, 4)[descriptor & 3]
    # The same frame with an 8-byte content size field claiming 2**60 bytes.
    header = bytes([descriptor | 0xC0]) + data[5:start] + struct.pack("<Q", 1 << 60)
    forged = data[:4] + header + data[start + size_bytes :]
    with pytest.raises(cachelib.CorruptFileError):
        cachelib.load(io.BytesIO(forged))


# --- memory -------------------------------------------------------------------------------


@pytest.mark.slow  # 256 MiB: test_the_file_does_not_depend_on_the_threads has frames in flight quickly
def test_frames_in_flight_stay_within_the_memory_bounds(codec, tmp_path, monkeypatch):
    """Dumping 256 MiB adds at most 5% + 64 MB to the peak; loading it, one copy + 5% + 64 MB
    (DESIGN.md), with 4 threads and so 5 frames in flight each way."""
    if not reset_peak_rss():
        pytest.skip("the peak RSS of this process cannot be reset (/proc/self/clear_refs)")
    monkeypatch.setenv(_pool.THREADS_VARIABLE, "4")
    array = np.random.default_rng(1).standard_normal(32 << 20)  # 256 MiB, hardly compressible
    path = tmp_path / "big.bin"
    with peak_rss_growth() as dumped:
        cachelib.dump(array, path, compress=codec)
    with peak_rss_growth() as loaded:
        result = cachelib.load(path)
    assert np.array_equal(result, array)
    bound = 0.05 * array.nbytes + 64e6
    assert dumped[0] <= bound, f"dump added {dumped[0] / 1e6:.0f} MB"
    assert loaded[0] <= array.nbytes + bound, f"load added {loaded[0] / 1e6:.0f} MB"


# -- large arrays: frames decoded straight into the array -------------------------------------


@functools.cache
def _big_value() -> dict:
    """Arrays of several frames each: frames that fit whole are decoded into the array itself."""
    rng = np.random.default_rng(1)
    smooth = np.round(np.cumsum(rng.standard_normal(3 * FRAME // 8 + 999)), 1)
    return {"head": np.arange(100), "smooth": smooth, "noise": rng.standard_normal(2 * FRAME // 8 + 12345),
            "tail": ["x"] * 10}


def _frame_starts(data: bytes) -> list[int]:
    """Where each zstd frame of ``data`` begins."""
    starts, at = [], data.find(MAGIC["zstd"])
    while at >= 0:
        starts.append(at)
        at = data.find(MAGIC["zstd"], at + 1)
    return starts


@pytest.mark.parametrize("threads", ["1", "2", "3"])
def test_large_arrays_decode_into_themselves_at_any_thread_count(threads, monkeypatch):
    monkeypatch.setenv(_pool.THREADS_VARIABLE, threads)
    direct: list[int] = []
    original = frames.FrameReader._readinto_directly

    def spy(self, view):
        direct.append(original(self, view))
        return direct[-1]

    monkeypatch.setattr(frames.FrameReader, "_readinto_directly", spy)
    data = dumped_bytes(_big_value(), "zstd")
    assert_same(cachelib.load(io.BytesIO(data)), _big_value())
    assert_same(cachelib.load(NonSeekable(data)), _big_value())
    assert sum(direct) >= 2 * (_big_value()["smooth"].nbytes + _big_value()["noise"].nbytes) - 8 * FRAME


@pytest.mark.parametrize("where", [0.2, 0.5, 0.8])
def test_a_damaged_frame_inside_a_large_array_is_corrupt(where, monkeypatch):
    monkeypatch.setenv(_pool.THREADS_VARIABLE, "2")
    data = bytearray(dumped_bytes(_big_value(), "zstd"))
    starts = _frame_starts(bytes(data))
    frame = starts[int(where * (len(starts) - 1))]
    data[frame + 100 : frame + 140] = bytes(40)  # inside its compressed blocks
    with pytest.raises(cachelib.CorruptFileError):
        cachelib.load(io.BytesIO(bytes(data)))


@pytest.mark.parametrize("delta", [-1000, 1000])
def test_a_lying_frame_inside_a_large_array_is_corrupt(delta, monkeypatch):
    monkeypatch.setenv(_pool.THREADS_VARIABLE, "2")
    data = bytearray(dumped_bytes(_big_value(), "zstd"))
    third = _frame_starts(bytes(data))[2]
    field = _content_size_field(bytes(data), third, "zstd")
    width = field.stop - field.start
    size = int.from_bytes(data[field], "little") - (256 if width == 2 else 0)
    data[field] = (size + delta).to_bytes(width, "little")
    with pytest.raises(cachelib.CorruptFileError):
        cachelib.load(io.BytesIO(bytes(data)))


@pytest.mark.parametrize("fraction", [0.3, 0.6, 0.9])
def test_a_large_array_cut_short_is_corrupt(fraction):
    data = dumped_bytes(_big_value(), "zstd")
    with pytest.raises(cachelib.CorruptFileError):
        cachelib.load(io.BytesIO(data[: int(len(data) * fraction)]))


def test_large_arrays_then_a_streamed_frame():
    """Frames decoded into the array, then one without a content size: the codec's stream ends it."""
    raw = dumped_bytes(_big_value())
    whole = io.BytesIO()
    writer = cachelib.compressors["zstd"].open_writer(whole)
    writer.write(raw[: 3 * FRAME + 1000])
    writer.close()
    data = whole.getvalue() + _stream_compressed("zstd", raw[3 * FRAME + 1000 :])
    assert_same(cachelib.load(io.BytesIO(data)), _big_value())
