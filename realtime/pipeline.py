"""The streaming inference loop (DESIGN.md, "The data path").

    frames, audio chunks (one clock)
      -> FaceTracker -> aligned crop                     (every frame)
      -> backend.encode_frames(crop) -> feature ring     (once per frame, "streaming")
      -> StreamingFrontEnd (MFCC frames)                 (as audio arrives)
      -> WindowSpec sample times -> nearest features + audio tokens
      -> backend.head -> 7 intensities                   (every frame)

``mode="recompute"`` keeps the crops instead and re-encodes all T sampled crops for every output
step, as the seeds' code does: the baseline the benchmark compares against.

:func:`run_offline` feeds every event of a source to the engine (analysis); :class:`LiveRunner`
reads the source in its own thread into a newest-wins slot and a bounded audio queue, so capture
never waits for inference, and counts the frames inference skipped.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from models.audio import StreamingFrontEnd
from models.bundle import Bundle
from models.crop import to_tensor_layout
from models.export import AUDIO_PRESENT, AUDIO_TOKENS, VISUAL, VISUAL_PRESENT
from models.spec import NUM_EMOTIONS
from realtime.backends import Backend
from realtime.buffers import BoundedQueue, LatestSlot, RingBuffer
from realtime.sources import AudioChunk, Source, VideoFrame

log = logging.getLogger(__name__)

MODES = ("streaming", "recompute")
#: Samples quieter than this (|x| < 1e-4, -80 dBFS) count as silence: a muted source.
SILENCE_LEVEL = 1e-4
#: Audio gaps up to this long (dropped chunks) are filled with zeros; longer ones restart audio.
MAX_AUDIO_GAP_S = 1.0
#: Output steps per second when a source has audio but no video (a wav file).
AUDIO_ONLY_RATE = 10.0
STAGES = ("decode", "face", "encoder", "head", "total")


class PipelineError(RuntimeError):
    """The pipeline cannot go on; the message says why and what to do."""


@dataclass
class FrameOutput:
    """One output step: a CSV row plus the timings of the stages that produced it."""

    time_s: float
    frame_index: int
    face_detected: bool
    audio_present: bool
    intensities: np.ndarray  # [7] float32 in [0, 1]
    stages_ms: dict[str, float] = field(default_factory=dict)
    box: tuple[float, float, float, float] | None = None


class StreamingEngine:
    """Per-frame streaming inference over one source. Not thread-safe: one caller thread."""

    def __init__(self, bundle: Bundle, backend: Backend, tracker, *, mode: str = "streaming",
                 max_fps: float = 60.0) -> None:
        if mode not in MODES:
            raise ValueError(f"Unknown mode {mode!r}; choose one of: {', '.join(MODES)}.")
        model = bundle.model
        self.bundle, self.backend, self.tracker, self.mode = bundle, backend, tracker, mode
        self.window = model.window
        self.crop_size = model.crop.size
        capacity = int(math.ceil(self.window.context_s * max_fps)) + 8
        if mode == "streaming":
            self.cache = RingBuffer(capacity, model.feature_dim, np.float32)
        else:
            self.cache = RingBuffer(capacity, (self.crop_size, self.crop_size, 3), np.uint8)
        self.audio_spec = model.audio_spec
        self.audio: StreamingFrontEnd | None = None
        self.feature_dim = model.feature_dim
        self.start_s: float | None = None
        self.last_sound_s = -math.inf
        self.audio_gaps = 0
        self.frames = 0

    # ------------------------------------------------------------------ audio
    def push_audio(self, chunk: AudioChunk) -> None:
        """Feed one chunk [n] of mono audio at the model's sample rate."""
        if self.audio_spec is None or chunk.samples.size == 0:
            return
        sr = self.audio_spec.sample_rate
        if self.start_s is None:
            self.start_s = chunk.time_s
        if self.audio is None:
            self.audio = StreamingFrontEnd(self.audio_spec, self.window.context_s + 5.0,
                                           start_s=chunk.time_s)
        gap = chunk.time_s - self.audio.time_s
        if gap > MAX_AUDIO_GAP_S:
            self.audio_gaps += 1
            self.audio = StreamingFrontEnd(self.audio_spec, self.window.context_s + 5.0,
                                           start_s=chunk.time_s)
        elif gap * sr >= 1.0:  # dropped chunks: keep the clock right with silence
            self.audio_gaps += 1
            self.audio.push(np.zeros(int(round(gap * sr)), np.float32))
        self.audio.push(chunk.samples)
        loud = np.flatnonzero(np.abs(chunk.samples) > SILENCE_LEVEL)
        if loud.size:
            self.last_sound_s = chunk.time_s + (loud[-1] + 1) / sr

    # ------------------------------------------------------------------ frames
    def process_frame(self, frame: VideoFrame) -> FrameOutput:
        """Track, encode (once), and run the head over the window ending at this frame."""
        t = frame.time_s
        if self.start_s is None:
            self.start_s = t
        c0 = time.perf_counter()
        face = self.tracker.process(frame.image, t)
        c1 = time.perf_counter()
        has_face = face.crop is not None
        if has_face:
            if self.mode == "streaming":
                features = self.backend.encode_frames(to_tensor_layout(face.crop[None]))[0]
                self.cache.push(features, t, frame.index)
            else:
                self.cache.push(face.crop, t, frame.index)
        c2 = time.perf_counter()
        out, recompute_ms = self._head(t, frame.index, visual_present=has_face)
        c3 = time.perf_counter()
        out.face_detected = has_face
        out.box = None if face.box is None else tuple(float(v) for v in face.box)
        out.stages_ms = {
            "face": (c1 - c0) * 1e3,
            "encoder": (c2 - c1) * 1e3 + recompute_ms,
            "head": (c3 - c2) * 1e3 - recompute_ms,
            "total": (c3 - c0) * 1e3,
        }
        self.frames += 1
        return out

    def output_at(self, time_s: float, step_index: int) -> FrameOutput:
        """An output step with no video frame (audio-only sources)."""
        if self.start_s is None:
            self.start_s = time_s
        c0 = time.perf_counter()
        out, _ = self._head(time_s, step_index, visual_present=False)
        ms = (time.perf_counter() - c0) * 1e3
        out.stages_ms = {"face": 0.0, "encoder": 0.0, "head": ms, "total": ms}
        return out

    def _head(self, t: float, index: int, *, visual_present: bool) -> tuple[FrameOutput, float]:
        """The output at time ``t`` and the ms spent re-encoding crops (recompute mode)."""
        times = self.window.sample_times(t, self.start_s if self.start_s is not None else t)
        recompute_ms = 0.0
        if len(self.cache):
            items = self.cache.nearest(times).items
            if self.mode == "recompute":
                r0 = time.perf_counter()
                items = self.backend.encode_frames(to_tensor_layout(items))
                recompute_ms = (time.perf_counter() - r0) * 1e3
            visual = items[None].astype(np.float32, copy=False)
        else:
            visual = np.zeros((1, len(times), self.feature_dim), np.float32)
            visual_present = False
        inputs = {VISUAL: visual, VISUAL_PRESENT: np.array([float(visual_present)], np.float32)}
        audio_present = False
        if self.audio_spec is not None:
            if self.audio is not None and len(self.audio):
                tokens, present = self.audio.tokens(times)
                audio_present = bool(present.any()) and self.last_sound_s >= t - self.window.context_s
            else:
                tokens = np.zeros((len(times), self.audio_spec.token_dim), np.float32)
            inputs[AUDIO_TOKENS] = tokens[None]
            inputs[AUDIO_PRESENT] = np.array([float(audio_present)], np.float32)
        intensities = self.backend.head(inputs)[0]
        if not np.all(np.isfinite(intensities)):
            raise PipelineError(
                f"The model produced NaN/inf at t={t:.3f} s with backend "
                f"{self.backend.describe()}; the model bundle is broken, retrain or re-export it.")
        out = FrameOutput(time_s=t, frame_index=index, face_detected=False,
                          audio_present=audio_present, intensities=intensities.astype(np.float32))
        return out, recompute_ms


# ---------------------------------------------------------------------- drivers
def run_offline(source: Source, engine: StreamingEngine) -> Iterator[FrameOutput]:
    """Every event of ``source`` through ``engine``, as fast as possible (analysis).

    Yields one output per video frame; for an audio-only source, one every
    1 / AUDIO_ONLY_RATE seconds of audio.
    """
    step = 0
    next_audio_only = None
    audio_only = source.fps is None
    events = iter(source)
    while True:
        d0 = time.perf_counter()
        try:
            event = next(events)
        except StopIteration:
            break
        decode_ms = (time.perf_counter() - d0) * 1e3
        if isinstance(event, AudioChunk):
            engine.push_audio(event)
            if audio_only:
                end = event.time_s + event.samples.size / engine_rate(engine)
                if next_audio_only is None:
                    next_audio_only = event.time_s + 1.0 / AUDIO_ONLY_RATE
                while next_audio_only <= end + 1e-9:
                    out = engine.output_at(next_audio_only, step)
                    out.stages_ms["decode"] = decode_ms
                    step += 1
                    next_audio_only += 1.0 / AUDIO_ONLY_RATE
                    yield out
            continue
        out = engine.process_frame(event)
        out.stages_ms["decode"] = decode_ms
        out.stages_ms["total"] += decode_ms
        yield out


def engine_rate(engine: StreamingEngine) -> int:
    return engine.audio_spec.sample_rate if engine.audio_spec else 16000


class LiveRunner:
    """Reads a live source in a capture thread; inference takes the newest frame.

    The capture thread never waits for inference: video goes into a one-frame newest-wins slot
    (frames inference had no time for are counted in :attr:`skipped`), audio into a bounded
    queue. Each output's ``stages_ms["latency"]`` is frame arrival -> output, in ms.
    """

    def __init__(self, source: Source, engine: StreamingEngine, audio_queue_s: float = 5.0,
                 on_event: Callable[[VideoFrame | AudioChunk], None] | None = None) -> None:
        self.source, self.engine = source, engine
        self.frames: LatestSlot[tuple[VideoFrame, float]] = LatestSlot()
        self.audio: BoundedQueue[AudioChunk] = BoundedQueue(max(8, int(audio_queue_s * 50)))
        self.on_event = on_event  # e.g. a recorder: sees every captured event
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._capture, name="eri-capture", daemon=True)

    @property
    def skipped(self) -> int:
        return self.frames.replaced

    def _capture(self) -> None:
        try:
            for event in self.source:
                if self._stop.is_set():
                    break
                if self.on_event is not None:
                    self.on_event(event)
                if isinstance(event, AudioChunk):
                    self.audio.put(event)
                else:
                    self.frames.put((event, time.perf_counter()))
        except BaseException as exc:  # reported by run(); outputs so far are kept
            self.error = exc
        finally:
            self.frames.close()

    def run(self) -> Iterator[FrameOutput]:
        """Outputs as inference keeps up; ends when the source ends or :meth:`stop` is called."""
        self._thread.start()
        try:
            while not self._stop.is_set():
                item = self.frames.get(timeout=0.1)
                for chunk in self.audio.drain():
                    self.engine.push_audio(chunk)
                if item is None:
                    if self.frames.closed:
                        break
                    continue
                frame, arrived = item
                out = self.engine.process_frame(frame)
                out.stages_ms["latency"] = (time.perf_counter() - arrived) * 1e3
                yield out
        finally:
            self.stop()
        if self.error is not None:
            raise self.error

    def stop(self) -> None:
        self._stop.set()
        self.source.stop()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout=5.0)


def output_row(out: FrameOutput) -> list[float | int]:
    """The CSV row of DESIGN.md for one output step."""
    return [round(out.time_s, 4), out.frame_index, int(out.face_detected),
            int(out.audio_present), *(float(v) for v in out.intensities[:NUM_EMOTIONS])]
