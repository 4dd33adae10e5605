"""Values of other libraries hashed by their content, and what libraries compute lazily.

Rule: no import of a library that the value does not come from (a value's type names
its library), and no copy of the data where the library hands out its memory: torch
tensors hash like arrays, polars and pyarrow data by their Arrow buffers in place
(``arrow``), scipy.sparse arrays by their format's arrays. What a library or a class
caches on an object when first used (a ``cached_property``'s value, the ufunc
``np.vectorize`` builds, sparse flags) never counts: equal objects hash alike, used or
not. Encoders feed a hasher through ``Feed``, a few public methods of ``Hasher``.
"""

from __future__ import annotations

import contextlib
import functools
import struct
import sys
import weakref
from collections.abc import Iterable
from typing import Any, Protocol

import numpy as np
import xxhash

from .arrow import ArrowUnsupported, walk_stream
from .code import full_name, is_user_class, reference

__all__ = ["BY_CONTENT", "Feed", "encode_by_content", "lazy_attributes", "nameable", "resolve"]

BY_CONTENT = ("torch", "polars", "pyarrow", "scipy.sparse")
"""Modules whose values ``encode_by_content`` may take (by the value's type's module)."""

_pack_Q = struct.Struct("<Q").pack


class Feed(Protocol):
    """What an encoder feeds a hash with (``_keys.encoding.Hasher``)."""

    def put(self, data: bytes) -> None: ...

    def put_framed(self, tag: bytes, data: Any) -> None: ...

    def put_type(self, cls: type) -> None: ...

    def put_array_bytes(self, array: np.ndarray) -> None: ...

    def push(self, members: Iterable[tuple[str, Any]]) -> None: ...


def encode_by_content(feed: Feed, obj: Any) -> bool:
    """Feed ``obj`` by content if it is a value of one of ``BY_CONTENT``'s libraries; False if not."""
    module = type(obj).__module__
    if module.startswith("torch"):
        return _tensor(feed, obj)
    if module.startswith(("polars", "pyarrow")):
        return _arrow(feed, obj)
    return module.startswith("scipy.sparse") and _sparse(feed, obj)


def _tensor(feed: Feed, obj: Any) -> bool:
    """Hash a dense torch tensor by content, like an array; False for anything else."""
    torch = sys.modules.get("torch")
    if torch is None or not isinstance(obj, torch.Tensor) or obj.layout != torch.strided:
        return False
    if obj.is_quantized or obj.device.type == "meta":
        return False
    data = obj.detach().resolve_conj().resolve_neg().cpu().contiguous().reshape(-1)
    header = (full_name(type(obj)), str(obj.dtype), tuple(obj.shape), obj.device.type, obj.requires_grad)
    feed.put_framed(b"t", repr(header).encode())
    feed.put_array_bytes(data.view(torch.uint8).numpy())
    extra = getattr(obj, "__dict__", None)
    feed.push(((".__dict__", dict(extra) if extra else None),))
    return True


_SPARSE_MEMBERS = {
    "csr": ("data", "indices", "indptr"), "csc": ("data", "indices", "indptr"),
    "bsr": ("data", "indices", "indptr", "blocksize"), "coo": ("coords", "data"), "dia": ("data", "offsets"),
}


def _sparse(feed: Feed, obj: Any) -> bool:
    """Hash a scipy.sparse array or matrix by its format's arrays (not flags it caches on use)."""
    members = _SPARSE_MEMBERS.get(getattr(obj, "format", None))  # type: ignore[arg-type]
    if members is None:
        return False
    if members[0] == "coords" and not hasattr(obj, "coords"):  # scipy before 1.13
        members = ("row", "col", "data")
    feed.put_type(type(obj))
    feed.put(b"Y")
    items = [(".shape", tuple(obj.shape)), (".dtype", obj.dtype)]
    items += [(f".{member}", getattr(obj, member)) for member in members]
    feed.push(items)
    return True


def _arrow(feed: Feed, obj: Any) -> bool:
    """Hash a polars or pyarrow table or series by its Arrow buffers, in place; False if it has none."""
    if not callable(getattr(type(obj), "__arrow_c_stream__", None)):
        return False
    sub = xxhash.xxh3_128()

    def visit(schema: bytes, length: int, offset: int, buffers: list[memoryview | None]) -> None:
        sub.update(_pack_Q(len(schema)) + schema + _pack_Q(length) + _pack_Q(offset) + _pack_Q(len(buffers)))
        for buffer in buffers:
            if buffer is None:
                sub.update(b"n")
            else:
                sub.update(b"b" + _pack_Q(len(buffer)))
                sub.update(buffer)

    try:
        walk_stream(obj, visit)
    except ArrowUnsupported:
        return False
    feed.put_framed(b"G", full_name(type(obj)).encode())
    feed.put(b"A" + sub.digest())
    return True


# Attributes that a library computes on first use and keeps in an object's state: they
# never change what the object is, so two equal objects hash alike, used or not.
_LAZY = {"numpy.vectorize": frozenset({"_ufunc", "_in_and_out_core_dims"})}


_CLASS_FACTS: weakref.WeakKeyDictionary[type, tuple[frozenset[str], bool]] = weakref.WeakKeyDictionary()


def _class_facts(cls: type) -> tuple[frozenset[str], bool]:
    """What ``lazy_attributes`` and ``nameable`` say of a class, found once per class."""
    try:
        known = _CLASS_FACTS.get(cls)
    except TypeError:  # a class that refuses weak references
        known = None
    if known is None:
        lazy = {name for klass in cls.__mro__ for name, member in vars(klass).items()
                if isinstance(member, functools.cached_property)}
        known = (frozenset(lazy) | _LAZY.get(full_name(cls), frozenset()),
                 is_user_class(cls) or reference(cls) is not None)
        with contextlib.suppress(TypeError):
            _CLASS_FACTS[cls] = known
    return known


def lazy_attributes(cls: type) -> frozenset[str]:
    """Names in an object's state that hold what it computed lazily: its class's cached properties."""
    return _class_facts(cls)[0]


def nameable(cls: type) -> bool:
    """True if a class can stand by its name: one of the user's (its code is hashed) or resolvable."""
    return _class_facts(cls)[1]


def resolve(module: str, qualname: str) -> Any:
    """The object ``module.qualname`` names now, or None."""
    target: Any = sys.modules.get(module)
    for part in qualname.split("."):
        target = getattr(target, part, None)
    return target
