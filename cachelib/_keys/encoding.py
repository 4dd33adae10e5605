"""The canonical encoding of values behind ``cachelib.hash``: xxh3-128 over type-tagged bytes.

Rule: two values get equal hashes only if a function cannot tell them apart
(beyond identity and mutation), in every process, run and ``PYTHONHASHSEED``. Every
value is fed as a one-byte type tag followed by length-framed content, so
``("ab", "c")`` and ``("a", "bc")`` differ, and ``1``, ``1.0``, ``True``,
``np.int64(1)`` and ``"1"`` differ. The README's "Keys" section states the rules.

The encoder is iterative (an explicit stack of containers being encoded), so any
value pickle can write hashes, however deep. An encoder either emits leaf bytes, or
emits a header and then pushes one frame of members as its last action.

Deliberate choices:

* arrays hash their exact dtype (class, scalar type, byte order, fields, subarray
  shape, parameters, metadata), shape and content in logical C order: a view and
  its copy, a C and a Fortran array of equal values hash the same; large strided
  arrays are fed in bounded chunks, never copied whole; arrays of ``TREE_MIN``
  bytes or more are fed as a tree of digests (``_format.tree``), on every core; bytes that hold no value
  (struct padding, x87 slack) never count; arrays whose bytes are pointers
  (object, ``StringDType``) hash their elements;
* order counts wherever a program can see it: dict insertion order, ``OrderedDict``,
  ``**kwargs``; sets are order-free; shared and repeated references hash alike;
* a Python float NaN is canonical and ``-0.0 != 0.0``; inside arrays the raw bytes
  count (NaN payloads, signed zeros): a conservative miss, never a wrong hit;
* functions hash their name, code (``_keys.code``), defaults and closure values, and
  what a ``Follow`` reports they reach (``_keys.reach``: helpers and constants);
  objects of the user's own classes hash their class's code and their pickle
  state; other objects their pickle reduction (class by reference plus state).
"""

from __future__ import annotations

import copyreg
import enum
import functools
import math
import struct
import types
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol, TypeVar, cast

import numpy as np
import xxhash

from .._errors import InvalidOptionError, UnhashableError
from .._format.dtypes import byte_view, dtype_identity, dtype_params, stores_values_inline, value_bytes
from .._format.tree import array_tree
from .code import (
    EMPTY_CELL,
    cell_value,
    code_digest,
    full_name,
    module_name,
    passes_through,
    reference,
)
from .libraries import BY_CONTENT, encode_by_content, lazy_attributes, nameable, resolve

__all__ = ["HASH_ALGORITHM", "Follow", "Hasher", "scalars_encoding", "unhashable"]

HASH_ALGORITHM = "xxh3_128"
_CHUNK = 1 << 22  # bytes of a strided array copied at a time
_MAX_DEPTH = 100_000  # containers open at once: deeper is a value that never ends
_FLUSH = 1 << 16  # small encodings are batched into one update
TREE_MIN = 1 << 22  # arrays of at least this many bytes are hashed as a tree, on every core

D = TypeVar("D", bytes, bytes | None)  # what ``Hasher._checked`` computes and keeps
_pack_q = struct.Struct("<q").pack
_pack_Q = struct.Struct("<Q").pack
_pack_d = struct.Struct("<d").pack
_CANONICAL_NAN = _pack_d(math.nan)
_END = object()


class _Frame:
    """A container being encoded: its remaining members and where the current one sits."""

    __slots__ = ("current", "items", "label", "owner")

    def __init__(self, items: Iterator[tuple[Any, Any]], label: Callable[[Any], str], owner: Any) -> None:
        self.items = items
        self.label = label
        self.owner = owner
        self.current: Any = None


def _index_label(index: Any) -> str:
    return f"[{index}]"


def _key_label(key: Any) -> str:
    return f"[{key!r}]"


def _same_label(label: Any) -> str:
    return str(label)


class Follow(Protocol):
    """What a hasher asks about code beyond its own: the digests of what code reaches."""

    def function_digest(self, func: types.FunctionType) -> bytes:
        """The digest of a function's code and of everything it reaches."""

    def class_digest(self, cls: type) -> bytes | None:
        """The digest of one of the user's classes, or None for any other class."""


class Hasher:
    """Feed values into one xxh3-128 state through the canonical encoding.

    ``follow`` says what functions and classes reach (helpers, constants); without
    it they are hashed by their own code only (``memoize(track_callees=False)``).
    """

    def __init__(self, follow: Follow | None = None) -> None:
        self._state = xxhash.xxh3_128()
        self._buffer = bytearray()
        self._follow = follow
        self._path: dict[int, int] = {}  # id -> depth, for containers being encoded
        self._stack: list[_Frame] = []
        self._digests: dict[int, tuple[Any, Any]] = {}  # per run: classes and codes already checked

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

    # -- the loop ------------------------------------------------------------------

    def update(self, obj: Any) -> None:
        """Feed one value, with all it holds, whatever its depth.

        Raises ``UnhashableError`` whose ``path`` attribute says where in ``obj``
        the value that cannot be hashed sits (``"[2].attr"``).
        """
        outer, stack = self._stack, []  # type: list[_Frame], list[_Frame]
        self._stack = stack
        value = obj
        try:
            self._encode(value)
            while stack:
                frame = stack[-1]
                item: Any = next(frame.items, _END)
                if item is _END:
                    stack.pop()
                    if frame.owner is not None:
                        del self._path[id(frame.owner)]
                    continue
                frame.current, value = item
                self._encode(value)
        except UnhashableError as exc:
            raise exc.inside(self._where()) from exc.__cause__
        except InvalidOptionError:
            raise  # cachelib's own configuration (CACHELIB_THREADS), not the value's fault
        except Exception as exc:  # a member that fails while being read: name it and where it sits
            raise unhashable(value, exc).inside(self._where()) from exc
        finally:
            for frame in stack:
                if frame.owner is not None:
                    self._path.pop(id(frame.owner), None)
            self._stack = outer

    def _where(self) -> str:
        return "".join(frame.label(frame.current) for frame in self._stack)

    def _encode(self, obj: Any) -> None:
        encoder = _ENCODERS.get(type(obj))
        if encoder is not None:
            encoder(self, obj)
        elif isinstance(obj, np.ndarray):
            self._array(obj)
        elif isinstance(obj, np.generic):
            self._numpy_scalar(obj)
        elif isinstance(obj, np.dtype):  # a dtype class of its own (ml_dtypes, StringDType): by identity
            self._dtype(obj)
        else:
            self._other(obj)

    def _push(self, items: Iterator[tuple[Any, Any]], label: Callable[[Any], str], owner: Any = None) -> None:
        if len(self._stack) >= _MAX_DEPTH:
            raise RecursionError(f"nested more than {_MAX_DEPTH} levels deep")
        self._stack.append(_Frame(items, label, owner))

    def _enter(self, obj: Any) -> bool:
        """Mark a container as being encoded; on a cycle emit a back-reference instead."""
        depth = self._path.get(id(obj))
        if depth is not None:
            self._put(b"@" + _pack_Q(len(self._path) - depth))
            return False
        self._path[id(obj)] = len(self._path)
        return True

    def _digest_of(self, obj: Any) -> bytes:
        """Hash ``obj`` on its own (sharing the cycle path), for order-free containers."""
        sub = Hasher(self._follow)
        sub._path = self._path
        sub._digests = self._digests
        sub.update(obj)
        return sub.digest()

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

    def _empty_cell(self, obj: object) -> None:
        self._put(b"E")

    # -- containers ----------------------------------------------------------------

    def _sequence(self, obj: tuple[Any, ...] | list[Any]) -> None:
        flat = scalars_encoding(obj, b"(" if type(obj) is tuple else b"[")
        if flat is not None:
            self._put(flat)
            return
        if not self._enter(obj):
            return
        self._put((b"(" if type(obj) is tuple else b"[") + _pack_Q(len(obj)))
        self._push(enumerate(obj), _index_label, obj)

    def _dict(self, obj: dict[Any, Any]) -> None:
        """Keys and values in insertion order: a program can see the order of a dict."""
        if not self._enter(obj):
            return
        self._put(b"{" + _pack_Q(len(obj)))
        self._push(_dict_items(obj), _key_label, obj)

    def _mappingproxy(self, obj: types.MappingProxyType[Any, Any]) -> None:
        self._put(b"x")
        self._dict(dict(obj))

    def _set(self, obj: set[Any] | frozenset[Any]) -> None:
        self._put((b"S" if type(obj) is set else b"Z") + _pack_Q(len(obj)))
        digests = []
        for item in obj:
            try:
                digests.append(self._digest_of(item))
            except UnhashableError as exc:
                raise exc.inside("{...}") from exc.__cause__
        self._put(b"".join(sorted(digests)))

    def _range(self, obj: range) -> None:
        self._put(b"r")
        for bound in (obj.start, obj.stop, obj.step):
            self._int(bound)

    def _slice(self, obj: slice) -> None:
        self._put(b":")
        self._push(iter(((".start", obj.start), (".stop", obj.stop), (".step", obj.step))), _same_label)

    # -- numpy ---------------------------------------------------------------------

    def _dtype(self, dtype: np.dtype) -> None:
        known = _DTYPES.get(id(dtype))
        # A structured dtype's field names can be assigned in place: they are part of the check.
        if known is None or known[0] is not dtype or known[2] != dtype.names:
            encoded = repr(dtype_identity(dtype)).encode()
            params = dtype_params(dtype)
            if params:
                encoded += b"p" + self._digest_of(params)
            if len(_DTYPES) >= 512:
                _DTYPES.clear()
            known = _DTYPES[id(dtype)] = (dtype, encoded, dtype.names)
        self._put_framed(b"d", known[1])

    def _numpy_scalar(self, obj: np.generic) -> None:
        self._put(b"g")
        self._array(np.asarray(obj))

    def _array(self, array: np.ndarray) -> None:
        if array is np.ma.masked:  # the one masked constant (indexing a masked element returns it)
            self._put_framed(b"G", b"numpy.ma.masked")
            return
        kind = np.ndarray if type(array) is np.memmap else type(array)
        self._put_framed(b"a", full_name(kind).encode())
        if isinstance(array, np.ma.MaskedArray):
            # Masked-out data is arbitrary: hash the mask, the fill value and the filled data.
            self._put(b"M")
            parts = ((".mask", np.ma.getmaskarray(array)), (".fill_value", array.fill_value),
                     (".filled()", np.asarray(array.filled())), (".hardmask", bool(array.hardmask)))
            self._push(iter(parts), _same_label)
            return
        extra = getattr(array, "__dict__", None) if kind is not np.ndarray else None
        if extra:
            self._put(b"X")
            self._push(iter(((".data", array.view(np.ndarray)), (".__dict__", dict(extra)))), _same_label)
            return
        self._array_content(array)

    def _array_content(self, array: np.ndarray) -> None:
        dtype = array.dtype
        self._dtype(dtype)
        self._put(_pack_Q(array.ndim) + b"".join(_pack_Q(n) for n in array.shape))
        if stores_values_inline(dtype):
            self._array_bytes(array)
        elif dtype.names is not None:  # padded, or with fields that are not plain bytes
            self._put(b"F")
            self._push(((name, array[name]) for name in dtype.names), _field_label)
        elif value_bytes(dtype) is not None:
            as_bytes = np.ascontiguousarray(array).view(np.uint8).reshape((*array.shape, dtype.itemsize))
            self._array_bytes(np.ascontiguousarray(as_bytes[..., value_bytes(dtype)]))
        elif dtype.hasobject and dtype.kind == "O":
            if self._enter(array):
                self._push(enumerate(array.ravel(order="C")), _flat_label, array)
        else:  # pointers to values (StringDType) or a dtype numpy does not vouch for: by element
            self._put(b"e")
            self._push(enumerate(array.ravel(order="C").tolist()), _flat_label)

    def _array_bytes(self, array: np.ndarray) -> None:
        """Feed the array's bytes in logical C order, copying at most a chunk at a time.

        From ``TREE_MIN`` bytes on, the tree digest of ``_format.tree`` stands for them.
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
            self._state.update(byte_view(array.reshape(-1).view(np.uint8)))
            return
        iterator = np.nditer(
            array,
            flags=["external_loop", "buffered", "zerosize_ok"],
            buffersize=max(1, _CHUNK // array.itemsize),
            order="C",
        )
        for chunk in iterator:
            self._state.update(byte_view(np.ascontiguousarray(chunk).view(np.uint8)))

    # -- code and callables ----------------------------------------------------------

    def _by_reference(self, obj: Any) -> None:
        self._put_framed(b"G", full_name(obj).encode())

    def _type(self, cls: type) -> None:
        """A class by name (checked to name it); one of the user's own classes by its code too."""
        if not nameable(cls):
            raise UnhashableError(
                f"the class {full_name(cls)} cannot be named: that name does not lead back to it (a class "
                "made at run time); pass the value in `ignore=` or make the class importable"
            )
        self._by_reference(cls)
        if self._follow is not None:
            digest = self._checked(cls, self._follow.class_digest)
            if digest is not None:
                self._put(b"k" + digest)

    def _checked(self, obj: Any, compute: Callable[[Any], D]) -> D:
        """``compute(obj)``, once per run for each object (a run may meet a class many times)."""
        known = self._digests.get(id(obj))
        if known is not None and known[0] is obj:
            return cast(D, known[1])
        digest = compute(obj)
        self._digests[id(obj)] = (obj, digest)
        return digest

    def _function(self, obj: types.FunctionType) -> None:
        self._by_reference(obj)
        digest = self._checked(obj, self._follow.function_digest if self._follow else _own_code_digest)
        self._put(b"K" + digest)
        if not self._enter(obj):
            return
        members: list[tuple[str, Any]] = [(".__defaults__", obj.__defaults__),
                                          (".__kwdefaults__", obj.__kwdefaults__)]
        registry = getattr(obj, "registry", None)
        if isinstance(registry, types.MappingProxyType) and hasattr(obj, "dispatch"):
            members.append((".registry", dict(registry)))  # singledispatch: its implementations
        else:
            members += [(f".<closure {name}>", cell_value(cell))
                        for cell, name in zip(obj.__closure__ or (), obj.__code__.co_freevars)]
        self._push(iter(members), _same_label, obj)

    def _builtin(self, obj: types.BuiltinFunctionType) -> None:
        """A C function by name; a C method (``"abc".upper``) also by the object it is bound to."""
        owner = getattr(obj, "__self__", None)
        if (owner is None or isinstance(owner, types.ModuleType)) and reference(obj) is None:
            raise unhashable(obj, TypeError(f"{full_name(obj)} does not lead back to this function"))
        self._by_reference(obj)
        if owner is not None and not isinstance(owner, types.ModuleType):
            self._put(b"m")
            self._push(iter(((".__self__", owner),)), _same_label)

    def _method(self, obj: types.MethodType) -> None:
        self._put(b"m")
        self._push(iter(((".__self__", obj.__self__), (".__func__", obj.__func__))), _same_label)

    def _code(self, code: types.CodeType) -> None:
        self._put(b"K" + code_digest(code))

    def _partial(self, obj: functools.partial[Any]) -> None:
        self._put(b"P")
        members = [(".func", obj.func), (".args", obj.args), (".keywords", obj.keywords)]
        if getattr(obj, "__dict__", None):
            members.append((".__dict__", dict(obj.__dict__)))
        self._push(iter(members), _same_label)

    # -- everything else ---------------------------------------------------------------

    def _other(self, obj: Any) -> None:
        kind = type(obj)
        if isinstance(obj, enum.Enum):  # a member is its class and its value (Flag(0) has no name)
            self._type(kind)
            self._push(iter(((".value", obj._value_),)), _same_label)
            return
        if isinstance(obj, type):
            self._type(obj)
            return
        if isinstance(obj, types.ModuleType):
            self._by_reference(obj)
            return
        if passes_through(obj):
            self._put(b"W")
            self._by_reference(kind)
            members = [(".__wrapped__", obj.__wrapped__)]
            if kind is functools._lru_cache_wrapper:
                members.append((".cache_parameters()", obj.cache_parameters()))
            self._push(iter(members), _same_label)
            return
        module = getattr(kind, "__module__", None)
        module = module if isinstance(module, str) else ""
        if module.startswith(BY_CONTENT) and encode_by_content(self, obj):
            return
        self._reduced(obj)

    def _reduced(self, obj: Any) -> None:
        """Hash an object by its pickle reduction: constructor by reference, then state."""
        try:
            reducer = copyreg.dispatch_table.get(type(obj))  # as pickle does (ufuncs, ...)
            reduced = reducer(obj) if reducer is not None else obj.__reduce_ex__(4)
        except Exception as exc:
            raise unhashable(obj, exc) from exc
        if isinstance(reduced, str):  # a global singleton, named by its module and that name
            named = f"{module_name(obj)}.{reduced}"
            if resolve(module_name(obj), reduced) is not obj:
                raise unhashable(obj, TypeError(f"it calls itself {named}, which names another object"))
            self._put_framed(b"G", named.encode())
            return
        if not isinstance(reduced, tuple) or not 2 <= len(reduced) <= 6:
            raise unhashable(obj, TypeError(f"__reduce_ex__ returned {type(reduced).__name__}"))
        if not self._enter(obj):
            return
        self._put(b"R")
        self._type(type(obj))
        constructor, args, state, list_items, dict_items = (tuple(reduced) + (None,) * 3)[:5]
        lazy = lazy_attributes(type(obj))
        if lazy and isinstance(state, dict):  # computed on first use, not part of the value
            state = {name: value for name, value in state.items() if name not in lazy}
        self._by_reference(constructor)
        # copyreg.__newobj__ repeats the class as the first argument; the state follows.
        members = [(".__reduce__()[1]", args), (".__getstate__()", state),
                   ("[...]", list(list_items) if list_items is not None else None),
                   ("[...]", dict(dict_items) if dict_items is not None else None)]
        self._push(iter(members), _same_label, obj)

    # -- what encoders of other libraries' values feed (``_keys.libraries.Feed``) ----------------

    put = _put
    put_framed = _put_framed
    put_type = _type
    put_array_bytes = _array_bytes

    def push(self, members: Iterable[tuple[str, Any]]) -> None:
        """Encode ``(label, value)`` members next, each as a value (labels say where, in errors)."""
        self._push(iter(members), _same_label)


def _dict_items(obj: dict[Any, Any]) -> Iterator[tuple[Any, Any]]:
    for key, value in obj.items():
        yield key, key
        yield key, value


def _field_label(name: Any) -> str:
    return f"[{name!r}]"


def _flat_label(index: Any) -> str:
    return f"[flat {index}]"


_DTYPES: dict[int, tuple[np.dtype, bytes, tuple[str, ...] | None]] = {}

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
    types.MappingProxyType: Hasher._mappingproxy,
    set: Hasher._set,
    frozenset: Hasher._set,
    np.ndarray: Hasher._array,
    np.memmap: Hasher._array,
    type: Hasher._type,
    types.FunctionType: Hasher._function,
    types.BuiltinFunctionType: Hasher._builtin,
    np.ufunc: Hasher._reduced,
    types.MethodType: Hasher._method,
    types.CodeType: Hasher._code,
    functools.partial: Hasher._partial,
    range: Hasher._range,
    slice: Hasher._slice,
    type(EMPTY_CELL): Hasher._empty_cell,
}
for _dtype_class in {type(np.dtype(t)) for t in "?bhilqBHILQefdgFDGSUVOMm"}:
    _ENCODERS[_dtype_class] = Hasher._dtype


def scalars_encoding(values: tuple[Any, ...] | list[Any], opening: bytes = b"(") -> bytes | None:
    """Return ``Hasher().update(values)``'s bytes for a tuple of plain scalars, else None.

    The hot path of a memoized call with small arguments: the same bytes as the
    general encoder (a test holds them equal), built without its per-value dispatch.
    ``opening`` is ``b"["`` for a list.
    """
    parts = [opening + _pack_Q(len(values))]
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


def unhashable(obj: Any, exc: BaseException | None = None) -> UnhashableError:
    """Return the ``UnhashableError`` for ``obj``, naming its type and the fix."""
    kind = type(obj)
    if isinstance(exc, RecursionError):
        reason = " (it recurses without end)"
    else:
        reason = f" ({type(exc).__name__}: {exc})" if exc is not None else ""
    return UnhashableError(
        f"cannot hash a {kind.__module__}.{kind.__qualname__} object{reason}; "
        "pass it in `ignore=` or convert it to plain data"
    )


def _own_code_digest(func: types.FunctionType) -> bytes:
    return code_digest(func.__code__)
