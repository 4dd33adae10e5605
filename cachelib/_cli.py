"""The command line: ``python -m cachelib`` and the ``cachelib`` console script.

Rule: every command works on a location given by ``--location`` (or the
``CACHELIB_LOCATION`` environment variable), prints plain text, shows progress
only on a terminal, and exits 0 when all is well, 1 when it found problems and 2
on a usage error.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

from ._cache import function_info
from ._errors import CacheError
from ._sizes import format_size, parse_size
from ._stats import compact_stats
from ._store import LocalStore

__all__ = ["main"]

T = TypeVar("T")
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


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


def progress(items: Iterable[T], label: str, stream: object = None) -> Iterator[T]:
    """Yield ``items``, drawing a counter on stderr when it is a terminal."""
    out = stream or sys.stderr
    shown = getattr(out, "isatty", lambda: False)()
    last = 0.0
    count = 0
    for count, item in enumerate(items, 1):
        if shown and time.monotonic() - last > 0.2:
            last = time.monotonic()
            out.write(f"\r{label}: {count:,}")  # type: ignore[attr-defined]
            out.flush()  # type: ignore[attr-defined]
        yield item
    if shown:
        out.write(f"\r{label}: {count:,} done\n")  # type: ignore[attr-defined]


def _when(timestamp: float | None) -> str:
    if timestamp is None:
        return "-"
    return datetime.datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M")


def _store(args: argparse.Namespace) -> LocalStore:
    return LocalStore(args.location)


def _functions(store: LocalStore, name: str | None) -> list[Path]:
    directories = sorted(store.function_dirs())
    if name is None:
        return directories
    return [d for d in directories if d.name == name or d.name.rsplit("-", 1)[0] == name
            or d.name.rsplit("-", 1)[0].endswith("." + name)]


def cmd_info(args: argparse.Namespace) -> int:
    store = _store(args)
    rows = [function_info(store, d) for d in progress(_functions(store, None), "functions")]
    header = ("function", "entries", "size", "hits", "misses", "saved", "oldest", "newest")
    table = [header] + [
        (r.name, f"{r.entries:,}", format_size(r.bytes), f"{r.hits:,}", f"{r.misses:,}",
         f"{r.saved_seconds:.1f}s", _when(r.oldest), _when(r.newest))
        for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    print(f"cache at {store.location}")
    for row in table:
        cells = [cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths))]
        print("  ".join(cells))
    total = sum(r.bytes for r in rows)
    print(f"total: {sum(r.entries for r in rows):,} entries, {format_size(total)}")
    return 0


def cmd_ls(args: argparse.Namespace) -> int:
    store = _store(args)
    directories = _functions(store, args.func)
    if not directories:
        print(f"no function named {args.func!r} in {store.location}; see 'cachelib info'", file=sys.stderr)
        return 1
    for directory in directories:
        for entry in store.entries(directory):
            stat = entry.stat()
            print(f"{directory.name}/{entry.name[:-3]}  {format_size(stat.st_size):>10}  "
                  f"stored {_when(stat.st_mtime)}  used {_when(max(stat.st_atime, stat.st_mtime))}")
    return 0


def cmd_clear(args: argparse.Namespace) -> int:
    store = _store(args)
    if args.func is None:
        store.clear()
        print(f"cleared {store.location}")
        return 0
    directories = _functions(store, args.func)
    if not directories:
        print(f"no function named {args.func!r} in {store.location}", file=sys.stderr)
        return 1
    for directory in directories:
        store.clear(directory)
        print(f"cleared {directory.name}")
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    store = _store(args)
    if args.max_size is None and args.older_than is None and args.max_items is None:
        print("prune needs --max-size, --max-items or --older-than", file=sys.stderr)
        return 2
    removed = store.evict(
        bytes_limit=args.max_size, items_limit=args.max_items, max_age=args.older_than, progress=progress
    )
    cleaned = store.clean_leftovers()
    for directory in store.function_dirs():
        compact_stats(directory)
    print(f"removed {removed:,} entries and {cleaned:,} leftover files")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    store = _store(args)
    bad = 0
    checked = 0
    entries = (e for d in _functions(store, None) for e in store.entries(d))
    for entry in progress(entries, "verified"):
        checked += 1
        problem = store.verify(entry.path)
        if problem is None:
            continue
        bad += 1
        action = "removed" if args.fix else "damaged"
        print(f"{action}: {entry.path}: {problem}")
        if args.fix:
            store.delete(Path(entry.path))
    print(f"{checked:,} entries checked, {bad:,} damaged" + (" and removed" if args.fix and bad else ""))
    return 1 if bad and not args.fix else 0


def cmd_demo(args: argparse.Namespace) -> int:
    from ._demo import run_demo

    run_demo(args.location if args.location_given else None, size=args.size)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cachelib", description="Inspect and maintain a cachelib cache directory."
    )
    parser.add_argument("--location", "-l", default=None,
                        help="the cache directory (default: $CACHELIB_LOCATION, else ./cachedir)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    # --location is accepted after the command too ("cachelib demo --location DIR").
    where = argparse.ArgumentParser(add_help=False)
    where.add_argument("--location", "-l", default=argparse.SUPPRESS, help=argparse.SUPPRESS)

    def command(name: str, summary: str) -> argparse.ArgumentParser:
        return commands.add_parser(name, parents=[where], help=summary)

    command("info", "a table per function: entries, size, hits, misses, time saved")
    ls = command("ls", "list the entries of one function")
    ls.add_argument("func", help="function name as shown by 'info' (or its last part)")
    clear = command("clear", "remove entries (all, or one function's)")
    clear.add_argument("--func", help="only this function")
    prune = command("prune", "evict least recently used entries beyond limits")
    prune.add_argument("--max-size", type=_size, help="keep at most this much, e.g. 10G")
    prune.add_argument("--max-items", type=int, help="keep at most this many entries")
    prune.add_argument("--older-than", type=parse_duration, help="remove entries stored longer ago, e.g. 30d")
    verify = command("verify", "check every entry's integrity (exit 1 if any is damaged)")
    verify.add_argument("--fix", action="store_true", help="remove damaged entries")
    demo = command("demo", "memoize a real computation and show hits, mmap and info")
    demo.add_argument("--size", type=int, default=1200, help="matrix size of the demo's SVD (default 1200)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return its exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    args.location_given = args.location is not None
    if args.location is None:
        args.location = os.environ.get("CACHELIB_LOCATION", "cachedir")
    if args.command not in ("demo",) and not Path(args.location).is_dir():
        print(f"cachelib: no cache at {args.location!r}; pass --location DIR", file=sys.stderr)
        return 2
    handlers = {"info": cmd_info, "ls": cmd_ls, "clear": cmd_clear, "prune": cmd_prune,
                "verify": cmd_verify, "demo": cmd_demo}
    try:
        return handlers[args.command](args)
    except CacheError as exc:
        print(f"cachelib: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        return 0

