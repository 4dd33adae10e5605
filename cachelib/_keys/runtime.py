"""The user code that runs during a call, recorded where no static walk can see it.

Rule: while a miss runs, every code object of the user's files that starts running,
in any thread, is noted once (``CodeRecording``). On Python 3.12+ this is
``sys.monitoring``'s ``PY_START`` event, disabled for each code object after its
first sighting, so the cost is per code object, not per call, and nothing at all
outside recordings. Older Pythons have no such event: ``sys.setprofile`` sees the
recording thread's first ``PROFILE_BUDGET`` events, then stops, and the recording
says it is incomplete. Where neither can run (another tool holds every monitoring
slot, or another profiler is installed) the recording is incomplete too.
"""

from __future__ import annotations

import os
import sys
import threading
import types
from typing import Any

from .code import is_user_file

__all__ = ["MONITORED", "PROFILE_BUDGET", "CodeRecording"]

_monitoring: Any = getattr(sys, "monitoring", None)  # Python 3.12+
MONITORED = _monitoring is not None
"""Whether code is recorded completely (``sys.monitoring``), rather than for a budget of events."""
PROFILE_BUDGET = 20_000
"""Profiler events (calls and returns) a recording sees before Python 3.12, per recording thread."""
_TOOL_IDS = (4, 3, 2)  # free by convention: 0 is the debugger's, 1 coverage's, 5 optimizers'


class CodeRecording:
    """The user code objects that started while it was active; ``complete`` says if all were seen."""

    __slots__ = ("_profiler", "codes", "complete")

    def __init__(self) -> None:
        self.codes: dict[types.CodeType, None] = {}  # in the order they first ran
        self.complete = True
        self._profiler: _Profiler | None = None

    def __enter__(self) -> CodeRecording:
        if MONITORED:
            self.complete = _monitor(self)
        else:
            self._profiler = _Profiler.start(self)
            self.complete = self._profiler is not None
        return self

    def __exit__(self, *exc: object) -> None:
        if MONITORED:
            _unmonitor(self)
        elif self._profiler is not None:
            self._profiler.stop(self)


# -- Python 3.12+: sys.monitoring ---------------------------------------------------------------

_lock = threading.Lock()
_active: tuple[CodeRecording, ...] = ()
_tool: int | None = None  # the monitoring tool id taken, -1 when none was free


def _on_start(code: types.CodeType, offset: int) -> Any:
    """Note a user code object for every active recording; never called for it again until re-armed."""
    recordings = _active
    if recordings and is_user_file(code.co_filename):
        for recording in recordings:
            recording.codes[code] = None
    return _monitoring.DISABLE


def _monitor(recording: CodeRecording) -> bool:
    """Start feeding ``recording``; False when no monitoring tool id is free."""
    global _active, _tool
    monitoring = _monitoring
    with _lock:
        if _tool is None:
            _tool = -1
            for tool in _TOOL_IDS:
                if monitoring.get_tool(tool) is None:
                    monitoring.use_tool_id(tool, "cachelib")
                    monitoring.register_callback(tool, monitoring.events.PY_START, _on_start)
                    _tool = tool
                    break
        if _tool < 0:
            return False
        _active = (*_active, recording)
        if len(_active) == 1:
            monitoring.set_events(_tool, monitoring.events.PY_START)
        monitoring.restart_events()  # code seen by an earlier recording is reported again
    return True


def _unmonitor(recording: CodeRecording) -> None:
    global _active
    with _lock:
        if recording not in _active:
            return
        _active = tuple(active for active in _active if active is not recording)
        if not _active and _tool is not None and _tool >= 0:
            _monitoring.set_events(_tool, 0)


def _forget_in_child() -> None:
    """A forked child records nothing for its parent's calls."""
    global _active, _lock, _profile_lock
    _lock, _profile_lock = threading.Lock(), threading.RLock()
    if _active and MONITORED and _tool is not None and _tool >= 0:
        _monitoring.set_events(_tool, 0)
    _active = ()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_in_child)


# -- before Python 3.12: a profiler with a budget -------------------------------------------------


_profile_lock = threading.RLock()  # a profile function may run inside sys.setprofile


def _set_profile(function: Any) -> bool:
    """``sys.setprofile``, one thread at a time; False where Python refuses (another thread installs one)."""
    with _profile_lock:
        try:
            sys.setprofile(function)
        except RuntimeError:
            return False
    return True


class _Profiler:
    """The profile function of one thread, feeding the recordings started in it."""

    _local = threading.local()  # .profiler: this thread's, while it records

    def __init__(self) -> None:
        self.recordings: list[CodeRecording] = []
        self.left = PROFILE_BUDGET

    @classmethod
    def start(cls, recording: CodeRecording) -> _Profiler | None:
        profiler: _Profiler | None = getattr(cls._local, "profiler", None)
        if profiler is None:
            if sys.getprofile() is not None:
                return None  # another profiler runs: do not take its place
            profiler = cls()
            profiler.recordings.append(recording)
            if not _set_profile(profiler):
                return None
            cls._local.profiler = profiler
            return profiler
        if sys.getprofile() is not profiler:
            return None  # its budget is spent
        profiler.recordings.append(recording)
        return profiler

    def stop(self, recording: CodeRecording) -> None:
        if recording in self.recordings:
            self.recordings.remove(recording)
        if not self.recordings:
            type(self)._local.profiler = None
            if sys.getprofile() is self:
                self._uninstall()

    def _uninstall(self) -> None:
        if not _set_profile(None):
            self.left = 0  # refused now: the next event tries again

    def __call__(self, frame: types.FrameType, event: str, arg: Any) -> None:
        if event == "call":
            code = frame.f_code
            if is_user_file(code.co_filename):
                for recording in self.recordings:
                    recording.codes[code] = None
        self.left -= 1
        if self.left <= 0 or not self.recordings:
            for recording in self.recordings:
                recording.complete = False
            self._uninstall()
