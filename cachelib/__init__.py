"""cachelib: memoize expensive numpy functions on disk.

``dump``/``load`` write one value, arrays inline, to one file; ``Cache.memoize``
computes each distinct call once across processes and restarts; ``Memory`` is
joblib.Memory's interface on a ``Cache``.
"""

import logging as _logging

from ._codecs.registry import Compressor, compressors, register_compressor
from ._entries.loading import load, verify
from ._errors import (
    CacheError,
    CacheWarning,
    CorruptFileError,
    DeserializationError,
    FileAccessError,
    InvalidOptionError,
    LockTimeout,
    MissingDependencyError,
    NotACacheError,
    SerializationError,
    StoreTimeout,
    StoreUnavailable,
    UnhashableError,
    UnknownCompressorError,
    UnsafeLocationError,
    UnsupportedFormatError,
)
from ._format.persistence import dump
from ._joblib.memory import MemorizedFunc, Memory, NotMemorizedFunc, expires_after
from ._joblib.shelve import MemorizedResult, NotMemorizedResult
from ._keys.hashing import hash
from ._memo.cache import Cache, CacheInfo, FunctionInfo
from ._memo.memoized import MemoizedFunction
from ._stores.base import Store
from ._stores.fsspec_store import FsspecStore
from ._stores.group import GroupStore
from ._stores.local import LocalStore
from ._version import __version__

# A library adds no handler of its own: records reach the application's, or nowhere.
_logging.getLogger("cachelib").addHandler(_logging.NullHandler())

__all__ = [
    "Cache",
    "CacheError",
    "CacheInfo",
    "CacheWarning",
    "Compressor",
    "CorruptFileError",
    "DeserializationError",
    "FileAccessError",
    "FsspecStore",
    "FunctionInfo",
    "GroupStore",
    "InvalidOptionError",
    "LocalStore",
    "LockTimeout",
    "MemoizedFunction",
    "MemorizedFunc",
    "MemorizedResult",
    "Memory",
    "MissingDependencyError",
    "NotACacheError",
    "NotMemorizedFunc",
    "NotMemorizedResult",
    "SerializationError",
    "Store",
    "StoreTimeout",
    "StoreUnavailable",
    "UnhashableError",
    "UnknownCompressorError",
    "UnsafeLocationError",
    "UnsupportedFormatError",
    "__version__",
    "compressors",
    "dump",
    "expires_after",
    "hash",
    "load",
    "register_compressor",
    "verify",
]
