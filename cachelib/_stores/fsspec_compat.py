"""What cachelib uses of fsspec beyond its documented interface, in one place.

Rule: every use of an fsspec private goes through this module, each with the
behaviour cachelib relies on, and ``tests/test_stores.py`` checks that behaviour
against the installed fsspec (``test_the_fsspec_privates_cachelib_relies_on``), so
that an fsspec release that changes one fails that test instead of a cache. Checked
with fsspec 2024.12.0 (the lower bound in setup.cfg) to 2026.9.0.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable
from typing import Any

__all__ = ["bounded", "open_uncommitted", "parent", "run_on_loop", "start_s3_call", "strip_protocol"]


def strip_protocol(filesystem_class: Any, url: str) -> str:
    """The path a filesystem class makes of ``url`` (its protocol and options removed).

    ``AbstractFileSystem._strip_protocol``, a classmethod of every filesystem: it is
    what fsspec itself applies to every path it is given.
    """
    return str(filesystem_class._strip_protocol(url))


def parent(fs: Any, path: str) -> str:
    """The parent of ``path`` on ``fs`` (``AbstractFileSystem._parent``), for ``makedirs``."""
    return str(fs._parent(path))


def open_uncommitted(fs: Any, path: str, mode: str, block_size: int) -> Any:
    """Open ``path`` for writing so that nothing appears before the file's ``commit()``.

    ``AbstractFileSystem._open`` is the hook behind ``open``: ``open(autocommit=False)``
    would also enlist the file in the filesystem's transaction, which keeps it (and its
    buffers) until the process ends. ``discard()`` drops an uncommitted file.
    """
    return fs._open(path, mode, block_size=block_size, autocommit=False)


def run_on_loop(fs: Any, function: Callable[..., Any], *args: Any, timeout: float | None = None) -> Any:
    """Run the coroutine function ``function(*args)`` on an async filesystem's event loop, and wait.

    ``fsspec.asyn.sync``, as fsspec's own blocking methods do (``fs.loop`` is that loop);
    after ``timeout`` seconds the coroutine is cancelled and ``FSTimeoutError`` raised.
    """
    from fsspec.asyn import sync

    return sync(fs.loop, function, *args, timeout=timeout)


def start_s3_call(fs: Any, method: str, timeout: float, **kwargs: Any) -> concurrent.futures.Future[Any]:
    """Start one S3 request on an S3 filesystem's event loop without waiting for it: its future.

    s3fs's ``_call_s3``, the coroutine behind ``call_s3`` (the same arguments, and the
    same errors: boto's translated to ``OSError``s), run on ``fs.loop`` as
    ``run_on_loop`` does; after ``timeout`` seconds (0: none) the request is cancelled
    and the future fails with ``asyncio.TimeoutError``.
    """

    import asyncio  # an S3 filesystem runs one loop already: not part of ``import cachelib``

    async def request() -> Any:
        return await asyncio.wait_for(fs._call_s3(method, **kwargs), timeout or None)

    return asyncio.run_coroutine_threadsafe(request(), fs.loop)


def bounded(fs: Any, timeout: float) -> dict[str, Any]:
    """The keyword that bounds a blocking call of ``fs`` to ``timeout`` seconds: ``{"timeout": ...}``
    for an asynchronous filesystem (its blocking methods take it, through ``fsspec.asyn.sync``),
    ``{}`` for the others, which would take it for an argument of their own."""
    return {"timeout": timeout} if getattr(fs, "async_impl", False) and timeout > 0 else {}
