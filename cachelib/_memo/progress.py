"""Progress of long loads and stores, where the user asked for output (``verbose``).

Rule: costs nothing for a quiet cache. For a verbose one, each load or store is noted
while it runs (one dict entry), and one daemon thread per process, made at first use,
looks every quarter of a second: an operation running for more than ``AFTER`` seconds
is shown on stderr, on a terminal as one line redrawn in place with the time so far
(then erased, so that the operation's own log line follows on a clean line), elsewhere
(a notebook, a file) as one line, once. The thread never touches the cache.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = ["AFTER", "showing_progress"]

AFTER = 1.0  # seconds an operation runs before it is shown
_TICK = 0.25


@dataclass
class _Running:
    label: str
    started: float
    shown: bool = False


class _Progress:
    """The operations running now, and the thread that shows the long ones."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._running: dict[int, _Running] = {}
        self._drawn = 0  # characters of the line drawn on a terminal, to erase
        self._thread: threading.Thread | None = None

    @contextlib.contextmanager
    def track(self, label: str) -> Iterator[None]:
        running = _Running(label, time.monotonic())
        with self._lock:
            self._running[id(running)] = running
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="cachelib-progress", daemon=True)
                with contextlib.suppress(RuntimeError):  # interpreter shutdown: no progress
                    self._thread.start()
        try:
            yield
        finally:
            with self._lock:
                del self._running[id(running)]
                if running.shown:
                    self._erase()

    def _loop(self) -> None:
        while True:
            time.sleep(_TICK)
            with self._lock, contextlib.suppress(Exception):  # progress never fails anything
                self._show(time.monotonic())

    def _show(self, now: float) -> None:
        long = [r for r in self._running.values() if now - r.started >= AFTER]
        if not long:
            return
        stream = sys.stderr
        if getattr(stream, "isatty", lambda: False)():
            oldest = min(long, key=lambda r: r.started)
            oldest.shown = True
            text = f"[cachelib] {oldest.label} ... {now - oldest.started:.0f} s"
            stream.write("\r" + text.ljust(self._drawn))
            self._drawn = len(text)
            stream.flush()
            return
        for running in long:
            if not running.shown:
                running.shown = True
                stream.write(f"[cachelib] {running.label} ... (running for more than {AFTER:g} s)\n")
                stream.flush()

    def _erase(self) -> None:
        """Erase the line drawn on a terminal (called holding the lock)."""
        if self._drawn:
            with contextlib.suppress(Exception):
                sys.stderr.write("\r" + " " * self._drawn + "\r")
                sys.stderr.flush()
            self._drawn = 0


_progress = _Progress()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_progress._reset)


_QUIET = contextlib.nullcontext()


def showing_progress(action: str, what: str, verbose: bool) -> contextlib.AbstractContextManager[None]:
    """Note an operation (``"loading", "f"``) while it runs, shown if long and ``verbose``.

    A quiet call costs one test: nothing is made, not even the label.
    """
    return _progress.track(f"{action} {what}") if verbose else _QUIET
