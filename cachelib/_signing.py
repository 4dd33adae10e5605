"""Signed entries: an HMAC-SHA256 over every byte of an entry, checked before unpickling.

Rule: with a secret, a reader unpickles nothing it has not authenticated. A signed
entry is a 64-byte signature block, then the ordinary cachelib stream::

    0   8  b"\\x89CLSIG\\r\\n"  (magic)
    8  32  HMAC-SHA256(secret, context || stream)
   40  24  zero

``context`` names the entry (function directory and key), so a valid entry copied
under another key fails too. The block is 64 bytes so that arrays stay 64-byte
aligned for ``mmap_mode``. An attacker who can write the cache directory can still
delete entries (a miss), but cannot make a process run code or return a forged result.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import IO, Any

from ._errors import CorruptFileError, InvalidOptionError

__all__ = ["SIGNATURE_SIZE", "Signer"]

SIGNED_MAGIC = b"\x89CLSIG\r\n"
SIGNATURE_SIZE = 64
_TAG = slice(8, 40)
_CHUNK = 1 << 20


class _SigningWriter:
    """Passes writes through to ``fileobj`` while feeding them to an HMAC."""

    def __init__(self, fileobj: IO[bytes], mac: Any) -> None:
        self._fileobj = fileobj
        self.mac = mac

    def write(self, data: Any) -> int:
        self.mac.update(data)
        return self._fileobj.write(data)

    def flush(self) -> None:
        self._fileobj.flush()


class Signer:
    """Writes and checks the signature block of entries with one secret."""

    def __init__(self, secret: bytes) -> None:
        if not isinstance(secret, (bytes, bytearray)) or len(secret) < 16:
            raise InvalidOptionError("secret must be bytes, at least 16 of them (e.g. os.urandom(32))")
        self._secret = bytes(secret)

    def __repr__(self) -> str:
        return "Signer(<secret>)"

    def _mac(self, context: str) -> Any:
        return hmac.new(self._secret, context.encode(), hashlib.sha256)

    def begin(self, fileobj: IO[bytes], context: str) -> _SigningWriter:
        """Reserve the signature block; return the writer the stream goes through."""
        fileobj.write(bytes(SIGNATURE_SIZE))
        return _SigningWriter(fileobj, self._mac(context))

    @staticmethod
    def finish(fileobj: IO[bytes], writer: _SigningWriter) -> None:
        """Fill in the signature block of a seekable, fully written file."""
        fileobj.flush()
        end = fileobj.tell()
        fileobj.seek(0)
        fileobj.write(SIGNED_MAGIC + writer.mac.digest())
        fileobj.seek(end)

    def check(self, fileobj: IO[bytes], context: str) -> None:
        """Authenticate the whole file, then leave it positioned at its stream.

        Raises ``CorruptFileError`` for an unsigned, damaged or forged entry.
        """
        block = fileobj.read(SIGNATURE_SIZE)
        if len(block) < SIGNATURE_SIZE or not block.startswith(SIGNED_MAGIC):
            raise CorruptFileError("the entry is not signed, and this cache requires signatures")
        if any(block[_TAG.stop :]):
            raise CorruptFileError("the entry's signature block is altered (reserved bytes are not zero)")
        mac = self._mac(context)
        for chunk in iter(lambda: fileobj.read(_CHUNK), b""):
            mac.update(chunk)
        if not hmac.compare_digest(mac.digest(), block[_TAG]):
            raise CorruptFileError("the entry's signature does not match: it was altered or forged")
        fileobj.seek(SIGNATURE_SIZE)
