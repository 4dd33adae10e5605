"""The public readers, ``load`` and ``verify``: a cachelib file or a cache entry.

Rule: a path or file object holding a cache entry (``_entries.envelope``) is read as that
entry's result, anything else as a plain cachelib file (``_format.persistence``), so that
an entry copied out of a cache loads like a file dumped with ``dump``.
"""

from __future__ import annotations

import os
from typing import Any

from .._errors import InvalidOptionError
from .._format.persistence import MMAP_MODES, load_value, verify_stream_of
from .._typing import Loadable, MmapMode
from .envelope import ENTRY_MAGIC, read_entry, read_head, verify_entry
from .signing import Signer

__all__ = ["load", "verify"]


def _entry_size(fileobj: Any) -> int | None:
    """Return the size of ``fileobj`` if it is a seekable file positioned at a cache entry."""
    try:
        if not fileobj.seekable():
            return None
        position = fileobj.tell()
        is_entry = fileobj.read(len(ENTRY_MAGIC)) == ENTRY_MAGIC
        end = fileobj.seek(0, os.SEEK_END)
        fileobj.seek(position)
    except (AttributeError, OSError, ValueError):
        return None
    return end - position if is_entry and position == 0 else None


def load(filename: Loadable, mmap_mode: MmapMode = None) -> Any:
    """Read the value stored in ``filename`` (a path or a binary file object).

    The codec is found from the file's magic number, whatever its name. With
    ``mmap_mode`` ("r", "r+" or "c") the arrays of an uncompressed file are
    returned as ``np.memmap`` views mapped in place; a compressed file is loaded
    into memory with a warning. A cache entry loads as the result it holds.
    Loading is unpickling: only load trusted files.
    """
    if mmap_mode not in MMAP_MODES:
        raise InvalidOptionError(f"mmap_mode must be one of {MMAP_MODES}, got {mmap_mode!r}")
    if isinstance(filename, (str, os.PathLike)) and os.path.isfile(filename):
        with open(filename, "rb") as fileobj:
            size = _entry_size(fileobj)
            if size is not None:
                head = read_head(fileobj, size)
                return read_entry(fileobj, size, head, mmap_mode=mmap_mode if mmap_mode != "r+" else "c")
    elif hasattr(filename, "read"):
        size = _entry_size(filename)
        if size is not None:
            return read_entry(filename, size, read_head(filename, size), mmap_mode=None)
    return load_value(filename, mmap_mode)


def verify(filename: str | os.PathLike[str], secret: bytes | None = None) -> None:
    """Check the integrity of a cachelib file or cache entry without unpickling it.

    Raises ``CorruptFileError`` (or another ``CacheError``) describing the first
    problem; returns None for an intact file. A signed entry is checked against
    ``secret`` when one is given; without it, only its structure is checked (its
    signature needs the secret, and the entry's name: verify entries in place with
    ``python -m cachelib verify``). Safe on untrusted files.
    """
    path = os.fspath(filename)
    if os.path.isdir(path):
        raise InvalidOptionError(f"{path!r} is a directory; give a file name inside it")
    with open(path, "rb") as fileobj:
        size = _entry_size(fileobj)
        if size is not None:
            signer = Signer(secret) if secret is not None else None
            verify_entry(fileobj, size, signer=signer, context=_context_of(path))
            return
        verify_stream_of(fileobj)


def _context_of(path: str) -> str:
    """The name a signed entry at ``path`` was signed under: function dir, shard, file."""
    parts = os.path.abspath(path).split(os.sep)
    return "/".join(parts[-3:])
