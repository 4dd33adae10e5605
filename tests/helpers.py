"""Helpers the test modules share: plain functions and values (fixtures live in conftest.py)."""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import io
import json
import math
import os
import resource
import struct
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xxhash

import cachelib
from cachelib._entries.envelope import HEADER, HEADER_SIZE, TRAILER
from cachelib._format.records import ALIGNMENT


class Calls(list):  # type: ignore[type-arg]
    """A test's record of the calls its memoized functions made.

    Memoized functions append to it, a global they read: it pickles (and so hashes)
    as an empty record whatever it holds, so that recording a call does not change
    the function's key (as ``ignore=["CALLS"]`` would say for a plain list).
    """

    def __reduce__(self) -> tuple[type, tuple[()]]:
        return (Calls, ())


# The real calls of the memoized functions of the tests (the ``calls`` fixture empties it
# around each test). A module global, never a closure: closure values are part of every
# key (hashed when the function is memoized); a ``Calls`` hashes alike whatever it holds.
CALLS = Calls()


# --- codecs and tiers -----------------------------------------------------------------

# The built-in codecs; test_persistence checks that cachelib registers exactly these.
CODECS = ("zlib", "gzip", "bz2", "lzma", "xz", "zstd", "lz4")
HAVE_LZ4 = importlib.util.find_spec("lz4") is not None
_NO_LZ4 = pytest.mark.skipif(not HAVE_LZ4, reason="the optional lz4 package is not installed")


def codec_params(names: Sequence[str] = CODECS, *, fast: Sequence[str] | None = None) -> list[Any]:
    """A ``pytest.param`` of each codec name (skipped for lz4 when it is not installed); with
    ``fast``, the names not in it are marked slow."""
    return [pytest.param(name, id=name, marks=([_NO_LZ4] if name == "lz4" else [])
                         + ([pytest.mark.slow] if fast is not None and name not in fast else []))
            for name in names]


def compress_params(*, fast: Sequence[str] | None = None) -> list[Any]:
    """``compress`` arguments: ``False`` (raw, id "raw", always in the fast tier), then
    ``codec_params(fast=fast)``."""
    return [pytest.param(False, id="raw"), *codec_params(fast=fast)]


def slow_except(values: list[Any], *fast: Any) -> list[Any]:
    """The parameters ``values`` of a one-argument parametrize, each one but those in ``fast``
    marked slow: ``pytest -m "not slow"`` runs only the ``fast`` ones (ids are unchanged)."""
    return [value if value in fast else pytest.param(value, marks=pytest.mark.slow) for value in values]


# --- fresh interpreters --------------------------------------------------------------


def run_python(*arguments: Any, python: str = sys.executable, timeout: float = 60.0, **options: Any) -> Any:
    """Run ``python ARGUMENTS`` in a fresh interpreter (``options`` such as ``cwd`` and ``env`` go
    to ``subprocess.run``); assert it exits 0 and return the JSON value of the last line it printed."""
    done = subprocess.run([python, *map(str, arguments)], capture_output=True, text=True, timeout=timeout,
                          check=False, **options)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


# --- what is on disk ------------------------------------------------------------------


def files_under(root: Path) -> list[Path]:
    """Every non-directory under ``root`` (symlinks not followed), sorted."""
    found = []
    for directory, dirs, names in os.walk(root):
        found += [Path(directory, name) for name in names]
        found += [Path(directory, name) for name in dirs if os.path.islink(os.path.join(directory, name))]
    return sorted(found)


def entry_files(root: Path) -> list[Path]:
    """The cache entries (``*.cl`` regular files) under ``root``, sorted."""
    return [p for p in files_under(root) if p.name.endswith(".cl") and p.is_file() and not p.is_symlink()]


def statistics_files(location: Path) -> list[Path]:
    """The call-statistics files of the cache at ``location`` (in its ``stats`` directories), sorted."""
    return [p for p in files_under(location) if "stats" in p.relative_to(location).parts[:-1]]


def new_entry(root: Path, before: list[Path]) -> Path:
    """The one entry under ``root`` that is not in ``before``."""
    created = sorted(set(entry_files(root)) - set(before))
    assert len(created) == 1, f"expected one new entry, found {created}"
    return created[0]


def entry_path(memoized: Any, *args: Any, **kwargs: Any) -> Path:
    """The file of the entry of ``memoized(*args, **kwargs)`` in its cache (a local location)."""
    from cachelib._entries import names

    key = memoized._key(args, kwargs)
    return Path(memoized.cache.location) / names.entry(memoized.namespace, key)


# --- inside an entry ------------------------------------------------------------------

ENTRY_MAGIC = b"\x89CLENT\r\n"  # docs/FORMAT.rst, "Cache entries"


def entry_stream_offset(data: bytes) -> int:
    """Where the stream of the entry ``data`` starts: after its header and metadata, aligned."""
    assert data[: len(ENTRY_MAGIC)] == ENTRY_MAGIC
    metadata_length = HEADER.unpack_from(data)[3]
    return -(-(HEADER_SIZE + metadata_length) // ALIGNMENT) * ALIGNMENT


def entry_stream(data: bytes) -> bytes:
    """The stream an entry file holds: after its header, metadata and padding, before its trailer."""
    return data[entry_stream_offset(data) : -TRAILER.size]


# --- the raw stream, as docs/FORMAT.rst gives it ---------------------------------------

STREAM_MAGIC = b"\x89CLIB\r\n\x1a"
FORMAT_VERSION = 2
STREAM_HEADER = struct.Struct("<8sHHI")  # magic, format version, flags, reserved
RECORD = struct.Struct("<BBHIQ")  # kind, padding, reserved, reserved, payload length
CHECKSUM = struct.Struct("<Q")  # xxh3-64 of record header, padding and payload
END = struct.Struct("<QQ")  # records before the end record, offset of the end record


def stream_header(version: int = FORMAT_VERSION) -> bytes:
    """A raw stream's 16-byte header."""
    return STREAM_HEADER.pack(STREAM_MAGIC, version, 0, 0)


def record(kind: str, payload: bytes, position: int, aligned: bool | None = None) -> bytes:
    """A record with a valid checksum, starting at ``position`` in the stream; an array record
    (or any, with ``aligned``) is padded so that its payload starts on a 64-byte boundary."""
    aligned = kind == "A" if aligned is None else aligned
    padding = (-(position + RECORD.size)) % 64 if aligned else 0
    head = RECORD.pack(ord(kind), padding, 0, 0, len(payload)) + bytes(padding)
    return head + payload + CHECKSUM.pack(xxhash.xxh3_64_intdigest(head + payload))


def end_record(count: int, position: int) -> bytes:
    """The end record at ``position`` after ``count`` records."""
    return record("E", END.pack(count, position), position)


def forge(records: list[tuple[str, bytes]], version: int = FORMAT_VERSION) -> bytes:
    """A complete, checksummed stream of ``records`` (kind, payload) and its end record."""
    out = bytearray(stream_header(version))
    for kind, payload in records:
        out += record(kind, payload, len(out))
    return bytes(out + end_record(len(records), len(out)))


@dataclasses.dataclass(frozen=True)
class Record:
    """One record of a raw stream found inside some bytes (offsets count in those bytes)."""

    kind: str
    offset: int  # where its 16-byte header starts
    padding: int
    payload: bytes

    @property
    def length_offset(self) -> int:
        return self.offset + 8

    @property
    def payload_offset(self) -> int:
        return self.offset + RECORD.size + self.padding

    @property
    def length(self) -> int:
        return len(self.payload)


def records_in(data: bytes) -> list[Record]:
    """The records, end record included, of the uncompressed stream inside ``data`` (a raw file or
    a cache entry)."""
    records = []
    position = data.index(STREAM_MAGIC) + STREAM_HEADER.size
    while position + RECORD.size <= len(data):
        kind, padding, _, _, length = RECORD.unpack_from(data, position)
        start = position + RECORD.size + padding
        records.append(Record(chr(kind), position, padding, data[start : start + length]))
        if kind == ord("E"):
            break
        position = start + length + CHECKSUM.size
    return records


def patch_record(data: bytes, found: Record, new: bytes, at: int = 0) -> list[tuple[int, bytes]]:
    """The writes that put ``new`` at ``at`` in a record's payload, with the record's checksum fixed."""
    assert at + len(new) <= found.length
    payload = bytearray(found.payload)
    payload[at : at + len(new)] = new
    checksum = xxhash.xxh3_64_intdigest(data[found.offset : found.payload_offset] + bytes(payload))
    return [(found.payload_offset + at, new), (found.payload_offset + found.length, CHECKSUM.pack(checksum))]


def patched(data: bytes, writes: list[tuple[int, bytes]]) -> bytes:
    """``data`` with ``writes`` (offset, bytes) applied."""
    out = bytearray(data)
    for offset, chunk in writes:
        out[offset : offset + len(chunk)] = chunk
    return bytes(out)


# --- streams --------------------------------------------------------------------------


def dumped_bytes(value: Any, compress: Any = False) -> bytes:
    """The bytes ``cachelib.dump`` writes for ``value`` into a stream."""
    stream = io.BytesIO()
    cachelib.dump(value, stream, compress=compress)
    return stream.getvalue()


class NonSeekable(io.RawIOBase):
    """A read-only, non-seekable raw stream over some bytes (a pipe without the thread)."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        return self._data.readinto(buffer)


# --- deep comparison ------------------------------------------------------------------


def _same_array(actual: np.ndarray, expected: np.ndarray, where: str, memmap_ok: bool) -> None:
    expected_type = type(expected)
    if expected_type is np.memmap:
        expected_type = np.ndarray  # a memmap is stored and loaded as a plain array
    if memmap_ok and type(actual) is np.memmap and expected_type is np.ndarray:
        pass
    else:
        assert type(actual) is expected_type, f"{where}: type {type(actual)} != {expected_type}"
    assert actual.dtype == expected.dtype, f"{where}: dtype {actual.dtype!r} != {expected.dtype!r}"
    assert actual.dtype.str == expected.dtype.str, (
        f"{where}: byte order {actual.dtype.str} != {expected.dtype.str}"
    )
    assert actual.dtype.isalignedstruct == expected.dtype.isalignedstruct, f"{where}: align flag"
    assert actual.shape == expected.shape, f"{where}: shape {actual.shape} != {expected.shape}"
    if expected.flags.f_contiguous and not expected.flags.c_contiguous:
        assert actual.flags.f_contiguous, f"{where}: a Fortran-ordered array came back in C order"
    if expected.dtype.hasobject:
        for index in np.ndindex(expected.shape):
            assert_same(actual[index], expected[index], f"{where}[{index}]", memmap_ok)
        return
    _same_values(actual, expected, where)


def _same_values(actual: np.ndarray, expected: np.ndarray, where: str) -> None:
    """Compare bit for bit (tells -0.0 from 0.0, keeps NaN payloads and NaT), field by field:
    the padding bytes of a structured dtype hold no value."""
    if expected.dtype.names is not None:
        for name in expected.dtype.names:
            _same_values(actual[name], expected[name], f"{where}[{name!r}]")
        return
    actual_bytes = np.ascontiguousarray(actual).tobytes()
    expected_bytes = np.ascontiguousarray(expected).tobytes()
    assert actual_bytes == expected_bytes, f"{where}: values differ:\n{actual!r}\n!=\n{expected!r}"


def assert_same(actual: Any, expected: Any, where: str = "value", memmap_ok: bool = False) -> None:
    """Assert that ``actual`` is an exact copy of ``expected``, recursively.

    Arrays must agree in type (``np.memmap`` inputs compare as ``np.ndarray``; with
    ``memmap_ok`` an ``np.memmap`` result stands for an ``np.ndarray``), dtype including
    byte order and alignment, shape, Fortran order where the input was Fortran-only,
    and every byte of every element. Masked arrays also compare mask and fill value.
    """
    if isinstance(expected, np.ma.MaskedArray):
        assert type(actual) is type(expected), f"{where}: type {type(actual)} != {type(expected)}"
        _same_array(actual.data, expected.data, f"{where}.data", memmap_ok)
        _same_array(np.ma.getmaskarray(actual), np.ma.getmaskarray(expected), f"{where}.mask", memmap_ok)
        assert actual.fill_value == expected.fill_value, f"{where}: fill_value"
        assert actual.fill_value.dtype == expected.fill_value.dtype, f"{where}: fill_value dtype"
    elif isinstance(expected, np.ndarray):
        assert isinstance(actual, np.ndarray), f"{where}: {type(actual)} is not an array"
        _same_array(actual, expected, where, memmap_ok)
    elif isinstance(expected, np.generic):
        assert type(actual) is type(expected), f"{where}: type {type(actual)} != {type(expected)}"
        assert actual.tobytes() == expected.tobytes(), f"{where}: {actual!r} != {expected!r}"
    elif dataclasses.is_dataclass(expected) and not isinstance(expected, type):
        assert type(actual) is type(expected), f"{where}: type {type(actual)} != {type(expected)}"
        for field in dataclasses.fields(expected):
            assert_same(
                getattr(actual, field.name), getattr(expected, field.name), f"{where}.{field.name}", memmap_ok
            )
    elif isinstance(expected, dict):
        assert type(actual) is type(expected), f"{where}: type {type(actual)} != {type(expected)}"
        assert list(actual) == list(expected), f"{where}: keys {list(actual)} != {list(expected)}"
        for key in expected:
            assert_same(actual[key], expected[key], f"{where}[{key!r}]", memmap_ok)
    elif isinstance(expected, (list, tuple)):
        assert type(actual) is type(expected), f"{where}: type {type(actual)} != {type(expected)}"
        assert len(actual) == len(expected), f"{where}: length {len(actual)} != {len(expected)}"
        for i, (a, e) in enumerate(zip(actual, expected)):
            assert_same(a, e, f"{where}[{i}]", memmap_ok)
    elif isinstance(expected, float) and math.isnan(expected):
        assert type(actual) is float and math.isnan(actual), f"{where}: {actual!r} is not nan"
    else:
        assert type(actual) is type(expected), f"{where}: type {type(actual)} != {type(expected)}"
        assert actual == expected, f"{where}: {actual!r} != {expected!r}"


# --- memory ---------------------------------------------------------------------------


def status_kib(field: str) -> int | None:
    """A field of this process's ``/proc/self/status`` in KiB (``VmRSS``, ``VmHWM``), or None."""
    with contextlib.suppress(OSError), open("/proc/self/status") as status:
        for line in status:
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    return None


def reset_peak_rss() -> bool:
    """Reset the peak resident set size (VmHWM) of this process, if Linux lets us."""
    with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")
        return status_kib("VmHWM") is not None
    return False


@contextlib.contextmanager
def peak_rss_growth() -> Iterator[list[int]]:
    """``with peak_rss_growth() as growth:`` leaves in ``growth[0]`` how many bytes the block
    added to this process's peak resident memory.

    The peak (VmHWM) is reset through /proc/self/clear_refs where Linux allows it; elsewhere
    ru_maxrss is compared, which can only see new peaks above the old one.
    """
    reset = reset_peak_rss()
    before = status_kib("VmHWM") if reset else None
    if before is None:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    growth: list[int] = []
    yield growth
    after = status_kib("VmHWM") if reset else None
    if after is None:
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    growth.append((after - before) * 1024)


@contextlib.contextmanager
def peak_rss_growth_below(limit_mib: int) -> Iterator[None]:
    """Assert that the process's peak resident memory grows by less than ``limit_mib`` MiB."""
    with peak_rss_growth() as growth:
        yield
    assert growth[0] < limit_mib << 20, f"peak RSS grew by {growth[0] >> 20} MiB"


# --- keys -----------------------------------------------------------------------------


def assert_distinct_hashes(values: list[Any]) -> None:
    """Assert that every pair of ``values`` hashes differently."""
    digests = [cachelib.hash(v) for v in values]
    for i in range(len(values)):
        for j in range(i + 1, len(values)):
            assert digests[i] != digests[j], f"{values[i]!r} and {values[j]!r} hash alike"
