"""Benchmark what keeping keys honest costs: run-time recording, file checks, global values.

Scenarios (each variant in a fresh "spawn" child, one at a time; ``--quick`` shrinks them):

1. ``hit-small``: a hit with small scalar arguments (``f(3, 4.0, "abc")``), each of
   20,000 hits timed alone; median in microseconds. Variants: the defaults (run-time
   recording and file tracking on) and both turned off.
2. ``hit-files``: a hit of a function that read 0 or 10 files during its miss (settled, written
   200 ms before; or racy, written just before, whose content a process hashes once); the hit
   checks each recorded file (one ``stat``). Target: 10 files cost at most 15 us more.
3. ``miss-python``: a miss whose compute is a pure-Python loop calling small user
   helpers 10^6 times; the memoized call against the plain call of the same function
   (``miss / plain``), recording on and off. Target on Python 3.12+: at most 1.05x.
4. ``miss-numpy``: a numpy-heavy miss (products and an SVD of 600x600 matrices), the
   same ratio. Target: within noise.
5. ``file-first-hash``: a miss of a function that reads one byte of a 1 GiB file (in
   the page cache): the memoized call minus the plain call is the cost of hashing the
   file's content the first time; reported as GB/s. Target: at least 5 GB/s. Then a
   fresh process hits: the file's identity is unchanged, so it is not read again
   (``hit`` row: the whole hit, in ms).
6. ``hit-global``: a hit of a function that reads a 100 MiB global array (hashed at
   each call) against ``cachelib.hash`` of that array. Target: at most 1.3x.

``--code DIR`` runs the children on the cachelib found in DIR (a checkout of another
revision, for a before/after comparison in one sitting); variants that revision does
not have are marked n/a. Medians of ``--rounds`` rounds, spread over the run.

Outputs: a table on stdout and in ``benchmarks/results/tracking[-quick].txt``, raw
numbers in ``tracking.json`` and the ratios against their targets in ``tracking.png``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from typing import Any

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _harness import (
    describe_machine,
    fmt,
    format_table,
    load_average,
    machine_info,
    run_isolated,
    write_json,
    write_text,
)

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
GIB = 1 << 30
OFF = {"track_runtime": False, "track_files": False}

# -- the functions measured (module level: the children import this file) ----------------------

SCALE = 1.5


def helper(x: float) -> float:
    return x * SCALE


def small_args(a: int, b: float, c: str) -> float:
    return helper(a) + b + len(c)


def step(value: int) -> int:
    return (value * 7 + 3) % 1009


def add(total: int, value: int) -> int:
    return total + value


def python_heavy(n: int) -> int:
    total = 0
    for i in range(n):
        total = add(total, step(i))
    return total


def numpy_heavy(seed: int) -> float:
    rng = np.random.default_rng(seed)
    a = rng.random((600, 600))
    b = a @ a.T + np.eye(600)
    return float(np.linalg.svd(b, compute_uv=False)[0])


def read_files(paths: tuple[str, ...]) -> int:
    total = 0
    for path in paths:
        with open(path, "rb") as handle:
            total += len(handle.read())
    return total


def first_byte(path: str) -> int:
    with open(path, "rb") as handle:
        return handle.read(1)[0]


BIG_GLOBAL = np.zeros(0)


def reads_global(k: int) -> float:
    return float(BIG_GLOBAL[k])


# -- the children ---------------------------------------------------------------------------


def _setup(code: str | None) -> Any:
    if code:
        sys.path.insert(0, code)
    import cachelib

    return cachelib


def _memoize(cache: Any, func: Any, options: dict[str, Any]) -> Any:
    """``cache.memoize(func, **options)``, or None where this revision lacks an option."""
    try:
        return cache.memoize(func, **options)
    except TypeError:
        return None


def _hits(call: Any, count: int) -> float:
    clock = time.perf_counter_ns
    times = []
    for _ in range(count):
        start = clock()
        call()
        times.append(clock() - start)
    return statistics.median(times) / 1000


def child_hit_small(code: str | None, options: dict[str, Any], count: int) -> dict[str, Any] | None:
    cachelib = _setup(code)
    cache = cachelib.Cache(tempfile.mkdtemp(prefix="cl-bench-"), fsync=False)
    f = _memoize(cache, small_args, options)
    if f is None:
        return None
    f(3, 4.0, "abc")
    return {"us": _hits(lambda: f(3, 4.0, "abc"), count)}


def child_hit_files(code: str | None, files: int, count: int, settle: bool = True) -> dict[str, Any]:
    cachelib = _setup(code)
    folder = tempfile.mkdtemp(prefix="cl-bench-")
    paths = []
    for i in range(files):
        path = os.path.join(folder, f"input{i}.bin")
        with open(path, "wb") as handle:
            handle.write(os.urandom(4096))
        paths.append(path)
    if settle:  # settled before the call, as inputs usually are (written more than 50 ms before)
        time.sleep(0.2)
    cache = cachelib.Cache(os.path.join(folder, "cache"), fsync=False)
    f = cache.memoize(read_files)
    key = tuple(paths)
    f(key)
    return {"us": _hits(lambda: f(key), count)}


def child_miss(code: str | None, which: str, options: dict[str, Any], runs: int) -> dict[str, Any] | None:
    cachelib = _setup(code)
    func, argument = (python_heavy, 1_000_000) if which == "python" else (numpy_heavy, 0)
    cache = cachelib.Cache(tempfile.mkdtemp(prefix="cl-bench-"), fsync=False)
    f = _memoize(cache, func, options)
    if f is None:
        return None
    plain, memoized = [], []
    func(argument)  # warm
    for run in range(runs):  # alternate, so that a noisy moment hits both alike
        arg = argument + run if which == "python" else run
        start = time.perf_counter()
        func(arg)
        plain.append(time.perf_counter() - start)
        start = time.perf_counter()
        f(arg)  # a fresh key each run: a miss
        memoized.append(time.perf_counter() - start)
    return {"plain_s": statistics.median(plain), "memoized_s": statistics.median(memoized),
            "ratio": statistics.median(m / p for m, p in zip(memoized, plain))}


def child_file_first_hash(code: str | None, size: int, runs: int) -> dict[str, Any]:
    cachelib = _setup(code)
    folder = tempfile.mkdtemp(prefix="cl-bench-", dir=os.environ.get("CACHELIB_BENCH_DIR"))
    path = os.path.join(folder, "big.bin")
    block = np.random.default_rng(0).integers(0, 255, 64 << 20, dtype=np.uint8).tobytes()
    with open(path, "wb") as handle:
        for _ in range(size // len(block)):
            handle.write(block)
    os.utime(path, ns=(time.time_ns() - 10**10,) * 2)
    with open(path, "rb") as handle:  # into the page cache
        while handle.read(64 << 20):
            pass
    costs, hits = [], []
    for run in range(runs):
        cache = cachelib.Cache(os.path.join(folder, f"cache{run}"), fsync=False)
        f = cache.memoize(first_byte)
        start = time.perf_counter()
        first_byte(path)
        plain = time.perf_counter() - start
        start = time.perf_counter()
        f(path)  # a miss: the file is hashed when the entry is stored
        costs.append(time.perf_counter() - start - plain)
        _forget_contents()
        start = time.perf_counter()
        f(path)  # a hit in a process that never hashed it: one stat
        hits.append(time.perf_counter() - start)
        _forget_contents()
    os.unlink(path)
    seconds = statistics.median(costs)
    return {"gb_s": size / seconds / 1e9, "hash_s": seconds, "hit_ms": statistics.median(hits) * 1000}


def _forget_contents() -> None:
    """As a fresh process: no digest of a file's content remembered."""
    try:
        from cachelib._keys import files
    except ImportError:
        return
    files._known.clear()


def child_hit_global(code: str | None, nbytes: int, count: int) -> dict[str, Any]:
    cachelib = _setup(code)
    global BIG_GLOBAL
    BIG_GLOBAL = np.random.default_rng(1).random(nbytes // 8)
    cache = cachelib.Cache(tempfile.mkdtemp(prefix="cl-bench-"), fsync=False)
    f = cache.memoize(reads_global)
    f(3)
    hit = statistics.median(_timed(lambda: f(3)) for _ in range(count))
    hashed = statistics.median(_timed(lambda: cachelib.hash(BIG_GLOBAL)) for _ in range(count))
    return {"hit_ms": hit * 1000, "hash_ms": hashed * 1000, "ratio": hit / hashed}


def _timed(call: Any) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


# -- the schedule -----------------------------------------------------------------------------


def schedule(quick: bool) -> list[tuple[str, str, Any, tuple[Any, ...]]]:
    """(scenario, variant, child, arguments without the code directory)."""
    hits = 2000 if quick else 20_000
    runs = 3 if quick else 7
    return [
        ("hit-small", "defaults", child_hit_small, ({}, hits)),
        ("hit-small", "recording off", child_hit_small, (OFF, hits)),
        ("hit-files", "0 files", child_hit_files, (0, hits)),
        ("hit-files", "10 files", child_hit_files, (10, hits)),
        ("hit-files", "10 racy files", child_hit_files, (10, hits, False)),
        ("miss-python", "recording on", child_miss, ("python", {}, runs)),
        ("miss-python", "recording off", child_miss, ("python", OFF, runs)),
        ("miss-numpy", "recording on", child_miss, ("numpy", {}, runs)),
        ("miss-numpy", "recording off", child_miss, ("numpy", OFF, runs)),
        ("file-first-hash", "1 GiB" if not quick else "128 MiB", child_file_first_hash,
         ((128 << 20) if quick else GIB, 3 if quick else 5)),
        ("hit-global", "100 MiB array", child_hit_global, ((10 << 20) if quick else (100 << 20), 7)),
    ]


def run(options: argparse.Namespace) -> list[dict[str, Any]]:
    results: dict[tuple[str, str], list[dict[str, Any]]] = {}
    plan = schedule(options.quick)
    for round_number in range(options.rounds):
        for scenario, variant, child, arguments in plan:
            print(f"round {round_number + 1}: {scenario} {variant} (load {fmt(load_average(), 2)})",
                  file=sys.stderr)
            outcome = run_isolated(child, options.code, *arguments, timeout=1800)
            if not outcome["ok"]:
                print(outcome["error"], file=sys.stderr)
            result = outcome.get("result") if outcome["ok"] else {"error": outcome["error"]}
            results.setdefault((scenario, variant), []).append(result)
    records = []
    for (scenario, variant), found in results.items():
        valid = [item for item in found if item and "error" not in item]
        merged: dict[str, Any] = {"scenario": scenario, "variant": variant, "runs": len(valid)}
        for field in (valid[0] if valid else {}):
            merged[field] = statistics.median(item[field] for item in valid)
        if found and not valid:
            merged["error"] = "n/a" if all(item is None for item in found) else "failed"
        records.append(merged)
    return records


def _find(records: list[dict[str, Any]], scenario: str, variant: str, field: str) -> float | None:
    for item in records:
        if item["scenario"] == scenario and item["variant"] == variant:
            value = item.get(field)
            return float(value) if value is not None else None
    return None


def targets(records: list[dict[str, Any]]) -> list[tuple[str, float | None, float, bool]]:
    """(what, measured, target, higher is better) for each target of the issue."""
    none = _find(records, "hit-files", "0 files", "us")
    ten = _find(records, "hit-files", "10 files", "us")
    first_hash = next((item.get("gb_s") for item in records if item["scenario"] == "file-first-hash"), None)
    extra = ten - none if ten is not None and none is not None else None
    return [
        ("hit-small with recording on (us)", _find(records, "hit-small", "defaults", "us"), 6.7, False),
        ("10 recorded files, extra per hit (us)", extra, 15.0, False),
        ("Python-heavy miss / plain call", _find(records, "miss-python", "recording on", "ratio"), 1.05,
         False),
        ("numpy-heavy miss / plain call", _find(records, "miss-numpy", "recording on", "ratio"), 1.05, False),
        ("first hash of a file (GB/s)", first_hash, 5.0, True),
        ("hit reading a 100 MiB global / hash of it",
         _find(records, "hit-global", "100 MiB array", "ratio"), 1.3, False),
    ]


def report(records: list[dict[str, Any]], info: dict[str, Any], options: argparse.Namespace) -> str:
    rows = []
    for item in records:
        fields = [f"{key} {fmt(value, 3)}" for key, value in item.items()
                  if key not in ("scenario", "variant", "runs") and isinstance(value, float)]
        medians = item.get("error", "  ".join(fields))
        rows.append([item["scenario"], item["variant"], str(item["runs"]), medians])
    lines = [describe_machine(info), f"cachelib from: {options.code or 'this checkout'}", "",
             format_table(["scenario", "variant", "runs", "medians"], rows), "", "targets:"]
    for what, measured, target, higher in targets(records):
        ok = measured is not None and (measured >= target if higher else measured <= target)
        verdict = "n/a" if measured is None else ("met" if ok else "MISSED")
        lines.append(f"  {what}: {fmt(measured, 3)} (target {'>=' if higher else '<='} {target}) {verdict}")
    return "\n".join(lines)


def plot(records: list[dict[str, Any]], path: str) -> None:
    try:
        import matplotlib
    except ImportError:
        print("matplotlib is not installed: no plot", file=sys.stderr)
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    found = [(what, measured / target if not higher else target / measured)
             for what, measured, target, higher in targets(records) if measured]
    figure, axis = plt.subplots(figsize=(8, 4))
    axis.barh([what for what, _ in found], [share for _, share in found],
              color=["tab:green" if share <= 1 else "tab:red" for _, share in found])
    axis.axvline(1.0, color="black", linewidth=1)
    axis.set_xlabel("measured / target (1 or less meets the target)")
    axis.set_title(f"cachelib: the cost of honest keys (Python {sys.version.split()[0]})", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--code", help="run the children on the cachelib in this directory")
    parser.add_argument("--output-dir", default=RESULTS)
    parser.add_argument("--tag", default="", help="a suffix for the output files (e.g. the Python version)")
    options = parser.parse_args()
    info = machine_info(("numpy", "cachelib"), directory=tempfile.gettempdir())
    records = run(options)
    text = report(records, info, options)
    print(text)
    name = "tracking" + ("-quick" if options.quick else "") + (f"-{options.tag}" if options.tag else "")
    write_text(os.path.join(options.output_dir, f"{name}.txt"), text)
    write_json(os.path.join(options.output_dir, f"{name}.json"), {"machine": info, "records": records})
    plot(records, os.path.join(options.output_dir, f"{name}.png"))


if __name__ == "__main__":
    main()
