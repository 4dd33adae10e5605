"""The fsspec store: objects on any fsspec filesystem (S3, GCS, Azure, memory://).

Rule: an object appears whole or not at all, and what a reader opened is what it
reads. A small object is sent in one request; a large one is streamed as a
multipart upload that is completed only when its writer's block ends without an
exception (aborted otherwise), so memory stays at a few parts whatever its size.
On S3 opening an object is one GET of all of it (its response gives the size and
the version, no HEAD), read front to back; a read elsewhere is a GET bound to the
version opened (``If-Match`` its ETag: a replaced object fails the read, it never
mixes two versions); elsewhere it fetches ranges of at most a part, large reads
straight into the caller's buffer either way (``remote_files``). Exclusive
writes are conditional creates (``If-None-Match: *``, fsspec's ``mode="create"``/
``"xb"``) where the backend is known to make them atomic (S3; memory:// within one
process); elsewhere they are a check before the write and ``conditional_writes`` is
False. Every remote operation runs under the store's ``Stalls`` guard and, on an
asynchronous filesystem, within its ``operation`` timeout (``deadlines``): a stalled
endpoint costs one bounded wait, then the store is passed over for a ``pause``.
Object stores keep no owners (every object is "own") and no access time (``used``
is when an object was stored), and nothing is mapped from them.
"""

from __future__ import annotations

import builtins
import contextlib
import datetime
import io
import os
import threading
from collections.abc import Iterator
from typing import Any

from .._errors import CorruptFileError, FileAccessError, InvalidOptionError, MissingDependencyError
from .base import ItemInfo, Probe, Readable, Store, Writer, check_key
from .deadlines import RemoteTimeouts, Stalls
from .fsspec_compat import bounded, open_uncommitted, parent, strip_protocol
from .remote_files import PART_SIZE, Ranges, S3Body, S3Parts

__all__ = ["FsspecStore"]

_READ_BUFFER = 1 << 20  # small reads (headers, records) share one ranged read of this size
_CONDITIONAL = frozenset({"s3", "s3a", "memory"})  # backends whose exclusive creates are atomic
_INSTALL = {"s3": "cachelib-numpy[s3]", "s3a": "cachelib-numpy[s3]", "gs": "gcsfs", "gcs": "gcsfs",
            "az": "adlfs", "abfs": "adlfs"}
_FORCED_OPTIONS = {"s3": {"use_listings_cache": False}, "s3a": {"use_listings_cache": False}}
_memory_lock = threading.Lock()  # memory:// is one process's dict: its creates are made atomic here


def _fsspec() -> Any:
    try:
        import fsspec
    except ImportError:
        raise MissingDependencyError(
            "a cache on a URL needs fsspec: pip install 'cachelib-numpy[fsspec]' "
            "(or 'cachelib-numpy[s3]' for S3)",
            package="fsspec",
        ) from None
    return fsspec


def _timestamp(info: dict[str, Any]) -> float:
    """When an object was last written, from whichever field its filesystem reports."""
    for name in ("LastModified", "last_modified", "mtime", "modified", "updated", "created"):
        value = info.get(name)
        if isinstance(value, datetime.datetime):
            return value.timestamp()
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                return datetime.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    return 0.0


def _identity(info: dict[str, Any]) -> Any:
    """What changes whenever an object's bytes may have (None when the filesystem gives no tag)."""
    tag = info.get("ETag") or info.get("etag") or info.get("generation") or info.get("version_id")
    return None if tag is None else (tag, info.get("size"), _timestamp(info))


class FsspecStore(Store):
    """Objects under ``url`` on an fsspec filesystem; ``storage_options`` go to the filesystem.

    ``conditional_writes`` overrides whether exclusive writes are trusted to be
    atomic (True for S3 and memory://; pass False for an S3-compatible server that
    ignores ``If-None-Match``, so that no lease relies on it). s3fs's listings cache
    is always off: a stale listing would hide a lease or an entry.
    ``storage_options["timeouts"]`` sets the bounds of remote operations
    (``deadlines.RemoteTimeouts``: ``connect``, ``read``, ``attempts``, ``operation``,
    ``pause``); the rest of ``storage_options`` goes to the filesystem.
    """

    def __init__(
        self,
        url: str,
        storage_options: dict[str, Any] | None = None,
        *,
        conditional_writes: bool | None = None,
        lease_ttl: float = 60.0,
    ) -> None:
        fsspec = _fsspec()
        protocol, _ = fsspec.core.split_protocol(url)
        if not protocol:
            raise InvalidOptionError(f"{url!r} is not a URL; give e.g. 's3://bucket/prefix' or 'memory://name'")
        try:
            cls = fsspec.get_filesystem_class(protocol)
        except (ImportError, ValueError) as exc:
            hint = _INSTALL.get(protocol)
            fix = f": pip install '{hint}'" if hint else ""
            raise MissingDependencyError(f"cannot open {url!r} ({exc}){fix}", package=hint) from None
        protocol = protocol.lower()
        root = strip_protocol(cls, url).rstrip("/")
        if not root.strip("/"):
            raise InvalidOptionError(f"{url!r} names no bucket or directory; give e.g. 's3://bucket/prefix'")
        self.protocol = protocol
        self.url = url.rstrip("/")
        self.storage_options = dict(storage_options or {})
        self.timeouts, self._fs_options = RemoteTimeouts.split(self.storage_options)
        self._stalls = Stalls(self.url, self.timeouts)
        known = protocol in _CONDITIONAL
        self.conditional_writes = known if conditional_writes is None else bool(conditional_writes)
        self.lease_ttl = float(lease_ttl)
        self._root = root
        self._memory = protocol == "memory"
        self._s3 = protocol in ("s3", "s3a")
        self._fs: Any = None
        self._pid = -1
        self._checked = False

    def __repr__(self) -> str:
        return f"FsspecStore({self.url!r})"

    def __getstate__(self) -> dict[str, Any]:
        return {"url": self.url, "storage_options": self.storage_options,
                "conditional_writes": self.conditional_writes, "lease_ttl": self.lease_ttl}

    def __setstate__(self, state: dict[str, Any]) -> None:
        FsspecStore.__init__(
            self, state["url"], state["storage_options"], conditional_writes=state["conditional_writes"],
            lease_ttl=state["lease_ttl"],
        )

    @property
    def fs(self) -> Any:
        """The filesystem, made afresh in each process (async clients do not survive a fork)."""
        if self._fs is None or self._pid != os.getpid():
            options = {**self._fs_options, **_FORCED_OPTIONS.get(self.protocol, {})}
            if self._s3:  # each request bounded, unless the options' own config_kwargs say otherwise
                own = options.get("config_kwargs", {})
                options["config_kwargs"] = {**self.timeouts.botocore_config(), **own}
            self._fs = _fsspec().filesystem(self.protocol, **options)
            self._pid = os.getpid()
        return self._fs

    def _bound(self) -> dict[str, Any]:
        """The keyword that bounds one blocking call of the filesystem (``{}`` where it takes none)."""
        return bounded(self.fs, self.timeouts.operation)

    def _path(self, key: str) -> str:
        check_key(key)
        return f"{self._root}/{key}"

    def locate(self, key: str) -> str:
        return f"{self.url}/{key}"

    # -- reading -------------------------------------------------------------------------

    def _info(self, key: str) -> dict[str, Any]:
        path = self._path(key)
        try:
            with self._stalls.guard():
                if self._s3:  # one HEAD (s3fs's info also lists, to tell a missing key from a prefix)
                    bucket, _, name = path.partition("/")
                    head = self.fs.call_s3("head_object", Bucket=bucket, Key=name, **self._bound())
                    return {"type": "file", "size": head["ContentLength"], "ETag": head.get("ETag"),
                            "LastModified": head.get("LastModified")}
                info: dict[str, Any] = self.fs.info(path, **self._bound())
        except FileNotFoundError:
            raise KeyError(key) from None
        if info.get("type") != "file":
            raise KeyError(key)
        return info

    def probe(self, key: str) -> Probe | None:
        if self._memory:
            return None
        info = self._info(key)
        identity = _identity(info)
        if identity is None:
            return None
        return identity, int(info["size"]), _timestamp(info)

    def exists(self, key: str) -> bool:
        try:
            self._info(key)
        except KeyError:
            return False
        return True

    def open(self, key: str) -> Readable:
        path = self._path(key)
        if self._memory:
            try:
                data = self.fs.cat_file(path)  # a copy: memory:// hands every reader one shared file
            except FileNotFoundError:
                raise KeyError(key) from None
            return Readable(io.BytesIO(data), len(data), own=True, mappable=False)
        if self._s3:  # one GET, no HEAD: its response says the size and the version opened
            bucket, _, name = path.partition("/")
            try:
                body, info = S3Body.open(self.fs, bucket, name, self._stalls)
            except FileNotFoundError:
                raise KeyError(key) from None
            stream = io.BufferedReader(body, buffer_size=_READ_BUFFER)
            return Readable(stream, int(info["size"]), own=True, mappable=False, identity=_identity(info))
        try:
            with self._stalls.guard():
                remote = self.fs.open(path, "rb", cache_type="none", block_size=PART_SIZE)
                details = getattr(remote, "details", None) or self.fs.info(path, **self._bound())
        except (FileNotFoundError, IsADirectoryError):
            raise KeyError(key) from None
        if details.get("type", "file") != "file":
            remote.close()
            raise KeyError(key)
        size = int(details["size"])
        file = io.BufferedReader(Ranges(remote, size, self._stalls), buffer_size=_READ_BUFFER)
        return Readable(file, size, own=True, mappable=False, identity=_identity(details))

    def read_bytes(self, key: str, limit: int) -> bytes:
        path = self._path(key)
        try:
            with self._stalls.guard():
                data: bytes = self.fs.cat_file(path, start=0, end=limit + 1, **self._bound())
        except FileNotFoundError:
            raise KeyError(key) from None
        except OSError:
            if self._info(key)["size"] == 0:
                return b""  # a range of an empty object is an error on S3
            raise
        if len(data) > limit:
            raise CorruptFileError(f"{self.locate(key)!r} holds more than the {limit} bytes expected")
        return data

    # -- writing -------------------------------------------------------------------------

    def initialize(self) -> None:
        """Check once that the bucket exists (cachelib never creates buckets)."""
        if self._checked or self.protocol not in ("s3", "s3a"):
            return
        bucket = self._root.split("/", 1)[0]
        try:  # not fs.exists, which takes a timeout for an absent bucket
            with self._stalls.guard():
                self.fs.call_s3("head_bucket", Bucket=bucket, **self._bound())
        except FileNotFoundError:
            raise FileAccessError(f"the bucket {bucket!r} of {self.url!r} does not exist; create it first",
                                  path=self.url) from None
        except PermissionError as exc:
            raise FileAccessError(f"the bucket {bucket!r} of {self.url!r} cannot be used: {exc}",
                                  path=self.url) from None
        self._checked = True

    @contextlib.contextmanager
    def write(self, key: str, *, exclusive: bool = False, keep: bool = False) -> Iterator[Writer]:
        """Write ``key`` whole or not at all; ``keep`` hands nothing back (nothing maps from here)."""
        path = self._path(key)
        if exclusive and not self.conditional_writes and self.exists(key):
            raise FileExistsError(f"{self.locate(key)} exists")
        upload = _Upload(self, path, exclusive and self.conditional_writes)
        try:
            yield Writer(upload)
            upload.commit()
        except BaseException:
            upload.abort()
            raise

    def _put(self, path: str, data: bytes, exclusive: bool) -> None:
        """Send a small object in one request (elsewhere than S3 and memory://, an uncommitted file)."""
        if not (self._s3 or self._memory):
            remote = self._start_upload(path, exclusive)
            try:
                remote.write(data)
                remote.close()
                remote.commit()
            except BaseException:
                with contextlib.suppress(Exception):
                    remote.discard()
                raise
            return
        with self._stalls.guard():
            if not exclusive:
                self.fs.pipe_file(path, data, **self._bound())
            elif self._memory:
                with _memory_lock:
                    self.fs.pipe_file(path, data, mode="create")
            else:
                self.fs.pipe_file(path, data, mode="create", **self._bound())

    def _start_upload(self, path: str, exclusive: bool) -> Any:
        """Open a streamed upload, published only by its ``commit()``."""
        if self._s3:
            bucket, _, name = path.partition("/")
            return S3Parts(self.fs, bucket, name, exclusive, self._stalls)
        mode = "xb" if exclusive else "wb"
        with self._stalls.guard():
            if not self._memory:  # a filesystem with directories may need its parents made
                with contextlib.suppress(Exception):
                    self.fs.makedirs(parent(self.fs, path), exist_ok=True)
            return open_uncommitted(self.fs, path, mode, PART_SIZE)

    def delete(self, key: str) -> bool:
        path = self._path(key)
        try:
            self._info(key)
            with self._stalls.guard():
                self.fs.rm_file(path, **self._bound())
        except (KeyError, FileNotFoundError):
            return False
        return True

    # -- listing -------------------------------------------------------------------------

    def _ls(self, prefix: str) -> list[dict[str, Any]]:
        path = f"{self._root}/{prefix}" if prefix else self._root
        try:
            with self._stalls.guard():
                return list(self.fs.ls(path, detail=True, **self._bound()))
        except (FileNotFoundError, NotADirectoryError):
            return []

    def _children(self, prefix: str) -> Iterator[tuple[str, dict[str, Any]]]:
        """Yield ``(name, info)`` for what lies one level below ``prefix``."""
        base = (f"{self._root}/{prefix}" if prefix else self._root).strip("/") + "/"
        for info in self._ls(prefix):
            name = str(info.get("name", "")).strip("/")
            if not name.startswith(base):
                continue
            child = name[len(base):]
            with contextlib.suppress(InvalidOptionError):
                if len(check_key(child)) == 1:
                    yield child, info

    def list_dirs(self, prefix: str) -> builtins.list[str]:
        return sorted(name for name, info in self._children(prefix) if info.get("type") == "directory")

    def list(self, prefix: str) -> Iterator[ItemInfo]:
        for name, info in self._children(prefix):
            key = f"{prefix}/{name}" if prefix else name
            if info.get("type") == "directory":
                yield from self.list(key)
            elif info.get("type") == "file":
                stored = _timestamp(info)
                yield ItemInfo(key, int(info.get("size") or 0), stored, stored)


class _Upload:
    """The file a ``FsspecStore.write`` block writes: buffered while small, then streamed in parts."""

    def __init__(self, store: FsspecStore, path: str, exclusive: bool) -> None:
        self._store = store
        self._path = path
        self._exclusive = exclusive
        self._buffer: io.BytesIO | None = io.BytesIO()
        self._remote: Any = None
        self._size = 0
        self._streams = not store._memory  # memory:// keeps everything in memory anyway

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._size

    def flush(self) -> None:
        """Parts are sent as they fill; nothing is visible before the block ends."""

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        n = view.nbytes
        if self._remote is None and self._buffer is not None:
            if not self._streams or self._buffer.tell() + n <= PART_SIZE:
                self._buffer.write(view)
                self._size += n
                return n
            self._remote = self._store._start_upload(self._path, self._exclusive)
            pending, self._buffer = self._buffer, None
            with pending.getbuffer() as buffered:
                self._send(buffered)
        self._send(view)
        self._size += n
        return n

    def _send(self, view: memoryview) -> None:
        for start in range(0, view.nbytes, PART_SIZE):
            with self._store._stalls.guard():
                self._remote.write(view[start : start + PART_SIZE])

    def commit(self) -> None:
        """Publish the object: one request, or the completion of the multipart upload."""
        if self._remote is None:
            data = self._buffer.getvalue() if self._buffer is not None else b""
            self._buffer = None
            self._store._put(self._path, data, self._exclusive)
            return
        remote, self._remote = self._remote, None
        try:
            with self._store._stalls.guard():
                remote.close()  # sends the last part; autocommit=False keeps the upload open
                remote.commit()
        except BaseException:
            with contextlib.suppress(Exception):
                remote.discard()
            raise

    def abort(self) -> None:
        """Leave nothing behind: drop the buffer, abort the upload."""
        self._buffer = None
        remote, self._remote = self._remote, None
        if remote is not None:
            with contextlib.suppress(Exception):
                remote.close()
            with contextlib.suppress(Exception):
                remote.discard()
