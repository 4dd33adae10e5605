"""Code identity: which code a callable runs, whose code it is, and what globals it names.

Rule: pure functions of code objects and callables, with no notion of values or
keys above them (``_keys.encoding`` hashes values, ``_keys.reach`` follows what code
reaches). A code digest changes whenever the behaviour of the code can change and
never with line numbers or the file name; it is computed once per code object.
"""

from __future__ import annotations

import dis
import functools
import os
import site
import sys
import sysconfig
import types
import weakref
from typing import Any

import xxhash

__all__ = [
    "EMPTY_CELL",
    "cell_value",
    "code_digest",
    "full_name",
    "global_references",
    "is_user_class",
    "is_user_file",
    "is_user_function",
    "is_user_module",
    "module_name",
    "passes_through",
    "underlying",
]


# -- names ----------------------------------------------------------------------------------


def module_name(obj: Any) -> str:
    """Return the module of ``obj``; a spawned worker's ``__mp_main__`` is ``__main__``."""
    module = getattr(obj, "__module__", None)
    module = module if isinstance(module, str) and module else "unknown"
    return "__main__" if module == "__mp_main__" else module


def full_name(obj: Any) -> str:
    """Return ``module.qualname`` of a function, class or module-level object."""
    name = getattr(obj, "__qualname__", None)
    if not isinstance(name, str):
        name = getattr(obj, "__name__", None)
    return f"{module_name(obj)}.{name if isinstance(name, str) else '?'}"


# -- callables ------------------------------------------------------------------------------


class _EmptyCell:
    """Stands for a closure cell that holds nothing yet."""


EMPTY_CELL = _EmptyCell()


def cell_value(cell: Any) -> Any:
    """Return what a closure cell holds, or ``EMPTY_CELL`` for an empty one."""
    try:
        return cell.cell_contents
    except ValueError:
        return EMPTY_CELL


def passes_through(obj: Any) -> bool:
    """True for wrappers that call ``__wrapped__`` with the same arguments (lru_cache, memoize)."""
    kind = type(obj)
    return (kind is functools._lru_cache_wrapper or getattr(kind, "__cachelib_passthrough__", False)) and (
        "__wrapped__" in getattr(obj, "__dict__", ())
    )


# -- whose code is it -----------------------------------------------------------------------


def _library_roots() -> tuple[str, ...]:
    paths = {sysconfig.get_paths().get(name) for name in ("stdlib", "platstdlib", "purelib", "platlib")}
    paths.update(getattr(site, "getsitepackages", list)())
    paths.add(getattr(site, "getusersitepackages", lambda: None)())
    paths.add(os.path.dirname(os.path.abspath(__file__)))  # cachelib itself
    return tuple(os.path.join(os.path.realpath(path), "") for path in paths if path)


_LIBRARY_ROOTS = _library_roots()


@functools.lru_cache(maxsize=4096)
def is_user_file(filename: str) -> bool:
    """True for code the user wrote: not the standard library, installed packages or cachelib.

    Code without a file (``exec``, notebook cells, ``python -c``) is the user's;
    frozen modules are the standard library's.
    """
    if filename.startswith("<"):
        return not filename.startswith("<frozen")
    return not os.path.realpath(filename).startswith(_LIBRARY_ROOTS)


def is_user_function(func: Any) -> bool:
    """True for a Python function whose code is the user's."""
    return isinstance(func, types.FunctionType) and is_user_file(func.__code__.co_filename)


def is_user_module(module: types.ModuleType) -> bool:
    """True for a module loaded from one of the user's files."""
    filename = getattr(module, "__file__", None)
    return isinstance(filename, str) and is_user_file(filename)


def is_user_class(cls: type) -> bool:
    """True for a class of the user's code (of a user module, or of ``__main__`` with user methods)."""
    module = sys.modules.get(getattr(cls, "__module__", None) or "")
    if module is not None and isinstance(getattr(module, "__file__", None), str):
        return is_user_module(module)
    if module is not None and module.__name__ != "__main__":
        return False  # builtins and extension modules without a file
    return any(is_user_function(underlying(value)) for value in vars(cls).values())


def underlying(value: Any) -> Any:
    """The function behind a method descriptor or a pass-through wrapper."""
    for _ in range(100):  # a chain of wrappers, not a cycle
        if isinstance(value, (staticmethod, classmethod)):
            value = value.__func__
        elif passes_through(value):
            value = value.__wrapped__
        else:
            return value
    return value


# -- what code does -------------------------------------------------------------------------

_CODE_DIGESTS: weakref.WeakKeyDictionary[types.CodeType, bytes] = weakref.WeakKeyDictionary()


def _framed(tag: bytes, data: bytes) -> bytes:
    return tag + len(data).to_bytes(8, "little") + data


def _constant(value: Any) -> bytes:
    """Encode one of the constants a code object can hold (nested code by its digest)."""
    if isinstance(value, types.CodeType):
        return b"K" + code_digest(value)
    if type(value) is tuple:
        return _framed(b"(", b"".join(_constant(item) for item in value))
    if type(value) is frozenset:  # sorted: the order of a frozenset depends on the hash seed
        return _framed(b"Z", b"".join(sorted(_constant(item) for item in value)))
    return _framed(type(value).__name__.encode(), repr(value).encode())


def code_digest(code: types.CodeType) -> bytes:
    """Return the 16-byte digest of what decides a code object's behaviour.

    Bytecode, exception table (3.11+), argument counts, flags, names and constants
    (nested code objects by their own digest); not line numbers or the file name,
    so moving a function within its file keeps its entries.
    """
    known = _CODE_DIGESTS.get(code)
    if known is not None:
        return known
    counts = (code.co_argcount, code.co_posonlyargcount, code.co_kwonlyargcount, code.co_flags)
    names = (code.co_names, code.co_varnames, code.co_freevars, code.co_cellvars)
    encoded = b"".join((
        _framed(b"b", code.co_code),
        _framed(b"x", getattr(code, "co_exceptiontable", b"")),
        _framed(b"n", repr((counts, names)).encode()),
        _framed(b"c", b"".join(_constant(c) for c in code.co_consts)),
    ))
    digest = _CODE_DIGESTS[code] = xxhash.xxh3_128_digest(encoded)
    return digest


_GLOBAL_LOADS = frozenset({"LOAD_GLOBAL", "LOAD_NAME"})
_ATTRIBUTE_LOADS = frozenset({"LOAD_ATTR", "LOAD_METHOD"})
_GLOBAL_STORES = frozenset({"STORE_GLOBAL", "DELETE_GLOBAL"})
_REFERENCES: weakref.WeakKeyDictionary[types.CodeType, tuple[tuple[tuple[str, ...], ...], frozenset[str]]]
_REFERENCES = weakref.WeakKeyDictionary()


def global_references(code: types.CodeType) -> tuple[tuple[tuple[str, ...], ...], frozenset[str]]:
    """Return the global names ``code`` reads (each with the attributes read after it) and assigns."""
    known = _REFERENCES.get(code)
    if known is not None:
        return known
    chains: dict[tuple[str, ...], None] = {}
    stores: set[str] = set()
    pending = [code]
    while pending:
        current = pending.pop()
        chain: list[str] = []
        for instruction in dis.get_instructions(current):
            name = instruction.opname
            if name in _ATTRIBUTE_LOADS and chain:
                chain.append(instruction.argval)
                continue
            if chain:
                chains[tuple(chain)] = None
                chain = []
            if name in _GLOBAL_LOADS:
                chain = [instruction.argval]
            elif name in _GLOBAL_STORES:
                stores.add(instruction.argval)
        if chain:
            chains[tuple(chain)] = None
        pending += [c for c in current.co_consts if isinstance(c, types.CodeType)]
    known = _REFERENCES[code] = (tuple(chains), frozenset(stores))
    return known
