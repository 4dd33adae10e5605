"""``import cachelib`` is light: the optional parts load when first used, and then work.

A fresh interpreter imports numpy, then cachelib, and reports which modules cachelib loaded: none of the
parts a given program may never use (remote stores, the command line, arrow, the codecs
other than zlib and zstd, signing, notebooks, multiprocessing's hooks, file locks).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

# Loaded by their first use, never by the import.
OPTIONAL = [
    "asyncio", "bz2", "cachelib._cli", "decimal", "filelock", "fractions", "fsspec", "gzip", "hmac",
    "html", "lzma", "multiprocessing", "pprint", "pyarrow", "s3fs", "socket", "ssl", "subprocess",
]

# numpy comes first, as in a numpy program: what it loads itself (on Python 3.10, platform and
# subprocess) is not cachelib's doing.
REPORT = """
import json, sys
import numpy
before = set(sys.modules)
{use}
print(json.dumps(sorted(name for name in set(sys.modules) - before if name.split(".")[0] in {optional!r}
                        or name.startswith("cachelib._cli"))))
"""


def _loaded_by(use: str = "", imports: str = "import cachelib") -> set[str]:
    """The optional modules loaded in a fresh interpreter by ``imports`` and ``use``."""
    code = REPORT.format(use=imports + "\n" + use, optional={name.split(".")[0] for name in OPTIONAL})
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 0, done.stderr
    loaded = set(json.loads(done.stdout.strip().splitlines()[-1]))
    return {name for name in OPTIONAL if name in loaded or any(m.startswith(name + ".") for m in loaded)}


def test_import_loads_no_optional_part():
    assert _loaded_by() == set()


def test_a_memoized_call_and_a_hit_load_no_optional_part(tmp_path):
    use = f"""
cache = cachelib.Cache({str(tmp_path / "cache")!r})
square = cache.memoize(lambda x: x * x)
assert square(3) == 9 and square(3) == 9
"""
    # The miss's lock, with what filelock loads itself: the one part a store needs.
    assert _loaded_by(use) <= {"filelock"} | _loaded_by(imports="import filelock")


@pytest.mark.parametrize(("codec", "module"),
                         [("gzip", "gzip"), ("bz2", "bz2"), ("xz", "lzma"), ("lzma", "lzma")])
def test_a_codec_loads_its_module_on_first_use_and_round_trips(tmp_path, codec, module):
    use = f"""
import numpy as np
path = {str(tmp_path / "value")!r}
cachelib.dump(np.arange(1000), path, compress={codec!r})
assert (cachelib.load(path) == np.arange(1000)).all()
"""
    assert module in _loaded_by(use)


def test_decimal_and_fraction_globals_are_plain_values_and_keyed_by_value(cache):
    """Named, not imported, by the key's walk: still plain values, an edit still a miss."""
    import decimal
    import fractions

    from cachelib._keys import reach

    assert reach._is_plain(decimal.Decimal("1.5")) and reach._is_plain(fractions.Fraction(1, 3))

    class Impostor:  # same names, another class: not plain
        pass

    Impostor.__module__, Impostor.__qualname__, Impostor.__name__ = "decimal", "Decimal", "Decimal"
    assert not reach._is_plain(Impostor())

    namespace = {"RATE": decimal.Decimal("1.5"), "PART": fractions.Fraction(1, 3)}
    exec("def scaled(x):\n    return float(x * RATE) * float(PART)\n", namespace)  # a module's globals
    scaled = cache.memoize(namespace["scaled"])
    assert scaled(2) == 1.0
    namespace["RATE"] = decimal.Decimal("3")
    assert scaled(2) == 2.0  # the edit is seen: a miss, not the stale 1.0
    namespace["PART"] = fractions.Fraction(1, 6)
    assert scaled(2) == 1.0 and not scaled.check_call_in_cache(4)
