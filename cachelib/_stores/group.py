"""A location a group shares: one tree per member, read as one, and one tree of locks.

Rule: nothing of a member's can be removed, renamed or replaced by another member,
whoever made which directory, because each member's files live in a tree only that
member can write::

    <location>/                   the location: root's (or the user's), the group's, 3770; its tags
    <location>/.member-<uid>/...  one member's entries, markers, statistics: 2750 / 0640, all the member's
    <location>/.shared/...        lock files and leases: 3770 / 0640, any member's

The sticky bit of a shared directory binds everyone but the directory's owner, so
no object that matters for correctness sits in one a member owns: the location is
root's (or the trusted preparer's), and a member's tree is only that member's
(``_stores.trust.layer``: every directory and file in it must belong to the member
whose uid names it, and be writable by nobody else). A write goes to the writer's
own tree; a read looks in the reader's own tree first, then in the other members'
(their files are foreign: signed, rebuilt as plain data only), and a key of one
segment also at the location itself (its tags); listing is the union; deleting
removes only the user's own objects. Locks and leases only save work, so they live
in the one tree every member writes, where a member owning a directory can at worst
make another compute a call twice or wait up to ``lock_timeout``.
"""

from __future__ import annotations

import builtins
import contextlib
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .._errors import CacheError
from .base import ItemInfo, KeyLock, Probe, Readable, Store, Writer, check_key
from .local import LocalStore
from .trust import SHARED, layer

__all__ = ["GroupStore"]

_MEMBER = re.compile(r"^\.member-(\d+)$")
_SHARED_TREE = ".shared"
_RESCAN = 1.0  # seconds: how stale the list of members' trees may be when a read misses


class GroupStore(LocalStore):
    """A local directory a group shares (``Cache(location, share="group")``): see the module docstring."""

    def __init__(self, location: str | os.PathLike[str], *, fsync: bool | str = "background") -> None:
        super().__init__(location, share="group", fsync=fsync)
        self._uid = -1
        self._own: LocalStore = self  # the trees, made by _members
        self._shared: LocalStore = self
        self._others: dict[int, LocalStore] = {}
        self._scanned = float("-inf")

    def __repr__(self) -> str:
        return f"GroupStore({self.url!r})"

    # -- the trees ---------------------------------------------------------------------------

    def _members(self) -> LocalStore:
        """Return the user's own tree (made anew after a change of user, as in a forked child)."""
        uid = os.geteuid()
        if uid != self._uid:
            self._uid = uid
            self._own = LocalStore.tree(self, f".member-{uid}", layer(uid))
            self._shared = LocalStore.tree(self, _SHARED_TREE, SHARED)
            self._others = {}
            self._scanned = float("-inf")
        return self._own

    def _other_trees(self, rescan: bool) -> builtins.list[LocalStore]:
        """The other members' trees, found again if ``rescan`` and the last look is a second old."""
        self._members()
        if rescan and time.monotonic() - self._scanned > _RESCAN:
            self._scanned = time.monotonic()
            found: dict[int, LocalStore] = {}
            with contextlib.suppress(KeyError, OSError), self._root_fd(False) as root, \
                    os.scandir(root) as entries:
                for entry in entries:
                    match = _MEMBER.match(entry.name)
                    uid = int(match.group(1)) if match else self._uid
                    if uid != self._uid and entry.is_dir(follow_symlinks=False):
                        found[uid] = self._others.get(uid) or LocalStore.tree(self, entry.name, layer(uid))
            self._others = found
        return list(self._others.values())

    def _readers(self, key: str) -> Iterator[tuple[LocalStore | None, bool]]:
        """The trees to read ``key`` from, in order, each with whether it is the user's own.

        None is the location itself, for a key of one segment.
        """
        yield self._members(), True
        known = self._other_trees(False)
        for tree in known:
            yield tree, False
        for tree in self._other_trees(True):  # a member who arrived since the last look
            if tree not in known:
                yield tree, False
        if "/" not in key:
            yield None, False

    def _read(self, key: str, operation: str) -> Any:
        """``operation`` on the first tree that has ``key``; ``KeyError`` if none has it.

        Another member's tree that cannot be used (a directory not as it must be) is passed over.
        """
        check_key(key)
        for tree, own in self._readers(key):
            method = getattr(super(), operation) if tree is None else getattr(tree, operation)
            try:
                return method(key)
            except KeyError:
                continue
            except (CacheError, OSError):
                if own:
                    raise
                continue
        raise KeyError(key)

    @property
    def shared(self) -> Store:
        """Where leases live: the tree every member writes."""
        self._members()
        return self._shared

    # -- the store interface --------------------------------------------------------------------

    def probe(self, key: str) -> Probe | None:
        return self._read(key, "probe")  # type: ignore[no-any-return]

    def open(self, key: str) -> Readable:
        return self._read(key, "open")  # type: ignore[no-any-return]

    def read_bytes(self, key: str, limit: int) -> bytes:
        check_key(key)
        for tree, own in self._readers(key):
            try:
                return super().read_bytes(key, limit) if tree is None else tree.read_bytes(key, limit)
            except KeyError:
                continue
            except (CacheError, OSError):
                if own:
                    raise
        raise KeyError(key)

    def exists(self, key: str) -> bool:
        check_key(key)
        for tree, _ in self._readers(key):
            with contextlib.suppress(CacheError, OSError):
                if super().exists(key) if tree is None else tree.exists(key):
                    return True
        return False

    def touch(self, key: str) -> None:
        self._members().touch(key)

    @contextlib.contextmanager
    def write(self, key: str, *, exclusive: bool = False, keep: bool = False) -> Iterator[Writer]:
        with self._members().write(key, exclusive=exclusive, keep=keep) as writer:
            yield writer

    def delete(self, key: str) -> bool:
        return self._members().delete(key)

    def list_dirs(self, prefix: str) -> builtins.list[str]:
        names = set(self._members().list_dirs(prefix))
        for tree in [*self._other_trees(True), self._shared]:
            with contextlib.suppress(CacheError, OSError):
                names.update(tree.list_dirs(prefix))
        return sorted(names)

    def list(self, prefix: str) -> Iterator[ItemInfo]:
        yield from self._members().list(prefix)
        for tree in [*self._other_trees(True), self._shared]:
            with contextlib.suppress(CacheError, OSError):
                yield from tree.list(prefix)

    def lock(self, key: str) -> KeyLock | None:
        self._members()
        return self._shared.lock(key)

    def locate(self, key: str) -> str:
        return str(Path(self._members().url) / key)
