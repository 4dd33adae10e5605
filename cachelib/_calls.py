"""Call identity: which function is called (name, code) and with what (bound arguments).

Rule: two calls get the same key exactly when they run the same code on equal
arguments. Arguments are bound with ``inspect.signature``, so passing a value by
position or by keyword, or leaving a default out, gives one key; the function's
code (bytecode, constants, defaults and closure values) is part of the key, so an
edited function misses and a reverted edit hits its old entries again.
"""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Callable, Iterable
from typing import Any

import xxhash

from ._errors import InvalidOptionError, UnhashableError
from ._hashing import Hasher, module_name, scalars_encoding

__all__ = ["CallKeyer", "function_identity"]

KEY_VERSION = b"cachelib-key-3"
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def unwrap(func: Callable[..., Any]) -> Callable[..., Any]:
    """Return the function whose code decides the result (through partials and methods)."""
    while isinstance(func, functools.partial):
        func = func.func
    return getattr(func, "__func__", func)


def function_identity(func: Callable[..., Any]) -> tuple[str, str]:
    """Return ``(readable name, identity hash)`` naming ``func`` across processes.

    The name is ``module.qualname`` made safe for a directory; the hash (of module
    and qualname) keeps two functions whose names sanitise alike apart. Lambdas
    and nested functions of one name share a directory; their code, defaults and
    closure values, which are part of every key, keep their entries apart.
    """
    target = unwrap(func)
    module = module_name(target)
    qualname = getattr(target, "__qualname__", None) or type(target).__qualname__
    dotted = f"{module}.{qualname}".replace("<locals>.", "")
    readable = _UNSAFE.sub("_", dotted.replace("<", "").replace(">", ""))
    readable = readable.strip(".-")[:80] or "function"
    hasher = Hasher()
    hasher.update((module, qualname))
    return readable, hasher.digest().hex()[:12]


class CallKeyer:
    """Turn the arguments of calls to one function into cache keys.

    Keys are 32 hex digits of xxh3-128 over the key version, the function's code
    and the bound, non-ignored arguments in signature order.
    """

    def __init__(self, func: Callable[..., Any], ignore: Iterable[str] = ()) -> None:
        if isinstance(ignore, str):
            raise InvalidOptionError(f"ignore must be a list of argument names, got the string {ignore!r}")
        self._ignore = frozenset(ignore)
        try:
            self._signature: inspect.Signature | None = inspect.signature(func)
        except (TypeError, ValueError):
            self._signature = None  # a builtin without a signature: hash args and kwargs
        parameters = list(self._signature.parameters.values()) if self._signature else []
        names = {p.name for p in parameters}
        unknown = self._ignore - names - {"*", "**"}
        if unknown:
            raise InvalidOptionError(
                f"ignore names {sorted(unknown)} that {getattr(func, '__qualname__', func)!r} "
                f"does not take; its arguments are {sorted(names)}"
            )
        self._kept = [p.name not in self._ignore and not self._ignored_var(p) for p in parameters]
        # The fast path: only positional-or-keyword parameters, each kept.
        self._simple = (
            self._signature is not None
            and all(p.kind is p.POSITIONAL_OR_KEYWORD for p in parameters)
            and all(self._kept)
        )
        self._defaults = tuple(p.default for p in parameters)
        self._required = sum(p.default is p.empty for p in parameters)
        prefix = Hasher()
        prefix.update(KEY_VERSION)
        prefix.update(func)
        prefix.update(tuple(n for n, kept in zip([p.name for p in parameters], self._kept) if kept))
        self._prefix = prefix.digest()

    def _ignored_var(self, parameter: inspect.Parameter) -> bool:
        """``ignore=["*"]`` / ``["**"]`` drop ``*args`` / ``**kwargs`` whatever their names."""
        if parameter.kind is parameter.VAR_POSITIONAL:
            return "*" in self._ignore
        if parameter.kind is parameter.VAR_KEYWORD:
            return "**" in self._ignore
        return False

    def bound_values(self, args: tuple, kwargs: dict) -> tuple:
        """Return the kept argument values in signature order, defaults applied."""
        if self._simple and not kwargs and self._required <= len(args) <= len(self._defaults):
            return args + self._defaults[len(args) :]
        if self._signature is None:
            return (args, kwargs)
        bound = self._signature.bind(*args, **kwargs)  # raises TypeError like a real call
        bound.apply_defaults()
        return tuple(
            value for value, kept in zip(bound.arguments.values(), self._kept) if kept
        )

    def key(self, args: tuple, kwargs: dict) -> str:
        """Return the cache key of one call."""
        values = self.bound_values(args, kwargs)
        flat = scalars_encoding(values)
        if flat is not None:
            return xxhash.xxh3_128_hexdigest(self._prefix + flat)
        hasher = Hasher()
        hasher._put(self._prefix)
        try:
            hasher.update(values)
        except UnhashableError as exc:
            raise UnhashableError(f"argument {self._argument_name(exc)}: {exc}") from exc.__cause__
        return hasher.digest().hex()

    def _argument_name(self, exc: UnhashableError) -> str:
        """Turn the error's path, ``[i]...``, into the name of the argument it sits in."""
        path = getattr(exc, "path", "")
        match = re.match(r"\[(\d+)\](.*)", path)
        if not match or self._signature is None:
            return repr(path)
        kept = [n for n, k in zip(self._signature.parameters, self._kept) if k]
        index = int(match.group(1))
        name = kept[index] if index < len(kept) else "?"
        return f"{name!r}" + (f" at {name}{match.group(2)}" if match.group(2) else "")
