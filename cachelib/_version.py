"""The version of cachelib, read by setup.cfg and re-exported by the package."""

__version__ = "0.2.0"
