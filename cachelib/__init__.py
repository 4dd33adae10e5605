"""cachelib: memoize expensive numpy functions on disk.

``dump``/``load`` write one value, arrays inline, to one file; ``Cache.memoize``
computes each distinct call once across processes and restarts.
"""

from ._cache import Cache, CacheInfo, FunctionInfo
from ._compressors import Compressor, compressors, register_compressor
from ._errors import (
    CacheError,
    CacheWarning,
    CorruptFileError,
    DeserializationError,
    FileAccessError,
    InvalidOptionError,
    LockTimeout,
    MissingDependencyError,
    SerializationError,
    UnhashableError,
    UnknownCompressorError,
    UnsupportedFormatError,
)
from ._hashing import hash
from ._memoize import MemoizedFunction
from ._persistence import dump, load, verify
from ._version import __version__

__all__ = [
    "Cache",
    "CacheError",
    "CacheInfo",
    "CacheWarning",
    "Compressor",
    "CorruptFileError",
    "DeserializationError",
    "FileAccessError",
    "FunctionInfo",
    "InvalidOptionError",
    "LockTimeout",
    "MemoizedFunction",
    "MissingDependencyError",
    "SerializationError",
    "UnhashableError",
    "UnknownCompressorError",
    "UnsupportedFormatError",
    "__version__",
    "compressors",
    "dump",
    "hash",
    "load",
    "register_compressor",
    "verify",
]
