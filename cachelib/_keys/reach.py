"""What a function's result depends on besides its arguments: its code, and the helpers
and constants it reaches through its globals.

Rule: a function's digest changes whenever the code that can run in a call or a
simple constant it reads can change, and costs a few identity checks when nothing
did. Tracked, transitively and within the user's own code (not the standard library,
installed packages or cachelib): functions and classes named in globals (also as
``module.name`` of a user module, or through ``lru_cache``/``memoize`` wrappers), the
methods and bases of those classes, the class of an object named in globals, the
functions and constants held by a helper's closure, and the values of simple
immutable constants (numbers, strings, bytes, ``None``, ranges, enum members, tuples
and frozensets of them). Not tracked: mutable globals (lists, dicts, arrays, objects'
state), globals the function assigns itself, and anything reached only through
attributes of objects. A digest is cached per code object and revalidated at each
use by checking that every name it resolved still holds the same object.
"""

from __future__ import annotations

import enum
import functools
import operator
import types
import weakref
from collections.abc import Callable
from typing import Any

import numpy as np
import xxhash

from .code import (
    EMPTY_CELL,
    cell_value,
    code_digest,
    full_name,
    global_references,
    is_user_class,
    is_user_function,
    is_user_module,
    underlying,
)
from .encoding import Hasher

__all__ = ["REACHED", "Tracked", "class_digest", "function_digest", "tracked"]

_ABSENT = object()
# Not behaviour, or caches that pickle and abc fill in later (``__slotnames__``, ``_abc_impl``).
_SKIPPED_CLASS_ATTRIBUTES = frozenset(
    {"__dict__", "__weakref__", "__doc__", "__module__", "__qualname__", "__slotnames__", "_abc_impl"}
)
_SIMPLE = (type(None), bool, int, float, complex, str, bytes, range, type(Ellipsis))


def _is_simple(value: Any, depth: int = 0) -> bool:
    kind = type(value)
    if kind in _SIMPLE or (isinstance(value, np.generic) and not isinstance(value, np.void)):
        return True
    if isinstance(value, enum.Enum):
        return _is_simple(value._value_, depth + 1)
    if kind in (tuple, frozenset) and depth < 8:
        return all(_is_simple(item, depth + 1) for item in value)
    return False


# -- tracking -------------------------------------------------------------------------------


def _pair_getter(names: list[str]) -> Callable[[Any], tuple[Any, ...]]:
    """``itemgetter`` that always returns a tuple (one name asked twice)."""
    return operator.itemgetter(*names) if len(names) > 1 else operator.itemgetter(names[0], names[0])


class Tracked:
    """The digest of everything a function reaches, and the checks that keep it current.

    ``parts`` names each tracked helper, class and constant with its digest (for
    ``explain``); ``is_current()`` is True while every resolved name still holds
    the object it held.
    """

    __slots__ = ("__weakref__", "_checks", "digest", "parts")

    def __init__(
        self, digest: bytes, parts: dict[str, bytes], checks: list[tuple[Any, Any, Any]]
    ) -> None:
        self.digest = digest
        self.parts = parts
        self._checks = checks

    def is_current(self) -> bool:
        """True while nothing this digest was made of was rebound, replaced or edited."""
        try:
            for getter, target, expected in self._checks:
                if expected is True:  # a predicate
                    if not getter(target):
                        return False
                elif not all(map(operator.is_, getter(target), expected)):
                    return False
        except Exception:  # a name deleted, a cell emptied: recompute
            return False
        return True


_FUNCTION_ATTRIBUTES = operator.attrgetter("__code__", "__defaults__", "__kwdefaults__")
_CELL = operator.attrgetter("cell_contents", "cell_contents")


def _has_length(mapping: Any, length: int) -> bool:
    """True while a class has as many attributes as when walked (none added or deleted)."""
    return len(mapping.keys() - _SKIPPED_CLASS_ATTRIBUTES) == length


class _Walk:
    """One traversal from a root function or class through everything it reaches."""

    def __init__(self) -> None:
        self.parts: dict[str, bytes] = {}
        self.seen: set[int] = set()  # ids of functions and classes walked (each kept alive by a check)
        self.reads: dict[int, tuple[Any, dict[str, Any], set[str]]] = {}  # namespace -> (ns, present, absent)
        self.checks: list[tuple[Any, Any, Any]] = []  # (getter, target, expected tuple or True)
        self.home: dict[str, Any] | None = None  # the root's globals

    def result(self) -> Tracked:
        for namespace, present, absent in self.reads.values():
            if present:
                names = list(present)
                self.checks.append((_pair_getter(names), namespace, tuple(present[n] for n in names) * (
                    2 if len(names) == 1 else 1)))
            if absent:
                # Still absent (a builtin not shadowed): one C-level test.
                disjoint = operator.methodcaller("isdisjoint", frozenset(absent))
                self.checks.append((disjoint, namespace.keys(), True))
        digest = xxhash.xxh3_128()
        for label in sorted(self.parts):
            digest.update(label.encode() + b"\0" + self.parts[label])
        return Tracked(digest.digest(), self.parts, self.checks)

    def _read(self, namespace: Any, name: str) -> Any:
        """Look ``name`` up in a namespace and remember what it held (or that it was absent)."""
        entry = self.reads.get(id(namespace))
        if entry is None:
            entry = self.reads[id(namespace)] = (namespace, {}, set())
        value = namespace.get(name, _ABSENT)
        if value is _ABSENT:
            entry[2].add(name)
        else:
            entry[1][name] = value
        return value

    # -- what a name can hold ---------------------------------------------------------

    def code(self, code: types.CodeType, namespace: dict[str, Any], module: str) -> None:
        """Follow every global ``code`` reads in ``namespace`` (a function's ``__globals__``).

        Names of the root function's own module are labelled bare, others ``module.name``.
        """
        if self.home is None:
            self.home = namespace
        chains, stores = global_references(code)
        for chain in chains:
            if chain[0] in stores:
                continue  # state the function writes itself, not a constant
            value = self._read(namespace, chain[0])
            if value is not _ABSENT:
                self.value(value, chain[0] if namespace is self.home else f"{module}.{chain[0]}", chain[1:])

    def value(self, value: Any, label: str, attributes: tuple[str, ...] = ()) -> None:
        if isinstance(value, types.ModuleType):
            if attributes and is_user_module(value):
                inner = self._read(value.__dict__, attributes[0])
                if inner is not _ABSENT:
                    self.value(inner, f"{label}.{attributes[0]}", attributes[1:])
            return
        if _is_simple(value):
            hasher = Hasher()
            hasher.update(value)
            self.parts[f"constant {label}"] = hasher.digest()
            return
        value = underlying(value)
        if isinstance(value, (types.MethodType, functools.partial)):
            self.value(getattr(value, "__func__", None) or getattr(value, "func", None), label)
        elif isinstance(value, types.FunctionType):
            if is_user_function(value):
                self.function(value)
        elif isinstance(value, type):
            if is_user_class(value):
                self.cls(value)
        elif is_user_class(type(value)):
            self.cls(type(value))  # an object's class, not its (mutable) state

    def function(self, func: types.FunctionType, root: bool = False) -> None:
        if id(func) in self.seen:
            return
        self.seen.add(id(func))
        code = func.__code__
        if not root:
            self.checks.append((_FUNCTION_ATTRIBUTES, func, _FUNCTION_ATTRIBUTES(func)))
            hasher = Hasher()
            hasher._put(code_digest(code))
            defaults = (func.__defaults__ or ()) + tuple((func.__kwdefaults__ or {}).items())
            hasher.update(tuple(d if _is_simple(d) else full_name(type(d)) for d in defaults))
            self.parts[f"helper {full_name(func)}"] = hasher.digest()
        module = func.__module__ if isinstance(func.__module__, str) else "?"
        self.code(code, func.__globals__, module)
        registry = getattr(func, "registry", None)
        if isinstance(registry, types.MappingProxyType):  # singledispatch: every implementation
            for implementation in registry.values():
                self.value(implementation, full_name(func))
        elif not root:
            for cell, name in zip(func.__closure__ or (), code.co_freevars):
                contents = cell_value(cell)
                if contents is not EMPTY_CELL:
                    self.checks.append((_CELL, cell, (contents, contents)))
                    self.value(contents, f"{full_name(func)}.<closure {name}>")

    def cls(self, cls: type) -> None:
        if id(cls) in self.seen:
            return
        self.seen.add(id(cls))
        namespace = vars(cls)
        names = [name for name in namespace if name not in _SKIPPED_CLASS_ATTRIBUTES]
        if names:
            values = tuple(namespace[name] for name in names)
            self.checks.append((_pair_getter(names), namespace, values * (2 if len(names) == 1 else 1)))
        self.checks.append((functools.partial(_has_length, length=len(names)), namespace, True))
        hasher = Hasher()
        hasher.update(tuple(full_name(base) for base in cls.__mro__))
        label = full_name(cls)
        for name in sorted(names):
            member = namespace[name]
            hasher.update(name)
            if isinstance(member, property):
                member = (member.fget, member.fset, member.fdel)
            functions = member if isinstance(member, tuple) else (underlying(member),)
            for item in functions:
                if isinstance(item, types.FunctionType):
                    hasher._put(b"K" + code_digest(item.__code__))
                    if is_user_function(item):
                        self.function(item)
                elif _is_simple(item):
                    hasher.update(item)
                elif isinstance(item, type) and is_user_class(item):
                    self.cls(item)
                    hasher.update(full_name(item))
                else:
                    hasher.update(full_name(type(item)))
        self.parts[f"class {label}"] = hasher.digest()
        for base in cls.__bases__:
            if is_user_class(base):
                self.cls(base)


_BY_CODE: weakref.WeakKeyDictionary[types.CodeType, tuple[Any, Tracked]] = weakref.WeakKeyDictionary()
_BY_CLASS: weakref.WeakKeyDictionary[type, Tracked] = weakref.WeakKeyDictionary()


def tracked(func: types.FunctionType) -> Tracked:
    """Return what ``func`` reaches (current), reusing the last traversal while it holds.

    A function's own closure and defaults are values, hashed at each call by the
    caller; the helpers' closures and defaults are part of this digest.
    """
    known = _BY_CODE.get(func.__code__)
    if known is not None and known[0] is func.__globals__ and known[1].is_current():
        return known[1]
    walk = _Walk()
    walk.function(func, root=True)
    result = walk.result()
    _BY_CODE[func.__code__] = (func.__globals__, result)
    return result


def function_digest(func: types.FunctionType) -> bytes:
    """Return the digest of ``func``'s code and of every helper and constant it reaches."""
    return code_digest(func.__code__) + tracked(func).digest


def class_digest(cls: type) -> bytes | None:
    """Return the digest of one of the user's classes (methods, bases, constants), else None."""
    try:
        if not is_user_class(cls):
            return None
        known = _BY_CLASS.get(cls)
        if known is not None and known.is_current():
            return known.digest
        walk = _Walk()
        walk.cls(cls)
        result = walk.result()
        _BY_CLASS[cls] = result
        return result.digest
    except TypeError:  # a class that refuses weak references or inspection: by name only
        return None


class _Reached:
    """The ``Follow`` of hashers that key functions and classes by everything they reach."""

    def function_digest(self, func: types.FunctionType) -> bytes:
        return function_digest(func)

    def class_digest(self, cls: type) -> bytes | None:
        return class_digest(cls)


REACHED = _Reached()
