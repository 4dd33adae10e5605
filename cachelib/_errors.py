"""Every exception and warning cachelib raises.

Rule: each leaf derives from ``CacheError`` and from the builtin it refines, so that
``except CacheError`` catches everything cachelib raises on purpose while code
written for joblib (``except ValueError``) keeps working. Messages name the object
and, where there is one, the fix.
"""

from __future__ import annotations

import pickle


class CacheError(Exception):
    """Base class of every error cachelib raises on purpose."""


class InvalidOptionError(CacheError, ValueError):
    """An argument has a value cachelib cannot use (a level, a mode, a size ...)."""


class UnknownCompressorError(InvalidOptionError):
    """No compressor is registered under the requested name."""


class MissingDependencyError(CacheError, ImportError):
    """An optional package is needed; the message names the ``pip install``."""


class CorruptFileError(CacheError, ValueError):
    """A file is not a complete, intact cachelib file (truncated, damaged, foreign)."""


class UnsupportedFormatError(CacheError, ValueError):
    """An intact file that this version of cachelib cannot read (a newer format)."""


class SerializationError(CacheError, pickle.PicklingError):
    """A value cannot be pickled, so it cannot be stored."""


class DeserializationError(CacheError, pickle.UnpicklingError):
    """An intact file whose pickle cannot be rebuilt here (a missing module or class)."""


class UnhashableError(CacheError, TypeError):
    """An object cannot be turned into a stable cache key."""


class FileAccessError(CacheError, OSError):
    """A path cannot be used: it is a directory, or it is not readable or writable."""


class UnsafeLocationError(FileAccessError, PermissionError):
    """A cache directory or file may have been written by someone else (its owner or mode)."""


class NotACacheError(FileAccessError):
    """A directory that is not a cachelib location (it has no marker): nothing in it is touched."""


class LockTimeout(CacheError, TimeoutError):
    """Waiting for another process to finish computing the same call ran out of time."""


class CacheWarning(UserWarning):
    """Something went wrong in the cache, but the call still returns a correct result."""
