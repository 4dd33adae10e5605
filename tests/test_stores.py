"""The store contract (``store_contract.StoreContract``) run against every store cachelib ships."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from store_contract import StoreContract

from cachelib._stores.local import LocalStore

fsspec_store = pytest.importorskip("cachelib._stores.fsspec_store", reason="fsspec stores need fsspec")
pytest.importorskip("fsspec", reason="fsspec stores need fsspec: pip install 'cachelib[fsspec]'")


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


class TestGenericFsspecStore(StoreContract):
    """Any other fsspec filesystem (here fsspec's own local one through a file:// URL): exclusive
    writes are a check, not atomic, large writes go through fsspec's uncommitted files."""

    @pytest.fixture
    def store(self, tmp_path: Path) -> Any:
        store = fsspec_store.FsspecStore(f"file://{tmp_path}/generic")
        assert not store.conditional_writes
        return store
