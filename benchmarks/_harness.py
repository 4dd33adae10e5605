"""Shared helpers for the cachelib benchmarks: isolation, memory, timing and reporting.

Every measurement runs in a fresh child process (``run_isolated``, "spawn" start
method) so that one library's allocator state, page mappings or imports never
leak into another's figures. Inside the child:

* ``PeakRSS`` measures the peak *extra* resident memory of a block: it resets the
  kernel's high-water mark (writing "5" to ``/proc/self/clear_refs``), reads the
  baseline ``VmRSS`` and, after the block, ``VmHWM``; extra = VmHWM - baseline.
* ``timed`` returns the wall-clock seconds of one call (``time.perf_counter``).

In the parent: ``median``, ``machine_info``, ``format_table`` and the JSON/text
writers. Nothing here imports cachelib, so the module can serve any benchmark.
"""

from __future__ import annotations

import datetime
import gc
import json
import multiprocessing
import os
import platform
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from importlib import metadata
from multiprocessing.connection import Connection
from typing import Any

MB = 1 << 20
"""Bytes in one mebibyte; every "MB" printed by the benchmarks is a MiB."""

DEFAULT_TIMEOUT = 3600.0
"""Seconds a child may run before it is killed and its measurement marked failed."""


# -- memory ------------------------------------------------------------------------


def read_status_kib(field: str) -> int:
    """Return one ``/proc/self/status`` field (``VmRSS``, ``VmHWM`` ...) in KiB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(f"/proc/self/status has no {field} field")


def rss_bytes() -> int:
    """Return the current resident set size of this process in bytes."""
    return read_status_kib("VmRSS") * 1024


def reset_peak_rss() -> None:
    """Reset the kernel's resident-memory high-water mark (VmHWM) to the current RSS."""
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")


class PeakRSS:
    """Measure the peak extra resident memory used inside a ``with`` block.

    ``extra_bytes`` is VmHWM after the block minus VmRSS at its start, after a
    garbage collection and a reset of the high-water mark.
    """

    def __init__(self) -> None:
        self.baseline_bytes = 0
        self.peak_bytes = 0
        self.extra_bytes = 0

    def __enter__(self) -> PeakRSS:
        gc.collect()
        reset_peak_rss()
        self.baseline_bytes = rss_bytes()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.peak_bytes = read_status_kib("VmHWM") * 1024
        self.extra_bytes = max(0, self.peak_bytes - self.baseline_bytes)


# -- timing ------------------------------------------------------------------------


def timed(function: Callable[[], Any]) -> tuple[float, Any]:
    """Call ``function()`` once; return (wall-clock seconds, its result)."""
    start = time.perf_counter()
    result = function()
    return time.perf_counter() - start, result


def timed_cpu(function: Callable[[], Any]) -> tuple[float, float, Any]:
    """Call ``function()`` once; return (wall seconds, CPU seconds of this process, result).

    CPU time (user + system, ``time.process_time``) hardly grows when other
    processes compete for the cores, so it cross-checks wall times on a busy machine.
    """
    cpu_start = time.process_time()
    start = time.perf_counter()
    result = function()
    return time.perf_counter() - start, time.process_time() - cpu_start, result


def load_average() -> float | None:
    """Return the 1-minute load average of the machine, or None if unknown."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def median(values: Sequence[float]) -> float | None:
    """Return the median of ``values``, or None if there are none."""
    return statistics.median(values) if values else None


# -- isolation ---------------------------------------------------------------------


def _child_entry(connection: Connection, target: Callable[..., Any], args: tuple[Any, ...]) -> None:
    """Run ``target(*args)`` in the child and send back {"ok", "result" | "error"}."""
    try:
        message = {"ok": True, "result": target(*args)}
    except BaseException:  # report everything, the parent decides
        message = {"ok": False, "error": traceback.format_exc()}
    connection.send(message)
    connection.close()


def run_isolated(target: Callable[..., Any], *args: Any, timeout: float = DEFAULT_TIMEOUT) -> dict[str, Any]:
    """Run ``target(*args)`` in a fresh "spawn" child; return {"ok": bool, "result"|"error"}.

    ``target`` must be a module-level function and its arguments and result
    picklable. A child that crashes (e.g. killed by the OOM killer) or overruns
    ``timeout`` gives ``{"ok": False, "error": ...}`` instead of raising.
    """
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=_child_entry, args=(sender, target, args), daemon=True)
    process.start()
    sender.close()
    try:
        if not receiver.poll(timeout):
            process.kill()
            return {"ok": False, "error": f"timed out after {timeout:.0f} s"}
        return receiver.recv()  # type: ignore[no-any-return]
    except EOFError:
        process.join()
        return {"ok": False, "error": f"the child died with exit code {process.exitcode}"}
    finally:
        receiver.close()
        process.join()


# -- machine description -----------------------------------------------------------


def _cpu_model() -> str:
    """Return the CPU model name from /proc/cpuinfo (or platform's guess)."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _total_ram_bytes() -> int | None:
    """Return MemTotal from /proc/meminfo in bytes, or None."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _version(distribution: str) -> str:
    """Return an installed distribution's version, or "not installed"."""
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "not installed"


def _filesystem_of(path: str) -> str:
    """Return "fstype on mountpoint" for the mount holding ``path`` (best effort)."""
    path = os.path.realpath(path)
    best = ("", "unknown")
    try:
        with open("/proc/mounts") as mounts:
            for line in mounts:
                fields = line.split()
                mount_point, fs_type = fields[1], fields[2]
                inside = path == mount_point or path.startswith(mount_point.rstrip("/") + "/")
                if inside and len(mount_point) >= len(best[0]):
                    best = (mount_point, fs_type)
    except OSError:
        pass
    return f"{best[1]} on {best[0] or '?'}"


def git_revision(repository: str, paths: Sequence[str] = ()) -> str:
    """Return "<commit> (+ uncommitted changes <hash>)" of ``repository``, or "unknown".

    With ``paths``, only changes under those paths count as uncommitted changes;
    their diff's hash tells apart runs made on different working trees.
    """

    def git(*args: str) -> str:
        completed = subprocess.run(
            ["git", "-C", repository, *args], capture_output=True, text=True, check=True, timeout=30
        )
        return completed.stdout

    try:
        commit = git("rev-parse", "--short=12", "HEAD").strip()
        diff = git("diff", "HEAD", "--", *paths)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if not diff:
        return commit
    import hashlib

    return f"{commit} + uncommitted changes (diff sha1 {hashlib.sha1(diff.encode()).hexdigest()[:12]})"


def source_files(package: str) -> list[str]:
    """The ``.py`` files of a package directory and its subpackages, as sorted relative paths."""
    found = []
    for folder, subfolders, names in os.walk(package):
        subfolders[:] = sorted(d for d in subfolders if d != "__pycache__")
        found += [os.path.relpath(os.path.join(folder, n), package) for n in names if n.endswith(".py")]
    return sorted(found)


def machine_info(
    packages: Sequence[str] = ("numpy", "joblib", "cachelib"),
    directory: str | None = None,
    repository: str | None = None,
    repository_paths: Sequence[str] = (),
) -> dict[str, Any]:
    """Describe the machine and software: CPU, cores, RAM, versions, date, file system.

    With ``repository``, also its git revision (see ``git_revision``).
    """
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    ram = _total_ram_bytes()
    info: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": affinity,
        "ram_gib": round(ram / (1 << 30), 1) if ram else None,
        "os": f"{platform.system()} {platform.release()}",
        "python": sys.version.split()[0],
        "versions": {name: _version(name) for name in packages},
    }
    if directory is not None:
        info["temp_filesystem"] = _filesystem_of(directory)
    if repository is not None:
        info["git"] = git_revision(repository, repository_paths)
    return info


def describe_machine(info: dict[str, Any]) -> str:
    """Render ``machine_info()`` as a few human-readable lines."""
    versions = ", ".join(f"{name} {version}" for name, version in info["versions"].items())
    lines = [
        f"date: {info['date']}",
        f"cpu: {info['cpu']}, {info['cores']} cores ({info['usable_cores']} usable), "
        f"RAM {info['ram_gib']} GiB, {info['os']}",
        f"python {info['python']}, {versions}",
    ]
    if "temp_filesystem" in info:
        lines.append(f"temporary files: {info['temp_filesystem']}")
    if "git" in info:
        lines.append(f"code: {info['git']}")
    return "\n".join(lines)


# -- reporting ---------------------------------------------------------------------


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Render rows of strings as a plain-text table; text columns left, numbers right."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows)]
    numeric = [all(_looks_numeric(row[i]) for row in rows) for i in range(len(headers))]

    def render(cells: Sequence[str]) -> str:
        parts = [
            str(cell).rjust(width) if is_number else str(cell).ljust(width)
            for cell, width, is_number in zip(cells, widths, numeric)
        ]
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * width for width in widths)
    return "\n".join([render(headers), rule, *(render(row) for row in rows)])


def _looks_numeric(cell: str) -> bool:
    """Tell whether a table cell is a number (or a placeholder in a number column)."""
    text = str(cell).strip().rstrip("x%")
    if text in ("", "-", "n/a", "FAIL"):
        return True
    try:
        float(text)
    except ValueError:
        return False
    return True


def fmt(value: float | None, digits: int = 3, suffix: str = "") -> str:
    """Format a number with ``digits`` decimals, or "-" for a missing one."""
    return "-" if value is None else f"{value:.{digits}f}{suffix}"


def write_text(path: str, text: str) -> None:
    """Write ``text`` to ``path``, creating its directory."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as output:
        output.write(text if text.endswith("\n") else text + "\n")


def write_json(path: str, data: Any) -> None:
    """Write ``data`` as indented JSON to ``path``, creating its directory."""
    write_text(path, json.dumps(data, indent=2, sort_keys=False, default=str))


# -- thread scaling ---------------------------------------------------------------------

THREADS_VARIABLE = "CACHELIB_THREADS"
"""The environment variable that sets cachelib's threads; children set it before any work."""


def usable_cores() -> int:
    """Return how many cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def thread_counts(text: str) -> list[int]:
    """Parse ``"1,2,all"`` into sorted distinct thread counts ("all" = the usable cores)."""
    counts = set()
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        count = usable_cores() if item == "all" else int(item)
        if count < 1:
            raise ValueError(f"a thread count must be at least 1, got {item!r}")
        counts.add(count)
    if not counts:
        raise ValueError("give at least one thread count")
    return sorted(counts)


def scaling_table(series: dict[str, dict[int, float]], unit: str) -> str:
    """Render throughput per thread count: one row per series, speedup over the fewest threads."""
    counts = sorted({count for points in series.values() for count in points})
    headers = ["measured", *(f"{count} thr {unit}" for count in counts)]
    headers += [f"x{count}" for count in counts[1:]]
    rows = []
    for name, points in series.items():
        first = points.get(counts[0])
        speedups = [fmt(points[c] / first, 2, "x") if first and c in points else "-" for c in counts[1:]]
        rows.append([name, *(fmt(points.get(count), 2) for count in counts), *speedups])
    return format_table(headers, rows)


def plot_scaling(series: dict[str, dict[int, float]], unit: str, title: str, path: str) -> None:
    """Draw throughput against thread count, one line per series, into ``path`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4.5))
    counts = sorted({count for points in series.values() for count in points})
    for name, points in series.items():
        xs = sorted(points)
        axis.plot(xs, [points[x] for x in xs], marker="o", label=name)
    axis.set_xticks(counts)
    axis.set_xlabel("threads (CACHELIB_THREADS)")
    axis.set_ylabel(unit)
    axis.set_yscale("log")
    axis.set_title(title, fontsize=10)
    axis.grid(True, which="both", alpha=0.3)
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
