"""Read the buffers of Arrow data (polars, pyarrow) in place, through the Arrow C stream interface.

Rule: no copy and no import of the producing library. An object's
``__arrow_c_stream__()`` capsule is walked with ``ctypes``: every array's schema
(format, name, flags, metadata), length, offset and buffers (as memoryviews of the
producer's memory, valid until the stream is released) are handed to a callback.
A format this module cannot size raises ``ArrowUnsupported``; callers fall back.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable, Iterator
from typing import Any, cast

__all__ = ["ArrowUnsupported", "walk_stream"]


class ArrowUnsupported(Exception):
    """An Arrow format whose buffer sizes this module does not know."""


class _Schema(ctypes.Structure):
    pass


class _Array(ctypes.Structure):
    pass


_Schema._fields_ = [
    ("format", ctypes.c_char_p),
    ("name", ctypes.c_char_p),
    ("metadata", ctypes.c_void_p),
    ("flags", ctypes.c_int64),
    ("n_children", ctypes.c_int64),
    ("children", ctypes.POINTER(ctypes.POINTER(_Schema))),
    ("dictionary", ctypes.POINTER(_Schema)),
    ("release", ctypes.CFUNCTYPE(None, ctypes.POINTER(_Schema))),
    ("private_data", ctypes.c_void_p),
]
_Array._fields_ = [
    ("length", ctypes.c_int64),
    ("null_count", ctypes.c_int64),
    ("offset", ctypes.c_int64),
    ("n_buffers", ctypes.c_int64),
    ("n_children", ctypes.c_int64),
    ("buffers", ctypes.POINTER(ctypes.c_void_p)),
    ("children", ctypes.POINTER(ctypes.POINTER(_Array))),
    ("dictionary", ctypes.POINTER(_Array)),
    ("release", ctypes.CFUNCTYPE(None, ctypes.POINTER(_Array))),
    ("private_data", ctypes.c_void_p),
]


class _Stream(ctypes.Structure):
    _fields_ = [
        ("get_schema", ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.POINTER(_Schema))),
        ("get_next", ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.POINTER(_Array))),
        ("get_last_error", ctypes.CFUNCTYPE(ctypes.c_char_p, ctypes.c_void_p)),
        ("release", ctypes.CFUNCTYPE(None, ctypes.c_void_p)),
        ("private_data", ctypes.c_void_p),
    ]


_capsule_pointer = ctypes.pythonapi.PyCapsule_GetPointer
_capsule_pointer.restype = ctypes.c_void_p
_capsule_pointer.argtypes = [ctypes.py_object, ctypes.c_char_p]

# Bytes per value of the fixed-width formats.
_WIDTHS = {"c": 1, "C": 1, "s": 2, "S": 2, "e": 2, "i": 4, "I": 4, "f": 4, "l": 8, "L": 8, "g": 8,
           "tdD": 4, "tdm": 8, "tts": 4, "ttm": 4, "ttu": 8, "ttn": 8, "tiM": 4, "tiD": 8, "tin": 16}

# (schema description, length, offset, buffers)
Visit = Callable[[bytes, int, int, "list[memoryview | None]"], None]


def walk_stream(obj: Any, visit: Visit) -> None:
    """Call ``visit`` for every array (children and dictionaries first-to-last) of ``obj``'s stream."""
    capsule = obj.__arrow_c_stream__()
    stream = _Stream.from_address(_capsule_pointer(capsule, b"arrow_array_stream"))
    address = ctypes.addressof(stream)
    schema = _Schema()
    try:
        if stream.get_schema(address, ctypes.byref(schema)) != 0:
            raise ArrowUnsupported(f"the Arrow stream has no schema ({stream.get_last_error(address)!r})")
        try:
            visit(_describe_tree(schema), 0, 0, [])
            while True:
                array = _Array()
                if stream.get_next(address, ctypes.byref(array)) != 0:
                    raise ArrowUnsupported(f"the Arrow stream failed ({stream.get_last_error(address)!r})")
                if not array.release:
                    break  # the end of the stream
                try:
                    _walk_array(schema, array, visit)
                finally:
                    array.release(ctypes.byref(array))
        finally:
            if schema.release:
                schema.release(ctypes.byref(schema))
    finally:
        if stream.release:
            stream.release(address)


def _describe(schema: _Schema) -> bytes:
    """The schema's own identity: format, name, flags and metadata (children walk separately)."""
    metadata = b""
    if schema.metadata:
        count = ctypes.c_int32.from_address(schema.metadata).value
        position = schema.metadata + 4
        parts = []
        for _ in range(2 * max(count, 0)):
            size = ctypes.c_int32.from_address(position).value
            parts.append(ctypes.string_at(position + 4, size))
            position += 4 + size
        metadata = b"\0".join(parts)
    fields = [schema.format or b"", schema.name or b"", str(schema.flags).encode(), metadata]
    return b"\0".join(len(part).to_bytes(8, "little") + part for part in fields)


def _describe_tree(schema: _Schema) -> bytes:
    """The whole schema: every field's description, children and dictionaries included."""
    parts = [_describe(schema), str(schema.n_children).encode()]
    parts += [_describe_tree(schema.children[i].contents) for i in range(schema.n_children)]
    if schema.dictionary:
        parts.append(b"dictionary" + _describe_tree(schema.dictionary.contents))
    return b"\0".join(len(part).to_bytes(8, "little") + part for part in parts)


def _view(address: int | None, size: int) -> memoryview | None:
    if not address:
        return None
    return memoryview((ctypes.c_char * size).from_address(address)).cast("B")


def _int_at(address: int, index: int, width: int) -> int:
    kind = ctypes.c_int32 if width == 4 else ctypes.c_int64
    return int(kind.from_address(address + index * width).value)


def _walk_array(schema: _Schema, array: _Array, visit: Visit) -> None:
    fmt = (schema.format or b"").decode()
    end = array.offset + array.length
    buffers = [array.buffers[i] for i in range(array.n_buffers)]
    views = list(_sized_buffers(fmt, schema, array, end, buffers))
    visit(_describe(schema), array.length, array.offset, views)
    for index in range(array.n_children):
        _walk_array(schema.children[index].contents, array.children[index].contents, visit)
    if array.dictionary:
        if not schema.dictionary:
            raise ArrowUnsupported("a dictionary array without a dictionary schema")
        _walk_array(schema.dictionary.contents, array.dictionary.contents, visit)


def _sized_buffers(
    fmt: str, schema: _Schema, array: _Array, end: int, buffers: list[int | None]
) -> Iterator[memoryview | None]:
    """Yield each buffer as a view of exactly the bytes it holds for ``end`` values."""
    bits = (end + 7) // 8
    if fmt in ("n", "+r"):
        return
    if fmt.startswith("+u"):  # unions: type ids, and offsets when dense; no validity
        yield _view(buffers[0], end)
        if fmt.startswith("+ud"):
            yield _view(buffers[1], 4 * end)
        return
    yield _view(buffers[0], bits)  # validity
    if fmt in ("+s", "+l", "+L", "+m", "+vl", "+vL") or fmt.startswith("+w:"):
        if fmt in ("+l", "+m"):
            yield _view(buffers[1], 4 * (end + 1))
        elif fmt == "+L":
            yield _view(buffers[1], 8 * (end + 1))
        elif fmt in ("+vl", "+vL"):
            width = 4 if fmt == "+vl" else 8
            yield _view(buffers[1], width * end)
            yield _view(buffers[2], width * end)
        return
    if fmt == "b":
        yield _view(buffers[1], bits)
    elif fmt in _WIDTHS or fmt[:3] in ("tsn", "tsu", "tsm", "tss") or fmt[:2] == "tD":
        yield _view(buffers[1], _WIDTHS.get(fmt, 8) * end)
    elif fmt.startswith("w:"):
        yield _view(buffers[1], int(fmt[2:]) * end)
    elif fmt.startswith("d:"):
        parts = fmt[2:].split(",")
        yield _view(buffers[1], (int(parts[2]) if len(parts) > 2 else 128) // 8 * end)
    elif fmt in ("z", "u", "Z", "U"):
        width = 4 if fmt in ("z", "u") else 8
        yield _view(buffers[1], width * (end + 1))
        size = _int_at(buffers[1], end, width) if buffers[1] and end else 0
        yield _view(buffers[2], size)
    elif fmt in ("vz", "vu"):
        yield _view(buffers[1], 16 * end)
        variadic = len(buffers) - 3
        sizes = buffers[-1]
        if variadic and not sizes:
            raise ArrowUnsupported("a view array without the sizes of its data buffers")
        for index in range(variadic):
            yield _view(buffers[2 + index], _int_at(cast(int, sizes), index, 8))
        yield _view(sizes, 8 * variadic)
    else:
        raise ArrowUnsupported(f"the Arrow format {fmt!r}")
