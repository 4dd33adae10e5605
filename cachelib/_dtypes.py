"""Facts about numpy dtypes that both the file format and the hash need.

Rule: pure functions of a dtype, no I/O; one place for questions like "does this
dtype have bytes that hold no value?".
"""

from __future__ import annotations

import numpy as np

__all__ = ["has_padding"]


def has_padding(dtype: np.dtype) -> bool:
    """True if some bytes of ``dtype`` belong to no field (at any depth of nesting).

    Such bytes (``align=True`` structs, or offsets that leave gaps) hold whatever
    memory held: they must neither reach a file nor a hash.
    """
    if dtype.subdtype is not None:
        return has_padding(dtype.subdtype[0])
    if dtype.names is None:
        return False
    fields = [dtype.fields[name][0] for name in dtype.names]  # type: ignore[index]
    return sum(f.itemsize for f in fields) != dtype.itemsize or any(has_padding(f) for f in fields)
