"""The type variables of cachelib's typed decorators.

Rule: nothing here costs a dependency at run time: everything comes from ``typing``
(Python 3.10 and later, the versions cachelib supports).
"""

from __future__ import annotations

import os
from typing import Any, Literal, ParamSpec, Protocol, TypeVar, Union

__all__ = ["Loadable", "MmapMode", "P", "Q", "R", "ReadableFile", "S", "Sink", "Source", "T"]

P = ParamSpec("P")
Q = ParamSpec("Q")  # the parameters of a memoized method once bound (P without self)
R = TypeVar("R")
S = TypeVar("S")  # the instance a memoized method is bound to
T = TypeVar("T")
MmapMode = Literal["r", "r+", "c"] | None


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
