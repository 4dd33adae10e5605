"""Functions the real-condition tests memoize in forked children and fresh interpreters.

Each writes one line per real computation to the log it is given (an ignored
argument, so not part of the key): a test counts computations across processes.
``main`` is what a fresh interpreter runs: one scenario, then one JSON line with
the digests of the results and every warning raised.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import time
import warnings
from typing import Any

import numpy as np

import cachelib

fork = multiprocessing.get_context("fork")


def note(log: str | None, what: str) -> None:
    """Append one line to ``log`` (O_APPEND keeps lines whole across processes)."""
    if log:
        with open(log, "a") as handle:
            handle.write(what + "\n")


def computations(log: str | os.PathLike[str]) -> list[str]:
    """The computations logged so far."""
    try:
        with open(log) as handle:
            return handle.read().splitlines()
    except FileNotFoundError:
        return []


def square(x: int, log: str | None = None) -> np.ndarray:
    """8 KiB of float64: ``arange(1024) * x``."""
    note(log, f"square {x}")
    return np.arange(1024, dtype=np.float64) * x


def block(x: int, nbytes: int, log: str | None = None) -> np.ndarray:
    """``nbytes`` of pseudo-random (incompressible) uint64, fixed by ``x``."""
    note(log, f"block {x} {nbytes}")
    return np.random.default_rng(x).integers(0, 2**63, nbytes // 8, dtype=np.uint64)


def plain(x: int, log: str | None = None) -> dict[str, Any]:
    """Plain data only (what a group member may load from another's entry): arrays and builtins."""
    note(log, f"plain {x}")
    return {"x": x, "name": f"value {x}", "values": np.arange(x, x + 100, dtype=np.int32),
            "pairs": [(x, float(x) / 2), (x + 1, None)]}


def large(x: int, log: str | None = None) -> dict[str, Any]:
    """Plain data of about 4 MB: hits read it in several passes, which widens race windows."""
    note(log, f"large {x}")
    return {"x": x, "label": f"large {x}", "values": np.full(500_000, x, dtype=np.int64)}


def slow(x: int, delay: float = 60.0, log: str | None = None) -> int:
    """Takes ``delay`` seconds (memoize it ignoring ``delay``): its lock's holder can be killed meanwhile."""
    note(log, f"slow {x}")
    time.sleep(delay)
    return x


def stamped(x: int, log: str | None = None) -> dict[str, Any]:
    """A result every part of which names the computation that made it.

    A random token goes into the pickled part and fills the arrays, whose lengths
    also depend on it: a hit mixing two files' bytes cannot pass ``stamp_problem``.
    """
    note(log, f"stamped {x}")
    token = int.from_bytes(os.urandom(6), "little") + 1
    n = 600 + token % 4096  # 4.7 KB or more: arrays under 4 KiB go in the pickle and are never mapped
    return {"x": x, "token": token, "label": f"token {token}", "lengths": [n, 3 * n],
            "arrays": [np.full(n, token, dtype=np.int64), np.full(3 * n, -token, dtype=np.int64)]}


def stamp_problem(result: Any, memmap: bool) -> str | None:
    """What is wrong with a ``stamped`` result (None if it is one computation's, whole)."""
    try:
        token, lengths, arrays = result["token"], result["lengths"], result["arrays"]
        if result["label"] != f"token {token}":
            return f"label {result['label']!r} does not match token {token}"
        for array, length, sign in zip(arrays, lengths, (1, -1)):
            if memmap and type(array) is not np.memmap:
                return f"an array is a {type(array).__name__}, not a memmap"
            if array.shape != (length,) or not np.all(array == sign * token):
                return f"an array of shape {array.shape} does not hold token {token} ({length} expected)"
    except Exception as exc:
        return f"unreadable result: {exc!r}"
    return None


def memoized(location: str, function: Any, **options: Any) -> Any:
    """``function`` memoized in a cache at ``location`` with ``options``."""
    return cachelib.Cache(location, **options).memoize(ignore=["log"])(function)


def expensive(key: int, log: str) -> np.ndarray:
    """Note the computation, then return a result that depends only on ``key`` (800 KB)."""
    note(log, str(key))
    return np.full(100_000, float(key)) ** 2


def square_calls(location: str, log: str, calls: list[int], **options: Any) -> list[str]:
    """Call ``square(x)`` for each ``x`` of ``calls`` in a cache at ``location``; the results' digests."""
    f = memoized(location, square, **options)
    return [digest(f(x, log=log)) for x in calls]


def _warnings(caught: list[warnings.WarningMessage]) -> list[list[str]]:
    return [[w.category.__name__, str(w.message)] for w in caught]


def _calls(location: str, options: str, *calls: str) -> dict[str, Any]:
    """Call ``name:arg:arg`` in a cache made with the JSON ``options`` (``log`` goes to the function)."""
    settings = json.loads(options)
    log = settings.pop("log", None)
    functions: dict[str, Any] = {}
    results = []
    for call in calls:
        name, *args = call.split(":")
        if name not in functions:
            functions[name] = memoized(location, globals()[name], **settings)
        result = functions[name](*map(int, args), log=log)
        results.append({"digest": digest(result), "memmap": _all_memmaps(result)})
    return {"results": results}


def _workers(location: str, count: str) -> dict[str, Any]:
    """One call in this process, then ``count`` forked workers with a miss and a hit each."""
    f = memoized(location, square)
    f(0)
    time.sleep(0.1)
    workers = [fork.Process(target=_worker, args=(f, i)) for i in range(1, int(count) + 1)]
    with warnings.catch_warnings():
        # Python 3.12+ warns at every fork of a process with threads (cachelib's background
        # worker is one); forked workers are what this scenario is about.
        warnings.filterwarnings("ignore", r"This process .* is multi-threaded", DeprecationWarning)
        for worker in workers:
            worker.start()
    for worker in workers:
        worker.join(60)
    return {"exit codes": [w.exitcode for w in workers]}


def _worker(f: Any, i: int) -> None:
    f(i)
    f(i)


def _killed(location: str, calls: str) -> dict[str, Any]:
    """Make ``calls`` misses and as many hits, say so, then wait to be killed."""
    f = memoized(location, square)
    for i in range(int(calls)):
        f(i)
        f(i)
    print("ready", flush=True)
    time.sleep(120)
    return {}


def _all_memmaps(value: Any) -> bool:
    if isinstance(value, np.ndarray):
        return type(value) is np.memmap
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (list, tuple)):
        return all(_all_memmaps(v) for v in value if isinstance(v, (np.ndarray, dict, list, tuple)))
    return True


SCENARIOS = {"call": _calls, "workers": _workers, "killed": _killed}


def main(argv: list[str]) -> int:
    """Run ``SCENARIO ARGS...`` and print its report, with the warnings raised, as one JSON line."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = SCENARIOS[argv[0]](*argv[1:])
    report["warnings"] = _warnings(caught)
    print(json.dumps(report), flush=True)
    return 0


def digest(value: Any) -> str:
    """A digest of a result built from arrays, scalars and containers (memmap or not)."""
    sha = hashlib.sha256()

    def feed(item: Any) -> None:
        if isinstance(item, np.ndarray):
            sha.update(f"array {item.dtype.str} {item.shape}".encode())
            sha.update(np.ascontiguousarray(item).tobytes())
        elif isinstance(item, dict):
            sha.update(f"dict {len(item)}".encode())
            for key, part in item.items():
                feed(key)
                feed(part)
        elif isinstance(item, (list, tuple)):
            sha.update(f"{type(item).__name__} {len(item)}".encode())
            for part in item:
                feed(part)
        else:
            sha.update(f"{type(item).__name__} {item!r}".encode())

    feed(value)
    return sha.hexdigest()
