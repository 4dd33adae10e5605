"""The store contract (``store_contract.StoreContract``) run against every store cachelib ships."""

from __future__ import annotations

import functools
import uuid
from pathlib import Path
from typing import Any

import pytest
from store_contract import StoreContract

from cachelib._stores.local import LocalStore

fsspec_store = pytest.importorskip("cachelib._stores.fsspec_store", reason="fsspec stores need fsspec")
pytest.importorskip("fsspec", reason="fsspec stores need fsspec: pip install 'cachelib-numpy[fsspec]'")


class TestLocalStore(StoreContract):
    """The default store: files under a directory."""

    mappable = True

    @pytest.fixture
    def store(self, tmp_path: Path) -> LocalStore:
        return LocalStore(tmp_path / "store")


class TestMemoryStore(StoreContract):
    """fsspec's memory:// filesystem (one process's dict)."""

    @pytest.fixture
    def store(self) -> Any:
        store = fsspec_store.FsspecStore(f"memory://contract-{uuid.uuid4().hex[:12]}")
        yield store
        store.fs.rm(store._root, recursive=True) if store.fs.exists(store._root) else None


class TestS3Store(StoreContract):
    """S3 for real: s3fs against moto's S3 server on the loopback interface."""

    @pytest.fixture
    def store(self, s3_bucket: tuple[str, dict[str, Any]]) -> Any:
        bucket, options = s3_bucket
        return fsspec_store.FsspecStore(f"s3://{bucket}/prefix", options)


def _marked_slow(test: Any) -> Any:
    """A StoreContract test as a function of its own, marked slow (the contract's stays unmarked)."""

    @functools.wraps(test)
    def slow_test(*args: Any, **kwargs: Any) -> Any:
        return test(*args, **kwargs)

    return pytest.mark.slow(slow_test)


# Every test against the S3 server takes a tenth of a second to seconds: the fast tier keeps what
# only S3 does (conditional creates and multipart uploads, completed or aborted, reads pinned to
# one version, listings); memory:// runs the whole contract quickly.
S3_QUICK = {"test_the_first_exclusive_writer_wins", "test_a_failed_write_leaves_nothing",
            "test_a_reader_sees_one_version", "test_list_yields_the_objects_under_a_prefix"}
for _name in dir(StoreContract):
    if _name.startswith("test_") and _name not in S3_QUICK:
        setattr(TestS3Store, _name, _marked_slow(getattr(StoreContract, _name)))


class TestGenericFsspecStore(StoreContract):
    """Any other fsspec filesystem (here fsspec's own local one through a file:// URL): exclusive
    writes are a check, not atomic, large writes go through fsspec's uncommitted files."""

    @pytest.fixture
    def store(self, tmp_path: Path) -> Any:
        store = fsspec_store.FsspecStore(f"file://{tmp_path}/generic")
        assert not store.conditional_writes
        return store


def test_the_fsspec_privates_cachelib_relies_on(tmp_path: Path) -> None:
    """The behaviour ``_stores.fsspec_compat`` takes from fsspec's private API, on the installed fsspec:
    paths stripped of their protocol, parents, files that appear only at ``commit()`` (and never
    after ``discard()``; memory:// is written in one piece instead, and S3's uploads are
    checked against moto in test_remote), coroutines run on a filesystem's loop, within a timeout, and S3
    requests started there without waiting."""
    import asyncio
    import inspect

    import fsspec
    from fsspec.implementations.local import LocalFileSystem
    from fsspec.implementations.memory import MemoryFileSystem

    from cachelib._stores import fsspec_compat

    assert fsspec_compat.strip_protocol(MemoryFileSystem, "memory://bucket/prefix/") == "/bucket/prefix"
    assert fsspec_compat.strip_protocol(LocalFileSystem, f"file://{tmp_path}/a") == f"{tmp_path}/a"
    local = fsspec.filesystem("file")
    assert fsspec_compat.parent(local, f"{tmp_path}/a/b") == f"{tmp_path}/a"
    for commit in (True, False):
        target = f"{tmp_path}/kept-{commit}"
        handle = fsspec_compat.open_uncommitted(local, target, "wb", 1 << 20)
        handle.write(b"whole")
        handle.close()
        assert not local.exists(target), "visible before commit"
        handle.commit() if commit else handle.discard()
        assert local.exists(target) is commit
        if commit:
            assert local.cat_file(target) == b"whole"

    async def answer(value: int) -> int:
        await asyncio.sleep(0)
        return value * 2

    async def forever() -> None:
        await asyncio.sleep(3600)

    s3fs = pytest.importorskip("s3fs", reason="an async filesystem: pip install 'cachelib-numpy[s3]'")
    remote = s3fs.S3FileSystem(anon=True, skip_instance_cache=True)
    assert fsspec_compat.run_on_loop(remote, answer, 21) == 42
    with pytest.raises(asyncio.TimeoutError):  # fsspec's FSTimeoutError (builtin TimeoutError from 3.11)
        fsspec_compat.run_on_loop(remote, forever, timeout=0.2)
    assert fsspec_compat.bounded(remote, 5.0) == {"timeout": 5.0}  # its blocking methods take it
    assert fsspec_compat.bounded(local, 5.0) == {}  # a synchronous filesystem would take it as its own
    assert inspect.iscoroutinefunction(s3fs.S3FileSystem._call_s3)  # the coroutine behind call_s3

    async def echo(method: str, **kwargs: Any) -> Any:
        await asyncio.sleep(0)
        return method, kwargs

    async def stalled(method: str, **kwargs: Any) -> None:
        await asyncio.sleep(3600)

    remote._call_s3 = echo  # the instance's own: what start_s3_call runs, on the loop
    started = fsspec_compat.start_s3_call(remote, "head_object", 5.0, Key="k")
    assert started.result(5) == ("head_object", {"Key": "k"})
    remote._call_s3 = stalled
    with pytest.raises(asyncio.TimeoutError):  # cancelled on the loop after its timeout
        fsspec_compat.start_s3_call(remote, "head_object", 0.2, Key="k").result(5)
