"""``python -m cachelib``: the command line (see ``cachelib._cli``)."""

import sys

from ._cli.main import main

if __name__ == "__main__":
    sys.exit(main())
