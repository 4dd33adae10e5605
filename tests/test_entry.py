"""The cache entry envelope: header, metadata, stream, trailer and signature, byte by byte."""

from __future__ import annotations

import io
import os
import pickle
import struct

import numpy as np
import pytest

import cachelib
from cachelib._entries.envelope import parse_entry, read_entry, read_head, verify_entry, write_entry
from cachelib._entries.signing import Signer
from cachelib._format.reader import MAX_ARRAY_RUN, parse_bytes, unpickle_parsed
from cachelib._format.records import ARRAY, CHECKSUM, END, FINAL, HEADER, MAGIC, RECORD

KEY = "0123456789abcdef0123456789abcdef"
NAME = f"pkg.f-0123456789ab/01/{KEY}.cl"
SIGNER = Signer(b"k" * 32)
VALUE = {"a": np.arange(12, dtype=np.float32).reshape(3, 4), "b": [1, "two", 3.0], "c": np.zeros(0)}


def entry_bytes(value=VALUE, *, signer=None, compressor=None, metadata=None, key=KEY, stored_ns=10**18):
    sink = io.BytesIO()
    write_entry(
        sink, value, key=key, stored_ns=stored_ns, metadata=metadata or {"function": "f"},
        compressor=cachelib.compressors[compressor] if compressor else None, signer=signer, context=NAME,
    )
    return sink.getvalue()


def read_back(data, *, signer=None, context=NAME, mmap_mode=None, fileobj=None):
    """Read an entry as a cache does: streamed, or checked whole (and authenticated) when signed."""
    fileobj = fileobj or io.BytesIO(data)
    head = read_head(fileobj, len(data))
    if signer is None:
        return head, read_entry(fileobj, len(data), head, mmap_mode=mmap_mode)
    parsed = parse_entry(fileobj, len(data), head, signer=signer, context=context, mmap_mode=mmap_mode)
    return head, unpickle_parsed(parsed)


def equal(a, b):
    return pickle.dumps(a) == pickle.dumps(b)


@pytest.mark.parametrize("compressor", [None, "zstd", "gzip"])
@pytest.mark.parametrize("signed", [False, True], ids=["unsigned", "signed"])
def test_round_trip_keeps_value_metadata_time_and_key(compressor, signed):
    signer = SIGNER if signed else None
    data = entry_bytes(signer=signer, compressor=compressor, metadata={"function": "f", "x": [1, 2]})
    head, value = read_back(data, signer=signer)
    assert equal(value, VALUE)
    assert head.metadata == {"function": "f", "x": [1, 2]}
    assert head.stored == 10**9
    assert head.key == KEY
    assert head.signed is signed
    assert head.stream_offset % 64 == 0


def test_mapped_arrays_come_from_the_file_and_are_aligned(tmp_path):
    path = tmp_path / "e.cl"
    path.write_bytes(entry_bytes({"big": np.arange(100_000.0)}, signer=SIGNER))
    with open(path, "rb") as fileobj:
        _, value = read_back(path.read_bytes(), signer=SIGNER, mmap_mode="r", fileobj=fileobj)
    assert isinstance(value["big"], np.memmap)
    assert value["big"].ctypes.data % 64 == 0
    np.testing.assert_array_equal(value["big"], np.arange(100_000.0))


@pytest.mark.parametrize("compressor", [None, "zstd"])
@pytest.mark.parametrize("signed", [False, True], ids=["unsigned", "signed"])
def test_every_truncation_is_a_clear_error(compressor, signed):
    signer = SIGNER if signed else None
    data = entry_bytes(signer=signer, compressor=compressor)
    for cut in range(len(data)):
        with pytest.raises(cachelib.CacheError):
            read_back(data[:cut], signer=signer)


def test_every_flipped_byte_of_a_signed_entry_is_refused():
    data = entry_bytes(signer=SIGNER)
    for offset in range(len(data)):
        damaged = bytearray(data)
        damaged[offset] ^= 0x01
        with pytest.raises(cachelib.CacheError):
            read_back(bytes(damaged), signer=SIGNER)


def test_a_flipped_byte_of_an_unsigned_entry_is_refused_or_harmless():
    data = entry_bytes()
    for offset in range(len(data)):
        damaged = bytearray(data)
        damaged[offset] ^= 0x01
        try:
            head, value = read_back(bytes(damaged))
        except cachelib.CacheError:
            continue
        # Only the unsigned trailer's raw length is not checked: the value is the stored one.
        assert len(data) - 40 <= offset < len(data) - 32, offset
        assert equal(value, VALUE) and head.key == KEY


def test_a_signed_entry_read_under_another_name_or_secret_is_refused():
    data = entry_bytes(signer=SIGNER)
    with pytest.raises(cachelib.CorruptFileError, match="signature"):
        read_back(data, signer=SIGNER, context=NAME.replace("01/", "02/"))
    with pytest.raises(cachelib.CorruptFileError, match="signature"):
        read_back(data, signer=Signer(b"another secret of 32 bytes......"))


def test_a_signed_cache_refuses_unsigned_entries_and_verify_checks_both():
    unsigned = entry_bytes()
    with pytest.raises(cachelib.CorruptFileError, match="not signed"):
        read_back(unsigned, signer=SIGNER)
    signed = entry_bytes(signer=SIGNER)
    verify_entry(io.BytesIO(signed), len(signed))  # structure only, without the secret
    verify_entry(io.BytesIO(signed), len(signed), signer=SIGNER, context=NAME)
    tampered = bytearray(signed)
    tampered[-1] ^= 1  # the MAC itself
    verify_entry(io.BytesIO(bytes(tampered)), len(signed))  # its structure is intact
    with pytest.raises(cachelib.CorruptFileError):
        verify_entry(io.BytesIO(bytes(tampered)), len(signed), signer=SIGNER, context=NAME)


def test_a_pickle_record_swapped_for_another_with_a_valid_checksum_is_refused():
    """The attack of a writer who fixes up record checksums: only the MAC catches it."""
    import xxhash

    data = bytearray(entry_bytes({"x": "aaaa"}, signer=SIGNER))
    start = data.index(b"aaaa")
    data[start : start + 4] = b"bbbb"
    record = data.rfind(bytes([ord("P")]), 0, start)  # the pickle record's header
    length = struct.unpack_from("<Q", data, record + 8)[0]
    end = record + RECORD.size + length
    struct.pack_into("<Q", data, end, xxhash.xxh3_64_intdigest(bytes(data[record:end])))
    _, value = read_back(bytes(data))  # unsigned reading: the forgery is well formed
    assert value == {"x": "bbbb"}
    with pytest.raises(cachelib.CorruptFileError, match="signature"):
        read_back(bytes(data), signer=SIGNER)


def test_load_and_verify_read_entry_files(tmp_path):
    path = tmp_path / "01" / f"{KEY}.cl"
    path.parent.mkdir()
    path.write_bytes(entry_bytes(signer=SIGNER, compressor="zstd"))
    assert equal(cachelib.load(path), VALUE)
    cachelib.verify(path)


class _Payload:
    """Writes a marker file when unpickled: what an attacker's entry would do."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize(
    "value",
    [
        {"a": np.arange(5), "s": {1, 2}, "c": 1 + 2j, "t": (None, True, b"x", bytearray(b"y"))},
        [np.float64(1.5), np.datetime64("2020-01-01"), np.array(["a", "bc"]), np.array([1, None], object)],
        np.ma.masked_array([1, 2, 3], mask=[0, 1, 0]),
        np.zeros(3, [("a", "<i4"), ("b", "<f8", (2,))]),
        __import__("collections").OrderedDict(b=1, a=2),
        __import__("datetime").datetime(2020, 1, 2, 3, 4, 5),
    ],
)
def test_the_restricted_unpickler_rebuilds_plain_data(value, same):
    parsed = parse_bytes(_raw(value))
    same(unpickle_parsed(parsed, restricted=True), value)


def test_the_restricted_unpickler_runs_nothing(tmp_path):
    marker = tmp_path / "ran"
    for payload in (_Payload(str(marker)), {"nested": [_Payload(str(marker))]}):
        parsed = parse_bytes(_raw(payload))
        with pytest.raises(cachelib.DeserializationError, match="another user"):
            unpickle_parsed(parsed, restricted=True)
    assert not marker.exists()


def _raw(value):
    stream = io.BytesIO()
    cachelib.dump(value, stream)
    return stream.getvalue()


def test_a_stream_of_array_records_waiting_for_no_pickle_is_refused_early():
    """Millions of empty array records are refused after MAX_ARRAY_RUN, before they pile up."""
    import xxhash

    out = bytearray(HEADER.pack(MAGIC, 1, 0, 0))
    records = 0
    for _ in range(MAX_ARRAY_RUN + 10):
        padding = (-(len(out) + RECORD.size)) % 64
        header = RECORD.pack(ARRAY, padding, 0, 0, 0) + bytes(padding)
        out += header + CHECKSUM.pack(xxhash.xxh3_64_intdigest(header))
        records += 1
    end = RECORD.pack(FINAL, 0, 0, 0, END.size) + END.pack(records, len(out))
    out += end + CHECKSUM.pack(xxhash.xxh3_64_intdigest(end))
    with pytest.raises(cachelib.CorruptFileError, match="wait for the pickle"):
        cachelib.load(io.BytesIO(bytes(out)))
    path_like = io.BytesIO(bytes(out))
    with pytest.raises(cachelib.CorruptFileError, match="wait for the pickle"):
        parse_bytes(path_like.getvalue())


def test_metadata_and_header_limits(tmp_path):
    head, _ = read_back(entry_bytes(metadata={"x": "y" * 70_000}))  # the recorded files of a big call
    assert head.metadata["x"] == "y" * 70_000
    with pytest.raises(cachelib.CacheError):
        entry_bytes(metadata={"x": "y" * ((1 << 24) + 1)})
    data = bytearray(entry_bytes())
    data[12:16] = struct.pack("<I", 1 << 20)  # a metadata length beyond the file
    with pytest.raises(cachelib.CorruptFileError):
        read_back(bytes(data))
    assert os.listdir(tmp_path) == []
