"""The file objects of a remote store: objects read in bounded pieces, uploads sent in parts.

Rule: every request these objects make runs under the store's ``Stalls`` guard and,
on an asynchronous filesystem, within its ``operation`` timeout (``_stores.deadlines``),
so that a read or an upload of any size never waits on a stalled endpoint for longer
than one bound per request. On S3 they make their own requests: opening an object
is one GET of all of it, read front to back, and any later request is bound by
``If-Match`` to the ETag that GET returned (a read never mixes two versions); an
upload is cachelib's own multipart upload, up to ``IN_FLIGHT`` parts on their way at
once (each request bounded on the loop, whether waited on or not), completed
(``If-None-Match: *`` when exclusive) only by ``commit`` and aborted by ``discard``
once no part is on its way. Elsewhere a read goes through the filesystem's file
object by ranges of at most a part.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import io
from typing import Any

from .deadlines import Stalls
from .fsspec_compat import bounded, run_on_loop, start_s3_call

__all__ = ["IN_FLIGHT", "PART_SIZE", "SKIP_AHEAD", "Ranges", "RemoteObject", "S3Body", "S3Parts"]

PART_SIZE = 8 << 20  # bytes per uploaded part and per ranged read (S3's minimum part is 5 MiB)
IN_FLIGHT = 2  # parts an upload sends at once (each holds a buffer of PART_SIZE)
SKIP_AHEAD = 1 << 20  # bytes an S3 read skips through its response rather than make a request


class RemoteObject(io.RawIOBase):
    """A seekable, read-only view of one remote object of a known size; subclasses read."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._size}[whence]
        self._position = max(base + offset, 0)
        return self._position

    def readall(self) -> bytes:
        """Read to the end in bounded pieces (the default reads 8 KiB per request)."""
        buffer = bytearray(max(self._size - self._position, 0))
        return bytes(buffer[: self.readinto(buffer)])


class Ranges(RemoteObject):
    """The bytes of one opened fsspec file, read by ranges of at most ``PART_SIZE``."""

    def __init__(self, remote: Any, size: int, stalls: Stalls) -> None:
        super().__init__(size)
        self._remote = remote
        self._stalls = stalls

    def readinto(self, buffer: Any) -> int:
        """Fill ``buffer`` up to the end of the object, one bounded range at a time."""
        view = memoryview(buffer).cast("B")
        wanted = min(view.nbytes, max(self._size - self._position, 0))
        got = 0
        while got < wanted:
            with self._stalls.guard():
                self._remote.seek(self._position)
                data = self._remote.read(min(wanted - got, PART_SIZE))
            if not data:
                break
            view[got : got + len(data)] = data
            got += len(data)
            self._position += len(data)
        return got

    def close(self) -> None:
        if not self.closed:
            with contextlib.suppress(Exception):
                self._remote.close()
        super().close()


class S3Body(RemoteObject):
    """One version of an S3 object, streamed by GET requests from the position read.

    ``open`` makes the first request, a GET of the whole object whose response says
    its size and ETag, so that reading it front to back takes that one request. A read
    a little ahead of the response (at most ``SKIP_AHEAD`` bytes) reads on through it;
    a read elsewhere drops it and starts another, bound by ``If-Match`` to the ETag
    opened. Each part read fills the caller's buffer in one turn of the event loop.
    """

    def __init__(
        self, fs: Any, bucket: str, key: str, etag: str, size: int, stalls: Stalls, response: Any = None
    ) -> None:
        super().__init__(size)
        self._fs = fs
        self._bucket = bucket
        self._key = key
        self._etag = etag
        self._stalls = stalls
        self._body: Any = None if response is None else response["Body"]
        self._body_at = -1 if response is None else 0

    @classmethod
    def open(cls, fs: Any, bucket: str, key: str, stalls: Stalls) -> tuple[S3Body, dict[str, Any]]:
        """GET the object: its body positioned at 0, and its info (``size``, ``ETag``, ``LastModified``).

        ``FileNotFoundError`` if there is none.
        """
        with stalls.guard():
            response = fs.call_s3("get_object", Bucket=bucket, Key=key,
                                  **bounded(fs, stalls.timeouts.operation))
        info = {"type": "file", "size": int(response["ContentLength"]), "ETag": response.get("ETag"),
                "LastModified": response.get("LastModified")}
        return cls(fs, bucket, key, info["ETag"], info["size"], stalls, response), info

    def _timeout(self) -> float:
        return self._stalls.timeouts.operation

    def _request(self) -> None:
        self._drop()
        with self._stalls.guard():
            response = self._fs.call_s3(
                "get_object", Bucket=self._bucket, Key=self._key, IfMatch=self._etag,
                Range=f"bytes={self._position}-", **bounded(self._fs, self._timeout()),
            )
        self._body, self._body_at = response["Body"], self._position

    def _drop(self) -> None:
        body, self._body = self._body, None
        if body is not None:
            with contextlib.suppress(Exception):  # on the loop: the response is the loop's
                run_on_loop(self._fs, _close, body, timeout=self._timeout())

    def _reach(self) -> None:
        """Make the response's next byte the one at the position read (skipping a little, or a GET)."""
        ahead = self._position - self._body_at
        if self._body is not None and 0 < ahead <= SKIP_AHEAD:
            with self._stalls.guard():
                self._body_at += run_on_loop(self._fs, _skip, self._body, ahead, timeout=self._timeout())
        if self._body is None or self._body_at != self._position:
            self._request()

    def readinto(self, buffer: Any) -> int:
        """Fill ``buffer`` up to the end of the object."""
        view = memoryview(buffer).cast("B")
        wanted = min(view.nbytes, max(self._size - self._position, 0))
        got = 0
        while got < wanted:
            part = view[got : got + min(wanted - got, PART_SIZE)]
            try:
                self._reach()
                with self._stalls.guard():
                    count = run_on_loop(self._fs, _fill, self._body, part, timeout=self._timeout())
            except BaseException:
                self._drop()  # a read cut short leaves the response unusable
                raise
            if not count:
                self._drop()
                missing = self._size - self._position
                raise OSError(f"s3://{self._bucket}/{self._key} ended {missing} bytes early")
            got += count
            self._position += count
            self._body_at = self._position
        return got

    def close(self) -> None:
        self._drop()
        super().close()


async def _fill(body: Any, view: memoryview) -> int:
    """Read a response's body into ``view`` until it is full or the body ends; return the bytes read."""
    got = 0
    while got < view.nbytes:
        data = await body.read(view.nbytes - got)
        if not data:
            break
        view[got : got + len(data)] = data
        got += len(data)
    return got


async def _skip(body: Any, count: int) -> int:
    """Read and drop up to ``count`` bytes of a response's body; return how many."""
    skipped = 0
    while skipped < count:
        data = await body.read(count - skipped)
        if not data:
            break
        skipped += len(data)
    return skipped


async def _close(body: Any) -> None:
    body.close()


class S3Parts:
    """A multipart upload of one S3 object: parts sent as they fill, published by ``commit``.

    It has the interface of an uncommitted fsspec file (``write``, ``close``,
    ``commit``, ``discard``), with every request bounded. What is written is copied
    once, into a part buffer; a full buffer is sent as it is while the next one fills,
    up to ``IN_FLIGHT`` parts at once (the buffers are reused once their part is sent).
    """

    def __init__(self, fs: Any, bucket: str, key: str, exclusive: bool, stalls: Stalls) -> None:
        self._fs = fs
        self._bucket = bucket
        self._key = key
        self._exclusive = exclusive
        self._stalls = stalls
        self._part: bytearray | None = None  # the buffer being filled
        self._filled = 0
        self._free: list[bytearray] = []  # buffers whose part was sent
        self._sending: collections.deque[tuple[concurrent.futures.Future[Any], int, bytearray]] = (
            collections.deque())
        self._parts: list[dict[str, Any]] = []
        self._upload_id: str | None = None

    def _call(self, method: str, **kwargs: Any) -> Any:
        with self._stalls.guard():
            return self._fs.call_s3(method, Bucket=self._bucket, Key=self._key, **kwargs,
                                    **bounded(self._fs, self._stalls.timeouts.operation))

    def write(self, data: Any) -> int:
        """Add ``data``; send every part it fills."""
        view = memoryview(data).cast("B")
        done = 0
        while done < view.nbytes:
            if self._part is None:
                self._part = self._buffer()
            count = min(PART_SIZE - self._filled, view.nbytes - done)
            self._part[self._filled : self._filled + count] = view[done : done + count]
            self._filled += count
            done += count
            if self._filled == PART_SIZE:
                part, self._part, self._filled = self._part, None, 0
                self._send(_PartBody(part), part)
        return view.nbytes

    def _buffer(self) -> bytearray:
        """A free part buffer: a new one while fewer than ``IN_FLIGHT`` parts are out, else the oldest's."""
        if not self._free and len(self._sending) >= IN_FLIGHT:
            self._wait_oldest()
        return self._free.pop() if self._free else bytearray(PART_SIZE)

    def _send(self, body: bytes | _PartBody, buffer: bytearray | None) -> None:
        """Start sending the next part (``buffer``, if any, is reused once it is sent)."""
        if self._upload_id is None:
            self._upload_id = self._call("create_multipart_upload")["UploadId"]
        number = len(self._parts) + len(self._sending) + 1
        with self._stalls.guard():
            future = start_s3_call(self._fs, "upload_part", self._stalls.timeouts.operation,
                                   Bucket=self._bucket, Key=self._key, UploadId=self._upload_id,
                                   PartNumber=number, Body=body)
        self._sending.append((future, number, buffer if buffer is not None else bytearray()))

    def _wait_oldest(self) -> None:
        future, number, buffer = self._sending.popleft()
        with self._stalls.guard():
            response = _result(future, self._stalls.timeouts.operation)
        self._parts.append({"PartNumber": number, "ETag": response["ETag"]})
        if buffer:
            self._free.append(buffer)

    def close(self) -> None:
        """Send the last part (shorter than the others) and wait for every part; ``commit`` publishes."""
        if self._filled or not (self._parts or self._sending):
            last = bytes(self._part[: self._filled]) if self._part is not None else b""
            self._part, self._filled = None, 0
            self._send(last, None)
        while self._sending:
            self._wait_oldest()
        self._part, self._free = None, []

    def commit(self) -> None:
        """Publish the object; ``FileExistsError`` if exclusive and one exists."""
        condition = {"IfNoneMatch": "*"} if self._exclusive else {}
        self._call("complete_multipart_upload", UploadId=self._upload_id,
                   MultipartUpload={"Parts": self._parts}, **condition)
        self._upload_id = None

    def discard(self) -> None:
        """Abort the upload once no part is on its way (S3 drops the parts sent)."""
        upload_id, self._upload_id = self._upload_id, None
        self._part, self._filled, self._free = None, 0, []
        sending, self._sending = self._sending, collections.deque()
        for future, _, _ in sending:
            future.cancel()
        for future, _, _ in sending:
            with contextlib.suppress(Exception):  # cancelled, failed, or sent after all
                _result(future, self._stalls.timeouts.operation)
        if upload_id is not None:
            self._call("abort_multipart_upload", UploadId=upload_id)


class _PartBody(RemoteObject):
    """A part buffer as the file a request sends, read in place.

    botocore sends ``bytes`` through a ``BytesIO`` and aiohttp refuses a large
    ``bytearray``: either would be one more copy of every part.
    """

    def __init__(self, buffer: bytearray) -> None:
        super().__init__(len(buffer))
        self._view = memoryview(buffer)

    def __len__(self) -> int:
        return self._size

    def read(self, size: int | None = -1) -> bytes:
        start = min(self._position, self._size)
        end = self._size if size is None or size < 0 else min(start + size, self._size)
        self._position = end
        return self._view[start:end].tobytes()

    def readinto(self, buffer: Any) -> int:
        data = self.read(memoryview(buffer).nbytes)
        memoryview(buffer).cast("B")[: len(data)] = data
        return len(data)


def _result(future: concurrent.futures.Future[Any], timeout: float) -> Any:
    """The result of a request started on the loop, bounded there; here too, a second later."""
    try:
        return future.result(timeout=timeout + 1.0 if timeout else None)
    except concurrent.futures.TimeoutError:  # the loop itself did not answer (TimeoutError from 3.11 on)
        future.cancel()
        raise TimeoutError(f"no answer within {timeout:g} s") from None
