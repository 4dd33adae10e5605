"""Remote benchmark: a cachelib cache on S3 against s3fs alone, on a loopback moto server.

One run, side by side: moto's ``ThreadedMotoServer`` runs in this (parent) process
on 127.0.0.1, and every measurement runs in a fresh "spawn" child (``_harness``),
so the server's work never counts in a child's memory. The payload is one float64
array of ``--size`` MB (100 by default). Per round, in this order, each in its own
child:

1. ``s3fs write``: ``S3FileSystem.pipe_file(path, array.tobytes())``, the way a
   program would upload the bytes itself (the ``tobytes`` copy is not timed);
2. ``cachelib store``: a memoized miss whose function returns the array already in
   memory, on ``Cache("s3://bucket/...")``: the key, the lease (conditional create
   and delete), the entry streamed as a multipart upload (two parts on their way at
   once), the statistics;
3. ``s3fs read``: ``S3FileSystem.cat_file(path)`` viewed with ``np.frombuffer``;
4. ``cachelib hit``: the same call in a fresh process (a first hit: the probe, one
   GET read front to back into the result's own buffer, checksums).

Before the measured block each child lists the bucket with s3fs and looks up an
absent entry with cachelib, so that both have their client, credentials and a
connection in place. Wall seconds (``perf_counter``) and peak extra resident memory
(``PeakRSS``: VmHWM after resetting it) of the call alone; the array's own
construction is outside the measured block. Medians over ``--rounds`` rounds; ratios
are cachelib / s3fs medians of the same run (below 1 is faster). Targets (issue 21):
hit and store within 1.1x of s3fs; peak memory at most 1.05x the result + 64 MB.

Usage::

    python benchmarks/remote.py [--size MB] [--rounds N] [--quick]

Outputs: a table on stdout and in ``benchmarks/results/remote.txt``, raw numbers in
``remote.json`` and a bar chart in ``remote.png`` (``remote-quick.*`` with ``--quick``).
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import statistics
import sys
import uuid
from typing import Any

import numpy as np

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
CASES = ("s3fs write", "cachelib store", "s3fs read", "cachelib hit")
PAIRS = (("cachelib store", "s3fs write"), ("cachelib hit", "s3fs read"))
RATIO_TARGET = 1.1  # issue 21: a hit and a store within 1.1x of s3fs reading and writing the bytes
_payload: dict[str, np.ndarray] = {}  # what the memoized function returns (not part of its key)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _options(endpoint: str) -> dict[str, Any]:
    return {"key": "bench", "secret": "bench",
            "client_kwargs": {"endpoint_url": endpoint, "region_name": "eu-west-1"}}


def _array(size: int) -> np.ndarray:
    return np.arange(size // 8, dtype=np.float64)


def stored_result(key: int) -> np.ndarray:
    """The memoized function: returns the payload prepared before the call."""
    return _payload.pop("array")


def measure(case: str, endpoint: str, bucket: str, size: int, round_number: int) -> dict[str, Any]:
    """Run one case in this (child) process; return its seconds and peak extra bytes."""
    import s3fs

    import cachelib

    options = _options(endpoint)
    fs = s3fs.S3FileSystem(**options)
    path = f"{bucket}/direct/round-{round_number}"
    cache = cachelib.Cache(f"s3://{bucket}/cachelib", storage_options=options)
    memoized = cache.memoize(stored_result, ignore=["_payload"])  # a handover, not an input
    fs.ls(bucket)  # connection and credentials in place for every case: s3fs's,
    memoized.check_call_in_cache(-1)  # and those of cachelib's own filesystem (an absent entry)
    if case == "s3fs write":
        data = _array(size).tobytes()  # botocore sends bytes, not buffers: the copy is not timed
        with PeakRSS() as peak:
            seconds, _ = timed(lambda: fs.pipe_file(path, data))
    elif case == "cachelib store":
        _payload["array"] = _array(size)
        with PeakRSS() as peak:
            seconds, result = timed(lambda: memoized(round_number))
        assert result.nbytes == size // 8 * 8 and not _payload, "the store case must be a miss"
    elif case == "s3fs read":
        with PeakRSS() as peak:
            seconds, result = timed(lambda: np.frombuffer(fs.cat_file(path), dtype=np.float64))
        assert result.nbytes == size // 8 * 8
    else:
        with PeakRSS() as peak:
            seconds, result = timed(lambda: memoized(round_number))
        assert result.nbytes == size // 8 * 8 and float(result[-1]) == size // 8 - 1
        assert memoized.stats.hits == 1, "the hit case must be a hit"
    return {"seconds": seconds, "peak_extra_bytes": peak.extra_bytes}


def start_server() -> tuple[Any, str]:
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    return server, f"http://127.0.0.1:{port}"


def run_all(options: argparse.Namespace) -> dict[str, Any]:
    import s3fs

    server, endpoint = start_server()
    try:
        bucket = f"bench-{uuid.uuid4().hex[:12]}"
        s3fs.S3FileSystem(**_options(endpoint)).mkdir(bucket)
        size = options.size * MB
        samples: dict[str, list[dict[str, Any]]] = {case: [] for case in CASES}
        for round_number in range(options.rounds):
            for case in CASES:
                outcome = run_isolated(measure, case, endpoint, bucket, size, round_number, timeout=1800)
                if not outcome["ok"]:
                    raise RuntimeError(f"{case} failed:\n{outcome['error']}")
                samples[case].append(outcome["result"])
                log(f"round {round_number + 1}: {case}: {outcome['result']['seconds']:.3f} s, "
                    f"+{outcome['result']['peak_extra_bytes'] / MB:.0f} MB")
    finally:
        server.stop()
    summary = {case: {"seconds": statistics.median(s["seconds"] for s in runs),
                      "peak_extra_bytes": max(s["peak_extra_bytes"] for s in runs)}
               for case, runs in samples.items()}
    return {"machine": machine_info(("cachelib", "s3fs", "fsspec", "moto", "numpy")),
            "size_bytes": size, "rounds": options.rounds, "samples": samples, "summary": summary}


def build_report(results: dict[str, Any]) -> str:
    size = results["size_bytes"]
    summary = results["summary"]
    rows = []
    for case in CASES:
        seconds = summary[case]["seconds"]
        peak = summary[case]["peak_extra_bytes"]
        rows.append([case, fmt(seconds, 3), fmt(size / seconds / MB, 0), fmt(peak / MB, 0)])
    lines = [
        f"Remote benchmark: one {size / MB:.0f} MB float64 result on a loopback moto S3 server, "
        f"median of {results['rounds']} rounds",
        describe_machine(results["machine"]),
        "",
        format_table(["case", "seconds", "MB/s", "peak extra MB"], rows),
        "",
    ]
    targets = []
    for ours, theirs in PAIRS:
        ratio = summary[ours]["seconds"] / summary[theirs]["seconds"]
        targets.append([f"{ours} / {theirs}", f"<= {RATIO_TARGET}x", f"{ratio:.2f}x",
                        "ok" if ratio <= RATIO_TARGET else "MISSED"])
    bound = 1.05 * size + 64 * MB
    for case in ("cachelib store", "cachelib hit"):
        peak = summary[case]["peak_extra_bytes"] + (size if case == "cachelib store" else 0)
        targets.append([f"{case}: peak (result included)", f"<= {bound / MB:.0f} MB", f"{peak / MB:.0f} MB",
                        "ok" if peak <= bound else "MISSED"])
    lines.append(format_table(["target", "goal", "measured", "verdict"], targets))
    return "\n".join(lines)


def plot(results: dict[str, Any], path: str) -> None:
    """Two panels: seconds per case (cachelib's with its ratio to s3fs), peak extra memory per case."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = results["summary"]
    colors = ["#999999", "#1f77b4", "#999999", "#1f77b4"]
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    bars = left.bar(CASES, [summary[c]["seconds"] for c in CASES], color=colors)
    for ours, theirs in PAIRS:
        ratio = summary[ours]["seconds"] / summary[theirs]["seconds"]
        bar = bars[CASES.index(ours)]
        left.text(bar.get_x() + bar.get_width() / 2, bar.get_height(), f"{ratio:.2f}x s3fs",
                  ha="center", va="bottom")
    left.set_ylabel("seconds (median)")
    left.margins(y=0.12)  # room for the ratios above the bars
    left.set_title(f"{results['size_bytes'] / MB:.0f} MB result, loopback S3 (moto)")
    right.bar(CASES, [summary[c]["peak_extra_bytes"] / MB for c in CASES], color=colors)
    right.set_ylabel("peak extra RSS (MB)")
    right.set_title("memory beyond what the process held before")
    for axis in (left, right):
        axis.tick_params(axis="x", rotation=20)
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=100, help="result size in MB (default 100)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the four cases (default 3)")
    parser.add_argument("--quick", action="store_true", help="20 MB, one round: a check that it runs")
    parser.add_argument("--output-dir", default=RESULTS_DIR, help="where the table, JSON and PNG go")
    options = parser.parse_args(argv)
    if options.quick:
        options.size, options.rounds = 20, 1
    return options


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and write the table, JSON and plot."""
    options = parse_args(argv)
    results = run_all(options)
    report = build_report(results)
    print(report)
    stem = os.path.join(options.output_dir, "remote" + ("-quick" if options.quick else ""))
    write_text(stem + ".txt", report)
    write_json(stem + ".json", results)
    plot(results, stem + ".png")
    log(f"wrote {stem}.txt, .json and .png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
