"""Compute once across machines: processes that pretend to be different hosts share one S3 bucket.

Each worker is a fresh interpreter with its own ``CACHELIB_HOST_ID`` (so leases
cannot recognise each other's processes by pid), all against moto's S3 server.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import _victims
import numpy as np
import pytest
from _system import wait_until

import cachelib

pytest.importorskip("fsspec", reason="remote caches need fsspec: pip install 'cachelib-numpy[fsspec]'")

# Fresh interpreters racing on S3 for seconds. The fast tier keeps one key computed once under a
# lease (test_remote's test_concurrent_threads_on_a_remote_key_compute_once), a cache on S3
# (test_a_remote_cache_computes_once_and_hits[s3]) and a dead holder's lease broken
# (test_leases's test_a_dead_holder_on_this_host_is_broken_at_once).
pytestmark = pytest.mark.slow

WORKER = textwrap.dedent('''
    import json, os, sys, time
    import numpy as np
    import cachelib
    from cachelib._stores.fsspec_store import FsspecStore

    url, options, log = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
    keys, settings = sys.argv[4], json.loads(sys.argv[5])
    store = FsspecStore(url, options, lease_ttl=settings.get("ttl", 60.0))
    cache = cachelib.Cache(store=store, lock_timeout=settings.get("timeout", 120.0),
                           on_lock_timeout="raise")

    @cache.memoize(ignore=["settings"])  # how long a worker takes is not part of the result
    def expensive(key):
        with open(log, "a") as handle:
            handle.write(f"{os.environ['CACHELIB_HOST_ID']} {key}\\n")
        time.sleep(settings.get("seconds", 1.0))
        return np.full(200_000, float(key))

    print("ready", flush=True)
    sys.stdin.readline()  # everyone starts together
    out = []
    for key in json.loads(keys):
        try:
            out.append(float(expensive(key)[-1]))
        except cachelib.LockTimeout:
            out.append("timeout")
    print(json.dumps(out), flush=True)
''')


@pytest.fixture
def worker(tmp_path: Path, s3_bucket: tuple[str, dict[str, Any]]) -> Any:
    """Start a worker: ``worker(host_id, keys, **settings)`` returns its process, waiting at the line."""
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    bucket, options = s3_bucket
    url = f"s3://{bucket}/cluster"
    log = tmp_path / "computations.log"
    started: list[subprocess.Popen[str]] = []

    def start(host: str, keys: list[int], **settings: Any) -> subprocess.Popen[str]:
        env = {**os.environ, "CACHELIB_HOST_ID": host}
        process = subprocess.Popen(
            [sys.executable, str(script), url, json.dumps(options), str(log), json.dumps(keys),
             json.dumps(settings)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
        )
        started.append(process)
        return process

    start.log = log  # type: ignore[attr-defined]
    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait(30)
        for stream in (process.stdin, process.stdout):
            if stream is not None:
                stream.close()


def _ready(processes: list[subprocess.Popen[str]]) -> None:
    for process in processes:
        assert process.stdout is not None and process.stdout.readline().strip() == "ready"


def _go(processes: list[subprocess.Popen[str]]) -> list[Any]:
    for process in processes:
        assert process.stdin is not None
        process.stdin.write("go\n")
        process.stdin.flush()
    results = []
    for process in processes:
        assert process.stdout is not None
        results.append(json.loads(process.stdout.readline()))
        assert process.wait(120) == 0
    return results


def _computed(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


@pytest.mark.timeout(240)
def test_eight_workers_on_two_hosts_compute_one_key_once(worker: Any) -> None:
    """8 processes, 2 pretend hosts, one key asked by all at once: exactly one computation."""
    processes = [worker(f"host-{'ab'[n % 2]}", [7]) for n in range(8)]
    _ready(processes)
    assert _go(processes) == [[7.0]] * 8
    assert len(_computed(worker.log)) == 1


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_each_distinct_key_is_computed_once_across_hosts(worker: Any) -> None:
    """4 workers on 2 hosts asking 3 keys in different orders: each key computed once."""
    orders = [[1, 2, 3], [3, 2, 1], [2, 3, 1], [1, 3, 2]]
    processes = [worker(f"host-{'ab'[n % 2]}", keys, seconds=0.5) for n, keys in enumerate(orders)]
    _ready(processes)
    results = _go(processes)
    for keys, values in zip(orders, results):
        assert values == [float(k) for k in keys]
    assert sorted(line.split()[1] for line in _computed(worker.log)) == ["1", "2", "3"]


@pytest.mark.timeout(240)
@pytest.mark.parametrize("same_host", [True, False])
def test_a_killed_holder_blocks_only_until_its_lease_is_judged_stale(worker: Any, same_host: bool) -> None:
    """A holder killed mid-computation: on its own host its lease is broken at once; from another
    host only once it went unrenewed for a ttl (here longer than the waiter's timeout)."""
    holder = worker("host-a", [5], seconds=120.0, ttl=4.0)
    _ready([holder])
    _go_without_waiting(holder)
    wait_until(lambda: bool(_computed(worker.log)), 60)
    holder.kill()
    holder.wait(30)
    waiter = worker("host-a" if same_host else "host-b", [5], seconds=0.1, ttl=4.0, timeout=1.5)
    _ready([waiter])
    (result,) = _go([waiter])
    assert result == ([5.0] if same_host else ["timeout"])


def _go_without_waiting(process: subprocess.Popen[str]) -> None:
    assert process.stdin is not None
    process.stdin.write("go\n")
    process.stdin.flush()


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_dask_workers_share_an_s3_cache(tmp_path: Path, s3_bucket: tuple[str, dict[str, Any]]) -> None:
    """A dask LocalCluster of two worker processes on one S3 cache computes each key once."""
    distributed = pytest.importorskip("distributed", reason="pip install 'cachelib-numpy[dask]'")
    cloudpickle = pytest.importorskip("cloudpickle", reason="dask's workers receive tasks via cloudpickle")
    cloudpickle.register_pickle_by_value(_victims)  # workers cannot import the tests' modules
    bucket, options = s3_bucket
    log = tmp_path / "computations.log"
    cache = cachelib.Cache(f"s3://{bucket}/dask", storage_options=options)
    expensive = cache.memoize(_victims.expensive, ignore=["log"])
    keys = [k % 6 for k in range(24)]
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=2, processes=True, dashboard_address=":0"
    ) as cluster, distributed.Client(cluster) as client:
        results = client.gather(client.map(expensive, keys, log=str(log), pure=False))
        # Workers write their call counts about a second after a call: wait for them
        # while the workers still run (a busy machine may take several seconds).
        wait_until(lambda: cache.info().misses >= 6, interval=0.5)
    for key, result in zip(keys, results):
        np.testing.assert_array_equal(result, np.full(100_000, float(key)) ** 2)
    assert sorted(log.read_text().split()) == sorted(str(k) for k in range(6))
    assert cache.info().misses == 6


def _readme_cluster_example() -> str:
    """The dask example of the README's "Sharing a cache across a cluster" section."""
    readme = (Path(__file__).parent.parent / "README.rst").read_text()
    section = readme.split("Sharing a cache across a cluster\n", 1)[1].split("\nSecurity\n", 1)[0]
    block = section.rsplit(".. code-block:: python\n", 1)[1]
    lines = []
    for line in block.splitlines()[1:]:
        if line and not line.startswith("    "):
            break
        lines.append(line[4:])
    return "\n".join(lines)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_readme_cluster_example_runs(tmp_path: Path, s3_bucket: tuple[str, dict[str, Any]]) -> None:
    """The README's dask example, run as written against the local S3 server, computes and hits."""
    pytest.importorskip("distributed", reason="pip install 'cachelib-numpy[dask]'")
    bucket, options = s3_bucket
    script = tmp_path / "example.py"
    script.write_text(_readme_cluster_example())
    url = f"s3://{bucket}/readme"
    env = {**os.environ, "CACHE_URL": url, "FSSPEC_S3": json.dumps(options)}
    for _ in range(2):
        run = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True,
                             timeout=240, cwd=tmp_path)
        assert run.returncode == 0, run.stderr
    values = json.loads(run.stdout.splitlines()[0])
    assert len(values) == 6 and values[:3] == values[3:]
    assert f"cache at {url}: 3 entries" in run.stdout
    cache = cachelib.Cache(url, storage_options=options)
    assert cache.info().misses == 3  # the second run only hit
