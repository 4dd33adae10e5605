"""Arrays and dtypes hash by their exact dtype identity (issue 10, item 1).

The ``.npy`` description collapses distinct dtypes (every one-byte ml_dtypes type
is ``'<V1'``, ``StringDType`` is ``'|O'``); here every pair of distinct dtypes
hashes apart, byte-swapped long doubles keep their value bytes, and structured
dtypes of any layout (reordered, overlapping, with object fields) hash.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from helpers import assert_distinct_hashes

import cachelib

h = cachelib.hash

try:
    import ml_dtypes
except ImportError:  # an extra: pip install ml_dtypes
    ml_dtypes = None
needs_ml_dtypes = pytest.mark.skipif(ml_dtypes is None, reason="ml_dtypes is not installed")
StringDType = getattr(np.dtypes, "StringDType", None)
needs_string_dtype = pytest.mark.skipif(StringDType is None, reason="numpy < 2 has no StringDType")

_ML_TYPES = [name for name in ("bfloat16", "float8_e4m3fn", "float8_e4m3b11fnuz", "float8_e4m3fnuz",
                                "float8_e5m2", "float8_e5m2fnuz", "int4", "uint4", "int2", "uint2",
                                "float4_e2m1fn", "float6_e2m3fn", "float6_e3m2fn", "float8_e8m0fnu")
             if ml_dtypes is not None and hasattr(ml_dtypes, name)]


@needs_ml_dtypes
def test_every_ml_dtypes_type_has_its_own_key():
    """An int4 call must never return the float8 result: equal bytes, other dtypes."""
    raw = np.zeros(4, dtype=np.uint8)
    one_byte = [raw.view(getattr(ml_dtypes, name)) for name in _ML_TYPES
                if np.dtype(getattr(ml_dtypes, name)).itemsize == 1]
    assert len(one_byte) >= 4
    assert_distinct_hashes([*one_byte, raw, raw.view(np.int8), raw.view("V1")])
    assert_distinct_hashes([np.dtype(getattr(ml_dtypes, name)) for name in _ML_TYPES])


@needs_ml_dtypes
def test_ml_dtypes_content_counts():
    a = np.array([1.0, 2.0], dtype=ml_dtypes.bfloat16)
    assert h(a) == h(a.copy())
    assert h(a) != h(np.array([1.0, 3.0], dtype=ml_dtypes.bfloat16))
    assert h(a[::-1]) == h(np.ascontiguousarray(a[::-1]))


@needs_string_dtype
def test_string_dtype_arrays_hash_their_strings_not_their_pointers():
    first = np.array(["a", "bb" * 40], dtype=StringDType())
    second = np.array(["a", "bb" * 40], dtype=StringDType())
    assert h(first) == h(second)
    assert h(first) != h(np.array(["a", "bb" * 41], dtype=StringDType()))
    assert h(first) != h(np.array(["a", "bb" * 40], dtype=object))
    assert h(first) != h(np.array(["a", "bb" * 40]))  # '<U80'


@needs_string_dtype
def test_string_dtype_na_object_variants_hash_apart():
    dtypes = [StringDType(), StringDType(na_object=None), StringDType(na_object=np.nan),
              StringDType(na_object=""), StringDType(na_object="NA"), StringDType(coerce=False)]
    assert_distinct_hashes(dtypes)
    assert_distinct_hashes([np.array(["x"], dtype=d) for d in dtypes])
    with_nan = np.array(["x", np.nan], dtype=StringDType(na_object=np.nan))
    assert h(with_nan) == h(np.array(["x", np.nan], dtype=StringDType(na_object=np.nan)))
    assert h(with_nan) != h(np.array(["x", "nan"], dtype=StringDType(na_object=np.nan)))


def test_subarray_dtypes_hash_apart():
    assert_distinct_hashes(
        [np.dtype(("<i4", (3,))), np.dtype(("<f4", (3,))), np.dtype("V12"), np.dtype(("<i4", (1, 3)))]
    )


def test_structured_dtypes_differ_by_names_offsets_titles_and_alignment():
    assert_distinct_hashes([
        np.dtype([("a", "<i4"), ("b", "<f8")]),
        np.dtype([("b", "<i4"), ("a", "<f8")]),
        np.dtype([("a", "<i4"), ("b", "<f8")], align=True),
        np.dtype({"names": ["a", "b"], "formats": ["<i4", "<f8"], "offsets": [0, 8]}),
        np.dtype({"names": ["a", "b"], "formats": ["<i4", "<f8"], "titles": ["A", None]}),
        np.dtype([("a", "<i4"), ("b", ">f8")]),
    ])


def test_equal_dtypes_with_other_character_codes_hash_apart():
    """``'l'`` and ``'q'`` compare equal but keep their own type in a result (a conservative miss)."""
    assert np.dtype("l") == np.dtype("q")
    assert h(np.zeros(2, "l")) != h(np.zeros(2, "q"))


def test_byte_swapped_long_double_keeps_its_value_bytes():
    one = np.longdouble(1)
    tiny = np.longdouble(2) ** -60
    if one + tiny == one:
        pytest.skip("long double has no more precision than double here")
    for code in (">g", "<g"):
        close = [np.array([one]).astype(code), np.array([one + tiny]).astype(code)]
        assert close[0][0] != close[1][0]
        assert h(close[0]) != h(close[1])
    assert h(np.array([one + 1j * tiny]).astype(">G")) != h(np.array([one]).astype(">G"))


def test_long_double_padding_never_counts():
    native = np.zeros(3, dtype=np.longdouble)
    dirty = native.copy()
    if native.itemsize > 10:
        dirty.view(np.uint8).reshape(3, -1)[:, 10:] = 0x5A
        assert h(native) == h(dirty)
        swapped = native.astype(native.dtype.newbyteorder())
        dirty = swapped.copy()
        dirty.view(np.uint8).reshape(3, -1)[:, :-10] = 0x5A
        assert h(swapped) == h(dirty)


def test_reordered_and_overlapping_fields_hash():
    record = np.zeros(4, dtype=[("a", "<i4"), ("b", "<f8"), ("c", "<i2")])
    record["a"] = [1, 2, 3, 4]
    view = record[["c", "a"]]  # out of order, with gaps
    assert h(view) == h(view.copy())
    changed = record.copy()
    changed["a"][0] = 9
    assert h(view) != h(changed[["c", "a"]])
    assert h(view) != h(record[["a", "c"]])
    overlapping = np.dtype({"names": ["x", "y"], "formats": ["<i4", "<i2"], "offsets": [0, 0], "itemsize": 4})
    array = np.zeros(2, dtype=overlapping)
    assert h(array) == h(array.copy())
    array["x"][0] = 1 << 20  # y (the low bytes) stays 0: x alone tells them apart
    assert h(array) != h(np.zeros(2, dtype=overlapping))


def test_structured_array_with_an_object_field_hashes_its_elements():
    dtype = np.dtype([("name", "O"), ("value", "<i4")])
    first = np.zeros(2, dtype=dtype)
    first["name"] = [[1, 2], "x"]
    second = np.zeros(2, dtype=dtype)
    second["name"] = [[1, 2], "x"]
    assert h(first) == h(second)
    second["name"][0] = [1, 3]
    assert h(first) != h(second)
    assert h(first[0]) == h(first[0])  # the np.void scalar too


def test_no_numpy_warning_is_emitted_for_any_dtype():
    values = [np.zeros(2, dtype=np.dtype("f8", metadata={"unit": "m"})),
              np.dtype([("a", "i4")], metadata={"k": 1})]
    if ml_dtypes is not None:
        values.append(np.zeros(2, dtype=ml_dtypes.int4))
    if StringDType is not None:
        values.append(np.array(["a"], dtype=StringDType()))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for value in values:
            h(value)


def test_dtype_metadata_counts():
    assert h(np.zeros(2, np.dtype("f8", metadata={"unit": "m"}))) != h(np.zeros(2))
    assert h(np.dtype("f8", metadata={"unit": "m"})) != h(np.dtype("f8", metadata={"unit": "s"}))
