"""The command line: ``python -m cachelib`` and the ``cachelib`` console script.

Rule: every command works on a location given as its argument, by ``--location``
or by ``CACHELIB_LOCATION``: a directory or an fsspec URL (``s3://bucket/prefix``,
credentials and endpoints from fsspec's usual configuration); prints text for people
(every piece of it read from a cache escaped: ``_text.printable``) or, given
``--json``, one JSON document per the schemas of ``report``; shows progress only on
a terminal (stderr); and exits 0 when all is well, 1 when it found
problems or could not do what was asked, 2 on a usage error or a location that
is not a cachelib location. Every failure is one line on stderr, never a
traceback, and nothing is reported done that was not.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import stat
import sys
import time
import warnings
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, TextIO, TypeVar

from .._entries import names
from .._entries.budget import SizeBudget, clean_leftovers, evict
from .._entries.policy import Entries
from .._entries.stats import compact_stats
from .._errors import CacheError, NotACacheError, UnsafeLocationError
from .._memo.cache import function_info, function_name
from .._memo.info import HEADER
from .._memo.summary import depends_summary
from .._sizes import format_size, parse_size
from .._stores.locations import StoreOptions, is_url, open_store
from .._text import age, plural, printable, table_lines
from .._version import __version__
from .report import JsonList, Table, iso_time

__all__ = ["main"]

T = TypeVar("T")
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_SECRET_LIMIT = 1 << 16


class UsageError(Exception):
    """A command line that cannot be carried out as given (exit 2)."""


def parse_duration(text: str) -> float:
    """Return seconds for ``"90"``, ``"45m"``, ``"12h"``, ``"30d"`` or ``"2w"``."""
    text = text.strip().lower()
    unit = text[-1:] if text[-1:] in _DURATION_UNITS else "s"
    number = text[:-1] if text[-1:] in _DURATION_UNITS else text
    try:
        value = float(number)
    except ValueError:
        message = f"cannot read {text!r} as a duration; write e.g. 12h or 30d"
        raise argparse.ArgumentTypeError(message) from None
    return value * _DURATION_UNITS[unit]


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except CacheError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def progress(items: Iterable[T], label: str, stream: TextIO | None = None) -> Iterator[T]:
    """Yield ``items``, drawing a counter on stderr when it is a terminal."""
    out = stream or sys.stderr
    shown = getattr(out, "isatty", lambda: False)()
    last = 0.0
    count = 0
    for count, item in enumerate(items, 1):
        if shown and time.monotonic() - last > 0.2:
            last = time.monotonic()
            out.write(f"\r{label}: {count:,}")
            out.flush()
        yield item
    if shown:
        out.write(f"\r{label}: {count:,} done\n")


def _secret(args: argparse.Namespace) -> bytes | None:
    """The secret of a signed cache: ``--secret-file``, ``CACHELIB_SECRET_FILE`` or ``CACHELIB_SECRET``."""
    path = args.secret_file or os.environ.get("CACHELIB_SECRET_FILE")
    if path:
        try:
            with open(path, "rb") as handle:
                if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
                    raise UsageError(f"the secret file {path!r} is not a regular file")
                return handle.read(_SECRET_LIMIT)
        except OSError as exc:
            raise UsageError(f"cannot read the secret file {path!r}: {exc.strerror or exc}") from None
    text = os.environ.get("CACHELIB_SECRET")
    return text.encode() if text else None


def _entries(args: argparse.Namespace) -> Entries:
    """The location's entries, opened as ``Cache`` opens them (``--share group`` for a group's).

    A missing location or a foreign directory is a usage error.
    """
    remote = is_url(args.location)
    if not remote and not os.path.isdir(args.location):
        raise UsageError(f"no cache at {args.location!r}; give the cache directory (cachelib COMMAND DIR)")
    store = open_store(args.location, StoreOptions(share=args.share))
    entries = Entries(store, secret=_secret(args))
    try:
        present = entries.require_cache()  # an empty directory is an empty cache; a foreign one is refused
    except UnsafeLocationError as exc:
        if args.share is None and "share='group'" in str(exc):
            raise UnsafeLocationError(f"{exc} (on the command line: --share group)", path=exc.path) from None
        raise
    if remote and not present:
        raise UsageError(f"no cache at {args.location!r}; give the cache's URL (cachelib COMMAND URL)")
    return entries


def _functions(entries: Entries, name: str | None) -> list[str]:
    namespaces = entries.namespaces()
    if name is None:
        return namespaces
    def readable(ns: str) -> str:
        return ns.rsplit("-", 1)[0]
    return [ns for ns in namespaces if name in (ns, readable(ns)) or readable(ns).endswith("." + name)]


def cmd_info(args: argparse.Namespace) -> int:
    entries = _entries(args)
    rows = []
    for namespace in progress(_functions(entries, None), "functions"):
        with contextlib.suppress(CacheError, OSError):
            compact_stats(entries, namespace, wait=1.0)
        rows.append((namespace, function_info(entries, namespace)))
    rows.sort(key=lambda row: (row[1].name, row[0]))
    total_entries, total_bytes = sum(r.entries for _, r in rows), sum(r.bytes for _, r in rows)
    if args.json:
        functions = [{"function": r.name, "directory": namespace, "entries": r.entries, "bytes": r.bytes,
                      "hits": r.hits, "misses": r.misses, "compute_seconds": r.compute_seconds,
                      "saved_seconds": r.saved_seconds, "oldest": iso_time(r.oldest),
                      "newest": iso_time(r.newest)} for namespace, r in rows]
        json.dump({"location": entries.store.url, "functions": functions, "entries": total_entries,
                   "bytes": total_bytes}, sys.stdout, indent=2)
        print()
        return 0
    print(f"cache at {printable(entries.store.url)}")
    for line in table_lines(HEADER, [r.cells() for _, r in rows], left=[0]):
        print(line)
    print(f"total: {plural(total_entries, 'entry')}, {format_size(total_bytes)}")
    return 0


_AGE_WIDTH = len("in the future")


def cmd_ls(args: argparse.Namespace) -> int:
    entries = _entries(args)
    namespaces = _functions(entries, args.func)
    if args.func is not None and not namespaces:
        print(f"cachelib: no function named {printable(repr(args.func))} in {printable(entries.store.url)}; "
              "see 'cachelib info'", file=sys.stderr)
        return 1
    functions = sorted((function_name(entries, ns), ns) for ns in namespaces)
    if args.json:
        listing = JsonList({"location": entries.store.url}, "entries", sys.stdout)
    else:
        print(f"cache at {printable(entries.store.url)}")
        width = max([len(printable(name)) for name, _ in functions] + [0])
        header = ("function", "key", "size", "stored", "used", "call [depends on]")
        rows = Table(header, (width, 32, 10, _AGE_WIDTH, _AGE_WIDTH, 0), left=[0, 1], out=sys.stdout)
    for name, namespace in functions:
        for key, item in sorted(entries.entries(namespace), key=lambda pair: (pair[1].stored, pair[0])):
            call, depends, damaged = _described(entries, namespace, key)
            used = item.used if item.used > item.stored else None
            if args.json:
                record = {"function": name, "directory": namespace, "key": key,
                          "path": _where(entries, namespace, key), "bytes": item.size,
                          "stored": iso_time(item.stored), "used": iso_time(used), "call": call,
                          "depends": depends}
                listing.add({**record, "damaged": True} if damaged else record)
            else:
                shown = (call or "") + (f"  [depends on: {depends}]" if depends else "")
                shown = "(damaged)" if damaged else shown
                rows.row((name, key, format_size(item.size), age(item.stored), age(used), shown))
    if args.json:
        listing.close()
    return 0


def _described(entries: Entries, namespace: str, key: str) -> tuple[str | None, str | None, bool]:
    """An entry's call summary and what it depends on (None if not recorded), and whether it is damaged."""
    try:
        metadata = entries.head(namespace, key).metadata
    except (CacheError, OSError, KeyError):
        return None, None, True
    call = metadata.get("call")
    return (call if isinstance(call, str) and call else None), depends_summary(metadata) or None, False


def cmd_clear(args: argparse.Namespace) -> int:
    entries = _entries(args)
    targets = _functions(entries, args.func) if args.func is not None else None
    if targets == []:
        print(f"cachelib: no function named {printable(repr(args.func))} in {printable(entries.store.url)}",
              file=sys.stderr)
        return 1
    removed = left = 0
    for target in targets if targets is not None else [None]:
        report = entries.clear(target)
        removed, left = removed + report.removed, left + report.left
    if targets is None:
        SizeBudget(entries).record(0)
    where = ", ".join(t.rsplit("-", 1)[0] for t in targets) if targets else entries.store.url
    print(f"cleared {printable(where)}: {plural(removed, 'entry')} removed"
          + (f", {left:,} files of other members left" if left else ""))
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    if args.max_size is None and args.older_than is None and args.max_items is None:
        raise UsageError("prune needs --max-size, --max-items or --older-than")
    entries = _entries(args)
    removed, left = evict(
        entries, bytes_limit=args.max_size, items_limit=args.max_items, max_age=args.older_than,
        progress=progress,
    )
    cleaned = clean_leftovers(entries)
    try:
        for namespace in entries.namespaces():
            compact_stats(entries, namespace)
    except (CacheError, OSError) as exc:  # eviction is done; statistics stay unfolded, still counted
        reason = getattr(exc, "strerror", None) or exc
        print(f"cachelib: call statistics not folded: {printable(reason)}", file=sys.stderr)
    SizeBudget(entries).record(left)
    print(f"removed {plural(removed, 'entry')} and {plural(cleaned, 'leftover file')}; "
          f"{format_size(left)} left")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    entries = _entries(args)
    bad = removed = checked = 0
    report = JsonList({"location": entries.store.url}, "damaged", sys.stdout) if args.json else None
    for namespace, key, _ in progress(entries.all_entries(), "verified"):
        checked += 1
        problem = entries.verify(namespace, key)
        if problem is None:
            continue
        bad += 1
        where = _where(entries, namespace, key)
        found: dict[str, Any] = {"directory": namespace, "key": key, "path": where, "problem": problem,
                                 "removed": False}
        if args.fix:
            try:
                removed += entries.delete(namespace, key)
                found["removed"] = True
            except OSError as exc:
                found["error"] = str(exc.strerror or exc)
        if report is not None:
            report.add(found)
        elif found["removed"]:
            print(f"removed: {printable(where)}: {printable(problem)}")
        else:
            state = f"damaged, not removed ({found['error']})" if "error" in found else "damaged"
            print(f"{printable(state)}: {printable(where)}: {printable(problem)}")
    if report is not None:
        report.close(checked=checked, damaged_count=bad, removed=removed,
                     signatures_checked=entries.signer is not None)
        return 1 if bad > removed else 0
    signed = "" if entries.signer is not None else " (signatures not checked: no secret given)"
    fixed = f", {removed:,} removed" if args.fix else ""
    print(f"{plural(checked, 'entry')} checked, {bad:,} damaged{fixed}{signed}")
    return 1 if bad > removed else 0


def _where(entries: Entries, namespace: str, key: str) -> str:
    return entries.store.locate(names.entry(namespace, key))


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(args.location if args.location_given else None, size=args.size)
    return 0


_COMMANDS = {
    "info": ("a table per function: entries, size, hits, misses, time saved",
             "Show, per function, its entries and their size, and the hits, misses and time saved "
             "by every process that used the cache."),
    "ls": ("list entries (all, or one function's)",
           "List entries with their size, when they were stored and last used, and their call."),
    "clear": ("remove entries (all, or one function's)",
              "Remove cachelib's entries; files that are not cachelib's are never touched."),
    "prune": ("evict entries beyond limits, and leftovers of dead writers",
              "Evict least recently used entries until the limits hold; remove temporary files of "
              "dead writers and old lock files; fold call statistics."),
    "verify": ("check every entry's integrity without unpickling (exit 1 if any is damaged)",
               "Check every checksum (and, with the secret, every signature) without unpickling."),
    "demo": ("memoize a real computation and show hits, mmap and info",
             "Memoize an SVD and an FFT (a few seconds): misses, hits, a memory-mapped hit and info."),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cachelib", description="Inspect and maintain a cachelib cache directory."
    )
    parser.add_argument("--version", action="version", version=f"cachelib {__version__}")
    parser.add_argument("--location", "-l", default=None, metavar="DIR",
                        help="the cache directory or URL (default: $CACHELIB_LOCATION, else ./cachedir)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    where = argparse.ArgumentParser(add_help=False)
    where.add_argument("--location", "-l", dest="location_option", default=None, metavar="DIR",
                       help="the cache directory or URL, as an option")
    signed = argparse.ArgumentParser(add_help=False)
    signed.add_argument("--secret-file", default=None, metavar="FILE",
                        help="file holding the secret of a signed cache (or $CACHELIB_SECRET_FILE, "
                             "$CACHELIB_SECRET)")
    signed.add_argument("--share", choices=["group"], default=None,
                        help="the location is shared by a group (Cache(..., share='group'))")

    def command(name: str) -> argparse.ArgumentParser:
        summary, description = _COMMANDS[name]
        parents = [where] if name == "demo" else [where, signed]
        sub = commands.add_parser(name, parents=parents, help=summary, description=description)
        if name != "demo":
            sub.add_argument("directory", nargs="?", default=None, metavar="DIR",
                             help="the cache directory or URL (default: $CACHELIB_LOCATION, else ./cachedir)")
        return sub

    info = command("info")
    ls = command("ls")
    ls.add_argument("--func", metavar="NAME",
                    help="only this function (as 'info' shows it, or its last part); default: all")
    clear = command("clear")
    clear.add_argument("--func", metavar="NAME", help="only this function; default: all")
    prune = command("prune")
    prune.add_argument("--max-size", type=_size, metavar="SIZE", help="keep at most this much, e.g. 10G")
    prune.add_argument("--max-items", type=int, metavar="N", help="keep at most this many entries")
    prune.add_argument("--older-than", type=parse_duration, metavar="AGE",
                       help="remove entries stored longer ago, e.g. 90s, 45m, 12h, 30d, 2w")
    verify = command("verify")
    verify.add_argument("--fix", action="store_true", help="remove damaged entries")
    for sub in (info, ls, verify):
        sub.add_argument("--json", action="store_true",
                         help="print one JSON document (its schema is in the documentation) instead of text")
    demo = command("demo")
    demo.add_argument("--size", type=int, default=600, metavar="N",
                      help="matrix size of the demo's SVD (default 600)")
    return parser


def _one_line_warning(message: Warning | str, *args: object, **kwargs: object) -> None:
    print(f"cachelib: warning: {printable(message)}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return its exit code."""
    shown, warnings.showwarning = warnings.showwarning, _one_line_warning
    try:
        return _run(argv)
    finally:
        warnings.showwarning = shown


def _run(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    chosen = getattr(args, "directory", None) or args.location_option or args.location
    args.location_given = chosen is not None
    args.location = chosen or os.environ.get("CACHELIB_LOCATION", "cachedir")
    handlers = {"info": cmd_info, "ls": cmd_ls, "clear": cmd_clear, "prune": cmd_prune,
                "verify": cmd_verify, "demo": cmd_demo}
    try:
        return handlers[args.command](args)
    except (UsageError, NotACacheError) as exc:
        print(f"cachelib: {printable(exc)}", file=sys.stderr)
        return 2
    except CacheError as exc:
        print(f"cachelib: {printable(exc)}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        return 0
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"cachelib: {printable(exc.strerror or exc)}{printable(where)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
