"""What a function's result depends on besides its arguments: the code it reaches and every
global name that code reads, each classified once and keyed by its class's one rule.

Rule: every global name that the memoized function, or any user function, method or
class it reaches, reads (in its module, through ``module.name`` of a user module, or
through an import in its body) is classified, and each class has one keying rule:

* user code (functions and classes of the user's files, notebooks and ``python -c``)
  is keyed by its code digest and followed: methods, properties and
  ``cached_property``, base classes, closures, defaults, pass-through wrappers;
* modules and library objects (functions, classes, ufuncs, builtins of installed
  packages and the standard library) by qualified reference, checked to resolve back
  to the very object (``_keys.code.reference``);
* values by value (``cachelib.hash``, which follows the functions a value holds:
  partials, decorated helpers, tuples and dicts of functions): plain immutable data
  (numbers, strings, bytes, dates, tuples of them) once, checked by identity after;
  anything else read again at each call (dicts, lists, arrays, frames, objects);
* what cannot be keyed (a lock, a connection) is left out of the key and reported
  (``Reached.unkeyed``): the keyer warns once per function and name, or refuses it
  when strict. ``ignore`` names what the user vouches for.

Nothing is keyed by its type name alone. A traversal is kept per code object and
revalidated at each use by identity checks on every name it resolved (and on the
items of keyword-default dicts, which can change in place).
"""

from __future__ import annotations

import datetime
import enum
import functools
import importlib
import importlib.util
import itertools
import operator
import sys
import types
import uuid
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import xxhash

from .._errors import UnhashableError, warn
from .code import (
    EMPTY_CELL,
    cell_value,
    code_digest,
    code_digests,
    full_name,
    global_references,
    home_module,
    imported_references,
    is_user_class,
    is_user_file,
    is_user_function,
    is_user_module,
    reference,
    underlying,
)
from .encoding import Hasher

__all__ = [
    "REACHED",
    "STRICT",
    "Reached",
    "Reacher",
    "Unkeyed",
    "reached",
    "reached_class",
    "travelling_digests",
    "unkeyed_values",
    "values_digest",
]

_ABSENT = object()
# Not behaviour, or filled in by pickle, abc, typing and dataclasses from what is walked anyway.
_SKIPPED_CLASS_ATTRIBUTES = frozenset({
    "__dict__", "__weakref__", "__doc__", "__module__", "__qualname__", "__slotnames__", "_abc_impl",
    "__annotations__", "__annotate__", "__dataclass_fields__", "__dataclass_params__", "__match_args__",
    "__static_attributes__", "__firstlineno__", "__orig_bases__", "__parameters__", "__type_params__",
    "__abstractmethods__", "__protocol_attrs__", "__non_callable_proto_members__", "_is_protocol",
    "__callable_proto_members_only__", "_is_runtime_protocol",
})
# An enum's own bookkeeping, derived from its members (which are walked, by name and value).
_SKIPPED_ENUM_ATTRIBUTES = _SKIPPED_CLASS_ATTRIBUTES | {
    "_member_map_", "_value2member_map_", "_member_names_", "_new_member_", "_use_args_", "_member_type_",
    "_value_repr_", "_unhashable_values_", "_sort_order_", "_boundary_", "_flag_mask_", "_singles_mask_",
    "_all_bits_", "_inverted_",
}
_PLAIN = (
    type(None), bool, int, float, complex, str, bytes, range, type(Ellipsis), datetime.date, datetime.time,
    datetime.timedelta, datetime.timezone, uuid.UUID,
)
# Plain too, named rather than imported (``import cachelib`` does not load them): a value of
# one exists only once its module is loaded, and its class is then that module's own.
_PLAIN_ELSEWHERE = {"decimal": "Decimal", "fractions": "Fraction"}


def _is_plain(value: Any, depth: int = 0) -> bool:
    """True for immutable data that holds no code: hashed once, identity-checked after."""
    kind = type(value)
    if kind in _PLAIN:
        return True
    home = _PLAIN_ELSEWHERE.get(kind.__module__)
    if home is not None and kind is getattr(sys.modules.get(kind.__module__), home, None):
        return True
    if isinstance(value, np.generic):
        return not isinstance(value, (np.void, np.object_))
    if kind in (tuple, frozenset) and depth < 8:
        return all(_is_plain(item, depth + 1) for item in value)
    return False


def _pair_getter(names: list[str]) -> Callable[[Any], tuple[Any, ...]]:
    """``itemgetter`` that always returns a tuple (one name asked twice)."""
    return operator.itemgetter(*names) if len(names) > 1 else operator.itemgetter(names[0], names[0])


@dataclass(frozen=True)
class Unkeyed:
    """A global name the key cannot cover, and why."""

    label: str
    reason: str


class Reached:
    """What a function (or class) reaches: a digest, values to hash at each call, and the checks.

    ``digest`` covers the code, references and plain constants; ``values`` are the
    objects read again at every call (label and object); ``parts`` name each piece
    for ``explain``; ``unkeyed`` what no rule covers. ``is_current()`` is True while
    every resolved name still holds the object it held.
    """

    __slots__ = ("__weakref__", "_checks", "codes", "digest", "parts", "unkeyed", "values")

    def __init__(
        self, digest: bytes, parts: dict[str, str], values: tuple[tuple[str, Any], ...],
        unkeyed: tuple[Unkeyed, ...], checks: list[tuple[Any, Any, Any]], codes: tuple[types.CodeType, ...],
    ) -> None:
        self.digest = digest
        self.parts = parts
        self.values = values
        self.unkeyed = unkeyed
        self.codes = codes  # the code of the user functions reached (not the root's own)
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


def _kwdefault_items(func: types.FunctionType) -> tuple[Any, ...]:
    """A function's keyword defaults, flattened: ``__kwdefaults__[...] = ...`` changes them in place."""
    return tuple(itertools.chain.from_iterable((func.__kwdefaults__ or {}).items()))


def _has_length(mapping: Any, length: int) -> bool:
    """True while a class has as many attributes as when walked (none added or deleted)."""
    return len(mapping.keys() - _SKIPPED_CLASS_ATTRIBUTES) == length


def _short(value: Any) -> str:
    hasher = Hasher()
    hasher.update(value)
    return hasher.digest().hex()[:12]


class _Walk:
    """One traversal from a root function or class through everything it reaches."""

    def __init__(self, ignore: frozenset[str], follow: Reacher) -> None:
        self.ignore = ignore
        self.follow = follow
        self.parts: dict[str, str] = {}
        self.values: dict[str, Any] = {}
        self.unkeyed: dict[str, Unkeyed] = {}
        self.seen: set[int] = set()  # ids of functions and classes walked (each kept alive by a check)
        self.codes: list[types.CodeType] = []
        self.reads: dict[int, tuple[Any, dict[str, Any], set[str]]] = {}  # namespace -> (ns, present, absent)
        self.checks: list[tuple[Any, Any, Any]] = []  # (getter, target, expected tuple or True)
        self.home: dict[str, Any] | None = None  # the root's globals

    def result(self) -> Reached:
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
            digest.update(label.encode() + b"\0" + self.parts[label].encode() + b"\0")
        for label in sorted(self.values):
            digest.update(label.encode() + b"\0")
        values = tuple(sorted(self.values.items()))
        return Reached(digest.digest(), self.parts, values, tuple(self.unkeyed.values()), self.checks,
                       tuple(self.codes))

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

    def _name(self, obj: Any) -> str:
        """How labels name a function or class: bare in the root's module, ``module.name`` elsewhere."""
        home = self.home.get("__name__") if self.home is not None else None
        return str(obj.__qualname__) if obj.__module__ == home else full_name(obj)

    # -- where names are read --------------------------------------------------------------

    def code(self, code: types.CodeType, namespace: dict[str, Any], module: str) -> None:
        """Classify every global ``code`` reads in ``namespace`` (a function's ``__globals__``), and
        what the imports in its body bring in.

        Names of the root function's own module are labelled bare, others ``module.name``.
        """
        if self.home is None:
            self.home = namespace
        bare = namespace is self.home
        chains, _ = global_references(code)
        for chain in chains:
            value = self._read(namespace, chain[0])
            if value is not _ABSENT:
                self.classify(value, chain[0] if bare else f"{module}.{chain[0]}", "global", chain[1:])
        for level, name, attributes in imported_references(code):
            imported = self._import(level, name, namespace)
            if imported is not None:
                self.classify(imported, imported.__name__, "import", attributes)

    def _import(self, level: int, name: str, namespace: dict[str, Any]) -> types.ModuleType | None:
        """The module an import in a function's body names (imported now if it is the user's)."""
        package = namespace.get("__package__") or namespace.get("__name__", "")
        try:
            absolute = importlib.util.resolve_name("." * level + name, package) if level else name
            module = sys.modules.get(absolute)
            if module is None:
                spec = importlib.util.find_spec(absolute)
                origin = getattr(spec, "origin", None)
                locations = list(getattr(spec, "submodule_search_locations", None) or ())
                paths = [origin] if isinstance(origin, str) else locations
                if not paths or not all(is_user_file(path) for path in paths):
                    return None  # a library module, not imported yet: the body's code names it
                module = importlib.import_module(absolute)  # the call imports it anyway
        except (ImportError, ValueError, AttributeError) as exc:
            self.unkeyed[f"import {name}"] = Unkeyed(f"import {name}", f"cannot be imported here ({exc})")
            return None
        return module

    # -- what a name can hold --------------------------------------------------------------

    def classify(self, value: Any, label: str, kind: str, attributes: tuple[str, ...] = ()) -> None:
        """Key ``value``, read under ``label`` (a global, a class attribute, a default ...)."""
        if label in self.ignore:
            return
        if isinstance(value, types.ModuleType):
            if attributes and is_user_module(value):
                inner = self._read(value.__dict__, attributes[0])
                if inner is not _ABSENT:
                    self.classify(inner, f"{label}.{attributes[0]}", "global", attributes[1:])
            elif not is_user_module(value):
                self.parts[f"library {label}"] = value.__name__
            return
        if _is_plain(value):
            self.parts[f"{'constant' if kind in ('global', 'import') else kind} {label}"] = _short(value)
            return
        target = underlying(value)
        if isinstance(target, types.FunctionType) and is_user_function(target):
            self.function(target)
        elif isinstance(target, type) and is_user_class(target):
            self.cls(target)
        elif isinstance(value, enum.Enum) and is_user_class(type(value)):
            self.cls(type(value))
            self.classify(value._value_, f"{label}.value", kind)
        elif isinstance(value, types.MethodType) and is_user_function(value.__func__):
            self.function(value.__func__)  # type: ignore[arg-type]
            self.classify(value.__self__, f"{label}.__self__", kind)
        elif _is_library(target) and (name := reference(target)) is not None:
            self.parts[f"library {label}"] = name
        elif type(value) is tuple:  # fixed members, each classified (a tuple of helpers)
            for index, item in enumerate(value):
                self.classify(item, f"{label}[{index}]", kind)
        else:
            if is_user_class(type(value)):
                self.cls(type(value))  # its methods and class attributes, named in parts
            self._value(value, label, kind)

    def _value(self, value: Any, label: str, kind: str) -> None:
        """Key ``value`` by its content, read again at every call; what cannot be hashed is reported."""
        try:
            hasher = Hasher(self.follow)
            hasher.update(value)
        except UnhashableError as exc:
            self.unkeyed[label] = Unkeyed(label, str(exc))
            return
        self.values[f"{kind} {label}"] = value

    def function(self, func: types.FunctionType, root: bool = False) -> None:
        if id(func) in self.seen:
            return
        self.seen.add(id(func))
        code = func.__code__
        name = self._name(func)
        if not root:  # the root's code is the key of the table that keeps this walk: never in it
            self.codes.append(code)
            self.checks.append((_FUNCTION_ATTRIBUTES, func, _FUNCTION_ATTRIBUTES(func)))
            self.parts[f"helper {full_name(func)}"] = code_digest(code).hex()[:12]
            defaults = func.__defaults__ or ()
            parameters = code.co_varnames[code.co_argcount - len(defaults) : code.co_argcount]
            for parameter, default in zip(parameters, defaults):
                self.classify(default, f"{name}.<default {parameter}>", "default")
            if func.__kwdefaults__:
                self.checks.append((_kwdefault_items, func, _kwdefault_items(func)))
                for key, default in func.__kwdefaults__.items():
                    self.classify(default, f"{name}.<default {key}>", "default")
        module = func.__module__ if isinstance(func.__module__, str) else "?"
        self.code(code, func.__globals__, module)
        registry = getattr(func, "registry", None)
        if isinstance(registry, types.MappingProxyType):  # singledispatch: every implementation
            for implementation in registry.values():
                self.classify(implementation, name, "global")
        elif not root:
            for cell, variable in zip(func.__closure__ or (), code.co_freevars):
                contents = cell_value(cell)
                if contents is not EMPTY_CELL:
                    self.checks.append((_CELL, cell, (contents, contents)))
                    self.classify(contents, f"{name}.<closure {variable}>", "closure")

    def cls(self, cls: type) -> None:
        if id(cls) in self.seen:
            return
        self.seen.add(id(cls))
        namespace = vars(cls)
        skipped = _SKIPPED_ENUM_ATTRIBUTES if isinstance(cls, enum.EnumMeta) else _SKIPPED_CLASS_ATTRIBUTES
        names = [name for name in namespace if name not in skipped]
        if names:
            values = tuple(namespace[name] for name in names)
            self.checks.append((_pair_getter(names), namespace, values * (2 if len(names) == 1 else 1)))
        self.checks.append((functools.partial(_has_length, length=len(names)), namespace, True))
        bases = tuple(full_name(base) for base in cls.__mro__)
        self.parts[f"class {full_name(cls)}"] = _short((bases, sorted(names)))
        prefix = self._name(cls)
        for name in names:
            if f"{cls.__qualname__}.{name}" in self.ignore or f"{full_name(cls)}.{name}" in self.ignore:
                continue  # ``ignore=["Class.attr"]``, wherever the class is met
            for item in _members(namespace[name]):
                self.classify(item, f"{prefix}.{name}", "attribute")
        for base in cls.__bases__:
            if is_user_class(base):
                self.cls(base)


def _is_library(obj: Any) -> bool:
    """True for an object that says it comes from an installed package or the standard library.

    A wrapper made by ``functools.wraps`` says it comes from the module of what it wraps:
    a user's helper under a library decorator is not a library object.
    """
    module = sys.modules.get(home_module(obj) or "")
    return module is not None and not is_user_module(module) and not is_user_class(type(obj))


def _members(member: Any) -> Iterable[Any]:
    """What a class attribute runs or holds: a property's accessors, a cached property's function."""
    if isinstance(member, property):
        return [item for item in (member.fget, member.fset, member.fdel) if item is not None]
    if isinstance(member, functools.cached_property):
        return [member.func]
    return [member]


# -- the traversals, kept and revalidated -----------------------------------------------------


_BY_CODE: weakref.WeakKeyDictionary[types.CodeType, tuple[Any, frozenset[str], Reached]]
_BY_CODE = weakref.WeakKeyDictionary()
_BY_CLASS: weakref.WeakKeyDictionary[type, tuple[frozenset[str], Reached]] = weakref.WeakKeyDictionary()
_NOTHING: frozenset[str] = frozenset()


def reached(func: types.FunctionType, ignore: frozenset[str] = _NOTHING) -> Reached:
    """Return what ``func`` reaches (current), reusing the last traversal while it holds.

    The function's own closure and defaults are not part of it: its caller hashes them
    with its arguments, at each call. ``ignore`` names globals left out.
    """
    known = _BY_CODE.get(func.__code__)
    if known is not None and known[0] is func.__globals__ and known[1] == ignore and known[2].is_current():
        return known[2]
    walk = _Walk(ignore, Reacher(ignore=ignore))
    walk.function(func, root=True)
    result = walk.result()
    _BY_CODE[func.__code__] = (func.__globals__, ignore, result)
    return result


def reached_class(cls: type, ignore: frozenset[str] = _NOTHING) -> Reached | None:
    """Return what one of the user's classes reaches (current), else None."""
    try:
        if not is_user_class(cls):
            return None
        known = _BY_CLASS.get(cls)
        if known is not None and known[0] == ignore and known[1].is_current():
            return known[1]
        walk = _Walk(ignore, Reacher(ignore=ignore))
        walk.cls(cls)
        result = walk.result()
        _BY_CLASS[cls] = (ignore, result)
        return result
    except TypeError:  # a class that refuses weak references or inspection: by name only
        return None


_reported: set[tuple[str, str]] = set()


def travelling_digests(func: types.FunctionType) -> dict[bytes, bytes]:
    """The code digests of ``func`` and of the user code it reaches, for a process it is sent to by value."""
    return code_digests([func.__code__, *reached(func).codes])


def unkeyed_values(where: str, missing: Iterable[Unkeyed], strict: bool) -> None:
    """Say (once per function and name) that globals are left out of a key, or refuse them when strict."""
    missing = list(missing)
    if not missing:
        return
    if strict:
        first = missing[0]
        raise UnhashableError(
            f"{where} reads `{first.label}`, which cannot be part of its key ({first.reason}); "
            f"pass ignore=[{first.label!r}] if its results do not depend on it"
        )
    fresh = [item for item in missing if (where, item.label) not in _reported]
    if not fresh:
        return
    _reported.update((where, item.label) for item in fresh)
    names = ", ".join(f"`{item.label}` ({item.reason})" for item in fresh)
    labels = [item.label for item in fresh]
    warn(
        f"{where} reads {names}: left out of its key, so a change there is not seen; "
        f"pass ignore={labels!r} to say its results do not depend on them, or Cache(strict=True) "
        "to refuse such functions"
    )


def values_digest(result: Reached, follow: Reacher, where: str) -> bytes:
    """The digest of what ``result`` reads at each call, as it is now (b"" when nothing)."""
    if not result.values:
        return b""
    hasher = Hasher(follow)
    try:
        hasher.update(tuple(value for _, value in result.values))
    except UnhashableError as exc:  # a value that became unhashable since the walk
        unkeyed_values(where, [Unkeyed(result.values[0][0], str(exc))], follow.strict)
        return b"!"
    return hasher.digest()


class Reacher:
    """The ``Follow`` of hashers that key functions and classes by everything they reach.

    ``strict`` refuses (``UnhashableError``) a function that reads a global no rule can
    key, instead of warning once and leaving it out; ``ignore`` names globals and class
    attributes (``Class.attr``) left out wherever they are read.
    """

    def __init__(self, strict: bool = False, ignore: frozenset[str] = _NOTHING) -> None:
        self.strict = strict
        self.ignore = ignore

    def function_digest(self, func: types.FunctionType) -> bytes:
        """``func``'s code and everything it reaches, values as they are now."""
        result = reached(func, self.ignore)
        where = full_name(func)
        unkeyed_values(where, result.unkeyed, self.strict)
        return code_digest(func.__code__) + result.digest + values_digest(result, self, where)

    def class_digest(self, cls: type) -> bytes | None:
        """One of the user's classes and everything it reaches; None for other classes."""
        result = reached_class(cls, self.ignore)
        if result is None:
            return None
        where = full_name(cls)
        unkeyed_values(where, result.unkeyed, self.strict)
        return result.digest + values_digest(result, self, where)


REACHED = Reacher()
STRICT = Reacher(strict=True)
