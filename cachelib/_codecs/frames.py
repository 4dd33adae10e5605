"""Compressed streams as independent frames, compressed and decompressed on every core.

Rule: a stream is cut every ``FRAME_BYTES`` raw bytes, at fixed offsets, so the
file never depends on the number of threads; each piece becomes one standard
frame of its codec, with its content size, and frames simply follow each other
(``zstd -d`` and ``lz4 -d`` decode such files, as the formats specify). At most
``thread_count() + 1`` frames are in flight, each way: the memory a stream adds is
a few frames, whatever its size.

A reader finds each frame's end by walking its block headers (no decompression),
then decompresses frames on the pool, in order: into buffers of its own, copied out
as they are read, or, for a read large enough to hold whole frames (a large array)
and a codec that decodes into a given buffer (zstd), straight into that read's
memory. A frame it cannot take whole (no
content size, or a content size above ``FRAME_LIMIT``: files written by other
tools) hands the rest of the stream to the codec's streaming reader.
"""

from __future__ import annotations

import collections
import struct
from collections.abc import Callable
from concurrent.futures import Future, wait
from dataclasses import dataclass
from typing import Any, cast

from .._typing import Sink
from .pool import submit, thread_count

__all__ = [
    "FRAME_BYTES", "FRAME_LIMIT", "FrameCodec", "FrameError", "FrameReader", "FrameWriter",
    "lz4_frame", "zstd_frame",
]

FRAME_BYTES = 4 << 20
"""Raw bytes per frame written."""
FRAME_LIMIT = 16 << 20
"""The largest frame content a reader decompresses whole (larger frames are streamed)."""
_INLINE = 1 << 18  # frames smaller than this are (de)compressed in the calling thread
_READ_AHEAD = 1 << 20

_SKIPPABLE = range(0x184D2A50, 0x184D2A60)  # skippable frames (both formats): ignored


class FrameError(ValueError):
    """The bytes at a frame boundary are not a frame of the codec (or it ends early)."""


@dataclass(frozen=True)
class FrameCodec:
    """What the framing needs of a codec: one-shot functions and a frame walker.

    ``compress(data)`` returns one complete frame holding its content size;
    ``decompress(frame, size)`` returns the ``size`` bytes of one frame;
    ``walk(scanner)`` reads one frame from ``scanner`` and returns (its bytes, its
    content size or None), or None at the end of the stream; ``stream(fileobj)``
    is the codec's own streaming reader, for frames that cannot be taken whole.
    ``decode_on_pool`` is False for a codec whose decoding runs at memory speed:
    its frames are decompressed in the reading thread, where the output buffers
    come from (and go back to) one allocator arena. ``decompress_into(frame, out)``,
    where the codec has it, fills ``out`` (exactly the frame's content size) and
    raises ``CorruptFileError`` if the frame holds more or fewer bytes: the pool then
    decodes into buffers the reader reuses, whose pages stay mapped.
    """

    compress: Callable[[memoryview], bytes]
    decompress: Callable[[bytes, int], bytes]
    walk: Callable[[_Scanner], tuple[bytes, int | None] | None]
    stream: Callable[[Any], Any]
    decode_on_pool: bool = True
    decompress_into: Callable[[bytes, memoryview], None] | None = None


# -- writing ---------------------------------------------------------------------------------


class FrameWriter:
    """A write-only file object that compresses into consecutive frames of ``FRAME_BYTES``."""

    def __init__(self, sink: Sink, codec: FrameCodec) -> None:
        self._sink = sink
        self._codec = codec
        self._buffer = bytearray(FRAME_BYTES)
        self._filled = 0
        self._frames = 0
        self._flight: collections.deque[tuple[Future[bytes], bytearray]] = collections.deque()
        self._spare: list[bytearray] = []
        self._closed = False

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        size = view.nbytes
        while view.nbytes:
            take = min(FRAME_BYTES - self._filled, view.nbytes)
            self._buffer[self._filled : self._filled + take] = view[:take]
            self._filled += take
            view = view[take:]
            if self._filled == FRAME_BYTES:
                self._send()
        return size

    def _send(self) -> None:
        """Hand the full (or last) buffer to the pool; write out frames beyond the limit."""
        buffer, filled = self._buffer, self._filled
        piece = memoryview(buffer)[:filled]
        self._flight.append((submit(self._codec.compress, piece), buffer))
        self._frames += 1
        while len(self._flight) > thread_count():
            self._write_oldest()
        self._buffer = self._spare.pop() if self._spare else bytearray(FRAME_BYTES)
        self._filled = 0

    def _write_oldest(self) -> None:
        future, buffer = self._flight.popleft()
        self._sink.write(future.result())
        self._spare.append(buffer)

    def close(self) -> None:
        """Compress what is pending, write every frame in order; ``sink`` stays open."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._filled or not self._frames:  # an empty stream is still one frame
                if not self._flight and self._filled < _INLINE:
                    self._sink.write(self._codec.compress(memoryview(self._buffer)[: self._filled]))
                else:
                    self._send()
            while self._flight:
                self._write_oldest()
        finally:
            self._flight.clear()
            self._spare.clear()


# -- reading ---------------------------------------------------------------------------------


class _Scanner:
    """Bytes of a source read ahead in large pieces: looked at by offset, taken in exact amounts."""

    def __init__(self, source: Any) -> None:
        self._source = source
        self._data = bytearray()
        self._start = 0
        self._eof = False

    def _fill(self, size: int) -> None:
        while len(self._data) - self._start < size and not self._eof:
            if self._start:
                del self._data[: self._start]
                self._start = 0
            # Reads are bounded: a size from a damaged header is never allocated in one piece.
            chunk = self._source.read(max(_READ_AHEAD, min(size - len(self._data), FRAME_LIMIT)))
            if not chunk:
                self._eof = True
            self._data += chunk

    def at_end(self) -> bool:
        self._fill(1)
        return len(self._data) == self._start

    def look(self, offset: int, size: int) -> bytes:
        """Return ``size`` bytes at ``offset`` past the next byte, taking nothing;
        ``FrameError`` if the source ends first."""
        self._fill(offset + size)
        start = self._start + offset
        if len(self._data) < start + size:
            raise FrameError(f"the compressed stream ends inside a frame ({offset + size} bytes expected)")
        return bytes(self._data[start : start + size])

    def take(self, size: int) -> bytes:
        """Return the next ``size`` bytes; ``FrameError`` if the source ends first."""
        self._fill(size)
        if len(self._data) - self._start < size:
            raise FrameError(f"the compressed stream ends inside a frame ({size} bytes expected)")
        data = bytes(memoryview(self._data)[self._start : self._start + size])  # one copy
        self._start += size
        return data

    def skip(self, size: int) -> None:
        """Pass over the next ``size`` bytes, holding at most a read-ahead of them;
        ``FrameError`` if the source ends first."""
        while size:
            self._fill(min(size, _READ_AHEAD))
            have = min(size, len(self._data) - self._start)
            if not have:
                raise FrameError("the compressed stream ends inside a skippable frame")
            self._start += have
            size -= have

    def rest(self) -> Any:
        """A file object of everything not taken yet (the read-ahead, then the source)."""
        return _Rest(bytes(self._data[self._start :]), self._source)


class _Rest:
    """A read-only file object: ``prefix`` and then ``source``."""

    def __init__(self, prefix: bytes, source: Any) -> None:
        self._prefix = memoryview(prefix)
        self._source = source

    def read(self, size: int = -1) -> bytes:
        if self._prefix:
            n = len(self._prefix) if size < 0 else min(size, len(self._prefix))
            data = self._prefix[:n].tobytes()
            self._prefix = self._prefix[n:]
            return data
        return cast(bytes, self._source.read(size))

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        data = self.read(view.nbytes)
        view[: len(data)] = data
        return len(data)


def _at_frame(scanner: _Scanner, expected: int, codec: str) -> bool:
    """Skip skippable frames; True if a frame of ``codec`` starts next, False at the end."""
    while not scanner.at_end():
        (magic,) = struct.unpack("<I", scanner.look(0, 4))
        if magic == expected:
            return True
        if magic not in _SKIPPABLE:
            raise FrameError(f"bytes after a frame are not a {codec} frame")
        (size,) = struct.unpack("<I", scanner.look(4, 4))
        scanner.skip(8 + size)
    return False


def zstd_frame(scanner: _Scanner) -> tuple[bytes, int | None] | None:
    """Read one Zstandard frame (RFC 8878, section 3.1.1) by its block headers."""
    if not _at_frame(scanner, 0xFD2FB528, "zstd"):
        return None
    (descriptor,) = scanner.look(4, 1)
    single = descriptor >> 5 & 1
    if descriptor & 0x08:
        raise FrameError("a zstd frame header sets its reserved bit")
    size_bytes = (1 if single else 0, 2, 4, 8)[descriptor >> 6]
    header = (0 if single else 1) + (0, 1, 2, 4)[descriptor & 3] + size_bytes
    content: int | None = None
    if size_bytes:
        field = scanner.look(5 + header - size_bytes, size_bytes)
        content = int.from_bytes(field, "little") + (256 if size_bytes == 2 else 0)
    end = 5 + header
    while True:
        value = int.from_bytes(scanner.look(end, 3), "little")
        kind, size = value >> 1 & 3, value >> 3
        if kind == 3 or size > 128 << 10:
            raise FrameError("a zstd block header is invalid")
        end += 3 + (1 if kind == 1 else size)
        if value & 1:
            break
    if descriptor & 0x04:
        end += 4  # content checksum
    return scanner.take(end), content


def lz4_frame(scanner: _Scanner) -> tuple[bytes, int | None] | None:
    """Read one LZ4 frame (lz4 frame format 1.6) by its block sizes."""
    if not _at_frame(scanner, 0x184D2204, "lz4"):
        return None
    (flags,) = scanner.look(4, 1)
    if flags >> 6 != 1 or flags & 0x02:
        raise FrameError("an lz4 frame header has an unknown version or reserved bit")
    content = int.from_bytes(scanner.look(6, 8), "little") if flags & 0x08 else None
    end = 6 + (8 if flags & 0x08 else 0) + (4 if flags & 0x01 else 0) + 1
    while True:
        size = int.from_bytes(scanner.look(end, 4), "little") & 0x7FFFFFFF
        end += 4
        if not size:
            break
        if size > 4 << 20:
            raise FrameError("an lz4 block is larger than the format allows")
        end += size + (4 if flags & 0x10 else 0)
    if flags & 0x04:
        end += 4  # content checksum
    return scanner.take(end), content


class FrameReader:
    """A read-only file object (``readinto``) over consecutive frames, decompressed on the pool."""

    preferred_read_size = 4 << 20  # what a reader may ask for at once: the frames are in memory anyway
    reads_whole = True  # a large ``readinto`` is filled by decoding frames straight into it

    def __init__(self, source: Any, codec: FrameCodec) -> None:
        self._scanner = _Scanner(source)
        self._codec = codec
        # Frames being decompressed, each with the reusable buffer it is decoded into (if any).
        self._flight: collections.deque[tuple[Future[Any], bytearray | None]] = collections.deque()
        self._current = memoryview(b"")
        self._slot: bytearray | None = None  # the buffer ``_current`` is a view of, if reusable
        self._spare: list[bytearray] = []
        self._stream: Any = None  # the codec's streaming reader, once frames cannot be taken whole
        self._walked = False  # the scanner reached the end, or handed over to the stream

    def _top_up(self) -> None:
        """Read frames and start their decompression until enough are in flight."""
        codec = self._codec
        # Off the pool, one frame beyond the one being read (the allocator reuses their buffers).
        ahead = thread_count() + 1 if codec.decode_on_pool else 2
        while not self._walked and len(self._flight) < ahead:
            found = self._next_frame()
            if found is None:
                return
            frame, content = found
            if content < _INLINE or not codec.decode_on_pool:
                future: Future[Any] = Future()
                future.set_result(codec.decompress(frame, content))
                self._flight.append((future, None))
            elif codec.decompress_into is not None:
                slot = self._take_slot(content)
                self._flight.append((submit(_decode_into, codec.decompress_into, frame, slot, content), slot))
            else:
                self._flight.append((submit(codec.decompress, frame, content), None))

    def _next_frame(self) -> tuple[bytes, int] | None:
        """The next frame and its content size; None at the end, or where the codec's streaming
        reader takes over (a frame without a size, or too large to take whole)."""
        found = self._codec.walk(self._scanner)
        if found is not None and found[1] is not None and found[1] <= FRAME_LIMIT:
            return found[0], found[1]
        if found is not None:
            self._stream = self._codec.stream(_Rest(found[0], self._scanner.rest()))
        self._walked = True
        return None

    def _take_slot(self, size: int) -> bytearray:
        """A spare buffer of at least ``size`` bytes, or a new one."""
        for i, slot in enumerate(self._spare):
            if len(slot) >= size:
                return self._spare.pop(i)
        return bytearray(max(size, FRAME_BYTES))

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        if view.nbytes >= 2 * FRAME_BYTES and self._codec.decompress_into is not None and not self._walked:
            filled = self._readinto_directly(view)
            if filled:
                return filled
        while not self._current:
            self._release_slot()
            self._top_up()
            if not self._take_decoded():
                return int(self._stream.readinto(view) or 0) if self._stream is not None else 0
        return self._copy_current(view)

    def _release_slot(self) -> None:
        """The current frame is consumed: nothing views its buffer any more, which is reused."""
        if self._slot is not None:
            self._spare.append(self._slot)
            self._slot = None

    def _take_decoded(self) -> bool:
        """Make the oldest frame in flight the current one (waiting for it); False if none is."""
        if not self._flight:
            return False
        future, self._slot = self._flight.popleft()
        self._current = memoryview(future.result())
        return True

    def _copy_current(self, view: memoryview) -> int:
        """Copy the start of the current frame into ``view``; return how many bytes."""
        n = min(view.nbytes, self._current.nbytes)
        view[:n] = self._current[:n]
        self._current = self._current[n:]
        return n

    def _readinto_directly(self, view: memoryview) -> int:
        """Fill a large ``view``: what is decoded already is copied, the frames that fit whole
        are decoded straight into it on the pool (no copy), the next frame into a buffer."""
        filled = self._copy_decoded(view)
        codec = self._codec
        decompress_into = cast(Callable[[bytes, memoryview], None], codec.decompress_into)
        ahead = thread_count() + 1
        direct: collections.deque[Future[Any]] = collections.deque()
        try:
            while not self._walked and filled < view.nbytes:
                found = self._next_frame()
                if found is None:
                    break
                frame, content = found
                if content > view.nbytes - filled:  # the rest of it comes with the next read
                    slot = self._take_slot(content)
                    self._flight.append((submit(_decode_into, decompress_into, frame, slot, content), slot))
                    break
                if len(direct) >= ahead:
                    direct.popleft().result()
                direct.append(submit(_decode_into, decompress_into, frame, view[filled : filled + content],
                                     content))
                filled += content
            while direct:
                direct.popleft().result()
        finally:
            for future in direct:
                future.cancel()
            wait(direct)  # nothing writes into ``view`` once this returns
        return filled + self._copy_decoded(view[filled:])

    def _copy_decoded(self, view: memoryview) -> int:
        """Copy into ``view`` what is decoded already: the current frame, then the frames in flight."""
        filled = 0
        while filled < view.nbytes:
            if not self._current:
                self._release_slot()
                if not self._take_decoded():
                    break
            filled += self._copy_current(view[filled:])
        return filled

    def read(self, size: int = -1) -> bytes:
        buffer = bytearray(size if size >= 0 else self.preferred_read_size)
        return bytes(buffer[: self.readinto(buffer)])

    def close(self) -> None:
        self._flight.clear()  # a worker still decoding keeps its own buffer alive
        self._current = memoryview(b"")
        self._slot = None
        self._spare.clear()
        if self._stream is not None:
            self._stream.close()
            self._stream = None


def _decode_into(decompress_into: Callable[[bytes, memoryview], None], frame: bytes,
                 slot: bytearray | memoryview, size: int) -> memoryview:
    """Decompress ``frame`` into the first ``size`` bytes of ``slot``; return that view."""
    out = memoryview(slot)[:size]
    decompress_into(frame, out)
    return out
