"""Capture: every source of frames and audio behind one interface, on one monotonic clock.

A :class:`Source` is iterated for timestamped events, :class:`VideoFrame` and :class:`AudioChunk`,
in time order. Times are seconds from the start of the source: presentation timestamps for files
and recorded sessions (first frame at ~0), ``time.monotonic()`` minus the start time for the
camera and the microphone (one shared :class:`Clock` when they are combined in a
:class:`LiveSource`).

Modules:

- ``events``: :class:`VideoFrame`, :class:`AudioChunk`, :class:`Clock`, the :class:`Source`
  interface, :class:`SourceError`, and the pacing / reordering helpers.
- ``files``: :class:`FileSource`, a video (or audio-only) file decoded with PyAV, as fast as
  possible or paced in real time; :class:`SessionSource`, a recorded session folder
  (``video.mp4`` + ``audio.wav``).
- ``camera``: :class:`CameraSource`, an OpenCV camera read by its own thread into a
  :class:`~eri.realtime.buffers.LatestSlot`, so the newest frame wins and skipped frames are
  counted; :func:`list_cameras`.
- ``microphone``: :class:`MicrophoneSource`, a sounddevice input stream whose callback only
  copies each block into a :class:`~eri.realtime.buffers.BoundedQueue`; :func:`list_microphones`,
  :func:`microphone_status`.
- ``live``: :class:`LiveSource`, camera and microphone together.
- ``synthetic``: :class:`SyntheticSource`, a deterministic drawn face and a tone, for tests and
  benchmarks.
- ``dispatch``: :func:`open_source` turns a ``--source`` argument into one of these.

Every failure a user can cause raises :class:`SourceError` with one sentence naming the thing and
the fix; a missing PortAudio raises :func:`eri.errors.missing_dependency` ``("portaudio")``.
"""

from eri.realtime.sources.camera import CameraSource, list_cameras
from eri.realtime.sources.dispatch import open_source
from eri.realtime.sources.events import (
    AUDIO_RATE,
    AudioChunk,
    Clock,
    Event,
    Source,
    SourceError,
    VideoFrame,
)
from eri.realtime.sources.files import FileSource, SessionSource
from eri.realtime.sources.live import LiveSource
from eri.realtime.sources.microphone import (
    MicrophoneSource,
    MicrophoneUnavailable,
    list_microphones,
    microphone_status,
)
from eri.realtime.sources.synthetic import SyntheticSource

__all__ = [
    "AUDIO_RATE",
    "AudioChunk",
    "CameraSource",
    "Clock",
    "Event",
    "FileSource",
    "LiveSource",
    "MicrophoneSource",
    "MicrophoneUnavailable",
    "SessionSource",
    "Source",
    "SourceError",
    "SyntheticSource",
    "VideoFrame",
    "list_cameras",
    "list_microphones",
    "microphone_status",
    "open_source",
]
