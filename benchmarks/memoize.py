"""Benchmark ``cachelib.Cache.memoize`` against ``joblib.Memory`` (and diskcache, cachier).

Scenarios (sizes are divided by ten with ``--quick``):

1. ``hit-small``: a hit with small scalar arguments, ``f(3, 4.0, "abc")`` returning a
   float. After one warm-up miss, each of ``N`` (2000) hits is timed on its own with
   ``time.perf_counter_ns()``; median and p90 are reported in microseconds.
2. ``hit-array-arg``: a hit whose argument is an 800 MB float64 array (1e8
   elements) and whose result is a small float: the cost of building the key.
3. ``store-big``: a miss storing an 800 MB float64 result. The array is built in
   the child before timing and the function just returns it, so only the store is
   timed. Each run uses a fresh key (``f(i)``); the entries are deleted (with the
   library's own ``clear``) and ``os.sync()`` flushes dirty pages between runs,
   outside the timer. One untimed warm-up store comes first: on the benchmark
   machine (a VM) the first 800 MB write of a process took 3-5x longer than the
   next ones, for every library alike. cachelib runs three times: its default
   ``fsync="background"`` (the entry is synced after the call returns),
   ``fsync="always"`` and ``fsync=False``.
4. ``hit-big``: a hit loading that 800 MB result (stored just before, then
   ``os.sync()``, so the file is in the page cache and clean), after one untimed
   warm-up hit that is also checked against the stored array. "bare readinto" is
   the floor: the same bytes read from a file into a fresh array with one
   ``readinto``.
5. ``hit-mmap``: the same hit with ``mmap_mode="r"`` (cachelib
   ``memoize(mmap_mode="r")``, joblib ``Memory(dir, mmap_mode="r")``); only the
   call is timed, the mapped data is not touched. diskcache and cachier have no
   memory-mapping mode and are not run here.
6. ``hash``: ``cachelib.hash`` on a 1.6 GB float64 array and on the strided view
   ``a[::2]`` (800 MB logical), against ``joblib.hash`` on a 400 MB array and its
   ``[::2]`` view (md5 is slow; throughput does not depend on size at this scale),
   and raw ``xxhash.xxh3_128`` over the contiguous buffer as an upper bound.
   Throughput is logical bytes (``nbytes`` of the hashed array or view) per second.
7. ``start``: a program's first moments, each in a fresh interpreter that has
   imported numpy already (a numpy program does): ``import`` times the library's
   import; ``first miss`` times, in that interpreter, wrapping ``small_args`` (from
   a module file) and its first call, which computes and stores; ``first hit`` the
   same in the next fresh interpreter, which finds the entry. 15 interpreters of
   each kind alternate between the libraries' runs. Every package's bytecode is
   compiled first (``compileall``), as ``pip install`` does, so that no library pays
   for compiling its source.
8. ``burst``: six successive misses storing a 200 MB result each (fresh keys), the
   burst timed as a whole, with cachelib's default ``fsync="background"`` and with
   ``fsync=False`` (what joblib does). ``after other I/O``: the child first stores
   and loads an 800 MB result twice with cachelib and once with joblib, then
   ``os.sync()``; ``alone``: the burst is the child's first work. The target is the
   same foreground either way: the default within 1.1x of ``fsync=False``.

How: every (scenario, library) pair runs in its own fresh child process ("spawn"
start method, ``_harness.run_isolated``), one child at a time, each with its own
temporary cache directory. Arrays are random float64 data from a fixed seed, built
inside the child. Scenarios 2-6 report the median of several timed calls
(``time.perf_counter``). For scenarios 3 and 4 the child also measures the peak
extra resident memory of each timed call: it resets the kernel high-water mark
(writing "5" to ``/proc/self/clear_refs``), reads ``VmRSS`` as the baseline and,
after the call, ``VmHWM``; extra = VmHWM - baseline (the precomputed result of
scenario 3 is in the baseline). It is reported as a multiple of the data size.
diskcache gets ``size_limit=1 TiB`` so that it never culls an 800 MB entry; cachier
keeps its defaults (pickle backend). Hits are checked against the stored value
(outside the timer). The table also shows the minimum, as the machine may be
noisy. Each record notes
an xxh3-64 of cachelib's source files, so a report says which code it measured.

"vs joblib" is joblib's median time divided by this library's (for ``hash``, this
library's GB/s divided by joblib's): above 1 means faster than joblib.Memory.

Usage::

    python benchmarks/memoize.py [--scenarios hit-small hash ...] [--libraries ...]
                                 [--quick] [--rounds N] [--dir DIR] [--output-dir DIR]

``--rounds N`` runs the whole schedule N times, so that each library's runs are
spread over the run instead of bunched (the machine may be shared and noisy), and
pools the timings of all rounds before taking medians. Every other round runs a
scenario's libraries in reverse order: on the benchmark VM, the first large write or
allocation after a pause costs more for whichever process makes it.

``--threads 1,2,all`` (the default): cachelib's scenarios 2, 3, 4 and 6 run once per
thread count (``CACHELIB_THREADS`` set in the child; "all" is the cores the process
may use); the main table shows the largest count, and a scaling table (GB/s per
thread count and the speedup over one thread) follows it.

Outputs: a table on stdout and in ``benchmarks/results/memoize.txt``, raw numbers in
``memoize.json``, a log-scale bar chart in ``memoize.png`` and the thread scaling in
``memoize-threads.png`` (``memoize-quick*`` with ``--quick``).
"""

from __future__ import annotations

import argparse
import gc
import importlib
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import xxhash

import cachelib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _harness import (
    THREADS_VARIABLE,
    PeakRSS,
    describe_machine,
    format_table,
    machine_info,
    median,
    plot_scaling,
    run_isolated,
    scaling_table,
    source_files,
    thread_counts,
    timed,
    write_json,
    write_text,
)

SEED = 0
RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
BIG_ELEMENTS = 100_000_000
"""float64 elements of the 800 MB argument and result (scenarios 2-5)."""
HASH_ELEMENTS = 200_000_000
"""float64 elements of the 1.6 GB array hashed in scenario 6."""
JOBLIB_HASH_FRACTION = 4
"""joblib.hash gets 1/4 of the hashed array (400 MB): md5 over 1.6 GB takes long."""
SMALL_ARGS = (3, 4.0, "abc")
OPTIONAL_LIBRARIES = ("diskcache", "cachier")
DEFAULT_TIMEOUT = 1800.0

# The result that ``big_result`` returns; each child builds it before timing.
_BIG: dict[str, np.ndarray | None] = {"array": None}
"""The big result, built in the child. cachelib keys on the globals a function reads, by value:
``big_result`` is memoized with ``ignore=["_BIG"]``, since the global only hands the result over."""


# -- the memoized functions (module level, so that every library can name them) ----------


def small_args(a: int, b: float, c: str) -> float:
    """A cheap function of small scalar arguments."""
    return a * b + len(c)


def array_arg(x: np.ndarray) -> float:
    """A cheap function of a big array argument: only the key costs."""
    return float(x[0])


def big_result(i: int) -> np.ndarray:
    """Return the precomputed big array (``i`` only makes a fresh key)."""
    array = _BIG["array"]
    assert array is not None, "the child builds the big array before calling big_result"
    return array


# -- libraries -----------------------------------------------------------------------------


@dataclass
class Memoized:
    """A memoized function and a way to remove everything it stored."""

    call: Callable[..., Any]
    clear: Callable[[], None]


LABELS = {
    "cachelib": "cachelib",
    "cachelib-always": "cachelib fsync='always'",
    "cachelib-nofsync": "cachelib fsync=False",
    "readinto": "bare readinto",
    "joblib": "joblib.Memory",
    "diskcache": "diskcache",
    "cachier": "cachier",
    "xxhash": "xxh3_128 raw",
}
HASH_LABELS = {"cachelib": "cachelib.hash", "joblib": "joblib.hash", "xxhash": "xxh3_128 raw"}


def memoize_with(
    library: str, func: Callable[..., Any], directory: str, mmap_mode: str | None = None
) -> Memoized:
    """Wrap ``func`` with ``library``'s disk memoization, storing under ``directory``."""
    if library.startswith("cachelib"):
        fsync = {"cachelib": "background", "cachelib-always": "always", "cachelib-nofsync": False}[library]
        cache = cachelib.Cache(directory, fsync=fsync)
        options: dict[str, Any] = {"mmap_mode": mmap_mode} if mmap_mode else {}
        if func is big_result:
            options["ignore"] = ["_BIG"]  # a handover, not an input (see ``_BIG``)
        wrapped = cache.memoize(func, **options)
        return Memoized(wrapped, wrapped.clear)
    if library == "joblib":
        import joblib

        memory = joblib.Memory(directory, mmap_mode=mmap_mode, verbose=0)
        wrapped = memory.cache(func)
        return Memoized(wrapped, lambda: wrapped.clear(warn=False))
    if mmap_mode is not None:
        raise ValueError(f"{library} has no mmap mode")
    if library == "diskcache":
        import diskcache

        disk = diskcache.Cache(directory, size_limit=1 << 40)  # no culling of 800 MB entries
        return Memoized(disk.memoize()(func), disk.clear)
    if library == "cachier":
        from cachier import cachier

        wrapped = cachier(cache_dir=directory)(func)
        return Memoized(wrapped, wrapped.clear_cache)
    raise ValueError(f"unknown library {library!r}")


def preload(library: str) -> None:
    """Import the library now, so that no lazy import lands in a measurement."""
    module = {"cachelib-always": "cachelib", "cachelib-nofsync": "cachelib", "readinto": "numpy"}.get(
        library, library
    )
    importlib.import_module(module)
    if library == "joblib":
        importlib.import_module("joblib.memory")


# -- helpers inside the child ------------------------------------------------------------


def make_array(elements: int) -> np.ndarray:
    """Return random float64 data from a fixed seed (every page touched)."""
    return np.random.default_rng(SEED).random(elements)


def fingerprint(array: np.ndarray) -> tuple[tuple[int, ...], str, str]:
    """Shape, dtype and xxh3-64 of the bytes of an array, to check hits."""
    data = np.ascontiguousarray(array)
    return (
        tuple(data.shape),
        data.dtype.str,
        xxhash.xxh3_64(memoryview(data.reshape(-1).view(np.uint8))).hexdigest(),
    )


def is_memory_mapped(value: Any) -> bool:
    """Tell whether ``value`` is (a view of) an ``np.memmap``."""
    while value is not None:
        if isinstance(value, np.memmap) or type(value).__name__ == "mmap":
            return True
        value = getattr(value, "base", None)
    return False


def record(task: dict[str, Any], times: list[float], **extra: Any) -> dict[str, Any]:
    """Return one measurement: scenario, library, raw times in seconds and extras."""
    result = {
        "scenario": task["scenario"],
        "library": task["library"],
        "label": LABELS[task["library"]],
        "variant": "",
        "times_s": times,
        "nbytes": None,
        "peak_extra_bytes": None,
    }
    result.update(extra)
    return result


def sync_and_collect() -> None:
    """Flush dirty pages (so a previous write does not slow the next run) and collect."""
    os.sync()
    gc.collect()


# -- the scenarios, run in children -----------------------------------------------------


def run_hit_small(task: dict[str, Any]) -> list[dict[str, Any]]:
    """Scenario 1: one warm-up miss, then time ``hits`` single hits with perf_counter_ns."""
    memo = memoize_with(task["library"], small_args, task["dir"])
    call = memo.call
    expected = small_args(*SMALL_ARGS)
    if call(*SMALL_ARGS) != expected:
        raise AssertionError("the miss returned a wrong value")
    clock = time.perf_counter_ns
    nanoseconds = []
    value = None
    for _ in range(task["hits"]):
        start = clock()
        value = call(*SMALL_ARGS)
        nanoseconds.append(clock() - start)
    if value != expected:
        raise AssertionError(f"a hit returned {value!r}, expected {expected!r}")
    return [record(task, [n / 1e9 for n in nanoseconds])]


def run_hit_array_arg(task: dict[str, Any]) -> list[dict[str, Any]]:
    """Scenario 2: hits whose argument is a big array (the key's cost)."""
    array = make_array(task["elements"])
    memo = memoize_with(task["library"], array_arg, task["dir"])
    expected = array_arg(array)
    memo.call(array)  # the miss
    times = []
    for _ in range(task["repeats"]):
        gc.collect()
        seconds, value = timed(lambda: memo.call(array))
        times.append(seconds)
        if value != expected:
            raise AssertionError(f"a hit returned {value!r}, expected {expected!r}")
    return [record(task, times, nbytes=array.nbytes)]


def run_store_big(task: dict[str, Any]) -> list[dict[str, Any]]:
    """Scenario 3: time misses that store a precomputed big result, one fresh key each."""
    big = _BIG["array"] = make_array(task["elements"])
    memo = memoize_with(task["library"], big_result, task["dir"])
    memo.call(-1)  # untimed warm-up store: the first big write of a process is slow for all
    memo.clear()
    times, extras = [], []
    for key in range(task["repeats"]):
        sync_and_collect()
        with PeakRSS() as peak:
            seconds, value = timed(lambda key=key: memo.call(key))
        times.append(seconds)
        extras.append(peak.extra_bytes)
        del value
        memo.clear()
    return [record(task, times, nbytes=big.nbytes, peak_extra_bytes=extras)]


def _stored_big_result(task: dict[str, Any], mmap_mode: str | None) -> tuple[Memoized, tuple[Any, ...]]:
    """Store ``big_result(0)`` (a miss), free the source array; return the memo and its fingerprint."""
    _BIG["array"] = make_array(task["elements"])
    expected = fingerprint(_BIG["array"])
    memo = memoize_with(task["library"], big_result, task["dir"], mmap_mode=mmap_mode)
    memo.call(0)
    _BIG["array"] = None
    sync_and_collect()
    return memo, expected


def _bare_readinto(task: dict[str, Any]) -> list[dict[str, Any]]:
    """The floor of scenario 4: the result's bytes read from a file into a fresh array."""
    path = os.path.join(task["dir"], "result.bin")
    make_array(task["elements"]).tofile(path)
    sync_and_collect()

    def read() -> np.ndarray:
        array = np.empty(task["elements"], np.float64)
        with open(path, "rb", buffering=0) as source:
            source.readinto(memoryview(array).cast("B"))
        return array

    read()  # untimed warm-up, as the hits have
    times = []
    for _ in range(task["repeats"]):
        gc.collect()
        seconds, value = timed(read)
        times.append(seconds)
        del value
    return [record(task, times, nbytes=task["elements"] * 8)]


def run_hit_big(task: dict[str, Any]) -> list[dict[str, Any]]:
    """Scenario 4: time hits that load the big result into memory."""
    if task["library"] == "readinto":
        return _bare_readinto(task)
    memo, expected = _stored_big_result(task, None)
    value = memo.call(0)  # untimed warm-up hit, checked
    if fingerprint(value) != expected:
        raise AssertionError("the hit returned a different array")
    del value
    times, extras = [], []
    for _ in range(task["repeats"]):
        gc.collect()
        with PeakRSS() as peak:
            seconds, value = timed(lambda: memo.call(0))
        times.append(seconds)
        extras.append(peak.extra_bytes)
        del value
    return [record(task, times, nbytes=task["elements"] * 8, peak_extra_bytes=extras)]


def run_hit_mmap(task: dict[str, Any]) -> list[dict[str, Any]]:
    """Scenario 5: time hits returning the big result memory-mapped (data untouched)."""
    memo, expected = _stored_big_result(task, "r")
    times = []
    for repeat in range(task["repeats"]):
        gc.collect()
        seconds, value = timed(lambda: memo.call(0))
        times.append(seconds)
        if repeat == 0:
            if not is_memory_mapped(value):
                raise AssertionError(f"the hit returned a {type(value).__name__}, not a memmap")
            if fingerprint(value) != expected:
                raise AssertionError("the hit returned a different array")
        del value
    return [record(task, times)]  # no GB/s: the data is mapped, not read


def _hasher(library: str) -> Callable[[np.ndarray], Any]:
    """Return the hash function of ``library`` for scenario 6."""
    if library == "cachelib":
        return cachelib.hash
    if library == "joblib":
        import joblib

        return joblib.hash
    return lambda array: xxhash.xxh3_128(memoryview(array.reshape(-1).view(np.uint8))).digest()


def run_hash(task: dict[str, Any]) -> list[dict[str, Any]]:
    """Scenario 6: hash throughput on a contiguous array and on its ``[::2]`` view."""
    library = task["library"]
    elements = task["elements"] // (JOBLIB_HASH_FRACTION if library == "joblib" else 1)
    array = make_array(elements)
    hasher = _hasher(library)
    layouts = {"contiguous": array, "a[::2]": array[::2]}
    if library == "xxhash":
        del layouts["a[::2]"]  # a raw hash needs a contiguous buffer
    records = []
    for layout, view in layouts.items():
        first = hasher(view)  # warm-up, and the value that every repeat must match
        times = []
        for _ in range(task["repeats"]):
            seconds, digest = timed(lambda view=view: hasher(view))
            times.append(seconds)
            if digest != first:
                raise AssertionError(f"{library} hashed the same {layout} array differently")
        records.append(
            record(
                task,
                times,
                nbytes=view.nbytes,
                variant=layout,
                label=f"{HASH_LABELS[library]} ({size_text(view.nbytes)})",
            )
        )
    return records


@dataclass(frozen=True)
class Scenario:
    """One benchmark scenario: what to run, for which libraries, in which unit."""

    name: str
    number: int
    title: str
    unit: str  # "us", "ms" or "s": how the table and plot show its times
    libraries: tuple[str, ...]
    runner: Callable[[dict[str, Any]], list[dict[str, Any]]]


START_PROGRAM = """
import json, sys, time
import numpy
sys.path.insert(0, {module_dir!r})
start = time.perf_counter()
import {library}
imported = time.perf_counter()
import startup
if {library!r} == "cachelib":
    memoized = cachelib.Cache({cache!r}).memoize(startup.small_args)
else:
    memoized = joblib.Memory({cache!r}, verbose=0).cache(startup.small_args)
value = memoized(3, 4.0, "abc")
called = time.perf_counter()
assert value == startup.small_args(3, 4.0, "abc")
print(json.dumps([imported - start, called - imported]))
"""


def run_start(task: dict[str, Any]) -> list[dict[str, Any]]:
    """Scenario 7: import, first miss and first hit, each in fresh interpreters."""
    import compileall
    import inspect
    import subprocess

    library = task["library"]
    package = importlib.import_module(library)
    compileall.compile_dir(os.path.dirname(package.__file__ or ""), quiet=1)
    module_dir = os.path.join(task["dir"], "module")
    os.makedirs(module_dir, exist_ok=True)
    with open(os.path.join(module_dir, "startup.py"), "w") as module:
        module.write(inspect.getsource(small_args))
    compileall.compile_dir(module_dir, quiet=1)
    environment = dict(os.environ)
    environment.pop("PYTHONDONTWRITEBYTECODE", None)
    times: dict[str, list[float]] = {"import": [], "first miss": [], "first hit": []}
    for run in range(task["repeats"]):
        cache = os.path.join(task["dir"], f"cache-{run}")
        program = START_PROGRAM.format(module_dir=module_dir, library=library, cache=cache)
        for kind in ("first miss", "first hit"):
            done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                                  env=environment, check=True, timeout=120)
            imported, called = json.loads(done.stdout.strip().splitlines()[-1])
            times["import"].append(imported)
            times[kind].append(called)
    return [record(task, seconds, variant=kind) for kind, seconds in times.items()]


BURST_STORES = 6
BURST_ELEMENTS = 25_000_000
"""float64 elements of each result of the burst (200 MB)."""


def run_burst(task: dict[str, Any]) -> list[dict[str, Any]]:
    """Scenario 8: the burst of big stores, alone and after other large reads and writes."""
    records = []
    for setting in ("alone", "after other I/O"):
        directory = os.path.join(task["dir"], setting.replace(" ", "-"))
        if setting != "alone":
            _BIG["array"] = make_array(task["elements"])
            for library in ("cachelib", "cachelib", "joblib"):
                other = memoize_with(library, big_result, os.path.join(directory, f"other-{library}"))
                other.call(0)
                other.call(0)
            _BIG["array"] = None
            sync_and_collect()
        _BIG["array"] = make_array(task["burst_elements"])
        memo = memoize_with(task["library"], big_result, os.path.join(directory, "burst"))
        seconds, _ = timed(lambda memo=memo: [memo.call(key) for key in range(1, BURST_STORES + 1)])
        _BIG["array"] = None
        stored = BURST_STORES * task["burst_elements"] * 8
        records.append(record(task, [seconds], variant=setting, nbytes=stored))
        shutil.rmtree(directory, ignore_errors=True)
        sync_and_collect()
    return records


MEMOIZERS = ("cachelib", "joblib", "diskcache", "cachier")
SCENARIOS = (
    Scenario("hit-small", 1, "hit, f(3, 4.0, 'abc')", "us", MEMOIZERS, run_hit_small),
    Scenario("hit-array-arg", 2, "hit, {size} array argument", "ms", MEMOIZERS, run_hit_array_arg),
    Scenario(
        "store-big",
        3,
        "miss, store {size} result",
        "s",
        ("cachelib", "cachelib-always", "cachelib-nofsync", "joblib", "diskcache", "cachier"),
        run_store_big,
    ),
    Scenario("hit-big", 4, "hit, load {size} result", "s", (*MEMOIZERS, "readinto"), run_hit_big),
    Scenario("hit-mmap", 5, "hit, {size} result, mmap_mode='r'", "ms", ("cachelib", "joblib"), run_hit_mmap),
    Scenario("hash", 6, "hash", "s", ("cachelib", "joblib", "xxhash"), run_hash),
    Scenario("start", 7, "fresh interpreter:", "ms", ("cachelib", "joblib"), run_start),
    Scenario("burst", 8, "burst of 6 big stores,", "s", ("cachelib", "cachelib-nofsync"), run_burst),
)
BY_NAME = {s.name: s for s in SCENARIOS}
SCALING = ("hit-array-arg", "store-big", "hit-big", "hash")
"""Scenarios whose cachelib runs are repeated at each thread count."""
UNIT_SCALE = {"us": 1e6, "ms": 1e3, "s": 1.0}
UNIT_TEXT = {"us": "µs", "ms": "ms", "s": "s"}


def run_case(task: dict[str, Any]) -> list[dict[str, Any]]:
    """Child entry point: run one (scenario, library) pair in a fresh cache directory."""
    if task.get("threads"):
        os.environ[THREADS_VARIABLE] = str(task["threads"])
    preload(task["library"])
    os.makedirs(task["dir"], exist_ok=True)
    try:
        records = BY_NAME[task["scenario"]].runner(task)
    finally:
        shutil.rmtree(task["dir"], ignore_errors=True)
    for item in records:
        item["cachelib_source"] = cachelib_source()
        item["threads"] = task.get("threads")
    return records


def cachelib_source() -> str:
    """Return an xxh3-64 of cachelib's ``*.py`` files, to tell which code was measured."""
    directory = os.path.dirname(cachelib.__file__)
    hasher = xxhash.xxh3_64()
    for name in source_files(directory):
        with open(os.path.join(directory, name), "rb") as source:
            hasher.update(name.encode() + b"\0" + source.read())
    return hasher.hexdigest()


# -- the parent: running everything ------------------------------------------------------


@dataclass
class Options:
    """The parsed command line."""

    scenarios: list[str]
    libraries: list[str]
    quick: bool
    directory: str | None
    output_dir: str
    timeout: float
    rounds: int
    threads: list[int]

    @property
    def scale(self) -> int:
        """Size divisor: 1, or 10 with --quick."""
        return 10 if self.quick else 1

    @property
    def output_name(self) -> str:
        return "memoize-quick" if self.quick else "memoize"


def log(message: str) -> None:
    """Print a progress line to stderr at once."""
    print(message, file=sys.stderr, flush=True)


def size_text(nbytes: float) -> str:
    """Return "800 MB" / "1.6 GB" (decimal units) for a byte count."""
    return f"{nbytes / 1e9:.1f} GB" if nbytes >= 1e9 else f"{nbytes / 1e6:.0f} MB"


def make_task(
    options: Options, scenario: Scenario, library: str, directory: str, threads: int | None = None
) -> dict[str, Any]:
    """Describe one child's work: sizes and repeat counts for ``scenario`` (at ``threads``)."""
    quick = options.quick
    elements = (HASH_ELEMENTS if scenario.name == "hash" else BIG_ELEMENTS) // options.scale
    repeats = {"hit-array-arg": 5, "store-big": 5, "hit-big": 5, "hit-mmap": 7, "hash": 5, "start": 15}.get(
        scenario.name, 3
    )
    if scenario.name == "hash" and library == "joblib":
        repeats = 3  # md5 is slow
    return {
        "scenario": scenario.name,
        "library": library,
        "dir": os.path.join(directory, f"{scenario.name}-{library}"),
        "elements": elements,
        "hits": 200 if quick else 2000,
        "repeats": 2 if quick else repeats,
        "threads": threads,
        "burst_elements": BURST_ELEMENTS // options.scale,
    }


def available(library: str) -> bool:
    """Tell whether an optional library can be imported."""
    return library not in OPTIONAL_LIBRARIES or importlib.util.find_spec(library) is not None


def run_all(options: Options, directory: str) -> tuple[list[dict[str, Any]], list[str]]:
    """Run every selected (scenario, library) pair ``rounds`` times; return merged records and notes."""
    notes = [f"{name} is not installed: skipped" for name in OPTIONAL_LIBRARIES if not available(name)]
    for note in notes:
        print(f"note: {note}", flush=True)
    raw: list[dict[str, Any]] = []
    for round_number in range(1, options.rounds + 1):
        for name in options.scenarios:
            scenario = BY_NAME[name]
            # Every other round runs the libraries in reverse: on this VM the first large write
            # or allocation after a pause is slow for whoever makes it (memory the host took
            # back), so no library may always be first.
            order = scenario.libraries if round_number % 2 else tuple(reversed(scenario.libraries))
            for library in order:
                if not (available(library) and _base(library) in options.libraries):
                    continue
                for threads in threads_of(options, name, library):
                    shown = f"{LABELS[library]}" + (f", {threads} threads" if threads else "")
                    log(f"[{round_number}/{options.rounds}] {scenario.number} {name} / {shown}")
                    raw += run_pair(options, scenario, library, directory, threads)
    records = merge_rounds(raw)
    for item in records:
        summarize(item)
    return records, notes


def threads_of(options: Options, scenario: str, library: str) -> list[int | None]:
    """The thread counts a pair runs at: each of --threads for cachelib's scaling scenarios."""
    if not library.startswith("cachelib"):
        return [None]
    if scenario in SCALING and library == "cachelib":
        return list(options.threads)
    return [max(options.threads)]


def run_pair(
    options: Options, scenario: Scenario, library: str, directory: str, threads: int | None = None
) -> list[dict[str, Any]]:
    """Run one (scenario, library) pair in a fresh child; return its records or an error record."""
    started = time.perf_counter()
    outcome = run_isolated(
        run_case, make_task(options, scenario, library, directory, threads), timeout=options.timeout
    )
    if outcome["ok"]:
        items: list[dict[str, Any]] = outcome["result"]
        for item in items:
            shown = show_time(median(item["times_s"]), scenario)
            log(f"    {item['label']} {item['variant']}: median {shown}")
    else:
        error = outcome["error"].strip().splitlines()[-1]
        log(f"    FAILED: {error}")
        items = [
            {
                "scenario": scenario.name,
                "library": library,
                "label": LABELS[library],
                "variant": "",
                "error": error,
                "times_s": [],
                "threads": threads,
            }
        ]
    log(f"    ({time.perf_counter() - started:.0f} s in the child)")
    return items


def merge_rounds(raw: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Pool the rounds of each (scenario, library, variant): times and memory figures concatenated."""
    merged: dict[tuple[str, str, str, int | None], dict[str, Any]] = {}
    for item in raw:
        key = (item["scenario"], item["library"], item["variant"], item.get("threads"))
        target = merged.setdefault(
            key, {**item, "times_s": [], "errors": [], "cachelib_sources": [], "rounds": 0}
        )
        if item.get("error"):
            target["errors"].append(item["error"])
            continue
        target["rounds"] += 1
        target["times_s"] += item["times_s"]
        target["cachelib_sources"].append(item.get("cachelib_source"))
        if item.get("peak_extra_bytes") is not None:
            target["peak_extra_bytes"] = (target.get("peak_extra_bytes") or []) + item["peak_extra_bytes"]
        for field in ("nbytes", "label"):
            target[field] = item[field]
    for target in merged.values():
        target.pop("cachelib_source", None)
        if target["rounds"]:
            target.pop("error", None)
        else:
            target["error"] = target["errors"][-1]
    return list(merged.values())


def _base(library: str) -> str:
    return "cachelib" if library.startswith("cachelib") else library


def summarize(item: dict[str, Any]) -> None:
    """Add median, p90, GB/s and memory multiples to one record."""
    times = item["times_s"]
    item["median_s"] = median(times)
    item["p90_s"] = float(np.percentile(times, 90)) if times else None
    item["min_s"] = min(times) if times else None
    item["n"] = len(times)
    if item.get("nbytes") and item["median_s"]:
        item["gb_per_s"] = item["nbytes"] / item["median_s"] / 1e9
    if item.get("peak_extra_bytes"):
        item["peak_extra_max_x"] = max(item["peak_extra_bytes"]) / item["nbytes"]


def show_time(seconds: float, scenario: Scenario) -> str:
    """Return ``seconds`` in the scenario's unit, with the unit."""
    return f"{seconds * UNIT_SCALE[scenario.unit]:.4g} {UNIT_TEXT[scenario.unit]}"


def find(
    records: list[dict[str, Any]], scenario: str, library: str, variant: str = ""
) -> dict[str, Any] | None:
    """Return the successful record of (scenario, library, variant), if any."""
    for item in records:
        if (item["scenario"], item["library"], item["variant"]) == (scenario, library, variant):
            return item if item.get("median_s") else None
    return None


def versus_joblib(records: list[dict[str, Any]], item: dict[str, Any]) -> float | None:
    """Return how many times faster than joblib ``item`` is (per byte for ``hash``)."""
    reference = find(records, item["scenario"], "joblib", item["variant"])
    if reference is None or not item.get("median_s"):
        return None
    if item["scenario"] == "hash":
        return item["gb_per_s"] / reference["gb_per_s"]  # type: ignore[no-any-return]
    return reference["median_s"] / item["median_s"]  # type: ignore[no-any-return]


def table_row(records: list[dict[str, Any]], item: dict[str, Any], options: Options) -> list[str]:
    """Render one record as table cells."""
    scenario = BY_NAME[item["scenario"]]
    title = f"{scenario.number} {scenario_title(scenario, options)}" + (
        f" {item['variant']}" if item["variant"] else ""
    )
    if item.get("error"):
        return [title, item["label"], "FAIL", "-", "-", "-", "-", "-", "-", "-"]
    scale = UNIT_SCALE[scenario.unit]
    ratio = versus_joblib(records, item)
    return [
        title,
        item["label"],
        f"{item['median_s'] * scale:.4g}",
        f"{item['p90_s'] * scale:.4g}" if scenario.name == "hit-small" else "-",
        f"{item['min_s'] * scale:.4g}",
        UNIT_TEXT[scenario.unit],
        str(item["n"]),
        f"{item['gb_per_s']:.2f}" if "gb_per_s" in item else "-",
        "-" if ratio is None or item["library"] == "joblib" else f"{ratio:.2f}x",
        f"{item['peak_extra_max_x']:.2f}x" if "peak_extra_max_x" in item else "-",
    ]


def scenario_title(scenario: Scenario, options: Options) -> str:
    """Return the scenario's title with its data size filled in."""
    return scenario.title.format(size=size_text(BIG_ELEMENTS * 8 / options.scale))


def results_table(records: list[dict[str, Any]], options: Options) -> str:
    """Render every record as one plain-text table."""
    headers = [
        "scenario",
        "library",
        "median",
        "p90",
        "min",
        "unit",
        "n",
        "GB/s",
        "vs joblib",
        "peak RSS/data",
    ]
    return format_table(headers, [table_row(records, item, options) for item in records])


# -- targets ----------------------------------------------------------------------------


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT MET"


def _target(text: str, value: float | None, ok: Callable[[float], bool], shown: str) -> str:
    if value is None:
        return f"{text}: not measured"
    return f"{text}: {verdict(ok(value))} ({shown.format(value)})"


def _over(numerator: float | None, denominator: float | None) -> float | None:
    return numerator / denominator if numerator and denominator else None


def target_lines(records: list[dict[str, Any]]) -> list[str]:
    """Compare cachelib's figures with the targets; one line each."""

    def median_of(scenario: str, library: str = "cachelib", variant: str = "") -> float | None:
        item = find(records, scenario, library, variant)
        return item["median_s"] if item else None

    def ratio_of(scenario: str, library: str = "cachelib", variant: str = "") -> float | None:
        item = find(records, scenario, library, variant)
        return versus_joblib(records, item) if item else None

    def rate_of(variant: str) -> float | None:
        item = find(records, "hash", "cachelib", variant)
        return item["gb_per_s"] if item else None

    small = median_of("hit-small")
    mmap = median_of("hit-mmap")
    lines = [
        _target(
            "hit, small args: median <= 30 µs",
            None if small is None else small * 1e6,
            lambda v: v <= 30,
            "{:.1f} µs",
        ),
        _target(
            "hit, small args: >= 7x faster than joblib.Memory",
            ratio_of("hit-small"),
            lambda v: v >= 7,
            "{:.1f}x",
        ),
    ]
    for layout, floor in (("contiguous", 15), ("a[::2]", 5)):
        lines.append(
            _target(
                f"hash {layout}: >= {floor} GB/s",
                rate_of(layout),
                lambda v, f=floor: v >= f,
                "{:.2f} GB/s",
            )
        )
        lines.append(
            _target(
                f"hash {layout}: >= 8x joblib.hash",
                ratio_of("hash", variant=layout),
                lambda v: v >= 8,
                "{:.1f}x",
            )
        )
    for setting in ("alone", "after other I/O"):
        burst = _over(median_of("burst", variant=setting), median_of("burst", "cachelib-nofsync", setting))
        lines.append(_target(f"burst of stores {setting} (default fsync): <= 1.1x fsync=False", burst,
                             lambda v: v <= 1.1, "{:.2f}x"))
    store, unsynced = median_of("store-big"), median_of("store-big", "cachelib-nofsync")
    hit, bare = median_of("hit-big"), median_of("hit-big", "readinto")
    checks: list[tuple[str, float | None, Callable[[float], bool], str]] = [
        ("store big result (default fsync): <= 1.1x the time of fsync=False", _over(store, unsynced),
         lambda v: v <= 1.1, "{:.2f}x"),
        ("store big result (default fsync): no slower than joblib.Memory", ratio_of("store-big"),
         lambda v: v >= 1, "{:.2f}x faster"),
        ("hit loading big result: <= 1.2x a bare readinto of the same bytes", _over(hit, bare),
         lambda v: v <= 1.2, "{:.2f}x"),
    ]
    lines += [_target(*check) for check in checks]
    lines.append(
        _target(
            "import: no slower than joblib's",
            ratio_of("start", variant="import"),
            lambda v: v >= 1,
            "{:.2f}x faster",
        )
    )
    lines.append(
        _target(
            "hit with mmap_mode='r': < 5 ms",
            None if mmap is None else mmap * 1e3,
            lambda v: v < 5,
            "{:.2f} ms",
        )
    )
    return lines


# -- report and plot ----------------------------------------------------------------------


def source_notes(records: list[dict[str, Any]]) -> list[str]:
    """Say which cachelib source was measured, and whether it changed during the run."""
    first_seen: dict[str, tuple[int, int]] = {}  # source -> (round, scenario number), earliest
    for item in records:
        number = BY_NAME[item["scenario"]].number
        for round_number, source in enumerate(item.get("cachelib_sources", []), 1):
            if source:
                first_seen[source] = min(
                    first_seen.get(source, (round_number, number)), (round_number, number)
                )
    if len(first_seen) <= 1:
        return [f"cachelib source (xxh3-64 of cachelib/*.py): {source}" for source in first_seen]
    versions = sorted(first_seen.items(), key=lambda pair: pair[1])
    lines = [
        f"cachelib source CHANGED during the run ({len(versions)} versions of cachelib/*.py; "
        "each record's per-round source is in the JSON):"
    ]
    lines += [f"  {source} first measured in round {r}, scenario {n}" for source, (r, n) in versions]
    return lines


def build_report(
    options: Options, info: dict[str, Any], records: list[dict[str, Any]], notes: list[str]
) -> str:
    """Return the whole plain-text report."""
    big = size_text(BIG_ELEMENTS * 8 / options.scale)
    mode = " (--quick: 1/10 sizes, fewer repeats)" if options.quick else ""
    lines = [
        f"cachelib memoize vs joblib.Memory{mode}",
        "",
        describe_machine(info),
        f"load average at start / end: {info['loadavg_start']} / {info['loadavg_end']}",
        f"rounds: {options.rounds} (each round runs every pair in a fresh child; timings are pooled)",
        "",
        results_table(records, options),
        "",
        "median/p90/min: per call (p90 only for scenario 1); n: timed calls (all rounds);",
        "GB/s: data bytes / median;",
        "vs joblib: joblib.Memory median / this median (hash: GB/s ratio), > 1 is faster;",
        f"peak RSS/data: max over runs of (VmHWM - VmRSS before the call) / {big}.",
        f"hash: cachelib on {size_text(HASH_ELEMENTS * 8 / options.scale)}, joblib.hash on 1/"
        f"{JOBLIB_HASH_FRACTION} of it; a[::2] is the strided view (half the bytes).",
        "",
        "targets (cachelib):",
        *(f"  {line}" for line in target_lines(records)),
    ]
    notes = notes + source_notes(records)
    if notes:
        lines += ["", "notes:", *(f"  {note}" for note in notes)]
    return "\n".join(lines)


COLOURS = {
    "cachelib": "#1f77b4",
    "cachelib-always": "#08519c",
    "cachelib-nofsync": "#6baed6",
    "readinto": "#bdbdbd",
    "joblib": "#ff7f0e",
    "diskcache": "#2ca02c",
    "cachier": "#9467bd",
    "xxhash": "#7f7f7f",
}


def plot(records: list[dict[str, Any]], options: Options, path: str) -> None:
    """Draw one log-scale bar panel per scenario: median time per library."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [
        name
        for name in options.scenarios
        if any(r["scenario"] == name and r.get("median_s") for r in records)
    ]
    if not names:
        return
    columns = min(3, len(names))
    rows = (len(names) + columns - 1) // columns
    figure, axes = plt.subplots(rows, columns, figsize=(5.2 * columns, 4.2 * rows), squeeze=False)
    for axis in axes.flat[len(names) :]:
        axis.set_visible(False)
    for axis, name in zip(axes.flat, names):
        _plot_panel(
            axis, BY_NAME[name], [r for r in records if r["scenario"] == name and r.get("median_s")], options
        )
    figure.suptitle("cachelib vs joblib.Memory (median, log scale; lower is better)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _plot_panel(axis: Any, scenario: Scenario, items: list[dict[str, Any]], options: Options) -> None:
    """Bars for one scenario; ``hash`` shows seconds per GB."""
    per_gb = scenario.name == "hash"
    values = [
        r["median_s"] / (r["nbytes"] / 1e9) if per_gb else r["median_s"] * UNIT_SCALE[scenario.unit]
        for r in items
    ]
    labels = [
        r["label"].replace(" (", "\n(").replace(" fsync", "\nfsync")
        + (f"\n{r['variant']}" if r["variant"] else "")
        for r in items
    ]
    positions = range(len(items))
    axis.bar(positions, values, color=[COLOURS[r["library"]] for r in items])
    axis.set_yscale("log")
    axis.set_ylim(min(values) / 4, max(values) * 2)  # bars start well below the smallest
    axis.set_xticks(list(positions))
    axis.set_xticklabels(labels, fontsize=7)
    axis.set_ylabel("s per GB" if per_gb else UNIT_TEXT[scenario.unit])
    axis.set_title(f"{scenario.number}. {scenario_title(scenario, options)}", fontsize=9)
    for position, value in zip(positions, values):
        axis.annotate(f"{value:.3g}", (position, value), ha="center", va="bottom", fontsize=7)


# -- command line ----------------------------------------------------------------------------


def _names(values: Sequence[str], known: Sequence[str], what: str) -> list[str]:
    """Split comma/space separated names (or scenario numbers) and check them."""
    chosen = [v for value in values for v in value.split(",") if v]
    numbers = {str(s.number): s.name for s in SCENARIOS} if what == "scenario" else {}
    chosen = [numbers.get(v, v) for v in chosen]
    unknown = sorted(set(chosen) - set(known))
    if unknown:
        raise SystemExit(f"unknown {what} {unknown}; choose from {', '.join(known)}")
    return [name for name in known if name in chosen]  # in the canonical order


def parse_args(argv: list[str] | None = None) -> Options:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    scenario_names = [s.name for s in SCENARIOS]
    library_names = ["cachelib", "joblib", "diskcache", "cachier", "xxhash", "readinto"]
    parser.add_argument(
        "--scenarios",
        nargs="+",
        default=scenario_names,
        help=f"names or numbers, default all: {' '.join(scenario_names)}",
    )
    parser.add_argument(
        "--libraries",
        nargs="+",
        default=library_names,
        help=f"default all installed: {' '.join(library_names)}",
    )
    parser.add_argument("--quick", action="store_true", help="1/10 sizes and fewer repeats, for a smoke run")
    parser.add_argument("--dir", dest="directory", help="where cache directories go (default: system temp)")
    parser.add_argument("--output-dir", default=RESULTS_DIR, help="where the txt/json/png results go")
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run the whole schedule this many times and pool the timings (noisy machines)",
    )
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds per child")
    parser.add_argument(
        "--threads",
        default="1,2,all",
        type=thread_counts,
        help="cachelib thread counts to measure scaling at (all = the usable cores); default 1,2,all",
    )
    args = parser.parse_args(argv)
    return Options(
        scenarios=_names(args.scenarios, scenario_names, "scenario"),
        libraries=_names(args.libraries, library_names, "library"),
        quick=args.quick,
        directory=args.directory,
        output_dir=args.output_dir,
        timeout=args.timeout,
        rounds=args.rounds,
        threads=args.threads,
    )


def scaling_series(records: list[dict[str, Any]]) -> dict[str, dict[int, float]]:
    """Return cachelib's GB/s per thread count, per scaling scenario (and hash layout)."""
    series: dict[str, dict[int, float]] = {}
    for item in records:
        if item.get("threads") is None or item["library"] != "cachelib" or not item.get("gb_per_s"):
            continue
        name = item["scenario"] + (f" {item['variant']}" if item["variant"] else "")
        series.setdefault(name, {})[item["threads"]] = item["gb_per_s"]
    return {name: points for name, points in series.items() if len(points) > 1}


def main(argv: list[str] | None = None) -> int:
    """Run the selected scenarios, print the report and write txt, json and png."""
    options = parse_args(argv)
    directory = tempfile.mkdtemp(prefix="cachelib-memoize-", dir=options.directory)
    try:
        info = machine_info(("numpy", "joblib", "cachelib", "xxhash", "diskcache", "cachier"), directory)
        info["loadavg_start"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
        records, notes = run_all(options, directory)
        info["loadavg_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    shown = [r for r in records if r.get("threads") in (None, max(options.threads))]
    series = scaling_series(records)
    report = build_report(options, info, shown, notes)
    if series:
        report += "\n\nthread scaling (cachelib, GB/s of data; x = speedup over the fewest threads):\n"
        report += scaling_table(series, "GB/s")
    print(report)
    base = os.path.join(options.output_dir, options.output_name)
    write_text(base + ".txt", report)
    write_json(
        base + ".json",
        {
            "machine": info,
            "options": {
                "rounds": options.rounds,
                "scenarios": options.scenarios,
                "libraries": options.libraries,
                "quick": options.quick,
                "big_bytes": BIG_ELEMENTS * 8 // options.scale,
                "hash_bytes": HASH_ELEMENTS * 8 // options.scale,
            },
            "records": records,
            "targets": target_lines(shown),
            "notes": notes,
            "threads": options.threads,
        },
    )
    plot(shown, options, base + ".png")
    if series:
        plot_scaling(series, "GB/s", "cachelib memoize: throughput by thread count", base + "-threads.png")
    log(f"wrote {base}.txt, .json and .png")
    return 0 if all(not r.get("error") for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
