"""Shared fixtures of the persistence tests: codec names, a round-trip helper, deep comparison.

The test modules write out the codec facts they check (extensions, magic numbers,
level ranges) from the codecs' own specifications instead of reading them from cachelib.
"""

from __future__ import annotations

import dataclasses
import io
import itertools
import math
import os
from typing import Any

import numpy as np
import pytest
from hypothesis import settings

import cachelib
import cachelib._codecs.registry as _compressors

# No example database: the suite must not write outside the temporary directories.
settings.register_profile("cachelib", database=None, deadline=None, print_blob=True)
settings.load_profile("cachelib")

# The built-in codecs; test_persistence checks that cachelib registers exactly these.
CODECS = ("zlib", "gzip", "bz2", "lzma", "xz", "zstd", "lz4")

try:
    import lz4.frame  # noqa: F401

    HAVE_LZ4 = True
except ImportError:
    HAVE_LZ4 = False

_NO_LZ4 = pytest.mark.skipif(not HAVE_LZ4, reason="the optional lz4 package is not installed")


def _codec_param(name: str) -> Any:
    return pytest.param(name, id=name, marks=[_NO_LZ4] if name == "lz4" else [])


# --- codec fixtures -------------------------------------------------------------------


@pytest.fixture(scope="session")
def codec_names() -> list[str]:
    """Every built-in codec name (lz4 included even when the package is missing)."""
    return list(CODECS)


@pytest.fixture(params=[_codec_param(name) for name in CODECS], scope="session")
def codec(request: pytest.FixtureRequest) -> str:
    """Each built-in codec name in turn (lz4 skipped when it is not installed)."""
    return request.param  # type: ignore[no-any-return]


@pytest.fixture(
    params=[pytest.param(False, id="raw"), *(_codec_param(name) for name in CODECS)],
    scope="session",
)
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


@pytest.fixture(scope="session")
def dumped_bytes():
    """Return ``dumped_bytes(value, compress=False)``: the bytes dump writes into a stream."""

    def dumped_bytes(value: Any, compress: Any = False) -> bytes:
        stream = io.BytesIO()
        cachelib.dump(value, stream, compress=compress)
        return stream.getvalue()

    return dumped_bytes


# --- deep comparison ------------------------------------------------------------------


def _same_array(actual: np.ndarray, expected: np.ndarray, where: str, memmap_ok: bool) -> None:
    expected_type = type(expected)
    if expected_type is np.memmap:
        expected_type = np.ndarray  # a memmap is stored and loaded as a plain array
    if memmap_ok and type(actual) is np.memmap and expected_type is np.ndarray:
        pass
    else:
        assert type(actual) is expected_type, f"{where}: type {type(actual)} != {expected_type}"
    assert actual.dtype == expected.dtype, f"{where}: dtype {actual.dtype!r} != {expected.dtype!r}"
    assert actual.dtype.str == expected.dtype.str, (
        f"{where}: byte order {actual.dtype.str} != {expected.dtype.str}"
    )
    assert actual.dtype.isalignedstruct == expected.dtype.isalignedstruct, f"{where}: align flag"
    assert actual.shape == expected.shape, f"{where}: shape {actual.shape} != {expected.shape}"
    if expected.flags.f_contiguous and not expected.flags.c_contiguous:
        assert actual.flags.f_contiguous, f"{where}: a Fortran-ordered array came back in C order"
    if expected.dtype.hasobject:
        for index in np.ndindex(expected.shape):
            assert_same(actual[index], expected[index], f"{where}[{index}]", memmap_ok)
        return
    _same_values(actual, expected, where)


def _same_values(actual: np.ndarray, expected: np.ndarray, where: str) -> None:
    """Compare bit for bit (tells -0.0 from 0.0, keeps NaN payloads and NaT), field by field:
    the padding bytes of a structured dtype hold no value."""
    if expected.dtype.names is not None:
        for name in expected.dtype.names:
            _same_values(actual[name], expected[name], f"{where}[{name!r}]")
        return
    actual_bytes = np.ascontiguousarray(actual).tobytes()
    expected_bytes = np.ascontiguousarray(expected).tobytes()
    assert actual_bytes == expected_bytes, f"{where}: values differ:\n{actual!r}\n!=\n{expected!r}"


def assert_same(actual: Any, expected: Any, where: str = "value", memmap_ok: bool = False) -> None:
    """Assert that ``actual`` is an exact copy of ``expected``, recursively.

    Arrays must agree in type (``np.memmap`` inputs compare as ``np.ndarray``; with
    ``memmap_ok`` an ``np.memmap`` result stands for an ``np.ndarray``), dtype including
    byte order and alignment, shape, Fortran order where the input was Fortran-only,
    and every byte of every element. Masked arrays also compare mask and fill value.
    """
    if isinstance(expected, np.ma.MaskedArray):
        assert type(actual) is type(expected), f"{where}: type {type(actual)} != {type(expected)}"
        _same_array(actual.data, expected.data, f"{where}.data", memmap_ok)
        _same_array(np.ma.getmaskarray(actual), np.ma.getmaskarray(expected), f"{where}.mask", memmap_ok)
        assert actual.fill_value == expected.fill_value, f"{where}: fill_value"
        assert actual.fill_value.dtype == expected.fill_value.dtype, f"{where}: fill_value dtype"
    elif isinstance(expected, np.ndarray):
        assert isinstance(actual, np.ndarray), f"{where}: {type(actual)} is not an array"
        _same_array(actual, expected, where, memmap_ok)
    elif isinstance(expected, np.generic):
        assert type(actual) is type(expected), f"{where}: type {type(actual)} != {type(expected)}"
        assert actual.tobytes() == expected.tobytes(), f"{where}: {actual!r} != {expected!r}"
    elif dataclasses.is_dataclass(expected) and not isinstance(expected, type):
        assert type(actual) is type(expected), f"{where}: type {type(actual)} != {type(expected)}"
        for field in dataclasses.fields(expected):
            assert_same(
                getattr(actual, field.name), getattr(expected, field.name), f"{where}.{field.name}", memmap_ok
            )
    elif isinstance(expected, dict):
        assert type(actual) is type(expected), f"{where}: type {type(actual)} != {type(expected)}"
        assert list(actual) == list(expected), f"{where}: keys {list(actual)} != {list(expected)}"
        for key in expected:
            assert_same(actual[key], expected[key], f"{where}[{key!r}]", memmap_ok)
    elif isinstance(expected, (list, tuple)):
        assert type(actual) is type(expected), f"{where}: type {type(actual)} != {type(expected)}"
        assert len(actual) == len(expected), f"{where}: length {len(actual)} != {len(expected)}"
        for i, (a, e) in enumerate(zip(actual, expected)):
            assert_same(a, e, f"{where}[{i}]", memmap_ok)
    elif isinstance(expected, float) and math.isnan(expected):
        assert type(actual) is float and math.isnan(actual), f"{where}: {actual!r} is not nan"
    else:
        assert type(actual) is type(expected), f"{where}: type {type(actual)} != {type(expected)}"
        assert actual == expected, f"{where}: {actual!r} != {expected!r}"


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
        "moto.server", reason="S3 tests need moto's server: pip install 'cachelib-numpy[test]'"
    )
    pytest.importorskip("s3fs", reason="S3 tests need s3fs: pip install 'cachelib-numpy[s3]'")
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
