"""Which store a location names, and how it is opened: a local directory, or an fsspec URL.

Rule: one decision, used by ``Cache`` and the command line alike. A path, or a
``file://`` URL, is a local directory (``LocalStore``: descriptors, trust rules,
mmap; ``GroupStore`` for a group's); any other ``protocol://`` is an object on an fsspec
filesystem (``FsspecStore``), with its ``storage_options``. How to open it travels
as one resolved ``StoreOptions``; group mode is what the caller says, never guessed.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from typing import Any

from .._errors import InvalidOptionError
from .base import Store
from .durability import checked_fsync_mode
from .group import GroupStore
from .local import LocalStore

__all__ = ["SHARE_MODES", "StoreOptions", "is_url", "open_store"]

SHARE_MODES = (None, "group")
_URL = re.compile(r"^(?P<protocol>[A-Za-z][A-Za-z0-9+.-]*)://")


@dataclasses.dataclass(frozen=True)
class StoreOptions:
    """How a location is opened: its filesystem's options (URLs), group sharing and durability (paths)."""

    storage_options: Mapping[str, Any] | None = None
    share: str | None = None
    fsync: str = "background"

    @classmethod
    def resolved(cls, storage_options: Mapping[str, Any] | None, share: Any, fsync: Any) -> StoreOptions:
        """Check what a user gave (``fsync`` True/False mean "always"/"never"; None is the default)."""
        if share not in SHARE_MODES:
            raise InvalidOptionError(f"share must be None or 'group', got {share!r}")
        return cls(storage_options, share, checked_fsync_mode("background" if fsync is None else fsync))


def is_url(location: Any) -> bool:
    """True for ``protocol://...`` other than ``file://`` (a location on an fsspec filesystem)."""
    match = _URL.match(location) if isinstance(location, str) else None
    return match is not None and match.group("protocol").lower() != "file"


def open_store(location: str | os.PathLike[str], options: StoreOptions = StoreOptions()) -> Store:
    """Return the store of ``location``: ``FsspecStore`` for a URL, else ``LocalStore``."""
    if is_url(location):
        if options.share is not None:
            raise InvalidOptionError(
                "share='group' is for local directories; on an object store, grant access with the "
                "store's own permissions and sign entries with secret=..."
            )
        from .fsspec_store import FsspecStore

        return FsspecStore(str(location), dict(options.storage_options or {}))
    if options.storage_options:
        raise InvalidOptionError(
            f"storage_options are for URLs such as 's3://bucket/prefix', not the directory {location!r}"
        )
    path = os.fspath(location)
    if isinstance(path, str) and _URL.match(path):
        path = path[len("file://"):]
    if options.share == "group":
        return GroupStore(path, fsync=options.fsync)
    return LocalStore(path, fsync=options.fsync)
