"""How caches, functions and reports show themselves: one human text form, and HTML tables for notebooks.

Every ``_repr_html_`` is parsed as XML (a well-formed fragment) and read cell by cell.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ElementTree

import numpy as np
import pytest

import cachelib

pytestmark = pytest.mark.timeout(60)


def parsed(fragment: str) -> ElementTree.Element:
    table = ElementTree.fromstring(fragment)
    assert table.tag == "table"
    return table


def cells(table: ElementTree.Element, section: str = "tbody") -> list[list[str]]:
    return [[cell.text or "" for cell in row] for row in table.find(section)]


@pytest.fixture
def filled(tmp_path):
    location = tmp_path / "a <b>&c"  # text that HTML must escape
    cache = cachelib.Cache(location, compress="zstd", bytes_limit="1G")

    @cache.memoize(mmap_mode=None, ignore=["verbose"])
    def ones(n, verbose=False):
        return np.ones(n)

    ones(1000)
    ones(1000)
    ones(10)
    return cache, ones


def test_info_as_text_has_one_unit_system_and_agreeing_nouns(filled):
    cache, ones = filled
    info = cache.info()
    text = str(info)
    first = text.splitlines()[0]
    assert first.startswith(f"cache at {cache.location}: 2 entries, "), first
    assert re.search(r": 2 entries, [\d.]+ (B|KiB), 1 hit, 2 misses, [\d.]+ (us|ms|s) saved$", first), first
    assert repr(info) == text  # no raw dataclass with epoch floats
    assert not re.search(r"\d{10}\.\d", text)
    assert "MB" not in text and " entries" in text
    assert str(info.functions[ones.name]).startswith(f"{ones.name}: 2 entries, ")
    assert repr(ones.cache_info()).endswith("newest just now>")


def test_info_html_is_a_table_with_a_row_per_function_and_a_total(filled):
    cache, ones = filled
    table = parsed(cache.info()._repr_html_())
    assert table.find("caption").text == f"cachelib cache at {cache.location}"
    assert [c.text for c in table.find("thead/tr")] == ["function", "entries", "size", "hits", "misses",
                                                         "saved", "oldest", "newest"]
    [row] = cells(table)
    assert row[:2] == [ones.name, "2"] and row[3:5] == ["1", "2"] and row[6:] == ["just now", "just now"]
    assert re.fullmatch(r"[\d.]+ (B|KiB)", row[2]), row
    assert cells(table, "tfoot")[0][:2] == ["total", "2"]
    assert "&lt;b&gt;&amp;c" in cache.info()._repr_html_()


def test_cache_and_function_html_show_their_options(filled):
    cache, ones = filled
    fields = dict(cells(parsed(cache._repr_html_())))
    assert fields["location"] == cache.location
    assert fields["compress"] == "zstd level 3"
    assert fields["bytes_limit"] == "1.0 GiB"
    assert fields["functions"] == ones.name
    function = dict(cells(parsed(ones._repr_html_())))
    assert function["function"] == ones.name
    assert function["ignore"] == "verbose"
    assert function["mmap_mode"] == "none (loaded into memory)"
    assert function["stored"].startswith("2 entries, ")


def test_explain_is_text_and_a_table(filled):
    _, ones = filled
    why = ones.explain(20)
    assert why == "argument `n` changed"
    assert cells(parsed(why._repr_html_())) == [["argument `n` changed"]]
    assert ones.explain(10) == "the call hits: its entry is stored"


def test_a_cache_without_location_shows_itself(tmp_path):
    fields = dict(cells(parsed(cachelib.Cache(None)._repr_html_())))
    assert fields["location"] == "none: functions just call"
    memoized = cachelib.Cache(None).memoize(len)
    assert dict(cells(parsed(memoized._repr_html_())))["cache"] == "none: calls compute"
