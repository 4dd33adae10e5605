"""joblib's ``Logger`` base: ``format``, ``warn``, ``info`` and ``debug`` of ``Memory`` and ``MemorizedFunc``.

Rule: what joblib's own classes inherit, with joblib's behaviour (``format`` is
``pprint.pformat`` to ``depth`` 3; ``warn`` and ``debug`` log ``"[<repr>]: <msg>"``),
through the ``cachelib`` logger instead of ``joblib``'s. Libraries built on
joblib.Memory (librosa's cache manager) call these.
"""

from __future__ import annotations

import logging

__all__ = ["JoblibLogger"]

_logger = logging.getLogger("cachelib")


class JoblibLogger:
    """The methods joblib's ``Logger`` gives ``Memory`` and ``MemorizedFunc``."""

    depth = 3  # how deep ``format`` prints nested objects

    def format(self, obj: object, indent: int = 0) -> str:
        """Return the pretty-printed representation of ``obj`` (nested ``depth`` levels deep)."""
        import pprint  # only where a message is formatted

        return pprint.pformat(obj, indent=indent, depth=self.depth)

    def warn(self, msg: str) -> None:
        """Log ``msg`` as a warning of this object."""
        _logger.warning("[%s]: %s", self, msg)

    def info(self, msg: str) -> None:
        """Log ``msg`` as information about this object."""
        _logger.info("[%s]: %s", self, msg)

    def debug(self, msg: str) -> None:
        """Log ``msg`` as a debugging message of this object."""
        _logger.debug("[%s]: %s", self, msg)
