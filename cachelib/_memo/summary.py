"""Short, bounded summaries of a call and of what its entry depends on, for people to read.

Rule: informational only, never part of a key and never a reason for a call to fail.
A call's summary is computed on a miss only, in bounded time and size: arrays (and
anything with a ``shape``) show as shape and dtype, never their values; containers
show their first few items; objects whose class has no repr of its own their class
name and first attributes (``Model(depth=3, ...)``, never ``<Model object at 0x...>``);
other values their repr, truncated. The summary is printable ASCII (control
characters escaped) and its JSON form fits in ``LIMIT`` bytes. ``depends_summary``
names, in one line, the files, code, packages and declared dependencies an entry's
metadata records.
"""

from __future__ import annotations

import inspect
import itertools
import json
import os
import reprlib
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from .._text import printable

__all__ = ["LIMIT", "CallSummary", "depends_summary", "describe_value"]

LIMIT = 300  # bytes of the summary's JSON string
_ITEMS = 4  # items shown of a container
_CONTAINERS = (list, tuple, dict, set, frozenset)
_BYTES = (bytes, bytearray, memoryview)


class _Short(reprlib.Repr):
    """``reprlib`` with arrays, containers, big integers and bytes kept short in bounded time.

    Containers show their first items in their own order (reprlib's sorts the whole
    container first); subclasses show their class name around them.
    """

    def __init__(self) -> None:
        super().__init__()
        self.maxlevel = 3
        self.maxstring = self.maxlong = 40
        self.maxother = 60

    def repr1(self, x: Any, level: int) -> str:
        if isinstance(x, np.ndarray):
            return f"{type(x).__name__}(shape={x.shape}, dtype={x.dtype})"
        if isinstance(x, _BYTES):
            return f"{type(x).__name__}(len={memoryview(x).nbytes})"
        if isinstance(x, int) and not isinstance(x, bool) and x.bit_length() > 128:
            return f"{type(x).__name__}({x.bit_length()} bits)"
        if isinstance(x, _CONTAINERS):
            return self._container(x, level)
        shape = _shape_of(x)
        if shape is not None:
            dtype = getattr(x, "dtype", None)
            return f"{type(x).__name__}(shape={shape}" + (f", dtype={dtype})" if dtype is not None else ")")
        if getattr(type(x), "__repr__", None) is object.__repr__ and not isinstance(x, type):
            return self._object(x, level)
        return super().repr1(x, level)

    def _object(self, x: Any, level: int) -> str:
        """An object without a repr of its own: ``Model(depth=3, alpha=0.5, ...)`` from its attributes."""
        attributes = getattr(x, "__dict__", None)
        if not isinstance(attributes, dict) or not attributes or level <= 0:
            return f"{type(x).__name__}(...)" if attributes or level <= 0 else f"{type(x).__name__}()"
        public = [(k, v) for k, v in itertools.islice(attributes.items(), 64) if not str(k).startswith("_")]
        inner = [f"{k}={self.repr1(v, level - 1)}" for k, v in public[:_ITEMS]]
        if len(public) > _ITEMS or len(public) < len(attributes):
            inner.append("...")
        return f"{type(x).__name__}({', '.join(inner)})"

    def _container(self, x: Any, level: int) -> str:
        base = next(kind for kind in _CONTAINERS if isinstance(x, kind))
        if level <= 0:
            inner = ["..."] if len(x) else []
        elif base is dict:
            head = list(itertools.islice(x.items(), _ITEMS + 1))
            inner = [f"{self.repr1(k, level - 1)}: {self.repr1(v, level - 1)}" for k, v in head[:_ITEMS]]
            inner += ["..."] if len(head) > _ITEMS else []
        else:
            head = list(itertools.islice(x, _ITEMS + 1))
            inner = [self.repr1(item, level - 1) for item in head[:_ITEMS]]
            inner += ["..."] if len(head) > _ITEMS else []
        text = ", ".join(inner)
        if base is tuple:
            shown = f"({text},)" if len(inner) == 1 else f"({text})"
        elif base is list:
            shown = f"[{text}]"
        elif base is dict or inner:
            shown = "{" + text + "}"
        else:
            shown = "()"
        if base is frozenset or (base is set and not inner):
            shown = f"{base.__name__}({shown if inner else ''})"
        return shown if type(x) is base else f"{type(x).__name__}({shown})"


def _shape_of(x: Any) -> tuple[int, ...] | None:
    """The shape of an array-like (a tensor, a DataFrame ...), or None."""
    if isinstance(x, type):
        return None
    try:
        shape = getattr(x, "shape", None)
    except Exception:  # any property may raise: then it has no usable shape
        return None
    if isinstance(shape, tuple) and all(isinstance(n, int) for n in shape):
        return shape
    return None


_SHORT = _Short()


def describe_value(value: Any) -> str:
    """Return a short description of one value."""
    return _SHORT.repr(value)


def bounded(text: str, limit: int = LIMIT) -> str:
    """Return ``text`` as printable ASCII, cut so that its JSON string fits in ``limit`` bytes."""
    text = printable(text.encode("ascii", "backslashreplace").decode("ascii"))
    while len(json.dumps(text)) > limit:
        excess = len(json.dumps(text)) - limit
        text = text[: max(len(text) - excess - 3, 0)] + "..."
    return text


class CallSummary:
    """Describe calls of one function: ``name(arg=value, ...)``, ignored arguments left out."""

    def __init__(self, func: Callable[..., Any], ignore: Iterable[str] = ()) -> None:
        self._func = func
        self._ignore = frozenset(ignore)
        self._name = getattr(func, "__name__", None) or type(func).__name__
        self._signature: inspect.Signature | bool | None = False  # looked up at the first miss

    def _parts(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[str]:
        if self._signature is False:
            try:
                self._signature = inspect.signature(self._func)
            except (TypeError, ValueError):
                self._signature = None
        if not isinstance(self._signature, inspect.Signature):
            return [describe_value(a) for a in args] + [f"{k}={describe_value(v)}" for k, v in kwargs.items()]
        bound = self._signature.bind(*args, **kwargs)
        bound.apply_defaults()
        parts = []
        for name, value in bound.arguments.items():
            kind = self._signature.parameters[name].kind
            if name in self._ignore or (kind is inspect.Parameter.VAR_POSITIONAL and "*" in self._ignore) or (
                kind is inspect.Parameter.VAR_KEYWORD and "**" in self._ignore
            ):
                continue
            prefix = "*" if kind is inspect.Parameter.VAR_POSITIONAL else ""
            prefix = "**" if kind is inspect.Parameter.VAR_KEYWORD else prefix
            parts.append(f"{prefix}{name}={describe_value(value)}")
        return parts

    def describe(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str | None:
        """Return the summary of one call, or None if it cannot be made."""
        try:
            return bounded(f"{self._name}({', '.join(self._parts(args, kwargs))})")
        except Exception:  # informational only: a call never fails over its summary
            return None


# -- saying what an entry depends on ------------------------------------------------------------

_DECLARED = ("file", "environment", "package", "token")


def depends_summary(metadata: dict[str, Any], most: int = 3) -> str:
    """One compact line naming what an entry depends on beyond its arguments and static code.

    For example ``"files data.npy, labels.csv; code plugins.run; package numpy 2.1.0"``;
    ``""`` when nothing. ``most`` names per kind before a count of the rest.
    """
    groups: dict[str, list[str]] = {}
    items = metadata.get("depends")
    for item in items if isinstance(items, list) else []:
        if not isinstance(item, list) or len(item) < 2:
            continue
        kind = {"file": "files", "absent": "files", "dir": "directories"}.get(str(item[0]), "code")
        if kind == "code":
            name = f"{item[1]}.{item[2]}" if len(item) > 2 else "?"
        else:
            name = os.path.basename(str(item[1]))
        groups.setdefault(kind, []).append(name + (" (absent)" if item[0] == "absent" else ""))
    parts = metadata.get("key_parts")
    for label, value in (parts.items() if isinstance(parts, dict) else ()):
        kind, _, name = str(label).partition(" ")
        if kind in _DECLARED:
            groups.setdefault(f"declared {kind}" if kind != "package" else "packages", []).append(
                f"{name} {value}" if kind == "package" else name)
    if metadata.get("depends_complete") is False:
        groups.setdefault("code", []).append("(recorded in part)")
    shown = []
    for kind, names in groups.items():
        more = f" +{len(names) - most}" if len(names) > most else ""
        shown.append(f"{kind} {', '.join(names[:most])}{more}")
    return "; ".join(shown)
