"""Real dask workers sharing one cache: each distinct key is computed once across them."""

from __future__ import annotations

from pathlib import Path

import _victims
import numpy as np
import pytest
from _system import wait_until

import cachelib


# A cluster of worker processes. Workers sharing a cache, quickly: test_pickling's
# test_joblib_parallel_loky_computes_each_distinct_argument_once, test_multiprocessing_pool_shares_the_cache.
@pytest.mark.slow
@pytest.mark.timeout(180)
def test_dask_workers_compute_each_key_once(tmp_path: Path) -> None:
    """Mapping a memoized function over repeated keys on two worker processes."""
    # Imported here, not at collection: dask's import takes a second the fast tier does not need.
    distributed = pytest.importorskip(
        "distributed", reason="the dask test needs the 'dask' extra: pip install 'cachelib-numpy[dask]'"
    )
    cloudpickle = pytest.importorskip("cloudpickle", reason="dask's workers receive tasks via cloudpickle")
    cloudpickle.register_pickle_by_value(_victims)  # workers cannot import the tests' modules
    log = tmp_path / "computations.log"
    cache = cachelib.Cache(tmp_path / "cache")
    expensive = cache.memoize(_victims.expensive, ignore=["log"])
    keys = [k % 12 for k in range(60)]  # each of 12 keys asked for 5 times

    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=2, processes=True, dashboard_address=":0"
    ) as cluster, distributed.Client(cluster) as client:
        futures = client.map(expensive, keys, log=str(log), pure=False)
        results = client.gather(futures)
        # Workers write their call counts about a second after a call: wait for them while
        # the workers still run.
        wait_until(lambda: cache.info().misses >= 12)

    for key, result in zip(keys, results):
        np.testing.assert_array_equal(result, np.full(100_000, float(key)) ** 2)
    computed = log.read_text().split()
    assert sorted(computed) == sorted(str(k) for k in range(12)), computed
    assert cache.info().misses == 12
