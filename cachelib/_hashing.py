"""``hash``: a stable content hash of arguments, xxh3-128 over a canonical encoding.

Rule: equal values give equal hashes in every process, run and ``PYTHONHASHSEED``;
values that may behave differently give different hashes. Every value is fed as a
one-byte type tag followed by length-framed content, so ``("ab", "c")`` and
``("a", "bc")`` differ, and ``1``, ``1.0``, ``True``, ``np.int64(1)`` and ``"1"`` differ.

Deliberate choices (documented in the README):

* arrays hash their dtype (with byte order), shape and content in logical C order:
  a view and its copy, a C and a Fortran array of equal values hash the same;
  large strided arrays are fed in bounded chunks, never copied whole; arrays of
  ``TREE_MIN`` bytes or more are fed as a tree of digests (``_chunked``), on every core;
* dict and set order never matters; shared and repeated references hash alike;
* a Python float NaN is canonical (every NaN is one value) and ``-0.0 != 0.0``;
  inside arrays the raw bytes count, so differing NaN payloads or signed zeros
  give a different key: a conservative miss, never a wrong hit;
* objects without a special case hash by their pickle reduction (class by
  reference plus state), and the hash names the argument path when that fails.
"""

from __future__ import annotations

import copyreg
import dataclasses
import enum
import math
import struct
import types
from collections.abc import Callable
from typing import Any

import numpy as np
import xxhash

from ._chunked import array_tree
from ._dtypes import has_padding
from ._errors import UnhashableError

__all__ = ["HASH_ALGORITHM", "Hasher", "hash", "hash_bytes"]

HASH_ALGORITHM = "xxh3_128"
_CHUNK = 1 << 22  # bytes of a strided array copied at a time
_FLUSH = 1 << 16  # small encodings are batched into one update
TREE_MIN = 1 << 22  # arrays of at least this many bytes are hashed as a tree, on every core

_pack_q = struct.Struct("<q").pack
_pack_Q = struct.Struct("<Q").pack
_pack_d = struct.Struct("<d").pack
_CANONICAL_NAN = _pack_d(math.nan)


def module_name(obj: Any) -> str:
    """Return the module of ``obj``; a spawned worker's ``__mp_main__`` is ``__main__``."""
    module = getattr(obj, "__module__", None) or "unknown"
    return "__main__" if module == "__mp_main__" else module


def _full_name(obj: Any) -> str:
    return f"{module_name(obj)}.{getattr(obj, '__qualname__', getattr(obj, '__name__', '?'))}"


class Hasher:
    """Feed values into one xxh3-128 state through the canonical encoding."""

    def __init__(self) -> None:
        self._state = xxhash.xxh3_128()
        self._buffer = bytearray()
        self._path: dict[int, int] = {}  # id -> depth, for containers being encoded
    # -- output ------------------------------------------------------------------

    def _put(self, data: bytes) -> None:
        self._buffer += data

    def _put_framed(self, tag: bytes, data: Any) -> None:
        view = memoryview(data).cast("B") if not isinstance(data, (bytes, bytearray)) else data
        size = len(view)
        self._buffer += tag + _pack_Q(size)
        if size >= _FLUSH:
            self._flush()
            self._state.update(view)
        else:
            self._buffer += view

    def _flush(self) -> None:
        if self._buffer:
            self._state.update(self._buffer)
            self._buffer = bytearray()

    def hexdigest(self) -> str:
        """Return ``"xxh3_128:<32 hex digits>"`` for everything fed so far."""
        self._flush()
        return f"{HASH_ALGORITHM}:{self._state.hexdigest()}"

    def digest(self) -> bytes:
        """Return the 16-byte digest of everything fed so far."""
        self._flush()
        return self._state.digest()

    # -- dispatch ------------------------------------------------------------------

    def update(self, obj: Any) -> None:
        """Feed one value, recursively."""
        encoder = _ENCODERS.get(type(obj))
        if encoder is not None:
            encoder(self, obj)
        elif isinstance(obj, np.ndarray):
            self._array(obj)
        elif isinstance(obj, np.generic):
            self._numpy_scalar(obj)
        else:
            self._other(obj)

    def _nested(self, obj: Any, label: str) -> None:
        """Feed a member of a container, naming where it sits if it cannot be hashed."""
        try:
            self.update(obj)
        except UnhashableError as exc:
            exc.path = label + exc.path  # type: ignore[attr-defined]
            raise

    def _enter(self, obj: Any) -> bool:
        """Mark a container as being encoded; on a cycle emit a back-reference instead."""
        depth = self._path.get(id(obj))
        if depth is not None:
            self._put(b"@" + _pack_Q(len(self._path) - depth))
            return False
        self._path[id(obj)] = len(self._path)
        return True

    def _leave(self, obj: Any) -> None:
        del self._path[id(obj)]

    # -- scalars -------------------------------------------------------------------

    def _none(self, obj: None) -> None:
        self._put(b"N")

    def _bool(self, obj: bool) -> None:
        self._put(b"T" if obj else b"F")

    def _int(self, obj: int) -> None:
        if -(1 << 63) <= obj < (1 << 63):
            self._put(b"i" + _pack_q(obj))
        else:
            self._put_framed(b"I", obj.to_bytes((obj.bit_length() + 8) // 8, "little", signed=True))

    def _float(self, obj: float) -> None:
        self._put(b"f" + (_CANONICAL_NAN if obj != obj else _pack_d(obj)))

    def _complex(self, obj: complex) -> None:
        self._put(b"c")
        self._float(obj.real)
        self._float(obj.imag)

    def _str(self, obj: str) -> None:
        self._put_framed(b"s", obj.encode("utf-8", "surrogatepass"))

    def _bytes(self, obj: bytes | bytearray) -> None:
        self._put_framed(b"b" if isinstance(obj, bytes) else b"B", obj)

    # -- containers ----------------------------------------------------------------

    def _sequence(self, obj: tuple | list) -> None:
        if not self._enter(obj):
            return
        self._put((b"(" if type(obj) is tuple else b"[") + _pack_Q(len(obj)))
        for index, item in enumerate(obj):
            self._nested(item, f"[{index}]")
        self._leave(obj)

    def _digest_of(self, obj: Any, label: str) -> bytes:
        """Hash ``obj`` on its own (sharing the cycle path), for order-free containers."""
        sub = Hasher()
        sub._path = self._path
        try:
            sub.update(obj)
        except UnhashableError as exc:
            exc.path = label + exc.path  # type: ignore[attr-defined]
            raise
        return sub.digest()

    def _dict(self, obj: dict) -> None:
        if not self._enter(obj):
            return
        self._put(b"{" + _pack_Q(len(obj)))
        if all(type(key) is str for key in obj):
            for key in sorted(obj):
                self._str(key)
                self._nested(obj[key], f"[{key!r}]")
        else:
            self._put(b"h")
            items = sorted(self._digest_of((k, v), f"[{k!r}]") for k, v in obj.items())
            self._put(b"".join(items))
        self._leave(obj)

    def _set(self, obj: set | frozenset) -> None:
        self._put((b"S" if type(obj) is set else b"Z") + _pack_Q(len(obj)))
        self._put(b"".join(sorted(self._digest_of(item, "{...}") for item in obj)))

    def _range(self, obj: range) -> None:
        self._put(b"r")
        for bound in (obj.start, obj.stop, obj.step):
            self._int(bound)

    def _slice(self, obj: slice) -> None:
        self._put(b":")
        for part in (obj.start, obj.stop, obj.step):
            self.update(part)

    # -- numpy ---------------------------------------------------------------------

    def _dtype(self, dtype: np.dtype) -> None:
        descr = np.lib.format.dtype_to_descr(dtype)
        self._put_framed(b"d", repr(descr).encode())

    def _numpy_scalar(self, obj: np.generic) -> None:
        self._put(b"g")
        self._array(np.asarray(obj))

    def _array(self, array: np.ndarray) -> None:
        kind = np.ndarray if type(array) is np.memmap else type(array)
        self._put_framed(b"a", _full_name(kind).encode())
        if isinstance(array, np.ma.MaskedArray):
            self._put(b"M")  # masked-out data is arbitrary: hash mask, fill value, filled data
            self.update(np.ma.getmaskarray(array))
            self.update(array.fill_value)
            self._array_content(array.filled())
            return
        self._array_content(array)
        extra = getattr(array, "__dict__", None) if kind is not np.ndarray else None
        if extra:
            self._nested(dict(extra), ".__dict__")

    def _array_content(self, array: np.ndarray) -> None:
        dtype = array.dtype
        self._dtype(dtype)
        self._put(_pack_Q(array.ndim) + b"".join(_pack_Q(n) for n in array.shape))
        if dtype.hasobject:
            if self._enter(array):
                for index, item in enumerate(array.ravel(order="C")):
                    self._nested(item, f"[flat {index}]")
                self._leave(array)
        elif dtype.names is not None and has_padding(dtype):
            for name in dtype.names:  # padded struct: hash the fields, never the padding
                self._array_content(array[name])
        elif _has_x87_padding(dtype):
            as_bytes = np.ascontiguousarray(array).view(np.uint8).reshape((*array.shape, dtype.itemsize))
            self._array_bytes(np.ascontiguousarray(as_bytes[..., _x87_bytes(dtype)]))
        else:
            self._array_bytes(array)

    def _array_bytes(self, array: np.ndarray) -> None:
        """Feed the array's bytes in logical C order, copying at most a chunk at a time.

        From ``TREE_MIN`` bytes on, the tree digest of ``_chunked`` stands for them.
        """
        self._put(b"=" + _pack_Q(array.nbytes))
        if array.nbytes >= TREE_MIN:
            leaf, root = array_tree(array)
            self._put(b"T" + _pack_Q(leaf) + root)
            return
        self._flush()
        if array.nbytes == 0:
            return
        if array.flags.c_contiguous:
            self._state.update(memoryview(array.reshape(-1).view(np.uint8)))
            return
        iterator = np.nditer(
            array,
            flags=["external_loop", "buffered", "zerosize_ok"],
            buffersize=max(1, _CHUNK // array.itemsize),
            order="C",
        )
        for chunk in iterator:
            self._state.update(memoryview(np.ascontiguousarray(chunk).view(np.uint8)))

    # -- code and callables ----------------------------------------------------------

    def _by_reference(self, obj: Any) -> None:
        self._put_framed(b"G", _full_name(obj).encode())

    def _function(self, obj: types.FunctionType) -> None:
        self._by_reference(obj)
        if not self._enter(obj):
            return
        self._code(obj.__code__)
        self._put(b"D")
        self._nested(obj.__defaults__, ".__defaults__")
        self._nested(obj.__kwdefaults__, ".__kwdefaults__")
        for cell, name in zip(obj.__closure__ or (), obj.__code__.co_freevars):
            try:
                contents = cell.cell_contents
            except ValueError:  # an empty cell
                contents = None
            self._put(b"v")
            self._nested(contents, f".<closure {name}>")
        self._leave(obj)

    def _builtin(self, obj: types.BuiltinFunctionType) -> None:
        """A C function by name; a C method (``"abc".upper``) also by the object it is bound to."""
        self._by_reference(obj)
        owner = getattr(obj, "__self__", None)
        if owner is not None and not isinstance(owner, types.ModuleType):
            self._put(b"m")
            self._nested(owner, ".__self__")

    def _method(self, obj: types.MethodType) -> None:
        self._put(b"m")
        self._nested(obj.__self__, ".__self__")
        self.update(obj.__func__)

    def _code(self, code: types.CodeType) -> None:
        """Feed what decides a code object's behaviour: bytecode, constants, names."""
        self._put_framed(b"K", code.co_code)
        self._put(_pack_Q(code.co_argcount) + _pack_Q(code.co_kwonlyargcount) + _pack_Q(code.co_flags))
        for names in (code.co_names, code.co_varnames, code.co_freevars, code.co_cellvars):
            self._sequence(tuple(names))
        self._put(b"(" + _pack_Q(len(code.co_consts)))
        for const in code.co_consts:
            self.update(const)

    # -- everything else ---------------------------------------------------------------

    def _other(self, obj: Any) -> None:
        if isinstance(obj, enum.Enum):
            self._by_reference(type(obj))
            self._str(obj.name)
            return
        if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
            self._by_reference(type(obj))
            if self._enter(obj):
                self._put(b"(" + _pack_Q(len(dataclasses.fields(obj))))
                for field in dataclasses.fields(obj):
                    self._str(field.name)
                    self._nested(getattr(obj, field.name), f".{field.name}")
                self._leave(obj)
            return
        if isinstance(obj, (type, types.ModuleType)):
            self._by_reference(obj)
            return
        if callable(obj) and hasattr(obj, "func") and hasattr(obj, "args") and hasattr(obj, "keywords"):
            self._put(b"P")  # functools.partial and look-alikes
            self.update(obj.func)
            self._nested(tuple(obj.args), ".args")
            self._nested(dict(obj.keywords), ".keywords")
            return
        self._reduced(obj)

    def _reduced(self, obj: Any) -> None:
        """Hash an object by its pickle reduction: constructor by reference, then state."""
        try:
            reducer = copyreg.dispatch_table.get(type(obj))  # as pickle does (ufuncs, ...)
            reduced = reducer(obj) if reducer is not None else obj.__reduce_ex__(4)
        except Exception as exc:
            raise _unhashable(obj, exc) from exc
        if isinstance(reduced, str):  # a global singleton
            self._put_framed(b"G", f"{getattr(obj, '__module__', '')}.{reduced}".encode())
            return
        if not self._enter(obj):
            return
        self._put(b"R")
        self._by_reference(type(obj))
        constructor, args, *rest = tuple(reduced) + (None,) * (5 - len(reduced))
        self._by_reference(constructor)
        # copyreg.__newobj__ repeats the class as the first argument; the state follows.
        self._nested(args, ".__reduce__()[1]")
        state, list_items, dict_items = rest[:3]
        self._nested(state, ".__getstate__()")
        self._nested(list(list_items) if list_items is not None else None, "[...]")
        self._nested(dict(dict_items) if dict_items is not None else None, "[...]")
        self._leave(obj)


_X87_PADDED = np.finfo(np.longdouble).nmant == 63 and np.dtype(np.longdouble).itemsize > 10


def _has_x87_padding(dtype: np.dtype) -> bool:
    """True for long doubles stored as 80-bit values in wider, padded slots."""
    return _X87_PADDED and dtype.kind in "fc" and dtype.newbyteorder("=") in (
        np.dtype(np.longdouble),
        np.dtype(np.clongdouble),
    )


def _x87_bytes(dtype: np.dtype) -> list[int]:
    step = np.dtype(np.longdouble).itemsize
    return [i for part in range(dtype.itemsize // step) for i in range(part * step, part * step + 10)]


_ENCODERS: dict[type, Callable[[Hasher, Any], None]] = {
    type(None): Hasher._none,
    bool: Hasher._bool,
    int: Hasher._int,
    float: Hasher._float,
    complex: Hasher._complex,
    str: Hasher._str,
    bytes: Hasher._bytes,
    bytearray: Hasher._bytes,
    tuple: Hasher._sequence,
    list: Hasher._sequence,
    dict: Hasher._dict,
    set: Hasher._set,
    frozenset: Hasher._set,
    np.ndarray: Hasher._array,
    np.memmap: Hasher._array,
    type: Hasher._by_reference,
    types.FunctionType: Hasher._function,
    types.BuiltinFunctionType: Hasher._builtin,
    np.ufunc: Hasher._reduced,
    types.MethodType: Hasher._method,
    types.CodeType: Hasher._code,
    range: Hasher._range,
    slice: Hasher._slice,
}
for _dtype_class in {type(np.dtype(t)) for t in "?bhilqBHILQefdgFDGSUVOMm"}:
    _ENCODERS[_dtype_class] = Hasher._dtype


def scalars_encoding(values: tuple) -> bytes | None:
    """Return ``Hasher().update(values)``'s bytes for a tuple of plain scalars, else None.

    The hot path of a memoized call with small arguments: the same bytes as the
    general encoder (a test holds them equal), built without its per-value dispatch.
    """
    parts = [b"(" + _pack_Q(len(values))]
    for value in values:
        kind = type(value)
        if kind is int and -(1 << 63) <= value < (1 << 63):
            parts.append(b"i" + _pack_q(value))
        elif kind is float:
            parts.append(b"f" + (_CANONICAL_NAN if value != value else _pack_d(value)))
        elif kind is str:
            encoded = value.encode("utf-8", "surrogatepass")
            if len(encoded) >= _FLUSH:
                return None
            parts.append(b"s" + _pack_Q(len(encoded)) + encoded)
        elif value is None:
            parts.append(b"N")
        elif kind is bool:
            parts.append(b"T" if value else b"F")
        else:
            return None
    return b"".join(parts)


def _unhashable(obj: Any, exc: BaseException | None = None) -> UnhashableError:
    error = UnhashableError(
        f"cannot hash a {type(obj).__module__}.{type(obj).__qualname__} object"
        + (f" ({exc})" if exc else "")
        + "; pass it in `ignore=` or convert it to plain data"
    )
    error.path = ""  # type: ignore[attr-defined]
    return error


def hash(obj: Any) -> str:
    """Return a stable content hash of ``obj``, e.g. ``"xxh3_128:9f2c..."``.

    Raises ``UnhashableError`` (a ``CacheError`` and ``TypeError``) naming where in
    ``obj`` the value that cannot be hashed sits.
    """
    hasher = Hasher()
    try:
        hasher.update(obj)
    except UnhashableError as exc:
        path = getattr(exc, "path", "")
        if path:
            raise UnhashableError(f"at obj{path}: {exc}") from exc.__cause__
        raise
    except RecursionError as exc:
        raise UnhashableError(f"cannot hash obj: it is nested too deeply ({exc})") from exc
    return hasher.hexdigest()


def hash_bytes(obj: Any) -> bytes:
    """Return the 16-byte digest behind ``hash(obj)``."""
    hasher = Hasher()
    hasher.update(obj)
    return hasher.digest()
