"""Declared dependencies (``depends_on=``): files, environment variables, packages and tokens.

Rule: what a user declares is part of every key of the function, read at each call
and named in its key parts, so that ``explain`` says which one changed and two
states (two package versions in two environments sharing a cache) keep entries of
their own. Each kind has one rule:

* a path or glob (``"data/*.csv"``, a ``pathlib.Path``): the paths it matches now
  (relative to the working directory of the call) and their contents (files by
  their bytes, directories by all they hold), hashed once per identity
  (``_keys.files``);
* ``"env:NAME"``: the variable's value (its digest; unset is a value);
* ``"package:NAME"``: the installed distribution's version, read once per process
  (a running process keeps the modules it imported);
* a callable: what it returns at the call, hashed as a value.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import re
from collections.abc import Callable, Iterable
from typing import Any

import xxhash

from .._errors import CacheError, InvalidOptionError
from .code import full_name
from .files import MAX_FILES, content_digest
from .hashing import short_digest

__all__ = ["NOTHING_DECLARED", "Declared"]

_ENV, _PACKAGE = "env:", "package:"


@dataclasses.dataclass(frozen=True)
class Declared:
    """The dependencies a function declares, resolved from what ``depends_on`` was given."""

    paths: tuple[str, ...] = ()
    variables: tuple[str, ...] = ()
    packages: tuple[str, ...] = ()
    tokens: tuple[Callable[[], Any], ...] = ()

    @classmethod
    def of(cls, depends_on: Any) -> Declared:
        """Resolve ``depends_on``: paths and globs, ``"env:NAME"``, ``"package:NAME"`` and callables."""
        if depends_on is None:
            return cls()
        if isinstance(depends_on, (str, os.PathLike)) or callable(depends_on):
            depends_on = [depends_on]
        if not isinstance(depends_on, (list, tuple)):
            raise InvalidOptionError(f"depends_on takes a list, got {depends_on!r}")
        paths: list[str] = []
        variables: list[str] = []
        packages: list[str] = []
        tokens: list[Callable[[], Any]] = []
        for item in depends_on:
            if isinstance(item, os.PathLike):
                paths.append(os.fspath(item))
            elif isinstance(item, str) and item.startswith(_ENV):
                variables.append(_named(item, _ENV))
            elif isinstance(item, str) and item.startswith(_PACKAGE):
                packages.append(_named(item, _PACKAGE))
            elif isinstance(item, str) and item:
                paths.append(item)
            elif callable(item) and not isinstance(item, (str, bytes)):
                tokens.append(item)
            else:
                raise InvalidOptionError(
                    f"depends_on takes paths or globs, 'env:NAME', 'package:NAME' and callables; got {item!r}"
                )
        return cls(tuple(paths), tuple(variables), tuple(packages), tuple(tokens))

    def __add__(self, other: Declared) -> Declared:
        def merged(mine: Iterable[Any], theirs: Iterable[Any]) -> tuple[Any, ...]:
            return tuple(dict.fromkeys([*mine, *theirs]))

        return Declared(merged(self.paths, other.paths), merged(self.variables, other.variables),
                        merged(self.packages, other.packages), merged(self.tokens, other.tokens))

    def __bool__(self) -> bool:
        return bool(self.paths or self.variables or self.packages or self.tokens)

    def parts(self) -> dict[str, str]:
        """Each declared dependency as it is now, by label (``"package numpy": "2.1.0"``)."""
        parts = {f"file {path}": _paths_digest(path) for path in self.paths}
        parts.update((f"environment {name}", _variable(name)) for name in self.variables)
        parts.update((f"package {name}", _version(name)) for name in self.packages)
        parts.update((f"token {_token_name(token)}", _token(token)) for token in self.tokens)
        return parts

    def digest(self) -> bytes:
        """The declared dependencies' part of a key, as they are now."""
        hasher = xxhash.xxh3_128()
        for label, value in self.parts().items():
            hasher.update(f"{label}\0{value}\0".encode("utf-8", "surrogateescape"))
        return hasher.digest()


NOTHING_DECLARED = Declared()


def _named(item: str, prefix: str) -> str:
    name = item[len(prefix):].strip()
    if not name:
        raise InvalidOptionError(
            f"depends_on takes paths or globs, 'env:NAME', 'package:NAME' and callables: {item!r} names none"
        )
    return name


def _paths_digest(pattern: str) -> str:
    """What the paths a pattern matches hold now: each file's bytes, each directory's whole tree."""
    matched = sorted(glob.glob(pattern, recursive=True)) if glob.has_magic(pattern) else [pattern]
    hasher = xxhash.xxh3_128()
    count = 0
    for path in matched:
        for name in _tree(path):
            count += 1
            if count > MAX_FILES:
                raise CacheError(f"depends_on {pattern!r} matches more than {MAX_FILES} files; declare fewer")
            try:
                digest = content_digest(name)
            except OSError as exc:
                reason = exc.strerror or exc
                raise CacheError(f"depends_on {pattern!r}: {name!r} cannot be read ({reason})") from exc
            hasher.update(f"{os.path.relpath(name, path)}\0{digest}\0".encode("utf-8", "surrogateescape"))
    return hasher.hexdigest()[:12] if matched else "no match"


def _tree(path: str) -> list[str]:
    """``path``, and everything under it when it is a directory (sorted, symbolic links not followed)."""
    if not os.path.isdir(path):
        return [path]
    found = [path]
    for directory, subdirectories, files in os.walk(path):
        subdirectories.sort()
        found += [os.path.join(directory, name) for name in sorted(files)]
    return found


def _variable(name: str) -> str:
    value = os.environ.get(name)
    return "unset" if value is None else xxhash.xxh3_64_hexdigest(value.encode("utf-8", "surrogateescape"))


_versions: dict[str, str] = {}


def _version(name: str) -> str:
    """The installed version of a distribution (read once per process), or ``"not installed"``."""
    normalized = re.sub(r"[-_.]+", "-", name).lower()
    known = _versions.get(normalized)
    if known is None:
        import importlib.metadata  # on first use: it takes milliseconds to import

        try:
            known = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            known = "not installed"
        _versions[normalized] = known
    return known


def _token_name(token: Callable[[], Any]) -> str:
    name = full_name(token)
    return name.rpartition(".")[2] if name.startswith("__main__.") else name


def _token(token: Callable[[], Any]) -> str:
    try:
        value = token()
    except Exception as exc:
        raise CacheError(f"the depends_on token {_token_name(token)} raised {exc!r}") from exc
    return short_digest(value)
