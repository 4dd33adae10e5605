"""Scale benchmark: a cachelib cache of a million small entries.

Every entry is one result of ``f(i) = i * 0.5`` memoized with
``Cache(location, fsync=False).memoize(f)``, for ``i`` in ``range(N)`` (N = 1,000,000
by default, ``--entries N`` to change it, ``--quick`` = 20,000); each entry file is a
few hundred bytes (the report gives the mean). Two caches are measured one after the
other, N/10 entries then N entries (the N/10 one only to tell whether memory grows
with N), plus a 100-entry cache kept for the whole run as the reference for hit latency.

1. Build. ``N/100`` real memoized misses (``f(i)`` one by one, in this process)
   are timed and extrapolated to N. If the whole population through the API would
   take more than ``API_BUDGET`` (15 min), the rest is written directly: a pool of
   two worker processes publishes each ``f(i)`` with ``Memory.call`` (joblib's
   "recompute and store"), which runs the one miss path of every memoized call (its
   key, envelope, metadata and call statistics), so every entry is the one a miss
   would leave and a real hit through the API; only the miss's first lookup and
   per-key lock are skipped. Otherwise the same pool calls the
   memoized function (real misses). The build rate is entries / wall seconds. A
   direct build is checked before anything is measured: its entries carry the same
   metadata fields and header flags as an API entry, and a fresh wrapper hits them.
2. Commands, each a real subprocess (``python -m cachelib --location DIR ...``),
   waited for with ``os.wait4`` so that its own ``ru_maxrss`` (peak RSS, what
   ``/usr/bin/time -v`` prints) and CPU times are read: ``info`` (three runs),
   ``verify`` (one run, reads every entry) and ``prune --max-size X`` with X = 90%
   of the bytes on disk (removes ~10%; one run, last because it deletes).
   Wall time includes interpreter start-up, reported separately (``python -c
   "import cachelib._cli.main"``). ``Cache.info()`` is timed in a fresh child process,
   with its peak extra RSS (VmHWM reset, see ``_harness.PeakRSS``). The page cache
   is warm for all of these: the entries were just written and RAM holds them all
   (caches are never dropped, the machine is shared).
3. Hit latency, each case in its own fresh child: the child first calls every key
   once untimed (page cache, dentries and inodes warm; the once-a-minute access-time
   stamp of each entry done), then times the same ``HITS`` calls one by one with
   ``perf_counter_ns``; every call must be a hit. Cases: random keys of the
   100-entry cache and of the big one through one memoized wrapper, as a program
   would call it; the big cache with only 100 hot keys; and "first hit in a fresh
   store", a new ``Cache`` every ``FRESH_BATCH`` calls of distinct keys, so that
   every timed hit reads its file whatever the cache size (``Entries`` keeps the
   checked bytes of the last small entries read in memory, which favours a small
   key set, not a small cache). Rounds take turns over the cases (``HIT_ROUNDS``);
   the median over rounds of each round's median and p90 is reported, with the
   ratio big / 100.
4. Automatic size enforcement: in one child, three memoized copies of ``f`` share
   the N-entry cache: no limit, ``bytes_limit`` = 1.5x the bytes on disk (checks but
   does not evict) and ``bytes_limit`` = 0.9x (evicts). They take turns in blocks
   of ``BLOCK`` misses on fresh keys, so machine noise hits all three alike. A
   limited cache's ``SizeBudget`` scans all entries once its own writes reach a
   tenth of the limit (``SCAN_FRACTION``), or when its estimate passes the limit,
   so the miss count is at least one such period (and at least ``MIN_MISSES``):
   the mean then includes the amortised scan. Scans are timed by wrapping each
   cache's own ``SizeBudget.enforce`` (a scan, its evictions and its size record).

The raw cost of creating a small file (create, write, rename) in the benchmark
directory is measured as context: on slow metadata storage it dominates a miss.

Usage::

    python benchmarks/scale.py [--entries N] [--dir DIR] [--quick] [--keep]
                               [--build auto|api|direct]

Outputs: a table on stdout and in ``benchmarks/results/scale.txt``, raw numbers in
``scale.json`` and bar charts in ``scale.png`` (``scale-quick.*`` with ``--quick``).
Everything is built in a temporary directory (under ``--dir`` if given) that is
removed at the end unless ``--keep``.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from typing import Any

import cachelib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _harness import (
    MB,
    PeakRSS,
    describe_machine,
    fmt,
    format_table,
    machine_info,
    run_isolated,
    timed,
    write_json,
    write_text,
)

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
DEFAULT_ENTRIES = 1_000_000
QUICK_ENTRIES = 20_000
REFERENCE_ENTRIES = 100
API_BUDGET = 15 * 60.0
"""Seconds the whole population through ``memoize`` may take before direct writes are used."""
WORKERS = 2
CHUNK = 2_000
"""Keys per task handed to a build worker."""
HITS = 5_000
HIT_ROUNDS = 3
FRESH_BATCH = 100
"""Hits per fresh store in the \"first hit\" cases."""
MIN_MISSES = 2_000
BLOCK = 100
LIMIT_NO_EVICT = 1.5
LIMIT_EVICT = 0.9
SCAN_FRACTION = 0.1
"""Share of its limit a ``SizeBudget`` writes between two scans (``SizeBudget.note_write``)."""
PRUNE_KEEP = 0.9
INFO_RUNS = 3
SEED = 0
TIMEOUT = 3 * 3600.0
TARGET_HIT_RATIO = 1.5
TARGET_ENFORCEMENT = 0.05
TARGET_INFO_SECONDS = 30.0
ENTRY_BLOCK_ESTIMATE = 4096 + 512
"""Disk bytes per small entry: one ext4 block, its inode and directory record."""


def payload(i: int) -> float:
    """The memoized function: a small result per integer."""
    return i * 0.5


def memoized_payload(location: str, bytes_limit: int | None = None) -> Any:
    """Return ``payload`` memoized in a ``Cache(location, fsync=False)``."""
    return cachelib.Cache(location, bytes_limit=bytes_limit, fsync=False).memoize(payload)


def log(message: str) -> None:
    """Print a progress line at once."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# -- building a cache -----------------------------------------------------------------------

_WORKER: Any = None
_DIRECT: Any = None


def _init_worker(location: str) -> None:
    global _WORKER, _DIRECT
    _WORKER = memoized_payload(location)
    _DIRECT = cachelib.Memory(location, verbose=0, backend_options={"fsync": False}).cache(payload)


def _api_chunk(bounds: tuple[int, int]) -> int:
    """Fill keys ``range(*bounds)`` with real memoized misses."""
    for i in range(*bounds):
        _WORKER(i)
    return bounds[1] - bounds[0]


def _direct_chunk(bounds: tuple[int, int]) -> int:
    """Publish ``f(i)`` for ``range(*bounds)`` through the miss path without its lookup and lock.

    ``Memory.call`` (joblib's "recompute and store") runs the one miss path that
    every call runs after its lookup: the same key, key parts, call summary,
    statistics and entry as a miss of ``f(i)``, in the same function directory.
    """
    for i in range(*bounds):
        _DIRECT.call(i)
    return bounds[1] - bounds[0]


def populate(location: str, start: int, stop: int, method: str) -> float:
    """Fill keys ``[start, stop)`` with a pool of ``WORKERS``; return wall seconds."""
    chunks = [(low, min(low + CHUNK, stop)) for low in range(start, stop, CHUNK)]
    task = _direct_chunk if method == "direct" else _api_chunk
    done, next_report = 0, 0.1
    started = time.perf_counter()
    with get_context("spawn").Pool(WORKERS, initializer=_init_worker, initargs=(location,)) as pool:
        for count in pool.imap_unordered(task, chunks):
            done += count
            if done / (stop - start) >= next_report:
                rate = done / (time.perf_counter() - started)
                log(f"  built {start + done:,} of {stop:,} ({rate:,.0f} entries/s)")
                next_report += 0.1
    return time.perf_counter() - started


def entry_head(location: str, i: int) -> Any:
    """Return the checked header (``_entry.EntryHead``) of the entry of ``f(i)``."""
    memoized = memoized_payload(location)
    return memoized.cache.entries.head(memoized.namespace, memoized.cache_key(i))


def entry_shape(location: str, i: int) -> tuple[Any, ...]:
    """What the entry of ``f(i)`` holds besides its values: metadata fields, key parts, flags."""
    head = entry_head(location, i)
    return sorted(head.metadata), sorted(head.metadata.get("key_parts", {})), head.signed, head.deferred


def check_direct(location: str, api_key: int, direct_keys: Sequence[int]) -> None:
    """Fail unless directly built entries look like an API entry and hit through a fresh wrapper."""
    expected = entry_shape(location, api_key)
    for i in direct_keys:
        shape = entry_shape(location, i)
        if shape != expected:
            raise AssertionError(f"the direct entry of f({i}) differs from an API entry: {shape}, {expected}")
    memoized = memoized_payload(location)
    for i in direct_keys:
        if memoized(i) != payload(i):
            raise AssertionError(f"wrong result from the direct entry of f({i})")
    if memoized.stats.misses or memoized.stats.hits != len(direct_keys):
        raise AssertionError(f"direct entries do not hit: {memoized.stats}")


@dataclass
class Build:
    """How one cache was built."""

    entries: int
    method: str
    seconds: float
    sample_misses: int
    sample_seconds: float

    @property
    def rate(self) -> float:
        return self.entries / self.seconds

    @property
    def api_rate(self) -> float:
        return self.sample_misses / self.sample_seconds

    @property
    def projected_api_seconds(self) -> float:
        return self.entries / self.api_rate


def sample_misses(location: str, count: int) -> float:
    """Call the memoized function on keys ``range(count)`` here; return seconds."""
    memoized = memoized_payload(location)
    seconds, _ = timed(lambda: [memoized(i) for i in range(count)])
    return seconds


def choose_method(requested: str, projected_seconds: float) -> str:
    if requested != "auto":
        return requested
    return "direct" if projected_seconds > API_BUDGET else "api"


def build_cache(
    location: str, entries: int, requested: str, sample: tuple[int, float] | None = None
) -> Build:
    """Build ``entries`` entries: N/100 timed misses (unless ``sample`` says they were done), then the rest.

    The rest is written directly if the whole population through the API is projected
    to exceed ``API_BUDGET`` (or as ``requested``), else by real memoized misses.
    """
    if sample is None:
        count = max(1, entries // 100)
        sample = (count, sample_misses(location, count))
    count, sample_seconds = sample
    build = Build(entries, "api", sample_seconds, count, sample_seconds)
    build.method = choose_method(requested, build.projected_api_seconds)
    log(
        f"  {count:,} memoized misses in {sample_seconds:.2f} s ({build.api_rate:,.0f}/s): "
        f"{entries:,} through the API would take ~{build.projected_api_seconds / 60:.1f} min; "
        f"building the rest by {build.method}"
    )
    if count < entries:
        build.seconds += populate(location, count, entries, build.method)
        if build.method == "direct":
            direct = range(count, entries)
            check_direct(location, 0, random.Random(SEED).sample(direct, min(100, len(direct))))
    return build


# -- commands in subprocesses -------------------------------------------------------------------


@dataclass
class ProcessRun:
    """One finished subprocess: wall time, its own peak RSS and CPU times, its output."""

    argv: list[str]
    seconds: float
    max_rss_bytes: int
    user_seconds: float
    system_seconds: float
    returncode: int
    output: str


def run_process(argv: list[str]) -> ProcessRun:
    """Run ``argv``; read the child's own rusage with ``os.wait4`` (not the summed children's)."""
    with tempfile.TemporaryFile("w+") as output:
        started = time.perf_counter()
        process = subprocess.Popen(argv, stdout=output, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        output.seek(0)
        text = output.read()
    return ProcessRun(
        argv,
        seconds,
        usage.ru_maxrss * 1024,
        usage.ru_utime,
        usage.ru_stime,
        process.returncode,
        text[-2000:],
    )


def run_cli(location: str, *args: str) -> ProcessRun:
    """Run ``python -m cachelib --location DIR ARGS``."""
    return run_process([sys.executable, "-m", "cachelib", "--location", location, *args])


def _number(pattern: str, text: str) -> int | None:
    match = re.search(pattern, text)
    return int(match.group(1).replace(",", "")) if match else None


def measure_startup() -> ProcessRun:
    """The fixed cost inside every command's wall time: start Python, import the CLI."""
    return run_process([sys.executable, "-c", "import cachelib._cli.main"])


# -- measurements in fresh child processes -----------------------------------------------------


def child_cache_info(location: str, runs: int) -> dict[str, Any]:
    """Time ``Cache(location).info()`` and its peak extra RSS, ``runs`` times."""
    cache = cachelib.Cache(location)
    records = []
    info = None
    for _ in range(runs):
        with PeakRSS() as peak:
            seconds, info = timed(cache.info)
        records.append(
            {"seconds": seconds, "extra_rss_bytes": peak.extra_bytes, "peak_rss_bytes": peak.peak_bytes}
        )
    assert info is not None
    return {"runs": records, "entries": info.entries, "bytes": info.bytes}


def percentile(values: Sequence[float], fraction: float) -> float:
    """Return the ``fraction`` quantile of ``values`` (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))]


def summarize_ns(times_ns: Sequence[int]) -> dict[str, float]:
    """Mean, median, p90 and max of call times in nanoseconds, as microseconds."""
    return {
        "count": len(times_ns),
        "mean_us": statistics.fmean(times_ns) / 1e3,
        "median_us": statistics.median(times_ns) / 1e3,
        "p90_us": percentile(times_ns, 0.9) / 1e3,
        "max_us": max(times_ns) / 1e3,
        "total_s": sum(times_ns) / 1e9,
    }


def hit_keys(key_space: int, hits: int, seed: int, batch: int | None) -> list[int]:
    """Random existing keys: independent draws, or batches of ``batch`` distinct keys."""
    rng = random.Random(seed)
    if batch is None:
        return [rng.randrange(key_space) for _ in range(hits)]
    return [key for _ in range(hits // batch) for key in rng.sample(range(key_space), batch)]


def child_hits(location: str, key_space: int, hits: int, seed: int, batch: int | None) -> dict[str, Any]:
    """Time hits of random keys below ``key_space`` after one untimed warm-up pass over them.

    ``batch=None``: one memoized wrapper makes every call, as a program would.
    ``batch=B``: a fresh ``Cache`` and wrapper every B calls of B distinct keys, so that
    every timed hit is the first of its key in its store (nothing kept in memory
    from an earlier read: the read path is the same whatever the cache size).
    """
    keys = hit_keys(key_space, hits, seed, batch)
    warm = memoized_payload(location)
    for i in keys:  # page cache, dentries, inodes and access-time stamps
        if warm(i) != payload(i):
            raise AssertionError(f"wrong result for key {i}")
    wrappers = [warm]
    times = []
    clock = time.perf_counter_ns
    for index, i in enumerate(keys):
        if batch is not None and index % batch == 0:
            wrappers.append(memoized_payload(location))
        memoized = wrappers[-1]
        started = clock()
        memoized(i)
        times.append(clock() - started)
    missed = sum(wrapper.stats.misses for wrapper in wrappers)
    if missed:
        raise AssertionError(f"{missed} of the calls missed: the cache is incomplete")
    return summarize_ns(times)


def _timed_scans(cache: cachelib.Cache, record: list[dict[str, float]]) -> None:
    """Wrap ``cache``'s own ``SizeBudget.enforce`` to record each scan's seconds and removals."""
    budget = cache._budget
    assert budget is not None, "a cache with a location has a size budget"
    original = budget.enforce

    def enforce(bytes_limit: int) -> int:
        started = time.perf_counter()
        removed = original(bytes_limit)
        record.append({"seconds": time.perf_counter() - started, "removed": removed})
        return removed

    budget.enforce = enforce  # type: ignore[method-assign]


def _miss_blocks(variants: dict[str, Any], first_key: int, misses: int) -> dict[str, list[int]]:
    """Call every variant on fresh keys, ``BLOCK`` at a time in rotating turns; return ns."""
    times: dict[str, list[int]] = {name: [] for name in variants}
    names = list(variants)
    key, done, turn = first_key, 0, 0
    clock = time.perf_counter_ns
    while done < misses:
        size = min(BLOCK, misses - done)
        for name in names[turn % len(names) :] + names[: turn % len(names)]:
            memoized, sink = variants[name], times[name]
            for _ in range(size):
                started = clock()
                memoized(key)
                sink.append(clock() - started)
                key += 1
        done, turn = done + size, turn + 1
    return times


def child_enforcement(location: str, first_key: int, min_misses: int) -> dict[str, Any]:
    """Average miss cost without a limit, with a non-evicting and with an evicting limit."""
    before = cachelib.Cache(location).info()
    average = before.bytes / before.entries
    checked_limit = int(LIMIT_NO_EVICT * before.bytes)
    limits = {
        "none": None,
        "limit, no eviction": checked_limit,
        "limit, evicting": int(LIMIT_EVICT * before.bytes),
    }
    period = math.ceil(checked_limit * SCAN_FRACTION / average)  # misses between scans
    misses = max(min_misses, math.ceil(period * 1.02))
    variants: dict[str, Any] = {}
    scans: dict[str, list[dict[str, float]]] = {}
    for name, limit in limits.items():
        variants[name] = memoized_payload(location, limit)
        scans[name] = []
        _timed_scans(variants[name].cache, scans[name])
    times = _miss_blocks(variants, first_key, misses)
    after = cachelib.Cache(location).info()
    result: dict[str, Any] = {
        "entries_before": before.entries,
        "bytes_before": before.bytes,
        "entries_after": after.entries,
        "misses": misses,
        "scan_period_misses": period,
        "variants": {},
    }
    for name, memoized in variants.items():
        if memoized.stats.hits:
            raise AssertionError(f"{name}: {memoized.stats.hits} calls hit; keys must be fresh")
        result["variants"][name] = {"limit": limits[name], "scans": scans[name], **summarize_ns(times[name])}
    return result


def isolated(target: Callable[..., Any], *args: Any) -> dict[str, Any]:
    """Run ``target`` in a fresh child; raise with its traceback if it failed."""
    outcome = run_isolated(target, *args, timeout=TIMEOUT)
    if not outcome["ok"]:
        raise RuntimeError(f"{target.__name__} failed in its child:\n{outcome['error']}")
    return outcome["result"]  # type: ignore[no-any-return]


# -- one cache size ---------------------------------------------------------------------------


def measure_commands(location: str, entries: int) -> dict[str, Any]:
    """Time info (CLI and in-process), verify and prune on a cache of ``entries`` entries."""
    result: dict[str, Any] = {}
    info_runs = [run_cli(location, "info") for _ in range(INFO_RUNS)]
    counted = _number(r"total: ([\d,]+) entries", info_runs[0].output)
    if counted != entries:
        raise AssertionError(f"info counted {counted} entries, expected {entries}:\n{info_runs[0].output}")
    result["info"] = [asdict(run) for run in info_runs]
    log(f"  info: {[round(run.seconds, 2) for run in info_runs]} s")
    result["cache_info"] = isolated(child_cache_info, location, 2)
    log(f"  Cache.info(): {[round(run['seconds'], 2) for run in result['cache_info']['runs']]} s")
    verify = run_cli(location, "verify")
    if _number(r"([\d,]+) entries checked", verify.output) != entries or verify.returncode != 0:
        raise AssertionError(f"verify failed:\n{verify.output}")
    result["verify"] = asdict(verify)
    log(f"  verify: {verify.seconds:.2f} s")
    return result


def measure_prune(location: str, total_bytes: int) -> dict[str, Any]:
    """Prune to ``PRUNE_KEEP`` of the bytes; return the run and how many entries went."""
    max_size = int(total_bytes * PRUNE_KEEP)
    prune = run_cli(location, "prune", "--max-size", str(max_size))
    removed = _number(r"removed ([\d,]+) entries", prune.output)
    if prune.returncode != 0 or removed is None:
        raise AssertionError(f"prune failed:\n{prune.output}")
    log(f"  prune --max-size {max_size}: {prune.seconds:.2f} s, removed {removed:,}")
    return {**asdict(prune), "max_size": max_size, "removed": removed}


def hit_cases(reference: str, location: str, entries: int) -> dict[str, tuple[str, int, int | None]]:
    """The hit-latency cases: (cache, key space, batch) by name."""
    return {
        "random": (reference, REFERENCE_ENTRIES, None),
        "random at N": (location, entries, None),
        "hot 100 at N": (location, REFERENCE_ENTRIES, None),
        "first": (reference, REFERENCE_ENTRIES, FRESH_BATCH),
        "first at N": (location, entries, FRESH_BATCH),
    }


def measure_hits(reference: str, location: str, entries: int) -> dict[str, Any]:
    """Run every hit case in its own fresh child, ``HIT_ROUNDS`` rounds taking turns."""
    cases = hit_cases(reference, location, entries)
    rounds: dict[str, list[dict[str, float]]] = {name: [] for name in cases}
    for round_number in range(HIT_ROUNDS):
        for name, (cache, key_space, batch) in cases.items():
            rounds[name].append(isolated(child_hits, cache, key_space, HITS, SEED + round_number, batch))
    result: dict[str, Any] = {"rounds": rounds, "cases": {}}
    for name, runs in rounds.items():
        result["cases"][name] = {
            stat: statistics.median(run[stat] for run in runs) for stat in ("median_us", "p90_us")
        }
    for name, base in (("random at N", "random"), ("hot 100 at N", "random"), ("first at N", "first")):
        for stat in ("median_us", "p90_us"):
            ratio = result["cases"][name][stat] / result["cases"][base][stat]
            result["cases"][name][f"ratio_{stat[:-3]}"] = ratio
    summary = ", ".join(f"{name} {case['median_us']:.1f} us" for name, case in result["cases"].items())
    log(f"  hits (medians): {summary}")
    return result


def measure_size(
    workdir: str,
    reference: str,
    entries: int,
    options: Options,
    requested: str,
    sample: tuple[int, float] | None = None,
) -> dict[str, Any]:
    """Build a cache of ``entries`` and run every measurement on it; remove it after."""
    location = cache_location(workdir, entries)
    log(f"building {entries:,} entries in {location}")
    build = build_cache(location, entries, requested, sample)
    log(f"  built in {build.seconds:.1f} s ({build.rate:,.0f} entries/s, {build.method})")
    result: dict[str, Any] = {
        "entries": entries,
        "build": {
            **asdict(build),
            "rate": build.rate,
            "api_rate": build.api_rate,
            "projected_api_seconds": build.projected_api_seconds,
        },
    }
    result.update(measure_commands(location, entries))
    result["hits"] = measure_hits(reference, location, entries)
    result["prune"] = measure_prune(location, result["cache_info"]["bytes"])
    if entries == options.entries:
        log("  enforcement: misses with and without bytes_limit")
        result["enforcement"] = isolated(child_enforcement, location, entries + 10, MIN_MISSES)
        log_enforcement(result["enforcement"])
    if not options.keep:
        removal, _ = timed(lambda: shutil.rmtree(location))
        log(f"  removed the cache in {removal:.1f} s")
    return result


def cache_location(workdir: str, entries: int) -> str:
    return os.path.join(workdir, f"cache-{entries}")


def log_enforcement(enforcement: dict[str, Any]) -> None:
    for name, variant in enforcement["variants"].items():
        log(
            f"    {name}: mean {variant['mean_us']:.0f} us over {variant['count']:,} misses, "
            f"{len(variant['scans'])} scans, {sum(s['removed'] for s in variant['scans']):,} evicted"
        )


def raw_create_cost(workdir: str, size: int, count: int = 1000) -> dict[str, float]:
    """Microseconds to create, write (``size`` bytes) and rename a file: the storage's floor."""
    directory = os.path.join(workdir, "raw-create")
    os.makedirs(directory)
    times = []
    for i in range(count):
        path = os.path.join(directory, f"{i:032x}.cl")
        started = time.perf_counter_ns()
        with open(path + ".tmp", "xb") as handle:
            handle.write(b"x" * size)
        os.replace(path + ".tmp", path)
        times.append(time.perf_counter_ns() - started)
    shutil.rmtree(directory)
    return {"bytes": size, **summarize_ns(times)}


# -- reporting -----------------------------------------------------------------------------------


def mib(size: float) -> str:
    return f"{size / MB:.0f}"


def command_rows(size: dict[str, Any]) -> list[list[str]]:
    """Rows of the command table for one cache size."""
    entries = size["entries"]
    info = sorted(size["info"], key=lambda run: run["seconds"])[len(size["info"]) // 2]
    cache_info = sorted(size["cache_info"]["runs"], key=lambda run: run["seconds"])[0]
    prune = size["prune"]
    build = size["build"]
    rows = [
        [
            "build (" + build["method"] + ")",
            f"{entries:,}",
            fmt(build["seconds"], 1),
            f"{build['rate']:,.0f}",
            "-",
            "-",
        ],
        [
            "cachelib info",
            f"{entries:,}",
            fmt(info["seconds"], 2),
            f"{entries / info['seconds']:,.0f}",
            mib(info["max_rss_bytes"]),
            fmt(info["user_seconds"] + info["system_seconds"], 1),
        ],
        [
            "Cache.info()",
            f"{entries:,}",
            fmt(cache_info["seconds"], 2),
            f"{entries / cache_info['seconds']:,.0f}",
            "+" + mib(cache_info["extra_rss_bytes"]),
            "-",
        ],
        [
            "cachelib verify",
            f"{entries:,}",
            fmt(size["verify"]["seconds"], 2),
            f"{entries / size['verify']['seconds']:,.0f}",
            mib(size["verify"]["max_rss_bytes"]),
            fmt(size["verify"]["user_seconds"] + size["verify"]["system_seconds"], 1),
        ],
        [
            f"cachelib prune (-{prune['removed']:,})",
            f"{entries:,}",
            fmt(prune["seconds"], 2),
            f"{entries / prune['seconds']:,.0f}",
            mib(prune["max_rss_bytes"]),
            fmt(prune["user_seconds"] + prune["system_seconds"], 1),
        ],
    ]
    return rows


def hit_label(name: str, entries: int) -> str:
    """A readable name for a hit case."""
    size = f"{REFERENCE_ENTRIES:,}" if name in ("random", "first") else f"{entries:,}"
    how = {
        "random": "random keys, one wrapper",
        "random at N": "random keys, one wrapper",
        "hot 100 at N": f"{REFERENCE_ENTRIES} hot keys, one wrapper",
        "first": "first hit of each key in a fresh store",
        "first at N": "first hit of each key in a fresh store",
    }[name]
    return f"{size} entries, {how}"


def hit_rows(sizes: list[dict[str, Any]]) -> list[list[str]]:
    rows = []
    for size in sizes:
        for name, case in size["hits"]["cases"].items():
            rows.append(
                [
                    hit_label(name, size["entries"]),
                    fmt(case["median_us"], 1),
                    fmt(case["p90_us"], 1),
                    f"{case['ratio_median']:.2f}x" if "ratio_median" in case else "1.00x",
                    f"{case['ratio_p90']:.2f}x" if "ratio_p90" in case else "1.00x",
                ]
            )
    return rows


def scan_us_per_miss(variant: dict[str, Any]) -> float:
    """Seconds spent in ``SizeBudget.enforce`` (scans and evictions) per miss, in microseconds."""
    return float(sum(scan["seconds"] for scan in variant["scans"]) / variant["count"] * 1e6)


def enforcement_rows(enforcement: dict[str, Any]) -> list[list[str]]:
    base = enforcement["variants"]["none"]["mean_us"]
    base_median = enforcement["variants"]["none"]["median_us"]
    rows = []
    for name, variant in enforcement["variants"].items():
        scans = variant["scans"]
        rows.append(
            [
                name,
                "-" if variant["limit"] is None else f"{variant['limit'] / MB:.1f} MiB",
                f"{variant['count']:,}",
                fmt(variant["mean_us"], 0),
                fmt(variant["median_us"], 0),
                fmt(variant["p90_us"], 0),
                str(len(scans)),
                fmt(sum(s["seconds"] for s in scans), 2),
                f"{sum(s['removed'] for s in scans):,}",
                fmt(scan_us_per_miss(variant), 0),
                f"{(variant['mean_us'] / base - 1) * 100:+.1f}%",
                f"{(variant['median_us'] / base_median - 1) * 100:+.1f}%",
            ]
        )
    return rows


def memory_growth(small: dict[str, Any], big: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Peak RSS of each command at N/10 and N, and the growth per extra entry."""
    growth = {}
    pairs = {
        "info": (
            max(r["max_rss_bytes"] for r in small["info"]),
            max(r["max_rss_bytes"] for r in big["info"]),
        ),
        "Cache.info() extra": (
            max(r["extra_rss_bytes"] for r in small["cache_info"]["runs"]),
            max(r["extra_rss_bytes"] for r in big["cache_info"]["runs"]),
        ),
        "verify": (small["verify"]["max_rss_bytes"], big["verify"]["max_rss_bytes"]),
        "prune": (small["prune"]["max_rss_bytes"], big["prune"]["max_rss_bytes"]),
    }
    extra_entries = big["entries"] - small["entries"]
    for name, (at_small, at_big) in pairs.items():
        per_entry = (at_big - at_small) / extra_entries
        growth[name] = {
            "small_bytes": at_small,
            "big_bytes": at_big,
            "bytes_per_entry": per_entry,
            "grows": at_big > 1.2 * at_small + 4 * MB,
        }
    return growth


def target_rows(results: dict[str, Any]) -> list[list[str]]:
    big = results["sizes"][-1]
    entries = f"{big['entries']:,}"
    info_s = sorted(run["seconds"] for run in big["info"])[len(big["info"]) // 2]
    variants = big["enforcement"]["variants"]
    limited = variants["limit, no eviction"]
    overhead = limited["mean_us"] / variants["none"]["mean_us"] - 1
    evict_share = scan_us_per_miss(limited) / variants["none"]["mean_us"]
    growth = results["memory_growth"]
    grows = [name for name, g in growth.items() if g["grows"]]
    cases = big["hits"]["cases"]
    return [
        *[
            [
                f"hit latency at {entries} vs {REFERENCE_ENTRIES}, {how}",
                f"<= {TARGET_HIT_RATIO}x",
                f"{cases[name]['ratio_median']:.2f}x median, {cases[name]['ratio_p90']:.2f}x p90",
                _met(cases[name]["ratio_median"] <= TARGET_HIT_RATIO),
            ]
            for name, how in (("random at N", "random keys"), ("first at N", "same read path"))
        ],
        [
            "bytes_limit enforcement, mean miss",
            f"<= +{TARGET_ENFORCEMENT:.0%}",
            f"{overhead:+.1%} measured, {evict_share:+.1%} in evict",
            _met(overhead <= TARGET_ENFORCEMENT),
        ],
        [
            f"cachelib info on {entries}",
            f"< {TARGET_INFO_SECONDS:.0f} s",
            f"{info_s:.1f} s",
            _met(info_s < TARGET_INFO_SECONDS),
        ],
        [
            "memory of info/verify/prune bounded",
            "flat from N/10 to N",
            "grows: " + ", ".join(grows) if grows else "flat",
            _met(not grows),
        ],
    ]


def _met(ok: bool) -> str:
    return "met" if ok else "MISSED"


def build_report(results: dict[str, Any]) -> str:
    sizes = results["sizes"]
    big = sizes[-1]
    startup = results["startup"]
    raw = results["raw_create"]
    source = results["cachelib_source"]
    lines = [
        f"cachelib scale benchmark: f(i) = i * 0.5 memoized, caches of {sizes[0]['entries']:,} and "
        f"{big['entries']:,} entries (~{big['cache_info']['bytes'] / big['entries']:.0f} bytes each)",
        describe_machine(results["machine"]),
        f"benchmark directory: {results['workdir_mount']}",
        f"cachelib imported from {source['path']}"
        + (f" at commit {source['commit'][:12]}" if source["commit"] else "")
        + (" with uncommitted changes" if source["modified"] else ""),
        "page cache: warm for every measurement (entries just written, all fit in RAM; never dropped)",
        f"interpreter start-up + import (inside every command's wall time): {startup['seconds']:.2f} s, "
        f"{mib(startup['max_rss_bytes'])} MiB",
        f"raw create+write+rename of a {raw['bytes']}-byte file (an entry's size) here: "
        f"median {raw['median_us']:.0f} us, "
        f"p90 {raw['p90_us']:.0f} us (the storage's floor for a miss)",
        "",
        "Commands (wall time: info = median of 3 runs, Cache.info() = best of 2; peak RSS of the subprocess, "
        "Cache.info() = extra RSS in its child)",
    ]
    rows = [row for size in sizes for row in command_rows(size)]
    headers = ["operation", "entries", "seconds", "entries/s", "peak RSS MiB", "CPU s"]
    lines.append(format_table(headers, rows))
    lines += ["", f"Memory growth from {sizes[0]['entries']:,} to {big['entries']:,} entries"]
    growth_rows = [
        [
            name,
            mib(g["small_bytes"]),
            mib(g["big_bytes"]),
            f"{g['bytes_per_entry']:.1f}",
            "grows" if g["grows"] else "flat",
        ]
        for name, g in results["memory_growth"].items()
    ]
    lines.append(
        format_table(["command", "MiB at N/10", "MiB at N", "bytes/extra entry", "verdict"], growth_rows)
    )
    lines += [
        "",
        f"Hit latency: {HITS:,} timed hits per fresh child after one untimed pass over the same keys "
        f"(page cache warm), median over {HIT_ROUNDS} rounds taking turns; ratio vs the "
        f"{REFERENCE_ENTRIES}-entry case of the same kind.",
        "'one wrapper': one memoized function makes every call, as a program would (the entries layer "
        "keeps the checked bytes of the last small entries read in memory, so few hot keys skip the file "
        "read);",
        f"'fresh store': a new Cache every {FRESH_BATCH} calls of distinct keys, so every timed hit "
        "reads its file: the same read path whatever the cache size.",
    ]
    lines.append(format_table(["case", "median us", "p90 us", "median ratio", "p90 ratio"], hit_rows(sizes)))
    enforcement = big["enforcement"]
    lines += [
        "",
        f"Miss cost with automatic enforcement on {enforcement['entries_before']:,} entries "
        f"({enforcement['bytes_before'] / MB:.1f} MiB); {enforcement['misses']:,} fresh misses per "
        f"variant in rotating blocks of {BLOCK}; a limited cache scans every "
        f"{enforcement['scan_period_misses']:,} misses "
        f"({SCAN_FRACTION:.0%} of its limit, SizeBudget)",
    ]
    lines.append(
        format_table(
            [
                "variant",
                "bytes_limit",
                "misses",
                "mean us",
                "median us",
                "p90 us",
                "scans",
                "evict s",
                "evicted",
                "evict us/miss",
                "mean vs none",
                "median vs none",
            ],
            enforcement_rows(enforcement),
        )
    )
    lines += ["", "Targets"]
    lines.append(format_table(["target", "goal", "measured", "verdict"], target_rows(results)))
    lines += [
        "",
        f"build of {big['entries']:,}: {big['build']['sample_misses']:,} memoized misses at "
        f"{big['build']['api_rate']:,.0f}/s (one process) project "
        f"{big['build']['projected_api_seconds'] / 60:.1f} min through the API; built by "
        f"{big['build']['method']} with {WORKERS} workers at {big['build']['rate']:,.0f} entries/s",
        f"total run time: {results['total_seconds'] / 60:.1f} min",
    ]
    return "\n".join(lines)


def plot(results: dict[str, Any], path: str) -> None:
    """Three panels: entries/s per command, peak RSS per command, hit latency per size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = results["sizes"]
    labels = ["build", "info", "Cache.info()", "verify", "prune"]
    figure, axes = plt.subplots(1, 3, figsize=(15, 5.5))
    width = 0.8 / len(sizes)
    for index, size in enumerate(sizes):
        rows = command_rows(size)
        rates = [float(row[3].replace(",", "")) for row in rows]
        rss = [float(row[4].lstrip("+")) if row[4] != "-" else 0.0 for row in rows]
        positions = [x + index * width for x in range(len(labels))]
        axes[0].bar(positions, rates, width, label=f"{size['entries']:,} entries")
        axes[1].bar(positions[1:], rss[1:], width, label=f"{size['entries']:,} entries")
    for axis, title in ((axes[0], "entries per second (log)"), (axes[1], "peak RSS, MiB")):
        axis.set_xticks([x + width * (len(sizes) - 1) / 2 for x in range(len(labels))], labels, fontsize=8)
        axis.set_title(title)
        axis.legend(fontsize=8)
    axes[0].set_yscale("log")
    names, medians, p90s = [], [], []
    for size in sizes:
        for name, case in size["hits"]["cases"].items():
            label = hit_label(name, size["entries"]).replace(", ", "\n", 1)
            if label not in names:
                names.append(label)
                medians.append(case["median_us"])
                p90s.append(case["p90_us"])
    axes[2].bar([x - 0.2 for x in range(len(names))], medians, 0.4, label="median")
    axes[2].bar([x + 0.2 for x in range(len(names))], p90s, 0.4, label="p90")
    axes[2].set_xticks(range(len(names)), names, fontsize=6, rotation=60, ha="right")
    axes[2].set_title("hit latency, us")
    axes[2].legend(fontsize=8)
    figure.suptitle(f"cachelib at scale ({results['machine']['cpu']})", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


# -- the parent -----------------------------------------------------------------------------------


@dataclass
class Options:
    """The parsed command line."""

    entries: int
    directory: str | None
    quick: bool
    keep: bool
    build: str
    output_dir: str


def parse_args(argv: list[str] | None) -> Options:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=None, help=f"cache size (default {DEFAULT_ENTRIES:,})")
    parser.add_argument("--dir", dest="directory", help="where the temporary caches go (default: temp)")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_ENTRIES:,} entries, for a smoke run")
    parser.add_argument("--keep", action="store_true", help="keep the caches and print where they are")
    parser.add_argument(
        "--build",
        choices=("auto", "api", "direct"),
        default="auto",
        help="how to populate (default: direct writes if the API would take > 15 min)",
    )
    parser.add_argument("--output-dir", default=RESULTS_DIR, help="where the txt/json/png results go")
    args = parser.parse_args(argv)
    entries = args.entries or (QUICK_ENTRIES if args.quick else DEFAULT_ENTRIES)
    if entries < 10 * REFERENCE_ENTRIES:
        parser.error(f"--entries must be at least {10 * REFERENCE_ENTRIES}")
    return Options(entries, args.directory, args.quick, args.keep, args.build, args.output_dir)


def check_space(workdir: str, entries: int) -> None:
    """Refuse to start without room for the biggest cache plus its enforcement misses."""
    needed = int(entries * 1.3 * ENTRY_BLOCK_ESTIMATE)
    free = shutil.disk_usage(workdir).free
    inodes = os.statvfs(workdir).f_favail
    log(
        f"needs ~{needed / (1 << 30):.1f} GiB and {int(entries * 1.3):,} inodes; "
        f"{free / (1 << 30):.1f} GiB and {inodes:,} inodes free"
    )
    if needed > free // 2 or entries * 1.3 > inodes // 2:
        raise SystemExit(f"not enough room in {workdir} for {entries:,} entries; use --dir or --entries")


def mount_of(path: str) -> str:
    """Return "device on mountpoint type fs (options)" for the mount holding ``path``."""
    path, best = os.path.realpath(path), ("", "unknown")
    with open("/proc/mounts") as mounts:
        for line in mounts:
            device, point, kind, flags = line.split()[:4]
            if (path == point or path.startswith(point.rstrip("/") + "/")) and len(point) >= len(best[0]):
                best = (point, f"{device} on {point} type {kind} ({flags})")
    return best[1]


def cachelib_source() -> dict[str, Any]:
    """Where cachelib was imported from, and its git commit if it sits in a work tree."""
    directory = os.path.dirname(os.path.dirname(os.path.abspath(cachelib.__file__)))
    source: dict[str, Any] = {"path": directory, "commit": None, "modified": None}
    try:
        head = subprocess.run(["git", "-C", directory, "rev-parse", "HEAD"], capture_output=True, text=True)
        status = subprocess.run(
            ["git", "-C", directory, "status", "--porcelain", "--", "cachelib"],
            capture_output=True,
            text=True,
        )
    except OSError:
        return source
    if head.returncode == 0:
        source["commit"] = head.stdout.strip()
        source["modified"] = bool(status.stdout.strip())
    return source


def run_all(options: Options, workdir: str) -> dict[str, Any]:
    started = time.perf_counter()
    results: dict[str, Any] = {"options": asdict(options), "workdir_mount": mount_of(workdir)}
    results["machine"] = machine_info(("numpy", "cachelib", "filelock", "xxhash"), workdir)
    results["cachelib_source"] = cachelib_source()
    log(describe_machine(results["machine"]))
    check_space(workdir, options.entries)
    results["startup"] = asdict(measure_startup())
    reference = cache_location(workdir, REFERENCE_ENTRIES)
    sample_misses(reference, REFERENCE_ENTRIES)
    built = cachelib.Cache(reference).info()
    results["raw_create"] = raw_create_cost(workdir, round(built.bytes / built.entries))
    # Time N/100 misses on the big cache first: they decide how both caches are built.
    count = max(1, options.entries // 100)
    sample = (count, sample_misses(cache_location(workdir, options.entries), count))
    projected = options.entries * sample[1] / count
    method = choose_method(options.build, projected)
    log(
        f"{count:,} misses in {sample[1]:.1f} s: the API would take ~{projected / 60:.1f} min for "
        f"{options.entries:,}; both caches are built by {method}"
    )
    results["sizes"] = [
        measure_size(workdir, reference, options.entries // 10, options, method),
        measure_size(workdir, reference, options.entries, options, method, sample),
    ]
    results["memory_growth"] = memory_growth(*results["sizes"])
    results["total_seconds"] = time.perf_counter() - started
    return results


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and write the table, JSON and plot."""
    options = parse_args(argv)
    workdir = tempfile.mkdtemp(prefix="cachelib-scale-", dir=options.directory)
    try:
        results = run_all(options, workdir)
    finally:
        if options.keep:
            log(f"kept {workdir}")
        else:
            removal, _ = timed(lambda: shutil.rmtree(workdir, ignore_errors=True))
            log(f"removed {workdir} in {removal:.1f} s")
    report = build_report(results)
    print(report)
    stem = os.path.join(options.output_dir, "scale" + ("-quick" if options.quick else ""))
    write_text(stem + ".txt", report)
    write_json(stem + ".json", results)
    plot(results, stem + ".png")
    log(f"wrote {stem}.txt, .json and .png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
