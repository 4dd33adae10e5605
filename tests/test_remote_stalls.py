"""A remote store that stops answering: moto's S3 server, a real process, stopped with SIGSTOP.

A stopped server still has its socket: the kernel accepts connections and nothing
ever answers, what a frozen endpoint, a dead load balancer or a partition look like.
Every call must come back, right, within the store's documented bounds (a hit turns
into a miss that computes, a store into a ``CacheWarning``), at any point of a read or
an upload, and so must a process that exits; once the server runs again, the cache
serves hits again. The bounds here are small (``operation`` 2 s): each test allows
generous slack over them, never a tight wall-clock threshold.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import cachelib
from cachelib._stores.background import EXIT_WAIT

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]

TIMEOUTS = {"connect": 1, "read": 1, "attempts": 1, "operation": 2, "pause": 4}
SLACK = 20.0  # seconds allowed over a bound: the machine may be loaded, never a tight threshold


def _cache(server: Any, bucket: str, **timeouts: Any) -> cachelib.Cache:
    options = {**server_options(server), "timeouts": {**TIMEOUTS, **timeouts}}
    return cachelib.Cache(f"s3://{bucket}/cache", storage_options=options)


def server_options(server: Any) -> dict[str, Any]:
    return {"key": "testing", "secret": "testing",
            "client_kwargs": {"endpoint_url": server.url, "region_name": "eu-west-1"}}


def _counting(cache: cachelib.Cache) -> tuple[Any, list[int]]:
    calls: list[int] = []

    @cache.memoize(ignore=["calls"])
    def compute(n: int, calls: list[int] = calls) -> np.ndarray:
        calls.append(n)
        return np.arange(n, dtype=np.float64)

    return compute, calls


def _timed(call: Any, *args: Any) -> tuple[Any, float, list[str]]:
    started = time.monotonic()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = call(*args)
    others = [w for w in caught if not issubclass(w.category, cachelib.CacheWarning)]
    assert not others, [str(w.message) for w in others]
    return result, time.monotonic() - started, [str(w.message) for w in caught]


@pytest.mark.parametrize("n", [10, 3_000_000], ids=["small", "24 MB"])
def test_hits_and_stores_on_a_frozen_store_come_back_right_and_bounded(freezable_s3: Any, n: int) -> None:
    """With the server frozen: a hit misses and computes, a store warns, each within the bound; calls
    during the pause that follows do not wait; once it runs again, the stored entry hits again."""
    bucket, _ = freezable_s3.bucket()
    compute, calls = _counting(_cache(freezable_s3, bucket))
    np.testing.assert_array_equal(compute(n), np.arange(n))
    with freezable_s3.frozen():
        result, waited, said = _timed(compute, n)  # a hit
        np.testing.assert_array_equal(result, np.arange(n))
        assert waited < TIMEOUTS["operation"] + SLACK, f"a hit waited {waited:.1f} s on a frozen store"
        assert any("did not answer" in message for message in said), said
        result, waited_again, said = _timed(compute, n + 1)  # a store, during the pause
        np.testing.assert_array_equal(result, np.arange(n + 1))
        assert any("could not be stored" in message for message in said), said
        assert waited_again < waited, "a call during the pause waited on the frozen store again"
    assert calls == [n, n, n + 1]
    time.sleep(TIMEOUTS["pause"])
    np.testing.assert_array_equal(compute(n), np.arange(n))
    assert calls == [n, n, n + 1], "the entry stored before the stall did not hit once the server ran again"


class FreezeWhilePickled:
    """Stops the server (its pid) when pickled: a store freezes it halfway through an upload."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def __reduce__(self) -> Any:
        os.kill(self.pid, signal.SIGSTOP)
        return (FreezeWhilePickled, (self.pid,))


def test_a_store_frozen_halfway_through_its_upload_is_bounded(freezable_s3: Any) -> None:
    """An 80 MB result whose pickling stops the server after its first 40 MB were sent in parts:
    the call returns its result, with a warning, within the bound; nothing is published."""
    bucket, _ = freezable_s3.bucket()
    cache = _cache(freezable_s3, bucket)
    pid = freezable_s3.process.pid

    @cache.memoize
    def halves(seed: int) -> tuple[np.ndarray, FreezeWhilePickled, np.ndarray]:
        rng = np.random.default_rng(seed)
        return rng.standard_normal(5_000_000), FreezeWhilePickled(pid), rng.standard_normal(5_000_000)

    try:
        result, waited, said = _timed(halves, 1)
    finally:
        freezable_s3.thaw()
    expected = np.random.default_rng(1).standard_normal(10_000_000)
    np.testing.assert_array_equal(np.concatenate([result[0], result[2]]), expected)
    assert waited < TIMEOUTS["operation"] + SLACK, f"a store waited {waited:.1f} s on a frozen store"
    assert any("could not be stored" in message for message in said), said
    time.sleep(TIMEOUTS["pause"])
    assert not halves.check_call_in_cache(1), "a half-sent upload was published"


def test_a_hit_frozen_halfway_through_its_read_is_bounded(freezable_s3: Any) -> None:
    """The server stops while a 48 MB hit is being read: the call computes and returns the right
    result within the bound (a read never mixes what it got with something else)."""
    bucket, _ = freezable_s3.bucket()
    compute, calls = _counting(_cache(freezable_s3, bucket))
    n = 6_000_000
    compute(n)
    timer = subprocess.Popen([sys.executable, "-c", "import os, signal, sys, time; time.sleep(0.3); "
                              f"os.kill({freezable_s3.process.pid}, signal.SIGSTOP)"])
    try:
        result, waited, _ = _timed(compute, n)
        timer.wait(30)
    finally:
        freezable_s3.thaw()
    np.testing.assert_array_equal(result, np.arange(n))
    assert waited < 2 * TIMEOUTS["operation"] + SLACK, f"a hit waited {waited:.1f} s on a frozen store"
    assert calls in ([n], [n, n]), calls  # hit before the server stopped, or computed after it did


_EXITING = """
import json, sys, time
import numpy as np
import cachelib

options = json.loads(sys.argv[2])
cache = cachelib.Cache(sys.argv[1], storage_options=options)
f = cache.memoize(lambda n: np.arange(n))
f(10)
f(10)  # a hit: statistics are pending, written at exit
print("ready", flush=True)
sys.stdin.readline()  # the server is frozen now
print("exiting", flush=True)
"""


@pytest.mark.parametrize("timeouts", [TIMEOUTS, {}], ids=["small bounds", "default bounds"])
def test_a_process_exits_within_its_bound_when_the_store_freezes(
    freezable_s3: Any, tmp_path: Path, timeouts: dict[str, Any]
) -> None:
    """A process with statistics pending whose store freezes exits within EXIT_WAIT (its flush is
    abandoned after it), with the default bounds too, not never."""
    bucket, options = freezable_s3.bucket()
    options = {**options, "timeouts": timeouts}
    script = tmp_path / "exiting.py"
    script.write_text(_EXITING)
    command = [sys.executable, str(script), f"s3://{bucket}/cache", json.dumps(options)]
    with subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True) as process:
        try:
            assert process.stdout is not None and process.stdin is not None
            assert process.stdout.readline().strip() == "ready"
            with freezable_s3.frozen():
                started = time.monotonic()
                try:
                    _, errors = process.communicate("go\n", timeout=EXIT_WAIT + SLACK)
                except subprocess.TimeoutExpired:
                    pytest.fail(f"the process did not exit {EXIT_WAIT + SLACK:.0f} s after its store froze")
                exited = time.monotonic() - started
        finally:
            process.kill()
    assert process.returncode == 0, errors
    assert exited < EXIT_WAIT + SLACK
