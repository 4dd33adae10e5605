"""The names of everything cachelib keeps in a store, and the test of what is cachelib's.

Rule: this is the only module that builds or parses store keys; every other module
of every layer asks it. A location holds::

    .cachelib                               the location's marker (with CACHEDIR.TAG, .gitignore)
    .size                                   the total the last scan found (``budget``)
    <name>-<12 hex>/.cachelib-function      a function's marker (JSON: its readable name)
    <name>-<12 hex>/<2 hex>/<32 hex>.cl     an entry (``envelope``), sharded by key prefix
    <name>-<12 hex>/<2 hex>/<32 hex>.lock   its lock while it is computed
    <name>-<12 hex>/stats/<writer>.counts   a process's call counts (``stats``) ...
    <name>-<12 hex>/stats/merged-<owner>.json   ... folded into one object per user,
    <name>-<12 hex>/stats/merge-<owner>.lock    under this lock

Only what ``is_ours`` accepts (in a marked directory) is ever deleted; a store's
temporary objects are judged by the name they were to become.
"""

from __future__ import annotations

import re

__all__ = [
    "CACHEDIR_TAG",
    "FUNCTION_MARKER",
    "LOCATION_MARKER",
    "SIZE_RECORD",
    "counts",
    "entry",
    "entry_key",
    "function_marker",
    "is_counts",
    "is_entry",
    "is_lock",
    "is_namespace",
    "is_ours",
    "lock",
    "merge_lock",
    "merged",
    "merged_owner",
    "stats",
]

LOCATION_MARKER = ".cachelib"
CACHEDIR_TAG = "CACHEDIR.TAG"  # also the marker of locations made before ``.cachelib`` was
FUNCTION_MARKER = ".cachelib-function"
SIZE_RECORD = ".size"  # "<bytes> <unix time>": the total the last scan found
_ENTRY = ".cl"
_LOCK = ".lock"
_COUNTS = ".counts"
_STATS = "stats"

_NAMESPACE = re.compile(r"^[A-Za-z0-9_.-]{1,100}-[0-9a-f]{12}$")
_ENTRY_KEY = re.compile(r"^[0-9a-f]{2}/([0-9a-f]{32})\.cl$")
_OURS = re.compile(
    r"^(?:[0-9a-f]{2}/[0-9a-f]{32}\.(?:cl|lock)"
    r"|stats/[A-Za-z0-9_.-]+\.(?:counts|json|lock))$"
)
_MERGED = re.compile(r"^merged-([A-Za-z0-9_.-]+)\.json$")


def is_namespace(name: str) -> bool:
    """True for a name cachelib gives function directories."""
    return bool(_NAMESPACE.match(name))


def function_marker(namespace: str) -> str:
    """The marker of a function's directory."""
    return f"{namespace}/{FUNCTION_MARKER}"


def entry(namespace: str, key: str) -> str:
    """The entry of ``key`` (32 hex digits) of a function."""
    return f"{namespace}/{key[:2]}/{key}{_ENTRY}"


def lock(namespace: str, key: str) -> str:
    """The lock held while the entry of ``key`` is computed."""
    return f"{namespace}/{key[:2]}/{key}{_LOCK}"


def entry_key(namespace: str, name: str) -> str | None:
    """The key of the entry named ``name`` (a whole store key under ``namespace``), or None."""
    match = _ENTRY_KEY.match(name[len(namespace) + 1 :]) if name.startswith(namespace + "/") else None
    return match.group(1) if match else None


def stats(namespace: str) -> str:
    """The directory of a function's call statistics."""
    return f"{namespace}/{_STATS}"


def counts(namespace: str, writer: str) -> str:
    """The counts object a process (``writer``: host, pid, token, sequence) writes."""
    return f"{namespace}/{_STATS}/{writer}{_COUNTS}"


def merged(namespace: str, owner: str) -> str:
    """The object one user's counts are folded into."""
    return f"{namespace}/{_STATS}/merged-{owner}.json"


def merge_lock(namespace: str, owner: str) -> str:
    """The lock one user folds counts under."""
    return f"{namespace}/{_STATS}/merge-{owner}.lock"


def merged_owner(name: str) -> str | None:
    """The owner of a merged-counts object (its last segment ``name``), or None."""
    match = _MERGED.match(name)
    return match.group(1) if match else None


def is_counts(name: str) -> bool:
    """True for the last segment of a counts object."""
    return name.endswith(_COUNTS)


def is_entry(name: str) -> bool:
    """True for the key of an entry."""
    return name.endswith(_ENTRY)


def is_lock(name: str) -> bool:
    """True for the key of a lock (of an entry or of the statistics)."""
    return name.endswith(_LOCK)


def is_ours(key: str) -> bool:
    """True for a key with the shape of something cachelib puts in a function's directory."""
    namespace, _, relative = key.partition("/")
    return is_namespace(namespace) and bool(_OURS.match(relative))
