"""cachelib: memoize expensive numpy functions on disk.

``dump``/``load`` write one value, arrays inline, to one file; ``Cache.memoize``
computes each distinct call once across processes and restarts.
"""

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
from ._persistence import dump, load
from ._version import __version__

__all__ = [
    "CacheError",
    "CacheWarning",
    "Compressor",
    "CorruptFileError",
    "DeserializationError",
    "FileAccessError",
    "InvalidOptionError",
    "LockTimeout",
    "MissingDependencyError",
    "SerializationError",
    "UnhashableError",
    "UnknownCompressorError",
    "UnsupportedFormatError",
    "__version__",
    "compressors",
    "dump",
    "load",
    "register_compressor",
]
