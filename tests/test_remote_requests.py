"""The HTTP requests a hit and a store make on S3 (moto), counted where botocore sends them.

Behaviour, not timing: a hit of an entry larger than the small-entry memo is one HEAD
(the probe) and one GET of the whole object, read front to back (never a second GET
for the trailer, nor a HEAD again to open); a store is a look for the entry, the
lease's conditional create, a look again under it, the upload (one PUT, or a
multipart upload), and the lease's release; and nothing reads the entry back.
"""

from __future__ import annotations

import uuid
from typing import Any

import numpy as np
import pytest

import cachelib
from cachelib._entries import names

pytest.importorskip("s3fs", reason="S3 tests need s3fs: pip install 'cachelib-numpy[s3]'")


class Requests:
    """Every request the filesystems given to ``watch`` send: (method, key, range or "")."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str, str]] = []
        self._watched: set[int] = set()

    def watch(self, cache: cachelib.Cache) -> None:
        fs = cache.store.fs
        fs.connect()
        if id(fs.s3) not in self._watched:
            self._watched.add(id(fs.s3))
            fs.s3.meta.events.register("before-send.s3", self._record)

    def _record(self, request: Any, **_: Any) -> None:
        path = request.url.split("?", 1)[0].split("/", 4)[-1]  # the key: after scheme, host, bucket
        span = request.headers.get("Range", "")
        self.sent.append((request.method, path, span.decode() if isinstance(span, bytes) else span))

    def of(self, key: str) -> list[tuple[str, str]]:
        """The requests on one key, as (method, range)."""
        return [(method, span) for method, path, span in self.sent if path.endswith(key)]


def _cache(bucket: str, options: dict[str, Any], requests: Requests) -> Any:
    cache = cachelib.Cache(f"s3://{bucket}/cache", storage_options=options)
    requests.watch(cache)

    def ramp(n: int) -> np.ndarray:
        return np.arange(n, dtype=np.float64)

    return cache.memoize(ramp)


# 1 MB (one part, beyond the small-entry memo) and 12 MB (a multipart upload: 8 MB parts).
@pytest.mark.parametrize(("n", "parts"), [(131_072, 1), (1_500_000, 2)], ids=["1 part", "2 parts"])
def test_a_hit_is_one_head_and_one_get_and_a_store_reads_nothing_back(
    s3_bucket: tuple[str, dict[str, Any]], n: int, parts: int
) -> None:
    """A store's requests on the entry and its lease, and a fresh cache's hit: HEAD, then one GET."""
    bucket, options = s3_bucket
    requests = Requests()
    ramp = _cache(bucket, options, requests)
    np.testing.assert_array_equal(ramp(n), np.arange(n))
    key = ramp._key((n,), {})
    entry, lock = names.entry(ramp.namespace, key), names.lock(ramp.namespace, key)
    upload = [("PUT", "")] if parts == 1 else [("POST", "")] + [("PUT", "")] * parts + [("POST", "")]
    assert requests.of(entry) == [("HEAD", ""), ("HEAD", ""), *upload], requests.sent
    on_lock = [method for method, _ in requests.of(lock)]
    assert on_lock[0] == "PUT" and on_lock[-1] == "DELETE" and len(on_lock) <= 4, on_lock

    requests.sent.clear()
    again = _cache(bucket, options, requests)  # a fresh Cache: nothing of the entry known
    np.testing.assert_array_equal(again(n), np.arange(n))
    assert again.stats.hits == 1
    assert requests.of(entry) == [("HEAD", ""), ("GET", "")], requests.sent
    assert not requests.of(lock), "a hit takes no lease"


def test_a_read_elsewhere_is_one_ranged_get_bound_to_the_version_opened(
    s3_bucket: tuple[str, dict[str, Any]]
) -> None:
    """Through the store: opening is one GET; a read a little ahead goes on through its response, a
    read further on or back is a ranged GET (with ``If-Match``), and what is read is the object."""
    bucket, options = s3_bucket
    requests = Requests()
    cache = cachelib.Cache(f"s3://{bucket}/raw-{uuid.uuid4().hex[:8]}", storage_options=options)
    requests.watch(cache)
    data = np.random.default_rng(0).integers(0, 256, 12 << 20, dtype=np.uint8).tobytes()
    with cache.store.write("x/object") as writer:
        writer.file.write(data)
    requests.sent.clear()
    with cache.store.open("x/object") as handle:
        file = handle.file
        assert file.read(10) == data[:10]
        ahead = (1 << 20) + 4096  # past what the first read buffered, within the skip: read on
        file.seek(ahead)
        assert file.read(10) == data[ahead : ahead + 10]
        file.seek(8 << 20)  # beyond it: a new request
        assert file.read(10) == data[8 << 20 : (8 << 20) + 10]
        file.seek(0)  # back: a new request
        assert file.read() == data
    assert requests.of("x/object") == [("GET", ""), ("GET", f"bytes={8 << 20}-"), ("GET", "bytes=0-")]
