"""Benchmark ``cachelib.dump``/``cachelib.load`` against joblib, pickle and numpy.

What is measured, for every (workload, configuration):

* dump seconds and load seconds: the median of ``--repeat`` wall-clock timings;
* peak extra resident memory of the first dump and of the first load, in MB and as
  a multiple of the data size (see below): the child resets the kernel's
  high-water mark (``/proc/self/clear_refs``), reads ``VmRSS``, runs the operation
  and reads ``VmHWM``; extra = VmHWM - VmRSS before;
* the size of the file written.

For the raw 1.6 GB "big" file, ``cachelib.load(path, mmap_mode="r")`` and
``joblib.load(path, mmap_mode="r")`` are timed too.

How: each dump and each load runs in its own fresh child process ("spawn" start
method), one child at a time. A dump child builds the workload itself from a fixed
seed (the parent never holds the data), dumps it ``--repeat`` times (the file is
deleted between repeats, outside the timer) and returns its figures and a
fingerprint of the value. A load child only loads the file, ``--repeat`` times,
and checks the first result against that fingerprint. Loads follow their dump, so
the page cache is warm; dumps are not fsync'ed (they measure writing into the page
cache). Python's garbage collector keeps its default settings. Wall and CPU seconds
are both recorded (CPU time cross-checks wall time on a shared machine), with the
load average around each pair. The cachelib package is copied into the temporary
directory at the start and the children import that copy, so edits to the working
tree during a run cannot mix code versions.

Workloads (``--quick`` divides every size by ten):

* lfw: an LFW-shaped dict: float32 "images" (13233, 62, 47) of smooth random
  fields quantised to 256 grey levels / 255 (compressible like face photos), a
  flattened copy "data" (13233, 2914), int64 "target" and an object array of
  5749 "target_names" -- about 308 MB;
* seed: ``[np.ones((5000, 5000)), rng.random((5000, 5000))]`` -- 400 MB;
* big: a float64 random walk ``np.cumsum(rng.standard_normal(200_000_000))`` -- 1.6 GB;
* dict: ``{f"k{i}": {"a": np.arange(i % 7 + 1, dtype=float), "n": i, "s": str(i),
  "t": (i, float(i))} for i in range(200_000)}``;
* list: ``[rng.random(8) for _ in range(200_000)]``, 200,000 arrays of 8 floats.

Data size (the memory multiples' denominator) is the total ``nbytes`` of the
arrays, except for "dict" and "list", whose arrays are a small part of them: there
it is the growth of the child's RSS while building the value (its in-memory
footprint); the size of its raw cachelib file is reported too. On those two,
cachelib is compared with plain ``pickle`` (protocol 5).

Cold loads: the lfw files of cachelib raw and lz4 (and joblib raw) are loaded again
by a third child that evicts the file from the page cache before each load
(``os.sync()``, then ``posix_fadvise(DONTNEED)`` on that file only): a load that
reads the disk, where a compressed file reads fewer bytes.

Loads right after a dump (``--tail-loads``, 30 by default): one child dumps a
200 MB float64 array with ``cachelib.dump``, then ``joblib.dump`` and a raw
``tofile`` of it, and loads each file 30 times, the three alternating in an order
that rotates every round (so that no library is always first after a pause); the
report gives each one's median, p95 and maximum, and p95 / median.

Threads: cachelib hashes, checksums and (for zstd and lz4) compresses on a pool of
``CACHELIB_THREADS`` threads. The main table runs cachelib at the largest of
``--threads`` (default ``1,2,all``; "all" is the cores the process may use); then the
pairs of ``SCALING`` (lfw with zstd-3 and lz4, seed and dict raw) run again at each
other count, and a scaling table gives dump and load throughput (MB/s of data) and
the speedup over the fewest threads.

Usage::

    python benchmarks/persistence.py [--workloads lfw,seed,big,dict] [--configs ...]
                                     [--repeat N] [--quick] [--dir DIR] [--threads 1,2,all]

Outputs: a table on stdout and in ``benchmarks/results/persistence.txt``, all raw
figures in ``persistence.json``, a bar chart in ``persistence.png`` and the thread
scaling in ``persistence-threads.png`` (``persistence-quick*`` with ``--quick``).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import gc
import gzip
import hashlib
import json
import math
import os
import pickle
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import joblib
import numpy as np
import xxhash

import cachelib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _harness import (
    MB,
    THREADS_VARIABLE,
    PeakRSS,
    describe_machine,
    fmt,
    format_table,
    load_average,
    machine_info,
    median,
    plot_scaling,
    rss_bytes,
    run_isolated,
    scaling_table,
    source_files,
    thread_counts,
    timed_cpu,
    write_json,
    write_text,
)

SEED = 0
WORKLOADS = ("lfw", "seed", "big", "dict", "list")
FOOTPRINT_WORKLOADS = ("dict", "list")
"""Workloads of many small objects: their data size is their in-memory footprint."""
COLD_CONFIGS = ("cachelib-raw", "cachelib-lz4", "joblib-raw")
"""The lfw configurations also loaded from a cold page cache."""
TAIL_ELEMENTS = 25_000_000
"""float64 elements of the array loaded right after its dump (200 MB)."""
RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
MMAP_CONFIGS = {"cachelib-raw": "cachelib", "joblib-raw": "joblib"}
"""The raw configurations whose "big" file is also loaded with mmap_mode="r"."""

MMAP_REPEAT_MIN = 5
"""mmap loads are cheap: time at least this many."""
SCALING = (
    ("lfw", "cachelib-zstd3"),
    ("lfw", "cachelib-lz4"),
    ("seed", "cachelib-raw"),
    ("dict", "cachelib-raw"),
)
"""The (workload, config) pairs measured again at each thread count."""


# -- workloads ---------------------------------------------------------------------


def _interpolation_matrix(size: int, knots: int) -> np.ndarray:
    """Return the (size, knots) matrix of linear interpolation from knots to size points."""
    position = np.linspace(0, knots - 1, size)
    left = np.minimum(np.floor(position).astype(int), knots - 2)
    weight = (position - left).astype(np.float32)
    matrix = np.zeros((size, knots), np.float32)
    matrix[np.arange(size), left] = 1 - weight
    matrix[np.arange(size), left + 1] = weight
    return matrix


def smooth_images(rng: np.random.Generator, count: int, height: int = 62, width: int = 47) -> np.ndarray:
    """Return ``count`` face-like float32 images: smooth fields in 256 grey levels / 255."""
    knots = rng.standard_normal((count, 12, 9)).astype(np.float32)
    field = _interpolation_matrix(height, 12) @ knots @ _interpolation_matrix(width, 9).T
    low = field.min(axis=(1, 2), keepdims=True)
    high = field.max(axis=(1, 2), keepdims=True)
    grey = (field - low) / (high - low) * 255 + rng.standard_normal(field.shape, np.float32)
    return (np.clip(np.round(grey), 0, 255) / 255).astype(np.float32)


def person_names(rng: np.random.Generator, count: int) -> np.ndarray:
    """Return an object array of ``count`` distinct made-up "First_Last" names."""
    syllables = np.array(["an", "be", "co", "da", "el", "fi", "go", "ha", "is", "jo", "ka", "lu", "mo"])
    parts = rng.integers(0, len(syllables), (count, 5))
    names = [
        f"{''.join(syllables[row[:2]]).title()}_{''.join(syllables[row[2:]]).title()}_{i}"
        for i, row in enumerate(parts)
    ]
    return np.array(names, dtype=object)


def make_lfw(scale: float) -> dict[str, np.ndarray]:
    """Return the LFW-shaped dict (about 308 MB at scale 1)."""
    rng = np.random.default_rng(SEED)
    count = max(1, round(13233 * scale))
    images = smooth_images(rng, count)
    return {
        "images": images,
        "data": images.reshape(count, -1).copy(),
        "target": rng.integers(0, max(1, round(5749 * scale)), count, dtype=np.int64),
        "target_names": person_names(rng, max(1, round(5749 * scale))),
    }


def make_seed(scale: float) -> list[np.ndarray]:
    """Return ``[ones, random]`` of two (5000, 5000) float64 arrays (400 MB at scale 1)."""
    side = max(1, round(5000 * math.sqrt(scale)))
    rng = np.random.default_rng(SEED)
    return [np.ones((side, side)), rng.random((side, side))]


def make_big(scale: float) -> np.ndarray:
    """Return a float64 random walk of 200,000,000 steps (1.6 GB at scale 1)."""
    rng = np.random.default_rng(SEED)
    steps = rng.standard_normal(max(1, round(200_000_000 * scale)))
    return np.cumsum(steps, out=steps)


def make_dict(scale: float) -> dict[str, dict[str, Any]]:
    """Return the 200,000-entry dict of small arrays and Python objects."""
    return {
        f"k{i}": {"a": np.arange(i % 7 + 1, dtype=float), "n": i, "s": str(i), "t": (i, float(i))}
        for i in range(max(1, round(200_000 * scale)))
    }


def make_list(scale: float) -> list[np.ndarray]:
    """Return the list of 200,000 arrays of 8 floats."""
    rng = np.random.default_rng(SEED)
    return [rng.random(8) for _ in range(max(1, round(200_000 * scale)))]


MAKERS: dict[str, Callable[[float], Any]] = {
    "lfw": make_lfw,
    "seed": make_seed,
    "big": make_big,
    "dict": make_dict,
    "list": make_list,
}


def array_nbytes(value: Any) -> int:
    """Return the total ``nbytes`` of the arrays inside ``value`` (dicts, lists, tuples)."""
    if isinstance(value, np.ndarray):
        return int(value.nbytes)
    if isinstance(value, dict):
        return sum(array_nbytes(item) for item in value.values())
    if isinstance(value, (list, tuple)):
        return sum(array_nbytes(item) for item in value)
    return 0


def fingerprint(value: Any) -> str:
    """Return a hash of ``value``'s structure and contents, to check a load round-trips."""
    hasher = xxhash.xxh3_64()
    _feed(hasher, value)
    return hasher.hexdigest()


def _feed(hasher: Any, value: Any) -> None:
    """Feed ``value`` into ``hasher``, recursing into dicts, lists and tuples."""
    if isinstance(value, np.ndarray):
        hasher.update(f"A{value.dtype.str}{value.shape}".encode())
        if value.dtype.hasobject:
            hasher.update(repr(value.tolist()).encode())
        elif value.size:
            hasher.update(np.ascontiguousarray(value).reshape(-1).view(np.uint8))
    elif isinstance(value, dict):
        hasher.update(f"D{len(value)}".encode())
        for key, item in value.items():
            _feed(hasher, key)
            _feed(hasher, item)
    elif isinstance(value, (list, tuple)):
        hasher.update(f"{type(value).__name__}{len(value)}".encode())
        for item in value:
            _feed(hasher, item)
    else:
        hasher.update(repr(value).encode())


# -- configurations ------------------------------------------------------------------


def pickle_dump(value: Any, path: str) -> None:
    """Pickle ``value`` with protocol 5 into an open file."""
    with open(path, "wb") as output:
        pickle.dump(value, output, protocol=5)


def pickle_load(path: str) -> Any:
    """Unpickle the value in ``path``."""
    with open(path, "rb") as source:
        return pickle.load(source)


def gzip_pickle_dump(value: Any, path: str) -> None:
    """Pickle ``value`` with protocol 5 through ``gzip.open(compresslevel=3)``."""
    with gzip.open(path, "wb", compresslevel=3) as output:
        pickle.dump(value, output, protocol=5)


def gzip_pickle_load(path: str) -> Any:
    """Unpickle the value in the gzip file ``path``."""
    with gzip.open(path, "rb") as source:
        return pickle.load(source)


def numpy_dump(value: Any, path: str) -> None:
    """``np.save`` one array; ``np.savez`` (uncompressed) a dict or list of arrays."""
    with open(path, "wb") as output:
        if isinstance(value, np.ndarray):
            np.save(output, value)
        elif isinstance(value, dict):
            np.savez(output, **value)
        else:
            np.savez(output, *value)


def numpy_load(path: str) -> Any:
    """``np.load`` a .npy array, or every array of a .npz back into a dict or list."""
    loaded = np.load(path, allow_pickle=True)
    if isinstance(loaded, np.ndarray):
        return loaded
    with loaded:
        names = list(loaded.files)
        arrays = {name: loaded[name] for name in names}
    if names == [f"arr_{i}" for i in range(len(names))]:
        return [arrays[name] for name in names]
    return arrays


@dataclass(frozen=True)
class Config:
    """One way of writing and reading a value: a library with its options."""

    name: str
    description: str
    dump: Callable[[Any, str], Any]
    load: Callable[[str], Any]
    workloads: tuple[str, ...] = WORKLOADS


def _cachelib(compress: Any) -> Callable[[Any, str], Any]:
    """Return a ``cachelib.dump`` with ``compress`` bound."""
    return functools.partial(_cachelib_dump, compress=compress)


def _cachelib_dump(value: Any, path: str, compress: Any) -> None:
    """Call ``cachelib.dump`` (a module-level function so configs stay simple)."""
    cachelib.dump(value, path, compress=compress)


def _joblib_dump(value: Any, path: str, compress: Any) -> None:
    """Call ``joblib.dump``."""
    joblib.dump(value, path, compress=compress)


def _joblib(compress: Any) -> Callable[[Any, str], Any]:
    """Return a ``joblib.dump`` with ``compress`` bound."""
    return functools.partial(_joblib_dump, compress=compress)


CONFIGS: dict[str, Config] = {
    config.name: config
    for config in (
        Config("cachelib-raw", "cachelib.dump(compress=False)", _cachelib(False), cachelib.load),
        Config(
            "cachelib-zlib3", 'cachelib.dump(compress=("zlib", 3))', _cachelib(("zlib", 3)), cachelib.load
        ),
        Config(
            "cachelib-zstd3", 'cachelib.dump(compress=("zstd", 3))', _cachelib(("zstd", 3)), cachelib.load
        ),
        Config("cachelib-lz4", 'cachelib.dump(compress=("lz4", 0))', _cachelib(("lz4", 0)), cachelib.load),
        Config("joblib-raw", "joblib.dump(compress=0)", _joblib(0), joblib.load),
        Config("joblib-zlib3", 'joblib.dump(compress=("zlib", 3))', _joblib(("zlib", 3)), joblib.load),
        Config(
            "joblib-lz4",
            'joblib.dump(compress=("lz4", 3)) (level 0 writes raw)',
            _joblib(("lz4", 3)),
            joblib.load,
        ),
        Config("pickle-raw", "pickle.dump(protocol=5) to an open file", pickle_dump, pickle_load),
        Config(
            "pickle-gzip3",
            "pickle.dump(protocol=5) into gzip.open(compresslevel=3)",
            gzip_pickle_dump,
            gzip_pickle_load,
        ),
        Config(
            "numpy",
            "np.save (big); np.savez uncompressed (lfw: allow_pickle for target_names; seed); "
            "n/a for dict (not arrays)",
            numpy_dump,
            numpy_load,
            workloads=("lfw", "seed", "big"),
        ),
    )
}


# -- child processes -------------------------------------------------------------------


def use_threads(task: dict[str, Any]) -> None:
    """Set cachelib's thread count in this child, before any work."""
    if task.get("threads"):
        os.environ[THREADS_VARIABLE] = str(task["threads"])


def preload_libraries() -> None:
    """Import every codec module now, so no lazy import lands in a measurement."""
    import lz4.frame  # noqa: F401
    import zstandard  # noqa: F401

    gc.collect()


def measure_calls(
    function: Callable[[], Any],
    repeat: int,
    before_repeat: Callable[[], Any] | None = None,
    inspect_first: Callable[[Any], Any] | None = None,
) -> dict[str, Any]:
    """Time ``repeat`` calls of ``function`` (wall and CPU), peak extra memory of the first.

    ``before_repeat`` runs (untimed) before every call but the first;
    ``inspect_first`` gets the first result, which is then dropped, and its answer
    is returned as "inspected".
    """
    with PeakRSS() as peak:
        wall, cpu, result = timed_cpu(function)
    walls, cpus = [wall], [cpu]
    inspected = inspect_first(result) if inspect_first is not None else None
    del result
    for _ in range(repeat - 1):
        if before_repeat is not None:
            before_repeat()
        gc.collect()
        wall, cpu, _ = timed_cpu(function)
        walls.append(wall)
        cpus.append(cpu)
    return {"walls": walls, "cpus": cpus, "extra_bytes": peak.extra_bytes, "inspected": inspected}


def dump_child(task: dict[str, Any]) -> dict[str, Any]:
    """Build the workload, dump it ``repeat`` times; return times, memory and file size."""
    use_threads(task)
    preload_libraries()
    config = CONFIGS[task["config"]]
    before = rss_bytes()
    value = MAKERS[task["workload"]](task["scale"])
    built = rss_bytes() - before
    dump = functools.partial(config.dump, value, task["path"])
    measured = measure_calls(dump, task["repeat"], before_repeat=functools.partial(os.unlink, task["path"]))
    return {
        "dump_times": measured["walls"],
        "dump_cpu_times": measured["cpus"],
        "dump_extra_bytes": measured["extra_bytes"],
        "file_bytes": os.path.getsize(task["path"]),
        "array_bytes": array_nbytes(value),
        "built_rss_bytes": built,
        "fingerprint": fingerprint(value),
        "cachelib_file": cachelib.__file__,
    }


def evict(path: str) -> None:
    """Drop ``path``'s pages from the page cache (written back first), and no other file's."""
    os.sync()
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def load_child(task: dict[str, Any]) -> dict[str, Any]:
    """Load the file ``repeat`` times (memory on the first); return times and its fingerprint.

    With ``task["cold"]``, the file leaves the page cache before every load.
    """
    use_threads(task)
    preload_libraries()
    load = functools.partial(CONFIGS[task["config"]].load, task["path"])
    before = functools.partial(evict, task["path"]) if task.get("cold") else None
    if before is not None:
        before()
    measured = measure_calls(load, task["repeat"], before_repeat=before, inspect_first=fingerprint)
    return {
        "load_times": measured["walls"],
        "load_cpu_times": measured["cpus"],
        "load_extra_bytes": measured["extra_bytes"],
        "fingerprint": measured["inspected"],
    }


def describe_mapped(value: Any) -> dict[str, Any]:
    """Describe what an mmap_mode="r" load returned, and whether it is file-backed."""
    mapped = isinstance(value, np.memmap) or isinstance(getattr(value, "base", None), np.memmap)
    return {"value": f"{type(value).__name__} {getattr(value, 'shape', None)}", "mapped": mapped}


def mmap_child(task: dict[str, Any]) -> dict[str, Any]:
    """Load the raw file with ``mmap_mode="r"`` several times; return times and memory."""
    preload_libraries()
    library = cachelib if task["library"] == "cachelib" else joblib
    load = functools.partial(library.load, task["path"], mmap_mode="r")
    measured = measure_calls(load, max(task["repeat"], MMAP_REPEAT_MIN), inspect_first=describe_mapped)
    return {
        "mmap_times": measured["walls"],
        "mmap_cpu_times": measured["cpus"],
        "mmap_extra_bytes": measured["extra_bytes"],
        **measured["inspected"],
    }


def _bare_read(path: str, like: np.ndarray) -> np.ndarray:
    """The floor: one ``readinto`` of a raw file into a fresh array."""
    out = np.empty_like(like)
    with open(path, "rb", buffering=0) as source:
        source.readinto(memoryview(out).cast("B"))
    return out


def tail_child(task: dict[str, Any]) -> dict[str, Any]:
    """Dump one array three ways, then load each ``loads`` times, alternating in a rotating order."""
    use_threads(task)
    preload_libraries()
    array = np.random.default_rng(SEED).random(task["elements"])
    paths = {name: os.path.join(task["dir"], f"tail-{name}") for name in TAIL_LIBRARIES}
    cachelib.dump(array, paths["cachelib"])
    joblib.dump(array, paths["joblib"])
    array.tofile(paths["bare readinto"])
    loaders: dict[str, Callable[[], Any]] = {
        "cachelib": functools.partial(cachelib.load, paths["cachelib"]),
        "joblib": functools.partial(joblib.load, paths["joblib"]),
        "bare readinto": functools.partial(_bare_read, paths["bare readinto"], array),
    }
    names = list(TAIL_LIBRARIES)
    times: dict[str, list[float]] = {name: [] for name in names}
    try:
        for round_number in range(task["loads"]):
            shift = round_number % len(names)
            for name in names[shift:] + names[:shift]:
                start = time.perf_counter()
                value = loaders[name]()
                times[name].append(time.perf_counter() - start)
                if round_number == 0 and not np.array_equal(value, array):
                    raise AssertionError(f"{name} loaded another array")
                del value
    finally:
        for path in paths.values():
            os.unlink(path)
    return {"times": times, "bytes": array.nbytes}


TAIL_LIBRARIES = ("cachelib", "joblib", "bare readinto")


def measure_tail(options: Options, directory: str) -> dict[str, Any] | None:
    """Run the loads-right-after-a-dump child; None if not asked for."""
    if not options.tail_loads:
        return None
    task = {"elements": round(TAIL_ELEMENTS * options.scale), "loads": options.tail_loads, "dir": directory,
            "threads": max(options.threads)}
    log(f"loads right after a dump: {options.tail_loads} of each")
    outcome = run_isolated(tail_child, task, timeout=options.timeout)
    if not outcome["ok"]:
        return {"error": _error_text(outcome)}
    result: dict[str, Any] = outcome["result"]
    result["summary"] = {
        name: {"median_s": median(values), "p95_s": float(np.percentile(values, 95)), "max_s": max(values),
               "first_s": values[0]}
        for name, values in result["times"].items()
    }
    return result


def tail_lines(tail: dict[str, Any] | None) -> list[str]:
    """Report the loads right after a dump: median, p95, max and p95 / median of each."""
    if tail is None:
        return []
    if "error" in tail:
        return [f"loads right after a dump: failed: {tail['error']}"]
    count = len(next(iter(tail["times"].values())))
    lines = [f"loads of a {tail['bytes'] / MB:.0f} MB array right after its dump ({count} each, "
             "alternating, order rotating every round):"]
    for name, figures in tail["summary"].items():
        ratio = figures["p95_s"] / figures["median_s"]
        target = f"  target p95 <= 1.3x median: {verdict(ratio <= 1.3)}" if name == "cachelib" else ""
        lines.append(
            f"  {name:13} median {figures['median_s']:.3f} s  p95 {figures['p95_s']:.3f} s  "
            f"max {figures['max_s']:.3f} s  first {figures['first_s']:.3f} s  p95/median {ratio:.2f}x{target}"
        )
    return lines


def plot_tail(tail: dict[str, Any] | None, path: str) -> None:
    """Draw each library's load times in the order they ran."""
    if not tail or "error" in tail:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(8, 4))
    for name, values in tail["times"].items():
        axis.plot(range(1, len(values) + 1), values, marker="o", markersize=3, label=name)
    axis.set_xlabel("load (after the dumps)")
    axis.set_ylabel("seconds")
    axis.set_title(f"loads of a {tail['bytes'] / MB:.0f} MB array right after its dump")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


# -- the parent: running everything ------------------------------------------------------


@dataclass
class Options:
    """The parsed command line."""

    workloads: list[str]
    configs: list[str]
    repeat: int
    quick: bool
    directory: str | None
    output_dir: str
    timeout: float
    update: bool = False
    resume: bool = False
    threads: list[int] = dataclasses.field(default_factory=lambda: [1])
    tail_loads: int = 30

    @property
    def scale(self) -> float:
        """Return the workload size factor: 1, or 0.1 with --quick."""
        return 0.1 if self.quick else 1.0


def log(message: str) -> None:
    """Print a progress line to stderr at once."""
    print(message, file=sys.stderr, flush=True)


def _error_text(outcome: dict[str, Any]) -> str:
    """Return the last line of a failed child's error, for tables and logs."""
    return outcome["error"].strip().splitlines()[-1]


def measure_pair(
    options: Options, workload: str, config: str, directory: str, threads: int | None = None
) -> dict[str, Any]:
    """Dump then load one (workload, config) in two children; return the raw figures.

    cachelib runs at ``threads`` (the largest of --threads unless given).
    """
    if config.startswith("cachelib") and threads is None:
        threads = max(options.threads)
    record: dict[str, Any] = {"workload": workload, "config": config, "status": "ok", "threads": threads}
    record["measured_at"] = time.strftime("%Y-%m-%d %H:%M:%S")
    record["load_average_before"] = load_average()
    if workload not in CONFIGS[config].workloads:
        record["status"] = "n/a"
        return record
    path = os.path.join(directory, f"{workload}-{config}.bin")
    task = {"workload": workload, "config": config, "path": path, "scale": options.scale}
    task["repeat"] = options.repeat
    task["threads"] = threads
    try:
        dumped = run_isolated(dump_child, task, timeout=options.timeout)
        if not dumped["ok"]:
            return {**record, "status": "error", "error": dumped["error"]}
        record.update(dumped["result"])
        loaded = run_isolated(load_child, task, timeout=options.timeout)
        if not loaded["ok"]:
            return {**record, "status": "error", "error": loaded["error"]}
        for key in ("load_times", "load_cpu_times", "load_extra_bytes"):
            record[key] = loaded["result"][key]
        record["round_trip_ok"] = loaded["result"]["fingerprint"] == record["fingerprint"]
        if workload == "big" and config in MMAP_CONFIGS:
            record["mmap"] = measure_mmap(options, MMAP_CONFIGS[config], path)
        if workload == "lfw" and config in COLD_CONFIGS:
            cold = run_isolated(load_child, {**task, "cold": True}, timeout=options.timeout)
            if cold["ok"]:
                record["cold_load_times"] = cold["result"]["load_times"]
                record["cold_load_s"] = median(cold["result"]["load_times"])
    finally:
        if os.path.exists(path):
            os.unlink(path)
    record["load_average_after"] = load_average()
    for operation in ("dump", "load"):
        record[f"{operation}_s"] = median(record[f"{operation}_times"])
        record[f"{operation}_cpu_s"] = median(record[f"{operation}_cpu_times"])
    return record


def measure_mmap(options: Options, library: str, path: str) -> dict[str, Any]:
    """Time ``library.load(path, mmap_mode="r")`` in a child."""
    task = {"library": library, "path": path, "repeat": options.repeat}
    outcome = run_isolated(mmap_child, task, timeout=options.timeout)
    if not outcome["ok"]:
        return {"library": library, "error": outcome["error"]}
    result = outcome["result"]
    return {"library": library, **result, "mmap_s": median(result["mmap_times"])}


def describe_record(record: dict[str, Any]) -> str:
    """Return a one-line progress summary of one measured pair."""
    head = f"{record['workload']:5} {record['config']:15}"
    if record["status"] != "ok":
        detail = _error_text(record) if record["status"] == "error" else "n/a"
        return f"{head} {record['status']}: {detail}"
    text = (
        f"{head} dump {record['dump_s']:8.3f} s  load {record['load_s']:8.3f} s  "
        f"mem {record['dump_extra_bytes'] / MB:7.1f}/{record['load_extra_bytes'] / MB:7.1f} MB  "
        f"file {record['file_bytes'] / MB:8.1f} MB  "
        f"round-trip {'ok' if record['round_trip_ok'] else 'MISMATCH'}"
    )
    if "mmap" in record:
        text += f"  mmap {fmt(record['mmap'].get('mmap_s', None), 4)} s"
    before, after = record["load_average_before"], record["load_average_after"]
    return f"{text}  load avg {fmt(before, 1)}->{fmt(after, 1)}"


def run_scaling(options: Options, directory: str, records: list[dict[str, Any]]) -> dict[str, Any]:
    """Measure the ``SCALING`` pairs at every thread count but the largest (the main run's).

    Returns {"records": [...], "series": {name: {threads: MB/s}}}; the data size is
    the one the memory multiples use (the dict's in-memory footprint, else nbytes).
    """
    extra = []
    pairs = [(w, c) for w, c in SCALING if w in options.workloads and c in options.configs]
    for workload, config in pairs:
        for threads in options.threads[:-1]:
            record = measure_pair(options, workload, config, directory, threads)
            log(f"[threads {threads}] {describe_record(record)}")
            extra.append(record)
    series: dict[str, dict[int, float]] = {}
    for record in [*records, *extra]:
        if (record["workload"], record["config"]) not in pairs or record["status"] != "ok":
            continue
        for operation in ("dump", "load"):
            name = f"{record['workload']} {record['config']} {operation}"
            footprint = record["workload"] in FOOTPRINT_WORKLOADS
            data = record["built_rss_bytes"] if footprint else record["array_bytes"]
            rate = data / record[f"{operation}_s"] / MB
            series.setdefault(name, {})[record["threads"]] = rate
    return {"records": extra, "series": {k: v for k, v in series.items() if len(v) > 1}}


def run_all(
    options: Options,
    directory: str,
    done: list[dict[str, Any]],
    save: Callable[[list[dict[str, Any]]], None],
    code: str,
) -> list[dict[str, Any]]:
    """Measure every selected (workload, config) pair, one child at a time.

    Pairs already in ``done`` (from --resume) are kept, not re-measured; ``save``
    gets the records so far after every pair, so a killed run can be resumed.
    """
    kept = {(r["workload"], r["config"]): r for r in done if r["status"] != "error"}
    records = []
    pairs = [(w, c) for w in options.workloads for c in options.configs]
    for index, (workload, config) in enumerate(pairs, 1):
        record = kept.get((workload, config))
        if record is None:
            record = {**measure_pair(options, workload, config, directory), "code": code}
            log(f"[{index:2}/{len(pairs)}] {describe_record(record)}")
        else:
            log(f"[{index:2}/{len(pairs)}] {workload} {config}: kept from the interrupted run")
        records.append(record)
        save(records)
    return records


# -- analysis ----------------------------------------------------------------------------


def data_sizes(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Return per workload the data size used for memory multiples, and how it was taken."""
    sizes: dict[str, dict[str, Any]] = {}
    for workload in WORKLOADS:
        measured = [r for r in records if r["workload"] == workload and r["status"] == "ok"]
        if not measured:
            continue
        raw_file = next((r["file_bytes"] for r in measured if r["config"] == "cachelib-raw"), None)
        if workload in FOOTPRINT_WORKLOADS:
            size = median([r["built_rss_bytes"] for r in measured])
            basis = "in-memory footprint (RSS growth while building it)"
        else:
            size = measured[0]["array_bytes"]
            basis = "total nbytes of the arrays"
        sizes[workload] = {
            "bytes": size,
            "basis": basis,
            "array_bytes": measured[0]["array_bytes"],
            "cachelib_raw_file_bytes": raw_file,
        }
    return sizes


def add_multiples(records: list[dict[str, Any]], sizes: dict[str, dict[str, Any]]) -> None:
    """Add dump/load extra memory as multiples of the data size to each record."""
    for record in records:
        if record["status"] != "ok":
            continue
        size = sizes[record["workload"]]["bytes"]
        record["data_bytes"] = size
        record["dump_extra_x"] = record["dump_extra_bytes"] / size
        record["load_extra_x"] = record["load_extra_bytes"] / size


def find(records: list[dict[str, Any]], workload: str, config: str) -> dict[str, Any] | None:
    """Return the successful record of (workload, config), or None."""
    for record in records:
        if record["workload"] == workload and record["config"] == config and record["status"] == "ok":
            return record
    return None


def verdict(ok: bool) -> str:
    """Return "met" or "NOT MET"."""
    return "met" if ok else "NOT MET"


def raw_speed_lines(records: list[dict[str, Any]], workloads: list[str]) -> list[str]:
    """Compare cachelib raw with joblib raw, dump and load, per workload."""
    lines = [
        "cachelib-raw vs joblib-raw (speedup = joblib median seconds / cachelib median seconds; "
        "cpu = the same ratio of CPU seconds, a cross-check on a busy machine):"
    ]
    for workload in workloads:
        ours, theirs = find(records, workload, "cachelib-raw"), find(records, workload, "joblib-raw")
        if ours is None or theirs is None:
            lines.append(f"  {workload:5}: not measured")
            continue
        target = 4.0 if workload in FOOTPRINT_WORKLOADS else 1.0
        for operation in ("dump", "load"):
            lines.append(_speed_line(ours, theirs, workload, operation, target))
    return lines


def _speed_line(
    ours: dict[str, Any], theirs: dict[str, Any], workload: str, operation: str, target: float
) -> str:
    """Return one "cachelib vs joblib" line with its target verdict."""
    speedup = theirs[f"{operation}_s"] / ours[f"{operation}_s"]
    our_cpu, their_cpu = ours.get(f"{operation}_cpu_s"), theirs.get(f"{operation}_cpu_s")
    cpu = their_cpu / our_cpu if our_cpu and their_cpu else None
    gap = "" if speedup >= target else f" (gap: {target / speedup:.2f}x too slow)"
    return (
        f"  {workload:5} {operation}: {speedup:6.2f}x  cpu {fmt(cpu, 2, 'x')}  (cachelib "
        f"{ours[f'{operation}_s']:.3f} s, joblib {theirs[f'{operation}_s']:.3f} s)  "
        f"target >= {target:g}x: {verdict(speedup >= target)}{gap}"
    )


def codec_lines(records: list[dict[str, Any]]) -> list[str]:
    """Compare cachelib zstd-3 with joblib zlib-3 on lfw: speed and file size."""
    ours, theirs = find(records, "lfw", "cachelib-zstd3"), find(records, "lfw", "joblib-zlib3")
    lines = ["cachelib-zstd3 vs joblib-zlib3 on lfw:"]
    if ours is None or theirs is None:
        return [*lines, "  not measured"]
    dump = theirs["dump_s"] / ours["dump_s"]
    load = theirs["load_s"] / ours["load_s"]
    size = ours["file_bytes"] / theirs["file_bytes"]
    lines += [
        f"  dump speedup {dump:6.2f}x  (target >= 4x: {verdict(dump >= 4)})",
        f"  load speedup {load:6.2f}x  (target >= 3x: {verdict(load >= 3)})",
        f"  file size    {size:6.3f}x of joblib's ({ours['file_bytes'] / MB:.1f} vs "
        f"{theirs['file_bytes'] / MB:.1f} MB; target <= 1.05x: {verdict(size <= 1.05)})",
    ]
    return lines


def pickle_lines(records: list[dict[str, Any]]) -> list[str]:
    """Compare cachelib raw with plain pickle on the workloads of many small objects."""
    lines = ["cachelib-raw vs pickle-raw on many small objects (cachelib seconds / pickle seconds; "
             "target <= 1.1x):"]
    for workload in FOOTPRINT_WORKLOADS:
        ours, theirs = find(records, workload, "cachelib-raw"), find(records, workload, "pickle-raw")
        if ours is None or theirs is None:
            continue
        for operation in ("dump", "load"):
            ratio = ours[f"{operation}_s"] / theirs[f"{operation}_s"]
            cpu = ours[f"{operation}_cpu_s"] / theirs[f"{operation}_cpu_s"]
            lines.append(
                f"  {workload:5} {operation}: {ratio:5.2f}x  cpu {cpu:5.2f}x  (cachelib "
                f"{ours[f'{operation}_s']:.3f} s, pickle {theirs[f'{operation}_s']:.3f} s)  "
                f"{verdict(ratio <= 1.1)}"
            )
    return lines if len(lines) > 1 else []


def cold_lines(records: list[dict[str, Any]]) -> list[str]:
    """Compare loads of lfw from a cold page cache: lz4 reads fewer bytes than raw."""
    found = {config: find(records, "lfw", config) for config in COLD_CONFIGS}
    seconds = {config: r["cold_load_s"] for config, r in found.items() if r and "cold_load_s" in r}
    if not seconds:
        return []
    lines = ["lfw loads from a cold page cache (median):"]
    lines += [f"  {config:15} {value:.3f} s" for config, value in seconds.items()]
    lz4, raw = seconds.get("cachelib-lz4"), seconds.get("cachelib-raw")
    if lz4 and raw:
        lines.append(f"  cachelib lz4 / raw: {lz4 / raw:.2f}x  (target <= 1: {verdict(lz4 <= raw)})")
    return lines


def memory_limit(record: dict[str, Any], operation: str) -> float:
    """Return the peak-extra-memory target in bytes for a record's dump or load."""
    factor = 0.05 if operation == "dump" else 1.05
    return factor * record["data_bytes"] + 64 * MB


def memory_lines(records: list[dict[str, Any]]) -> list[str]:
    """Check every cachelib record's peak extra memory against the targets."""
    lines = ["cachelib peak extra memory (targets: dump <= 0.05x data + 64 MB, load <= 1.05x data + 64 MB):"]
    for record in records:
        if record["status"] != "ok" or not record["config"].startswith("cachelib"):
            continue
        parts = []
        for operation in ("dump", "load"):
            extra, limit = record[f"{operation}_extra_bytes"], memory_limit(record, operation)
            gap = "" if extra <= limit else f", over by {(extra - limit) / MB:.0f} MB"
            parts.append(
                f"{operation} {extra / MB:7.1f} MB = {record[f'{operation}_extra_x']:.3f}x "
                f"(limit {limit / MB:.0f} MB: {verdict(extra <= limit)}{gap})"
            )
        lines.append(f"  {record['workload']:5} {record['config']:15} " + "; ".join(parts))
    return lines


def mmap_lines(records: list[dict[str, Any]]) -> list[str]:
    """Report the mmap_mode="r" loads of the raw big file."""
    lines = ['load(mmap_mode="r") of the raw "big" file (median):']
    for config in MMAP_CONFIGS:
        record = find(records, "big", config)
        if record is None or "mmap" not in record:
            continue
        mapped = record["mmap"]
        if "error" in mapped:
            lines.append(f"  {config}: failed: {mapped['error'].strip().splitlines()[-1]}")
            continue
        seconds = mapped["mmap_s"]
        target = f"target < 10 ms: {verdict(seconds < 0.010)}" if config == "cachelib-raw" else "context"
        lines.append(
            f"  {config:13} {seconds * 1000:8.3f} ms  (extra RSS {mapped['mmap_extra_bytes'] / MB:.1f} MB, "
            f"{mapped['value']}, memmap: {mapped['mapped']})  {target}"
        )
    return lines if len(lines) > 1 else []


# -- reporting -----------------------------------------------------------------------------


TABLE_HEADERS = (
    "workload",
    "config",
    "dump s",
    "load s",
    "dump +MB",
    "dump x",
    "load +MB",
    "load x",
    "file MB",
    "vs raw",
)


def table_row(record: dict[str, Any], raw_file: int | None) -> list[str]:
    """Return one table row; "vs raw" is the cachelib-raw file size over this file's."""
    head = [record["workload"], record["config"]]
    if record["status"] != "ok":
        return head + [record["status"] if record["status"] == "n/a" else "FAIL"] * (len(TABLE_HEADERS) - 2)
    shrink = raw_file / record["file_bytes"] if raw_file else None
    return [
        *head,
        fmt(record["dump_s"], 3),
        fmt(record["load_s"], 3),
        fmt(record["dump_extra_bytes"] / MB, 1),
        fmt(record["dump_extra_x"], 3),
        fmt(record["load_extra_bytes"] / MB, 1),
        fmt(record["load_extra_x"], 3),
        fmt(record["file_bytes"] / MB, 1),
        fmt(shrink, 2, "x"),
    ]


def results_table(records: list[dict[str, Any]], sizes: dict[str, dict[str, Any]]) -> str:
    """Render the main table of all measured pairs."""
    rows = [
        table_row(record, sizes.get(record["workload"], {}).get("cachelib_raw_file_bytes"))
        for record in records
    ]
    return format_table(TABLE_HEADERS, rows)


def size_lines(sizes: dict[str, dict[str, Any]]) -> list[str]:
    """Describe each workload's data size."""
    lines = ["data sizes (denominator of the x columns):"]
    for workload, size in sizes.items():
        raw = size["cachelib_raw_file_bytes"]
        lines.append(
            f"  {workload:5} {size['bytes'] / MB:8.1f} MB = {size['basis']}; arrays "
            f"{size['array_bytes'] / MB:.1f} MB; raw cachelib file {fmt(raw and raw / MB, 1)} MB"
        )
    return lines


def error_lines(records: list[dict[str, Any]]) -> list[str]:
    """List the failed measurements and round-trip mismatches."""
    lines = []
    for record in records:
        if record["status"] == "error":
            lines.append(f"  FAILED {record['workload']} {record['config']}: {_error_text(record)}")
        elif record["status"] == "ok" and not record["round_trip_ok"]:
            lines.append(f"  ROUND-TRIP MISMATCH {record['workload']} {record['config']}")
    return ["problems:", *lines] if lines else []


def update_lines(info: dict[str, Any]) -> list[str]:
    """List the pairs re-measured by later --update runs, with their date and code."""
    lines = []
    for update in info.get("updates", []):
        pairs = ", ".join(f"{workload} {config}" for workload, config in update["pairs"])
        machine = update["machine"]
        lines.append(f"  {machine['date']} (code {machine.get('git', '?')}): {pairs}")
    return ["re-measured later with --update:", *lines] if lines else []


def build_report(
    options: dict[str, Any],
    info: dict[str, Any],
    records: list[dict[str, Any]],
    workloads: list[str],
    configs: list[str],
) -> str:
    """Assemble the whole plain-text report (``options`` as stored in the JSON)."""
    sizes = data_sizes(records)
    columns = (
        f"columns: median dump/load seconds of {options['repeat']} runs; peak extra RSS of the first "
        "dump/load in MB and as a multiple (x) of the data size; file size; vs raw = raw cachelib file "
        "/ this file"
    )
    notes = [
        "notes: each dump and each load ran in its own fresh process, one at a time; loads follow "
        "their dump (warm page cache); dumps are not fsync'ed; per-pair load averages and CPU "
        "seconds are in the JSON.",
        "configs: " + "; ".join(f"{name} = {CONFIGS[name].description}" for name in configs),
        "big = float64 random walk np.cumsum(rng.standard_normal(n)).",
    ]
    versions = sorted({r["code"] for r in records if "code" in r})
    if len(versions) > 1:
        notes.append(
            "records measured on different cachelib code (see each record's 'code' in the JSON): "
            + "; ".join(versions)
        )
    sections = [
        "cachelib persistence benchmark" + (" (--quick: 1/10 sizes)" if options["quick"] else ""),
        describe_machine(info),
        "\n".join(update_lines(info)),
        columns,
        results_table(records, sizes),
        "\n".join(size_lines(sizes)),
        "\n".join(raw_speed_lines(records, workloads)),
        "\n".join(codec_lines(records)),
        "\n".join(cold_lines(records)),
        "\n".join(pickle_lines(records)),
        "\n".join(memory_lines(records)),
        "\n".join(mmap_lines(records)),
        "\n".join(error_lines(records)),
        "\n".join(notes),
    ]
    return "\n\n".join(section for section in sections if section)


def plot(records: list[dict[str, Any]], workloads: list[str], configs: list[str], path: str) -> None:
    """Draw the joblib-blog-style figure: per workload, bars per config for 4 metrics."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [
        ("dump_s", "dump (s)"),
        ("load_s", "load (s)"),
        ("memory", "peak extra memory (MB)"),
        ("file", "file size (MB)"),
    ]
    figure, axes = plt.subplots(
        len(workloads), len(metrics), figsize=(18, 2.2 + 0.32 * len(configs) * len(workloads)), squeeze=False
    )
    colours = [_colour(config) for config in configs]
    for row, workload in enumerate(workloads):
        for column, (metric, title) in enumerate(metrics):
            _plot_panel(axes[row][column], records, workload, configs, colours, metric)
            axes[row][column].set_title(f"{workload}: {title}", fontsize=9)
            if column:
                axes[row][column].set_yticklabels([])
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _colour(config: str) -> str:
    """Return a bar colour per library family."""
    families = {"cachelib": "tab:blue", "joblib": "tab:orange", "pickle": "tab:green", "numpy": "tab:purple"}
    return families.get(config.split("-")[0], "tab:grey")


def _plot_panel(
    axis: Any,
    records: list[dict[str, Any]],
    workload: str,
    configs: list[str],
    colours: list[str],
    metric: str,
) -> None:
    """Draw one horizontal bar panel; memory shows dump (solid) and load (hatched) bars."""
    positions = np.arange(len(configs))[::-1]
    values = []
    for config in configs:
        record = find(records, workload, config)
        values.append(_metric(record, metric))
    if metric == "memory":
        dumps = [v[0] if v else 0 for v in values]
        loads = [v[1] if v else 0 for v in values]
        axis.barh(positions + 0.2, dumps, height=0.4, color=colours, label="dump")
        axis.barh(positions - 0.2, loads, height=0.4, color=colours, hatch="//", alpha=0.6, label="load")
        axis.legend(fontsize=7, loc="lower right")
    else:
        axis.barh(positions, [v or 0 for v in values], color=colours)
    for position, value in zip(positions, values):
        if value is None:
            axis.text(0, position, " n/a", va="center", fontsize=7)
    axis.set_yticks(positions)
    axis.set_yticklabels(configs, fontsize=8)
    axis.tick_params(axis="x", labelsize=7)


def _metric(record: dict[str, Any] | None, metric: str) -> Any:
    """Return one plotted figure of a record, or None if it was not measured."""
    if record is None:
        return None
    if metric == "memory":
        return record["dump_extra_bytes"] / MB, record["load_extra_bytes"] / MB
    if metric == "file":
        return record["file_bytes"] / MB
    return record[metric]


# -- command line --------------------------------------------------------------------------


def _choices(text: str, known: tuple[str, ...] | list[str], what: str) -> list[str]:
    """Split a comma-separated option and check every item is known."""
    items = [item.strip() for item in text.split(",") if item.strip()]
    unknown = [item for item in items if item not in known]
    if unknown or not items:
        raise argparse.ArgumentTypeError(f"unknown {what} {unknown}; choose from {','.join(known)}")
    return items


def parse_args(argv: list[str] | None = None) -> Options:
    """Parse the command line into Options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--workloads", default=",".join(WORKLOADS), type=lambda text: _choices(text, WORKLOADS, "workloads")
    )
    parser.add_argument(
        "--configs", default=",".join(CONFIGS), type=lambda text: _choices(text, list(CONFIGS), "configs")
    )
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per operation (median)")
    parser.add_argument("--quick", action="store_true", help="1/10 sizes, for a smoke run")
    parser.add_argument("--dir", dest="directory", help="where temporary files go (default: system temp)")
    parser.add_argument("--output-dir", default=RESULTS_DIR, help="where the txt/json/png results go")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds per child process")
    parser.add_argument(
        "--update",
        action="store_true",
        help="re-measure only the selected pairs and merge them into the existing results",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="keep the pairs an interrupted run saved in <output>.partial.json; measure the rest",
    )
    parser.add_argument(
        "--threads",
        default="1,2,all",
        type=thread_counts,
        help="cachelib thread counts (all = the usable cores); the main table uses the largest",
    )
    parser.add_argument(
        "--tail-loads", type=int, default=30,
        help="loads of each file right after the dumps (0: skip that measurement)",
    )
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    return Options(
        args.workloads,
        args.configs,
        args.repeat,
        args.quick,
        args.directory,
        args.output_dir,
        args.timeout,
        args.update,
        args.resume,
        args.threads,
        args.tail_loads,
    )


def merge_records(previous: list[dict[str, Any]], fresh: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Replace previous records by fresh ones of the same (workload, config), in table order."""
    merged = {(r["workload"], r["config"]): r for r in previous}
    merged.update({(r["workload"], r["config"]): r for r in fresh})
    order = [(workload, config) for workload in WORKLOADS for config in CONFIGS]
    return [merged[pair] for pair in order if pair in merged]


def read_previous(path: str) -> dict[str, Any]:
    """Return an earlier run's JSON output (for --update)."""
    with open(path) as source:
        return json.load(source)  # type: ignore[no-any-return]


def snapshot_package(directory: str) -> dict[str, str]:
    """Copy the cachelib package under ``directory`` and put it first on ``sys.path``.

    Spawned children inherit ``sys.path``, so every child imports this one frozen
    copy: edits made to the working tree during a run cannot mix code versions.
    Returns where the copy is and a SHA-1 of its source files.
    """
    source = os.path.dirname(os.path.abspath(cachelib.__file__))
    target = os.path.join(directory, "code")
    shutil.copytree(source, os.path.join(target, "cachelib"), ignore=shutil.ignore_patterns("__pycache__"))
    digest = hashlib.sha1()
    for name in source_files(os.path.join(target, "cachelib")):
        with open(os.path.join(target, "cachelib", name), "rb") as module:
            digest.update(name.encode() + module.read())
    sys.path.insert(0, target)
    return {"copied_from": source, "sources_sha1": digest.hexdigest()[:12]}


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and write the table, JSON and plot."""
    options = parse_args(argv)
    # On SIGTERM, unwind (and remove the temporary files) instead of dying at once.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    stem = os.path.join(options.output_dir, "persistence" + ("-quick" if options.quick else ""))
    previous = read_previous(stem + ".json") if options.update else None
    partial = stem + ".partial.json"
    done = read_previous(partial)["results"] if options.resume and os.path.exists(partial) else []
    directory = tempfile.mkdtemp(prefix="cachelib-bench-", dir=options.directory)
    repository = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    packages = ("numpy", "joblib", "cachelib", "zstandard", "lz4", "xxhash")
    info = machine_info(packages, directory, repository=repository, repository_paths=["cachelib"])
    info["cachelib_snapshot"] = snapshot_package(directory)
    code = f"{info['git']} (sources sha1 {info['cachelib_snapshot']['sources_sha1']})"
    run_options = {**vars(options), "scale": options.scale}
    log(describe_machine(info))

    def save(records: list[dict[str, Any]]) -> None:
        write_json(partial, {"machine": info, "options": run_options, "results": records})

    try:
        records = run_all(options, directory, done, save, code)
        scaling = run_scaling(options, directory, records) if len(options.threads) > 1 else None
        tail = measure_tail(options, directory)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    if previous is not None:
        update = {
            "machine": info,
            "options": run_options,
            "pairs": [[r["workload"], r["config"]] for r in records],
        }
        records = merge_records(previous["results"], records)
        tail = tail if tail is not None else previous.get("tail")  # kept unless measured again
        info = {**previous["machine"], "updates": [*previous["machine"].get("updates", []), update]}
        run_options = previous["options"]
    sizes = data_sizes(records)
    add_multiples(records, sizes)
    workloads = [w for w in WORKLOADS if any(r["workload"] == w for r in records)]
    configs = [c for c in CONFIGS if any(r["config"] == c for r in records)]
    report = build_report(run_options, info, records, workloads, configs)
    if scaling and scaling["series"]:
        report += "\n\nthread scaling (cachelib, MB/s of array data; x = speedup over the fewest threads):\n"
        report += scaling_table(scaling["series"], "MB/s")
    if tail is not None:
        report += "\n\n" + "\n".join(tail_lines(tail))
    print(report)
    write_text(stem + ".txt", report)
    write_json(
        stem + ".json",
        {
            "machine": info,
            "options": run_options,
            "data_sizes": sizes,
            "results": records,
            "scaling": scaling,
            "tail": tail,
        },
    )
    plot_tail(tail, stem + "-tail.png")
    plot(records, workloads, configs, stem + ".png")
    if scaling and scaling["series"]:
        title = "cachelib dump/load: throughput by thread count"
        plot_scaling(scaling["series"], "MB/s", title, stem + "-threads.png")
    os.unlink(partial)
    log(f"wrote {stem}.txt, .json and .png")
    return 0 if all(r["status"] != "error" for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
