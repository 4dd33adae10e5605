"""The codec registry: named compressors that wrap a raw stream in a standard frame.

Rule: a compressor only turns one binary stream into another. It knows nothing of
pickles or arrays, and what it writes is its codec's own standard frame, so that
``gunzip``, ``zstd -d``, ``xz -d`` ... turn a compressed cachelib file into the raw
one. A compressor is a configured, immutable value (codec + level); the registry
holds one per name at its default level.
"""

from __future__ import annotations

import abc
import importlib
import os
import threading
import zlib
from collections.abc import Callable
from types import MappingProxyType
from typing import Any, ClassVar, Protocol, cast

from .._errors import CorruptFileError, InvalidOptionError, MissingDependencyError, UnknownCompressorError
from .frames import FrameCodec, FrameReader, FrameWriter, lz4_frame, zstd_frame

__all__ = [
    "CodecReader",
    "CodecWriter",
    "Compressor",
    "compressor_for_path",
    "compressors",
    "detect_compressor",
    "get_compressor",
    "register_compressor",
]


class CodecWriter(Protocol):
    """What ``Compressor.open_writer`` returns: writes compress, ``close`` ends the frame."""

    def write(self, data: Any, /) -> Any: ...

    def close(self) -> None: ...


class CodecReader(Protocol):
    """What ``Compressor.open_reader`` returns: reads decompress."""

    def readinto(self, buffer: Any, /) -> Any: ...

    def close(self) -> None: ...


class Compressor(abc.ABC):
    """A streaming codec at one compression level.

    Subclasses set the class attributes and implement two methods:

    * ``open_writer(fileobj)`` returns a writable binary file object whose bytes reach
      ``fileobj`` compressed; its ``close()`` ends the frame and leaves ``fileobj`` open.
    * ``open_reader(fileobj)`` returns a readable binary file object (with ``readinto``)
      that decompresses ``fileobj``; its ``close()`` leaves ``fileobj`` open.

    Whatever a reader raises on damaged input, the file layer reports as
    ``CorruptFileError``.
    """

    name: ClassVar[str]
    extension: ClassVar[str]
    magic: ClassVar[bytes]
    levels: ClassVar[range]
    default_level: ClassVar[int]

    def __init__(self, level: int | None = None) -> None:
        self.level = self.default_level if level is None else self._checked_level(level)

    @classmethod
    def _checked_level(cls, level: object) -> int:
        if isinstance(level, bool) or not isinstance(level, int) or level not in cls.levels:
            raise InvalidOptionError(
                f"{cls.name} compression level must be an integer from "
                f"{cls.levels.start} to {cls.levels.stop - 1}, got {level!r}"
            )
        return level

    def with_level(self, level: int | None) -> Compressor:
        """Return a compressor of the same codec at ``level`` (default level if None)."""
        return type(self)(level)

    @abc.abstractmethod
    def open_writer(self, fileobj: Any) -> CodecWriter:
        """Return a file object that compresses what is written to it into ``fileobj``."""

    @abc.abstractmethod
    def open_reader(self, fileobj: Any) -> CodecReader:
        """Return a file object that reads ``fileobj`` decompressed."""

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.level == self.level

    def __hash__(self) -> int:
        return hash((type(self), self.level))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(level={self.level})"


def _import_optional(module: str, package: str, codec: str) -> Any:
    """Import ``module`` or raise an error naming the ``pip install`` that fixes it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(
            f"the {codec} codec needs the {package!r} package: "
            f"pip install {package}  (or pip install 'cachelib-numpy[{codec}]')",
            package=package,
        ) from exc


class _ZlibWriter:
    """A minimal write-only file object over ``zlib.compressobj``."""

    def __init__(self, fileobj: Any, level: int, wbits: int) -> None:
        self._fileobj = fileobj
        self._compressor: Any = zlib.compressobj(level, zlib.DEFLATED, wbits)

    def write(self, data: Any) -> int:
        self._fileobj.write(self._compressor.compress(data))
        return memoryview(data).nbytes

    def close(self) -> None:
        if self._compressor is not None:
            self._fileobj.write(self._compressor.flush())
            self._compressor = None


class _ZlibReader:
    """A minimal read-only file object over ``zlib.decompressobj`` with ``readinto``."""

    _INPUT_SIZE = 1 << 16

    def __init__(self, fileobj: Any) -> None:
        self._fileobj = fileobj
        self._decompressor = zlib.decompressobj()
        self._pending = b""

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        while not self._decompressor.eof:
            if not self._pending:
                self._pending = self._fileobj.read(self._INPUT_SIZE)
                if not self._pending:
                    raise EOFError("compressed stream ended before the end-of-stream marker")
            data = self._decompressor.decompress(self._pending, len(view))
            self._pending = self._decompressor.unconsumed_tail
            if data:
                view[: len(data)] = data
                return len(data)
        return 0

    def trailing_bytes(self) -> bytes:
        """Return input found after the end of the zlib stream (none, in a sound file)."""
        return bytes(self._decompressor.unused_data + self._pending + self._fileobj.read(1))

    def close(self) -> None:
        self._decompressor = zlib.decompressobj()


class Zlib(Compressor):
    """zlib (RFC 1950) at levels 1-9; ``.z`` files."""

    name = "zlib"
    extension = ".z"
    magic = b"\x78"
    levels = range(1, 10)
    default_level = 3

    def open_writer(self, fileobj: Any) -> CodecWriter:
        return _ZlibWriter(fileobj, self.level, zlib.MAX_WBITS)

    def open_reader(self, fileobj: Any) -> CodecReader:
        return _ZlibReader(fileobj)


class Gzip(Compressor):
    """gzip (RFC 1952) at levels 1-9; ``.gz`` files, read by ``gunzip``."""

    name = "gzip"
    extension = ".gz"
    magic = b"\x1f\x8b"
    levels = range(1, 10)
    default_level = 3

    def open_writer(self, fileobj: Any) -> CodecWriter:
        import gzip  # each codec's module is loaded when the codec is first used

        # No file name and mtime=0: equal values give equal files.
        writer = gzip.GzipFile(filename="", fileobj=fileobj, mode="wb", compresslevel=self.level, mtime=0)
        return writer

    def open_reader(self, fileobj: Any) -> CodecReader:
        import gzip

        return gzip.GzipFile(fileobj=fileobj, mode="rb")


class Bz2(Compressor):
    """bzip2 at levels 1-9; ``.bz2`` files."""

    name = "bz2"
    extension = ".bz2"
    magic = b"BZh"
    levels = range(1, 10)
    default_level = 9

    def open_writer(self, fileobj: Any) -> CodecWriter:
        import bz2

        return bz2.BZ2File(fileobj, mode="wb", compresslevel=self.level)

    def open_reader(self, fileobj: Any) -> CodecReader:
        import bz2

        return bz2.BZ2File(fileobj, mode="rb")


class Xz(Compressor):
    """xz container with LZMA2 at presets 0-9; ``.xz`` files."""

    name = "xz"
    extension = ".xz"
    magic = b"\xfd7zXZ\x00"
    levels = range(0, 10)
    default_level = 6
    _format = "FORMAT_XZ"  # the name of the lzma module's constant

    def open_writer(self, fileobj: Any) -> CodecWriter:
        import lzma

        return lzma.LZMAFile(fileobj, mode="wb", format=getattr(lzma, self._format), preset=self.level)

    def open_reader(self, fileobj: Any) -> CodecReader:
        import lzma

        return lzma.LZMAFile(fileobj, mode="rb", format=getattr(lzma, self._format))


class Lzma(Xz):
    """Legacy ``.lzma`` (LZMA_Alone) container at presets 0-9."""

    name = "lzma"
    extension = ".lzma"
    magic = b"\x5d\x00\x00"
    _format = "FORMAT_ALONE"


def _zstd_backend() -> Any:
    """Return python-zstandard, or the standard library's module on Python >= 3.14."""
    try:
        return importlib.import_module("zstandard")
    except ImportError:
        try:
            return importlib.import_module("compression.zstd")
        except ImportError:
            return _import_optional("zstandard", "zstandard", "zstd")


_per_thread = threading.local()  # codec contexts are not shared between threads


def _context(kind: str, level: int, make: Callable[[], Any]) -> Any:
    """Return this thread's codec context ``kind`` at ``level``, made once."""
    contexts = _per_thread.__dict__.setdefault("contexts", {})
    context = contexts.get((kind, level))
    if context is None:
        context = contexts[kind, level] = make()
    return context


def _checked_size(data: bytes, size: int, codec: str) -> bytes:
    if len(data) != size:
        raise CorruptFileError(f"a {codec} frame holds {len(data)} bytes, but its header says {size}")
    return data


class _Framed(Compressor):
    """A codec written as independent frames and (de)compressed on every core (``_codecs.frames``)."""

    @abc.abstractmethod
    def _codec(self) -> FrameCodec:
        """Return the one-shot functions and the frame walker of this codec at this level."""

    def open_writer(self, fileobj: Any) -> CodecWriter:
        return FrameWriter(fileobj, self._codec())

    def open_reader(self, fileobj: Any) -> CodecReader:
        # Across frames: bytes after ours must be a valid frame, or the read fails.
        return FrameReader(fileobj, self._codec())


class Zstd(_Framed):
    """Zstandard at levels 1-22; ``.zst`` files, read by ``zstd -d``. The default codec."""

    name = "zstd"
    extension = ".zst"
    magic = b"\x28\xb5\x2f\xfd"
    levels = range(1, 23)
    default_level = 3

    def _codec(self) -> FrameCodec:
        backend = _zstd_backend()
        level = self.level
        if hasattr(backend, "ZstdCompressor") and hasattr(backend.ZstdCompressor, "stream_writer"):

            def compress(data: memoryview) -> bytes:
                compressor = _context("zstd-c", level, lambda: backend.ZstdCompressor(level=level))
                return bytes(compressor.compress(data))

            def decompress(frame: bytes, size: int) -> bytes:
                out = _context("zstd-d", 0, backend.ZstdDecompressor).decompress(frame, max_output_size=size)
                return _checked_size(out, size, "zstd")

            def decompress_into(frame: bytes, out: memoryview) -> None:
                context = _context("zstd-d", 0, backend.ZstdDecompressor)
                with context.stream_reader(frame) as reader:
                    filled = 0
                    while filled < out.nbytes:
                        got = reader.readinto(out[filled:])
                        if not got:
                            break
                        filled += got
                    if filled < out.nbytes or reader.read(1):
                        more = "fewer" if filled < out.nbytes else "more"
                        raise CorruptFileError(f"a zstd frame holds {more} bytes than its header says")

            def stream(fileobj: Any) -> Any:
                reader = backend.ZstdDecompressor().stream_reader
                return reader(fileobj, closefd=False, read_across_frames=True)

            return FrameCodec(compress, decompress, zstd_frame, stream, decompress_into=decompress_into)

        # The standard library's compression.zstd.

        def compress_stdlib(data: memoryview) -> bytes:
            return bytes(backend.compress(data, level=level))

        def decompress_stdlib(frame: bytes, size: int) -> bytes:
            return _checked_size(backend.decompress(frame), size, "zstd")

        def stream_stdlib(fileobj: Any) -> Any:
            return backend.ZstdFile(fileobj, mode="rb")

        return FrameCodec(compress_stdlib, decompress_stdlib, zstd_frame, stream_stdlib)


class Lz4(_Framed):
    """LZ4 frame at levels 0-16 (0-2 fast, 3-16 high compression); ``.lz4`` files."""

    name = "lz4"
    extension = ".lz4"
    magic = b"\x04\x22\x4d\x18"
    levels = range(0, 17)
    default_level = 0

    def _codec(self) -> FrameCodec:
        frame = _import_optional("lz4.frame", "lz4", "lz4")
        level = self.level

        def compress(data: memoryview) -> bytes:
            return cast(bytes, frame.compress(data, compression_level=level, store_size=True))

        def decompress(data: bytes, size: int) -> bytes:
            return _checked_size(frame.decompress(data), size, "lz4")

        def stream(fileobj: Any) -> Any:
            return frame.LZ4FrameFile(fileobj, mode="rb")

        # Decoding on the pool was slower (400 MB: 0.39 s against 0.21 s in the reading
        # thread on two cores): each 4 MiB output was allocated in a worker's arena and freed
        # in the reader, and its pages were faulted in afresh (three times the page faults).
        return FrameCodec(compress, decompress, lz4_frame, stream, decode_on_pool=False)


_registry: dict[str, Compressor] = {}
compressors = MappingProxyType(_registry)
"""A read-only view of the registered compressors, by name."""

DEFAULT_COMPRESSOR = "zstd"


def register_compressor(name: str, compressor: Compressor, force: bool = False) -> None:
    """Register ``compressor`` under ``name`` for ``compress=name`` and for loading.

    Files it writes are recognised on load by ``compressor.magic``. Registering a
    name twice raises ``ValueError`` unless ``force=True``.
    """
    if not isinstance(name, str) or not name:
        raise InvalidOptionError(f"a compressor name must be a non-empty str, got {name!r}")
    if not isinstance(compressor, Compressor):
        raise InvalidOptionError(
            f"compressor must be an instance of cachelib.Compressor, got {type(compressor).__name__}"
        )
    if not compressor.magic:
        raise InvalidOptionError(f"compressor {name!r} needs a non-empty magic number")
    if name in _registry and not force:
        raise InvalidOptionError(
            f"a compressor named {name!r} is already registered; pass force=True to replace it"
        )
    _registry[name] = compressor


def get_compressor(name: str, level: int | None = None) -> Compressor:
    """Return the compressor registered as ``name`` at ``level`` (its default if None)."""
    try:
        compressor = _registry[name]
    except (KeyError, TypeError):
        raise UnknownCompressorError(
            f"unknown compressor {name!r}; known: {', '.join(sorted(_registry))} "
            "(cachelib.register_compressor adds more)",
            name=name,
        ) from None
    return compressor if level is None else compressor.with_level(level)


def compressor_for_path(path: str | os.PathLike[str]) -> Compressor | None:
    """Return the compressor whose extension ends ``path``, or None."""
    suffix = os.path.splitext(os.fspath(path))[1].lower()
    for compressor in _registry.values():
        if suffix and suffix == compressor.extension:
            return compressor
    return None


def detect_compressor(prefix: bytes) -> Compressor | None:
    """Return the compressor whose magic number starts ``prefix``, or None."""
    matches = [c for c in _registry.values() if prefix.startswith(c.magic)]
    return max(matches, key=lambda c: len(c.magic), default=None)


MAGIC_PREFIX_SIZE = 8
"""How many leading bytes ``detect_compressor`` may need."""

for _compressor in (Zlib(), Gzip(), Bz2(), Lzma(), Xz(), Zstd(), Lz4()):
    register_compressor(_compressor.name, _compressor)
