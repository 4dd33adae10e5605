"""Shared fixtures of the persistence tests: codec names, a round-trip helper, deep comparison.

The test modules write out the codec facts they check (extensions, magic numbers,
level ranges) from the codecs' own specifications instead of reading them from cachelib.
"""

from __future__ import annotations

import io
import itertools
import os
from typing import Any

import pytest
from helpers import CALLS, CODECS, assert_same, codec_params, compress_params, dumped_bytes
from hypothesis import settings

import cachelib
import cachelib._codecs.registry as _compressors

# No example database: the suite must not write outside the temporary directories.
settings.register_profile("cachelib", database=None, deadline=None, print_blob=True)
settings.load_profile("cachelib")

# --- a cache per test ----------------------------------------------------------------


@pytest.fixture
def location(tmp_path: Any) -> Any:
    """Where the test's cache lives: ``tmp_path / "cache"`` (not created yet)."""
    return tmp_path / "cache"


@pytest.fixture
def cache(location: Any) -> cachelib.Cache:
    """A fresh ``cachelib.Cache`` at ``location``, default options."""
    return cachelib.Cache(location)


@pytest.fixture
def calls() -> Any:
    """``helpers.CALLS``, emptied before and after the test: the memoized functions of the tests
    append their real calls to it."""
    CALLS.clear()
    yield CALLS
    CALLS.clear()


# --- codec fixtures -------------------------------------------------------------------


@pytest.fixture(scope="session")
def codec_names() -> list[str]:
    """Every built-in codec name (lz4 included even when the package is missing)."""
    return list(CODECS)


@pytest.fixture(params=codec_params(), scope="session")
def codec(request: pytest.FixtureRequest) -> str:
    """Each built-in codec name in turn (lz4 skipped when it is not installed)."""
    return request.param  # type: ignore[no-any-return]


@pytest.fixture(params=compress_params(), scope="session")
def compress(request: pytest.FixtureRequest) -> Any:
    """``False`` (raw) and then each built-in codec name: the ``compress`` argument."""
    return request.param


@pytest.fixture
def restore_registry():
    """Give the test the codec registry and put it back exactly as it was afterwards."""
    saved = dict(_compressors._registry)
    yield cachelib.compressors
    _compressors._registry.clear()
    _compressors._registry.update(saved)


# --- writing and reading --------------------------------------------------------------


@pytest.fixture(scope="session")
def roundtrip(tmp_path_factory: pytest.TempPathFactory):
    """Return ``roundtrip(value, compress=False, via="path")``: the value dumped and loaded.

    ``via="path"`` dumps to a fresh file and loads it by name (checking dump's return
    value); ``via="stream"`` goes through an ``io.BytesIO``.
    """
    directory = tmp_path_factory.mktemp("roundtrip")
    counter = itertools.count()

    def roundtrip(value: Any, compress: Any = False, via: str = "path") -> Any:
        if via == "stream":
            stream = io.BytesIO()
            assert cachelib.dump(value, stream, compress=compress) == []
            stream.seek(0)
            result = cachelib.load(stream)
            assert stream.read() == b"", "load left bytes of the value unread"
            return result
        assert via == "path", via
        path = directory / f"value{next(counter)}.pkl"
        assert cachelib.dump(value, path, compress=compress) == [str(path)]
        result = cachelib.load(path)
        os.unlink(path)
        return result

    return roundtrip


@pytest.fixture(name="dumped_bytes", scope="session")
def dumped_bytes_fixture():
    """Return ``dumped_bytes(value, compress=False)``: the bytes dump writes into a stream."""
    return dumped_bytes


# --- deep comparison ------------------------------------------------------------------


@pytest.fixture(scope="session")
def same():
    """The deep comparison ``assert_same(actual, expected, where="value", memmap_ok=False)``."""
    return assert_same



# --- remote stores: a real S3 server on the loopback interface ----------------------------


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="session")
def s3_endpoint() -> Any:
    """The URL of moto's S3 server on 127.0.0.1, started for the session (skips without moto/s3fs)."""
    import logging

    server_module = pytest.importorskip(
        "moto.server", reason="S3 tests need moto's server: pip install 'cachelib[test]'"
    )
    pytest.importorskip("s3fs", reason="S3 tests need s3fs: pip install 'cachelib[s3]'")
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")  # never look for credentials off-host
    port = _free_port()
    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


def s3_options(endpoint: str) -> dict[str, Any]:
    """The storage_options that reach the test server (credentials are moto's dummies)."""
    return {"key": "testing", "secret": "testing",
            "client_kwargs": {"endpoint_url": endpoint, "region_name": "eu-west-1"}}


@pytest.fixture
def s3_bucket(s3_endpoint: str) -> Any:
    """A fresh, empty bucket on the test server: ``(bucket name, storage_options)``."""
    import uuid

    import s3fs

    name = f"test-{uuid.uuid4().hex[:16]}"
    options = s3_options(s3_endpoint)
    s3fs.S3FileSystem(skip_instance_cache=True, **options).mkdir(name)
    return name, options
