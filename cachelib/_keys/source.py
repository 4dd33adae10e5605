"""Code identity that survives a Python upgrade: a digest of a function's normalized source.

Rule: the digest of a code object is made from its syntax tree when its source is at
hand and is the source of the very code that runs: the file (or notebook cell, as
``linecache`` holds it) is compiled once and the code object at the function's line
must have the same bytecode as the running one; otherwise (no source, a file edited
since it was imported, ``python -O``) the digest is the bytecode's, which differs
between Python minor versions. The tree is written out as node names and the fields
that hold something, the same from Python 3.10 to 3.13: comments, blank lines, line
numbers, quoting and docstrings never count; any change of meaning does (a statement
moved out of a ``try`` into its ``else`` is another tree).
"""

from __future__ import annotations

import ast
import linecache
import types
import warnings
from collections.abc import Callable
from typing import Any

import xxhash

__all__ = ["source_digest", "tree_digest"]

_OWNERS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Module)
_DEFINITIONS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)
_FILES_KEPT = 256  # source files kept parsed and compiled


def _is_docstring(statement: ast.stmt) -> bool:
    return (isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Constant)
            and isinstance(statement.value.value, str))


def _joined(values: list[Any]) -> list[Any]:
    """An f-string's parts without empty strings and with neighbouring strings merged.

    Python 3.12.1 adds an empty string after a field at the end of a format spec; how a
    literal is split between parts is not meaning either.
    """
    out: list[Any] = []
    for value in values:
        if isinstance(value, ast.Constant) and isinstance(value.value, str):
            if not value.value:
                continue
            if out and isinstance(out[-1], ast.Constant) and isinstance(out[-1].value, str):
                out[-1] = ast.Constant(out[-1].value + value.value)
                continue
        out.append(value)
    return out


def _write(node: Any, out: list[str]) -> None:
    """Append the version-stable form of ``node``: its class, then each field that holds something."""
    if isinstance(node, ast.AST):
        out.append(type(node).__name__ + "(")
        for name in node._fields:
            value = getattr(node, name, None)
            if value is None or value == [] or name == "type_comment":
                continue  # absent or empty: 3.12 adds type_params=[], 3.13 leaves None fields out
            if name == "kind" and isinstance(node, ast.Constant):
                continue  # the u"" prefix
            if name == "values" and isinstance(node, ast.JoinedStr):
                value = _joined(value)
            if name == "body" and isinstance(node, _OWNERS) and value and _is_docstring(value[0]):
                value = value[1:] or [ast.Pass()]  # a docstring documents; it does not compute
            out.append(name + "=")
            _write(value, out)
            out.append(",")
        out.append(")")
    elif isinstance(node, list):
        out.append("[")
        for item in node:
            _write(item, out)
            out.append(",")
        out.append("]")
    else:  # str, bytes, numbers, bool, None, Ellipsis
        out.append(f"{type(node).__name__}:{node!r}")


def tree_digest(node: ast.AST) -> bytes:
    """The 16-byte digest of a syntax tree's version-stable form."""
    out: list[str] = []
    _write(node, out)
    return xxhash.xxh3_128_digest("\0".join(out).encode())


class _File:
    """A source file as the interpreter last saw it: definitions by first line, compiled code by place."""

    def __init__(self, filename: str, source: str) -> None:
        tree = ast.parse(source, filename)
        self.definitions: dict[tuple[int, str], list[ast.AST]] = {}
        for node in ast.walk(tree):
            if isinstance(node, _DEFINITIONS):
                lines = [node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])]
                name = "<lambda>" if isinstance(node, ast.Lambda) else node.name
                self.definitions.setdefault((min(lines), name), []).append(node)
        self.compiled: dict[tuple[int, str], list[types.CodeType]] = {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a SyntaxWarning of the user's file is not ours to show
            module = compile(source, filename, "exec", dont_inherit=True)
        pending = [module]
        while pending:
            code = pending.pop()
            self.compiled.setdefault((code.co_firstlineno, code.co_name), []).append(code)
            pending += [c for c in code.co_consts if isinstance(c, types.CodeType)]


_files: dict[str, _File | None] = {}


def _file(filename: str) -> _File | None:
    known = _files.get(filename, False)
    if known is not False:
        return known  # type: ignore[return-value]
    try:
        source = "".join(linecache.getlines(filename))
        parsed = _File(filename, source) if source else None
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        parsed = None
    if len(_files) >= _FILES_KEPT:
        _files.clear()
    _files[filename] = parsed
    return parsed


def source_digest(code: types.CodeType, bytecode: Callable[[types.CodeType], bytes]) -> bytes | None:
    """The digest of ``code``'s normalized source, or None where the source is not the code that runs.

    ``bytecode`` digests a code object's bytecode: the code compiled from the source
    must have the same one as ``code``.
    """
    if code.co_name == "<module>":
        return None
    source = _file(code.co_filename)
    if source is None:
        return None
    place = (code.co_firstlineno, code.co_name)
    nodes = source.definitions.get(place)
    compiled = source.compiled.get(place)
    if not nodes or not compiled or len(nodes) != 1 or len(compiled) != 1:
        return None  # not found, or several lambdas on one line: the bytecode tells them apart
    if bytecode(compiled[0]) != bytecode(code):
        return None  # the file changed since this code was compiled
    return tree_digest(nodes[0])
