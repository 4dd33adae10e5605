"""The cachelib file format: a protocol-5 pickle with numpy arrays inline, in records.

Rule: this module owns every byte of the raw stream and nothing else (no paths, no
codecs). ``docs/FORMAT.rst`` specifies the layout; a change here that is not a pure
refactoring needs a new ``FORMAT_VERSION`` and a new golden file.

The stream is a 16-byte header, then records, each a 16-byte record header, zero
padding (array records only, so the data starts 64-byte aligned and can be mapped),
the payload and an xxh3-64 checksum of record header and payload:

* ``P`` records carry the bytes of a pickle written by the C pickler;
* ``A`` records carry the raw bytes of one numpy array, in C or Fortran order;
* one ``E`` record ends the stream and counts what came before it.

The pickle names each array by ``rebuild_array(dtype, shape, order, NEXT_BUFFER)``:
the array's bytes are a protocol-5 out-of-band buffer, and the reader feeds the
unpickler the ``A`` records in the order they appear. An ``A`` record is always
written before the pickle bytes that consume it, so one forward pass reads the
stream: files, pipes and sockets alike. Writing lives here; reading, in ``_reader``.
"""

from __future__ import annotations

import copyreg
import math
import pickle
import struct
from collections.abc import Iterator
from typing import IO, Any

import numpy as np
import xxhash

from ._dtypes import has_padding
from ._errors import (
    CorruptFileError,
    SerializationError,
    UnsupportedFormatError,
)

MAGIC = b"\x89CLIB\r\n\x1a"
FORMAT_VERSION = 1
ALIGNMENT = 64

HEADER = struct.Struct("<8sHHI")  # magic, format version, flags, reserved
RECORD = struct.Struct("<BBHIQ")  # kind, padding, reserved, reserved, payload length
CHECKSUM = struct.Struct("<Q")  # xxh3_64 of record header + payload
END = struct.Struct("<QQ")  # records before the end record, stream offset of the end record

FLAG_ARRAYS_EDITED = 0x0001
"""Header flag: arrays were mapped writable (``mmap_mode="r+"``); their checksums are void."""
FLAGS_OFFSET = 10

PICKLE = ord("P")
ARRAY = ord("A")
FINAL = ord("E")

PICKLE_RECORD_MAX = 1 << 20
"""The largest pickle record written; a reader refuses larger ones before allocating."""

IO_CHUNK = 4 << 20
"""Large payloads move in slices of this size, bounding what codecs buffer."""
DECOMPRESSED_CHUNK = 1 << 18  # reads from a codec: its per-read buffer stays in the CPU cache
SMALL_ARRAY = 1 << 12  # below this, a loaded array is copied off its record buffer

# The one object the pickler hands to ``buffer_callback`` as "the array record just
# written": writable, so that no READONLY_BUFFER opcode follows it.
_OUT_OF_BAND = pickle.PickleBuffer(bytearray())


def _bytes_view(data: Any) -> memoryview:
    """Return a flat unsigned-byte view of any buffer the pickler writes."""
    if isinstance(data, pickle.PickleBuffer):
        return data.raw()
    view = memoryview(data)
    return view if view.ndim == 1 and view.format == "B" else view.cast("B")


def _c_order_chunks(array: np.ndarray) -> tuple[str, Iterator[np.ndarray]]:
    """Return the storage order and byte chunks of ``array``, copying only what must be."""
    if array.nbytes == 0:
        return "C", iter(())
    if array.flags.c_contiguous:
        return "C", iter((array.reshape(-1).view(np.uint8),))
    if array.flags.f_contiguous:
        return "F", iter((array.T.reshape(-1).view(np.uint8),))
    # A strided view: copy it in bounded C-order slices, never whole.
    if has_padding(array.dtype):
        return "C", _zeroed_row_chunks(array)
    iterator = np.nditer(
        array,
        flags=["external_loop", "buffered", "zerosize_ok"],
        buffersize=max(1, IO_CHUNK // array.itemsize),
        order="C",
    )
    return "C", (np.ascontiguousarray(chunk).view(np.uint8) for chunk in iterator)


def _zeroed_row_chunks(array: np.ndarray) -> Iterator[np.ndarray]:
    """Copy a strided padded-struct array field by field into zeroed buffers.

    A plain copy would carry whatever memory held into the padding bytes; these
    chunks hold zeros there, so equal values give equal files.
    """
    row_bytes = max(1, array[:1].nbytes)  # a strided array has ndim >= 1
    step = max(1, IO_CHUNK // row_bytes)
    for start in range(0, array.shape[0], step):
        block = array[start : start + step]
        chunk = np.zeros(block.shape, array.dtype)
        chunk[...] = block
        yield chunk.reshape(-1).view(np.uint8)


class RecordWriter:
    """The file object the pickler writes to; frames its bytes and arrays as records."""

    def __init__(self, sink: IO[bytes]) -> None:
        self._sink = sink
        self._position = 0
        self._records = 0
        self._pending = bytearray()
        self._descriptions: dict[tuple, tuple] = {}
        self._emit(HEADER.pack(MAGIC, FORMAT_VERSION, 0, 0))

    def _emit(self, data: Any) -> None:
        view = _bytes_view(data)
        for start in range(0, view.nbytes, IO_CHUNK):
            self._sink.write(view[start : start + IO_CHUNK])
        self._position += view.nbytes

    def _record(self, kind: int, length: int, chunks: Any, aligned: bool = False) -> None:
        padding = (-(self._position + RECORD.size)) % ALIGNMENT if aligned else 0
        header = RECORD.pack(kind, padding, 0, 0, length) + bytes(padding)
        hasher = xxhash.xxh3_64(header)
        self._emit(header)
        written = 0
        for chunk in chunks:
            view = _bytes_view(chunk)
            hasher.update(view)
            self._emit(view)
            written += view.nbytes
        if written != length:  # pragma: no cover - guards the chunking logic
            raise AssertionError(f"record of {length} bytes wrote {written}")
        self._emit(CHECKSUM.pack(hasher.intdigest()))
        self._records += 1

    def _flush_pickle(self) -> None:
        if self._pending:
            pending, self._pending = self._pending, bytearray()
            self._record(PICKLE, len(pending), (pending,))

    def write(self, data: Any) -> int:
        """Take pickle bytes from the pickler (its file-object interface)."""
        view = _bytes_view(data)
        size = view.nbytes
        if size >= PICKLE_RECORD_MAX:
            self._flush_pickle()
            for start in range(0, size, PICKLE_RECORD_MAX):
                piece = view[start : start + PICKLE_RECORD_MAX]
                self._record(PICKLE, piece.nbytes, (piece,))
        else:
            self._pending += view
            if len(self._pending) >= PICKLE_RECORD_MAX:
                self._flush_pickle()
        return size

    def reduce_array(self, array: np.ndarray) -> Any:
        """Reduce an array for the pickler, writing its bytes as an ``A`` record now."""
        if array.dtype.hasobject:
            return array.__reduce_ex__(5)  # elements are pickled, arrays among them too
        subclass = np.matrix if isinstance(array, np.matrix) else None
        order, chunks = _c_order_chunks(array)
        self._flush_pickle()
        self._record(ARRAY, array.nbytes, chunks, aligned=True)
        # The pickler memoizes (and keeps alive until the end) every tuple it writes:
        # arrays alike in dtype, shape and order share one description, which keeps
        # memory flat and lets the pickle refer back to it. The sentinel must stay
        # outside it: a memoized tuple is not written again, nor its NEXT_BUFFER.
        # Keyed by the dtype object itself: equal dtypes may still differ (an align
        # flag, metadata), and each array must get back exactly its own.
        key = (id(array.dtype), array.shape, order, subclass)
        description = self._descriptions.get(key)
        if description is None or description[0] is not array.dtype:
            description = self._descriptions[key] = (array.dtype, array.shape, order, subclass)
        return rebuild_array, (description, _OUT_OF_BAND)

    @staticmethod
    def buffer_callback(buffer: pickle.PickleBuffer) -> bool:
        """Keep our array records out of band; every other buffer stays in the pickle."""
        return buffer is not _OUT_OF_BAND

    def close(self) -> None:
        """Write what is pending and the end record."""
        self._flush_pickle()
        end = self._position
        self._record(FINAL, END.size, (END.pack(self._records, end),))


class Payload:
    """An array record's bytes on their way to ``rebuild_array``.

    The unpickler keeps every argument tuple in its memo until the load ends;
    handing it this husk instead of the bytes lets ``rebuild_array`` take them
    out, so a small array copied off its buffer frees that buffer at once.
    """

    __slots__ = ("data", "mapped")

    def __init__(self, data: np.ndarray, mapped: bool) -> None:
        self.data: np.ndarray | None = data
        self.mapped = mapped


_checked: dict[int, tuple[tuple, tuple]] = {}


def _checked_description(description: tuple) -> tuple[np.dtype, tuple, str, Any, int]:
    """Validate an array description once per description object; add its byte count.

    Arrays alike share one description object in a pickle, so this runs once per
    kind of array. The cache is keyed by identity, never by equality: equal dtypes
    can differ in flags that a round trip must keep.
    """
    known = _checked.get(id(description))
    if known is not None and known[0] is description:
        return known[1]  # type: ignore[return-value]
    if len(_checked) >= 1024:
        _checked.clear()
    result = _validated_description(description)
    _checked[id(description)] = (description, result)
    return result


def _validated_description(description: Any) -> tuple[np.dtype, tuple, str, Any, int]:
    try:
        dtype, shape, order, subclass = description
        dtype = np.dtype(dtype)
        valid = order in ("C", "F") and all(isinstance(n, int) and n >= 0 for n in shape)
    except (TypeError, ValueError):
        valid = False
    if not valid or subclass not in (None, np.matrix):
        raise CorruptFileError(f"invalid array description {description!r}")
    return dtype, tuple(shape), order, subclass, math.prod(shape) * dtype.itemsize


def rebuild_array(description: tuple, buffer: Any) -> np.ndarray:
    """Rebuild an array from its record's bytes without copying them (small ones excepted).

    This is the global the pickle names (``cachelib._format.rebuild_array``); its
    signature, ``((dtype, shape, order, subclass), buffer)``, is part of the format.
    """
    dtype, shape, order, subclass, expected = _checked_description(description)
    mapped = True
    if isinstance(buffer, Payload):
        payload, buffer, mapped = buffer, buffer.data, buffer.mapped
        payload.data = None  # the unpickler's memo keeps only the husk
    data = buffer if isinstance(buffer, np.ndarray) else np.frombuffer(buffer, np.uint8)
    if data.nbytes != expected:
        raise CorruptFileError(
            f"array record holds {data.nbytes} bytes, but a {dtype} array of shape "
            f"{tuple(shape)} needs {expected}"
        )
    if dtype.itemsize == 0:
        array = np.empty(shape, dtype, order=order)
    elif order == "C":
        array = data.view(dtype).reshape(shape)
    else:
        array = data.view(dtype).reshape(tuple(shape)[::-1]).T
    if expected < SMALL_ARRAY and not mapped:
        array = array.copy(order="K")  # one small object instead of a view and its buffer
    return array if subclass is None else array.view(subclass)


def write_stream(value: Any, sink: IO[bytes], protocol: int = 5) -> None:
    """Write ``value`` to ``sink`` as one cachelib stream."""
    writer = RecordWriter(sink)
    pickler = pickle.Pickler(writer, protocol=protocol, buffer_callback=writer.buffer_callback)
    table = copyreg.dispatch_table.copy()
    for array_type in (np.ndarray, np.memmap, np.matrix):
        table[array_type] = writer.reduce_array
    pickler.dispatch_table = table
    try:
        pickler.dump(value)
    except (pickle.PicklingError, TypeError, AttributeError, RecursionError) as exc:
        raise SerializationError(
            f"cannot pickle a {type(value).__name__} value: {exc}"
        ) from exc
    writer.close()


def check_header(head: Any) -> bool:
    """Validate the 16-byte file header; return whether its arrays were edited in place."""
    if len(head) < HEADER.size:
        raise CorruptFileError(f"the file is truncated: {len(head)} bytes, shorter than a header")
    magic, version, flags, reserved = HEADER.unpack(head)
    if magic != MAGIC:
        raise CorruptFileError("not a cachelib file: the magic number does not match")
    if version > FORMAT_VERSION:
        raise UnsupportedFormatError(
            f"the file has format version {version}, newer than this cachelib reads "
            f"({FORMAT_VERSION}); upgrade cachelib to load it"
        )
    if version == 0 or flags & ~FLAG_ARRAYS_EDITED or reserved:
        raise CorruptFileError(f"invalid header: version={version}, flags={flags}")
    return bool(flags & FLAG_ARRAYS_EDITED)


def check_end(payload: Any, start: int, records_seen: int) -> None:
    """Validate an end record's payload against what the reader saw before it."""
    records, offset = END.unpack(payload)
    if records != records_seen or offset != start:
        raise CorruptFileError(
            f"the end record counts {records} records ending at {offset}, "
            f"but the file has {records_seen} ending at {start}"
        )


