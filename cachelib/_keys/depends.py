"""What only a run can show: the code and files a miss used, recorded, kept and checked on hits.

Rule: a miss runs inside a ``Recording`` (``_keys.runtime`` for code, ``_keys.files``
for files); what it saw beyond the key's static walk is described as JSON items kept
with the entry, and a hit is a hit only if every item still holds (``Validator``):

* ``["code", module, qualname, digest, script]``: a function or class of the user's
  that ran, keyed as a helper is (its code and everything it reaches), found again by
  name (its module imported if it is not yet: the call would import it too);
* ``["live", module, qualname, digest, source]``: code that no name leads to (a
  lambda in a registry, a class redefined in a notebook): it holds while this very
  code object exists in the process, or while its file (``source``, a file item) is
  unchanged;
* ``["file", ...]``, ``["dir", ...]``, ``["absent", path]``: ``_keys.files``.

A hit inside another call's recording hands its own items (and its function) to that
recording, so an outer entry depends on what its inner hits depended on. Malformed
items are stale, never an error.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import os
import sys
import threading
import types
import weakref
from collections.abc import Iterable
from typing import Any

from .code import code_digest, is_user_class, is_user_function, is_user_module, underlying
from .encoding import Hasher
from .files import FileRecording, check_file_item, describe_files, describe_path, unchanged_file
from .reach import Reacher, reached, reached_class
from .runtime import CodeRecording

__all__ = ["Recorded", "Recording", "Validator", "note_hit", "recording_now"]

_LOCALS = "<locals>"
_FILE_KINDS = frozenset({"file", "dir", "absent"})
_ABSENT = object()


class Recorded:
    """What a finished recording found: its items, whether code was seen whole, and what forbids storing."""

    __slots__ = ("complete", "items", "problems")

    def __init__(self, items: list[list[Any]], complete: bool, problems: list[str]) -> None:
        self.items = items
        self.complete = complete
        self.problems = problems


class Recording:
    """Record the code and files a call uses, from ``__enter__`` until ``finish``.

    ``covered`` is the code the key already follows (not recorded again); ``follow``
    keys recorded functions and classes as the key keys helpers.
    """

    def __init__(self, code: bool, files: bool, covered: frozenset[types.CodeType], follow: Reacher) -> None:
        self._code = CodeRecording() if code else None
        self._files = FileRecording() if files else None
        self._covered = covered
        self._follow = follow
        self._inner: list[list[Any]] = []  # items of hits inside this recording
        self._done = False

    def __enter__(self) -> Recording:
        global _open
        with _lock:
            _open = (*_open, self)
        try:
            if self._files is not None:
                self._files.__enter__()
            if self._code is not None:
                self._code.__enter__()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop recording (idempotent)."""
        global _open
        if self._done:
            return
        self._done = True
        if self._code is not None:
            self._code.__exit__()
        if self._files is not None:
            self._files.__exit__()
        with _lock:
            _open = tuple(recording for recording in _open if recording is not self)

    def finish(self) -> Recorded:
        """Stop, and describe what was recorded as it is now."""
        self.stop()
        items: list[list[Any]] = []
        problems: list[str] = []
        if self._code is not None:
            items += code_items(self._code.codes, self._covered, self._follow)
        if self._files is not None:
            found, problems = describe_files(self._files)
            items += found
        items += self._inner
        complete = self._code is None or self._code.complete
        return Recorded(_unique(items), complete, problems)


_lock = threading.Lock()
_open: tuple[Recording, ...] = ()


def _forget_in_child() -> None:
    """A forked child's calls are not the recordings its parent had open."""
    global _open, _lock
    _open, _lock = (), threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_in_child)


def recording_now() -> bool:
    """True while any call in this process records (one test on the hit path)."""
    return bool(_open)


def note_hit(items: Any, func: Any, follow: Reacher) -> None:
    """Hand a hit's recorded items, and its function's own code, to every open recording."""
    found = list(items) if isinstance(items, list) else []
    code = getattr(func, "__code__", None)
    if isinstance(code, types.CodeType):
        found += code_items([code], frozenset(), follow)
    for recording in _open:
        recording._inner += found


def _unique(items: list[list[Any]]) -> list[list[Any]]:
    seen: set[tuple[Any, ...]] = set()
    kept = []
    for item in items:
        name = (item[0], item[1], item[2] if item[0] in ("code", "live") else None)
        if name not in seen:
            seen.add(name)
            kept.append(item)
    return kept


# -- code, described --------------------------------------------------------------------------


def code_items(codes: Iterable[types.CodeType], covered: frozenset[types.CodeType], follow: Reacher) -> list[
        list[Any]]:
    """The items naming the units (functions, classes, module sources) of ``codes``, in the order they ran.

    Code the key already follows (``covered``), and code that a unit named before
    reaches (a helper of a recorded plugin), is not named again.
    """
    inside = _nested(covered)
    items: list[list[Any]] = []
    for code in codes:
        if code in inside:
            continue
        found, reaches = _items_of(code, follow)
        items += found
        inside.update(reaches)
    return items


def _nested(codes: Iterable[types.CodeType]) -> set[types.CodeType]:
    """``codes`` and every code object nested in them."""
    found: set[types.CodeType] = set()
    pending = list(codes)
    while pending:
        code = pending.pop()
        if code not in found:
            found.add(code)
            pending += [const for const in code.co_consts if isinstance(const, types.CodeType)]
    return found


def _items_of(code: types.CodeType, follow: Reacher) -> tuple[list[list[Any]], list[types.CodeType]]:
    """The items that key ``code``, and the code they cover."""
    if not code.co_flags & inspect.CO_OPTIMIZED:
        return [], []  # a module or class body run by an import: what it defines is keyed where read
    module = _module_of(code)
    filename = code.co_filename
    source = describe_path(filename)[0] if not filename.startswith("<") and os.path.isfile(filename) else None
    qualname = getattr(code, "co_qualname", code.co_name)
    unit_name, unit = _unit_of(module, code, qualname) if module is not None else ("", _ABSENT)
    if unit is _ABSENT and source is None:  # run by exec: in whichever module defines it
        module, unit_name, unit = _search_modules(code, qualname)
        if unit is _ABSENT:
            return [], []  # compiled from a string no module keeps (dataclass or namedtuple methods)
    if module is None or unit is _ABSENT:
        name = module.__name__ if module is not None else "?"
        return [["live", name, qualname, _remember_live(code), source]], [code]
    name = module.__name__
    items = [["code", name, unit_name, _unit_digest(unit, follow), _script(module)]]
    if unit_name != qualname.split(".", 1)[0] or _LOCALS not in qualname or source is None:
        return items, [*_own_codes(unit), *_reached_codes(unit)]
    # Made by a factory and kept nowhere a name leads to: the source holds the factory's arguments.
    return [*items, source], [code]


def _unit_of(module: types.ModuleType, code: types.CodeType, qualname: str) -> tuple[str, Any]:
    """The module-level name, and its value, that runs ``code``; ``("", _ABSENT)`` if none does.

    A closure a factory made is found by the global holding it (its captured values
    count); otherwise the function or class the qualified name starts with, if the
    code is its own or nested in it (on Python 3.10, whose code has no qualified name,
    the global whose code it is or holds).
    """
    namespace = vars(module)
    known_name = hasattr(code, "co_qualname")  # Python 3.10: code knows its name, not its class
    if _LOCALS in qualname or not known_name:
        for global_name, value in list(namespace.items()):
            if any(function.__code__ is code for function in _functions_in(value)):
                return global_name, value
    if not known_name:
        for global_name, value in list(namespace.items()):
            if code in _nested(_own_codes(value)):
                return global_name, value
        return "", _ABSENT
    unit_name = qualname.split(".", 1)[0]
    unit = namespace.get(unit_name, _ABSENT)
    if unit is _ABSENT or code not in _nested(_own_codes(unit)):
        return "", _ABSENT
    return unit_name, unit


def _search_modules(code: types.CodeType, qualname: str) -> tuple[types.ModuleType | None, str, Any]:
    """The user module, name and value that run code compiled from a string (``exec`` into a module)."""
    for module in list(sys.modules.values()):
        if isinstance(module, types.ModuleType) and (module.__name__ == "__main__" or is_user_module(module)):
            unit_name, unit = _unit_of(module, code, qualname)
            if unit is not _ABSENT:
                return module, unit_name, unit
    return None, "", _ABSENT


def _reached_codes(unit: Any) -> tuple[types.CodeType, ...]:
    """The user code a unit's key follows (what it reaches)."""
    if is_user_function(unit):
        return reached(unit).codes
    if isinstance(unit, type):
        found = reached_class(unit)
        return found.codes if found is not None else ()
    return ()


def _functions_in(obj: Any) -> list[types.FunctionType]:
    """The Python functions a value runs: itself, or what it wraps (decorators, np.vectorize, partials)."""
    found: list[types.FunctionType] = []
    for _ in range(16):  # a chain of wrappers, not a cycle
        obj = underlying(obj)
        if isinstance(obj, types.FunctionType):
            found.append(obj)
        if isinstance(obj, functools.partial):
            obj = obj.func
            continue
        if isinstance(obj, types.MethodType):
            obj = obj.__func__
            continue
        attributes = getattr(obj, "__dict__", None)
        inner = None
        if isinstance(attributes, dict):
            inner = attributes.get("__wrapped__", attributes.get("pyfunc"))  # decorators, np.vectorize
        if inner is None:
            break
        obj = inner
    return found


def _own_codes(unit: Any) -> list[types.CodeType]:
    """The code objects of the functions a module-level value runs (a class: its members')."""
    if not isinstance(unit, type):
        return [function.__code__ for function in _functions_in(unit)]
    if not is_user_class(unit):
        return []
    codes: list[types.CodeType] = []
    pending: list[type] = [unit]
    while pending:
        cls = pending.pop()
        for member in vars(cls).values():
            target = member.fget if isinstance(member, property) else member
            if isinstance(target, functools.cached_property):
                target = target.func
            if isinstance(target, type) and target.__qualname__.startswith(cls.__qualname__ + "."):
                pending.append(target)
            else:
                codes += [function.__code__ for function in _functions_in(target)]
    return codes


def _unit_digest(unit: Any, follow: Reacher) -> str:
    """A module-level value that runs code, keyed as a global holding it is: a function by its code,
    defaults, closure and everything it reaches, a class by all it reaches, a wrapper by what it wraps."""
    hasher = Hasher(follow)
    hasher.update(unit)
    return hasher.digest().hex()


def _script(module: types.ModuleType) -> str:
    """The script a ``__main__`` module runs (``""`` for other modules, notebooks and ``-c``)."""
    if module.__name__ != "__main__":
        return ""
    main_file = getattr(module, "__file__", None)
    return os.path.realpath(main_file) if isinstance(main_file, str) else ""


_live: dict[str, weakref.WeakSet[types.CodeType]] = {}  # code digest -> the code objects run here


def _remember_live(code: types.CodeType) -> str:
    """Remember (weakly) that ``code`` ran in this process; return its digest."""
    digest = code_digest(code).hex()
    _live.setdefault(digest, weakref.WeakSet()).add(code)
    return digest


_by_file: dict[str, str] = {}  # real path of a module's file -> its name
_real: dict[str, str] = {}  # a module's __file__ -> its real path


def _module_of(code: types.CodeType) -> types.ModuleType | None:
    """The module whose file ``code`` comes from (``__main__`` for notebook cells and ``-c``)."""
    filename = code.co_filename
    if filename.startswith("<"):
        return sys.modules.get("__main__")
    real = os.path.realpath(filename)
    found = _by_file.get(real)
    module = sys.modules.get(found) if found is not None else None
    if module is None or _real_file(module) != real:  # not indexed yet, or replaced since
        module = None
        for loaded, candidate in list(sys.modules.items()):
            if _real_file(candidate) == real:
                _by_file[real] = "__main__" if loaded == "__mp_main__" else loaded
                module = candidate
                break
    if module is not None:
        return module
    main = sys.modules.get("__main__")  # a notebook's cells have files of their own
    return main if not isinstance(getattr(main, "__file__", None), str) else None


def _real_file(module: Any) -> str | None:
    path = getattr(module, "__file__", None)
    if not isinstance(path, str):
        return None
    if path not in _real:
        _real[path] = os.path.realpath(path)
    return _real[path]


# -- checking on a hit --------------------------------------------------------------------------


class Validator:
    """Say whether an entry's recorded items still hold, keying code with ``follow``."""

    def __init__(self, follow: Reacher) -> None:
        self._follow = follow

    def stale(self, items: Any) -> str | None:
        """Return None if every item holds, else what changed (the first item that does not)."""
        if not isinstance(items, list):
            return "its recorded dependencies cannot be read"
        uid = os.geteuid()
        for item in items:
            try:
                if item[0] == "file" and unchanged_file(item, uid):
                    continue
                reason = check_file_item(item) if item[0] in _FILE_KINDS else self._check(item)
            except Exception as exc:  # a hostile or damaged item is stale, never an error
                reason = f"a recorded dependency cannot be checked ({type(exc).__name__})"
            if reason is not None:
                return reason
        return None

    def _check(self, item: list[Any]) -> str | None:
        kind = item[0]
        if kind == "code":
            return self._check_code(item)
        if kind == "live":  # the very code object, or its unchanged source file
            if _live.get(item[3]):
                return None
            source = item[4]
            if source is None:
                return f"`{item[1]}.{item[2]}` is not defined in this process"
            return check_file_item(source)
        return f"a recorded dependency of an unknown kind ({kind!r})"

    def _check_code(self, item: list[Any]) -> str | None:
        _, name, unit_name, digest, script = item[:5]
        module = sys.modules.get(name)
        if module is None and name != "__main__":
            try:
                module = importlib.import_module(name)
            except Exception as exc:
                return f"module `{name}` cannot be imported ({type(exc).__name__}: {exc})"
        if module is None or _script(module) != script:
            return f"`{name}.{unit_name}` is not defined here (another script)"
        unit = vars(module).get(unit_name, _ABSENT)
        if unit is _ABSENT:
            return f"`{name}.{unit_name}` is gone"
        if _unit_digest(unit, self._follow) != digest:
            return f"`{name}.{unit_name}` edited"
        return None

