"""The headless recording run behind ``eri record``: a source through :class:`LiveRunner`, every
captured frame and audio sample into a :class:`SessionRecorder`, one predictions row per output
step, until the source ends, ``duration`` seconds have been captured, or Ctrl-C / SIGTERM."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from eri.realtime.session.format import SessionError, session_info
from eri.realtime.session.recorder import SessionRecorder, check_session_dir
from eri.realtime.sources.events import AUDIO_RATE, AudioChunk, Event, Source

log = logging.getLogger(__name__)


class RecordSource(Source):
    """Another source, optionally without its audio and ending ``duration_s`` seconds after its
    first event (the audio chunk crossing the end is cut at it)."""

    def __init__(
        self, inner: Source, *, audio: bool = True, duration_s: float | None = None
    ) -> None:
        super().__init__()
        self.inner = inner
        self.limit_s = duration_s
        self.name = inner.name
        self.fps, self.width, self.height = inner.fps, inner.width, inner.height
        self.has_video, self.live = inner.has_video, inner.live
        self.has_audio = inner.has_audio and audio
        self.audio_note = inner.audio_note
        if inner.has_audio and not audio:
            self.audio_note = "the microphone was turned off (--mic none)"
        self.duration_s = inner.duration_s
        if duration_s is not None:
            self.duration_s = min(duration_s, inner.duration_s or duration_s)
        self.frame_count = inner.frame_count

    def start(self) -> None:
        super().start()
        self.inner.start()

    def stop(self) -> None:
        super().stop()
        self.inner.stop()

    def stats(self) -> dict[str, float]:
        return self.inner.stats()

    def _events(self) -> Iterator[Event]:
        end = None
        for event in self.inner:
            if self.stopped:
                return
            is_audio = isinstance(event, AudioChunk)
            if is_audio and not self.has_audio:
                continue
            if self.limit_s is not None:
                if end is None:
                    end = event.time_s + self.limit_s
                if event.time_s >= end:
                    return
                if is_audio and event.end_s > end:
                    keep = int(round((end - event.time_s) * AUDIO_RATE))
                    event = AudioChunk(event.time_s, event.samples[:keep])
            yield event


def open_record_source(
    spec: str, *, mic: str | None = None, fast: bool = False, duration_s: float | None = None
) -> RecordSource:
    """The ``--source`` of ``eri record``: a camera index (with ``mic``), ``synthetic`` (endless,
    640x480 at 30 fps; ``synthetic:N`` for N frames), a media file or a session folder.

    Files are paced in real time unless ``fast``; ``mic="none"`` records without audio whatever
    the source. A camera needs no pacing and ignores ``fast``.
    """
    from eri.realtime.sources import SyntheticSource, open_source

    no_mic = mic is not None and mic.strip().lower() == "none"
    is_camera = spec.strip().isdigit()
    if spec.strip().lower() == "synthetic":
        inner: Source = SyntheticSource(
            num_frames=None, width=640, height=480, audio=not no_mic, realtime=not fast
        )
    else:
        inner = open_source(spec, realtime=not fast, mic=mic if is_camera else None)
        if mic is not None and not no_mic and not is_camera:
            log.warning("--mic %s is ignored: %s carries its own audio.", mic, spec)
    source = RecordSource(inner, audio=not no_mic, duration_s=duration_s)
    if not source.has_video:
        source.stop()
        raise SessionError(
            f"{spec} has no video; a session records a camera or a video, so pass --source 0, "
            "a video file or a session folder."
        )
    return source


@dataclass
class RecordResult:
    """What one recording produced."""

    path: Path
    frames: int
    audio_samples: int
    rows: int
    skipped: int
    duration_s: float
    interrupted: bool


@contextlib.contextmanager
def _uninterrupted() -> Iterator[None]:
    """Ignore Ctrl-C and SIGTERM while the session is finalised (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def record(
    out_dir: str | Path,
    source: Source,
    bundle,
    backend,
    *,
    fast: bool = False,
    mode: str = "streaming",
    tracker=None,
) -> RecordResult:
    """Record ``source`` into the session folder ``out_dir`` while running the model live.

    Ends when the source ends, on :meth:`LiveRunner.stop`, or on KeyboardInterrupt (Ctrl-C,
    SIGTERM through ``eri``), always closing the session ("complete": true). Raises the
    recorder's :class:`SessionError` (e.g. a full disk) after closing what was written, and a
    source failure after closing the session.
    """
    from eri.realtime.analyze import make_tracker
    from eri.realtime.pipeline import LiveRunner, StreamingEngine

    try:
        check_session_dir(out_dir)
        own_tracker = tracker is None
        tracker = make_tracker(bundle) if own_tracker else tracker
        engine = StreamingEngine(bundle, backend, tracker, mode=mode, fps=source.fps)
    except BaseException:
        source.stop()  # release a camera / microphone opened for nothing
        raise
    if not source.has_audio:
        log.info("recording visual-only: %s", source.audio_note or "the source has no audio")
    recorder = None
    runner = None
    interrupted, failure = False, None
    t0 = time.monotonic()
    try:
        recorder = SessionRecorder(
            out_dir,
            fps=source.fps or 30.0,
            width=source.width or 640,
            height=source.height or 480,
            has_audio=source.has_audio,
            info=session_info(source, bundle, backend),
            backpressure=fast and not source.live,
        )
        runner = LiveRunner(source, engine, on_event=recorder.on_event)
        log.info("recording to %s; Ctrl-C stops", out_dir)
        for out in runner.run():
            recorder.add_output(out)
            if recorder.error is not None:
                break
    except KeyboardInterrupt:
        interrupted = True
    except Exception as exc:
        failure = exc
    finally:
        with _uninterrupted():
            if runner is not None:
                runner.stop()
            else:
                source.stop()
            if recorder is not None:
                recorder.close()
            if own_tracker and hasattr(tracker, "close"):
                tracker.close()
    if recorder is None:
        raise failure if failure is not None else KeyboardInterrupt
    result = RecordResult(
        path=Path(out_dir),
        frames=recorder.frames_written,
        audio_samples=recorder.audio_samples_written,
        rows=recorder.rows_written,
        skipped=runner.skipped if runner is not None else 0,
        duration_s=recorder.to_json()["duration_s"],
        interrupted=interrupted,
    )
    log.info(
        "recorded %d frames, %.1f s%s, %d rows (%d frames skipped by inference) in %.1f s%s to %s",
        result.frames,
        result.duration_s,
        f", {result.audio_samples} audio samples" if source.has_audio else ", no audio",
        result.rows,
        result.skipped,
        time.monotonic() - t0,
        " (stopped by Ctrl-C / SIGTERM)" if interrupted else "",
        result.path,
    )
    if recorder.error is not None:
        raise recorder.error
    if failure is not None:
        raise failure
    return result
