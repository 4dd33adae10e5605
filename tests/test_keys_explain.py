"""Say why a call missed (issue 10, item 8): ``explain_miss``, ``f.explain`` and the verbose log."""

from __future__ import annotations

import numpy as np
import pytest

import cachelib
from cachelib._keys.explain import explain_miss

PARTS = {"code": "c1", "helper pkg.prep": "h1", "constant SCALE": "s1",
         "argument x": "x1", "argument y": "y1"}


def _with(**changes):
    parts = dict(PARTS)
    for name, value in changes.items():
        name = name.replace("_", " ", 1).replace("pkg_", "pkg.")
        if value is None:
            parts.pop(name)
        else:
            parts[name] = value
    return parts


def test_no_stored_entries():
    expected = "nothing stored for this function yet"
    assert explain_miss(PARTS, []) == expected


def test_identical_parts_mean_a_hit():
    assert explain_miss(PARTS, [dict(PARTS)]).startswith("an entry with the same key parts is stored")


@pytest.mark.parametrize(
    "stored, expected",
    [
        (_with(argument_x="x0"), "argument `x` changed"),
        (_with(code="c0"), "new code version"),
        (_with(helper_pkg_prep="h0"), "helper `prep` edited"),
        (_with(constant_SCALE="s0"), "constant `SCALE` changed"),
        (_with(constant_SCALE=None), "now reads constant `SCALE`"),
        (_with(helper_pkg_prep=None), "now calls helper `prep`"),
        ({**PARTS, "helper pkg.old": "o"}, "no longer calls helper `old`"),
        (_with(argument_x="x0", code="c0"), "argument `x` changed; new code version"),
    ],
)
def test_each_kind_of_difference_is_named(stored, expected):
    assert explain_miss(PARTS, [stored]) == expected


def test_the_nearest_entry_is_described():
    far = _with(argument_x="x0", argument_y="y0", code="c0")
    near = _with(helper_pkg_prep="h0")
    assert explain_miss(PARTS, [far, near, far]) == "helper `prep` edited"


def test_equally_near_entries_are_all_named():
    text = explain_miss(PARTS, [_with(argument_x="x0"), _with(argument_y="y0")])
    assert "argument `x` changed" in text and "argument `y` changed" in text
    assert "2 nearest entries" in text


def test_entries_without_parts_are_passed_over():
    assert explain_miss(PARTS, [None, "junk", _with(code="c0")]) == "new code version"  # type: ignore[list-item]


def test_methods_keep_their_class_in_the_name():
    parts = {"helper pkg.mod.Model.predict": "a"}
    assert explain_miss(parts, [{"helper pkg.mod.Model.predict": "b"}]) == "helper `Model.predict` edited"


# --- on a real cache -----------------------------------------------------------------------


SCALE = 2


def _prep(x):
    return x * SCALE


def test_explain_on_a_memoized_function(cache):
    global SCALE

    @cache.memoize
    def work(x, y=1):
        return _prep(x) + y

    assert work.explain(1) == "nothing stored for this function yet"
    work(1)
    assert work.explain(1) == "the call hits: its entry is stored"
    assert work.explain(2) == "argument `x` changed"
    assert work.explain(1, y=5) == "argument `y` changed"
    SCALE = 3
    try:
        assert work.explain(1) == "constant `SCALE` changed"
    finally:
        SCALE = 2


def test_entries_record_short_digests_of_their_key_parts_never_values(cache):
    @cache.memoize
    def work(x, label):
        return x

    secret = "a value that must not be stored in the metadata"
    work(np.arange(1000), secret)
    parts = next(work._stored_key_parts())
    assert set(parts) >= {"code", "argument x", "argument label"}
    assert all(len(value) <= 12 for value in parts.values())
    assert len(repr(parts)) < 600
    assert secret not in repr(parts)


def test_explain_reads_only_the_most_recent_entries(cache, monkeypatch):
    monkeypatch.setattr(cachelib._memo.memoized, "_EXPLAIN_ENTRIES", 3)

    @cache.memoize
    def work(x):
        return x

    for x in range(6):
        work(x)
    assert len(list(work._stored_key_parts())) == 3


def test_a_verbose_cache_logs_why_it_missed(tmp_path, capsys):
    cache = cachelib.Cache(tmp_path / "cache", verbose=1)

    @cache.memoize
    def work(x):
        return x

    work(1)
    capsys.readouterr()
    work(2)
    assert capsys.readouterr().err.startswith("[cachelib] miss work(x=2): argument `x` changed; computed in ")


@pytest.mark.parametrize("hostile", ["\x1b]0;owned\x07", "\x1b[2J", "a\rb", "x\u202ey", "line\nbreak"])
def test_names_from_stored_entries_reach_the_reader_escaped(hostile):
    """Another user of a shared cache writes the entries that ``explain`` and ``verbose`` quote."""
    stored = {f"file {hostile}.csv": "1", f"package {hostile}": "1.0", "argument x": "1"}
    parts = {"argument x": "2", f"package {hostile}": "2.0"}
    line = explain_miss(parts, [stored])
    assert line.isprintable() and hostile not in line
    assert "no longer depends on file" in line and "argument `x` changed" in line


def test_a_foreign_global_in_another_users_entry_is_named_escaped():
    import io
    import pickle

    from cachelib._format.unpickling import RestrictedUnpickler

    data = pickle.dumps(1, protocol=4)[:2] + b"\x8c\x06os\x1b[2J\x8c\x06system\x93."
    with pytest.raises(cachelib.DeserializationError) as raised:
        RestrictedUnpickler(io.BytesIO(data)).load()
    assert "\x1b" not in str(raised.value) and "os\\x1b[2J.system" in str(raised.value)
