"""Golden files: every file an earlier (or this) cachelib wrote into tests/data keeps loading
as exactly the value it stored, and this version has one golden file per codec.

The files are written by ``tests/data/make_golden.py``; the value is defined once, in
``tests/data/golden_value.py``.
"""

from __future__ import annotations

import importlib.util
import pathlib
import re

import numpy as np
import pytest

import cachelib
from cachelib._format.records import FORMAT_VERSION

pytestmark = pytest.mark.timeout(60)

DATA = pathlib.Path(__file__).parent / "data"


def _golden_module():
    spec = importlib.util.spec_from_file_location("cachelib_golden_value", DATA / "golden_value.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


golden = _golden_module()
GOLDEN_FILES = sorted(p for p in DATA.glob(golden.PATTERN) if p.suffix != ".py")
NAME = re.compile(r"cachelib_(?P<version>[^_]+)_format(?P<format>\d+)\.(?P<ext>\w+)$")

# Leading bytes of each kind of golden file, by extension (from the codecs' specifications).
MAGIC_BY_EXTENSION = {
    golden.RAW_EXTENSION: b"\x89CLIB\r\n\x1a",
    "z": b"\x78",
    "gz": b"\x1f\x8b\x08",
    "bz2": b"BZh",
    "lzma": b"\x5d\x00\x00",
    "xz": b"\xfd7zXZ\x00",
    "zst": b"\x28\xb5\x2f\xfd",
    "lz4": b"\x04\x22\x4d\x18",
}


def _needs_codec(path: pathlib.Path) -> None:
    if path.suffix == ".lz4":
        pytest.importorskip("lz4.frame", reason="the lz4 package is not installed")


def test_golden_files_exist():
    """tests/data holds golden files, each named cachelib_<version>_format<N>.<known ext>."""
    assert GOLDEN_FILES, f"no golden files in {DATA}; run python tests/data/make_golden.py"
    for path in GOLDEN_FILES:
        match = NAME.match(path.name)
        assert match, f"{path.name} does not follow {golden.PATTERN}"
        assert match["ext"] in MAGIC_BY_EXTENSION, f"{path.name}: unknown extension"


@pytest.mark.parametrize("path", GOLDEN_FILES, ids=[p.name for p in GOLDEN_FILES])
def test_golden_file_loads_exactly(path, same):
    """Each golden file is of the codec its extension names, and loads as golden_value()."""
    _needs_codec(path)
    extension = path.suffix.lstrip(".")
    assert path.read_bytes().startswith(MAGIC_BY_EXTENSION[extension])
    value = cachelib.load(path)
    same(value, golden.golden_value())
    assert isinstance(value[4], np.matrix)
    assert value[6].flags.f_contiguous and not value[6].flags.c_contiguous


RAW_FILES = [p for p in GOLDEN_FILES if p.suffix == f".{golden.RAW_EXTENSION}"]


@pytest.mark.parametrize("path", RAW_FILES, ids=[p.name for p in RAW_FILES])
def test_raw_golden_file_maps(path, same):
    """Each raw golden file loads with mmap_mode="r" as golden_value(), arrays read-only: mapped
    in format 1, where every array is a record; in the pickle from format 2 on, where arrays
    this small are written in band."""
    value = cachelib.load(path, mmap_mode="r")
    same(value, golden.golden_value(), memmap_ok=True)
    in_band = int(NAME.match(path.name)["format"]) >= 2
    for index in (0, 1, 6, 7):
        assert isinstance(value[index], np.memmap) is not in_band, index
        assert not value[index].flags.writeable


def test_every_codec_has_a_golden_file_of_this_format(codec_names):
    """For the current FORMAT_VERSION there is a golden file for raw and for every codec
    cachelib registers (a codec without one means make_golden.py was not run)."""
    extensions = {golden.RAW_EXTENSION: "raw"}
    for name in {*codec_names, *cachelib.compressors}:
        extensions[cachelib.compressors[name].extension.lstrip(".")] = name
    names = [NAME.match(p.name) for p in GOLDEN_FILES]
    present = {m["ext"] for m in names if m is not None and int(m["format"]) == FORMAT_VERSION}
    missing = sorted(f"{name} (.{ext})" for ext, name in extensions.items() if ext not in present)
    assert not missing, (
        f"no golden file of format {FORMAT_VERSION} for {', '.join(missing)}: "
        "run python tests/data/make_golden.py and commit the new files"
    )


def _pickled_globals(data: bytes) -> set[tuple[str, str]]:
    """The (module, name) pairs a pickle names through STACK_GLOBAL or GLOBAL."""
    import pickletools

    found, strings = set(), []
    for opcode, argument, _ in pickletools.genops(data):
        if opcode.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE"):
            strings.append(argument)
        elif opcode.name == "STACK_GLOBAL":
            found.add((strings[-2], strings[-1]))
        elif opcode.name == "GLOBAL":
            module, _, name = argument.partition(" ")
            found.add((module, name))
    return found


def test_a_fresh_dump_names_the_array_rebuilder_by_its_stored_name():
    """Pickles name ``cachelib._format.rebuild_array``, whichever module defines it today."""
    import io

    from cachelib._format.reader import parse_bytes

    stream = io.BytesIO()
    cachelib.dump({"big": np.arange(10_000.0), "small": np.arange(3)}, stream)
    named = _pickled_globals(parse_bytes(stream.getvalue()).pickle)
    ours = {name for name in named if name[0].startswith("cachelib")}
    assert ours == {("cachelib._format", "rebuild_array")}
    from cachelib._format import rebuild_array

    assert rebuild_array.__module__ == "cachelib._format"
