"""The streaming inference loop (docs/design.md, "The data path").

    frames, audio chunks (one clock)
      -> FaceTracker -> aligned crop                     (every frame)
      -> backend.encode_frames(crop) -> feature ring     (once per frame, "streaming")
      -> StreamingFrontEnd (MFCC frames)                 (as audio arrives)
      -> Window: WindowSpec sample times, nearest cached rows, audio token keys, presence flags
      -> backend.encode_audio(new tokens) -> AudioFeatureCache   (once per token)
      -> backend.head -> 7 intensities                   (every frame)

An audio token is a pure function of its key, the count of MFCC frames finished by its sample
time (:meth:`~eri.models.audio.StreamingFrontEnd.token_keys`); a window slides by one frame per
step, so in steady state only its newest token has a key no earlier step had.
:class:`~eri.realtime.audio_cache.AudioFeatureCache` keeps the features of the keys of the last
``context_s`` (plus a margin) and encodes only the missing keys of each step, in one batched
call.

``mode="recompute"`` keeps the crops instead and re-encodes all T sampled crops (and all T audio
tokens) for every output step, as the seeds' code does: the baseline the benchmark compares
against. Both modes gather an output step's inputs the same way, as one :class:`Window`
(:meth:`StreamingEngine.window_at`).

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

from eri.choices import ENGINE_MODES
from eri.errors import EriError
from eri.models.audio import StreamingFrontEnd, window_audio_span
from eri.models.bundle import Bundle
from eri.models.crop import to_tensor_layout
from eri.realtime.audio_cache import AUDIO_CACHE_MARGIN_S, AudioFeatureCache
from eri.realtime.backends import Backend
from eri.realtime.buffers import BoundedQueue, LatestSlot, RingBuffer
from eri.realtime.outputs import prediction_row
from eri.realtime.sources import AudioChunk, Source, VideoFrame

log = logging.getLogger(__name__)

MODES = ENGINE_MODES
#: Frames the offline driver hands the encoder at once (the live path always uses 1).
OFFLINE_BATCH = 8
#: Audio gaps up to this long (dropped chunks) are filled with zeros; longer ones restart audio.
MAX_AUDIO_GAP_S = 1.0
#: Output steps per second when a source has audio but no video (a wav file).
AUDIO_ONLY_RATE = 10.0
#: Per-output-step timings (ms). "audio" is the audio path: the MFCC front end plus the audio
#: encoder's work for that step; "total" is the sum of the others.
STAGES = ("decode", "audio", "face", "encoder", "head", "total")


class PipelineError(EriError, RuntimeError):
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


@dataclass(frozen=True)
class Window:
    """The inputs of the output step at ``time_s``, gathered once for either mode.

    T = the WindowSpec's samples, D = feature length, S = crop side. Only what was known at
    ``time_s`` is used (cached frames and audio up to it).
    """

    time_s: float
    #: [T] float64: the sample times (s), oldest first.
    times: np.ndarray
    #: [T, D] float32 cached features ("streaming") or [T, S, S, 3] uint8 crops ("recompute"):
    #: the cached frame nearest each sample time; None while no frame is cached.
    rows: np.ndarray | None
    #: [T] int64 key of the audio token ending at each sample time
    #: (:meth:`~eri.models.audio.StreamingFrontEnd.token_keys`); None before any audio or when
    #: the model has no audio branch ("no audio": the head gets zero features, flagged absent).
    audio_keys: np.ndarray | None
    #: The frame at ``time_s`` has a face and the cache holds a frame.
    visual_present: bool
    #: A non-silent audio frame lies within the window.
    audio_present: bool


class StreamingEngine:
    """Per-frame streaming inference over one source. Not thread-safe: one caller thread.

    :meth:`process_frames` takes one frame (live) or a few (analysis, where the encoder runs
    them as one batch); either way each output depends only on the frames and audio up to its
    own time, so live and offline give the same numbers (up to float summation order in the
    batched encoder).
    """

    def __init__(
        self,
        bundle: Bundle,
        backend: Backend,
        tracker,
        *,
        mode: str = "streaming",
        fps: float | None = None,
        cache_audio: bool | None = None,
    ) -> None:
        """``fps``: the source's frame rate, which sizes the feature cache to hold
        ``context_s`` seconds (at least 60 fps' worth). ``tracker`` may be None for a source
        without video (no face tracker, so no MediaPipe, is needed then). ``cache_audio``:
        encode each audio token once (:class:`AudioFeatureCache`; default in streaming mode)
        or all T of every window (recompute's default)."""
        if mode not in MODES:
            raise ValueError(f"Unknown mode {mode!r}; choose one of: {', '.join(MODES)}.")
        model = bundle.model
        self.bundle, self.backend, self.tracker, self.mode = bundle, backend, tracker, mode
        self.window = model.window
        self.crop_size = model.crop.size
        capacity = int(math.ceil(self.window.context_s * max(60.0, fps or 0.0))) + 8
        if mode == "streaming":
            self.cache = RingBuffer(capacity, model.feature_dim, np.float32)
        else:
            self.cache = RingBuffer(capacity, (self.crop_size, self.crop_size, 3), np.uint8)
        self.audio_spec = model.audio_spec
        self.audio: StreamingFrontEnd | None = None
        self.audio_capacity_s = self.window.context_s + 5.0
        if cache_audio is None:
            cache_audio = mode == "streaming"
        self.audio_cache: AudioFeatureCache | None = None
        if cache_audio and self.audio_spec is not None:
            per_s = self.audio_spec.sample_rate / self.audio_spec.hop_length  # keys per second
            keep = math.ceil((self.window.context_s + AUDIO_CACHE_MARGIN_S) * per_s)
            self.audio_cache = AudioFeatureCache(backend, keep)
        self.feature_dim = model.feature_dim
        self.start_s: float | None = None
        self.audio_gaps = 0
        self.frames = 0

    def warmup(self, runs: int = 3) -> None:
        """Run every graph a few times on dummy inputs (first calls allocate and plan)."""
        s = self.crop_size
        faces = np.zeros((1, 3, s, s), np.float32)
        start = self.start_s
        for _ in range(runs):
            self.backend.encode_frames(faces)
            if self.audio_spec is not None:
                self.backend.encode_audio(np.zeros((1, self.audio_spec.token_dim), np.float32))
            self.start_s = 0.0
            self._head(0.0, 0, visual_present=False)
        self.start_s = start

    # ------------------------------------------------------------------ audio
    def push_audio(self, chunk: AudioChunk) -> None:
        """Feed one chunk [n] of mono audio at the model's sample rate."""
        if self.audio_spec is None or chunk.samples.size == 0:
            return
        sr = self.audio_spec.sample_rate
        if self.start_s is None:
            self.start_s = chunk.time_s
        gap = chunk.time_s - self.audio.time_s if self.audio is not None else 0.0
        if self.audio is None or gap > MAX_AUDIO_GAP_S:
            self.audio_gaps += self.audio is not None
            self.audio = StreamingFrontEnd(
                self.audio_spec, self.audio_capacity_s, start_s=chunk.time_s
            )
            if self.audio_cache is not None:  # the new front end's keys start again at 0
                self.audio_cache.clear()
        elif gap * sr >= 1.0:  # dropped chunks: keep the clock right with silence
            self.audio_gaps += 1
            self.audio.push(np.zeros(int(round(gap * sr)), np.float32))
        self.audio.push(chunk.samples)

    # ------------------------------------------------------------------ frames
    def process_frame(self, frame: VideoFrame) -> FrameOutput:
        """One frame: track, encode once, run the head over the window ending at it."""
        return self.process_frames([frame])[0]

    def process_frames(self, frames: list[VideoFrame]) -> list[FrameOutput]:
        """Frames in time order: each tracked, their crops encoded as one batch, then the head
        over the window ending at each frame. Returns one output per frame."""
        if self.tracker is None:
            raise PipelineError(
                "This engine was built without a face tracker (for a source without video); "
                "build it with one to process video frames."
            )
        if self.start_s is None:
            self.start_s = frames[0].time_s
        c0 = time.perf_counter()
        faces, face_ms = [], []
        for frame in frames:
            f0 = time.perf_counter()
            faces.append(self.tracker.process(frame.image, frame.time_s))
            face_ms.append((time.perf_counter() - f0) * 1e3)
        c1 = time.perf_counter()
        crops = [f.crop for f in faces if f.crop is not None]
        with_face = [fr for fr, f in zip(frames, faces) if f.crop is not None]
        if self.mode == "streaming" and crops:
            features = self.backend.encode_frames(to_tensor_layout(np.stack(crops)))
            for feat, fr in zip(features, with_face):
                self.cache.push(feat, fr.time_s, fr.index)
        elif crops:
            for crop, fr in zip(crops, with_face):
                self.cache.push(crop, fr.time_s, fr.index)
        encode_ms = (time.perf_counter() - c1) * 1e3 / len(frames)
        outputs = []
        for frame, face, f_ms in zip(frames, faces, face_ms):
            h0 = time.perf_counter()
            out, recompute_ms, audio_ms = self._head(
                frame.time_s, frame.index, visual_present=face.crop is not None
            )
            h_ms = (time.perf_counter() - h0) * 1e3
            out.face_detected = face.crop is not None
            out.box = None if face.box is None else tuple(float(v) for v in face.box)
            out.stages_ms = {
                "face": f_ms,
                "encoder": encode_ms + recompute_ms,
                "audio": audio_ms,
                "head": h_ms - recompute_ms - audio_ms,
            }
            out.stages_ms["total"] = sum(out.stages_ms.values())
            outputs.append(out)
        self.frames += len(frames)
        log.debug("%d frame(s) in %.1f ms", len(frames), (time.perf_counter() - c0) * 1e3)
        return outputs

    def output_at(self, time_s: float, step_index: int) -> FrameOutput:
        """An output step with no video frame (audio-only sources)."""
        if self.start_s is None:
            self.start_s = time_s
        c0 = time.perf_counter()
        out, _, audio_ms = self._head(time_s, step_index, visual_present=False)
        ms = (time.perf_counter() - c0) * 1e3
        out.stages_ms = {
            "face": 0.0,
            "encoder": 0.0,
            "audio": audio_ms,
            "head": ms - audio_ms,
            "total": ms,
        }
        return out

    def window_at(self, t: float, *, visual_present: bool) -> Window:
        """The :class:`Window` of the output step at ``t``; ``visual_present``: its frame has a
        face. Only cached frames up to ``t`` are used (a batch may already hold later ones)."""
        start = self.start_s if self.start_s is not None else t
        times = self.window.sample_times(t, start)
        found = self.cache.nearest(times, max_time=t)
        rows = None if found is None else found.items
        keys, audio_present = None, False
        if self.audio_spec is not None and self.audio is not None and len(self.audio):
            keys = self.audio.token_keys(times)
            span = window_audio_span(t, start, self.window, self.audio_spec)
            audio_present = self.audio.audio_present(span)
        return Window(
            time_s=t,
            times=times,
            rows=rows,
            audio_keys=keys,
            visual_present=visual_present and rows is not None,
            audio_present=bool(audio_present),
        )

    def audio_features(self, w: Window) -> np.ndarray | None:
        """The audio features [T, A] of window ``w``'s tokens (None: no audio yet): from the
        cache, encoding only the new keys, or all T encoded (``cache_audio=False``)."""
        if w.audio_keys is None or self.audio is None:
            return None
        if self.audio_cache is not None:
            return self.audio_cache.features(self.audio, w.audio_keys)
        return self.backend.encode_audio(self.audio.tokens_for_keys(w.audio_keys))

    def _head(
        self, t: float, index: int, *, visual_present: bool
    ) -> tuple[FrameOutput, float, float]:
        """The output at time ``t``, the ms spent re-encoding crops (recompute mode) and the ms
        spent encoding audio tokens."""
        w = self.window_at(t, visual_present=visual_present)
        recompute_ms = 0.0
        if w.rows is None:
            visual = np.zeros((1, len(w.times), self.feature_dim), np.float32)
        elif self.mode == "recompute":
            r0 = time.perf_counter()
            visual = self.backend.encode_frames(to_tensor_layout(w.rows))[None]
            recompute_ms = (time.perf_counter() - r0) * 1e3
        else:
            visual = w.rows[None]
        a0 = time.perf_counter()
        audio = self.audio_features(w)
        audio_ms = (time.perf_counter() - a0) * 1e3
        intensities = self.backend.head(
            visual.astype(np.float32, copy=False),  # [1, T, D]
            None if audio is None else audio[None],  # [1, T, A]; None: no audio
            None if audio is None else np.array([float(w.audio_present)], np.float32),
            np.array([float(w.visual_present)], np.float32),
        )[0]
        if not np.all(np.isfinite(intensities)):
            raise PipelineError(
                f"The model produced NaN/inf at t={t:.3f} s with backend "
                f"{self.backend.describe()}; the model bundle is broken, retrain or re-export it."
            )
        out = FrameOutput(
            time_s=t,
            frame_index=index,
            face_detected=False,
            audio_present=w.audio_present,
            intensities=intensities.astype(np.float32),
        )
        return out, recompute_ms, audio_ms


# ---------------------------------------------------------------------- drivers
def run_offline(
    source: Source, engine: StreamingEngine, batch: int = OFFLINE_BATCH
) -> Iterator[FrameOutput]:
    """Every event of ``source`` through ``engine``, as fast as possible (analysis).

    Yields one output per video frame (frames are encoded ``batch`` at a time; audio is fed as
    it comes, and each output still sees only what precedes it). For an audio-only source, one
    output every 1 / AUDIO_ONLY_RATE seconds of audio.
    """
    step = 0
    next_audio_only = None
    audio_only = source.fps is None
    pending: list[VideoFrame] = []
    frame_costs: list[tuple[float, float]] = []  # (decode ms, audio ms) per pending frame
    decode_acc = audio_acc = 0.0  # time spent since the previous video frame
    events = iter(source)

    def flush() -> Iterator[FrameOutput]:
        frames, costs = pending[:], frame_costs[:]
        pending.clear()
        frame_costs.clear()
        outputs = engine.process_frames(frames) if frames else []
        for out, (decode_ms, audio_ms) in zip(outputs, costs):
            out.stages_ms["decode"] = decode_ms
            out.stages_ms["audio"] = out.stages_ms.get("audio", 0.0) + audio_ms
            out.stages_ms["total"] += decode_ms + audio_ms
            yield out

    while True:
        d0 = time.perf_counter()
        try:
            event = next(events)
        except StopIteration:
            event = None
        except Exception:
            # The stream failed (a damaged file): the frames it delivered still get their rows.
            yield from flush()
            raise
        decode_acc += (time.perf_counter() - d0) * 1e3
        if event is None or (isinstance(event, VideoFrame) and len(pending) == batch):
            yield from flush()
            if event is None:
                break
        if isinstance(event, AudioChunk):
            a0 = time.perf_counter()
            engine.push_audio(event)
            audio_acc += (time.perf_counter() - a0) * 1e3
            if audio_only:
                if next_audio_only is None:
                    next_audio_only = event.time_s + 1.0 / AUDIO_ONLY_RATE
                while next_audio_only <= event.end_s + 1e-9:
                    out = engine.output_at(next_audio_only, step)
                    out.stages_ms["decode"] = decode_acc
                    out.stages_ms["audio"] = out.stages_ms.get("audio", 0.0) + audio_acc
                    out.stages_ms["total"] += decode_acc + audio_acc
                    decode_acc = audio_acc = 0.0
                    step += 1
                    next_audio_only += 1.0 / AUDIO_ONLY_RATE
                    yield out
            continue
        pending.append(event)
        frame_costs.append((decode_acc, audio_acc))
        decode_acc = audio_acc = 0.0


class LiveRunner:
    """Reads a live source in a capture thread; inference takes the newest frame.

    The capture thread never waits for inference: video goes into a one-frame newest-wins slot
    (frames inference had no time for are counted in :attr:`skipped`), audio into a bounded
    queue. Each output's ``stages_ms["latency"]`` is frame arrival -> output, in ms.
    """

    def __init__(
        self,
        source: Source,
        engine: StreamingEngine,
        audio_queue_s: float = 5.0,
        on_event: Callable[[VideoFrame | AudioChunk], None] | None = None,
    ) -> None:
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
        self.engine.warmup()
        self._thread.start()
        try:
            audio_ms = 0.0
            while not self._stop.is_set():
                item = self.frames.get(timeout=0.1)
                a0 = time.perf_counter()
                for chunk in self.audio.drain():
                    self.engine.push_audio(chunk)
                audio_ms += (time.perf_counter() - a0) * 1e3
                if item is None:
                    if self.frames.closed:
                        break
                    continue
                frame, arrived = item
                out = self.engine.process_frame(frame)
                out.stages_ms["audio"] = out.stages_ms.get("audio", 0.0) + audio_ms
                out.stages_ms["total"] += audio_ms
                out.stages_ms["latency"] = (time.perf_counter() - arrived) * 1e3
                audio_ms = 0.0
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
    """The CSV row (:func:`eri.realtime.outputs.prediction_row`) of one output step."""
    return prediction_row(
        out.time_s, out.frame_index, out.face_detected, out.audio_present, out.intensities
    )
