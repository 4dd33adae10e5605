"""The file format: the raw stream of records (writing, reading, ``dump``/``load``), dtypes and digests.

``rebuild_array`` is the global every stored pickle names, as ``cachelib._format.rebuild_array``
(``docs/FORMAT.rst``): that name stays importable here whatever module defines it.
"""

from .records import rebuild_array

__all__ = ["rebuild_array"]
