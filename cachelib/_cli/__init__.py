"""The command line: ``python -m cachelib`` and the ``cachelib`` console script."""

from .main import build_parser, main

__all__ = ["build_parser", "main"]
