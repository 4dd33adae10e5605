"""Code identity: which code a callable runs, whose code it is, and what globals it names.

Rule: pure functions of code objects and callables, with no notion of values or
keys above them (``_keys.encoding`` hashes values, ``_keys.reach`` follows what code
reaches). A code digest changes whenever the behaviour of the code can change and
never with line numbers or the file name (nor, where the source is at hand, with the
Python version: ``_keys.source``); it is computed once per code object.
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
from collections.abc import Iterable
from typing import Any

import xxhash

from .source import source_digest

__all__ = [
    "EMPTY_CELL",
    "LIBRARY_ROOTS",
    "adopt_digests",
    "bytecode_digest",
    "cell_value",
    "code_digest",
    "code_digests",
    "full_name",
    "global_references",
    "home_module",
    "imported_references",
    "is_user_class",
    "is_user_file",
    "is_user_function",
    "is_user_module",
    "module_name",
    "passes_through",
    "reference",
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
    paths.add(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # cachelib itself
    return tuple(os.path.join(os.path.realpath(path), "") for path in paths if path)


LIBRARY_ROOTS = _library_roots()
"""Where the standard library, installed packages and cachelib live (real paths ending in a separator)."""


@functools.lru_cache(maxsize=4096)
def is_user_file(filename: str) -> bool:
    """True for code the user wrote: not the standard library, installed packages or cachelib.

    Code without a file (``exec``, notebook cells, ``python -c``) is the user's;
    frozen modules are the standard library's.
    """
    if filename.startswith("<"):
        return not filename.startswith("<frozen")
    return not os.path.realpath(filename).startswith(LIBRARY_ROOTS)


def is_user_function(func: Any) -> bool:
    """True for a Python function whose code is the user's."""
    return isinstance(func, types.FunctionType) and is_user_file(func.__code__.co_filename)


def is_user_module(module: types.ModuleType) -> bool:
    """True for a module loaded from one of the user's files, or a namespace package of the user's.

    A namespace package (a directory without ``__init__.py``) has no file: it is the
    user's when every directory it spans is.
    """
    filename = getattr(module, "__file__", None)
    if isinstance(filename, str):
        return is_user_file(filename)
    paths = list(getattr(module, "__path__", None) or ())
    return bool(paths) and all(isinstance(path, str) and is_user_file(path) for path in paths)


def is_user_class(cls: type) -> bool:
    """True for a class of the user's code: of a user module, or of ``__main__``.

    A ``__main__`` without a file is a notebook or ``python -c``: every class defined
    there is the user's, methods or not; so is a class of a module that is not
    loaded (code run by ``exec`` under a name of its own).
    """
    module_name = getattr(cls, "__module__", None) or ""
    module = sys.modules.get(module_name)
    if module is not None and is_user_module(module):
        return True
    if module_name in ("__main__", "__mp_main__"):
        return module is None or not isinstance(getattr(module, "__file__", None), str)
    return module is None  # code run by exec under a module name of its own


def home_module(obj: Any) -> str | None:
    """The module an object says it comes from; a builtin type's slot (``int.__format__``) by its type's."""
    module = getattr(obj, "__module__", None)
    if not isinstance(module, str):
        module = getattr(getattr(obj, "__objclass__", None), "__module__", None)
    return module if isinstance(module, str) else None


def reference(obj: Any) -> str | None:
    """Return ``module.qualname`` of a function, class, ufunc or builtin that names it, else None.

    The name is checked to resolve back to ``obj`` itself (so that a name its pickle
    reducer gives cannot stand for another object: two ``np.frompyfunc`` ufuncs, a
    class made at run time).
    """
    module = home_module(obj)
    qualname = getattr(obj, "__qualname__", None)
    if not isinstance(qualname, str):
        qualname = getattr(obj, "__name__", None)
    if not isinstance(module, str) or not isinstance(qualname, str) or "<" in qualname:
        return None
    target: Any = sys.modules.get(module)
    for part in qualname.split("."):
        target = getattr(target, part, None)
    return f"{module}.{qualname}" if target is obj else None


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

class _ByIdentity:
    """A value per code object, found by identity: equal code objects can have different sources
    (a weak dictionary would find them by equality)."""

    def __init__(self) -> None:
        self._values: dict[int, tuple[weakref.ref[types.CodeType], bytes]] = {}

    def get(self, code: types.CodeType) -> bytes | None:
        known = self._values.get(id(code))
        return known[1] if known is not None and known[0]() is code else None

    def __setitem__(self, code: types.CodeType, value: bytes) -> None:
        key = id(code)
        self._values[key] = (weakref.ref(code, lambda _: self._values.pop(key, None)), value)


_CODE_DIGESTS = _ByIdentity()
_BYTECODE_DIGESTS: weakref.WeakKeyDictionary[types.CodeType, bytes] = weakref.WeakKeyDictionary()


def _framed(tag: bytes, data: bytes) -> bytes:
    return tag + len(data).to_bytes(8, "little") + data


def _constant(value: Any) -> bytes:
    """Encode one of the constants a code object can hold (nested code by its digest)."""
    if isinstance(value, types.CodeType):
        return b"K" + bytecode_digest(value)
    if type(value) is tuple:
        return _framed(b"(", b"".join(_constant(item) for item in value))
    if type(value) is frozenset:  # sorted: the order of a frozenset depends on the hash seed
        return _framed(b"Z", b"".join(sorted(_constant(item) for item in value)))
    return _framed(type(value).__name__.encode(), repr(value).encode())


def code_digest(code: types.CodeType) -> bytes:
    """Return the 16-byte digest of what decides a code object's behaviour.

    Its normalized source where that is the source of the running code (``_keys.source``:
    the same under every Python version), else its bytecode (``bytecode_digest``).
    Never line numbers or the file name: moving a function within its file keeps its
    entries.
    """
    known = _CODE_DIGESTS.get(code)
    if known is None:
        known = source_digest(code, bytecode_digest)
        if known is None:
            bytecode = bytecode_digest(code)
            known = _ADOPTED.get(bytecode, bytecode)
        _CODE_DIGESTS[code] = known
    return known


_ADOPTED: dict[bytes, bytes] = {}  # bytecode digest -> the code digest the process that sent it had


def adopt_digests(digests: dict[bytes, bytes]) -> None:
    """Take the code digests of code received by value from another process (``code_digests``).

    cloudpickle sends a script's functions without their file name, so their source
    cannot be read here: the sender's digest of the same bytecode stands for it, and
    both processes key the code alike.
    """
    _ADOPTED.update(digests)


def code_digests(codes: Iterable[types.CodeType]) -> dict[bytes, bytes]:
    """The code digests of ``codes`` and of their nested code, by bytecode digest (``adopt_digests``)."""
    table: dict[bytes, bytes] = {}
    pending = list(codes)
    while pending:
        code = pending.pop()
        table[bytecode_digest(code)] = code_digest(code)
        pending += [c for c in code.co_consts if isinstance(c, types.CodeType)]
    return table


def bytecode_digest(code: types.CodeType) -> bytes:
    """Return the 16-byte digest of a code object's bytecode and what it refers to.

    Bytecode, exception table (3.11+), argument counts, flags, names and constants
    (nested code objects by their own digest); it changes between Python minor versions.
    """
    known = _BYTECODE_DIGESTS.get(code)
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
    digest = _BYTECODE_DIGESTS[code] = xxhash.xxh3_128_digest(b"B" + encoded)
    return digest


_IMPORTS: weakref.WeakKeyDictionary[types.CodeType, tuple[tuple[int, str, tuple[str, ...]], ...]]
_IMPORTS = weakref.WeakKeyDictionary()
_IMPORT = "IMPORT_NAME"
_LOCAL_STORES = frozenset({"STORE_FAST", "STORE_NAME", "STORE_DEREF"})
_LOCAL_LOADS = frozenset({"LOAD_FAST", "LOAD_NAME", "LOAD_DEREF", "LOAD_FAST_CHECK", "LOAD_CLOSURE"})


def imported_references(code: types.CodeType) -> tuple[tuple[int, str, tuple[str, ...]], ...]:
    """Return what the imports in ``code``'s body bring in and how it is used.

    Each item is ``(level, module, attributes)``: ``from helpers import h`` gives
    ``(0, "helpers", ("h",))``; ``import helpers`` and a later ``helpers.tools.h``
    give ``(0, "helpers", ("tools", "h"))``; ``level`` counts the dots of a relative
    import. Nested functions' imports are included.
    """
    known = _IMPORTS.get(code)
    if known is not None:
        return known
    found: dict[tuple[int, str, tuple[str, ...]], None] = {}
    pending = [code]
    while pending:
        current = pending.pop()
        instructions = list(dis.get_instructions(current))
        bound: dict[str, tuple[int, str, tuple[str, ...]]] = {}  # local name -> what it holds
        importing: tuple[int, str, tuple[str, ...]] | None = None  # the import being bound
        from_list = False
        for index, instruction in enumerate(instructions):
            name = instruction.opname
            if name == _IMPORT:
                level = instructions[index - 2].argval if index >= 2 else 0
                level = level if isinstance(level, int) else 0
                from_list = index >= 1 and instructions[index - 1].argval is not None
                module = str(instruction.argval)
                # ``import a.b`` imports a.b and binds the top package; ``from . import x`` reads x of
                # the package.
                found[(level, module, ())] = None
                importing = (level, module if from_list or level else module.split(".")[0], ())
                found[importing] = None
            elif name == "IMPORT_FROM" and importing is not None:
                level, module, attributes = importing
                target: tuple[int, str, tuple[str, ...]]
                if from_list:  # ``from m import x``: each name on its own
                    target = (level, module, (str(instruction.argval),))
                else:  # ``import a.b as c``: the names walk down from the top package
                    target = importing = (level, module, (*attributes, str(instruction.argval)))
                found[target] = None
                following = instructions[index + 1] if index + 1 < len(instructions) else None
                if following is not None and following.opname in _LOCAL_STORES:
                    bound[str(following.argval)] = target
            elif importing and name in _LOCAL_STORES and instructions[index - 1].opname == _IMPORT:
                bound[str(instruction.argval)] = importing  # ``import m``: the local holds m
            elif name in _LOCAL_LOADS and instruction.argval in bound:
                level, module, attributes = bound[instruction.argval]
                chain = []
                for later in instructions[index + 1 :]:
                    if later.opname not in _ATTRIBUTE_LOADS:
                        break
                    chain.append(str(later.argval))
                found[(level, module, (*attributes, *chain))] = None
        pending += [c for c in current.co_consts if isinstance(c, types.CodeType)]
    known = _IMPORTS[code] = tuple(found)
    return known


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
