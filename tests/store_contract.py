"""The behaviour every ``Store`` promises, as a test class to subclass once per store.

A subclass provides a ``store`` fixture (a fresh, empty store) and may set
``mappable`` (whether opened objects can be mapped) and ``large`` (the size of
the object that must stream: larger than the fsspec store's part size).
"""

from __future__ import annotations

import pickle
import threading
import time
import uuid
from typing import Any

import numpy as np
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from cachelib import CacheError, CorruptFileError, InvalidOptionError
from cachelib._stores.base import Store


class Boom(Exception):
    """Raised inside a write block to abandon it."""


def put(store: Store, key: str, data: bytes, exclusive: bool = False) -> None:
    with store.write(key, exclusive=exclusive) as writer:
        writer.file.write(data)


def get(store: Store, key: str) -> bytes:
    with store.open(key) as handle:
        data = handle.file.read()
        assert len(data) == handle.size
        return data


def random_bytes(size: int, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes()


class StoreContract:
    """Behaviour shared by every store; see ``cachelib._stores.base`` for the contract in prose."""

    mappable = False
    large = 20 << 20

    # -- reading and writing ---------------------------------------------------------------

    def test_a_missing_object_raises_key_error(self, store: Store) -> None:
        """``open`` of an absent key raises ``KeyError``; ``exists`` is False; ``delete`` is False."""
        with pytest.raises(KeyError):
            store.open("nothing/here.cl")
        assert not store.exists("nothing/here.cl")
        assert store.delete("nothing/here.cl") is False

    @pytest.mark.parametrize("size", [0, 1, 4096, 100_003])
    def test_a_written_object_reads_back_whole(self, store: Store, size: int) -> None:
        """What a committed write put is what ``open`` reads, with its size."""
        data = random_bytes(size, seed=size)
        put(store, "ns/ab/key.cl", data)
        assert get(store, "ns/ab/key.cl") == data
        assert store.exists("ns/ab/key.cl")
        assert store.read_bytes("ns/ab/key.cl", max(size, 1)) == data

    def test_reads_seek_and_read_parts(self, store: Store) -> None:
        """An opened object is seekable: reads from the middle and the end are the right bytes."""
        data = random_bytes(300_000, seed=1)
        put(store, "k", data)
        with store.open("k") as handle:
            handle.file.seek(250_000)
            assert handle.file.read(10) == data[250_000:250_010]
            handle.file.seek(-48, 2)
            assert handle.file.read() == data[-48:]
            handle.file.seek(7)
            buffer = bytearray(1000)
            assert handle.file.readinto(buffer) == 1000
            assert bytes(buffer) == data[7:1007]

    def test_a_large_object_streams_and_reads_back(self, store: Store) -> None:
        """An object larger than a few parts, written in pieces, reads back byte for byte."""
        data = random_bytes(self.large, seed=2)
        view = memoryview(data)
        with store.write("big/00/large.cl") as writer:
            for start in range(0, len(data), 3 << 20):
                writer.file.write(view[start : start + (3 << 20)])
            assert writer.file.tell() == len(data)
        with store.open("big/00/large.cl") as handle:
            assert handle.size == len(data)
            target = bytearray(len(data))
            assert handle.file.readinto(target) == len(data)
        assert target == data

    def test_an_overwrite_replaces_the_object_whole(self, store: Store) -> None:
        """A second write of a key replaces it entirely, shorter or longer."""
        put(store, "k", b"a" * 5000)
        put(store, "k", b"b" * 10)
        assert get(store, "k") == b"b" * 10

    @pytest.mark.parametrize("size", [100, "large"])
    def test_a_failed_write_leaves_nothing(self, store: Store, size: Any) -> None:
        """An exception in the write block publishes nothing and keeps what was there."""
        size = self.large if size == "large" else size
        with pytest.raises(Boom), store.write("fresh") as writer:
            writer.file.write(random_bytes(size))
            raise Boom
        assert not store.exists("fresh")
        put(store, "kept", b"old")
        with pytest.raises(Boom), store.write("kept") as writer:
            writer.file.write(random_bytes(size))
            raise Boom
        assert get(store, "kept") == b"old"
        assert sorted(item.key for item in store.list("")) == ["kept"]

    # -- exclusive writes ----------------------------------------------------------------------

    @pytest.mark.parametrize("size", [100, "large"])
    def test_the_first_exclusive_writer_wins(self, store: Store, size: Any) -> None:
        """A second exclusive write of an existing key raises ``FileExistsError`` and changes nothing."""
        size = self.large if size == "large" else size
        first, second = random_bytes(size, 3), random_bytes(size, 4)
        put(store, "x/lease.lock", first, exclusive=True)
        with pytest.raises(FileExistsError):
            put(store, "x/lease.lock", second, exclusive=True)
        assert get(store, "x/lease.lock") == first

    def test_racing_exclusive_writers_make_one_winner(self, store: Store) -> None:
        """Eight threads creating one key at once: exactly one succeeds, and its bytes are stored."""
        if not store.conditional_writes:
            pytest.skip("this store's exclusive writes are a check, not atomic")
        start = threading.Barrier(8)
        winners: list[bytes] = []

        def create(n: int) -> None:
            data = f"writer {n}".encode() * 100
            start.wait()
            try:
                put(store, "race/key.lock", data, exclusive=True)
            except FileExistsError:
                return
            winners.append(data)

        threads = [threading.Thread(target=create, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(winners) == 1
        assert get(store, "race/key.lock") == winners[0]

    # -- deleting and listing ------------------------------------------------------------------

    def test_delete_removes_one_object(self, store: Store) -> None:
        """``delete`` removes the object and says so; a second delete says there was none."""
        put(store, "a/b", b"1")
        put(store, "a/c", b"2")
        assert store.delete("a/b") is True
        assert store.delete("a/b") is False
        with pytest.raises(KeyError):
            store.open("a/b")
        assert get(store, "a/c") == b"2"

    def test_list_yields_the_objects_under_a_prefix(self, store: Store) -> None:
        """``list`` recurses below a prefix, with sizes; ``list_dirs`` names one level."""
        for key, data in {"f-1/ab/x.cl": b"12", "f-1/ab/y.cl": b"345", "f-1/cd/z.cl": b"",
                          "f-2/ab/x.cl": b"6", "top": b"789"}.items():
            put(store, key, data)
        found = {item.key: item.size for item in store.list("f-1")}
        assert found == {"f-1/ab/x.cl": 2, "f-1/ab/y.cl": 3, "f-1/cd/z.cl": 0}
        assert {item.key for item in store.list("")} == {
            "f-1/ab/x.cl", "f-1/ab/y.cl", "f-1/cd/z.cl", "f-2/ab/x.cl", "top"}
        assert store.list_dirs("") == ["f-1", "f-2"]
        assert store.list_dirs("f-1") == ["ab", "cd"]
        assert list(store.list("absent")) == []
        assert store.list_dirs("absent") == []

    def test_listed_times_are_when_objects_were_stored(self, store: Store) -> None:
        """``stored`` and ``used`` are unix times of the write (within a generous minute)."""
        before = time.time()
        put(store, "t/a", b"x")
        (item,) = store.list("t")
        assert before - 60 < item.stored < time.time() + 60
        assert item.used >= item.stored - 1
        assert item.own

    # -- the rest of the contract ------------------------------------------------------------------

    @pytest.mark.parametrize("key", ["", "../x", "a/../b", "a//b", "/a", "a/", "a/./b", "a b", "a\\b"])
    def test_keys_that_could_escape_are_refused(self, store: Store, key: str) -> None:
        """Every primitive refuses a key that is empty or could leave the store."""
        with pytest.raises(InvalidOptionError):
            store.open(key)
        with pytest.raises(InvalidOptionError), store.write(key) as writer:
            writer.file.write(b"x")
        with pytest.raises(InvalidOptionError):
            store.delete(key)

    def test_read_bytes_refuses_an_object_larger_than_asked(self, store: Store) -> None:
        """A bounded read of an object over its limit raises ``CorruptFileError``."""
        put(store, "state", b"x" * 5000)
        with pytest.raises(CorruptFileError):
            store.read_bytes("state", 4096)
        with pytest.raises(KeyError):
            store.read_bytes("absent", 4096)

    def test_probe_changes_when_the_object_does(self, store: Store) -> None:
        """Where a store can probe, the identity differs after a rewrite and matches ``open``'s."""
        put(store, "p", b"one")
        first = store.probe("p")
        if first is None:
            pytest.skip("this store has no cheap identity")
        with store.open("p") as handle:
            assert handle.identity == first[0]
        assert first[1] == 3
        put(store, "p", b"two!")
        second = store.probe("p")
        assert second is not None and second[0] != first[0] and second[1] == 4
        with pytest.raises(KeyError):
            store.probe("absent")

    def test_a_reader_sees_one_version(self, store: Store) -> None:
        """An object replaced while it is read gives the old bytes, or an error: never a mix."""
        old, new = random_bytes(3 << 20, 5), random_bytes(3 << 20, 6)
        put(store, "v", old)
        with store.open("v") as handle:
            first = handle.file.read(1 << 20)
            put(store, "v", new)
            try:
                rest = handle.file.read()
            except (OSError, CacheError):
                return
        assert first + rest == old

    def test_opened_objects_say_who_wrote_them(self, store: Store) -> None:
        """The user's own objects are ``own``; ``mappable`` only where the store can map."""
        put(store, "o", b"data")
        with store.open("o") as handle:
            assert handle.own
            assert handle.mappable is self.mappable

    def test_a_pickled_store_sees_the_same_objects(self, store: Store) -> None:
        """A store pickled to a worker reaches the same objects."""
        put(store, "shared/k", b"payload")
        copy = pickle.loads(pickle.dumps(store))
        assert get(copy, "shared/k") == b"payload"
        put(copy, "shared/j", b"back")
        assert get(store, "shared/j") == b"back"

    def test_behaves_like_a_dict(self, store: Store) -> None:
        """Random writes, failed writes, exclusive writes and deletes agree with a dict."""
        run_state_machine_as_test(
            lambda: DictModel(store), settings=settings(max_examples=12, stateful_step_count=12)
        )


_KEYS = st.sampled_from(["a", "b/c", "b/d", "e/f/g", "h/i"])
_DATA = st.binary(max_size=3000)


class DictModel(RuleBasedStateMachine):
    """Drives one store and a dict side by side (in a fresh prefix per run)."""

    def __init__(self, store: Store) -> None:
        super().__init__()
        self.store = store
        self.prefix = f"m{uuid.uuid4().hex[:8]}"
        self.model: dict[str, bytes] = {}

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}"

    @rule(key=_KEYS, data=_DATA)
    def write(self, key: str, data: bytes) -> None:
        put(self.store, self._key(key), data)
        self.model[key] = data

    @rule(key=_KEYS, data=_DATA)
    def write_exclusive(self, key: str, data: bytes) -> None:
        try:
            put(self.store, self._key(key), data, exclusive=True)
        except FileExistsError:
            assert key in self.model
            return
        assert key not in self.model
        self.model[key] = data

    @rule(key=_KEYS, data=_DATA)
    def fail_a_write(self, key: str, data: bytes) -> None:
        with pytest.raises(Boom), self.store.write(self._key(key)) as writer:
            writer.file.write(data)
            raise Boom

    @rule(key=_KEYS)
    def delete(self, key: str) -> None:
        assert self.store.delete(self._key(key)) is (key in self.model)
        self.model.pop(key, None)

    @rule(key=_KEYS)
    def read(self, key: str) -> None:
        if key in self.model:
            assert get(self.store, self._key(key)) == self.model[key]
        else:
            with pytest.raises(KeyError):
                self.store.open(self._key(key))

    @invariant()
    def listing_matches(self) -> None:
        listed = {item.key[len(self.prefix) + 1 :]: item.size for item in self.store.list(self.prefix)}
        assert listed == {key: len(data) for key, data in self.model.items()}
