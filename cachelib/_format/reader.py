"""Reading a raw cachelib stream: one record parser, and the ways to consume it.

Rule: every reader of the format goes through ``RecordReader``, which checks each
record (kind, lengths, alignment, checksum) exactly once, in one forward pass, with
memory bounded by what the stream really holds. It is consumed three ways:

* streamed: it is the file object the unpickler reads (``read_stream``), arrays
  arriving as out-of-band buffers just before the pickle bytes that use them;
* parsed whole: ``parse_all`` reads every record to the end before anything is
  unpickled (what an authenticated read needs: unpickle only checked bytes);
* skimmed: ``skim`` checks every record and keeps nothing (``verify``).

How a stream is read (mapped or not, bounded by a size, tapped) is one ``ReadPlan``,
resolved by whoever opened the file.

An optional ``tap`` sees every byte of the raw stream in order, mapped array
bytes included: that is how a signature covers exactly the bytes that are used.
"""

from __future__ import annotations

import collections
import concurrent.futures
import io
import os
import pickle
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import xxhash

from .._codecs.pool import submit, thread_count
from .._errors import CorruptFileError, DeserializationError, UnsupportedFormatError
from .dtypes import byte_view
from .records import (
    ALIGNMENT,
    ARRAY,
    CHECKSUM,
    END,
    FINAL,
    HEADER,
    IO_CHUNK,
    PICKLE,
    PICKLE_RECORD_MAX,
    RECORD,
    SMALL_ARRAY,
    Payload,
    check_end,
    check_header,
    frozen_inband,
    record_checksum,
)
from .unpickling import RestrictedUnpickler

__all__ = [
    "PLAIN",
    "Mapping",
    "Parsed",
    "ReadPlan",
    "RecordReader",
    "parse_bytes",
    "read_stream",
    "unpickle_parsed",
]

MAX_ARRAY_RUN = 1 << 16
"""Array records a reader accepts in a row, or waiting for the pickle to use them.

A writer emits each array record just before the pickle bytes that use it, and the
C pickler hands over its bytes at least every 64 KiB, so a valid stream never has
more than a few thousand in a row. A stream with more is refused before the
records (a few dozen bytes each on disk, more in memory) pile up.
"""

Tap = Callable[[memoryview], Any]


@dataclass(frozen=True)
class Mapping:
    """The file of a raw stream mapped in memory, whose array records become views of it.

    ``offset`` is where the stream starts in the file; ``checked`` reads the mapped
    bytes once, to check their checksums (otherwise they are read lazily, unchecked).
    """

    file: np.memmap
    offset: int = 0
    checked: bool = False


@dataclass(frozen=True)
class ReadPlan:
    """How a raw stream is read, resolved once by whoever opened its file.

    ``mapping`` maps its array records (None: they are read into memory); ``size``,
    when known, bounds every length read from the stream; ``tap`` is fed every byte of
    the stream, in order (what a signature covers); ``edited_ok=False`` refuses a
    stream flagged as edited in place (whose array checksums would be skipped);
    ``whole`` says that nothing may follow the stream in its file.
    """

    mapping: Mapping | None = None
    size: int | None = None
    tap: Tap | None = None
    edited_ok: bool = True
    whole: bool = True


PLAIN = ReadPlan()
"""Read into memory, everything checked, nothing after the stream."""


@dataclass(frozen=True)
class Parsed:
    """A whole raw stream, checked: its pickle and the payloads of its array records."""

    pickle: bytes
    arrays: tuple[np.ndarray, ...]
    mapped: bool = False
    frozen: bool = False  # mapped read-only or shared: arrays in the pickle come back read-only


class RecordReader:
    """The one parser of raw streams; also the file object the unpickler reads from.

    ``source`` is the raw stream (a file, a pipe, or a decompressor), read as
    ``plan`` says (with a mapping, ``source`` must be the mapped file, seekable).
    ``read_size`` bounds each read: decompressors allocate a buffer per read, so
    they get smaller ones than a plain file.
    """

    def __init__(self, source: Any, plan: ReadPlan = PLAIN, read_size: int = IO_CHUNK) -> None:
        self._source = source
        self._read_size = read_size
        # A source that fills large reads best in one call (frames decoded straight into them).
        self._reads_whole = getattr(source, "reads_whole", False) is True
        mapping = plan.mapping
        self._mapping = mapping.file if mapping is not None else None
        self._mapping_offset = mapping.offset if mapping is not None else 0
        self._check_mapped = mapping is not None and mapping.checked
        self._size = plan.size
        self._tap = plan.tap
        self._position = 0
        self._records = 0
        self._run = 0  # array records since the last pickle record
        self._chunk = memoryview(b"")
        self._arrays: collections.deque[np.ndarray] = collections.deque()
        self._keep_arrays = True
        self._whole = False  # parse_all keeps every array: only runs are bounded
        self._ended = False
        self._version, self._arrays_edited = check_header(self._read(HEADER.size))
        if self._arrays_edited and not plan.edited_ok:  # e.g. a cache entry: never mapped writable
            raise CorruptFileError("the stream says its arrays were edited in place, which it cannot be")

    @property
    def mapped(self) -> bool:
        """True if array records are views of a mapping."""
        return self._mapping is not None

    @property
    def frozen(self) -> bool:
        """True if the mapping is read-only or shared, so that in-memory arrays must be read-only too."""
        return self._mapping is not None and self._mapping.mode in ("r", "r+")

    # -- raw reads ---------------------------------------------------------------

    def _fill(self, view: memoryview, hasher: Any = None) -> None:
        """Fill ``view`` from the source, or raise CorruptFileError if it ends first."""
        total = view.nbytes
        got = 0
        step = total if self._reads_whole else self._read_size
        while got < total:
            part = view[got : got + step]
            n = self._readinto(part)
            if not n:
                raise CorruptFileError(
                    f"the file is truncated: it ends {total - got} bytes into a "
                    f"{total}-byte read at offset {self._position + got}"
                )
            if hasher is not None:
                hasher.update(part[:n])
            if self._tap is not None:
                self._tap(part[:n])
            got += n
        self._position += total

    def _readinto(self, part: Any) -> int:
        """One ``readinto`` of the source (0 at its end); what breaks it is a CorruptFileError."""
        try:
            return int(self._source.readinto(part) or 0)
        except CorruptFileError:
            raise
        except Exception as exc:
            raise CorruptFileError(f"the stream cannot be read: {exc}") from exc

    def _read(self, size: int, hasher: Any = None) -> bytearray:
        buffer = bytearray(size)
        if hasher is None and self._tap is None and size <= self._read_size:
            # The common small read (a record header, a small array) in one call.
            got = self._readinto(buffer)
            if got == size:
                self._position += size
                return buffer
            self._position += got
            self._fill(memoryview(buffer)[got:])
            return buffer
        self._fill(memoryview(buffer), hasher)
        return buffer

    def _check_length(self, length: int, what: str) -> None:
        if self._size is not None and length > self._size - self._position:
            raise CorruptFileError(
                f"{what} claims {length} bytes at offset {self._position}, "
                f"but only {self._size - self._position} remain"
            )

    def _verify(self, hasher: Any, what: str) -> None:
        (stored,) = CHECKSUM.unpack(self._read(CHECKSUM.size))
        if hasher is not None and stored != hasher.intdigest():
            raise CorruptFileError(f"checksum mismatch in {what} ending at offset {self._position}")

    # -- records -----------------------------------------------------------------

    def _next_record(self) -> bool:
        """Read records until pickle bytes are available; False at the end record."""
        while not self._ended:
            start = self._position
            header = self._read(RECORD.size)
            kind, padding, reserved_a, reserved_b, length = RECORD.unpack(header)
            hasher = xxhash.xxh3_64(header)
            if reserved_a or reserved_b or padding >= ALIGNMENT:
                raise CorruptFileError(f"invalid record header at offset {start}")
            if kind == PICKLE:
                if padding or length > PICKLE_RECORD_MAX:
                    raise CorruptFileError(f"invalid pickle record at offset {start}")
                self._check_length(length + CHECKSUM.size, "a pickle record")
                payload = self._read(length + CHECKSUM.size)  # one read: payload and checksum
                hasher.update(memoryview(payload)[:length])
                if CHECKSUM.unpack_from(payload, length)[0] != hasher.intdigest():
                    raise CorruptFileError(f"checksum mismatch in the pickle record at offset {start}")
                self._records += 1
                self._run = 0
                self._chunk = memoryview(payload)[:length]
                return True
            if kind == ARRAY:
                self._read_array(start, header, padding, length, hasher)
            elif kind == FINAL:
                self._read_end(start, padding, length, hasher)
            else:
                raise CorruptFileError(f"unknown record kind {kind!r} at offset {start}")
        return False

    def _read_array(self, start: int, header: bytearray, padding: int, length: int, hasher: Any) -> None:
        if (start + RECORD.size + padding) % ALIGNMENT:
            raise CorruptFileError(f"misaligned array record at offset {start}")
        self._run += 1
        waiting = len(self._arrays) if self._keep_arrays and not self._whole else 0
        if self._run > MAX_ARRAY_RUN or waiting >= MAX_ARRAY_RUN:
            raise CorruptFileError(
                f"more than {MAX_ARRAY_RUN} array records at offset {start} wait for the pickle "
                "that uses them: not a stream cachelib writes"
            )
        self._check_length(padding + length, "an array record")
        if self._mapping is None and length < SMALL_ARRAY:
            array = self._read_small_array(start, padding, length, hasher)
        else:
            head = header + self._read(padding)
            # Bytes read into the array (or mapped) stay put: their leaves are hashed meanwhile.
            kept = self._keep_arrays or self._mapping is not None
            hasher = record_checksum(ARRAY, bytes(head), length, kept, self._version)
            if self._arrays_edited:
                hasher = None  # edited in place through mmap_mode="r+": the checksum is stale
            elif self._mapping is not None and not self._check_mapped:
                hasher = None  # mapped bytes are read lazily; cachelib.verify() checks them
            if kept:
                array = self._read_large_array(start, length, hasher)
            else:
                array = self._skip_array(length, hasher)
            self._verify(hasher, f"the array record at offset {start}")
        self._records += 1
        if self._keep_arrays:
            self._arrays.append(array)

    def _read_small_array(self, start: int, padding: int, length: int, hasher: Any) -> np.ndarray:
        """Read padding, bytes and checksum of a small array record in one read."""
        block = self._read(padding + length + CHECKSUM.size)
        view = memoryview(block)
        hasher.update(view[: padding + length])
        (stored,) = CHECKSUM.unpack_from(block, padding + length)
        if not self._arrays_edited and stored != hasher.intdigest():
            raise CorruptFileError(f"checksum mismatch in the array record at offset {start}")
        return np.frombuffer(block, np.uint8, length, padding)

    def _skip_array(self, length: int, hasher: Any) -> np.ndarray:
        """Read (and hash) an array's bytes through a bounded scratch buffer, keeping none."""
        remaining = length
        scratch = memoryview(bytearray(min(remaining, IO_CHUNK)))
        while remaining:
            step = min(remaining, scratch.nbytes)
            self._fill(scratch[:step], hasher)
            remaining -= step
        return np.empty(0, np.uint8)

    def _read_large_array(self, start: int, length: int, hasher: Any) -> np.ndarray:
        if self._mapping is not None:
            offset = self._mapping_offset + self._position
            if offset + length > len(self._mapping):
                raise CorruptFileError(f"array record at offset {start} runs past the end")
            array = self._mapping[offset : offset + length]
            if self._tap is not None or hasher is not None:
                for begin in range(0, length, IO_CHUNK):  # mapped bytes count too
                    piece = byte_view(array[begin : begin + IO_CHUNK])
                    if self._tap is not None:
                        self._tap(piece)
                    if hasher is not None:
                        hasher.update(piece)
            self._source.seek(length, io.SEEK_CUR)
            self._position += length
            return array
        try:
            array = np.empty(length, np.uint8)
        except MemoryError:
            raise CorruptFileError(f"array record at offset {start} claims {length} bytes") from None
        at = positional(self._source) if length >= PARALLEL_READ and thread_count() > 1 else None
        if at is not None:
            self._fill_at(byte_view(array), *at, hasher)
        else:
            self._fill(byte_view(array), hasher)
        return array

    def _fill_at(self, view: memoryview, fd: int, offset: int, hasher: Any) -> None:
        """Fill ``view`` with the pool's ``pread``s of the file ``fd`` from ``offset``, then seek past it.

        The pieces are read in parallel (this thread reads each piece it reaches before a
        pool thread has started it) and checked in order, so the checksum and the tap see
        the bytes as ``_fill`` would; a short read is a truncated file.
        """
        starts = range(0, view.nbytes, IO_CHUNK)
        reads = [submit(_pread_into, fd, view[begin : begin + IO_CHUNK], offset + begin) for begin in starts]
        try:
            for begin, read in zip(starts, reads):
                piece = view[begin : begin + IO_CHUNK]
                try:
                    # A piece no pool thread has started yet is read here: a busy or
                    # descheduled pool thread never leaves this one waiting.
                    got = _pread_into(fd, piece, offset + begin) if read.cancel() else read.result()
                except OSError as exc:
                    raise CorruptFileError(f"the stream cannot be read: {exc}") from exc
                if got < piece.nbytes:
                    raise CorruptFileError(
                        f"the file is truncated: it ends {view.nbytes - begin - got} bytes into a "
                        f"{view.nbytes}-byte read at offset {self._position + begin + got}"
                    )
                if hasher is not None:
                    hasher.update(piece)
                if self._tap is not None:
                    self._tap(piece)
        finally:
            for read in reads:
                read.cancel()
            concurrent.futures.wait(reads)  # none writes into ``view`` once this returns
        self._source.seek(view.nbytes, io.SEEK_CUR)
        self._position += view.nbytes

    def _read_end(self, start: int, padding: int, length: int, hasher: Any) -> None:
        if padding or length != END.size:
            raise CorruptFileError(f"invalid end record at offset {start}")
        payload = self._read(length, hasher)
        self._verify(hasher, "the end record")
        check_end(payload, start, self._records)
        self._ended = True

    # -- the unpickler's file-object interface --------------------------------------

    def readinto(self, buffer: Any) -> int:
        """Copy the next pickle bytes into ``buffer``; fewer only at the end."""
        view = memoryview(buffer).cast("B")
        filled = 0
        while filled < view.nbytes:
            if not self._chunk and not self._next_record():
                break
            n = min(view.nbytes - filled, self._chunk.nbytes)
            view[filled : filled + n] = self._chunk[:n]
            self._chunk = self._chunk[n:]
            filled += n
        return filled

    def read(self, size: int = -1) -> bytes:
        """Return the next ``size`` pickle bytes; fewer only at the end."""
        if size < 0:
            raise CorruptFileError("the pickle asked for an unbounded read")
        if size <= self._chunk.nbytes:
            data = self._chunk[:size].tobytes()
            self._chunk = self._chunk[size:]
            return data
        # Grow with the bytes that really arrive: a length read from a damaged
        # pickle never becomes one huge allocation.
        grown = bytearray()
        while len(grown) < size and (self._chunk or self._next_record()):
            n = min(size - len(grown), self._chunk.nbytes)
            grown += self._chunk[:n]
            self._chunk = self._chunk[n:]
        return bytes(grown)

    def readline(self) -> bytes:
        """Return pickle bytes up to a newline (text opcodes; never written by cachelib)."""
        line = bytearray()
        while not line.endswith(b"\n") and len(line) <= PICKLE_RECORD_MAX:
            byte = self.read(1)
            if not byte:
                break
            line += byte
        return bytes(line)

    def buffers(self) -> Iterator[Payload]:
        """Yield the array records to the unpickler, in order."""
        while True:
            if not self._arrays:
                raise CorruptFileError("the pickle refers to an array record that is missing")
            yield Payload(self._arrays.popleft(), self.mapped)

    def finish(self) -> None:
        """Check that the pickle consumed every record and that the end record follows."""
        if self._chunk or self._next_record() or self._arrays:
            raise CorruptFileError("the file holds data after the end of its pickle")

    # -- whole-stream consumers --------------------------------------------------------

    def parse_all(self) -> Parsed:
        """Read and check every record to the end; return the pickle and the arrays."""
        pieces: list[memoryview] = []
        self._whole = True
        try:
            while self._next_record():
                pieces.append(self._chunk)
                self._chunk = memoryview(b"")
            return Parsed(b"".join(pieces), tuple(self._arrays), self.mapped, self.frozen)
        except MemoryError:
            raise CorruptFileError("the stream holds more records than memory allows") from None
        finally:
            self._arrays = collections.deque()

    def skim(self) -> None:
        """Check every record to the end, keeping nothing."""
        self._keep_arrays = False
        while self._next_record():
            self._chunk = memoryview(b"")


PARALLEL_READ = 32 << 20
"""Arrays of at least this many bytes in a plain file are read by the pool's threads at once."""


def positional(source: Any) -> tuple[int, int] | None:
    """``(descriptor, offset)`` of a plain file's current position, for ``pread``; None for other streams.

    A stream that is a window on a plain file (an entry's) says so by a ``positional``
    method of its own; codecs' readers, pipes and remote files are read in order.
    """
    own = getattr(source, "positional", None)
    if own is not None:
        return cast("tuple[int, int] | None", own())
    if type(source) not in (io.BufferedReader, io.FileIO):
        return None
    try:
        return source.fileno(), source.tell()
    except (OSError, ValueError):  # a pipe, a closed file
        return None


def _pread_into(fd: int, view: memoryview, offset: int) -> int:
    """Fill ``view`` from ``fd`` at ``offset``; return how many bytes the file had there."""
    filled = 0
    while filled < view.nbytes:
        count = os.preadv(fd, [view[filled:]], offset + filled)
        if not count:
            break
        filled += count
    return filled


def _unpickled(load: Callable[[], Any]) -> Any:
    """Run an unpickling call, reporting its failures as CacheError subclasses."""
    try:
        return load()
    except (CorruptFileError, UnsupportedFormatError, DeserializationError):
        raise
    except (ImportError, AttributeError) as exc:
        raise DeserializationError(f"the file is intact but its value cannot be rebuilt here: {exc}") from exc
    except MemoryError:
        raise CorruptFileError("the pickle in the file asks for more memory than there is") from None
    except Exception as exc:
        raise CorruptFileError(f"the pickle in the file is invalid: {exc!r}") from exc


def read_stream(reader: RecordReader) -> Any:
    """Unpickle the value of one cachelib stream from ``reader``, streaming."""
    with frozen_inband(reader.frozen):
        value = _unpickled(pickle.Unpickler(reader, buffers=reader.buffers()).load)
    reader.finish()
    return value


def unpickle_parsed(parsed: Parsed, *, fresh: bool = False, restricted: bool = False) -> Any:
    """Rebuild the value of a checked stream.

    ``fresh`` copies every array first, so that a ``Parsed`` kept for reuse is never
    shared with (or changed by) a caller. ``restricted`` allows plain data only
    (see ``_format.unpickling``): for entries written by someone else.
    """
    if not parsed.arrays and not restricted and not parsed.frozen:  # the hot path of small cache entries
        return _unpickled(lambda: pickle.loads(parsed.pickle))
    arrays = [a.copy() for a in parsed.arrays] if fresh else list(parsed.arrays)
    supplied = iter([Payload(a, parsed.mapped) for a in arrays])
    del arrays
    with frozen_inband(parsed.frozen):
        if restricted:
            value = _unpickled(RestrictedUnpickler(io.BytesIO(parsed.pickle), buffers=supplied).load)
        else:
            value = _unpickled(lambda: pickle.loads(parsed.pickle, buffers=supplied))
    if next(supplied, None) is not None:
        raise CorruptFileError("the file holds array records its pickle does not use")
    return value


def parse_bytes(data: bytes | memoryview) -> Parsed:
    """Check a whole raw stream held in memory and split it into pickle and arrays."""
    source = io.BytesIO(data)
    reader = RecordReader(source, ReadPlan(size=len(data)))
    parsed = reader.parse_all()
    if source.tell() != len(data):
        raise CorruptFileError("the file holds data after its end record")
    return parsed
