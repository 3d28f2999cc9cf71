"""Recorded sessions (docs/design.md, "Sessions"): the folder format and the recorder.

- ``format``: file names, :data:`SESSION_FORMAT_VERSION`, session.json and markers.csv read and
  write (:func:`read_session`, :func:`read_markers`, :func:`session_info`).
- ``recorder``: :class:`SessionRecorder`, every captured frame and audio sample to disk on its
  own writer thread.
- ``record``: :func:`record`, the headless run behind ``eri record``.
"""

from eri.realtime.session.format import (
    AUDIO,
    MARKERS,
    PREDICTIONS,
    REPORT,
    SESSION_FORMAT_VERSION,
    SESSION_JSON,
    VIDEO,
    NewerSessionError,
    SessionError,
    read_markers,
    read_session,
    session_info,
)
from eri.realtime.session.recorder import SessionRecorder

__all__ = [
    "AUDIO",
    "MARKERS",
    "PREDICTIONS",
    "REPORT",
    "SESSION_FORMAT_VERSION",
    "SESSION_JSON",
    "VIDEO",
    "NewerSessionError",
    "SessionError",
    "SessionRecorder",
    "read_markers",
    "read_session",
    "session_info",
]
