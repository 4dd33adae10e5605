"""Which store a location names: a local directory, or an fsspec URL.

Rule: one decision, used by ``Cache`` and the command line alike. A path, or a
``file://`` URL, is a local directory (``LocalStore``: descriptors, trust rules,
group sharing, mmap); any other ``protocol://`` is an object on an fsspec
filesystem (``FsspecStore``), with its ``storage_options``.
"""

from __future__ import annotations

import os
import re
from typing import Any

from .._errors import InvalidOptionError
from .base import Store
from .local import LocalStore

__all__ = ["is_url", "open_store"]

_URL = re.compile(r"^(?P<protocol>[A-Za-z][A-Za-z0-9+.-]*)://")


def is_url(location: Any) -> bool:
    """True for ``protocol://...`` other than ``file://`` (a location on an fsspec filesystem)."""
    match = _URL.match(location) if isinstance(location, str) else None
    return match is not None and match.group("protocol").lower() != "file"


def open_store(
    location: str | os.PathLike[str],
    *,
    storage_options: dict[str, Any] | None = None,
    share: str | None = None,
    fsync: bool | str = "background",
) -> Store:
    """Return the store of ``location``: ``FsspecStore`` for a URL, else ``LocalStore``."""
    if is_url(location):
        if share is not None:
            raise InvalidOptionError(
                "share='group' is for local directories; on an object store, grant access with the "
                "store's own permissions and sign entries with secret=..."
            )
        from .fsspec_store import FsspecStore

        return FsspecStore(str(location), storage_options)
    if storage_options:
        raise InvalidOptionError(
            f"storage_options are for URLs such as 's3://bucket/prefix', not the directory {location!r}"
        )
    path = os.fspath(location)
    if isinstance(path, str) and _URL.match(path):
        path = path[len("file://"):]
    return LocalStore(path, share=share, fsync=fsync)
