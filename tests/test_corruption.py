"""Damaged, truncated and foreign input: load ends in an exception of the CacheError family,
never a crash, a hang, a huge allocation or a silently different value.

The records of the format are rebuilt here from its documented layout (16-byte header,
16-byte record headers, 64-byte aligned array payloads, xxh3-64 checksums), so that the
tests can forge files that are damaged in exactly one way.
"""

from __future__ import annotations

import contextlib
import io
import os
import pickle
import struct
import sys
import types
import zlib
from typing import Any

import numpy as np
import pytest
import xxhash
from helpers import (
    CHECKSUM,
    END,
    FORMAT_VERSION,
    STREAM_HEADER,
    STREAM_MAGIC,
    NonSeekable,
    assert_same,
    dumped_bytes,
    entry_path,
    forge,
    peak_rss_growth_below,
    record,
    records_in,
    reset_peak_rss,
    slow_except,
)

import cachelib

pytestmark = pytest.mark.timeout(60)


# Two arrays just large enough to be array records, one small enough to sit in the pickle.
SMALL_VALUE = {
    "x": np.arange(1030, dtype="<i4"),
    "y": np.ones((23, 23)),
    "z": np.arange(5, dtype="<i4"),
    "s": "hello",
}
VIAS = ["path", "bytesio", "stream"]


def _load(data: bytes, via: str, tmp_path: Any) -> Any:
    """Load ``data`` from a file path, an io.BytesIO, or a buffered non-seekable stream."""
    if via == "path":
        path = tmp_path / "damaged.pkl"
        path.write_bytes(data)
        return cachelib.load(path)
    if via == "bytesio":
        return cachelib.load(io.BytesIO(data))
    assert via == "stream"
    with io.BufferedReader(NonSeekable(data)) as stream:
        return cachelib.load(stream)


@pytest.fixture(scope="module")
def small_raw() -> bytes:
    """A raw file of SMALL_VALUE: a dict with two array records, an in-band array and a string."""
    return dumped_bytes(SMALL_VALUE)


# --- reading and forging records -----------------------------------------------------------


def body(data: bytes) -> list[tuple[str, bytes]]:
    """The (kind, payload) of every record but the end record."""
    return [(r.kind, r.payload) for r in records_in(data) if r.kind != "E"]


def test_forged_streams_match_what_dump_writes(small_raw):
    """The tests' reading of the format rebuilds dump's bytes exactly (so the forgeries below
    differ from real files only where they mean to)."""
    kinds = [r.kind for r in records_in(small_raw)]
    assert kinds == ["A", "A", "P", "E"]
    assert forge(body(small_raw)) == small_raw
    for r in records_in(small_raw):
        if r.kind == "A":
            assert r.payload_offset % 64 == 0


# --- random and foreign bytes ---------------------------------------------------------------


@pytest.mark.parametrize("length", [0, 1, 7, 8, 15, 16, 17, 64, 1000, 4096])
def test_random_bytes(length, tmp_path):
    """Random bytes of any length are a CorruptFileError, from a path and from a stream."""
    for seed in range(40):
        data = np.random.default_rng([seed, length]).bytes(length)
        for via in ("path", "bytesio"):
            with pytest.raises(cachelib.CorruptFileError):
                _load(data, via, tmp_path)


@pytest.mark.parametrize("prefix", ["cachelib", "zlib", "gzip", "bz2", "lzma", "xz", "zstd", "lz4"])
def test_a_valid_magic_then_random_bytes(prefix, tmp_path):
    """A cachelib or codec magic number followed by random bytes is a CacheError."""
    magic = STREAM_MAGIC if prefix == "cachelib" else cachelib.compressors[prefix].magic
    for seed in range(40):
        rng = np.random.default_rng([seed, len(prefix)])
        data = magic + rng.bytes(int(rng.integers(0, 600)))
        for via in VIAS:
            with pytest.raises(cachelib.CacheError):
                _load(data, via, tmp_path)


def test_empty_file(tmp_path):
    """An empty file is a CorruptFileError that says it is empty."""
    for via in VIAS:
        with pytest.raises(cachelib.CorruptFileError, match="empty"):
            _load(b"", via, tmp_path)


def test_wrong_magic(small_raw, tmp_path):
    """A file whose magic number is not cachelib's (nor a codec's) is a CorruptFileError."""
    for magic in (b"NOTCLIB!", STREAM_MAGIC[:7] + b"\x00", b"\x89PNG\r\n\x1a\n"):
        for via in VIAS:
            with pytest.raises(cachelib.CorruptFileError, match="not a cachelib file"):
                _load(magic + small_raw[8:], via, tmp_path)


@pytest.mark.parametrize("kind", ["pickle", "gzipped pickle", "npy"])
def test_foreign_files(kind, tmp_path):
    """A plain pickle, a gzipped pickle or an .npy file is a CorruptFileError, not loaded."""
    if kind == "npy":
        stream = io.BytesIO()
        np.save(stream, np.arange(3))
        data = stream.getvalue()
    else:
        data = pickle.dumps(SMALL_VALUE, protocol=5)
        if kind == "gzipped pickle":
            import gzip

            data = gzip.compress(data)
    for via in VIAS:
        with pytest.raises(cachelib.CorruptFileError, match=r"not a cachelib file|magic"):
            _load(data, via, tmp_path)


# --- truncation ------------------------------------------------------------------------------


@pytest.mark.parametrize("via", slow_except(VIAS, "bytesio", "stream"))  # a file per cut: seconds
def test_raw_truncated_at_every_byte(via, small_raw, tmp_path):
    """A raw file cut at any point 0..len-1 is a CorruptFileError (a CacheError)."""
    for cut in range(len(small_raw)):
        with pytest.raises(cachelib.CorruptFileError):
            _load(small_raw[:cut], via, tmp_path)


def _recoverable(codec: str, data: bytes) -> bytes:
    """What the codec's own incremental decoder gets out of a (truncated) frame."""
    if codec in ("zlib", "gzip"):
        return zlib.decompressobj(zlib.MAX_WBITS | (16 if codec == "gzip" else 0)).decompress(data)
    if codec == "bz2":
        import bz2

        return bz2.BZ2Decompressor().decompress(data)
    if codec in ("lzma", "xz"):
        import lzma

        return lzma.LZMADecompressor(lzma.FORMAT_ALONE if codec == "lzma" else lzma.FORMAT_XZ).decompress(
            data
        )
    if codec == "zstd":
        zstandard = pytest.importorskip("zstandard")
        return zstandard.ZstdDecompressor().decompressobj().decompress(data)  # type: ignore[no-any-return]
    assert codec == "lz4"
    frame = pytest.importorskip("lz4.frame")
    return frame.LZ4FrameDecompressor().decompress(data)  # type: ignore[no-any-return]


def _cut_points(length: int) -> list[int]:
    """The first and last 20 cut points and a dozen spread between them (~50 in all)."""
    spread = np.linspace(20, length - 20, 12).astype(int)
    return sorted(set(range(20)) | set(range(length - 20, length)) | {int(c) for c in spread})


def test_compressed_truncated_in_its_data(codec, small_raw, tmp_path):
    """A compressed file cut where cachelib bytes are lost is a CacheError, for ~50 cut
    points including the first and last 20 bytes."""
    data = dumped_bytes(SMALL_VALUE, codec)
    cuts = [cut for cut in _cut_points(len(data)) if _recoverable(codec, data[:cut]) != small_raw]
    assert len(cuts) > 20
    for cut in cuts:
        for via in VIAS:
            with pytest.raises(cachelib.CacheError):
                _load(data[:cut], via, tmp_path)




def test_compressed_truncated_in_its_codec_trailer(codec, small_raw, tmp_path, request):
    """A compressed file that lost only its codec trailer (checksum, sizes, end marker) is a
    CacheError: the codec's own integrity check is part of reading the file."""
    data = dumped_bytes(SMALL_VALUE, codec)
    cuts = [cut for cut in range(len(data)) if _recoverable(codec, data[:cut]) == small_raw]
    if not cuts:
        pytest.skip(f"{codec} frames written by cachelib end with the last data byte")
    for cut in cuts:
        with pytest.raises(cachelib.CacheError):
            _load(data[:cut], "path", tmp_path)


# --- damaged bytes -------------------------------------------------------------------------


@pytest.mark.parametrize("via", slow_except(["path", "bytesio"], "bytesio"))  # a file per flip: seconds
def test_raw_every_byte_flipped(via, small_raw, tmp_path):
    """Flipping any one byte (xor 0xFF) of a raw file is a CacheError: header, record
    headers, padding, payloads and checksums are all covered; no flip loads."""
    for offset in range(len(small_raw)):
        damaged = bytearray(small_raw)
        damaged[offset] ^= 0xFF
        try:
            value = _load(bytes(damaged), via, tmp_path)
        except cachelib.CacheError:
            continue
        assert_same(value, SMALL_VALUE, f"the value loaded with a flip at {offset}")
        pytest.fail(f"flip at offset {offset} went unnoticed")


def test_compressed_every_byte_flipped(codec):
    """Flipping any one byte of a compressed file is a CacheError or, where the codec does
    not notice (e.g. a gzip header field), the original value: never a different one."""
    data = dumped_bytes(SMALL_VALUE, codec)
    for offset in range(len(data)):
        damaged = bytearray(data)
        damaged[offset] ^= 0xFF
        try:
            value = cachelib.load(io.BytesIO(bytes(damaged)))
        except cachelib.CacheError:
            continue
        assert_same(value, SMALL_VALUE, f"the value loaded with a flip at {offset}")


def test_damaged_array_data_under_mmap_is_found_by_verify(small_raw, tmp_path):
    """Mapped array bytes are read lazily, so mmap_mode="r" does not check them (documented);
    a plain load and cachelib.verify, which never unpickles, both find the damage."""
    first_array = records_in(small_raw)[0]
    damaged = bytearray(small_raw)
    damaged[first_array.payload_offset] ^= 0xFF
    path = tmp_path / "damaged.pkl"
    path.write_bytes(bytes(damaged))
    cachelib.load(path, mmap_mode="r")  # structure and pickle are intact: it maps
    with pytest.raises(cachelib.CorruptFileError, match="checksum"):
        cachelib.load(path)
    with pytest.raises(cachelib.CorruptFileError, match="checksum"):
        cachelib.verify(path)


@pytest.mark.parametrize("via", VIAS)
def test_future_format_version(via, small_raw, tmp_path):
    """A file of a newer format version (bytes 8-9) is an UnsupportedFormatError that says to upgrade."""
    for version in (FORMAT_VERSION + 1, 0xFFFF):
        data = small_raw[:8] + struct.pack("<H", version) + small_raw[10:]
        with pytest.raises(cachelib.UnsupportedFormatError, match="upgrade"):
            _load(data, via, tmp_path)


def test_future_format_version_inside_a_compressed_file(codec, small_raw):
    """A compressed file of a newer format version is an UnsupportedFormatError, not a corrupt file."""
    newer = small_raw[:8] + struct.pack("<H", FORMAT_VERSION + 1) + small_raw[10:]
    stream = io.BytesIO()
    writer = cachelib.compressors[codec].open_writer(stream)
    writer.write(newer)
    writer.close()
    with pytest.raises(cachelib.UnsupportedFormatError, match="upgrade"):
        cachelib.load(io.BytesIO(stream.getvalue()))


@pytest.mark.parametrize(
    ("field", "value"), [("version", 0), ("flags", 2), ("flags", 0x8001), ("reserved", 7)]
)
def test_invalid_header_fields(field, value, small_raw, tmp_path):
    """Version 0, unknown flag bits and non-zero reserved fields are a CorruptFileError."""
    magic, version, flags, reserved = STREAM_HEADER.unpack_from(small_raw)
    fields = {"version": version, "flags": flags, "reserved": reserved, field: value}
    data = STREAM_HEADER.pack(magic, fields["version"], fields["flags"], fields["reserved"]) + small_raw[16:]
    for via in VIAS:
        with pytest.raises(cachelib.CorruptFileError, match="invalid header"):
            _load(data, via, tmp_path)


@pytest.mark.parametrize("kind", [b"X", b"a", b"\x00", b"\xff"])
def test_unknown_record_kind(kind, small_raw, tmp_path):
    """A well-formed, checksummed record of an unknown kind is a CorruptFileError naming it."""
    records = body(small_raw)
    data = forge([*records[:1], (chr(kind[0]), b"payload"), *records[1:]])
    for via in VIAS:
        with pytest.raises(cachelib.CorruptFileError, match="unknown record kind"):
            _load(data, via, tmp_path)


def test_missing_array_record(small_raw, tmp_path):
    """A consistent file that lacks an array record its pickle needs is a CorruptFileError."""
    records = body(small_raw)
    data = forge([records[0], records[2]])
    for via in VIAS:
        with pytest.raises(cachelib.CorruptFileError, match="missing"):
            _load(data, via, tmp_path)


def test_unused_array_record(small_raw, tmp_path):
    """A consistent file with an array record nobody uses is a CorruptFileError."""
    data = forge([*body(small_raw), ("A", bytes(64))])
    for via in VIAS:
        with pytest.raises(cachelib.CorruptFileError, match="after the end of its pickle"):
            _load(data, via, tmp_path)


def test_end_record_that_miscounts(small_raw, tmp_path):
    """An end record whose count or offset is wrong (checksum valid) is a CorruptFileError."""
    records = body(small_raw)
    good = forge(records)
    end_offset = records_in(good)[-1].offset
    for count, offset in [(len(records) + 1, end_offset), (len(records), end_offset - 8), (0, 0)]:
        data = good[:end_offset] + record("E", END.pack(count, offset), end_offset)
        for via in VIAS:
            with pytest.raises(cachelib.CorruptFileError, match="end record"):
                _load(data, via, tmp_path)


def test_array_record_of_the_wrong_size(small_raw, tmp_path):
    """An array record whose size does not fit the pickle's shape and dtype is a CorruptFileError."""
    records = body(small_raw)
    for payload in (records[0][1][:-4], records[0][1] + bytes(4), b""):
        data = forge([("A", payload), *records[1:]])
        for via in VIAS:
            with pytest.raises(cachelib.CorruptFileError, match="array"):
                _load(data, via, tmp_path)


@pytest.mark.parametrize("seed", range(8))
def test_damaged_pickle_with_valid_checksums(seed, small_raw, tmp_path):
    """A pickle record damaged before its checksum was computed (random bytes, or single
    flips) ends in a CacheError or loads some value: it never escapes as another exception."""
    records = body(small_raw)
    pickle_bytes = records[2][1]
    rng = np.random.default_rng(seed)
    payloads = [rng.bytes(len(pickle_bytes)) for _ in range(10)]
    for offset in range(seed, len(pickle_bytes), 8):
        damaged = bytearray(pickle_bytes)
        damaged[offset] ^= int(rng.integers(1, 256))
        payloads.append(bytes(damaged))
    for payload in payloads:
        data = forge([records[0], records[1], ("P", payload)])
        with contextlib.suppress(cachelib.CacheError):
            _load(data, "bytesio", tmp_path)


# --- lengths that would allocate --------------------------------------------------------------


def _with_length(data: bytes, index: int, length: int) -> bytes:
    """``data`` with the length field of its ``index``-th record set to ``length``."""
    target = records_in(data)[index]
    patched = bytearray(data)
    patched[target.length_offset : target.length_offset + 8] = struct.pack("<Q", length)
    return bytes(patched)


@pytest.mark.timeout(20)
@pytest.mark.parametrize("length", [2**62, 2**64 - 1, 2**40, 2**31])
@pytest.mark.parametrize("kind", ["A", "P"])
def test_huge_length_fields(kind, length, small_raw, tmp_path):
    """An array or pickle record claiming a huge length is a CorruptFileError, raised quickly
    and without allocating it, from a path, a stream of unknown size and a compressed file."""
    index = 0 if kind == "A" else 2
    data = _with_length(small_raw, index, length)
    compressed = io.BytesIO()
    writer = cachelib.compressors["gzip"].open_writer(compressed)
    writer.write(data)
    writer.close()
    with peak_rss_growth_below(100):
        for via in VIAS:
            with pytest.raises(cachelib.CorruptFileError):
                _load(data, via, tmp_path)
        with pytest.raises(cachelib.CorruptFileError):
            cachelib.load(io.BytesIO(compressed.getvalue()))
        path = tmp_path / "huge.pkl"
        path.write_bytes(data)
        with pytest.raises(cachelib.CorruptFileError):
            cachelib.load(path, mmap_mode="r")


@pytest.mark.slow  # touches 200 MiB; test_huge_length_fields uses the check quickly
def test_peak_rss_check_sees_an_allocation():
    """The memory check of these tests is able to fail: touching 200 MiB trips it."""
    if not reset_peak_rss():
        pytest.skip("the peak RSS of this process cannot be reset (/proc/self/clear_refs)")
    with pytest.raises(AssertionError, match="peak RSS grew"), peak_rss_growth_below(100):
        block = np.ones(200 << 20, np.uint8)
        del block


# --- trailing bytes ---------------------------------------------------------------------------


@pytest.mark.parametrize("tail", [b"\x00", b"garbage", bytes(4096)], ids=["zero", "garbage", "4k-zeros"])
def test_raw_path_with_trailing_bytes(tail, small_raw, tmp_path):
    """A raw file with bytes after its end record is a CorruptFileError (mapped or not)."""
    path = tmp_path / "tail.pkl"
    path.write_bytes(small_raw + tail)
    with pytest.raises(cachelib.CorruptFileError, match="after the end"):
        cachelib.load(path)
    with pytest.raises(cachelib.CorruptFileError, match="after the end"):
        cachelib.load(path, mmap_mode="r")


# Bytes after a complete frame that the codec's own reader accepts by design: gzip and xz
# allow zero padding between members/streams, bz2 and lzma readers skip trailing garbage
# (as bunzip2 and xz do). The value inside is complete and checksummed either way.
CODEC_ACCEPTS_TAIL = {("gzip", "zeros"), ("xz", "zeros"), ("bz2", "zeros"), ("bz2", "garbage"),
                      ("lzma", "garbage")}


@pytest.mark.parametrize("tail", [b"garbage", bytes(64)], ids=["garbage", "zeros"])
def test_compressed_path_with_bytes_after_the_frame(tail, codec, tmp_path):
    """A compressed file with bytes after its codec frame is a CacheError, unless the codec's
    format accepts such a tail, and then the value is still the original one."""
    path = tmp_path / "tail.bin"
    path.write_bytes(dumped_bytes(SMALL_VALUE, codec) + tail)
    if (codec, "zeros" if tail == bytes(64) else "garbage") in CODEC_ACCEPTS_TAIL:
        assert_same(cachelib.load(path), SMALL_VALUE)
        return
    with pytest.raises(cachelib.CacheError):
        cachelib.load(path)


def test_compressed_path_with_bytes_after_the_end_record(codec, small_raw, tmp_path):
    """A compressed file whose decompressed bytes go on after the end record is a
    CorruptFileError, as the same raw file is."""
    stream = io.BytesIO()
    writer = cachelib.compressors[codec].open_writer(stream)
    writer.write(small_raw + b"garbage")
    writer.close()
    path = tmp_path / "tail.bin"
    path.write_bytes(stream.getvalue())
    with pytest.raises(cachelib.CorruptFileError):
        cachelib.load(path)


# --- intact files whose value cannot be rebuilt ---------------------------------------------


def test_missing_module_or_class_is_a_deserialization_error(monkeypatch, tmp_path):
    """An intact file whose pickle names a module or class that no longer exists is a
    DeserializationError (an UnpicklingError), not a CorruptFileError."""
    module = types.ModuleType("cachelib_vanishing_module")

    class Thing:
        def __init__(self) -> None:
            self.data = np.arange(3)

    Thing.__module__ = module.__name__
    Thing.__qualname__ = "Thing"
    module.Thing = Thing  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, module.__name__, module)
    path = tmp_path / "thing.pkl"
    cachelib.dump({"thing": Thing()}, path)
    assert cachelib.load(path)["thing"].data.tolist() == [0, 1, 2]

    monkeypatch.delattr(module, "Thing")
    with pytest.raises(cachelib.DeserializationError, match="Thing") as info:
        cachelib.load(path)
    assert isinstance(info.value, pickle.UnpicklingError)
    assert not isinstance(info.value, cachelib.CorruptFileError)

    monkeypatch.delitem(sys.modules, module.__name__)
    with pytest.raises(cachelib.DeserializationError, match="cachelib_vanishing_module"):
        cachelib.load(path)


def test_the_damaged_file_is_left_alone(small_raw, tmp_path):
    """load never modifies or removes the file it fails to read."""
    path = tmp_path / "damaged.pkl"
    damaged = small_raw[: len(small_raw) // 2]
    path.write_bytes(damaged)
    with pytest.raises(cachelib.CorruptFileError):
        cachelib.load(path)
    assert path.read_bytes() == damaged
    assert os.listdir(tmp_path) == ["damaged.pkl"]


@pytest.mark.parametrize("cut", range(0, 17))
def test_a_cache_entry_cut_inside_its_header_is_a_miss(cut, tmp_path):
    """An entry cut to fewer bytes than a header is recomputed with a warning, not a crash."""
    cache = cachelib.Cache(tmp_path / "cache", fsync=False)
    compute = cache.memoize(_double)
    assert compute(21) == 42
    entry = entry_path(compute, 21)
    entry.write_bytes(entry.read_bytes()[:cut])
    with pytest.warns(cachelib.CacheWarning):
        assert compute(21) == 42
    assert compute(21) == 42


def _double(x):
    return 2 * x


def test_verify_reads_a_compressed_frame_to_its_end(tmp_path):
    """cachelib.verify finds a lost codec trailer, as load does."""
    stream = io.BytesIO()
    cachelib.dump({"a": np.arange(10)}, stream, compress="gzip")
    path = tmp_path / "lost-trailer.gz"
    path.write_bytes(stream.getvalue()[:-8])  # gzip's CRC and size are gone
    with pytest.raises(cachelib.CorruptFileError):
        cachelib.load(path)
    with pytest.raises(cachelib.CorruptFileError):
        cachelib.verify(path)
    path.write_bytes(stream.getvalue())
    cachelib.verify(path)


# --- version 2: arrays in the pickle, tree checksums of large records ------------------------


def _inband_pickle(description: tuple, data: Any) -> bytes:
    """A pickle of ``rebuild_array(description, data)``, as a writer puts a small array in band."""

    class Call:
        def __reduce__(self):
            from cachelib._format import rebuild_array

            return rebuild_array, (description, data)

    return pickle.dumps(Call(), protocol=5)


@pytest.mark.parametrize("size", [0, 39, 41, 4096])
def test_an_inband_array_of_the_wrong_size(size, tmp_path):
    """Bytes in the pickle that do not fit the array's shape and dtype are a CorruptFileError."""
    data = forge([("P", _inband_pickle((np.dtype("<f8"), (5,), "C", None), bytearray(size)))])
    for via in VIAS:
        with pytest.raises(cachelib.CorruptFileError, match="array"):
            _load(data, via, tmp_path)


def test_an_inband_array_loads_writable_from_bytes_or_bytearray(tmp_path):
    """An array whose bytes sit in the pickle as bytes (a read-only array's) or as a bytearray
    loads as a writable array holding exactly those bytes."""
    expected = np.arange(5.0)
    for payload in (expected.tobytes(), bytearray(expected.tobytes())):
        data = forge([("P", _inband_pickle((np.dtype("<f8"), (5,), "C", None), payload))])
        value = _load(data, "bytesio", tmp_path)
        assert value.flags.writeable and np.array_equal(value, expected)


def test_a_readonly_small_array_loads_writable(tmp_path):
    """A read-only array (its bytes pickled as bytes) comes back writable, like every loaded array."""
    array = np.arange(10.0)
    array.flags.writeable = False
    value = _load(dumped_bytes(array), "path", tmp_path)
    assert value.flags.writeable and np.array_equal(value, array)


def test_an_inband_length_claiming_a_terabyte(tmp_path):
    """A pickle whose in-band bytes claim 2**40 bytes is a CorruptFileError, without the memory."""
    good = _inband_pickle((np.dtype("<f8"), (5,), "C", None), bytearray(40))
    marker = good.index(b"\x96")  # BYTEARRAY8, then its 8-byte length
    bad = good[: marker + 1] + struct.pack("<Q", 1 << 40) + good[marker + 9 :]
    data = forge([("P", bad)])
    with peak_rss_growth_below(100):
        for via in VIAS:
            with pytest.raises(cachelib.CorruptFileError):
                _load(data, via, tmp_path)


TREE_MIN = 1 << 22


def tree_checksum(head: bytes, payload: bytes) -> int:
    """The documented checksum of a large array record: xxh3-64 of header, padding and the
    xxh3-128 of its 1 MiB leaves' xxh3-128 digests."""
    leaf = 1 << 20
    leaves = b"".join(xxhash.xxh3_128_digest(payload[i : i + leaf]) for i in range(0, len(payload), leaf))
    return xxhash.xxh3_64_intdigest(head + xxhash.xxh3_128_digest(leaves))


def _big_raw() -> tuple[bytes, np.ndarray]:
    array = np.random.default_rng(3).integers(0, 255, TREE_MIN + 12345, dtype=np.uint8)
    return dumped_bytes({"big": array}), array


def test_a_large_array_record_is_checksummed_over_its_tree():
    """The checksum of an array record of 4 MiB or more is the documented tree checksum."""
    data, array = _big_raw()
    (big,) = [r for r in records_in(data) if r.kind == "A"]
    head = data[big.offset : big.payload_offset]
    (stored,) = CHECKSUM.unpack_from(data, big.payload_offset + len(big.payload))
    assert big.payload == array.tobytes()
    assert stored == tree_checksum(head, big.payload)


@pytest.mark.parametrize("where", [0, (1 << 20) - 1, 1 << 20, TREE_MIN + 12344])
def test_a_flipped_byte_in_a_large_array_record(where, tmp_path):
    """One flipped byte anywhere in a large record's payload fails its checksum: loaded from a
    path, a BytesIO, a stream, and checked by verify (mapped loads leave it to verify)."""
    data, _ = _big_raw()
    (big,) = [r for r in records_in(data) if r.kind == "A"]
    damaged = bytearray(data)
    damaged[big.payload_offset + where] ^= 0x40
    for via in VIAS:
        with pytest.raises(cachelib.CorruptFileError, match="checksum"):
            _load(bytes(damaged), via, tmp_path)
    path = tmp_path / "damaged.pkl"
    path.write_bytes(damaged)
    with pytest.raises(cachelib.CorruptFileError, match="checksum"):
        cachelib.verify(path)


def test_large_records_of_version_1_have_flat_checksums(tmp_path):
    """A version-1 file's large array record is checksummed flat (xxh3-64 of header, padding and
    payload) and still loads; the same record in a version-2 file needs the tree checksum."""
    array = np.random.default_rng(4).integers(0, 255, TREE_MIN + 7, dtype=np.uint8)
    records = body(dumped_bytes(array))
    version1 = forge(records, version=1)
    assert np.array_equal(_load(version1, "path", tmp_path), array)
    assert np.array_equal(_load(version1, "stream", tmp_path), array)
    with pytest.raises(cachelib.CorruptFileError, match="checksum"):
        _load(forge(records, version=2), "bytesio", tmp_path)
