"""Write this cachelib's golden files: golden_value() raw and with every registered codec.

Usage: ``python tests/data/make_golden.py [--force]``. Files go next to this script as
``cachelib_<version>_format<FORMAT_VERSION>.<ext>`` (pkl for raw, else the codec's
extension). Existing files are kept unless --force: a committed golden file records
what that version wrote. Commit the new files.
"""

from __future__ import annotations

import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from golden_value import RAW_EXTENSION, golden_name, golden_value  # noqa: E402

import cachelib  # noqa: E402
from cachelib._format import FORMAT_VERSION  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="rewrite files that exist")
    args = parser.parse_args(argv)
    targets = [(RAW_EXTENSION, False)]
    targets += [(c.extension.lstrip("."), name) for name, c in sorted(cachelib.compressors.items())]
    for extension, compress in targets:
        path = os.path.join(HERE, golden_name(cachelib.__version__, FORMAT_VERSION, extension))
        if os.path.exists(path) and not args.force:
            print(f"kept    {os.path.relpath(path)}")
            continue
        cachelib.dump(golden_value(), path, compress=compress)
        assert cachelib.load(path) is not None
        print(f"wrote   {os.path.relpath(path)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
