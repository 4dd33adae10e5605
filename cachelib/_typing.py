"""The type variables of cachelib's typed decorators.

Rule: nothing here costs a dependency at run time. Type checkers read
``ParamSpec`` from ``typing_extensions`` (which every checker ships); Python 3.10
and later have it in ``typing``; on Python 3.9 a plain ``TypeVar`` stands in, since
there the parameters matter only to type checkers.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any, Literal, Optional, Protocol, TypeVar, Union

if TYPE_CHECKING:
    from typing_extensions import ParamSpec
elif sys.version_info >= (3, 10):
    from typing import ParamSpec
else:  # pragma: no cover - Python 3.9

    def ParamSpec(name: str) -> TypeVar:
        return TypeVar(name)


__all__ = ["Loadable", "MmapMode", "P", "R", "ReadableFile", "Sink", "Source", "T"]

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")
MmapMode = Optional[Literal["r", "r+", "c"]]


class ReadableFile(Protocol):
    """A binary file object ``load`` reads: an open file, ``io.BytesIO``, a pipe, a socket's file."""

    def read(self, size: int = ..., /) -> bytes: ...


Loadable = Union[str, "os.PathLike[str]", ReadableFile]


class Sink(Protocol):
    """Where a stream is written: a binary file, a codec's writer, an upload, a tap in front of one."""

    def write(self, data: Any, /) -> Any: ...


class Source(Protocol):
    """What a stream is read from: a binary file, a codec's reader, a region of a file."""

    def readinto(self, buffer: Any, /) -> Any: ...
