"""Facts about numpy dtypes that both the file format and the hash need.

Rule: pure functions of a dtype, no I/O; one place for questions like "does this
dtype have bytes that hold no value?" or "what exactly is this dtype?". Nothing here
goes through a dtype's ``.npy`` description, which collapses distinct dtypes.
"""

from __future__ import annotations

from typing import Any, cast

import numpy as np

__all__ = ["dtype_identity", "dtype_params", "has_padding", "stores_values_inline", "value_bytes"]

# Long doubles stored as 80-bit x87 values in wider slots: the slack bytes hold garbage.
_X87_PADDED = np.finfo(np.longdouble).nmant == 63 and np.dtype(np.longdouble).itemsize > 10
_LONG_DOUBLES = (np.dtype(np.longdouble), np.dtype(np.clongdouble))


def _fields(dtype: np.dtype) -> dict[str, tuple[Any, ...]]:
    """A structured dtype's fields: name -> (dtype, offset[, title])."""
    return cast("dict[str, tuple[Any, ...]]", dtype.fields or {})


def has_padding(dtype: np.dtype) -> bool:
    """True if some bytes of ``dtype`` belong to no field (at any depth of nesting).

    Such bytes (``align=True`` structs, offsets that leave gaps, the view that
    ``rec[["c", "a"]]`` gives) hold whatever memory held: they must neither reach a
    file nor a hash. Overlapping fields are counted once.
    """
    if dtype.subdtype is not None:
        return has_padding(dtype.subdtype[0])
    if dtype.names is None:
        return False
    covered = bytearray(dtype.itemsize)
    for name in dtype.names:
        field, offset = _fields(dtype)[name][:2]
        if has_padding(field):
            return True
        covered[offset : offset + field.itemsize] = b"\1" * field.itemsize
    return covered.count(0) > 0


def value_bytes(dtype: np.dtype) -> list[int] | None:
    """Return the byte offsets that hold the value of a padded long double, else None.

    An x87 long double keeps 10 significant bytes in a 12- or 16-byte slot: the first
    ten in native order, the last ten once byte-swapped (each part of a complex alone).
    """
    if not (_X87_PADDED and dtype.kind in "fc" and dtype.newbyteorder("=") in _LONG_DOUBLES):
        return None
    step = _LONG_DOUBLES[0].itemsize
    skip = 0 if dtype.isnative else step - 10
    starts = [part * step + skip for part in range(dtype.itemsize // step)]
    return [start + i for start in starts for i in range(10)]


def stores_values_inline(dtype: np.dtype) -> bool:
    """True if an array's bytes are its values: no references, no padding, no slack.

    False for object and ``StringDType`` arrays (their bytes are pointers), for
    structured dtypes with gaps or such fields, for padded long doubles, and for any
    dtype numpy does not know to be plain (third-party dtypes of numpy's new API).
    ``ml_dtypes``-style dtypes registered through numpy's legacy API are plain.
    """
    if dtype.subdtype is not None:
        return stores_values_inline(dtype.subdtype[0])
    if dtype.names is not None:
        return not has_padding(dtype) and all(
            stores_values_inline(_fields(dtype)[name][0]) for name in dtype.names
        )
    if dtype.hasobject or value_bytes(dtype) is not None:
        return False
    if _is_numpy_own(dtype):
        return dtype.kind in "biufcmMSUV"
    return dtype.isbuiltin == 2  # a user dtype of the legacy API: fixed-size plain bytes


def dtype_identity(dtype: np.dtype) -> tuple[Any, ...]:
    """Return plain data (str, int, tuples) that tells ``dtype`` from every other dtype.

    Two dtypes get equal identities only if they are interchangeable: the same class,
    scalar type, character code, byte order, size and alignment; for structured
    dtypes the same fields (names, titles, offsets, field dtypes) and alignment flag;
    for subarrays the same base and shape; parameters of parametric dtypes
    (``StringDType``'s ``na_object`` and ``coerce``) and ``metadata`` are returned
    for the caller to hash as values (``_params`` entries).
    """
    scalar = dtype.type
    own = _is_numpy_own(dtype)
    identity: list[Any] = [
        "numpy" if own else f"{type(dtype).__module__}.{type(dtype).__qualname__}",
        f"{scalar.__module__}.{scalar.__qualname__}",
        dtype.str,
        dtype.char,
        dtype.byteorder,
        dtype.itemsize,
        dtype.alignment,
    ]
    if dtype.subdtype is not None:
        base, shape = dtype.subdtype
        identity.append(("subarray", dtype_identity(base), tuple(shape)))
    if dtype.names is not None:
        fields = []
        for name in dtype.names:
            field = _fields(dtype)[name]
            title = field[2] if len(field) > 2 else None
            fields.append((name, title, field[1], dtype_identity(field[0])))
        identity.append(("fields", tuple(fields), dtype.isalignedstruct))
    if not own and dtype.isbuiltin != 2:
        # A third-party dtype of numpy's new API: its parameters show in its repr.
        identity.append(("repr", repr(dtype)))
    return tuple(identity)


def _is_numpy_own(dtype: np.dtype) -> bool:
    """True for numpy's own dtype classes (``numpy.dtypes`` since numpy 1.25)."""
    return type(dtype).__module__ in ("numpy", "numpy.dtypes")


def dtype_params(dtype: np.dtype) -> dict[str, Any]:
    """Return the values that parametrise ``dtype`` beyond ``dtype_identity``: hash them as values."""
    params: dict[str, Any] = {}
    if dtype.metadata:
        params["metadata"] = dict(dtype.metadata)
    for name in ("na_object", "coerce"):  # StringDType
        if hasattr(dtype, name):
            params[name] = getattr(dtype, name)
    return params


def byte_view(array: np.ndarray) -> memoryview:
    """A memoryview of a contiguous array's memory (typed: numpy's stubs export buffers on 3.12+ only)."""
    return memoryview(cast(Any, array))
