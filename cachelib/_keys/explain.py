"""Why a call missed: compare the parts of its key with those of the stored entries.

Rule: a pure function of key parts (``CallKeyer.key_parts``: names mapped to short
digests, or to the names and versions of library objects and packages; never
argument values); it knows nothing of paths or stores. The nearest entries
are those that differ in the fewest parts; the answer names each difference in
words ("argument `x` changed", "helper `prep` edited", "new code version").
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from .._text import printable

__all__ = ["explain_miss"]

_MOST_NEAREST = 3  # entries described when several are equally near


# How each kind of part is described when it changed, appeared, or disappeared.
_PHRASES = {
    "argument": ("argument `{}` changed", "new argument `{}`", "no argument `{}` any more"),
    "closure": ("closure variable `{}` changed", "new closure variable `{}`", "no closure `{}` any more"),
    "helper": ("helper `{}` edited", "now calls helper `{}`", "no longer calls helper `{}`"),
    "class": ("class `{}` edited", "now uses class `{}`", "no longer uses class `{}`"),
    "constant": ("constant `{}` changed", "now reads constant `{}`", "no longer reads constant `{}`"),
    "global": ("global `{}` changed", "now reads global `{}`", "no longer reads global `{}`"),
    "attribute": ("class attribute `{}` changed", "now reads class attribute `{}`",
                  "no longer reads class attribute `{}`"),
    "default": ("default `{}` changed", "new default `{}`", "no default `{}` any more"),
    "library": ("library object `{}` is now `{}`", "now reads library object `{}` (`{}`)",
                "no longer reads library object `{}`"),
    "file": ("file `{}` changed", "now depends on file `{}`", "no longer depends on file `{}`"),
    "environment": ("environment `{}` changed", "now depends on environment `{}`",
                    "no longer depends on environment `{}`"),
    "package": ("package `{0}` {2} → {1}", "now depends on package `{}` ({})",
                "no longer depends on package `{}`"),
    "token": ("token `{}` changed", "now depends on token `{}`", "no longer depends on token `{}`"),
}
_WHOLE = {
    "code": "new code version",
    "callable": "the callable's state changed (its attributes, bound object or partial arguments)",
}


def _describe(name: str, how: int, now: str = "", before: str = "") -> str:
    """Describe part ``name`` that changed (0), appeared (1) or disappeared (2).

    ``now`` and ``before`` are the part's value in the call and in the entry: for a
    library object the name it is bound to, for a package its version.
    """
    if name in _WHOLE:
        return _WHOLE[name] if how == 0 else f"{name} {('changed', 'added', 'removed')[how]}"
    kind, _, what = name.partition(" ")
    if kind in ("helper", "class", "attribute"):
        what = _short(what)
    default = (f"{kind} `{{}}` changed", f"new {kind} `{{}}`", f"no {kind} `{{}}` any more")
    phrases = _PHRASES.get(kind, default)
    return phrases[how].format(what, now, before)


def _short(qualified: str) -> str:
    """``package.module.prep`` -> ``prep`` (``Class.method`` stays whole)."""
    module, _, name = qualified.rpartition(".")
    while module and module.rpartition(".")[2][:1].isupper():  # keep Class.method
        module, _, outer = module.rpartition(".")
        name = f"{outer}.{name}"
    return name or qualified


def differences(parts: Mapping[str, str], stored: Mapping[str, str]) -> list[str]:
    """Describe how ``parts`` differs from ``stored``, argument changes first."""
    names = list(parts) + [name for name in stored if name not in parts]
    described = []
    for name in names:
        if name not in stored:
            described.append((name, _describe(name, 1, parts[name])))
        elif name not in parts:
            described.append((name, _describe(name, 2)))
        elif parts[name] != stored[name]:
            described.append((name, _describe(name, 0, parts[name], stored[name])))
    order = {"argument": 0, "code": 1, "callable": 1, "closure": 2, "helper": 3, "class": 3, "library": 3,
             "constant": 4, "global": 4, "attribute": 4, "default": 4, "file": 5, "environment": 5,
             "package": 5, "token": 5}
    described.sort(key=lambda item: order.get(item[0].partition(" ")[0], 5))
    return [text for _, text in described]


def explain_miss(parts: Mapping[str, str], stored: Iterable[Mapping[str, str]]) -> str:
    """Say what makes a call with key ``parts`` differ from its nearest stored entries.

    ``stored`` holds the key parts of existing entries (most recent first). Returns
    one line, e.g. ``"argument `x` changed"`` or ``"helper `prep` edited; constant
    `SCALE` changed"``.
    """
    nearest: list[list[str]] = []
    best = None
    count = 0
    for entry in stored:
        if not isinstance(entry, Mapping):
            continue
        count += 1
        found = differences(parts, entry)
        if best is None or len(found) < best:
            best, nearest = len(found), [found]
        elif len(found) == best and found not in nearest:
            nearest.append(found)
    if count == 0:
        return "nothing stored for this function yet"
    if best == 0:
        return "an entry with the same key parts is stored: the call hits, unless that entry expired"
    # Names and paths come from entries, which another user of a shared cache may have
    # written: what a terminal would act on is shown escaped, wherever the line is printed.
    if len(nearest) == 1:
        return printable("; ".join(nearest[0]))
    alternatives = " | ".join("; ".join(found) for found in nearest[:_MOST_NEAREST])
    return printable(f"{alternatives} (each against one of the {len(nearest)} nearest entries)")
