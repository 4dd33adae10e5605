"""A cache entry: a header, the call's metadata, the result's stream, and a trailer.

Rule: this module owns the bytes of an entry around the cachelib stream, and what
may be concluded from them without unpickling (who stored it, when, under which
key, with which metadata, whether it is signed and intact). Layout::

    0    64  header: magic, version, flags, metadata length, stored time, key, checksum
    64    M  metadata: a JSON object (function, compute seconds, key parts, call summary)
    ..    P  zero padding, so that the stream starts 64-byte aligned (arrays can be mapped)
    ..    S  the result: a raw or compressed cachelib stream (``docs/FORMAT.rst``)
    end-48   trailer: magic, raw stream length, MAC (zero when unsigned)

The stored time is inside the entry, never taken from the file's mtime, so that
rewriting or touching an old file cannot make it look fresh. A header flag says
the entry was published before it was durable (``_stores.durability``): if such an
entry predates the machine's last start, a crash may have left holes in it, so a
mapped read checks its arrays' checksums too (reads that copy always do). With a secret, the MAC
covers the entry's name, header, metadata, padding, every byte of the raw stream
and its length; a reader checks it before unpickling anything (``_entries.signing``).
"""

from __future__ import annotations

import collections
import io
import json
import os
import struct
import threading
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import xxhash

from .._codecs.registry import Compressor
from .._errors import CorruptFileError, UnsupportedFormatError
from .._format.persistence import check_stream, parse_stream, sniff, stream_value
from .._format.reader import Mapping, Parsed, ReadPlan, positional
from .._format.records import write_stream
from .._stores.durability import written_since_boot
from .._typing import Sink
from .signing import MAC_SIZE, Signer

__all__ = [
    "ENTRY_MAGIC",
    "EntryHead",
    "is_entry",
    "parse_entry",
    "read_entry",
    "read_head",
    "verify_entry",
    "write_entry",
]

ENTRY_MAGIC = b"\x89CLENT\r\n"
ENTRY_VERSION = 2
FLAG_SIGNED = 0x0001
FLAG_DEFERRED = 0x0002  # published before it was durable
_FLAGS = FLAG_SIGNED | FLAG_DEFERRED
HEADER = struct.Struct("<8sHHIq16s16x")  # magic, version, flags, metadata length, stored ns, key
CHECKSUM = struct.Struct("<Q")  # xxh3_64 of HEADER and metadata
HEADER_SIZE = HEADER.size + CHECKSUM.size  # 64
TRAILER_MAGIC = b"\x89CLEND\r\n"
TRAILER = struct.Struct(f"<8sQ{MAC_SIZE}s")  # magic, raw stream length, MAC
METADATA_MAX = 1 << 24  # room for the files of a call that reads thousands (_keys.files.MAX_FILES)
_ALIGNMENT = 64


@dataclass(frozen=True)
class EntryHead:
    """What an entry says about itself, read and checked without touching its stream."""

    key: str
    stored: float  # unix time, seconds
    metadata: dict[str, Any]
    signed: bool
    stream_offset: int
    raw: bytes  # header, metadata and padding: the start of what a MAC covers
    deferred: bool = False  # published before it was durable


class _Tap:
    """A write-through file object that counts the bytes and feeds them to a MAC."""

    def __init__(self, sink: Sink, mac: Any) -> None:
        self._sink = sink
        self._mac = mac
        self.count = 0

    def write(self, data: Any) -> int:
        if self._mac is not None:
            self._mac.update(data)
        size = memoryview(data).nbytes
        self.count += size
        self._sink.write(data)
        return size


class _Region:
    """The bytes ``[start, end)`` of a seekable file, as a file of their own."""

    def __init__(self, fileobj: Any, start: int, end: int) -> None:
        self._fileobj = fileobj
        self._start = start
        self._end = end
        self._position = start
        fileobj.seek(start)

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        n = min(view.nbytes, self._end - self._position)
        if n <= 0:
            return 0
        got = self._fileobj.readinto(view[:n]) or 0
        self._position += got
        return int(got)

    def read(self, size: int = -1) -> bytes:
        limit = self._end - self._position
        buffer = bytearray(limit if size < 0 else min(size, limit))
        return bytes(buffer[: self.readinto(buffer)])

    def seekable(self) -> bool:
        return True

    def positional(self) -> tuple[int, int] | None:
        """Descriptor and offset of this position in a plain file (``reader.positional``)."""
        return positional(self._fileobj)

    def tell(self) -> int:
        return self._position - self._start

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: self._start, io.SEEK_CUR: self._position, io.SEEK_END: self._end}[whence]
        self._position = min(max(base + offset, self._start), self._end)
        self._fileobj.seek(self._position)
        return self._position - self._start


def _metadata_bytes(metadata: dict[str, Any]) -> bytes:
    encoded = json.dumps(metadata, sort_keys=True, separators=(",", ":"), default=str).encode()
    if len(encoded) > METADATA_MAX:
        raise CorruptFileError(f"entry metadata of {len(encoded)} bytes exceeds {METADATA_MAX}")
    return encoded


def write_entry(
    sink: Sink,
    value: Any,
    *,
    key: str,
    stored_ns: int,
    metadata: dict[str, Any],
    compressor: Compressor | None,
    signer: Signer | None = None,
    context: str = "",
    deferred: bool = False,
) -> None:
    """Write one entry for ``value`` to ``sink`` (which need not be seekable).

    ``deferred`` records that the store publishes it before it is durable.
    """
    encoded = _metadata_bytes(metadata)
    flags = (FLAG_SIGNED if signer else 0) | (FLAG_DEFERRED if deferred else 0)
    header = HEADER.pack(ENTRY_MAGIC, ENTRY_VERSION, flags, len(encoded), stored_ns, bytes.fromhex(key))
    checksum = CHECKSUM.pack(xxhash.xxh3_64_intdigest(header + encoded))
    padding = bytes(-(HEADER_SIZE + len(encoded)) % _ALIGNMENT)
    start = header + checksum + encoded + padding
    mac = signer.new(context) if signer is not None else None
    if mac is not None:
        mac.update(start)
    sink.write(start)
    if compressor is None:
        raw = _Tap(sink, mac)
        write_stream(value, raw)
    else:
        stream = compressor.open_writer(sink)
        raw = _Tap(stream, mac)
        try:
            write_stream(value, raw)
        finally:
            stream.close()
    sink.write(_trailer(mac, raw.count))


def _trailer(mac: Any, raw_length: int) -> bytes:
    length = struct.pack("<Q", raw_length)
    if mac is None:
        return TRAILER.pack(TRAILER_MAGIC, raw_length, bytes(MAC_SIZE))
    mac.update(length)
    return TRAILER.pack(TRAILER_MAGIC, raw_length, mac.digest())


def is_entry(prefix: bytes) -> bool:
    """True if ``prefix`` (a file's first bytes) starts a cache entry."""
    return prefix.startswith(ENTRY_MAGIC)


def read_head(fileobj: Any, size: int) -> EntryHead:
    """Read and check an entry's header and metadata; leave ``fileobj`` at its stream."""
    raw = fileobj.read(HEADER_SIZE)
    if len(raw) < HEADER_SIZE:
        raise CorruptFileError(f"the entry is truncated: {len(raw)} bytes, shorter than its header")
    magic, version, flags, length, stored_ns, key = HEADER.unpack_from(raw)
    if magic != ENTRY_MAGIC:
        raise CorruptFileError("not a cache entry: the magic number does not match")
    if version > ENTRY_VERSION:
        raise UnsupportedFormatError(
            f"the entry has version {version}, newer than this cachelib reads ({ENTRY_VERSION}); "
            "upgrade cachelib"
        )
    padding = -(HEADER_SIZE + length) % _ALIGNMENT
    stream_offset = HEADER_SIZE + length + padding
    if version == 0 or flags & ~_FLAGS or length > METADATA_MAX or stream_offset + TRAILER.size > size:
        raise CorruptFileError(
            f"invalid entry header (version {version}, flags {flags}, metadata {length} bytes)"
        )
    rest = fileobj.read(length + padding)
    encoded = rest[:length]
    if len(rest) != length + padding or any(rest[length:]):
        raise CorruptFileError("the entry is truncated or damaged in its metadata")
    if CHECKSUM.unpack_from(raw, HEADER.size)[0] != xxhash.xxh3_64_intdigest(raw[: HEADER.size] + encoded):
        raise CorruptFileError("checksum mismatch in the entry's header or metadata")
    try:
        metadata = json.loads(encoded)
    except ValueError as exc:
        raise CorruptFileError(f"the entry's metadata is not JSON: {exc}") from None
    if type(metadata) is not dict:
        raise CorruptFileError("the entry's metadata is not a JSON object")
    signed = bool(flags & FLAG_SIGNED)
    deferred = bool(flags & FLAG_DEFERRED)
    return EntryHead(key.hex(), stored_ns / 1e9, metadata, signed, stream_offset, raw + rest, deferred)


def _read_trailer(fileobj: Any, size: int, head: EntryHead) -> tuple[int, bytes]:
    """Read and check the trailer, the entry's last bytes (after its stream: reading stays sequential)."""
    fileobj.seek(size - TRAILER.size)
    data = fileobj.read(TRAILER.size)
    if len(data) != TRAILER.size:
        raise CorruptFileError("the entry is truncated: its trailer is missing")
    magic, raw_length, tag = TRAILER.unpack(data)
    if magic != TRAILER_MAGIC or (not head.signed and any(tag)):
        raise CorruptFileError("the entry is truncated or damaged: its trailer is invalid")
    return raw_length, tag


class _Authenticator:
    """Feeds the MAC with what the reader consumes; checks it when the reader is done."""

    def __init__(self, signer: Signer, context: str, head: EntryHead) -> None:
        self._mac = signer.new(context)
        self._mac.update(head.raw)
        self._count = 0

    def tap(self, view: memoryview) -> None:
        self._mac.update(view)
        self._count += view.nbytes

    def check(self, raw_length: int, tag: bytes) -> None:
        """Check the MAC against the trailer's ``raw_length`` and ``tag``."""
        self._mac.update(struct.pack("<Q", raw_length))
        if self._count != raw_length or not Signer.matches(self._mac, tag):
            raise CorruptFileError("the entry's signature does not match: it was altered, forged or moved")


_CHECKED_MAX = 1024
_checked_files: collections.OrderedDict[tuple[int, ...], None] = collections.OrderedDict()
_checked_lock = threading.Lock()


def _unsettled_identity(fileobj: Any) -> tuple[int, ...] | None:
    """Return the file's identity if its mapped arrays must be checked, else None.

    A file written since the last boot holds the bytes written; an older one was
    checked already if its identity is among those this process checked.
    """
    st = os.fstat(fileobj.fileno())
    if written_since_boot(st.st_mtime):
        return None
    identity = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    return None if identity in _checked_files else identity


def _remember_checked(identity: tuple[int, ...]) -> None:
    with _checked_lock:
        _checked_files[identity] = None
        while len(_checked_files) > _CHECKED_MAX:
            _checked_files.popitem(last=False)


@dataclass
class _Opened:
    """An entry's stream, positioned, with how to read it and what to do once it is read."""

    fileobj: Any
    size: int
    head: EntryHead
    stream: Any
    compressor: Compressor | None
    plan: ReadPlan
    authenticator: _Authenticator | None
    unsettled: tuple[int, ...] | None  # a file whose mapped arrays this read checks

    def done(self) -> None:
        """After a complete read: check the trailer and the signature, remember a checked file."""
        raw_length, tag = _read_trailer(self.fileobj, self.size, self.head)
        if self.authenticator is not None:
            self.authenticator.check(raw_length, tag)
        if self.unsettled is not None:
            _remember_checked(self.unsettled)


def _open(
    fileobj: Any, size: int, head: EntryHead, signer: Signer | None, context: str, mmap_mode: str | None
) -> _Opened:
    """Position ``fileobj`` at the stream of the entry ``head`` describes, and resolve its read plan.

    The trailer is read once the stream is (``_Opened.done``), so that a remote file is
    read front to back in one request. With ``mmap_mode`` the arrays of a raw stream
    are mapped from ``fileobj``'s own descriptor (the caller decides that nobody else
    can write it); those of an entry published before it was durable are checked once
    per file and process.
    """
    if signer is not None and not head.signed:
        raise CorruptFileError("the entry is not signed, and this cache requires signatures")
    authenticator = _Authenticator(signer, context, head) if signer is not None else None
    stream, compressor = sniff(_Region(fileobj, head.stream_offset, size - TRAILER.size))
    mapping = unsettled = None
    if mmap_mode is not None and compressor is None:
        mapped = np.memmap(fileobj, dtype=np.uint8, mode=cast(Any, mmap_mode))
        fileobj.seek(head.stream_offset)
        unsettled = _unsettled_identity(fileobj) if head.deferred else None
        mapping = Mapping(mapped, head.stream_offset, checked=unsettled is not None)
    plan = ReadPlan(
        mapping=mapping, size=size - TRAILER.size - head.stream_offset,
        tap=authenticator.tap if authenticator is not None else None, edited_ok=False,
    )
    return _Opened(fileobj, size, head, stream, compressor, plan, authenticator, unsettled)


def read_entry(fileobj: Any, size: int, head: EntryHead, *, mmap_mode: str | None = None) -> Any:
    """Unpickle the result of an unsigned entry whose ``head`` was just read, as its bytes arrive."""
    opened = _open(fileobj, size, head, None, "", mmap_mode)
    value = stream_value(opened.stream, opened.compressor, opened.plan)
    opened.done()
    return value


def parse_entry(
    fileobj: Any, size: int, head: EntryHead, *, signer: Signer | None = None, context: str = "",
    mmap_mode: str | None = None,
) -> Parsed:
    """Read and check the whole stream of an entry whose ``head`` was just read, unpickling nothing.

    With ``signer`` the entry is authenticated too, under its name ``context``: what
    comes back is exactly the bytes the signature covers.
    """
    opened = _open(fileobj, size, head, signer, context, mmap_mode)
    parsed = parse_stream(opened.stream, opened.compressor, opened.plan)
    opened.done()
    return parsed


def verify_entry(fileobj: Any, size: int, *, signer: Signer | None = None, context: str = "") -> EntryHead:
    """Check an entry's structure (and signature, given ``signer``) without unpickling it."""
    head = read_head(fileobj, size)
    if signer is not None and not head.signed:
        raise CorruptFileError("the entry is not signed")
    opened = _open(fileobj, size, head, signer if head.signed else None, context, None)
    check_stream(opened.stream, opened.compressor, opened.plan)
    opened.done()
    return head
