"""Who may have written a directory or a file of a local cache: the trust rules.

Rule: pure functions of ``os.stat`` results, one per question, so that every place
that opens something asks the same one, under the ``Rules`` of the tree it is in:

* ``PRIVATE`` (the default): everything must be the user's own (or root's) and
  writable by nobody else.
* ``layer(uid)`` (group mode): one member's tree. Everything in it must belong to
  that member (or root), readable by the group and writable by nobody else, so that
  no other member can add, replace, rename or remove anything in it, whoever made
  what. A member's own layer holds its own files; another member's files are
  "foreign": usable only when signed, and rebuilt only as plain data
  (``_format.unpickling``).
* ``SHARED`` (group mode): the location itself and the tree of locks. Directories
  may be group-writable only when they are setgid and sticky and belong to the
  location's group; files are never group- or world-writable. The location must be
  the user's or root's. What sits there only coordinates (a lock saves work); no
  result is ever read from it.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass

from .._errors import CorruptFileError

__all__ = ["PRIVATE", "SHARED", "Rules", "Verdict", "judge_directory", "judge_file", "layer", "not_followed"]

_SHARED_DIRECTORY = stat.S_ISGID | stat.S_ISVTX


@dataclass(frozen=True)
class Rules:
    """What the directories and files of one tree of a local store must be, and are made as."""

    kind: str  # "private", "layer" or "shared"
    directory_mode: int
    file_mode: int
    owner: int | None = None  # a layer's member

    @property
    def group_mode(self) -> bool:
        """True for the trees of a location a group shares."""
        return self.kind != "private"


PRIVATE = Rules("private", 0o700, 0o600)
SHARED = Rules("shared", 0o3770, 0o640)


def layer(uid: int) -> Rules:
    """The rules of the tree of the member ``uid`` in a location a group shares."""
    return Rules("layer", 0o2750, 0o640, uid)


@dataclass(frozen=True)
class Verdict:
    """A judgement: ``reason`` is None when the object may be used; ``own`` when it is ours."""

    reason: str | None
    own: bool = True


def _owner_is_trusted(uid: int) -> bool:
    return uid in (os.geteuid(), 0)


def judge_directory(st: os.stat_result, rules: Rules, group: int | None = None) -> Verdict:
    """Decide whether a directory of a cache may be used.

    ``group`` is the location's group, which the shared directories below it must
    share in group mode; None judges the location itself (or a tree's top), which
    must be the user's or root's (a layer's: its member's or root's).
    """
    if not stat.S_ISDIR(st.st_mode):
        return Verdict("it is not a directory")
    mode = st.st_mode
    if mode & stat.S_IWOTH:
        return Verdict("it is writable by every user")
    own = _owner_is_trusted(st.st_uid)
    if rules.kind == "layer":
        if st.st_uid not in (rules.owner, 0):
            return Verdict(f"it belongs to uid {st.st_uid}, not to the member (uid {rules.owner}) whose "
                           "files it holds", own=own)
        if mode & stat.S_IWGRP:
            return Verdict("it is writable by its group inside a member's own files (chmod 2750)", own=own)
        return Verdict(None, own=own)
    if rules.kind == "private":
        if not own:
            return Verdict(f"it belongs to another user (uid {st.st_uid})", own=False)
        if mode & stat.S_IWGRP:
            return Verdict("it is writable by its group; pass share='group' to share it (see the README)")
        return Verdict(None)
    if group is not None and st.st_gid != group:
        return Verdict(f"it belongs to group {st.st_gid}, not the location's group {group}", own=own)
    shared_bits = mode & _SHARED_DIRECTORY == _SHARED_DIRECTORY
    if mode & stat.S_IWGRP and not shared_bits:
        return Verdict("it is group-writable without the setgid and sticky bits (chmod 3770)", own=own)
    if not own and group is None:
        return Verdict(f"the location belongs to another user (uid {st.st_uid}); it must be yours or root's")
    if not own and not (mode & stat.S_IWGRP and shared_bits):
        return Verdict(f"it belongs to another user (uid {st.st_uid}), not as a shared directory", own=False)
    return Verdict(None, own=own)


def judge_file(st: os.stat_result, rules: Rules) -> Verdict:
    """Decide whether a file of a cache may be read, and whether it is the user's own."""
    if not stat.S_ISREG(st.st_mode):
        return Verdict("it is not a regular file")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return Verdict("it is writable by other users")
    if _owner_is_trusted(st.st_uid):
        return Verdict(None)
    if rules.kind == "layer" and st.st_uid != rules.owner:
        return Verdict(f"it belongs to uid {st.st_uid}, in the files of uid {rules.owner}", own=False)
    if rules.kind == "private":
        return Verdict(f"it belongs to another user (uid {st.st_uid})", own=False)
    return Verdict(None, own=False)


def not_followed(path: str, exc: OSError) -> CorruptFileError:
    """The error for an object that could not be opened without following a link (or at all)."""
    if exc.errno == errno.ELOOP:
        return CorruptFileError(f"{path!r} is a symbolic link; cachelib never follows links inside a cache")
    return CorruptFileError(f"{path!r} cannot be opened: {exc.strerror or exc}")
