"""Signed entries: an HMAC-SHA256, keyed by the cache's secret, over what a reader uses.

Rule: with a secret, a reader unpickles nothing it has not authenticated, and the
bytes authenticated are the bytes used. The MAC covers the entry's name (function
directory and key, so that a valid entry copied under another name fails), its
header and metadata, and every byte of its raw stream as the reader consumes it
(arrays mapped in place included); ``_entries.envelope`` says where each piece sits.
"""

from __future__ import annotations

from typing import Any

from .._errors import InvalidOptionError

__all__ = ["MAC_SIZE", "Signer"]

MAC_SIZE = 32


class Signer:
    """Makes and checks the MACs of entries with one secret."""

    def __init__(self, secret: bytes) -> None:
        if not isinstance(secret, (bytes, bytearray)) or len(secret) < 16:
            raise InvalidOptionError("secret must be bytes, at least 16 of them (e.g. os.urandom(32))")
        self._secret = bytes(secret)

    def __repr__(self) -> str:
        return "Signer(<secret>)"

    def __reduce__(self) -> Any:
        return (Signer, (self._secret,))

    def new(self, context: str) -> Any:
        """Return a fresh HMAC already fed with the entry's name ``context``."""
        import hashlib
        import hmac  # only where entries are signed: not part of ``import cachelib``

        return hmac.new(self._secret, context.encode(), hashlib.sha256)

    @staticmethod
    def matches(mac: Any, tag: bytes) -> bool:
        """True if ``mac``'s digest is ``tag`` (compared in constant time)."""
        import hmac

        return hmac.compare_digest(mac.digest(), tag)
