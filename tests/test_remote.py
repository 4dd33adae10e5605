"""A Cache on remote stores (memory:// and S3 via moto): everything a local cache does."""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _system import run_cli

import cachelib
from cachelib._cli.main import main
from cachelib._entries import names

pytest.importorskip("fsspec", reason="remote caches need fsspec: pip install 'cachelib-numpy[fsspec]'")
from cachelib._stores.fsspec_store import FsspecStore

SECRET = b"0123456789abcdef0123456789abcdef"


# S3 on moto takes a fraction of a second to seconds a test: the fast tier runs memory:// and, for
# S3, test_a_remote_cache_computes_once_and_hits (parametrized below) and the missing bucket.
@pytest.fixture(params=["memory", pytest.param("s3", marks=pytest.mark.slow)])
def remote(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any]]:
    """``(url, storage_options)`` of a fresh remote location: memory://, then S3 on moto."""
    if request.param == "memory":
        return f"memory://cache-{uuid.uuid4().hex[:12]}", {}
    bucket, options = request.getfixturevalue("s3_bucket")
    return f"s3://{bucket}/cachelib", options


def _counting(cache: cachelib.Cache, **options: Any) -> tuple[Any, list[Any]]:
    calls: list[Any] = []

    def compute(n: int, scale: float = 1.0) -> dict[str, Any]:
        calls.append(n)
        return {"n": n, "values": np.arange(n, dtype=np.float64) * scale, "label": f"n={n}"}

    return cache.memoize(compute, ignore=["calls"], **options), calls  # the log is not an input


@pytest.mark.parametrize("remote", ["memory", "s3"], indirect=True)
def test_a_remote_cache_computes_once_and_hits(remote: tuple[str, dict[str, Any]], same: Any) -> None:
    """Misses store, hits load the same value, small and large (streamed) results alike."""
    url, options = remote
    cache = cachelib.Cache(url, storage_options=options)
    compute, calls = _counting(cache)
    for n in (10, 3_000_000):  # 24 MB: several parts
        first = compute(n)
        again = compute(n)
        same(again, first)
        same(again, {"n": n, "values": np.arange(n, dtype=np.float64), "label": f"n={n}"})
    assert calls == [10, 3_000_000]
    assert compute.check_call_in_cache(10) and not compute.check_call_in_cache(11)
    assert cache.location == url


def test_mmap_mode_on_a_remote_cache_loads_into_memory(remote: tuple[str, dict[str, Any]]) -> None:
    """``mmap_mode`` cannot map a remote object: first call and hits return plain, correct arrays."""
    url, options = remote
    cache = cachelib.Cache(url, storage_options=options, mmap_mode="r")

    @cache.memoize
    def ramp(n: int) -> np.ndarray:
        return np.arange(n)

    for _ in range(2):
        result = ramp(1000)
        assert type(result) is np.ndarray
        np.testing.assert_array_equal(result, np.arange(1000))


def test_info_counts_entries_and_calls_from_the_store(remote: tuple[str, dict[str, Any]]) -> None:
    """``info`` reads entries and call statistics through the store, across Cache objects."""
    url, options = remote
    cache = cachelib.Cache(url, storage_options=options)
    compute, _ = _counting(cache)
    compute(1), compute(2), compute(1), compute(1)
    info = cachelib.Cache(url, storage_options=options).info()
    assert (info.entries, info.hits, info.misses) == (2, 2, 2)
    assert info.bytes > 0
    stats = [item.key for item in cache.store.list("") if "/stats/" in item.key]
    assert stats, "statistics are objects in the store"


def test_a_remote_cache_writes_no_local_files(
    remote: tuple[str, dict[str, Any]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Entries, statistics, size records and leases all live in the store, never on local disk."""
    url, options = remote
    for name in ("cwd", "tmp", "home"):
        (tmp_path / name).mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    cache = cachelib.Cache(url, storage_options=options, bytes_limit="1G")
    compute, _ = _counting(cache)
    compute(5), compute(2_000_000), compute(5)
    cache.info()
    cache.reduce_size(items_limit=10)
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_clear_and_function_clear_remove_remote_entries(remote: tuple[str, dict[str, Any]]) -> None:
    """``f.clear()`` drops one function's entries, ``cache.clear()`` every one; both recompute after."""
    url, options = remote
    cache = cachelib.Cache(url, storage_options=options)
    compute, calls = _counting(cache)
    other_calls: list[int] = []

    @cache.memoize(ignore=["other_calls"])
    def other(n: int) -> int:
        other_calls.append(n)
        return -n

    compute(1), other(1)
    compute.clear()
    assert not compute.check_call_in_cache(1) and other.check_call_in_cache(1)
    cache.clear()
    assert not other.check_call_in_cache(1)
    compute(1), other(1)
    assert calls == [1, 1] and other_calls == [1, 1]
    assert cache.info().entries == 2


# Four stores a second apart: eviction's choice is test_memoize's (reduce_size, bytes_limit), the
# store's listing test_info_counts_entries_and_calls_from_the_store's.
@pytest.mark.slow
def test_eviction_keeps_a_remote_cache_within_limits(remote: tuple[str, dict[str, Any]]) -> None:
    """``reduce_size`` and ``bytes_limit`` evict the oldest-stored entries of a remote cache."""
    url, options = remote
    cache = cachelib.Cache(url, storage_options=options)
    compute, _calls = _counting(cache)
    for n in range(4):
        compute(10_000 + n)
        time.sleep(1.05)  # object stores date objects to the second
    assert cache.reduce_size(items_limit=2) == 2
    assert cache.info().entries == 2
    assert compute.check_call_in_cache(10_003) and not compute.check_call_in_cache(10_000)
    limited = cachelib.Cache(url, storage_options=options, bytes_limit=200_000)
    big, _ = _counting(limited)
    for n in range(4):
        big(20_000 + n)  # 160 KB each: the limit holds one
    assert limited.info().bytes <= 200_000


def test_expired_remote_entries_are_recomputed(remote: tuple[str, dict[str, Any]]) -> None:
    """``expires_after`` uses the time inside the entry, on remote stores too."""
    url, options = remote
    cache = cachelib.Cache(url, storage_options=options, expires_after=0.5)
    compute, calls = _counting(cache)
    compute(3), compute(3)
    time.sleep(0.7)
    compute(3)
    assert calls == [3, 3]


def test_signed_remote_entries_refuse_tampering(remote: tuple[str, dict[str, Any]]) -> None:
    """With a secret, an entry altered or moved in the store is a miss with a warning, never used."""
    url, options = remote
    cache = cachelib.Cache(url, storage_options=options, secret=SECRET)
    compute, calls = _counting(cache)
    compute(100), compute(200)
    name_100 = names.entry(compute.namespace, compute._key((100,), {}))
    name_200 = names.entry(compute.namespace, compute._key((200,), {}))
    with cache.store.open(name_200) as handle:
        moved = handle.file.read()
    with cache.store.write(name_100) as writer:  # a valid entry under another key's name
        writer.file.write(moved)
    with pytest.warns(cachelib.CacheWarning, match="cannot be read"):
        result = compute(100)
    assert result["n"] == 100 and calls == [100, 200, 100]
    with cache.store.open(name_200) as handle:
        data = bytearray(handle.file.read())
    data[-100] ^= 1
    with cache.store.write(name_200) as writer:
        writer.file.write(bytes(data))
    with pytest.warns(cachelib.CacheWarning):
        assert compute(200)["n"] == 200
    assert calls == [100, 200, 100, 200]


def test_concurrent_threads_on_a_remote_key_compute_once(remote: tuple[str, dict[str, Any]]) -> None:
    """Threads calling one uncached key wait on its lease and load the one result."""
    url, options = remote
    cache = cachelib.Cache(url, storage_options=options)
    calls: list[int] = []

    @cache.memoize(ignore=["calls"])
    def slow(x: int) -> int:
        calls.append(x)
        time.sleep(0.5)
        return x * 2

    start = threading.Barrier(6)
    results: list[int] = []

    def call() -> None:
        start.wait()
        results.append(slow(21))

    threads = [threading.Thread(target=call) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [42] * 6 and calls == [21]


def test_without_conditional_writes_callers_compute_unlocked(remote: tuple[str, dict[str, Any]]) -> None:
    """A store whose exclusive writes are not atomic gets no lease: results stay right."""
    url, options = remote
    store = FsspecStore(url, options, conditional_writes=False)
    cache = cachelib.Cache(store=store)
    compute, calls = _counting(cache)
    assert cache.entries.lock(compute.namespace, "0" * 32, {}) is None
    assert compute(4)["n"] == 4 and compute(4)["n"] == 4
    assert calls == [4]


def test_a_pickled_remote_cache_shares_its_entries(remote: tuple[str, dict[str, Any]]) -> None:
    """A memoized function pickled to a worker reaches the same remote entries."""
    import pickle

    url, options = remote
    cache = cachelib.Cache(url, storage_options=options)
    compute, _calls = _counting(cache)
    compute(7)
    copy = pickle.loads(pickle.dumps(cache))
    assert copy.store.url == url
    assert copy.info().entries == 1


def test_options_that_do_not_fit_the_location_are_refused(tmp_path: Path) -> None:
    """Group sharing is local only, storage_options are for URLs, location and store exclude each other."""
    with pytest.raises(cachelib.InvalidOptionError, match="local directories"):
        cachelib.Cache("memory://x", share="group", secret=SECRET)
    with pytest.raises(cachelib.InvalidOptionError, match="storage_options"):
        cachelib.Cache(tmp_path, storage_options={"anon": True})
    with pytest.raises(cachelib.InvalidOptionError, match="takes no location"):
        cachelib.Cache(tmp_path, store=FsspecStore("memory://y"))
    with pytest.raises(cachelib.InvalidOptionError, match="names no bucket"):
        cachelib.Cache("memory://")
    local = cachelib.Cache(f"file://{tmp_path / 'c'}")
    assert type(local.store).__name__ == "LocalStore"


@pytest.mark.parametrize("option", [{"fsync": "always"}, {"fsync": False}, {"share": "group"},
                                    {"storage_options": {"anon": True}}])
def test_store_options_beside_a_store_are_refused_not_ignored(option: dict[str, Any]) -> None:
    """``Cache(store=s, ...)``: an option of the store's own would be silently ignored, so it is an error
    that names it and where it belongs."""
    store = FsspecStore("memory://refused-options")
    with pytest.raises(cachelib.InvalidOptionError, match=f"takes no {next(iter(option))}.*store itself"):
        cachelib.Cache(store=store, secret=SECRET, **option)
    assert cachelib.Cache(store=store, secret=SECRET).store is store


def test_a_group_store_needs_a_secret_however_it_is_given(tmp_path: Path) -> None:
    """``share="group"`` is refused without a secret, as an option and as the store's own mode."""
    with pytest.raises(cachelib.InvalidOptionError, match="needs secret"):
        cachelib.Cache(tmp_path / "a", share="group")
    with pytest.raises(cachelib.InvalidOptionError, match="needs secret"):
        cachelib.Cache(store=cachelib.GroupStore(tmp_path / "b"))


def test_a_missing_bucket_warns_once_and_computes(s3_bucket: tuple[str, dict[str, Any]]) -> None:
    """A bucket that does not exist: one warning naming it, and the function just computes."""
    _, options = s3_bucket
    cache = cachelib.Cache(f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}/x", storage_options=options)
    compute, calls = _counting(cache)
    with pytest.warns(cachelib.CacheWarning, match="does not exist"):
        assert compute(1)["n"] == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert compute(1)["n"] == 1
    assert calls == [1, 1]


# -- the command line -------------------------------------------------------------------------


def test_the_command_line_works_on_a_memory_url(capsys: pytest.CaptureFixture[str]) -> None:
    """info, ls, verify, prune and clear take a URL like a directory."""
    url = f"memory://cli-{uuid.uuid4().hex[:12]}"
    cache = cachelib.Cache(url)
    compute, _ = _counting(cache)
    compute(1), compute(2), compute(1)
    assert main(["info", url]) == 0
    out = capsys.readouterr().out
    assert f"cache at {url}" in out and "total: 2 entries" in out
    assert main(["ls", url]) == 0
    listed = capsys.readouterr().out.splitlines()[2:]  # after the location and the header
    assert sorted(line.split()[1] for line in listed) == sorted(compute._key((n,), {}) for n in (1, 2))
    assert main(["verify", url]) == 0
    assert "2 entries checked, 0 damaged" in capsys.readouterr().out
    name = names.entry(compute.namespace, compute._key((2,), {}))
    with cache.store.write(name) as writer:
        writer.file.write(b"garbage")
    assert main(["verify", "--fix", url]) == 0
    assert f"removed: {url}/{name}" in capsys.readouterr().out
    assert main(["prune", "--max-items", "0", url]) == 0
    assert "removed 1 entry" in capsys.readouterr().out
    compute(3)
    assert main(["clear", "--location", url]) == 0
    assert "1 entry removed" in capsys.readouterr().out
    assert main(["info", f"memory://nothing-{uuid.uuid4().hex[:8]}"]) == 2
    assert "no cache at" in capsys.readouterr().err


@pytest.mark.slow  # two fresh interpreters on S3: test_the_command_line_works_on_a_memory_url
def test_the_command_line_reaches_s3_through_fsspec_configuration(
    s3_bucket: tuple[str, dict[str, Any]]
) -> None:
    """``cachelib info s3://...`` in a fresh process, with endpoint and keys from FSSPEC_S3."""
    bucket, options = s3_bucket
    url = f"s3://{bucket}/cli"
    compute, _ = _counting(cachelib.Cache(url, storage_options=options))
    compute(1), compute(2)
    env = {**os.environ, "FSSPEC_S3": json.dumps(options)}
    run = run_cli("info", url, env=env, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "total: 2 entries" in run.stdout
    run = run_cli("verify", url, env=env, timeout=120)
    assert run.returncode == 0 and "2 entries checked, 0 damaged" in run.stdout, run.stderr


@pytest.mark.parametrize("timeouts", [
    {"operation": -1}, {"attempts": 0}, {"attempts": 1.5}, {"read": "5"}, {"forever": 1}, [1, 2],
    {"pause": True},
])
def test_remote_timeouts_out_of_range_are_refused(timeouts: Any) -> None:
    """``storage_options["timeouts"]`` takes non-negative seconds (attempts: a whole number, at least 1)."""
    with pytest.raises(cachelib.InvalidOptionError, match="timeouts"):
        cachelib.Cache("memory://timeouts", storage_options={"timeouts": timeouts})


def test_remote_timeouts_go_to_the_store_and_config_kwargs_win(s3_bucket: tuple[str, dict[str, Any]]) -> None:
    """The bounds are the store's resolved settings, carried by pickles; an S3 filesystem's requests
    get the connect/read/attempts bounds unless the options' own config_kwargs set them."""
    import pickle

    bucket, options = s3_bucket
    given = {**options, "timeouts": {"operation": 7, "read": 3}, "config_kwargs": {"read_timeout": 9}}
    cache = cachelib.Cache(f"s3://{bucket}/c", storage_options=given)
    store = pickle.loads(pickle.dumps(cache)).store
    assert (store.timeouts.operation, store.timeouts.read, store.timeouts.pause) == (7, 3, 30)
    config = store.fs.config_kwargs
    assert config["read_timeout"] == 9 and config["connect_timeout"] == 5
    assert config["retries"] == {"mode": "standard", "total_max_attempts": 3}
