"""Other users: a squatted location, a group member racing signed hits, planted lock links, modes.

Every attack runs as a real Unix user in a forked child that dropped root (``users``):
mallory, in no group of the victim's, and bob, alice's fellow member of group ``lab``
who does not hold the cache's secret. Races repeat for seconds, timed with inotify;
the verdict is deterministic: the marker file a payload would create stays absent,
every result the victim gets is the right one, and files outside the cache keep their
bytes. The attacks that plant code or forged values first show that their payload
works where nothing protects it, so that a pass means the attack was refused, not that
it was broken.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import random
import shutil
import stat
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _system import (
    IN_OPEN,
    Inotify,
    User,
    Users,
    arena,
    cli_here,
    file_state,
    owned_dir,
    run_as,
    run_with_timeout,
    start_child,
    users,
    wait_for_new_statistics,
    wait_until,
)
from _victims import computations, digest, large, memoized, plain, slow, square
from helpers import entry_files, new_entry, patch_record, patched, records_in, statistics_files

import cachelib
from cachelib._entries import stats as _stats
from cachelib._entries.names import entry as entry_name

__all__ = ["arena", "users"]  # the fixtures, imported so that the tests here can use them

pytestmark = pytest.mark.timeout(240)

SECRET = os.urandom(32)
GROUP = {"share": "group", "secret": SECRET}


class _System:
    """Pickles as ``os.system(command)``: what an attacker plants in an entry."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> Any:
        return os.system, (self.command,)


def evil_pickle(marker: Path, length: int) -> bytes:
    """A pickle of exactly ``length`` bytes that runs ``touch marker`` when it is loaded."""
    payload = pickle.dumps(_System(f"touch {marker}"), protocol=5)
    assert len(payload) <= length, (len(payload), length)
    return payload + b"N" * (length - len(payload))  # never read: the pickle stops before


def code_writes(data: bytes, marker: Path) -> list[tuple[int, bytes]]:
    """The writes that turn an entry's first pickle record into ``evil_pickle`` (checksum fixed)."""
    first = next(r for r in records_in(data) if r.kind == "P")
    return patch_record(data, first, evil_pickle(marker, first.length))


def data_writes(data: bytes) -> list[tuple[int, bytes]]:
    """The writes that put 666 in the first 4 KiB of an entry's largest array (checksum fixed)."""
    array = max((r for r in records_in(data) if r.kind == "A"), key=lambda r: r.length)
    return patch_record(data, array, (666).to_bytes(8, "little") * 512)


def _call(location: str, function: str, x: int, log: str, **options: Any) -> str:
    return digest(memoized(location, globals()[function], **options)(x, log=log))


def _load(path: str) -> Any:
    return cachelib.load(path)


def _makedirs(path: Path, mode: int) -> None:
    """Make the missing directories of ``path`` with exactly ``mode``."""
    missing = []
    while not path.exists():
        missing.append(path)
        path = path.parent
    for directory in reversed(missing):
        directory.mkdir()
        os.chmod(directory, mode)


def _publish(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Put ``data`` at ``path`` (in this user's own files of a group location) as its own file, by rename."""
    _makedirs(path.parent, 0o2750)
    temporary = path.parent / f".{path.name}.planted"
    temporary.write_bytes(data)
    os.chmod(temporary, mode)
    os.replace(temporary, path)


@pytest.fixture
def lab(arena: Path, users: Users) -> Path:
    """A location an administrator prepared for group lab: root:lab, 3770 (the README's recipe)."""
    return owned_dir(arena / "lab", 0o3770, 0, users.lab)


@pytest.fixture
def logs(arena: Path) -> Path:
    """Where each user's computations are logged (``logs/<name>.log``)."""
    return owned_dir(arena / "logs", 0o1777)


def log_of(logs: Path, user: User) -> str:
    return str(logs / f"{user.name}.log")


def files_of(location: Path, user: User) -> Path:
    """The tree of ``user``'s own files in a location a group shares."""
    return location / f".member-{user.uid}"


def as_member(location: Path, user: User, path: Path) -> Path:
    """Where the file at ``path`` (in any member's tree of ``location``) sits in ``user``'s tree."""
    relative = path.relative_to(location)
    return files_of(location, user).joinpath(*relative.parts[1:])


# --- a squatted location ----------------------------------------------------------------------


def _squat(location: str, scratch: str, markers: list[str], mode: int) -> None:
    """As mallory: make a cache of her own, copy it to the victim's path, plant code in its entries."""
    memoized(scratch, square)(5)
    shutil.copytree(scratch, location)
    for entry in entry_files(Path(location)):
        data = entry.read_bytes()
        entry.write_bytes(patched(data, code_writes(data, Path(markers[0]))))
        control = Path(markers[1]).with_suffix(".cl")
        control.write_bytes(patched(data, code_writes(data, Path(markers[1]))))
        os.chmod(control, 0o644)
    for directory, _, names in os.walk(location):
        os.chmod(directory, 0o777)
        for name in names:
            os.chmod(os.path.join(directory, name), 0o666)
    os.chmod(location, mode)


@pytest.mark.parametrize("strict", [False, True], ids=["warn", "strict"])
@pytest.mark.parametrize("mode", [0o777, 0o1777, 0o755], ids=oct)
def test_a_squatted_location_runs_nothing_of_the_squatters(
    arena: Path, users: Users, logs: Path, mode: int, strict: bool
) -> None:
    """A location another user made first (planted entries and all) is not used: no code runs."""
    location, marker, control = arena / "projY-cache", arena / "pwned-v", arena / "pwned-c"
    run_as(users.mallory, _squat, str(location), str(arena / "mallory-scratch"), [str(marker), str(control)],
           mode, umask=0).result()
    assert entry_files(location), "nothing was planted"
    run_as(users.mallory, _load, str(control.with_suffix(".cl")))  # the control: the payload is live
    assert control.exists(), "the planted payload does not run where nothing protects it"
    options = {"strict": True} if strict else {}
    outcome = run_as(users.alice, _call, str(location), "square", 5, log_of(logs, users.alice), **options)
    assert not marker.exists(), "the squatter's code ran as the victim"
    if strict:
        assert isinstance(outcome.error, cachelib.UnsafeLocationError), outcome.error
        assert isinstance(outcome.error, PermissionError)
    else:
        assert outcome.result() == digest(square(5))
        assert outcome.cache_warnings(), "an unusable location is said once, with a CacheWarning"
        assert computations(log_of(logs, users.alice)) == ["square 5"]


def _loosen(location: str, entry: str) -> None:
    """As alice: open her location to everyone by mistake, directories her cache walks into included."""
    os.chmod(location, 0o755)
    os.chmod(Path(entry).parent.parent, 0o777)
    os.chmod(Path(entry).parent, 0o777)


def _replace(entry: str, scratch: str, marker: str) -> None:
    """As mallory: replace a reachable entry by her own with code in it (the path from a scratch cache)."""
    memoized(scratch, square)(5)
    data = entry_files(Path(scratch))[0].read_bytes()
    os.unlink(entry)
    Path(entry).write_bytes(patched(data, code_writes(data, Path(marker))))
    os.chmod(entry, 0o644)


def test_a_directory_others_can_write_inside_ones_own_location_is_not_used(
    arena: Path, users: Users, logs: Path
) -> None:
    """Every directory cachelib walks into is checked, not only the location: no planted code runs."""
    location, marker = arena / "mine", arena / "pwned"
    log = log_of(logs, users.alice)
    run_as(users.alice, _call, str(location), "square", 5, log).result()
    entry = entry_files(location)[0]
    run_as(users.alice, _loosen, str(location), str(entry)).result()
    run_as(users.mallory, _replace, str(entry), str(arena / "scratch"), str(marker), umask=0).result()
    outcome = run_as(users.alice, _call, str(location), "square", 5, log)
    assert outcome.result() == digest(square(5))
    outcome.cache_warnings()
    assert not marker.exists(), "mallory's code ran as alice"
    assert computations(log) == ["square 5", "square 5"]


# --- signed entries raced by a member without the secret -----------------------------------------


def _spin(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def _rewrite_in_place(entry: str, forged: list[tuple[int, bytes]], seconds: float) -> int:
    """As bob, owner of the file at ``entry``: right after each open, write the forgery, then undo it."""
    original = [(offset, Path(entry).read_bytes()[offset:offset + len(chunk)]) for offset, chunk in forged]
    notify = Inotify()
    notify.watch(entry, IN_OPEN)
    fd = os.open(entry, os.O_WRONLY)
    rng = random.Random(1)
    attempts = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not notify.wait(0.05):
            continue
        _spin(rng.uniform(0, 0.003))
        for offset, chunk in forged:
            os.pwrite(fd, chunk, offset)
        _spin(0.002)
        for offset, chunk in original:
            os.pwrite(fd, chunk, offset)
        attempts += 1
    os.close(fd)
    notify.close()
    return attempts


def _swap_by_rename(entry: str, forgery: bytes, seconds: float) -> int:
    """As bob, owner of the file at ``entry``: right after each open, rename a forgery over it, then back."""
    path = Path(entry)
    original = path.read_bytes()
    notify = Inotify()
    notify.watch(path.parent, IN_OPEN)
    rng = random.Random(2)
    forged_copy, original_copy = path.parent / ".bob-forged", path.parent / ".bob-original"
    attempts = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        forged_copy.write_bytes(forgery)
        original_copy.write_bytes(original)
        for copy in (forged_copy, original_copy):
            os.chmod(copy, 0o644)
        while time.monotonic() < deadline and not any(name == path.name for *_, name in notify.wait(0.05)):
            pass
        _spin(rng.uniform(0, 0.003))
        os.replace(forged_copy, path)
        _spin(0.002)
        os.replace(original_copy, path)
        attempts += 1
    notify.close()
    return attempts


def _hit_repeatedly(location: str, log: str, seconds: float, mmap_mode: str | None,
                    own_entry: str) -> tuple[int, int]:
    """Hit ``large(1)`` again and again; drop the victim's own copy each time it recomputes and
    stores one, so that every call reads the attacker's file (her own copy would be read first)."""
    f = memoized(location, large, mmap_mode=mmap_mode, **GROUP)
    expected = digest(large(1))
    calls = forged = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        forged += digest(f(1, log=log)) != expected
        calls += 1
        with contextlib.suppress(FileNotFoundError):
            os.unlink(own_entry)
    return calls, forged


def _store_large(location: str, log: str) -> None:
    cache = cachelib.Cache(location, **GROUP)
    cache.memoize(ignore=["log"])(large)(1, log=log)


def _clear(location: str, **options: Any) -> None:
    cachelib.Cache(location, **options).clear()


# Each case races for 5 s: signed entries refuse a flipped byte, a copy or another secret quickly in
# test_memoize (test_signed_entry_with_a_flipped_byte_is_refused_before_unpickling and the tests after it).
@pytest.mark.slow
@pytest.mark.parametrize(("attack", "payload", "mmap_mode"), [
    ("pwrite", "code", None), ("pwrite", "data", None), ("pwrite", "data", "r"),
    ("rename", "code", None), ("rename", "data", "r"),
])
def test_a_member_without_the_secret_racing_signed_hits_gets_nothing_through(
    arena: Path, users: Users, lab: Path, logs: Path, attack: str, payload: str, mmap_mode: str | None
) -> None:
    """Bob replays alice's signed entry as his own file and rewrites or swaps it during her hits.

    Between the check and the use of the bytes, the file changes under the reader
    hundreds of times: not once may code run or a forged value come back.
    """
    marker, control = arena / "pwned-v", arena / "pwned-c"
    alice_log = log_of(logs, users.alice)
    run_as(users.alice, _store_large, str(lab), alice_log, umask=0o002).result()
    entry = entry_files(lab)[0]
    data = entry.read_bytes()
    forged = code_writes(data, marker) if payload == "code" else data_writes(data)
    forgery = patched(data, forged)
    if payload == "code":  # the control: the same forgery, unsigned-style, runs its code
        control_copy = arena / "control.cl"
        control_copy.write_bytes(patched(data, code_writes(data, control)))
        os.chmod(control_copy, 0o644)
        run_as(users.mallory, _load, str(control_copy))
        assert control.exists(), "the forged pickle does not run where nothing protects it"
    else:  # the control: the forgery is a well-formed entry holding 666s
        copy = arena / "control.cl"
        copy.write_bytes(forgery)
        assert run_with_timeout(_load, str(copy)).result()["values"][0] == 666
    run_as(users.alice, _clear, str(lab), **GROUP).result()
    assert not entry.exists()
    # Bob then publishes the entry as his own (a replay: validly signed), in his own
    # files, where alice finds it when she has none: he owns that file and may
    # rewrite or replace it at will, so his attack can go on.
    alice_entry, entry = entry, as_member(lab, users.bob, entry)
    run_as(users.bob, _publish, entry, data, umask=0o002).result()

    seconds = 5.0
    victim = start_child(_hit_repeatedly, str(lab), alice_log, seconds, mmap_mode, str(alice_entry),
                         user=users.alice)
    if attack == "pwrite":
        attacker = start_child(_rewrite_in_place, str(entry), forged, seconds, user=users.bob)
    else:
        attacker = start_child(_swap_by_rename, str(entry), forgery, seconds, user=users.bob)
    attacked, hit = attacker.wait(seconds + 60), victim.wait(seconds + 60)
    calls, forged_results = hit.result()
    hit.cache_warnings()
    assert not marker.exists(), "bob's code ran as alice"
    assert forged_results == 0, f"{forged_results} of {calls} results were bob's forgery"
    assert attacked.result() > 20, "the attack did not get to race the victim's reads"
    assert calls > 20


# --- lock files ------------------------------------------------------------------------------


def _path_of(scratch: str, x: int) -> str:
    """The path of ``square(x)``'s entry relative to its location (from a scratch cache)."""
    memoized(scratch, square)(x)
    return str(entry_files(Path(scratch))[0].relative_to(scratch))


def _link(path: str, target: str) -> None:
    _makedirs(Path(path).parent, 0o3770)
    os.symlink(target, path)


@pytest.mark.parametrize("lock", ["file", "soft"])
def test_a_lock_link_a_member_plants_leaves_the_victims_file_alone(
    arena: Path, users: Users, lab: Path, logs: Path, lock: str
) -> None:
    """Bob links alice's next lock file to her thesis: her miss neither truncates nor waits on it."""
    home = owned_dir(arena / "alice-home", 0o700, users.alice.uid, users.alice.gid)
    thesis = home / "thesis.tex"
    thesis.write_bytes(b"three years of work\n")
    os.chown(thesis, users.alice.uid, users.alice.gid)
    os.chmod(thesis, 0o600)
    before = file_state(thesis)
    log = log_of(logs, users.alice)
    run_as(users.alice, _call, str(lab), "square", 1, log, umask=0o002, **GROUP).result()
    relative = run_as(users.alice, _path_of, str(arena / "scratch"), 2).result()
    lock_path = (lab / ".shared" / relative).with_suffix(".lock")
    run_as(users.bob, _link, str(lock_path), str(thesis), umask=0o002).result()
    outcome = run_as(users.alice, _call, str(lab), "square", 2, log, lock=lock, lock_timeout=600,
                     umask=0o002, timeout=60, **GROUP)
    assert outcome.result() == digest(square(2))
    outcome.cache_warnings()
    assert file_state(thesis) == before


def _hold(location: str, log: str, options: dict[str, Any]) -> None:
    cachelib.Cache(location, lock="soft", **options).memoize(ignore=["log", "delay"])(slow)(1, 60.0, log=log)


def _after_holder(location: str, log: str, options: dict[str, Any]) -> int:
    cache = cachelib.Cache(location, lock="soft", lock_timeout=120, **options)
    return int(cache.memoize(ignore=["log", "delay"])(slow)(1, 0.0, log=log))


@pytest.mark.parametrize("holder", ["alice", "bob"])
def test_a_killed_soft_lock_holder_does_not_make_the_next_caller_wait(
    arena: Path, users: Users, lab: Path, logs: Path, holder: str
) -> None:
    """A soft lock whose holder was killed is broken at once, not after lock_timeout (120 s here)."""
    holding = getattr(users, holder)
    child = start_child(_hold, str(lab), log_of(logs, holding), GROUP, user=holding, umask=0o002)
    try:
        wait_until(lambda: any(lab.rglob("*.lock")), 30)
        assert any(lab.rglob("*.lock")), "the holder never took the lock"
    finally:
        child.kill()
    outcome = run_as(users.alice, _after_holder, str(lab), log_of(logs, users.alice), GROUP, umask=0o002,
                     timeout=30)
    assert outcome.result() == 1
    outcome.cache_warnings()


# --- permissions ------------------------------------------------------------------------------


def _use_everything(location: str, log: str, options: dict[str, Any]) -> None:
    """Create everything a cache creates: entries, markers, locks, leases, statistics, size records."""
    _stats._FLUSH_EVERY = 0.05  # in this child only: its statistics are written at once, not after 1 s
    cache = cachelib.Cache(location, bytes_limit="10M", **options)
    f = cache.memoize(ignore=["log"])(square)
    soft = cachelib.Cache(location, lock="soft", **options).memoize(ignore=["log"])(plain)
    f(1, log=log)
    f(1, log=log)
    soft(2, log=log)
    wait_for_new_statistics(Path(location))
    cache.info()
    cache.reduce_size(bytes_limit="10M")
    shared = ["--share", options["share"]] if options.get("share") else []
    for command in (["prune", "--older-than", "1000d"], ["verify", "--fix"], ["info"]):
        cli_here("--location", location, *command, *shared)
    folded = statistics_files(Path(location))
    f(3, log=log)
    wait_for_new_statistics(Path(location), folded)  # a statistics file not folded yet


def _modes(root: Path, below_only: bool = False) -> dict[str, tuple[str, int, int, int]]:
    found = {}
    for path in ([] if below_only else [root]) + sorted(root.rglob("*")):
        st = os.lstat(path)
        kind = "dir" if stat.S_ISDIR(st.st_mode) else "file" if stat.S_ISREG(st.st_mode) else "other"
        found[str(path.relative_to(root.parent))] = (kind, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid)
    return found


@pytest.mark.parametrize("umask", [0o000, 0o077], ids=oct)
def test_everything_created_in_private_mode_is_private(arena: Path, users: Users, logs: Path,
                                                       umask: int) -> None:
    """Private mode: every directory cachelib creates is 0700 and every file 0600, whatever the umask."""
    location = arena / "private" / "cache"  # its parent is created too
    run_as(users.alice, _use_everything, str(location), log_of(logs, users.alice), {}, umask=umask,
           timeout=60).result()
    found = _modes(arena / "private")
    assert len(found) > 8, found
    wrong = {path: (kind, oct(mode)) for path, (kind, mode, uid, _) in found.items()
             if (kind, mode) not in (("dir", 0o700), ("file", 0o600)) or uid != users.alice.uid}
    assert not wrong, wrong


@pytest.mark.parametrize("made_by", ["admin", "cachelib"])
def test_everything_created_in_group_mode_is_shared_and_never_group_writable(
    arena: Path, users: Users, logs: Path, made_by: str
) -> None:
    """Group mode, umask 002: a member's own directories are 2750 and hold only that member's files,
    the shared ones (the location, locks) 3770; files are 0640; all in the location's group."""
    if made_by == "admin":
        location = owned_dir(arena / "lab", 0o3770, 0, users.lab)
        members = [users.alice, users.bob]
    else:
        location = arena / "lab"
        members = [users.alice]
    for member in members:
        run_as(member, _use_everything, str(location), log_of(logs, member), GROUP, umask=0o002,
               timeout=60).result()
    found = _modes(location, below_only=made_by == "admin")
    assert len(found) > 8, found
    group = os.stat(location).st_gid
    owners = {f"{location.name}/.member-{member.uid}": member.uid for member in members}
    wrong = {}
    for path, (kind, mode, uid, gid) in found.items():
        tree = "/".join(path.split("/")[:2])
        expected = ("dir", 0o2750 if tree in owners else 0o3770)
        if (kind, mode) not in (expected, ("file", 0o640)) or gid != group or uid != owners.get(tree, uid):
            wrong[path] = (kind, oct(mode), uid, gid)
    assert not wrong, wrong
    assert {tree for tree in owners if (location.parent / tree).is_dir()} == set(owners)


# --- expiry against replay --------------------------------------------------------------------


def _replay(location: str, log: str, how: str, options: dict[str, Any]) -> list[Any]:
    f = memoized(location, square, expires_after=1.0, **options)
    f(1, log=log)
    entry = entry_files(Path(location))[0]
    old = entry.read_bytes()
    time.sleep(1.6)
    if how == "touch":
        os.utime(entry)
    else:
        f(1, log=log)  # recomputed: the entry is new
        restored = entry.with_name(entry.name + ".old")
        restored.write_bytes(old)
        os.chmod(restored, 0o600)
        os.replace(restored, entry)
    in_cache = f.check_call_in_cache(1)
    return [in_cache, digest(f(1, log=log))]


@pytest.mark.slow  # waits for expiry: test_memoize's test_expiry_reads_the_time_stored_inside_the_entry
@pytest.mark.parametrize("how", ["touch", "restore"])
@pytest.mark.parametrize("signed", [False, True], ids=["unsigned", "signed"])
def test_an_expired_entry_is_not_revived_by_touching_or_restoring_it(tmp_path: Path, how: str,
                                                                     signed: bool) -> None:
    """expires_after reads the time stored inside the entry: a touched or restored old file stays expired."""
    log = tmp_path / "log"
    options = {"secret": SECRET} if signed else {}
    in_cache, result = run_with_timeout(_replay, str(tmp_path / "cache"), str(log), how, options).result()
    assert result == digest(square(1))
    assert in_cache is False
    assert len(computations(log)) == (2 if how == "touch" else 3)


@pytest.mark.slow  # waits for expiry: test_memoize's test_expiry_reads_the_time_stored_inside_the_entry
def test_a_member_replaying_an_expired_entry_does_not_revive_it(arena: Path, users: Users, lab: Path,
                                                                logs: Path) -> None:
    """Bob plants his saved copy of alice's expired (validly signed) entry: she recomputes."""
    log = log_of(logs, users.alice)
    options = {"expires_after": 1.0, **GROUP}
    run_as(users.alice, _call, str(lab), "square", 1, log, umask=0o002, **options).result()
    entry = entry_files(lab)[0]
    saved = entry.read_bytes()
    time.sleep(1.6)
    run_as(users.alice, _clear, str(lab), **GROUP).result()
    run_as(users.bob, _publish, as_member(lab, users.bob, entry), saved, umask=0o002).result()
    outcome = run_as(users.alice, _call, str(lab), "square", 1, log, umask=0o002, **options)
    assert outcome.result() == digest(square(1))
    outcome.cache_warnings()
    assert computations(log) == ["square 1", "square 1"]


# --- the positive case: a group that shares --------------------------------------------------------


def _meddle(alice_entry: str, scratch: str) -> list[str]:
    """As bob: try to delete, replace, rename away and write alice's entry and its directories;
    say what was refused."""
    refused = []
    path = Path(alice_entry)
    mine = Path(scratch) / ".bob"
    mine.write_bytes(b"bob's")
    tree = path.parents[2]  # alice's own files: .member-<uid>
    for name, attempt in (
        ("unlink", lambda: os.unlink(path)),
        ("rename over", lambda: os.replace(mine, path)),
        ("write", lambda: open(path, "r+b").close()),
        ("rename its directory", lambda: os.rename(path.parent, Path(scratch) / "moved")),
        ("rename her files", lambda: os.rename(tree, tree.with_name(".moved"))),
    ):
        try:
            attempt()
        except PermissionError:
            refused.append(name)
    return refused


def _clear_and_evict(location: str) -> None:
    cache = cachelib.Cache(location, **GROUP)
    cache.clear()
    cache.reduce_size(bytes_limit=0)
    cache.memoize(ignore=["log"])(plain).clear()


def test_members_share_hits_and_keep_their_own_files(
    arena: Path, users: Users, lab: Path, logs: Path
) -> None:
    """Alice and bob hit each other's entries; neither can delete or replace the other's; mallory is out."""
    alice, bob = log_of(logs, users.alice), log_of(logs, users.bob)
    share = {"umask": 0o002, **GROUP}
    assert run_as(users.alice, _call, str(lab), "plain", 1, alice, **share).result() == digest(plain(1))
    alice_entry = new_entry(lab, [])
    outcome = run_as(users.bob, _call, str(lab), "plain", 1, bob, **share)
    assert outcome.result() == digest(plain(1))
    assert outcome.cache_warnings() == []
    assert computations(bob) == [], "bob recomputed what alice had stored"
    assert run_as(users.bob, _call, str(lab), "plain", 2, bob, **share).result() == digest(plain(2))
    bob_entry = new_entry(lab, [alice_entry])
    assert run_as(users.alice, _call, str(lab), "plain", 2, alice, **share).result() == digest(plain(2))
    assert computations(alice) == ["plain 1"] and computations(bob) == ["plain 2"]
    assert os.stat(alice_entry).st_uid == users.alice.uid and os.stat(bob_entry).st_uid == users.bob.uid

    before = file_state(alice_entry)
    refused = run_as(users.bob, _meddle, str(alice_entry), str(logs)).result()
    assert refused == ["unlink", "rename over", "write", "rename its directory", "rename her files"]
    run_as(users.bob, _clear_and_evict, str(lab), umask=0o002).result()
    assert file_state(alice_entry) == before, "bob's clear or eviction touched alice's entry"
    assert not bob_entry.exists(), "bob's clear left his own entry"
    assert run_as(users.alice, _call, str(lab), "plain", 1, alice, **share).result() == digest(plain(1))
    assert computations(alice) == ["plain 1"]

    mallory = log_of(logs, users.mallory)
    outcome = run_as(users.mallory, _call, str(lab), "plain", 1, mallory, **share)
    assert outcome.result() == digest(plain(1))
    outcome.cache_warnings()
    assert computations(mallory) == ["plain 1"]
    assert file_state(alice_entry) == before


# --- a member who made the directories first -----------------------------------------------------

FORGED = {"x": -1, "name": "forged", "values": np.zeros(100, dtype=np.int32), "pairs": []}


def _forge(victim_entry: str, scratch: str) -> bytes:
    """As a member holding the secret: a correctly signed entry for the victim's key, of a forged value."""
    path = Path(victim_entry)
    namespace, key = path.parents[1].name, path.name[: -len(".cl")]
    entries = cachelib.Cache(scratch, secret=SECRET).entries
    assert entries is not None
    entries.put(namespace, key, FORGED, {"function": "plain"}, None, about={"function": "plain"})
    return (Path(scratch) / entry_name(namespace, key)).read_bytes()


def _swap(victim_entry: str, forged: bytes, own_copy: str, scratch: str) -> list[str]:
    """As the attacker: try every way of putting ``forged`` where the victim's own entry is; say what
    worked. Then publish it in the attacker's own files, under the victim's key (that is allowed)."""
    path = Path(victim_entry)
    tree = path.parents[2]
    planted = Path(scratch) / "forged.cl"
    planted.write_bytes(forged)
    os.chmod(planted, 0o640)
    worked = []
    for name, attempt in (
        ("replace the entry", lambda: os.replace(planted, path)),
        ("remove the entry", lambda: os.unlink(path)),
        ("write into the entry", lambda: open(path, "r+b").close()),
        ("add a file beside it", lambda: (path.parent / "x.cl").write_bytes(forged)),
        ("move its directory away", lambda: os.rename(path.parent, Path(scratch) / "moved-key")),
        ("move the function's directory", lambda: os.rename(path.parents[1], Path(scratch) / "moved-fn")),
        ("move the member's files away", lambda: os.rename(tree, tree.with_name(".member-moved"))),
        ("remove the member's files", lambda: shutil.rmtree(tree)),
    ):
        try:
            attempt()
            worked.append(name)
        except OSError:
            pass
    _publish(Path(own_copy), forged, 0o640)
    return worked


@pytest.mark.parametrize("attacker", ["bob", pytest.param("alice", marks=pytest.mark.slow)])
def test_a_member_who_made_the_directories_cannot_swap_another_members_entry(
    arena: Path, users: Users, lab: Path, logs: Path, attacker: str
) -> None:
    """The attacker stores first (every directory of the function is made by them), holds the secret
    and forges a correctly signed entry for a key the victim computed: it cannot take the place of
    the victim's own entry, whose next call returns the victim's own result."""
    attacking = getattr(users, attacker)
    victim = users.alice if attacker == "bob" else users.bob
    share = {"umask": 0o002, **GROUP}
    attacker_log, victim_log = log_of(logs, attacking), log_of(logs, victim)
    run_as(attacking, _call, str(lab), "plain", 1, attacker_log, **share).result()
    before = entry_files(lab)
    assert run_as(victim, _call, str(lab), "plain", 2, victim_log, **share).result() == digest(plain(2))
    victim_entry = new_entry(lab, before)
    assert victim_entry.is_relative_to(files_of(lab, victim)) and victim_entry.stat().st_uid == victim.uid
    scratch = owned_dir(arena / "scratch", 0o700, attacking.uid, attacking.gid)
    forged = run_as(attacking, _forge, str(victim_entry), str(scratch / "cache")).result()
    state = file_state(victim_entry)
    worked = run_as(attacking, _swap, str(victim_entry), forged, str(as_member(lab, attacking, victim_entry)),
                    str(scratch), umask=0o002).result()
    assert worked == [], f"the attacker could {worked}"
    assert file_state(victim_entry) == state
    outcome = run_as(victim, _call, str(lab), "plain", 2, victim_log, **share)
    assert outcome.result() == digest(plain(2)), "the victim got the attacker's forgery for its own key"
    assert outcome.cache_warnings() == []
    assert computations(victim_log) == ["plain 2"], "the victim's own entry was not hit"
    # The control: the forgery is a valid entry. Once the victim has no entry of its own for that
    # key, it takes the attacker's (a member who computes a key first is trusted for its result).
    run_as(victim, _clear, str(lab), **GROUP).result()
    outcome = run_as(victim, _call, str(lab), "plain", 2, victim_log, **share)
    assert outcome.result() == digest(FORGED), "the forgery was not a valid entry: the test proves nothing"


def _store_many(location: str, log: str, start: int, count: int) -> None:
    f = memoized(location, plain, **GROUP)
    for x in range(start, start + count):
        f(x, log=log)


def _clear_as(location: str, how: str) -> None:
    if how == "cache.clear":
        cachelib.Cache(location, **GROUP).clear()
    elif how == "f.clear":
        memoized(location, plain, **GROUP).clear()
    elif how == "reduce_size":
        cachelib.Cache(location, **GROUP).reduce_size(bytes_limit=0)
    else:
        command = ["clear"] if how == "cli clear" else ["prune", "--max-size", "0"]
        assert cli_here("--location", location, *command, "--share", "group") == 0


def _entries_of(location: Path, user: User) -> dict[Path, Any]:
    return {p: file_state(p) for p in location.rglob("*.cl") if p.stat().st_uid == user.uid}


_CLEARS = ("cache.clear", "f.clear", "reduce_size", "cli clear", "cli prune")


@pytest.mark.slow
@pytest.mark.parametrize("how", _CLEARS)
@pytest.mark.parametrize("first", ["bob", "alice"])
def test_clearing_and_evicting_remove_only_the_members_own_files(
    arena: Path, users: Users, lab: Path, logs: Path, how: str, first: str
) -> None:
    """One member stores 300 entries first (making the function's directories, most key
    directories among them), the other 40; the first's clear or eviction removes its own 300
    and none of the other's 40, wherever they sit."""
    making = getattr(users, first)
    other = users.alice if first == "bob" else users.bob
    run_as(making, _store_many, str(lab), log_of(logs, making), 0, 300, umask=0o002, timeout=120).result()
    run_as(other, _store_many, str(lab), log_of(logs, other), 300, 40, umask=0o002).result()
    others = _entries_of(lab, other)
    assert len(others) == 40 and len(_entries_of(lab, making)) == 300
    run_as(making, _clear_as, str(lab), how, umask=0o002, timeout=60).result()
    assert _entries_of(lab, making) == {}, f"{how} left the member's own entries"
    kept = {path: state for path, state in others.items() if file_state(path) == state}
    assert len(kept) == 40, f"{how} by one member removed or changed {40 - len(kept)} of another's 40 entries"


def test_a_member_tree_squatted_by_another_member_is_not_used(arena: Path, users: Users, lab: Path,
                                                              logs: Path) -> None:
    """Bob makes alice's tree before she first stores: her calls compute right, without the cache,
    saying which directory is not hers; nothing of bob's is read as hers."""
    run_as(users.bob, _makedirs, files_of(lab, users.alice), 0o2750).result()
    log = log_of(logs, users.alice)
    for _ in range(2):
        outcome = run_as(users.alice, _call, str(lab), "plain", 1, log, umask=0o002, **GROUP)
        assert outcome.result() == digest(plain(1))
        assert any(f".member-{users.alice.uid}" in message for message in outcome.cache_warnings())
    assert computations(log) == ["plain 1", "plain 1"]
    assert entry_files(lab) == []
