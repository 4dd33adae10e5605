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

The pickle names each array by ``rebuild_array((dtype, shape, order, subclass),
buffer)``. Small contiguous arrays (under ``INBAND_MAX`` bytes, while the pickler's
bookkeeping of them fits in ``INBAND_ROOM``) carry their bytes in the pickle itself, which the C pickler
and unpickler handle at their own speed; every other array's bytes are a protocol-5
out-of-band buffer (``NEXT_BUFFER``), and the reader feeds the unpickler the ``A``
records in the order they appear. An ``A`` record is always written before the pickle
bytes that consume it, so one forward pass reads the stream: files, pipes and sockets
alike. The checksum of an
``A`` record of ``TREE_CHECKSUM_MIN`` bytes or more covers the tree digest of its
payload (``_format.tree``), so that it is computed on every core while the bytes move.
Writing lives here; reading, in ``_format.reader``.
"""

from __future__ import annotations

import contextlib
import copyreg
import functools
import math
import operator
import pickle
import struct
import threading
from collections.abc import Iterator
from typing import Any, cast

import numpy as np
import xxhash

from .._errors import (
    CorruptFileError,
    SerializationError,
    UnsupportedFormatError,
)
from .._typing import Sink
from .dtypes import byte_view, has_padding
from .tree import TreeHasher

MAGIC = b"\x89CLIB\r\n\x1a"
FORMAT_VERSION = 2
"""The version written; readers also read version 1 (no in-band arrays, flat checksums)."""
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
INBAND_MAX = 1 << 12
"""Contiguous arrays of fewer bytes than this are written inside the pickle (never mapped)..."""
INBAND_COST = 192
"""... while there is room: the pickler keeps every buffer it writes in band alive until
the end, with numpy's export of it, about this many bytes an array (measured)."""
INBAND_ROOM = 9 << 20
"""The room for that bookkeeping, to which every array adds a twentieth of its bytes (the
memory bound's 5%): past it, small arrays are records too, so a value of millions of
them dumps with flat extra memory. The rest of the bound's 64 MB is the pickler's own
memo, which a value of many small objects fills (about 59 MB for 200,000 small dicts)."""
TREE_CHECKSUM_MIN = 1 << 22
"""Array records of at least this many bytes are checksummed over their payload's tree digest."""

# The one object the pickler hands to ``buffer_callback`` as "the array record just
# written": writable, so that no READONLY_BUFFER opcode follows it.
_OUT_OF_BAND = pickle.PickleBuffer(bytearray())
# Every other buffer stays in band; a C callable, so that small arrays cost no Python call here.
_in_band = functools.partial(operator.is_not, _OUT_OF_BAND)


class TreeChecksum:
    """The checksum of a large array record: xxh3_64 of header, padding and the payload's tree digest.

    ``stable`` promises that fed bytes stay unchanged until ``intdigest()``, so their
    leaves are hashed on the pool meanwhile (see ``_chunked.TreeHasher``).
    """

    def __init__(self, head: bytes, stable: bool) -> None:
        self._head = bytes(head)
        self._tree = TreeHasher(stable)

    def update(self, data: Any) -> None:
        self._tree.update(data)

    def intdigest(self) -> int:
        return xxhash.xxh3_64_intdigest(self._head + self._tree.digest())


def record_checksum(kind: int, head: bytes, length: int, stable: bool, version: int = FORMAT_VERSION) -> Any:
    """Return the checksum state of a record whose header (and padding) is ``head``, fed so far.

    Version-2 array records of ``TREE_CHECKSUM_MIN`` bytes or more use ``TreeChecksum``.
    """
    if kind == ARRAY and length >= TREE_CHECKSUM_MIN and version >= 2:
        return TreeChecksum(head, stable)
    return xxhash.xxh3_64(head)


def _bytes_view(data: Any) -> memoryview:
    """Return a flat unsigned-byte view of any buffer the pickler writes."""
    if isinstance(data, pickle.PickleBuffer):
        return data.raw()
    view = memoryview(data)
    return view if view.ndim == 1 and view.format == "B" else view.cast("B")


def _c_order_chunks(array: np.ndarray) -> tuple[str, Iterator[np.ndarray], bool]:
    """Return the storage order and byte chunks of ``array``, copying only what must be.

    The flag says whether the chunks are the array's own memory (they stay as they
    are while the record is written) rather than reused copies.
    """
    if array.nbytes == 0:
        return "C", iter(()), True
    if array.flags.c_contiguous:
        return "C", iter((array.reshape(-1).view(np.uint8),)), True
    if array.flags.f_contiguous:
        return "F", iter((array.T.reshape(-1).view(np.uint8),)), True
    # A strided view: copy it in bounded C-order slices, never whole.
    if has_padding(array.dtype):
        return "C", _zeroed_row_chunks(array), False
    iterator = np.nditer(
        array,
        flags=["external_loop", "buffered", "zerosize_ok"],
        buffersize=max(1, IO_CHUNK // array.itemsize),
        order="C",
    )
    return "C", (np.ascontiguousarray(chunk).view(np.uint8) for chunk in iterator), False


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


def _is_plain(dtype: np.dtype) -> bool:
    """True for a numpy dtype that its ``str`` names exactly: no fields, subarray, metadata or extension."""
    return (
        dtype.kind in "biufcmMSUV"
        and getattr(dtype.type, "__module__", None) == "numpy"
        and dtype.names is None
        and dtype.subdtype is None
        and dtype.metadata is None
    )


class RecordWriter:
    """The file object the pickler writes to; frames its bytes and arrays as records."""

    def __init__(self, sink: Sink) -> None:
        self._sink = sink
        self._position = 0
        self._records = 0
        self._pending = bytearray()
        self._descriptions: dict[tuple[Any, ...], tuple[np.dtype, tuple[Any, ...] | None, bool]] = {}
        self._in_band_room = INBAND_ROOM
        self._emit(HEADER.pack(MAGIC, FORMAT_VERSION, 0, 0))

    def _emit(self, data: Any) -> None:
        view = _bytes_view(data)
        for start in range(0, view.nbytes, IO_CHUNK):
            self._sink.write(view[start : start + IO_CHUNK])
        self._position += view.nbytes

    def _record(
        self, kind: int, length: int, chunks: Any, aligned: bool = False, stable: bool = False
    ) -> None:
        padding = (-(self._position + RECORD.size)) % ALIGNMENT if aligned else 0
        header = RECORD.pack(kind, padding, 0, 0, length) + bytes(padding)
        hasher = record_checksum(kind, header, length, stable)
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
            if len(self._pending) + size > PICKLE_RECORD_MAX:
                self._flush_pickle()  # a record never exceeds what readers accept
            self._pending += view
        return size

    def reduce_array(self, array: np.ndarray) -> Any:
        """Reduce an array for the pickler: in the pickle if small, else as an ``A`` record written now."""
        self._in_band_room += array.nbytes // 20
        if array.nbytes < INBAND_MAX and self._in_band_room >= INBAND_COST:
            flags = array.flags
            order = "C" if flags.c_contiguous else "F" if flags.f_contiguous else None
            if order is not None:
                known = self._descriptions.get((id(array.dtype), array.shape, order, type(array)))
                if known is None or known[0] is not array.dtype:
                    known = self._describe(array, order)
                _, description, direct = known
                if description is not None:
                    # The pickle holds the bytes, memoized by the pickler through this
                    # PickleBuffer of the array itself: nothing is copied.
                    self._in_band_room -= INBAND_COST
                    if not direct:
                        array = (array.reshape(-1) if order == "C" else array.T.reshape(-1)).view(np.uint8)
                    return rebuild_array, (description, pickle.PickleBuffer(cast(Any, array)))
        if array.dtype.hasobject:
            return array.__reduce_ex__(5)  # elements are pickled, arrays among them too
        order, chunks, stable = _c_order_chunks(array)
        self._flush_pickle()
        self._record(ARRAY, array.nbytes, chunks, aligned=True, stable=stable)
        return rebuild_array, (self._describe(array, order)[1], _OUT_OF_BAND)

    def _describe(self, array: np.ndarray, order: str) -> tuple[np.dtype, tuple[Any, ...] | None, bool]:
        """Return the shared ``(dtype, shape, order, subclass)`` of arrays like ``array``, and
        whether their memory can be handed to the pickler as it is (numpy exports it).

        The pickler memoizes (and keeps alive until the end) every tuple it writes:
        arrays alike in dtype, shape, order and type share one description, which keeps
        memory flat and lets the pickle refer back to it. The sentinel must stay
        outside it: a memoized tuple is not written again, nor its NEXT_BUFFER.
        Keyed by the dtype object itself: equal dtypes may still differ (an align
        flag, metadata), and each array must get back exactly its own. Object arrays
        get no description: numpy reduces them.
        """
        dtype = array.dtype
        key: tuple[Any, ...] = (id(dtype), array.shape, order, type(array))
        known = self._descriptions.get(key)
        if known is not None and known[0] is dtype:
            return known
        by_id = key
        if _is_plain(dtype):
            # numpy makes a new dtype object for every array of some dtypes (datetimes with a
            # unit, byte-swapped numbers); a plain dtype is all in its ``str``, so they share.
            key = (dtype.str, array.shape, order, type(array))
            known = self._descriptions.get(key)
            if known is not None:
                return known
        subclass = np.matrix if isinstance(array, np.matrix) else None
        description = None if dtype.hasobject else (dtype, array.shape, order, subclass)
        try:
            byte_view(array)
            direct = True
        except (TypeError, ValueError):  # datetimes and a few others export no buffer
            direct = False
        known = self._descriptions[key] = self._descriptions[by_id] = (dtype, description, direct)
        return known  # by id too: arrays sharing this dtype object take the fast path

    buffer_callback = staticmethod(_in_band)
    """Keep our array records out of band; every other buffer stays in the pickle."""

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


_checked: dict[int, tuple[tuple[Any, ...], tuple[Any, ...]]] = {}


def _checked_description(description: tuple[Any, ...]) -> tuple[np.dtype, tuple[int, ...], str, Any, int]:
    """Validate an array description once per description object; add its byte count.

    Arrays alike share one description object in a pickle, so this runs once per
    kind of array. The cache is keyed by identity, never by equality: equal dtypes
    can differ in flags that a round trip must keep.
    """
    known = _checked.get(id(description))
    if known is not None and known[0] is description:
        return known[1]
    if len(_checked) >= 1024:
        _checked.clear()
    result = _validated_description(description)
    _checked[id(description)] = (description, result)
    return result


def _validated_description(description: Any) -> tuple[np.dtype, tuple[int, ...], str, Any, int]:
    try:
        dtype, shape, order, subclass = description
        dtype = np.dtype(dtype)
        valid = order in ("C", "F") and all(isinstance(n, int) and n >= 0 for n in shape)
    except (TypeError, ValueError):
        valid = False
    if not valid or subclass not in (None, np.matrix):
        raise CorruptFileError(f"invalid array description {description!r}")
    return dtype, tuple(shape), order, subclass, math.prod(shape) * dtype.itemsize


class _Loading(threading.local):
    frozen = False  # arrays from the pickle's own bytes come back read-only


_loading = _Loading()


@contextlib.contextmanager
def frozen_inband(frozen: bool) -> Iterator[None]:
    """Within the block, arrays held in the pickle itself are rebuilt read-only (when ``frozen``).

    A load with ``mmap_mode="r"`` returns read-only arrays, and one with ``"r+"``
    must not take writes that cannot reach the file: the small arrays of such a
    load, which live in the pickle rather than in mapped records, are frozen.
    """
    previous = _loading.frozen
    _loading.frozen = frozen
    try:
        yield
    finally:
        _loading.frozen = previous


def rebuild_array(description: tuple[Any, ...], buffer: Any) -> np.ndarray:
    """Rebuild an array from its bytes without copying them (small records' excepted).

    This is the global the pickle names (``cachelib._format.rebuild_array``); its
    signature, ``((dtype, shape, order, subclass), buffer)``, is part of the format.
    ``buffer`` is an array record (a ``Payload``) or the bytes in the pickle: a
    ``bytearray``, viewed as it is, or ``bytes`` (from a read-only array), copied.
    """
    if type(buffer) is bytearray:  # the common small array, in as few steps as possible
        known = _checked.get(id(description))
        if known is not None and known[0] is description:
            dtype, shape, order, subclass, expected = known[1]
            if expected and len(buffer) == expected and order == "C" and subclass is None:
                array = np.frombuffer(buffer, dtype)
                if len(shape) != 1:
                    array = array.reshape(shape)
                if _loading.frozen:
                    array.flags.writeable = False
                return array
    dtype, shape, order, subclass, expected = _checked_description(description)
    mapped = True
    frozen = False
    if isinstance(buffer, Payload):
        payload, buffer, mapped = buffer, buffer.data, buffer.mapped
        payload.data = None  # the unpickler's memo keeps only the husk
    elif not isinstance(buffer, np.ndarray):
        frozen = _loading.frozen
        if not isinstance(buffer, bytearray):
            buffer = bytearray(buffer)  # the loaded array is writable, as every other
    data = buffer if isinstance(buffer, np.ndarray) else np.frombuffer(buffer, np.uint8)
    if data.nbytes != expected:
        raise CorruptFileError(
            f"array record holds {data.nbytes} bytes, but a {dtype} array of shape "
            f"{tuple(shape)} needs {expected}"
        )
    if dtype.itemsize == 0:
        array = np.empty(shape, dtype, order=cast(Any, order))
    elif order == "C":
        array = data.view(dtype).reshape(shape)
    else:
        array = data.view(dtype).reshape(tuple(shape)[::-1]).T
    if expected < SMALL_ARRAY and not mapped:
        array = array.copy(order="K")  # one small object instead of a view and its buffer
    if frozen:
        array.flags.writeable = False
    return array if subclass is None else array.view(subclass)


# The stored name of ``rebuild_array`` is part of the format: pickles name this
# package, whichever of its modules defines the function.
rebuild_array.__module__ = "cachelib._format"


def write_stream(value: Any, sink: Sink, protocol: int = 5) -> None:
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


def check_header(head: Any) -> tuple[int, bool]:
    """Validate the 16-byte file header; return its version and whether its arrays were edited in place."""
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
    return version, bool(flags & FLAG_ARRAYS_EDITED)


def check_end(payload: Any, start: int, records_seen: int) -> None:
    """Validate an end record's payload against what the reader saw before it."""
    records, offset = END.unpack(payload)
    if records != records_seen or offset != start:
        raise CorruptFileError(
            f"the end record counts {records} records ending at {offset}, "
            f"but the file has {records_seen} ending at {start}"
        )


