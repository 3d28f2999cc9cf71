"""The thread bridge: model loading, capture and inference off the GUI thread.

:class:`PipelineWorker` runs a :class:`~eri.realtime.pipeline.LiveRunner` (its own capture
thread, a newest-wins frame slot, inference in the worker thread). Nothing here touches Qt: the
worker only copies results into a bounded queue (every output) and a newest-wins slot (the
newest inferred frame with its face box and landmarks); a GUI timer drains them, as
python-sounddevice's ``plot_input.py`` does with its callback queue. A recorder, when one is
attached, sees every captured event and every output.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from eri.realtime.buffers import BoundedQueue, LatestSlot
from eri.realtime.pipeline import FrameOutput
from eri.realtime.sources import AudioChunk, Source, VideoFrame

log = logging.getLogger(__name__)

#: Outputs the GUI may fall behind by before the oldest are dropped (and counted).
OUTPUT_QUEUE = 4096
#: Captured frames kept so the displayed image is the one the box was found on.
RECENT_FRAMES = 32
SILENT_DB = -90.0


@dataclass
class RunConfig:
    """What to run: the ``eri view`` options the worker needs. ``source``: a ``--source``
    value, or a :class:`~eri.realtime.sources.Source` to use as it is (tests, benchmarks)."""

    source: str | Source = "0"
    mic: str | None = None
    model: str | None = None
    arch: str | None = None
    backend: str = "auto"
    precision: str = "fp32"
    subject: str | int = "largest"
    #: Inference threads (None: :func:`eri.realtime.backends.cpu_threads`).
    threads: int | None = None


@dataclass
class Update:
    """One output step for the GUI; ``arrived``: ``time.perf_counter()`` of its frame's arrival."""

    output: FrameOutput
    arrived: float


@dataclass
class DisplayFrame:
    """The newest inferred frame, with what the tracker found on it."""

    image: np.ndarray
    time_s: float
    index: int
    face_detected: bool
    box: tuple[float, float, float, float] | None = None
    points: np.ndarray | None = None
    num_faces: int = 0


@dataclass
class RunInfo:
    """What the status bar shows about a run (filled in as the worker starts)."""

    source: str = ""
    model: str = ""
    trained: bool = True
    backend: str = ""
    precision: str = ""
    device: str = ""
    fps: float | None = None
    width: int | None = None
    height: int | None = None
    has_audio: bool = False
    audio_note: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class _TrackerTap:
    """Wraps the face tracker so the worker sees each frame's full result (landmarks)."""

    def __init__(self, tracker: Any) -> None:
        self.tracker = tracker
        self.last = None

    def process(self, image: np.ndarray, time_s: float):
        self.last = self.tracker.process(image, time_s)
        return self.last

    def __getattr__(self, name: str) -> Any:
        return getattr(self.tracker, name)


def level_db(samples: np.ndarray) -> float:
    """RMS level of float samples in dB full scale (:data:`SILENT_DB` for silence)."""
    if samples.size == 0:
        return SILENT_DB
    rms = float(np.sqrt(np.mean(np.square(samples, dtype=np.float64))))
    return max(SILENT_DB, 20.0 * math.log10(rms)) if rms > 0 else SILENT_DB


class PipelineWorker:
    """Loads the model and runs the live pipeline in a background thread.

    ``bundle`` / ``backend``: already loaded ones (else loaded from ``config`` in the worker
    thread, as an ONNX export can take a minute). The GUI reads :attr:`outputs` (a bounded
    queue of :class:`Update`), :attr:`frames` (a newest-wins slot of :class:`DisplayFrame`),
    :attr:`audio_level_db`, :attr:`state`, :attr:`info` and :attr:`error`.
    """

    def __init__(self, config: RunConfig, *, bundle: Any = None, backend: Any = None) -> None:
        self.config = config
        self.bundle, self.backend = bundle, backend
        self.outputs: BoundedQueue[Update] = BoundedQueue(OUTPUT_QUEUE)
        self.frames: LatestSlot[DisplayFrame] = LatestSlot()
        self.info = RunInfo(source=getattr(config.source, "name", str(config.source)))
        self.state = "idle"  # idle, loading, running, ended, stopped, failed
        self.error: BaseException | None = None
        self.audio_level_db = SILENT_DB
        self.latest_time_s: float | None = None
        self.recorder: Any = None
        self.record_error: BaseException | None = None
        self._recorder_factory: Callable[[Any], Any] | None = None
        self._recent: OrderedDict[int, VideoFrame] = OrderedDict()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._runner: Any = None
        self._source: Any = None
        self._engine: Any = None
        self._tap: _TrackerTap | None = None
        self._thread = threading.Thread(target=self._run, name="eri-inference", daemon=True)

    # ------------------------------------------------------------------ control (GUI thread)
    def start(self) -> None:
        self.state = "loading"
        self._thread.start()

    def stop(self, timeout: float = 1.0) -> bool:
        """Stop capture and inference; True when the worker thread ended within ``timeout``."""
        self._stop.set()
        with self._lock:
            runner, source = self._runner, self._source
        if runner is not None:
            runner.stop()
        elif source is not None:
            source.stop()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)
        if self.state in ("loading", "running"):
            self.state = "stopped"
        return not self._thread.is_alive()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def select_face_at(self, x: float, y: float) -> bool:
        """Ask the tracker to follow the face at image point (x, y) from the next frame."""
        tap = self._tap
        if tap is None or not hasattr(tap.tracker, "select_at"):
            return False
        tap.tracker.select_at(x, y)
        return True

    def start_recording(self, factory: Callable[[Any], Any]) -> Any:
        """Attach ``factory(source)`` as the recorder: now if the source is open (returns the
        recorder), else as soon as it is (returns None)."""
        with self._lock:
            source = self._source
            if source is None:
                self._recorder_factory = factory
                return None
        recorder = factory(source)
        self.recorder = recorder
        return recorder

    def stop_recording(self) -> Any:
        """Detach and return the recorder (the caller closes it); None if none was attached."""
        with self._lock:
            recorder, self.recorder = self.recorder, None
            self._recorder_factory = None
        return recorder

    # ------------------------------------------------------------------ counters
    @property
    def frames_processed(self) -> int:
        return self._engine.frames if self._engine is not None else 0

    @property
    def skipped(self) -> int:
        return self._runner.skipped if self._runner is not None else 0

    @property
    def dropped(self) -> int:
        """Frames and audio chunks the source dropped, plus outputs the GUI queue dropped."""
        stats = self._source.stats() if self._source is not None else {}
        return int(
            stats.get("frames_dropped", 0)
            + stats.get("audio_chunks_dropped", 0)
            + self.outputs.dropped
        )

    # ------------------------------------------------------------------ worker thread
    def _load(self) -> None:
        from eri.models.bundle import load_bundle
        from eri.realtime.backend_process import live_backend
        from eri.realtime.backends import cpu_threads

        if self.bundle is None:
            cfg = self.config
            kwargs = {"arch": cfg.arch} if cfg.arch else {}
            self.bundle = load_bundle(cfg.model, **kwargs)
            for note in self.bundle.notes:
                log.warning("%s", note)
        if self.backend is None:
            threads = self.config.threads or cpu_threads()
            self.backend = live_backend(
                self.bundle, self.config.backend, self.config.precision, threads=threads
            )
        b = self.backend
        self.info.model = self.bundle.name
        self.info.trained = self.bundle.trained
        self.info.backend, self.info.precision, self.info.device = b.name, b.precision, b.device

    def _run(self) -> None:
        from eri.realtime.analyze import make_tracker
        from eri.realtime.pipeline import LiveRunner, PipelineError, StreamingEngine
        from eri.realtime.session.record import RecordSource
        from eri.realtime.sources import open_source

        tracker = None
        try:
            self._load()
            if self._stop.is_set():
                return
            spec = self.config.source
            if isinstance(spec, Source):
                source = spec
            else:
                source = open_source(spec, realtime=True, mic=self.config.mic)
            mic_off = (self.config.mic or "").strip().lower() == "none"
            if mic_off and source.has_audio:
                source = RecordSource(source, audio=False)
            info = self.info
            info.source, info.fps = source.name, source.fps
            info.width, info.height = source.width, source.height
            info.has_audio, info.audio_note = source.has_audio, source.audio_note
            if not source.has_video:
                source.stop()
                raise PipelineError(
                    f"{source.name} has no video; the viewer needs a camera, a video file or a "
                    "session (use `eri analyze` for audio files)."
                )
            tracker = make_tracker(self.bundle, self.config.subject)
            self._tap = _TrackerTap(tracker)
            self._engine = StreamingEngine(self.bundle, self.backend, self._tap, fps=source.fps)
            runner = LiveRunner(source, self._engine, on_event=self._on_event)
            with self._lock:
                self._source, self._runner = source, runner
                factory, self._recorder_factory = self._recorder_factory, None
            if factory is not None:
                self.recorder = factory(source)
            if self._stop.is_set():
                return
            self.state = "running"
            log.info("viewer running: %s on %s", source.name, self.backend.describe())
            for out in runner.run():
                self._publish(out)
                if self._stop.is_set():
                    break
            self.state = "stopped" if self._stop.is_set() else "ended"
        except BaseException as exc:
            self.error = exc
            self.state = "failed"
            log.error("the viewer's pipeline stopped: %s", exc)
        finally:
            runner = self._runner
            if runner is not None:
                runner.stop()
            elif self._source is not None:
                self._source.stop()
            if tracker is not None:
                tracker.close()

    def _on_event(self, event: VideoFrame | AudioChunk) -> None:
        """Capture thread: every event. Only copies; never waits for the GUI or inference."""
        if isinstance(event, AudioChunk):
            self.audio_level_db = level_db(event.samples)
        else:
            with self._lock:
                self._recent[event.index] = event
                while len(self._recent) > RECENT_FRAMES:
                    self._recent.popitem(last=False)
        self.latest_time_s = event.time_s
        recorder = self.recorder
        if recorder is not None:
            try:
                recorder.on_event(event)
            except Exception as exc:  # a full disk must not stop the live view
                self._recording_failed(exc)

    def _publish(self, out: FrameOutput) -> None:
        """Inference thread: hand one output (and its frame) to the GUI and the recorder."""
        arrived = time.perf_counter() - out.stages_ms.get("latency", 0.0) / 1e3
        self.outputs.put(Update(out, arrived))
        with self._lock:
            frame = self._recent.get(out.frame_index)
        face = self._tap.last if self._tap is not None else None
        if frame is not None:
            points = None
            if face is not None and face.points is not None and face.has_face:
                points = face.points.copy()
            self.frames.put(
                DisplayFrame(
                    image=frame.image,
                    time_s=out.time_s,
                    index=out.frame_index,
                    face_detected=out.face_detected,
                    box=out.box,
                    points=points,
                    num_faces=face.num_faces if face is not None else 0,
                )
            )
        recorder = self.recorder
        if recorder is not None:
            try:
                recorder.add_output(out)
            except Exception as exc:
                self._recording_failed(exc)

    def _recording_failed(self, exc: BaseException) -> None:
        if self.record_error is None:
            log.error("recording stopped: %s", exc)
        self.record_error = exc
