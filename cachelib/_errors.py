"""Every exception and warning cachelib raises.

Rule: each leaf derives from ``CacheError`` and from the builtin it refines, so that
``except CacheError`` catches everything cachelib raises on purpose while code
written for joblib (``except ValueError``) keeps working. Messages name the object
and, where there is one, the fix; what a program may need beyond the message (where
in a value, which file) is a keyword argument of the constructor and an attribute,
and survives pickling, so that an error raised in a worker reaches its parent whole.
"""

from __future__ import annotations

import os
import pickle
import sys
import warnings


class CacheError(Exception):
    """Base class of every error cachelib raises on purpose."""


class InvalidOptionError(CacheError, ValueError):
    """An argument has a value cachelib cannot use (a level, a mode, a size ...)."""


class UnknownCompressorError(InvalidOptionError):
    """No compressor is registered under the requested name (``name``)."""

    def __init__(self, message: str, *, name: object = None) -> None:
        super().__init__(message)
        self.name = name


class MissingDependencyError(CacheError, ImportError):
    """An optional package is needed; the message names the ``pip install``, ``package`` the package."""

    def __init__(self, message: str, *, package: str | None = None) -> None:
        super().__init__(message)
        self.package = package


class CorruptFileError(CacheError, ValueError):
    """A file is not a complete, intact cachelib file (truncated, damaged, foreign).

    ``path`` is the file (or the cache entry's location) when the reader knew it.
    """

    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


class UnsupportedFormatError(CacheError, ValueError):
    """An intact file that this version of cachelib cannot read (a newer format)."""


class SerializationError(CacheError, pickle.PicklingError):
    """A value cannot be pickled, so it cannot be stored."""


class DeserializationError(CacheError, pickle.UnpicklingError):
    """An intact file whose pickle cannot be rebuilt here (a missing module or class)."""


class UnhashableError(CacheError, TypeError):
    """An object cannot be turned into a stable cache key.

    ``path`` says where the value sits in what was hashed: ``"[2].attr"``, ``""`` for
    the value itself.
    """

    def __init__(self, message: str, *, path: str = "") -> None:
        super().__init__(message)
        self.path = path

    def inside(self, where: str) -> UnhashableError:
        """This error, as found in a value enclosing the one it was raised for, at ``where``."""
        return type(self)(str(self), path=where + self.path)


class FileAccessError(CacheError, OSError):
    """A path cannot be used: it is a directory, or it is not readable or writable.

    ``path`` is the file or directory that cannot be used, when one is known.
    """

    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


class UnsafeLocationError(FileAccessError, PermissionError):
    """A cache directory or file may have been written by someone else (its owner or mode)."""


class NotACacheError(FileAccessError):
    """A directory that is not a cachelib location (it has no marker): nothing in it is touched."""


class LockTimeout(CacheError, TimeoutError):
    """Waiting for another process to finish computing the same call ran out of time.

    ``timeout`` is how long the caller waited, in seconds.
    """

    def __init__(self, message: str, *, timeout: float | None = None) -> None:
        super().__init__(message)
        self.timeout = timeout


class CacheWarning(UserWarning):
    """Something went wrong in the cache, but the call still returns a correct result."""


_PACKAGE = os.path.dirname(os.path.abspath(__file__))


def warn(message: str, category: type[Warning] = CacheWarning) -> None:
    """Warn, attributing the warning to the first frame outside cachelib: the user's own call."""
    frame = sys._getframe(1)
    level = 2  # warnings.warn's own level 1 is this function
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE):
        frame = frame.f_back  # type: ignore[assignment]
        level += 1
    warnings.warn(message, category, stacklevel=level)
