"""Call identity: which function is called (name, code, state) and with what (bound arguments).

Rule: two calls get the same key only when they run the same code, in the same
state, on interchangeable arguments. Arguments are bound with the signature of what
runs (a ``functools.wraps`` wrapper's own, not the wrapped function's), so passing a
value by position or by keyword, or leaving a default out, gives one key. Everything
a call can depend on is read *at the call*: the function's current ``__code__`` and
defaults, its closure values, a bound method's ``self``, a partial's arguments, a
callable object's attributes, and the helpers and constants it reaches
(``_keys.reach``). An edit misses; a reverted edit hits its old entries again.
"""

from __future__ import annotations

import functools
import inspect
import itertools
import operator
import os
import re
import sys
import types
from collections.abc import Callable, Iterable
from typing import Any, cast

import xxhash

from .._errors import InvalidOptionError, UnhashableError
from .code import cell_value, code_digest, full_name, global_references, module_name, passes_through
from .declared import NOTHING_DECLARED, Declared
from .encoding import Hasher, scalars_encoding
from .hashing import short_digest
from .reach import Reached, Reacher, reached, unkeyed_values, values_digest

__all__ = ["CallKeyer", "function_identity", "unwrap"]

KEY_VERSION = b"cachelib-key-4"
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")
_NOTEBOOK_FILE = re.compile(r"^<ipython-input-|[/\\]ipykernel_\d+[/\\]|^<string>$|^<stdin>$")


def unwrap(func: Callable[..., Any]) -> Callable[..., Any]:
    """Return the function whose code decides the result (through partials, methods, wrappers)."""
    for _ in range(100):
        if isinstance(func, functools.partial):
            func = func.func
        elif isinstance(func, types.MethodType):
            func = func.__func__
        elif passes_through(func):
            func = cast(Any, func).__wrapped__
        else:
            break
    return func


def script_of(func: Any) -> str:
    """The real path of the script a ``__main__`` function comes from, or ``""``.

    Its code's file when that is a real file (as run, with ``-m``, or in a spawned
    worker), else what a function rebuilt by value in a worker was told it is
    (``__cachelib_script__``: cloudpickle renames the code's file), else
    ``__main__.__file__``; notebooks and ``-c`` have none, and their functions are
    told apart by code alone.
    """
    carried = getattr(func, "__cachelib_script__", None)
    if isinstance(carried, str):
        return carried
    code = getattr(func, "__code__", None)
    filename = getattr(code, "co_filename", "") or ""
    if filename and not _NOTEBOOK_FILE.search(filename) and os.path.isfile(filename):
        return os.path.realpath(filename)
    main = sys.modules.get("__main__")
    main_file = getattr(main, "__file__", None)
    if isinstance(main_file, str) and getattr(func, "__globals__", None) is vars(main):
        return os.path.realpath(main_file)
    return ""


def _identity_parts(func: Callable[..., Any]) -> tuple[str, str, str]:
    target = unwrap(func)
    module = module_name(target)
    qualname = getattr(target, "__qualname__", None)
    if not isinstance(qualname, str):
        qualname = type(target).__qualname__
    return module, qualname, script_of(target) if module == "__main__" else ""


def function_identity(func: Callable[..., Any]) -> tuple[str, str]:
    """Return ``(readable name, identity hash)`` naming ``func`` across processes.

    The name is ``module.qualname`` made safe for a directory; the hash (of module,
    qualname and, for ``__main__``, the script's path) keeps two functions whose names
    sanitise alike apart, and two scripts' ``__main__.work`` apart, while one script
    run as a file, with ``-m`` or in a spawned worker keeps one identity. Lambdas and
    nested functions of one name share a directory; their code and closure values,
    part of every key, keep their entries apart.
    """
    module, qualname, script = _identity_parts(func)
    dotted = f"{module}.{qualname}".replace("<locals>.", "")
    readable = _UNSAFE.sub("_", dotted.replace("<", "").replace(">", ""))
    readable = readable.strip(".-")[:80] or "function"
    hasher = Hasher()
    hasher.update((module, qualname, script) if script else (module, qualname))
    return readable, hasher.digest().hex()[:12]


def _flat_items(mapping: dict[str, Any] | None) -> tuple[Any, ...]:
    """A dict's keys and values, flattened (keyword defaults change in place)."""
    return tuple(itertools.chain.from_iterable(mapping.items())) if mapping else ()


def _signature_of(func: Callable[..., Any]) -> inspect.Signature | None:
    """The signature of what runs: a wrapper's own; through pass-through wrappers only."""
    while passes_through(func):
        func = cast(Any, func).__wrapped__
    try:
        return inspect.signature(func, follow_wrapped=False)
    except (TypeError, ValueError):
        return None  # a builtin without a signature: hash args and kwargs


class CallKeyer:
    """Turn the arguments of calls to one function into cache keys.

    Keys are 32 hex digits of xxh3-128 over the key version, the function's
    identity, its state at the call and the bound, non-ignored arguments in
    signature order. ``ignore`` names arguments (``"*"``/``"**"`` for the variadic
    ones), closure variables and globals (bare for the function's module, as a
    warning names them otherwise) left out of the key; ``track_callees=False`` keys
    on the function's own code only, not on what it reaches; ``strict`` refuses
    (``UnhashableError``) a function that reads a global no rule can key;
    ``declared`` are the dependencies ``depends_on`` names, read at each call.
    """

    def __init__(
        self, func: Callable[..., Any], ignore: Iterable[str] = (), track_callees: bool = True,
        strict: bool = False, declared: Declared = NOTHING_DECLARED,
    ) -> None:
        self._func = func
        self._ignore = frozenset(ignore)
        self._strict = strict
        self._track = track_callees
        self._declared = declared
        self._declares = bool(declared)  # tested at every call
        self._where = getattr(func, "__qualname__", None) or full_name(func)
        target = unwrap(func)
        # A plain function is keyed through its parts (fast); anything else is hashed whole.
        self._root: types.FunctionType | None = target if func is target and isinstance(
            target, types.FunctionType) and not hasattr(target, "registry") else None
        identity = Hasher()
        identity.update((KEY_VERSION, _identity_parts(func)))
        self._identity = identity.digest()
        self._code: Any = None
        self._reached: Reached | None = None
        self._bind(check=True)

    # -- the signature, rebuilt whenever the code or the defaults change ----------------------

    def _bind(self, check: bool = False) -> None:
        root = self._root
        if root is not None:
            self._code, self._fdefaults = root.__code__, root.__defaults__
            self._fkwdefaults = root.__kwdefaults__
            self._fkwitems = _flat_items(root.__kwdefaults__)
        self._signature = _signature_of(self._func)
        parameters = list(self._signature.parameters.values()) if self._signature else []
        names = {p.name for p in parameters}
        freevars = set(root.__code__.co_freevars) if root is not None else set()
        read = {chain[0] for chain in global_references(root.__code__)[0]} if root is not None else set()
        defined = root.__globals__ if root is not None else {}
        unknown = {
            name for name in self._ignore - names - freevars - read - {"*", "**"}
            if "." not in name and name not in defined
        }
        if unknown and check:
            raise InvalidOptionError(
                f"ignore names {sorted(unknown)} that {self._where!r} does not take or read; its arguments "
                f"are {sorted(names)}" + (f", its closure variables {sorted(freevars)}" if freevars else "")
                + (f", the globals it reads {sorted(read)}" if read else "")
            )
        # Globals and class attributes named in ``ignore``, left out wherever the code reaches them.
        ignored = frozenset(self._ignore - names - freevars)
        self.follow = Reacher(self._strict, ignored)  # how recorded code is keyed, tracked or not
        self._follow = self.follow if self._track else None
        self._kept = [p.name not in self._ignore and not self._ignored_var(p) for p in parameters]
        self._kept_names = [p.name for p, kept in zip(parameters, self._kept) if kept]
        # The fast path: only positional-or-keyword parameters, each kept.
        self._simple = (
            self._signature is not None
            and all(p.kind is p.POSITIONAL_OR_KEYWORD for p in parameters)
            and all(self._kept)
        )
        self._defaults = tuple(p.default for p in parameters)
        self._required = sum(p.default is p.empty for p in parameters)
        self._cells = [
            (name, cell) for name, cell in zip(root.__code__.co_freevars, root.__closure__ or ())
            if name not in self._ignore
        ] if root is not None else []
        code = code_digest(root.__code__) if root is not None else b""
        self._prefix = self._identity + code + xxhash.xxh3_128_digest(repr(self._kept_names).encode())

    def _ignored_var(self, parameter: inspect.Parameter) -> bool:
        """``ignore=["*"]`` / ``["**"]`` drop ``*args`` / ``**kwargs`` whatever their names."""
        if parameter.kind is parameter.VAR_POSITIONAL:
            return "*" in self._ignore
        if parameter.kind is parameter.VAR_KEYWORD:
            return "**" in self._ignore
        return False

    def _current(self) -> None:
        """Rebuild what depends on the function's code and defaults if they were replaced."""
        root = self._root
        if root is not None and (
            root.__code__ is not self._code
            or root.__defaults__ is not self._fdefaults
            or root.__kwdefaults__ is not self._fkwdefaults
            or (self._fkwdefaults and not self._same_kwdefaults())
        ):
            self._bind()
            self._reached = None

    def _same_kwdefaults(self) -> bool:
        """True while the keyword defaults hold what they held (they can be assigned in place)."""
        return all(map(operator.is_, _flat_items(self._fkwdefaults), self._fkwitems))

    def bound_values(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
        """Return the kept argument values in signature order, defaults applied."""
        self._current()
        if self._simple and not kwargs and self._required <= len(args) <= len(self._defaults):
            return args + self._defaults[len(args) :]
        if self._signature is None:
            return (args, kwargs)
        bound = self._signature.bind(*args, **kwargs)  # raises TypeError like a real call
        bound.apply_defaults()
        return tuple(value for value, kept in zip(bound.arguments.values(), self._kept) if kept)

    # -- the state at the call ----------------------------------------------------------------

    def _callees(self, root: types.FunctionType) -> Reached:
        """What the function reaches (code, references, constants, values), checked cheaply."""
        known = self._reached
        if known is None or not known.is_current():
            known = self._reached = reached(root, self._follow.ignore if self._follow else frozenset())
        if known.unkeyed:
            unkeyed_values(self._where, known.unkeyed, self._strict)
        return known

    def _state(self, hasher: Hasher | None) -> bytes:
        """What the function is at this call, beyond its code: closure, callees, or the whole callable."""
        root = self._root
        if root is None:
            whole = Hasher(self._follow)
            whole._digests = hasher._digests if hasher is not None else whole._digests
            try:
                whole.update(self._func)
            except UnhashableError as exc:
                message = f"the function's state{exc.path}: {exc}"
                raise UnhashableError(message, path=exc.path) from exc.__cause__
            return whole.digest()
        follow = self._follow
        if follow is not None:
            known = self._callees(root)
            state = known.digest + values_digest(known, follow, self._where) if known.values else known.digest
        else:
            state = b""
        if self._cells:
            contents = tuple(cell_value(cell) for _, cell in self._cells)
            flat = scalars_encoding(contents)
            if flat is not None:
                flat = b"c" + flat
            else:
                closure = Hasher(self._follow)
                try:
                    closure.update(contents)
                except UnhashableError as exc:
                    raise UnhashableError(
                        f"closure variable {self._cell_name(exc)}: {exc}; pass its name in `ignore=` "
                        "to leave it out of the key"
                    ) from exc.__cause__
                flat = b"h" + closure.digest()
            state += flat
        return state

    def covered_codes(self) -> frozenset[types.CodeType]:
        """The code the key follows by itself (what a recording of the call need not name again)."""
        root = self._root if self._root is not None else unwrap(self._func)
        code = getattr(root, "__code__", None)
        if not isinstance(code, types.CodeType):
            return frozenset()
        if self._follow is None or not isinstance(root, types.FunctionType):
            return frozenset([code])
        return frozenset([code, *self._callees(root).codes])

    def key(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
        """Return the cache key of one call (32 hex digits)."""
        values = self.bound_values(args, kwargs)
        flat = scalars_encoding(values)
        declared = self._declared.digest() if self._declares else b""
        if flat is not None:
            return xxhash.xxh3_128_hexdigest(self._prefix + self._state(None) + declared + flat)
        hasher = Hasher(self._follow)
        hasher._put(self._prefix + self._state(hasher) + declared)
        try:
            hasher.update(values)
        except UnhashableError as exc:
            message = f"argument {self._argument_name(exc)}: {exc}"
            raise UnhashableError(message, path=exc.path) from exc.__cause__
        return hasher.digest().hex()

    def key_parts(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, str]:
        """Return the named parts the key of this call is made of, a short digest each.

        Arguments by name, the code, closure variables or the callable's state, and
        each tracked helper, class and constant; never argument values.
        """
        values = self.bound_values(args, kwargs)
        parts = self.state_parts()
        names = self._kept_names if self._signature is not None else ["*args", "**kwargs"]
        for name, value in zip(names, values):
            parts[f"argument {name}"] = short_digest(value, self._follow)
        return parts

    def state_parts(self) -> dict[str, str]:
        """Return the parts of the key that are not arguments: code, closure, state, helpers, constants."""
        self._current()
        parts: dict[str, str] = {}
        root = self._root
        if root is None:
            parts["callable"] = self._state(None).hex()[:12]
        else:
            parts["code"] = code_digest(root.__code__).hex()[:12]
            for name, cell in self._cells:
                parts[f"closure {name}"] = short_digest(cell_value(cell), self._follow)
            if self._follow is not None:
                known = self._callees(root)
                parts.update(known.parts)
                for label, value in known.values:
                    parts[label] = short_digest(value, self._follow)
        if self._declared:
            parts.update(self._declared.parts())
        return parts

    def _argument_name(self, exc: UnhashableError) -> str:
        """Turn the error's path, ``[i]...``, into the name of the argument it sits in."""
        path = exc.path
        match = re.match(r"\[(\d+)\](.*)", path)
        if not match or self._signature is None:
            return repr(path)
        index = int(match.group(1))
        name = self._kept_names[index] if index < len(self._kept_names) else "?"
        return f"{name!r}" + (f" at {name}{match.group(2)}" if match.group(2) else "")

    def _cell_name(self, exc: UnhashableError) -> str:
        path = exc.path
        match = re.match(r"\[(\d+)\](.*)", path)
        if not match or int(match.group(1)) >= len(self._cells):
            return repr(path)
        name = self._cells[int(match.group(1))][0]
        return f"{name!r}" + (f" at {name}{match.group(2)}" if match.group(2) else "")
