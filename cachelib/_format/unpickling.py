"""A restricted unpickler: plain data and numpy arrays, and nothing that runs code.

Rule: an entry written by *another* user (a member of a shared cache) is rebuilt
only from the classes below. They construct values and run no code of the file's
choosing; any other global the pickle names is refused before it is imported.
This is what lets members of a group share results without being able to make
each other run code (``weights_only`` in torch and ``allow_pickle=False`` in
numpy keep the same line).
"""

from __future__ import annotations

import pickle
from typing import Any

from .._errors import DeserializationError
from .._text import printable

__all__ = ["PLAIN_DATA", "RestrictedUnpickler"]

_NUMPY_CORE = ("numpy._core.multiarray", "numpy.core.multiarray")

PLAIN_DATA: frozenset[tuple[str, str]] = frozenset(
    [
        ("builtins", name)
        for name in ("bool", "bytearray", "bytes", "complex", "dict", "float", "frozenset",
                     "int", "list", "range", "set", "slice", "str", "tuple")
    ]
    + [("collections", name) for name in ("OrderedDict", "defaultdict", "deque", "Counter")]
    + [("datetime", name) for name in ("date", "datetime", "time", "timedelta", "timezone")]
    + [("decimal", "Decimal"), ("fractions", "Fraction"), ("uuid", "UUID"), ("_codecs", "encode")]
    + [(module, name) for module in _NUMPY_CORE for name in ("_reconstruct", "scalar")]
    + [
        ("numpy", "dtype"),
        ("numpy", "ndarray"),
        ("numpy", "matrix"),
        ("numpy.matrixlib.defmatrix", "matrix"),
        ("numpy.ma.core", "MaskedArray"),
        ("numpy.ma", "MaskedArray"),
        ("numpy.ma.core", "_mareconstruct"),
        ("cachelib._format", "rebuild_array"),
    ]
)
"""(module, name) of every global an entry written by someone else may use."""


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that imports only the globals in ``PLAIN_DATA`` (and numpy's dtype classes)."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in PLAIN_DATA or (module == "numpy.dtypes" and name.endswith("DType")):
            return super().find_class(module, name)
        raise DeserializationError(
            f"the entry was written by another user and names {printable(module)}.{printable(name)}; "
            "cachelib rebuilds "
            "only plain data and numpy arrays from other users' entries, so it recomputes this one"
        )
