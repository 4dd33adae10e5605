"""Shared fixtures of the persistence tests: codec names, a round-trip helper, deep comparison.

The test modules write out the codec facts they check (extensions, magic numbers,
level ranges) from the codecs' own specifications instead of reading them from cachelib.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
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
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class MotoProcess:
    """moto's S3 server as a process of its own on 127.0.0.1: ``frozen()`` stops it (SIGSTOP) for a
    block, during which the kernel still accepts connections and nothing ever answers."""

    def __init__(self) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while True:  # ready once it answers
            try:
                urllib.request.urlopen(self.url + "/moto-api/", timeout=1).close()
                return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.close()
                    pytest.fail("moto's S3 server did not start")
                time.sleep(0.1)

    def freeze(self) -> None:
        """Stop the server: it accepts connections and answers nothing."""
        os.kill(self.process.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        """Let the server run again."""
        os.kill(self.process.pid, signal.SIGCONT)

    @contextlib.contextmanager
    def frozen(self) -> Any:
        """The server stopped for the block, continued after it (also when the block fails)."""
        self.freeze()
        try:
            yield
        finally:
            self.thaw()

    def bucket(self) -> tuple[str, dict[str, Any]]:
        """A fresh, empty bucket: ``(name, storage_options)``."""
        import uuid

        import s3fs

        name = f"test-{uuid.uuid4().hex[:16]}"
        options = s3_options(self.url)
        s3fs.S3FileSystem(skip_instance_cache=True, **options).mkdir(name)
        return name, options

    def close(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.thaw()  # a stopped process does not act on SIGTERM
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _moto() -> Any:
    pytest.importorskip(
        "moto.server", reason="S3 tests need moto's server: pip install 'cachelib-numpy[test]'"
    )
    pytest.importorskip("s3fs", reason="S3 tests need s3fs: pip install 'cachelib-numpy[s3]'")
    os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")  # never look for credentials off-host
    return MotoProcess()


@pytest.fixture(scope="session")
def s3_server() -> Any:
    """moto's S3 server for the session (skips without moto/s3fs); never frozen."""
    server = _moto()
    yield server
    server.close()


@pytest.fixture(scope="session")
def s3_endpoint(s3_server: MotoProcess) -> str:
    """The URL of the session's S3 server on 127.0.0.1."""
    return s3_server.url


@pytest.fixture(scope="module")
def freezable_s3() -> Any:
    """An S3 server of the test module's own, which its tests may freeze (``MotoProcess``)."""
    server = _moto()
    yield server
    server.close()


def s3_options(endpoint: str) -> dict[str, Any]:
    """The storage_options that reach the test server (credentials are moto's dummies)."""
    return {"key": "testing", "secret": "testing",
            "client_kwargs": {"endpoint_url": endpoint, "region_name": "eu-west-1"}}


@pytest.fixture
def s3_bucket(s3_server: MotoProcess) -> Any:
    """A fresh, empty bucket on the session's server: ``(bucket name, storage_options)``."""
    return s3_server.bucket()
