"""How long a remote store may take: timeouts per request and per operation, and the pause after a stall.

Rule: no remote operation waits without bound. ``RemoteTimeouts`` are a store's
resolved settings, taken from ``storage_options["timeouts"]`` (the rest of the options
go to the filesystem): ``connect`` and ``read`` bound each request and ``attempts``
how often one is tried (botocore's, on S3, unless the options' own ``config_kwargs``
say otherwise); ``operation`` bounds each call cachelib makes on the filesystem,
whatever it waits for (a connection, a response, a ``100-continue``, retries), and
``pause`` is how long, after one ran out, the store is passed over: every operation
fails at once, so that a frozen endpoint costs one wait, not one per call.
``Stalls.guard`` turns what a stalled or unreachable store raises (fsspec's and
asyncio's timeouts, botocore's connection errors, which are not ``OSError``) into
``StoreTimeout`` / ``StoreUnavailable``, and any other error of the client library
into ``FileAccessError`` (credentials, configuration), never a raw exception.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, fields
from typing import Any

from .._errors import CacheError, FileAccessError, InvalidOptionError, StoreTimeout, StoreUnavailable

__all__ = ["TIMEOUTS_KEY", "RemoteTimeouts", "Stalls"]

TIMEOUTS_KEY = "timeouts"
"""The key of ``storage_options`` that holds a store's ``RemoteTimeouts`` (a dict)."""


@dataclass(frozen=True)
class RemoteTimeouts:
    """A remote store's bounds, in seconds (``attempts``: tries of one request)."""

    connect: float = 5.0
    read: float = 15.0
    attempts: int = 3
    operation: float = 30.0
    pause: float = 30.0

    @classmethod
    def split(cls, storage_options: Mapping[str, Any]) -> tuple[RemoteTimeouts, dict[str, Any]]:
        """Return the timeouts ``storage_options`` set, and the options that go to the filesystem."""
        options = dict(storage_options)
        given = options.pop(TIMEOUTS_KEY, None) or {}
        names = [field.name for field in fields(cls)]
        if not isinstance(given, Mapping) or set(given) - set(names):
            raise InvalidOptionError(
                f"storage_options[{TIMEOUTS_KEY!r}] takes a dict of {', '.join(names)} (seconds), "
                f"got {given!r}"
            )
        for name, value in given.items():
            minimum = 1 if name == "attempts" else 0
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < minimum or (
                    name == "attempts" and not isinstance(value, int)):
                raise InvalidOptionError(
                    f"storage_options[{TIMEOUTS_KEY!r}][{name!r}] must be a number of "
                    f"{'tries, at least 1' if name == 'attempts' else 'seconds, at least 0'}, got {value!r}"
                )
        return cls(**given), options

    def botocore_config(self) -> dict[str, Any]:
        """The ``config_kwargs`` of an S3 filesystem that bound each request."""
        return {"connect_timeout": self.connect, "read_timeout": self.read,
                "retries": {"mode": "standard", "total_max_attempts": self.attempts}}


def _kind(exc: BaseException) -> str | None:
    """"timeout", "unreachable" or "client" for an error of a stalled or misconfigured store; else None."""
    if isinstance(exc, TimeoutError):  # socket.timeout too, and asyncio's on Python >= 3.11
        return "timeout"
    asyncio = sys.modules.get("asyncio.exceptions")  # only a loaded asyncio raises its own
    if asyncio is not None and isinstance(exc, asyncio.TimeoutError):
        return "timeout"
    botocore = sys.modules.get("botocore.exceptions")
    if botocore is not None:
        if isinstance(exc, (botocore.ConnectTimeoutError, botocore.ReadTimeoutError)):
            return "timeout"
        if isinstance(exc, (botocore.EndpointConnectionError, botocore.ConnectionClosedError,
                            botocore.HTTPClientError)):  # the last: whatever broke a request underway
            return "unreachable"
        if isinstance(exc, botocore.BotoCoreError):
            return "client"
    aiohttp = sys.modules.get("aiohttp")
    if aiohttp is not None and isinstance(exc, aiohttp.ClientConnectionError):
        return "unreachable"
    if isinstance(exc, ConnectionError):
        return "unreachable"
    return None


class Stalls:
    """One remote store's bounds in force: the guard of every operation, and the pause after a stall."""

    def __init__(self, url: str, timeouts: RemoteTimeouts) -> None:
        self._url = url
        self._timeouts = timeouts
        self._paused_until = float("-inf")  # monotonic
        self._reason = ""

    @property
    def timeouts(self) -> RemoteTimeouts:
        return self._timeouts

    @contextlib.contextmanager
    def guard(self) -> Iterator[None]:
        """Run one remote operation: refused at once while the store is paused; its stall or
        connection failure raised as ``StoreTimeout`` / ``StoreUnavailable`` (pausing the store)."""
        left = self._paused_until - time.monotonic()
        if left > 0:
            raise StoreUnavailable(
                f"{self._url} is passed over for {left:.0f} s more: {self._reason}", location=self._url
            )
        try:
            yield
        except CacheError:
            raise
        except Exception as exc:
            kind = _kind(exc)
            if kind is None:
                raise
            if kind == "client":
                raise FileAccessError(f"{self._url} cannot be used: {exc}", path=self._url) from exc
            limits = self._timeouts
            advice = (f"storage_options={{{TIMEOUTS_KEY!r}: {{'operation': ..., 'pause': ...}}}} sets "
                      "these bounds")
            if kind == "timeout":
                self._pause(f"it did not answer within {limits.operation:g} s")
                detail = str(exc) or type(exc).__name__
                raise StoreTimeout(
                    f"{self._url} did not answer within {limits.operation:g} s ({detail}); "
                    f"cachelib passes it over for {limits.pause:g} s ({advice})",
                    location=self._url, timeout=limits.operation,
                ) from exc
            self._pause(f"it could not be reached ({exc})")
            raise StoreUnavailable(
                f"{self._url} cannot be reached ({exc}); cachelib passes it over for {limits.pause:g} s "
                f"({advice})", location=self._url,
            ) from exc

    def _pause(self, reason: str) -> None:
        self._reason = reason
        self._paused_until = time.monotonic() + self._timeouts.pause
