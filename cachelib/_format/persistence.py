"""``dump`` and ``load``: one value to one file, a path or any binary file object.

Rule: this module decides *where* bytes go and *which* codec wraps them; the
record layout belongs to ``_format.records`` and ``_format.reader``, the codecs to ``_codecs.registry``.
The public ``load`` and ``verify`` (``_entries.loading``) also read cache entries.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import pickle
import uuid
import warnings
from collections.abc import Iterator
from typing import Any, Union, cast

import numpy as np

from .._codecs.registry import (
    DEFAULT_COMPRESSOR,
    MAGIC_PREFIX_SIZE,
    Compressor,
    compressor_for_path,
    detect_compressor,
    get_compressor,
)
from .._errors import CacheWarning, CorruptFileError, FileAccessError, InvalidOptionError
from .._typing import Sink
from .reader import PLAIN, Mapping, Parsed, ReadPlan, RecordReader, read_stream
from .records import DECOMPRESSED_CHUNK, FLAG_ARRAYS_EDITED, FLAGS_OFFSET, MAGIC, write_stream

__all__ = [
    "MMAP_MODES",
    "check_stream",
    "dump",
    "load_value",
    "parse_stream",
    "read_value",
    "resolve_compress",
    "sniff",
    "stream_value",
    "verify_stream_of",
    "write_value",
]

PathLike = Union[str, "os.PathLike[str]"]
CompressSpec = Union[bool, int, str, "tuple[Any, ...]", Compressor, None]

MMAP_MODES = (None, "r", "r+", "c")
_BUFFER_SIZE = 1 << 20


def _is_path(filename: object) -> bool:
    return isinstance(filename, (str, os.PathLike))


def resolve_compress(compress: CompressSpec, path: PathLike | None = None) -> Compressor | None:
    """Turn every accepted form of ``compress`` into a compressor, or None for raw.

    With a ``path``, a falsy ``compress`` or a bare level lets the extension
    (``.z .gz .bz2 .lzma .xz .lz4 .zst``) choose the codec, as joblib does.
    """
    by_extension = compressor_for_path(path) if path is not None else None
    if isinstance(compress, Compressor):
        return compress
    if compress is None or compress is False or (type(compress) is int and compress == 0):
        return by_extension
    if compress is True:
        return by_extension or get_compressor(DEFAULT_COMPRESSOR)
    if isinstance(compress, int) and not isinstance(compress, bool):
        if compress < 0:
            raise InvalidOptionError(f"compress level must be positive, got {compress}")
        return (by_extension or get_compressor(DEFAULT_COMPRESSOR)).with_level(compress)
    if isinstance(compress, str):
        return get_compressor(compress)
    if isinstance(compress, tuple) and len(compress) == 2:
        name, level = compress
        if isinstance(name, Compressor):
            return name.with_level(level)
        return get_compressor(name, level)
    raise InvalidOptionError(
        "compress must be False, True, a level, a codec name, a (name, level) tuple "
        f"or a cachelib.Compressor, got {compress!r}"
    )


def _checked_protocol(protocol: int | None) -> int:
    if protocol is None:
        return 5
    if isinstance(protocol, bool) or not isinstance(protocol, int):
        raise InvalidOptionError(f"protocol must be an int, got {protocol!r}")
    if protocol < 0:
        protocol = pickle.HIGHEST_PROTOCOL
    if not 5 <= protocol <= pickle.HIGHEST_PROTOCOL:
        raise InvalidOptionError(
            f"cachelib files need pickle protocol 5 or newer (up to {pickle.HIGHEST_PROTOCOL}), "
            f"got {protocol}; leave protocol=None"
        )
    return protocol


def write_value(value: Any, fileobj: Sink, compressor: Compressor | None, protocol: int = 5) -> None:
    """Write ``value`` to an open binary file object, compressed if asked."""
    if compressor is None:
        write_stream(value, fileobj, protocol)
        return
    stream = compressor.open_writer(fileobj)
    try:
        write_stream(value, stream, protocol)
    finally:
        stream.close()


def _check_not_directory(path: PathLike) -> None:
    if os.path.isdir(path):
        path = os.fspath(path)
        raise FileAccessError(f"{path!r} is a directory; give a file name inside it", path=path)


def dump(value: Any, filename: Any, compress: CompressSpec = False, protocol: int | None = None) -> list[str]:
    """Write ``value`` to ``filename`` (a path or a binary file object); return the paths written.

    A path is written atomically (a temporary file in the same directory, then a
    rename), so a reader sees the old file or the new one, never a torn one.
    """
    protocol = _checked_protocol(protocol)
    if _is_path(filename):
        compressor = resolve_compress(compress, filename)
        _dump_to_path(value, os.fspath(filename), compressor, protocol)
        return [os.fspath(filename)]
    if hasattr(filename, "write"):
        write_value(value, filename, resolve_compress(compress), protocol)
        return []
    hint = "; the value comes first: dump(value, filename)" if _is_path(value) else ""
    raise InvalidOptionError(
        f"filename must be a path or a binary file object, got {type(filename).__name__}{hint}"
    )


def _dump_to_path(value: Any, path: str, compressor: Compressor | None, protocol: int) -> None:
    _check_not_directory(path)
    if os.path.exists(path) and not os.path.isfile(path):
        # A device or a pipe: write through it, a rename would replace it.
        with open(path, "wb") as fileobj:
            write_value(value, fileobj, compressor, protocol)
        return
    temporary = f"{path}.{uuid.uuid4().hex}.tmp"
    try:
        with open(temporary, "xb", buffering=_BUFFER_SIZE) as fileobj:
            write_value(value, fileobj, compressor, protocol)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


class _Prefixed:
    """A read-only stream that yields ``prefix`` and then the rest of ``fileobj``."""

    def __init__(self, prefix: bytes, fileobj: Any) -> None:
        self._prefix = memoryview(prefix)
        self._fileobj = fileobj

    def readinto(self, buffer: Any) -> int:
        if self._prefix:
            view = memoryview(buffer).cast("B")
            n = min(view.nbytes, self._prefix.nbytes)
            view[:n] = self._prefix[:n]
            self._prefix = self._prefix[n:]
            return n
        if hasattr(self._fileobj, "readinto"):
            return int(self._fileobj.readinto(buffer) or 0)
        data = self._fileobj.read(len(memoryview(buffer).cast("B")))
        memoryview(buffer).cast("B")[: len(data)] = data
        return len(data)

    def read(self, size: int = -1) -> bytes:
        buffer = bytearray(size if size >= 0 else _BUFFER_SIZE)
        return bytes(buffer[: self.readinto(buffer)])


def _peek_magic(fileobj: Any) -> tuple[bytes, Any]:
    """Return the first bytes of ``fileobj`` and a stream that still starts with them."""
    if isinstance(fileobj, io.BytesIO):
        position = fileobj.tell()
        return fileobj.getbuffer()[position : position + MAGIC_PREFIX_SIZE].tobytes(), fileobj
    if hasattr(fileobj, "peek"):
        try:
            prefix = fileobj.peek(MAGIC_PREFIX_SIZE)[:MAGIC_PREFIX_SIZE]
            if len(prefix) == MAGIC_PREFIX_SIZE:
                return prefix, fileobj
        except (OSError, ValueError):
            pass
    try:
        if fileobj.seekable():
            position = fileobj.tell()
            prefix = fileobj.read(MAGIC_PREFIX_SIZE)
            fileobj.seek(position)
            return prefix, fileobj
    except (AttributeError, OSError, ValueError):
        pass
    prefix = b""
    while len(prefix) < MAGIC_PREFIX_SIZE:
        part = fileobj.read(MAGIC_PREFIX_SIZE - len(prefix))
        if not part:
            break
        prefix += part
    return prefix, _Prefixed(prefix, fileobj)


def _stream_size(fileobj: Any) -> tuple[int | None, int]:
    """Return (bytes from the current position to the end, current position) if knowable.

    Only a plain file or a ``BytesIO`` knows its size; a codec's file object (a
    ``GzipFile`` on a path) reports the compressed file's, so it gets None.
    """
    if isinstance(fileobj, io.BytesIO):
        position = fileobj.tell()
        return fileobj.getbuffer().nbytes - position, position
    if not isinstance(fileobj, (io.BufferedReader, io.BufferedRandom, io.FileIO)):
        return None, 0
    try:
        position = fileobj.tell()
        return os.fstat(fileobj.fileno()).st_size - position, position
    except (OSError, ValueError, io.UnsupportedOperation):
        return None, 0


def _mapping_for(fileobj: Any, mmap_mode: str) -> np.memmap | None:
    """Map the whole file behind ``fileobj`` (by its descriptor), or None with a warning.

    The mapping is made from the open descriptor, never by path again: the arrays
    returned are the bytes of the file that was opened and checked.
    """
    try:
        fileobj.fileno()
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        warnings.warn(
            f"mmap_mode={mmap_mode!r} needs a file on disk; this "
            f"{type(fileobj).__name__} is loaded into memory instead",
            CacheWarning,
            stacklevel=4,
        )
        return None
    position = fileobj.tell()
    try:
        mapping: np.memmap = np.memmap(fileobj, dtype=np.uint8, mode=cast(Any, mmap_mode))
    finally:
        fileobj.seek(position)  # mapping a file object moves its position
    if mmap_mode == "r+":
        _mark_arrays_edited(mapping, position)
    return mapping


def _mark_arrays_edited(mapping: np.memmap, start: int) -> None:
    """Flag, in the header, that arrays may now change in place (their checksums lapse)."""
    flags = mapping[start + FLAGS_OFFSET : start + FLAGS_OFFSET + 2].view("<u2")
    if mapping[start : start + len(MAGIC)].tobytes() == MAGIC and not flags[0] & FLAG_ARRAYS_EDITED:
        flags[0] |= FLAG_ARRAYS_EDITED
        mapping.flush()


def sniff(fileobj: Any) -> tuple[Any, Compressor | None]:
    """Return a stream still at the file's start, and its codec (None for a raw file)."""
    prefix, stream = _peek_magic(fileobj)
    if not prefix:
        raise CorruptFileError("the file is empty")
    if prefix.startswith(MAGIC[: len(prefix)]):
        return stream, None
    compressor = detect_compressor(prefix)
    if compressor is None:
        raise CorruptFileError(
            "not a cachelib file: its first bytes match neither the cachelib magic nor a "
            "registered compressor's"
        )
    return stream, compressor


def read_value(fileobj: Any, mmap_mode: str | None = None, whole: bool = False) -> Any:
    """Read one value from an open binary file object, detecting its codec.

    ``whole`` means the value is all the file holds: bytes after it are damage.
    """
    stream, compressor = sniff(fileobj)
    mapping = None
    size, position = _stream_size(stream) if stream is fileobj else (None, 0)
    if mmap_mode is not None and compressor is not None:
        warnings.warn(
            f"mmap_mode={mmap_mode!r} is not compatible with a {compressor.name}-compressed "
            "file; it is loaded into memory instead",
            CacheWarning,
            stacklevel=3,
        )
    elif mmap_mode is not None and size is not None:
        mapped = _mapping_for(fileobj, mmap_mode)
        mapping = Mapping(mapped, position) if mapped is not None else None
    elif mmap_mode is not None:
        warnings.warn(
            f"mmap_mode={mmap_mode!r} needs a seekable file; loading into memory instead",
            CacheWarning,
            stacklevel=3,
        )
    return stream_value(stream, compressor, ReadPlan(mapping=mapping, size=size, whole=whole))


@contextlib.contextmanager
def _records(stream: Any, compressor: Compressor | None, plan: ReadPlan) -> Iterator[RecordReader]:
    """The record reader of a raw or compressed stream; on leaving, check what follows the stream."""
    if compressor is None:
        yield RecordReader(stream, plan)
        if plan.whole and stream.read(1):
            raise CorruptFileError("the file has bytes after the end of its cachelib stream")
        return
    decompressed = compressor.open_reader(stream)
    try:
        # Nothing is mapped from a codec's output, and its size is unknown; the codec's reader
        # may say what it reads best at once (frames already in memory).
        read_size = getattr(decompressed, "preferred_read_size", DECOMPRESSED_CHUNK)
        yield RecordReader(decompressed, dataclasses.replace(plan, mapping=None, size=None), read_size)
        _check_frame_end(decompressed, compressor, whole_file=plan.whole)
    finally:
        decompressed.close()


def stream_value(stream: Any, compressor: Compressor | None, plan: ReadPlan = PLAIN) -> Any:
    """Unpickle the value of ``stream`` (raw, or compressed with ``compressor``) as its bytes arrive."""
    with _records(stream, compressor, plan) as reader:
        return read_stream(reader)


def parse_stream(stream: Any, compressor: Compressor | None, plan: ReadPlan = PLAIN) -> Parsed:
    """Read and check every record of ``stream`` before anything is unpickled; return them."""
    with _records(stream, compressor, plan) as reader:
        return reader.parse_all()


def check_stream(stream: Any, compressor: Compressor | None, plan: ReadPlan = PLAIN) -> None:
    """Check every record of ``stream`` (raw or compressed), unpickling and keeping nothing."""
    with _records(stream, compressor, plan) as reader:
        reader.skim()


def verify_stream_of(fileobj: Any, plan: ReadPlan = PLAIN) -> None:
    """Check the (raw or compressed) stream at ``fileobj``'s position, keeping nothing."""
    check_stream(*sniff(fileobj), plan)


def _check_frame_end(decompressed: Any, compressor: Compressor, whole_file: bool) -> None:
    """Read the codec's frame to its end, so that its own checks (CRC, sizes) run.

    A stream that goes on after the cachelib end record is damaged; for a whole
    file, so are bytes after the codec's frame, where the codec's reader can tell
    (gzip, zstd and lz4 read on and fail; zlib's reader reports them; bz2 and xz
    ignore trailing garbage by design, as their command-line tools do).
    """
    try:
        probe = bytearray(1)
        extra = bytes(probe[: decompressed.readinto(probe) or 0])
        if not extra and whole_file and hasattr(decompressed, "trailing_bytes"):
            extra = decompressed.trailing_bytes()
    except CorruptFileError:
        raise
    except Exception as exc:
        raise CorruptFileError(f"the {compressor.name} frame is damaged at its end: {exc}") from exc
    if extra:
        raise CorruptFileError(f"the {compressor.name} stream holds data after the cachelib end record")


def load_value(filename: Any, mmap_mode: str | None = None) -> Any:
    """Read the value stored in a cachelib file (a path or a binary file object)."""
    if mmap_mode not in MMAP_MODES:
        raise InvalidOptionError(f"mmap_mode must be one of {MMAP_MODES}, got {mmap_mode!r}")
    if _is_path(filename):
        path = os.fspath(filename)
        _check_not_directory(path)
        with open(path, "r+b" if mmap_mode == "r+" else "rb") as fileobj:
            return read_value(fileobj, mmap_mode, whole=True)
    if hasattr(filename, "read"):
        return read_value(filename, mmap_mode)
    raise InvalidOptionError(
        f"filename must be a path or a binary file object, got {type(filename).__name__}"
    )
