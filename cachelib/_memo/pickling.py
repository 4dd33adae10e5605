"""How a memoized function travels to another process (``pickle``).

Rule: nothing cached travels (a ``Cache`` pickles its settings only). A wrapper that
other processes import under the same name is pickled by that name. A wrapper of the
main script or notebook (``__main__``) may not exist in the process that unpickles
it: a joblib (loky) worker never runs the script. It is found by name where it does
exist with the same code (forked and spawned workers), and elsewhere rebuilt from
its function, which travels by value (cloudpickle, when installed; joblib ships it).
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import pickle
import sys
import threading
import types
from collections.abc import Callable
from types import ModuleType
from typing import Any, Protocol, cast

from .._errors import DeserializationError
from .._keys.calls import script_of, unwrap
from .._keys.code import adopt_digests, code_digest
from .._keys.reach import travelling_digests

__all__ = ["reduce_wrapper"]

_MAIN = ("__main__", "__mp_main__")
_state = threading.local()  # .pickling: ids of wrappers being pickled; .building: namespace -> wrapper


class Wrapper(Protocol):
    """What pickling needs of a memoized function (``_memoize.MemoizedFunction``)."""

    __wrapped__: Callable[..., Any]
    __module__: str
    __qualname__: str
    namespace: str
    cache: Any
    options: Any

    def _setup(self, func: Callable[..., Any], cache: Any, options: Any) -> None: ...


def _lookup(module: ModuleType | None, qualname: str) -> Any:
    target: Any = module
    for part in qualname.split("."):
        target = getattr(target, part, None)
    return target


def _fingerprint(func: Callable[..., Any]) -> str:
    """A digest of the code of ``func``: tells a stale same-named function from this one.

    The same in every process (``marshal`` output is not: it depends on refcounts).
    """
    code = getattr(unwrap(func), "__code__", None)
    return code_digest(code).hex() if code is not None else ""


@functools.cache
def _cloudpickle() -> Any:
    """The cloudpickle module (standalone, else joblib's copy), or None."""
    for name in ("cloudpickle", "joblib.externals.cloudpickle"):
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    return None


def _by_value(wrapper: Wrapper) -> bytes | None:
    """The wrapped function pickled by value, or None (no cloudpickle, or it cannot).

    A function that refers to its own wrapper (recursion) meets it again while it is
    being pickled: that inner reference goes by name only, and resolves to the
    wrapper being rebuilt.
    """
    pickler = _cloudpickle()
    active: set[int] = _state.__dict__.setdefault("pickling", set())
    if pickler is None or id(wrapper) in active:
        return None
    active.add(id(wrapper))
    try:
        return cast(bytes, pickler.dumps(wrapper.__wrapped__))
    except Exception:  # any error of pickling by value leaves pickling by name, which may still work
        return None
    finally:
        active.discard(id(wrapper))


def reduce_wrapper(wrapper: Wrapper) -> Any:
    """The ``__reduce__`` of a memoized function: by name, from ``__main__``, or rebuilt from its parts."""
    module = wrapper.__module__
    target = _lookup(sys.modules.get(module), wrapper.__qualname__)
    if target is wrapper and module not in _MAIN:
        return wrapper.__qualname__
    if target is wrapper:
        return _from_main, (
            type(wrapper), wrapper.__qualname__, wrapper.namespace, _fingerprint(wrapper.__wrapped__),
            _by_value(wrapper), wrapper.cache, wrapper.options, script_of(wrapper.__wrapped__),
            _digests(wrapper.__wrapped__),
        )
    return _rebuild, (type(wrapper), wrapper.__wrapped__, wrapper.cache, wrapper.options)


def _rebuild(kind: type[Wrapper], func: Callable[..., Any], cache: Any, options: Any) -> Wrapper:
    """Rebuild a pickled memoized function of class ``kind`` from its function, cache and options."""
    wrapper = kind.__new__(kind)
    wrapper._setup(func, cache, options)
    return wrapper


def _digests(func: Callable[..., Any]) -> dict[bytes, bytes]:
    """The code digests a receiving process adopts for ``func`` sent by value."""
    target = unwrap(func)
    return travelling_digests(target) if isinstance(target, types.FunctionType) else {}


def _from_main(
    kind: type[Wrapper],
    qualname: str,
    namespace: str,
    fingerprint: str,
    by_value: bytes | None,
    cache: Any,
    options: Any,
    script: str = "",
    digests: dict[bytes, bytes] | None = None,
) -> Wrapper:
    """Find a pickled wrapper of the main script by name, or rebuild it from its function.

    ``digests`` are the sender's code digests of the code that travels by value, whose
    source this process may not see (``_keys.code.adopt_digests``).
    """
    adopt_digests(digests or {})
    found = _lookup(sys.modules.get("__main__"), qualname)
    wrapped = getattr(found, "__wrapped__", None)
    if getattr(found, "namespace", None) == namespace and wrapped is not None and (
        _fingerprint(wrapped) == fingerprint
    ):
        return cast(Wrapper, found)
    building: dict[str, Any] = _state.__dict__.setdefault("building", {})
    if by_value is None:
        if namespace in building:
            return cast(Wrapper, building[namespace])
        raise DeserializationError(
            f"the memoized function {qualname} of the main script cannot be rebuilt in this process, "
            "whose __main__ does not define it: install cloudpickle (pip install cloudpickle) so that "
            "it travels by value, or define it in an importable module"
        )
    wrapper = kind.__new__(kind)
    outer = building.get(namespace)
    building[namespace] = wrapper
    try:
        func = pickle.loads(by_value)
    finally:
        if outer is None:
            del building[namespace]
        else:
            building[namespace] = outer
    with contextlib.suppress(AttributeError, TypeError):  # cloudpickle renames the code's file
        setattr(unwrap(func), "__cachelib_script__", script)  # noqa: B010 - a function attribute of our own
    wrapper._setup(func, cache, options)
    return wrapper
