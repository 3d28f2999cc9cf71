"""Capture: every source of frames and audio behind one interface, on one monotonic clock.

A :class:`Source` is iterated for timestamped events, :class:`VideoFrame` and :class:`AudioChunk`,
in time order. Times are seconds from the start of the source: presentation timestamps for files
and recorded sessions (first frame at ~0), ``time.monotonic()`` minus the start time for the
camera and the microphone (one shared :class:`Clock` when they are combined in a
:class:`LiveSource`).

Sources:

- :class:`FileSource`: a video (or audio-only) file decoded with PyAV, as fast as possible or
  paced in real time.
- :class:`CameraSource`: an OpenCV camera read by its own thread into a :class:`LatestSlot`, so
  the newest frame wins and skipped frames are counted.
- :class:`MicrophoneSource`: a sounddevice input stream whose callback only copies each block
  into a :class:`BoundedQueue`.
- :class:`LiveSource`: camera and microphone together.
- :class:`SessionSource`: a recorded session folder (``video.mp4`` + ``audio.wav``).
- :class:`SyntheticSource`: a deterministic drawn face and a tone, for tests and benchmarks.

:func:`open_source` turns a ``--source`` argument into one of these. Every failure a user can
cause raises :class:`SourceError` with one sentence naming the thing and the fix.
"""

from __future__ import annotations

import abc
import contextlib
import heapq
import itertools
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from eri.errors import EriError
from eri.models.audio import SAMPLE_RATE
from eri.realtime.buffers import BoundedQueue, LatestSlot

log = logging.getLogger(__name__)

#: Rate of every :class:`AudioChunk` (the audio front end's rate).
AUDIO_RATE = SAMPLE_RATE

PORTAUDIO_HINT = (
    "PortAudio library not found: install libportaudio2 (apt-get install libportaudio2)"
)


# --------------------------------------------------------------------------------------------
# Events, errors, clock
# --------------------------------------------------------------------------------------------


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


class MicrophoneUnavailable(SourceError):
    """No microphone can be used (no PortAudio library, no such device, device busy)."""


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


# --------------------------------------------------------------------------------------------
# The interface
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------

_REENCODE_HINT = "re-encode it, e.g. `ffmpeg -i IN -c:v libx264 -c:a aac OUT.mp4`"


def _check_media_path(path: Path) -> None:
    if not path.exists():
        raise SourceError(f"Media file {path} does not exist: check the path.")
    if path.is_dir():
        raise SourceError(
            f"{path} is a folder, not a media file: pass a video or audio file, or open the "
            "folder as a recorded session."
        )
    if path.stat().st_size == 0:
        raise SourceError(
            f"Media file {path} is empty (0 bytes): it was not written completely; choose "
            "another file or record it again."
        )


def _open_container(path: Path):
    import av

    try:
        return av.open(str(path), mode="r")
    except (av.FFmpegError, OSError, ValueError, UnicodeDecodeError) as exc:
        raise SourceError(
            f"{path} is not a readable media file ({_ffmpeg_reason(exc)}): check that it is a "
            f"complete video or audio file, or {_REENCODE_HINT}."
        ) from exc


def _ffmpeg_reason(exc: BaseException) -> str:
    """A short reason from an FFmpeg / OS error, without the file name repeated."""
    strerror = getattr(exc, "strerror", None)
    return str(strerror or exc).strip().rstrip(".") or type(exc).__name__


def _stream_codec_name(stream) -> str:
    ctx = stream.codec_context
    if ctx is not None:
        return ctx.name
    return getattr(stream, "name", None) or "unknown"


def _is_cover_art(stream) -> bool:
    """True for a still picture attached to an audio file (album art), which is not video."""
    try:
        return bool(int(stream.disposition) & 0x0400)  # AV_DISPOSITION_ATTACHED_PIC
    except (AttributeError, TypeError, ValueError):
        return False


def _rel_time(stream, value: int | None, t0: float) -> float | None:
    if value is None or stream.time_base is None:
        return None
    return float(value * stream.time_base) - t0


class FileSource(Source):
    """A video file with its audio track, or an audio-only file, decoded with PyAV.

    ``realtime=False`` decodes as fast as possible (analysis); ``realtime=True`` releases each
    event at its timestamp (live viewing; ``speed`` < 1 plays slower) and never sleeps to catch
    up with a slow consumer. ``audio=False`` ignores the audio track; ``loop=True`` plays the
    file again and again with times continuing (the clock never goes back). Video frames come
    out as RGB uint8; audio is
    resampled to mono float32 at :data:`AUDIO_RATE` (gaps in the track are filled with silence
    so chunk times and sample counts agree). Frames and chunks are merged into nondecreasing
    time with a small bounded reorder buffer.

    Opening checks the file (exists, not empty, readable, decodable) and raises SourceError. A
    packet that fails to decode is skipped and counted (``decode_errors``); a stream that fails
    midway (a demuxer error, or more than ``max_decode_errors`` bad packets in a row), or an
    MP4/MOV that ends well before its header says (a truncated copy), first delivers every event
    decoded so far, then raises SourceError naming the time.
    """

    def __init__(
        self,
        path: str | Path,
        realtime: bool = False,
        audio: bool = True,
        loop: bool = False,
        *,
        max_decode_errors: int = 25,
        speed: float = 1.0,
    ) -> None:
        super().__init__()
        if not speed > 0:
            raise ValueError(f"FileSource speed must be > 0, got {speed}.")
        self.speed = float(speed)
        self.path = Path(path)
        self.max_decode_errors = max_decode_errors
        self._counters["decode_errors"] = 0
        self.realtime = realtime
        self.loop = loop
        self.name = self.path.name
        _check_media_path(self.path)
        container = _open_container(self.path)
        try:
            self._probe(container, audio)
        finally:
            container.close()

    def _probe(self, container, audio: bool) -> None:
        self._format = container.format.name if container.format is not None else ""
        self._t0 = container.start_time / 1e6 if container.start_time is not None else 0.0
        videos = [v for v in container.streams.video if not _is_cover_art(v)]
        audios = list(container.streams.audio)
        if not videos and not audios:
            raise SourceError(
                f"{self.path} has no video or audio stream: choose a video or audio file."
            )
        self._video_index: int | None = None
        self._audio_index: int | None = None
        self._video_end: float | None = None
        self._audio_end: float | None = None
        self.has_video = bool(videos)
        self.fps = None
        self.width = self.height = None
        self.frame_count = 0
        if videos:
            v = videos[0]
            if v.codec_context is None:
                raise SourceError(
                    f"{self.path} uses the video codec {_stream_codec_name(v)!r}, which this "
                    f"FFmpeg build cannot decode: {_REENCODE_HINT}."
                )
            self._video_index = v.index
            rate = v.average_rate or v.guessed_rate or v.base_rate
            self.fps = float(rate) if rate else None
            self.width = v.codec_context.width or None
            self.height = v.codec_context.height or None
            start = _rel_time(v, v.start_time, self._t0)
            self._video_start = start if start is not None else 0.0
            if v.duration:
                self._video_end = self._video_start + float(v.duration * v.time_base)
        if container.duration is not None:
            self.duration_s: float | None = container.duration / 1e6
        elif self._video_end is not None:
            self.duration_s = self._video_end
        else:
            self.duration_s = None
        if videos:
            if videos[0].frames:
                self.frame_count = int(videos[0].frames)
            elif self.duration_s and self.fps:
                self.frame_count = int(round(self.duration_s * self.fps))
        self.has_audio = False
        if not audios:
            self.audio_note = "the file has no audio track"
        elif not audio:
            self.audio_note = "audio was turned off for this source"
        elif audios[0].codec_context is None:
            self.audio_note = (
                f"the audio track uses the codec {_stream_codec_name(audios[0])!r}, which this "
                "FFmpeg build cannot decode"
            )
            log.warning("%s: %s; continuing without audio.", self.path, self.audio_note)
        else:
            a = audios[0]
            self._audio_index = a.index
            self.has_audio = True
            self.audio_note = None
            start = _rel_time(a, a.start_time, self._t0)
            self._audio_start = start if start is not None else 0.0
            if a.duration:
                self._audio_end = self._audio_start + float(a.duration * a.time_base)

    # ---- decoding ---------------------------------------------------------------------------

    def _events(self) -> Iterator[Event]:
        events = self._all_passes()
        if self.realtime:
            events = _paced(events, self._stop_event, self._counters, self.speed)
        return events

    def _all_passes(self) -> Iterator[Event]:
        offset, index = 0.0, 0
        while True:
            end_s, frames = yield from self._one_pass(offset, index)
            if not self.loop or self.stopped:
                return
            if frames == 0 and end_s <= offset:
                return  # nothing decodable: do not spin
            offset = max(offset + (self.duration_s or 0.0), end_s)
            index += frames

    def _one_pass(self, offset: float, index0: int):
        """Decode the file once; yields events, returns (end time, frames decoded)."""
        import av

        container = _open_container(self.path)
        try:
            streams = []
            vs = as_ = None
            if self._video_index is not None:
                vs = container.streams[self._video_index]
                vs.thread_type = "AUTO"
                streams.append(vs)
            if self._audio_index is not None:
                as_ = container.streams[self._audio_index]
                streams.append(as_)
            watermarks: dict[str, float] = {}
            if vs is not None:
                watermarks["video"] = offset + self._video_start
            if as_ is not None:
                watermarks["audio"] = offset + self._audio_start
            reorder = _Reorder(watermarks)
            audio = _AudioTrack(as_, self._t0, offset) if as_ is not None else None
            audio_end = offset + self._audio_end if self._audio_end is not None else None
            frames = 0
            video_end = offset
            position = offset
            failures = [0]  # consecutive packets that failed to decode
            try:
                for packet in container.demux(streams):
                    if self.stopped:
                        return max(video_end, position), frames
                    if packet.stream is vs:
                        for frame in self._decode(packet, failures, position):
                            event = self._video_event(frame, index0 + frames, offset, frames)
                            frames += 1
                            self._count_frame()
                            position = event.time_s
                            video_end = event.time_s + (1.0 / self.fps if self.fps else 0.0)
                            yield from reorder.push("video", event, event.time_s)
                    elif audio is not None:
                        for frame in self._decode(packet, failures, position):
                            for chunk in audio.feed(frame):
                                self._count_chunk(chunk)
                                position = chunk.time_s
                                yield from reorder.push("audio", chunk, chunk.end_s)
                        if audio_end is not None and audio.input_end >= audio_end - 0.05:
                            # The track is complete (often well before the video ends): flush it
                            # now so the frames after it need not wait in the reorder buffer.
                            for chunk in audio.flush():
                                self._count_chunk(chunk)
                                yield from reorder.push("audio", chunk, chunk.end_s)
                            yield from reorder.finish("audio")
                if audio is not None:
                    for chunk in audio.flush():
                        self._count_chunk(chunk)
                        yield from reorder.push("audio", chunk, chunk.end_s)
            except av.FFmpegError as exc:
                yield from reorder.flush()
                self._note_reorder(reorder, audio)
                raise SourceError(
                    f"{self.path} failed to decode at {position:.2f} s "
                    f"({_ffmpeg_reason(exc)}): the file is damaged after that point; the "
                    f"{frames} frames before it were delivered."
                ) from exc
            yield from reorder.flush()
            self._note_reorder(reorder, audio)
            self._check_complete(offset, frames, video_end, audio)
            return max(video_end, audio.end_s if audio is not None else offset), frames
        finally:
            container.close()

    def _decode(self, packet, failures: list[int], position: float) -> list:
        """Decode one packet; a bad packet is skipped and counted, a run of them re-raises."""
        import av

        try:
            frames = packet.decode()
        except av.FFmpegError as exc:
            failures[0] += 1
            self._counters["decode_errors"] += 1
            if failures[0] > self.max_decode_errors:
                raise
            if self._counters["decode_errors"] <= 3:
                log.warning(
                    "%s: skipped a packet that failed to decode near %.2f s (%s).",
                    self.path,
                    position,
                    _ffmpeg_reason(exc),
                )
            return []
        failures[0] = 0
        return frames

    def _video_event(self, frame, index: int, offset: float, n: int) -> VideoFrame:
        image = frame.to_ndarray(format="rgb24")
        if not image.flags.c_contiguous:
            image = np.ascontiguousarray(image)
        if frame.time is not None:
            t = float(frame.time) - self._t0
        else:
            t = self._video_start + (n / self.fps if self.fps else 0.0)
        return VideoFrame(index=index, time_s=offset + t, image=image)

    def _note_reorder(self, reorder: _Reorder, audio: _AudioTrack | None) -> None:
        self._counters["late_events"] = self._counters.get("late_events", 0) + reorder.late
        self._counters["reorder_forced"] = self._counters.get("reorder_forced", 0) + reorder.forced
        if audio is not None:
            gaps = self._counters.get("audio_gap_filled_s", 0.0) + audio.gap_filled_s
            self._counters["audio_gap_filled_s"] = gaps
        if reorder.late:
            log.warning(
                "%s: %d events arrived out of time order and were moved to the time of the "
                "event before them.",
                self.path,
                reorder.late,
            )

    def _check_complete(
        self, offset: float, frames: int, video_end: float, audio: _AudioTrack | None
    ) -> None:
        """Raise if an MP4/MOV stream ended well before its header's duration (truncated)."""
        if self.stopped or not any(k in self._format for k in ("mov", "mp4")):
            return
        checks = []
        if self._video_end is not None and self._video_index is not None:
            checks.append(("video", video_end, offset + self._video_end))
        if audio is not None and self._audio_end is not None and audio.samples_out:
            checks.append(("audio", audio.end_s, offset + self._audio_end))
        for kind, got, expected in checks:
            if got < expected - max(1.0, 0.05 * (expected - offset)):
                raise SourceError(
                    f"{self.path} ends at {got - offset:.2f} s although its header says "
                    f"{expected - offset:.2f} s of {kind}: the file is truncated or damaged "
                    f"after {got - offset:.2f} s; the {frames} frames before it were delivered."
                )


class _AudioTrack:
    """Decoded audio frames of one stream -> mono float32 chunks at AUDIO_RATE with times.

    Chunk times count samples from the first frame's timestamp; a gap in the track's timestamps
    larger than ``gap_s`` is filled with silence so the count stays on the timeline.
    """

    def __init__(self, stream, t0: float, offset: float, gap_s: float = 0.1) -> None:
        self._resampler = None
        self._stream = stream
        self._t0 = t0
        self._offset = offset
        self._gap_s = gap_s
        self._first: float | None = None  # time of the first input sample
        self._in_time = 0.0  # seconds of input consumed since the first sample
        self.samples_out = 0
        self.gap_filled_s = 0.0

    @property
    def end_s(self) -> float:
        return (self._first if self._first is not None else self._offset) + (
            self.samples_out / AUDIO_RATE
        )

    @property
    def input_end(self) -> float:
        """Time just after the last input sample fed so far."""
        return (self._first if self._first is not None else self._offset) + self._in_time

    def feed(self, frame) -> list[AudioChunk]:
        import av

        if self._resampler is None:
            self._resampler = av.AudioResampler(format="flt", layout="mono", rate=AUDIO_RATE)
        chunks: list[AudioChunk] = []
        t = float(frame.time) - self._t0 + self._offset if frame.time is not None else None
        if self._first is None:
            self._first = t if t is not None else self._offset
        elif t is not None:
            gap = t - (self._first + self._in_time)
            if gap > self._gap_s:
                n = int(round(gap * AUDIO_RATE))
                chunks.append(self._chunk(np.zeros(n, dtype=np.float32)))
                self._in_time += gap
                self.gap_filled_s += gap
        rate = frame.sample_rate or AUDIO_RATE
        self._in_time += frame.samples / rate
        for out in self._resampler.resample(frame):
            chunks.append(self._chunk(out.to_ndarray()))
        return [c for c in chunks if len(c.samples)]

    def flush(self) -> list[AudioChunk]:
        if self._resampler is None:
            return []
        outs, self._resampler = self._resampler.resample(None), None
        chunks = [self._chunk(out.to_ndarray()) for out in outs]
        return [c for c in chunks if len(c.samples)]

    def _chunk(self, samples: np.ndarray) -> AudioChunk:
        samples = np.array(samples, dtype=np.float32).reshape(-1)
        assert self._first is not None
        chunk = AudioChunk(self._first + self.samples_out / AUDIO_RATE, samples)
        self.samples_out += len(samples)
        return chunk


# --------------------------------------------------------------------------------------------
# Camera
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _quiet_opencv():
    """Silence OpenCV's warnings while probing cameras that may not exist."""
    try:
        import cv2

        level = cv2.utils.logging.getLogLevel()
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    except Exception:  # pragma: no cover - logging API missing
        yield
        return
    try:
        yield
    finally:
        cv2.utils.logging.setLogLevel(level)


def _default_capture(index: int):
    import cv2

    with _quiet_opencv():
        return cv2.VideoCapture(index)


def _to_rgb(image: np.ndarray) -> np.ndarray:
    """A camera image (BGR, BGRA or gray) as [H, W, 3] uint8 RGB, C-contiguous."""
    import cv2

    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


class CameraSource(Source):
    """An OpenCV camera, read by its own thread so the newest frame always wins.

    The reader thread stamps each frame with the shared :class:`Clock` as ``read()`` returns,
    converts BGR to RGB and puts it into a :class:`LatestSlot`; frames the consumer did not take
    in time are replaced and counted in ``frames_dropped``. Frame ``index`` counts every
    captured frame, so skipped frames show as gaps. ``capture_factory(index)`` makes the
    ``cv2.VideoCapture``-like object (tests inject a fake one). A camera runs once: after
    :meth:`stop` create a new one.
    """

    live = True

    def __init__(
        self,
        index: int = 0,
        width: int = 640,
        height: int = 480,
        fps: float = 30.0,
        *,
        capture_factory: Callable[[int], Any] | None = None,
        clock: Clock | None = None,
        stall_timeout_s: float = 3.0,
    ) -> None:
        super().__init__()
        self.index = int(index)
        self.name = f"camera {self.index}"
        self.clock = clock or Clock()
        self.stall_timeout_s = stall_timeout_s
        factory = capture_factory or _default_capture
        try:
            cap = factory(self.index)
        except Exception as exc:
            raise SourceError(
                f"Camera {self.index} could not be opened ({exc}): run `eri info` to list "
                "cameras, or pass --source PATH to read a video file."
            ) from exc
        if cap is None or not cap.isOpened():
            if cap is not None:
                cap.release()
            raise SourceError(
                f"Camera {self.index} could not be opened: it does not exist or another program "
                "is using it; run `eri info` to list cameras, or pass --source PATH to read a "
                "video file."
            )
        self._cap = cap
        import cv2

        cap.set(cv2.CAP_PROP_FRAME_WIDTH, float(width))
        cap.set(cv2.CAP_PROP_FRAME_HEIGHT, float(height))
        cap.set(cv2.CAP_PROP_FPS, float(fps))
        self.width = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)) or width
        self.height = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)) or height
        self.fps = float(cap.get(cv2.CAP_PROP_FPS)) or float(fps)
        self.has_audio = False
        self.audio_note = "a camera has no audio; add a microphone"
        self._slot: LatestSlot[VideoFrame] = LatestSlot()
        self._thread: threading.Thread | None = None
        self._error: SourceError | None = None
        self._finished = False
        self._counters["read_failures"] = 0

    def start(self) -> None:
        if self._finished:
            raise SourceError(
                f"Camera {self.index} was stopped and cannot be restarted: open a new source."
            )
        if self._thread is not None:
            return
        super().start()
        self.clock.ensure_started()
        self._thread = threading.Thread(
            target=self._read_loop, name=f"camera-{self.index}", daemon=True
        )
        self._thread.start()

    def _read_loop(self) -> None:
        cap, counters = self._cap, self._counters
        captured = 0
        last_ok = time.monotonic()
        try:
            while not self._stop_event.is_set():
                ok, image = cap.read()
                t = self.clock.now()
                if not ok or image is None:
                    counters["read_failures"] += 1
                    if time.monotonic() - last_ok > self.stall_timeout_s:
                        self._error = SourceError(
                            f"Camera {self.index} stopped delivering frames after {captured} "
                            "frames: check its cable and that no other program took it; the "
                            "frames before were kept."
                        )
                        return
                    self._stop_event.wait(0.005)
                    continue
                last_ok = time.monotonic()
                frame = VideoFrame(index=captured, time_s=t, image=_to_rgb(image))
                captured += 1
                counters["frames_read"] = captured
                self._slot.put(frame)
                counters["frames_dropped"] = self._slot.replaced
        except Exception as exc:  # a driver error must not vanish with the thread
            log.exception("camera %d reader failed", self.index)
            self._error = SourceError(
                f"Camera {self.index} failed while reading ({exc}): reconnect it and start "
                "again; the frames before were kept."
            )
        finally:
            self._slot.close()

    def poll(self, timeout: float | None) -> VideoFrame | None:
        """The newest frame not yet taken, waiting up to ``timeout`` s; None if none came."""
        return self._slot.get(timeout)

    def ended(self) -> bool:
        """True once the reader has ended and every frame was taken; raises its error if any."""
        if self._slot.closed and len(self._slot) == 0:
            if self._error is not None:
                raise self._error
            return True
        return False

    def _events(self) -> Iterator[VideoFrame]:
        while True:
            frame = self.poll(0.1)
            if frame is not None:
                yield frame
            elif self.ended() or self.stopped:
                return

    def stop(self) -> None:
        super().stop()
        self._finished = True
        thread = self._thread
        if thread is not None:
            thread.join(timeout=2.0)
            if thread.is_alive():
                log.warning("camera %d reader did not stop within 2 s", self.index)
                return  # releasing a capture inside read() can crash the driver
        if self._cap is not None:
            self._cap.release()
            self._cap = None
        self._slot.close()

    def stats(self) -> dict[str, float]:
        counters = super().stats()
        counters["frames_dropped"] = self._slot.replaced
        return counters


def list_cameras(
    max_index: int = 5, capture_factory: Callable[[int], Any] | None = None
) -> list[dict[str, Any]]:
    """Cameras at indices 0..max_index that open: [{index, width, height, fps}]. Never raises."""
    found = []
    factory = capture_factory or _default_capture
    for index in range(max_index + 1):
        cap = None
        try:
            import cv2

            cap = factory(index)
            if cap is not None and cap.isOpened():
                found.append(
                    {
                        "index": index,
                        "width": int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)),
                        "height": int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)),
                        "fps": float(cap.get(cv2.CAP_PROP_FPS)),
                    }
                )
        except Exception as exc:  # eri info must always finish
            log.debug("camera %d probe failed: %s", index, exc)
        finally:
            with contextlib.suppress(Exception):
                if cap is not None:
                    cap.release()
    return found


# --------------------------------------------------------------------------------------------
# Microphone
# --------------------------------------------------------------------------------------------


def _import_sounddevice():
    """Import sounddevice, turning a missing PortAudio library into MicrophoneUnavailable."""
    try:
        import sounddevice
    except OSError as exc:  # raised by sounddevice when libportaudio cannot be loaded
        raise MicrophoneUnavailable(
            f"{PORTAUDIO_HINT} to use the microphone, or pass --mic none."
        ) from exc
    except ImportError as exc:
        raise MicrophoneUnavailable(
            "The sounddevice package is not installed: run `pip install sounddevice` to use the "
            "microphone, or pass --mic none."
        ) from exc
    return sounddevice


def microphone_status() -> tuple[bool, str]:
    """(usable, one line for `eri info`): the default input device, or why there is none."""
    try:
        sd = _import_sounddevice()
    except MicrophoneUnavailable as exc:
        return False, str(exc)
    try:
        info = sd.query_devices(kind="input")
        version = sd.get_portaudio_version()[1]
        return True, (
            f"default input: {info['name']} ({info['default_samplerate']:.0f} Hz, {version})"
        )
    except Exception as exc:
        return False, f"no microphone found ({exc}); connect one or pass --mic none"


def list_microphones() -> list[dict[str, Any]]:
    """Input devices: [{index, name, channels, default_samplerate, hostapi}]. Never raises."""
    try:
        sd = _import_sounddevice()
        devices = sd.query_devices()
        hostapis = sd.query_hostapis()
    except Exception as exc:
        log.debug("no microphones: %s", exc)
        return []
    found = []
    for index, dev in enumerate(devices):
        if dev.get("max_input_channels", 0) > 0:
            hostapi = dev.get("hostapi")
            found.append(
                {
                    "index": index,
                    "name": dev.get("name"),
                    "channels": dev.get("max_input_channels"),
                    "default_samplerate": dev.get("default_samplerate"),
                    "hostapi": hostapis[hostapi]["name"] if hostapi is not None else None,
                }
            )
    return found


class _Resample:
    """Streaming mono float32 resampler (FFmpeg's swresample through PyAV) to AUDIO_RATE."""

    def __init__(self, rate: int) -> None:
        import av

        self.rate = rate
        self._resampler = av.AudioResampler(format="flt", layout="mono", rate=AUDIO_RATE)
        self._av = av

    def __call__(self, samples: np.ndarray) -> np.ndarray:
        frame = self._av.AudioFrame.from_ndarray(
            np.ascontiguousarray(samples, dtype=np.float32).reshape(1, -1),
            format="flt",
            layout="mono",
        )
        frame.sample_rate = self.rate
        outs = [o.to_ndarray().reshape(-1) for o in self._resampler.resample(frame)]
        return np.concatenate(outs).astype(np.float32) if outs else np.zeros(0, np.float32)


class MicrophoneSource(Source):
    """A microphone through sounddevice (PortAudio), delivering :class:`AudioChunk` events.

    The PortAudio callback only copies the first channel of each block into a
    :class:`BoundedQueue` (``queue_s`` seconds; the oldest block is dropped and counted when the
    consumer falls that far behind) together with the block's capture time on the shared
    :class:`Clock`: PortAudio's ADC time when the host API reports it, else the callback time
    minus the block duration. The consumer side keeps chunk times on a sample count and
    re-synchronises (``audio_resyncs``) when the measured time drifts by more than 0.1 s (after
    drops or device hiccups). If the device cannot record at ``sample_rate`` it records at its
    own default rate; chunks are always resampled to :data:`AUDIO_RATE`.

    Raises :class:`MicrophoneUnavailable` when PortAudio is missing, the device does not exist or
    cannot be opened. ``stream_factory`` replaces ``sounddevice.InputStream`` (tests).
    """

    live = True

    def __init__(
        self,
        device: int | str | None = None,
        sample_rate: int = AUDIO_RATE,
        blocksize: int = 800,
        *,
        queue_s: float = 10.0,
        clock: Clock | None = None,
        stream_factory: Callable[..., Any] | None = None,
        resync_s: float = 0.1,
    ) -> None:
        super().__init__()
        self.device = device
        self.name = f"microphone {device if device is not None else '(default)'}"
        self.clock = clock or Clock()
        self.blocksize = int(blocksize)
        self.resync_s = resync_s
        self.has_video = False
        self.fps = None
        self.has_audio = True
        self.audio_note = None
        self.sample_rate = int(sample_rate)
        self._stream_factory = stream_factory
        if stream_factory is None:
            sd = _import_sounddevice()
            self._stream_factory = sd.InputStream
            self.sample_rate = self._check_device(sd, device, self.sample_rate)
        maxlen = max(2, math.ceil(queue_s * self.sample_rate / max(1, self.blocksize)))
        self._queue: BoundedQueue[tuple[float, np.ndarray]] = BoundedQueue(maxlen)
        self._resample = _Resample(self.sample_rate) if self.sample_rate != AUDIO_RATE else None
        self._stream = None
        self._finished = False
        self._next_time: float | None = None
        self._counters.update({"input_overflows": 0, "audio_resyncs": 0})

    def _check_device(self, sd, device, rate: int) -> int:
        """The rate to record at on ``device``; raises MicrophoneUnavailable if it is unusable."""
        label = "the default microphone" if device is None else f"Microphone {device!r}"
        try:
            info = sd.query_devices(device, kind="input")
        except Exception as exc:
            raise MicrophoneUnavailable(
                f"{label} was not found ({exc}): run `eri info` to list microphones, or pass "
                "--mic none."
            ) from exc
        try:
            sd.check_input_settings(device=device, channels=1, dtype="float32", samplerate=rate)
            return rate
        except Exception:
            native = int(info["default_samplerate"])
            log.info("%s cannot record at %d Hz; recording at %d Hz", label, rate, native)
            return native

    def start(self) -> None:
        if self._finished:
            raise SourceError(f"{self.name} was stopped and cannot be restarted: open a new one.")
        if self._stream is not None:
            return
        super().start()
        self.clock.ensure_started()
        self._t0 = self.clock.t0
        self._period = self.blocksize / self.sample_rate
        try:
            stream = self._stream_factory(
                samplerate=self.sample_rate,
                blocksize=self.blocksize,
                device=self.device,
                channels=1,
                dtype="float32",
                callback=self._callback,
            )
            stream.start()
        except Exception as exc:
            self._finished = True
            raise MicrophoneUnavailable(
                f"{self.name} could not be opened ({exc}): close other programs using it, run "
                "`eri info` to list microphones, or pass --mic none."
            ) from exc
        self._stream = stream

    def _callback(self, indata, frames, time_info, status) -> None:
        """PortAudio thread: copy channel 0 with its capture time; nothing else."""
        now = time.monotonic()
        lag = frames / self.sample_rate
        try:
            adc, current = time_info.inputBufferAdcTime, time_info.currentTime
            if adc > 0 and 0.0 <= current - adc < 1.0:
                lag = current - adc
        except AttributeError:
            pass
        if status:
            self._counters["input_overflows"] += 1
        self._queue.put((now - lag - self._t0, indata[:, 0].copy()))

    def _to_chunk(self, measured: float, samples: np.ndarray) -> AudioChunk | None:
        if self._resample is not None:
            samples = self._resample(samples)
            if not len(samples):
                return None
        predicted = self._next_time
        if predicted is None:
            t = measured
        elif abs(measured - predicted) > self.resync_s:
            t = measured
            self._counters["audio_resyncs"] += 1
        else:
            t = predicted
        chunk = AudioChunk(t, np.ascontiguousarray(samples, dtype=np.float32))
        self._next_time = chunk.end_s
        self._count_chunk(chunk)
        return chunk

    def poll(self, timeout: float = 0.0) -> list[AudioChunk]:
        """Every queued chunk (waiting up to ``timeout`` s for the first), oldest first."""
        if timeout > 0 and not len(self._queue):
            self._queue.wait(timeout)
        chunks = [self._to_chunk(t, s) for t, s in self._queue.drain()]
        self._counters["audio_chunks_dropped"] = self._queue.dropped
        return [c for c in chunks if c is not None]

    def _events(self) -> Iterator[AudioChunk]:
        while not self.stopped:
            yield from self.poll(0.1)
        yield from self.poll(0)  # what was queued before stop()

    def stop(self) -> None:
        super().stop()
        self._finished = True
        stream, self._stream = self._stream, None
        if stream is not None:
            with contextlib.suppress(Exception):
                stream.stop()
            with contextlib.suppress(Exception):
                stream.close()
        self._queue.close()

    def stats(self) -> dict[str, float]:
        counters = super().stats()
        counters["audio_chunks_dropped"] = self._queue.dropped
        return counters


# --------------------------------------------------------------------------------------------
# Camera + microphone
# --------------------------------------------------------------------------------------------


class LiveSource(Source):
    """A camera and (optionally) a microphone on one clock.

    Each step takes the newest camera frame and every queued audio chunk and yields them sorted
    by time. Each stream is in time order on its own; across steps a microphone block can carry
    a time slightly before a frame already yielded (PortAudio delivers blocks a block length
    late), which consumers handle by placing events by ``time_s`` per stream. Without a
    microphone, or if it fails to start, the source is visual-only and ``audio_note`` says why.
    """

    live = True

    def __init__(
        self,
        camera: CameraSource,
        mic: MicrophoneSource | None = None,
        *,
        audio_note: str | None = None,
    ) -> None:
        super().__init__()
        self.camera = camera
        self.mic = mic
        self.clock = Clock()
        camera.clock = self.clock
        if mic is not None:
            mic.clock = self.clock
        self.name = camera.name + (f" + {mic.name}" if mic is not None else "")
        self.fps, self.width, self.height = camera.fps, camera.width, camera.height
        self.has_video = True
        self.has_audio = mic is not None
        self.audio_note = None if mic is not None else (audio_note or "no microphone was given")

    def start(self) -> None:
        if self._started:
            return
        super().start()
        self.clock.reset()
        self.camera.start()
        if self.mic is not None:
            try:
                self.mic.start()
            except MicrophoneUnavailable as exc:
                log.warning("continuing without audio: %s", exc)
                self.mic = None
                self.has_audio = False
                self.audio_note = str(exc)

    def _events(self) -> Iterator[Event]:
        while not self.stopped:
            frame = self.camera.poll(0.02 if self.mic is not None else 0.1)
            batch: list[Event] = list(self.mic.poll(0)) if self.mic is not None else []
            if frame is not None:
                batch.append(frame)
            batch.sort(key=lambda e: e.time_s)
            yield from batch
            if frame is None and self.camera.ended():
                break
        if self.mic is not None:
            yield from self.mic.poll(0)

    def stop(self) -> None:
        super().stop()
        self.camera.stop()
        if self.mic is not None:
            self.mic.stop()

    def stats(self) -> dict[str, float]:
        counters = self.camera.stats()
        if self.mic is not None:
            for key, value in self.mic.stats().items():
                if key.startswith("audio") or key == "input_overflows":
                    counters[key] = value
        return counters


# --------------------------------------------------------------------------------------------
# Recorded sessions
# --------------------------------------------------------------------------------------------


class SessionSource(Source):
    """A recorded session folder: video from ``video.mp4``, audio from ``audio.wav``.

    ``audio.wav`` (the raw microphone signal) is preferred; without it (or if it is unreadable)
    the mp4's own audio track is used. Both files' times start at 0, the session start.
    """

    def __init__(self, directory: str | Path, realtime: bool = False) -> None:
        super().__init__()
        self.directory = Path(directory)
        self.realtime = realtime
        self.name = self.directory.name
        if not self.directory.is_dir():
            raise SourceError(
                f"Session folder {self.directory} does not exist: check the path (a session is "
                "the folder `eri record --out` wrote)."
            )
        video = self.directory / "video.mp4"
        wav = self.directory / "audio.wav"
        if not video.is_file():
            raise SourceError(
                f"{self.directory} is not a session folder: video.mp4 is missing (a session "
                "holds video.mp4 and audio.wav; pass a media file directly otherwise)."
            )
        self._audio: FileSource | None = None
        if wav.is_file():
            try:
                self._audio = FileSource(wav)
            except SourceError as exc:
                log.warning("%s; using the audio track of video.mp4 instead.", exc)
        self._video = FileSource(video, audio=self._audio is None)
        self.fps, self.width, self.height = self._video.fps, self._video.width, self._video.height
        self.frame_count = self._video.frame_count
        self.duration_s = self._video.duration_s
        self.has_video = self._video.has_video
        if self._audio is not None:
            self.has_audio, self.audio_note = True, None
        else:
            self.has_audio = self._video.has_audio
            self.audio_note = (
                None
                if self.has_audio
                else "the session has no audio.wav and "
                + (self._video.audio_note or "no audio track")
            )

    def _events(self) -> Iterator[Event]:
        parts = [iter(self._video)]
        if self._audio is not None:
            parts.append(iter(self._audio))
        events: Iterator[Event] = heapq.merge(*parts, key=lambda e: e.time_s)
        events = self._stoppable(events)
        if self.realtime:
            events = _paced(events, self._stop_event, self._counters)
        return events

    def _stoppable(self, events: Iterator[Event]) -> Iterator[Event]:
        for event in events:
            if self.stopped:
                return
            yield event

    def stats(self) -> dict[str, float]:
        counters = dict(self._counters)
        for part in (self._video, self._audio):
            if part is not None:
                for key, value in part.stats().items():
                    if key != "max_lag_s":
                        counters[key] = counters.get(key, 0) + value
        return counters


# --------------------------------------------------------------------------------------------
# Synthetic
# --------------------------------------------------------------------------------------------


class SyntheticSource(Source):
    """A deterministic drawn face (moving, blinking, mouth opening) and a tone with noise.

    ``num_frames=None`` runs until :meth:`stop`. Frames are at ``i / fps``; audio comes in
    50 ms chunks (800 samples at :data:`AUDIO_RATE`) covering the same span.
    """

    CHUNK = 800

    def __init__(
        self,
        num_frames: int | None = 300,
        fps: float = 30.0,
        width: int = 640,
        height: int = 360,
        audio: bool = True,
        realtime: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if num_frames is not None and num_frames < 0:
            raise ValueError(f"SyntheticSource num_frames must be >= 0, got {num_frames}.")
        self.num_frames = num_frames
        self.frame_count = num_frames
        self.fps = float(fps)
        self.width, self.height = int(width), int(height)
        self.realtime = realtime
        self.seed = seed
        self.name = "synthetic"
        self.has_video = True
        self.has_audio = audio
        self.audio_note = None if audio else "audio was turned off for this source"
        self.duration_s = None if num_frames is None else num_frames / self.fps
        rng = np.random.default_rng(seed)
        noise = rng.integers(0, 24, size=(self.height, self.width, 1), dtype=np.uint8)
        ramp = np.linspace(40, 110, self.width, dtype=np.float32)[None, :, None]
        base = np.broadcast_to(ramp, (self.height, self.width, 3)) * np.array([0.8, 0.9, 1.0])
        self._background = np.ascontiguousarray(base.astype(np.uint8) + noise)

    def render(self, i: int) -> np.ndarray:
        """Frame ``i`` [H, W, 3] uint8 RGB."""
        import cv2

        t = i / self.fps
        h, w = self.height, self.width
        img = self._background.copy()
        s = min(h, w)
        cx = int(w / 2 + 0.06 * w * math.sin(2 * math.pi * 0.2 * t))
        cy = int(h / 2 + 0.03 * h * math.sin(2 * math.pi * 0.13 * t + 1.0))
        fa, fb = int(0.24 * s), int(0.32 * s)
        cv2.ellipse(img, (cx, cy), (fa, fb), 0, 0, 360, (224, 172, 140), -1, cv2.LINE_AA)
        blink = (i % int(max(1, 3 * self.fps))) < 3
        for side in (-1, 1):
            ex, ey = cx + side * int(0.42 * fa), cy - int(0.22 * fb)
            eh = 1 if blink else max(2, int(0.07 * s))
            cv2.ellipse(img, (ex, ey), (int(0.1 * s), eh), 0, 0, 360, (250, 250, 250), -1)
            if not blink:
                cv2.circle(img, (ex, ey), max(2, int(0.04 * s)), (40, 30, 20), -1, cv2.LINE_AA)
            by = ey - int(0.13 * s)
            cv2.line(img, (ex - int(0.1 * s), by), (ex + int(0.1 * s), by), (90, 60, 40), 3)
        nose = (cx, cy + int(0.08 * fb))
        cv2.line(img, (cx, cy - int(0.05 * fb)), nose, (180, 120, 100), 2, cv2.LINE_AA)
        mouth_open = 0.5 + 0.5 * math.sin(2 * math.pi * 0.5 * t)
        my = cy + int(0.45 * fb)
        axes = (int(0.3 * fa), max(2, int(0.12 * s * mouth_open)))
        cv2.ellipse(img, (cx, my), axes, 0, 0, 360, (150, 40, 50), -1, cv2.LINE_AA)
        return img

    def audio_chunk(self, k: int) -> AudioChunk:
        """Audio chunk ``k`` (800 samples from ``k * 0.05`` s): a pulsing 220 Hz tone + noise."""
        n0 = k * self.CHUNK
        n = self.CHUNK
        if self.num_frames is not None:
            total = int(round(self.num_frames / self.fps * AUDIO_RATE))
            n = max(0, min(n, total - n0))
        t = (n0 + np.arange(n)) / AUDIO_RATE
        envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 0.5 * t)
        rng = np.random.default_rng((self.seed, k))
        samples = 0.2 * envelope * np.sin(2 * np.pi * 220.0 * t) + 0.01 * rng.standard_normal(n)
        return AudioChunk(n0 / AUDIO_RATE, samples.astype(np.float32))

    def _generate(self) -> Iterator[Event]:
        total = int(round(self.num_frames / self.fps * AUDIO_RATE)) if self.num_frames else 0
        chunks = math.ceil(total / self.CHUNK) if self.num_frames is not None else None
        i = k = 0
        while not self.stopped:
            frame_t = i / self.fps if self.num_frames is None or i < self.num_frames else math.inf
            chunk_t = k * self.CHUNK / AUDIO_RATE
            if not self.has_audio or (chunks is not None and k >= chunks):
                chunk_t = math.inf
            if frame_t == math.inf and chunk_t == math.inf:
                return
            if frame_t <= chunk_t:
                self._count_frame()
                yield VideoFrame(index=i, time_s=frame_t, image=self.render(i))
                i += 1
            else:
                chunk = self.audio_chunk(k)
                self._count_chunk(chunk)
                yield chunk
                k += 1

    def _events(self) -> Iterator[Event]:
        events = self._generate()
        if self.realtime:
            events = _paced(events, self._stop_event, self._counters)
        return events


# --------------------------------------------------------------------------------------------
# --source dispatch
# --------------------------------------------------------------------------------------------


def _mic_device(mic: str | None) -> int | str | None:
    if mic is None or mic.strip().lower() in ("", "default"):
        return None
    return int(mic) if mic.strip().isdigit() else mic


def open_source(spec: str | int | Path, *, realtime: bool, mic: str | None = None) -> Source:
    """Turn a ``--source`` value into a Source.

    ``0`` / an int -> camera (with the default microphone, or ``mic``; ``mic="none"`` for none);
    ``synthetic`` or ``synthetic:N`` -> :class:`SyntheticSource` (N frames); a folder ->
    :class:`SessionSource`; a file -> :class:`FileSource`. With the default microphone a missing
    PortAudio or microphone makes the camera visual-only (``audio_note`` says why); a microphone
    that was asked for by name or index raises instead.
    """
    if isinstance(spec, bool):
        raise SourceError(
            f"Source {spec!r} is not valid: pass a camera index, a path or 'synthetic'."
        )
    if isinstance(spec, int) or (isinstance(spec, str) and spec.strip().isdigit()):
        camera = CameraSource(int(spec))
        if mic is not None and mic.strip().lower() == "none":
            return LiveSource(camera, None, audio_note="the microphone was turned off (--mic none)")
        device = _mic_device(mic)
        try:
            microphone = MicrophoneSource(device=device)
        except MicrophoneUnavailable as exc:
            if device is not None:
                camera.stop()
                raise
            log.warning("continuing without audio: %s", exc)
            return LiveSource(camera, None, audio_note=str(exc))
        return LiveSource(camera, microphone)
    if isinstance(spec, str) and spec.strip().lower().startswith("synthetic"):
        kind, _, count = spec.strip().partition(":")
        if kind.lower() == "synthetic":
            try:
                frames = int(count) if count else 300
            except ValueError:
                frames = -1
            if frames < 0:
                raise SourceError(
                    f"Source {spec!r} is not valid: write synthetic or synthetic:N with N frames."
                )
            return SyntheticSource(num_frames=frames, realtime=realtime)
    path = Path(spec)
    if path.is_dir():
        return SessionSource(path, realtime=realtime)
    if path.exists() or path.suffix:
        return FileSource(path, realtime=realtime)
    raise SourceError(
        f"Source {str(spec)!r} is not a camera index, 'synthetic', an existing media file or a "
        "session folder: pass e.g. --source 0, --source clip.mp4 or --source path/to/session."
    )
