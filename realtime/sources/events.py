"""Capture events and their clock: :class:`VideoFrame`, :class:`AudioChunk`, :class:`Clock`, the
:class:`Source` interface, :class:`SourceError`, and the pacing / reordering helpers every
source shares.
"""

from __future__ import annotations

import abc
import heapq
import itertools
import math
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np

from eri.errors import EriError
from eri.models.audio import SAMPLE_RATE

#: Rate of every :class:`AudioChunk` (the audio front end's rate).
AUDIO_RATE = SAMPLE_RATE


@dataclass
class VideoFrame:
    """One camera or video frame: ``image`` [H, W, 3] uint8 RGB, C-contiguous."""

    index: int
    time_s: float
    image: np.ndarray = field(repr=False)


@dataclass
class AudioChunk:
    """Consecutive mono samples [n] float32 at :data:`AUDIO_RATE`; ``time_s`` is the first's."""

    time_s: float
    samples: np.ndarray = field(repr=False)

    @property
    def duration_s(self) -> float:
        return len(self.samples) / AUDIO_RATE

    @property
    def end_s(self) -> float:
        """Time just after the last sample."""
        return self.time_s + self.duration_s


Event = VideoFrame | AudioChunk


class SourceError(EriError, RuntimeError):
    """A source cannot be opened or read; the message names the thing and the fix."""


class Clock:
    """Seconds since :meth:`reset`, on ``time.monotonic``; shared by a camera and a microphone."""

    def __init__(self) -> None:
        self._t0: float | None = None

    def reset(self) -> None:
        """Make now time zero."""
        self._t0 = time.monotonic()

    def ensure_started(self) -> None:
        """Start the clock unless it already runs."""
        if self._t0 is None:
            self.reset()

    @property
    def t0(self) -> float:
        """The ``time.monotonic()`` value of time zero."""
        self.ensure_started()
        assert self._t0 is not None
        return self._t0

    def now(self) -> float:
        return time.monotonic() - self.t0

    def from_monotonic(self, t: float) -> float:
        """Convert a ``time.monotonic()`` value to this clock."""
        return t - self.t0


class Source(abc.ABC):
    """Timestamped frames and audio chunks, in time order, ending when the source ends.

    Iterating starts the source if needed. File-like sources (files, sessions, synthetic) start
    again from the beginning on each iteration; live sources (camera, microphone) run once and
    end on :meth:`stop`, which may be called from another thread. Use as a context manager to
    make sure devices and files are released.
    """

    name: str = "source"
    #: Nominal frame rate, or None without video.
    fps: float | None = None
    has_video: bool = True
    has_audio: bool = False
    #: Why there is no audio (None when there is).
    audio_note: str | None = None
    width: int | None = None
    height: int | None = None
    #: Length and frame count when known (files, sessions, finite synthetic), else None.
    duration_s: float | None = None
    frame_count: int | None = None
    #: Live sources (camera, microphone) run on the wall clock and end only on stop().
    live: bool = False

    def __init__(self) -> None:
        self._stop_event = threading.Event()
        self._started = False
        self._counters: dict[str, float] = {
            "frames_read": 0,
            "frames_dropped": 0,
            "audio_chunks_read": 0,
            "audio_samples_read": 0,
            "audio_chunks_dropped": 0,
        }

    def start(self) -> None:
        """Open devices / begin reading; idempotent."""
        self._stop_event.clear()
        self._started = True

    def stop(self) -> None:
        """Ask the source to end; a running iteration finishes soon after. Idempotent."""
        self._stop_event.set()
        self._started = False

    @property
    def stopped(self) -> bool:
        return self._stop_event.is_set()

    def stats(self) -> dict[str, float]:
        """Counters: frames_read, frames_dropped, audio_chunks_read, audio_chunks_dropped, ..."""
        return dict(self._counters)

    def __enter__(self) -> Source:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __iter__(self) -> Iterator[Event]:
        if not self._started:
            self.start()
        return self._events()

    @abc.abstractmethod
    def _events(self) -> Iterator[Event]:
        """The events of one run, in nondecreasing ``time_s``."""

    def _count_frame(self) -> None:
        self._counters["frames_read"] += 1

    def _count_chunk(self, chunk: AudioChunk) -> None:
        self._counters["audio_chunks_read"] += 1
        self._counters["audio_samples_read"] += len(chunk.samples)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"


def _paced(
    events: Iterable[Event], stop: threading.Event, counters: dict, speed: float = 1.0
) -> Iterator[Event]:
    """Release each event at ``time_s / speed`` after the start on ``time.monotonic``.

    Never sleeps to catch up: when the consumer is slow, events come out at once and the largest
    lag is recorded in ``counters["max_lag_s"]``.
    """
    counters.setdefault("max_lag_s", 0.0)
    start = time.monotonic()
    for event in events:
        delay = start + event.time_s / speed - time.monotonic()
        if delay > 0:
            if stop.wait(delay):
                return
        elif -delay > counters["max_lag_s"]:
            counters["max_lag_s"] = -delay
        yield event


class _Reorder:
    """Merge per-stream time-ordered events into one time order, with bounded buffering.

    Each stream has a watermark: the time up to which it has delivered everything. An event is
    released once every unfinished stream's watermark has passed it, or when the buffer holds
    more than ``max_frames`` video frames or spans more than ``max_lag_s`` (a sparse or dead
    stream must not make memory grow). An event that would then come out earlier than one
    already released gets the released time (counted as ``late``), so output never goes back.
    """

    def __init__(self, watermarks: dict[str, float], max_frames: int = 64, max_lag_s: float = 2.0):
        self._wm = dict(watermarks)
        self._heap: list[tuple[float, int, Event]] = []
        self._seq = itertools.count()
        self._frames = 0
        self._newest = -math.inf
        self.max_frames = max_frames
        self.max_lag_s = max_lag_s
        self.last = -math.inf
        self.late = 0
        self.forced = 0

    def push(self, stream: str, event: Event, watermark: float) -> list[Event]:
        heapq.heappush(self._heap, (event.time_s, next(self._seq), event))
        if isinstance(event, VideoFrame):
            self._frames += 1
        self._newest = max(self._newest, event.time_s)
        if stream in self._wm:
            self._wm[stream] = max(self._wm[stream], watermark)
        return self._release()

    def finish(self, stream: str) -> list[Event]:
        self._wm.pop(stream, None)
        return self._release()

    def flush(self) -> list[Event]:
        self._wm.clear()
        return self._release()

    def _release(self) -> list[Event]:
        out: list[Event] = []
        limit = min(self._wm.values(), default=math.inf)
        while self._heap:
            t = self._heap[0][0]
            forced = t > limit and (
                self._frames > self.max_frames or t < self._newest - self.max_lag_s
            )
            if t > limit and not forced:
                break
            self.forced += int(forced)
            _, _, event = heapq.heappop(self._heap)
            if isinstance(event, VideoFrame):
                self._frames -= 1
            if event.time_s < self.last:
                self.late += 1
                event.time_s = self.last
            self.last = event.time_s
            out.append(event)
        return out
