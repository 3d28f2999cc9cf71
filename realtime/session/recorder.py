"""The session recorder: every captured frame and audio sample to disk, off the capture thread.

    capture thread --on_event--> queue --writer thread--> video.mp4 (H.264 + AAC, fragmented)
                                                       -> audio.wav (16-bit PCM, 16 kHz mono)
    inference     --add_output--> predictions.csv (flushed at least once a second)
    user          --add_marker--> markers.csv (flushed per marker)

``on_event`` only puts the event on a queue, so capture never waits for the disk or the encoder
(:class:`SessionRecorder` ``backpressure=True`` makes it wait instead, for file sources run as
fast as possible). Crash safety: the MP4 is fragmented at every keyframe (one a second) and at
least every 0.5 s, each fragment flushed to the file at once, so a killed process leaves a file
that decodes up to its last complete fragment; the WAV header is rewritten with the sizes every
half second, so a killed session's audio.wav is a valid file holding the audio up to then;
predictions.csv is flushed every half second.
A failed write (a full disk) stops the recording, keeps what was written and is reported in
:attr:`SessionRecorder.error`, never raised into the capture or inference thread.
"""

from __future__ import annotations

import errno
import logging
import queue
import threading
import time
import wave
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from eri.models.spec import EMOTIONS
from eri.realtime.outputs import (
    PredictionWriter,
    plot_curves,
    read_predictions,
    warm_up_plotting,
)
from eri.realtime.pipeline import FrameOutput, output_row
from eri.realtime.session.format import (
    AUDIO,
    MARKERS,
    PREDICTIONS,
    REPORT,
    SESSION_FORMAT_VERSION,
    SESSION_JSON,
    VIDEO,
    MarkerWriter,
    SessionError,
    check_self_report,
    now_iso,
    versions,
    write_session_json,
)
from eri.realtime.sources.events import AudioChunk, VideoFrame
from eri.realtime.writable import unwritable

log = logging.getLogger(__name__)

#: Video timestamps: frame ``time_s`` in milliseconds.
VIDEO_TIME_BASE = Fraction(1, 1000)
#: Container options of a crash-safe MP4: a new fragment at every keyframe and at least every
#: FRAGMENT_S; the header (moov) is written with the first fragment (``delay_moov``, so that
#: it can hold an edit list for a stream that does not start at 0); timestamps kept as given
#: (frame ``time_s``), never shifted.
FRAGMENT_S = 0.5
MP4_OPTIONS = {
    "movflags": "frag_keyframe+empty_moov+delay_moov+default_base_moof",
    "frag_duration": str(int(FRAGMENT_S * 1e6)),
    "flush_packets": "1",  # each finished fragment reaches the file at once, not 256 KiB later
    "avoid_negative_ts": "disabled",
}
#: x264 settings: fast enough for live capture on a laptop, no lookahead or B-frames (each frame
#: is written as soon as it is encoded).
X264_OPTIONS = {"preset": "veryfast", "tune": "zerolatency", "crf": "23"}
KEYFRAME_EVERY_S = 1.0
AAC_BIT_RATE = 64_000
AAC_FRAME = 1024
#: Header rewrite / flush period of audio.wav and predictions.csv.
FLUSH_EVERY_S = 0.5
#: An audio chunk starting this much after the previous one ended is preceded by silence, so
#: audio.wav sample n is at n / sample_rate seconds of the session (dropped microphone blocks).
AUDIO_GAP_S = 0.02
#: Queued, not yet encoded video larger than this drops new frames (counted) on a live source;
#: with ``backpressure`` on_event waits while more than BACKPRESSURE_BYTES are queued.
MAX_BACKLOG_BYTES = 1 << 30
BACKPRESSURE_BYTES = 64 << 20
#: Longest close() waits for the writer to drain its queue.
CLOSE_TIMEOUT_S = 60.0

_STOP = object()


def _reason(exc: BaseException) -> str:
    """Short words for a write failure: "the disk is full" for ENOSPC."""
    code = getattr(exc, "errno", None)
    if code in (errno.ENOSPC, errno.EDQUOT):
        return "the disk is full"
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return str(text).strip().rstrip(".")


def check_session_dir(out_dir: str | Path) -> Path:
    """Refuse, without creating anything, a session folder that is a file, exists and is not
    empty, or cannot be created or written (SessionError)."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise SessionError(f"Session folder {out} is a file; choose a new folder name.")
    if out.is_dir() and any(out.iterdir()):
        raise SessionError(
            f"Session folder {out} already exists and is not empty; choose a new folder or "
            "remove it first (a session is never written over)."
        )
    problem = unwritable(out / SESSION_JSON)
    if problem is not None:
        kind, where = problem
        raise SessionError(
            f"Cannot write the session folder {out}: {where} "
            f"{'is a file' if kind == 'file' else 'is not writable'}; choose a writable location."
        )
    return out


def prepare_session_dir(out_dir: str | Path) -> Path:
    """Create ``out_dir`` (parents too) and check it is empty and writable, or SessionError."""
    out = check_session_dir(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".eri-write-test"
        probe.write_bytes(b"x")
        probe.unlink()
    except OSError as exc:
        raise SessionError(
            f"Cannot write the session folder {out} ({_reason(exc)}); choose a writable location."
        ) from None
    return out


class _Predictions(PredictionWriter):
    def flush(self) -> None:
        if not self._file.closed:
            self._file.flush()
            self._last_flush = time.monotonic()


class SessionRecorder:
    """Records one session folder (docs/design.md, "Sessions").

    ``fps``: the nominal frame rate (keyframe interval, stream rate); frames are stamped with
    their own ``time_s``, so variable camera rates stay in sync with the audio. ``width`` x
    ``height``: the video size (frames of another size are scaled; odd sizes are rounded down to
    even, as H.264 4:2:0 needs). ``has_audio=False``: no AAC stream and no audio.wav. ``info``:
    what session.json records about the source, model, backend and device
    (:func:`eri.realtime.session.format.session_info`).

    Times: events, outputs and markers come with source times; the session's time zero
    (:attr:`start_s`) is the first event's time, so a recording started while a source has been
    running for a while still starts at 0 in every file, and frame indices count from the first
    recorded frame. Outputs of frames before the first recorded event are left out.

    Thread use: :meth:`on_event` from the capture thread, :meth:`add_output` from the inference
    thread, :meth:`add_marker` / :meth:`set_self_report` from any thread. The recorder keeps a
    reference to each event's arrays until they are written: a source must not reuse them.
    """

    def __init__(
        self,
        out_dir: str | Path,
        *,
        fps: float,
        width: int,
        height: int,
        sample_rate: int = 16000,
        has_audio: bool = True,
        info: dict[str, Any] | None = None,
        backpressure: bool = False,
    ) -> None:
        if not (fps and fps > 0) or width < 2 or height < 2:
            raise ValueError(f"Bad video format: fps={fps}, size={width}x{height}.")
        self.out_dir = prepare_session_dir(out_dir)
        self.fps = float(fps)
        self.width, self.height = int(width) // 2 * 2, int(height) // 2 * 2
        self.sample_rate = int(sample_rate)
        self.has_audio = bool(has_audio)
        self.info = dict(info or {})
        self.backpressure = backpressure
        self.frames_written = 0
        self.audio_samples_written = 0
        #: Silence inserted before the first chunk / into gaps between chunks (samples).
        self.audio_padding_samples = 0
        self.frames_dropped = 0
        self.error: SessionError | None = None
        self.self_report: dict[str, int] | None = None
        self.start_time = now_iso()
        self.end_time: str | None = None
        self.last_time_s = 0.0  # newest event time seen, session seconds
        #: Source time of the session's time zero (the first event's), None before it.
        self.start_s: float | None = None
        self._first_index: int | None = None  # source index of the first recorded frame
        self.outputs_dropped = 0
        self._closed = False
        self._finished = False
        self._close_lock = threading.Lock()
        self._out_lock = threading.Lock()  # predictions + markers
        self._backlog = threading.Condition()
        self._backlog_bytes = 0
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._last_pts = -1
        self._next_sample: int | None = None  # session sample index after the last one queued
        self._aac_pts = 0
        self._aac_pending: list[np.ndarray] = []
        self._aac_pending_n = 0
        self._wav_pending: list[bytes] = []
        self._last_flush = time.monotonic()
        self._report_written = False
        self._i420 = np.empty((self.height * 3 // 2, self.width), np.uint8)
        self._open_files()
        try:
            self._write_json()
        except OSError as exc:
            self._discard_files()
            raise SessionError(
                f"Cannot write {self.out_dir / 'session.json'} ({_reason(exc)}); choose a "
                "writable location with free space."
            ) from None
        self._thread = threading.Thread(target=self._run, name="eri-recorder", daemon=True)
        self._thread.start()
        # report.png is drawn at close; warming matplotlib up now keeps ~0.4 s out of it.
        threading.Thread(target=warm_up_plotting, name="eri-warm-up-plotting", daemon=True).start()
        log.debug("recording to %s (%dx%d @ %.2f fps)", self.out_dir, width, height, fps)

    # ------------------------------------------------------------------ setup
    def _open_files(self) -> None:
        import av

        d = self.out_dir
        try:
            self._container = av.open(
                str(d / VIDEO), mode="w", format="mp4", container_options=MP4_OPTIONS
            )
            rate = Fraction(self.fps).limit_denominator(1001)
            v = self._container.add_stream("libx264", rate=rate)
            v.width, v.height, v.pix_fmt = self.width, self.height, "yuv420p"
            v.codec_context.time_base = VIDEO_TIME_BASE
            v.time_base = VIDEO_TIME_BASE
            v.codec_context.gop_size = max(1, int(round(self.fps * KEYFRAME_EVERY_S)))
            v.codec_context.options = dict(X264_OPTIONS, keyint=str(v.codec_context.gop_size))
            self._video = v
            self._audio = None
            self._wav = None
            if self.has_audio:
                a = self._container.add_stream("aac", rate=self.sample_rate)
                a.layout = "mono"
                a.bit_rate = AAC_BIT_RATE
                self._audio = a
                self._wav_file = (d / AUDIO).open("wb")
                self._wav = wave.open(self._wav_file, "wb")
                self._wav.setnchannels(1)
                self._wav.setsampwidth(2)
                self._wav.setframerate(self.sample_rate)
                self._wav.writeframes(b"")  # header on disk now
                self._wav_file.flush()
            self._predictions = _Predictions(d / PREDICTIONS)
            self._markers = MarkerWriter(d / MARKERS)
        except (OSError, av.FFmpegError) as exc:
            self._discard_files()
            raise SessionError(
                f"Cannot create the session files in {d} ({_reason(exc)}); choose a writable "
                "location with free space."
            ) from None

    def _discard_files(self) -> None:
        """Close whatever :meth:`_open_files` opened (a failed start)."""
        for name in ("_container", "_wav", "_wav_file", "_predictions", "_markers"):
            obj = getattr(self, name, None)
            if obj is not None:
                try:
                    obj.close()
                except Exception:  # already failing; the first error is the one reported
                    pass

    @property
    def rows_written(self) -> int:
        """Rows in predictions.csv so far."""
        return self._predictions.rows

    @property
    def markers_written(self) -> int:
        return self._markers.count

    @property
    def backlog_bytes(self) -> int:
        """Video queued for the writer, not yet encoded (bytes of RGB frames)."""
        return self._backlog_bytes

    # ------------------------------------------------------------------ capture side
    def on_event(self, event: VideoFrame | AudioChunk) -> None:
        """Queue one captured event for the writer thread; returns at once (unless
        ``backpressure``). Events after :meth:`close` or a failure are ignored."""
        if self._closed or self.error is not None:
            return
        if self.start_s is None:
            self.start_s = event.time_s
        if isinstance(event, VideoFrame):
            if self._first_index is None:
                self._first_index = event.index
            size = event.image.nbytes
            with self._backlog:
                if self.backpressure:
                    while self._backlog_bytes > BACKPRESSURE_BYTES and self.error is None:
                        self._backlog.wait(0.1)
                elif self._backlog_bytes + size > MAX_BACKLOG_BYTES:
                    self.frames_dropped += 1
                    if self.frames_dropped == 1:
                        log.warning(
                            "The recorder is more than %d MB behind (the disk or the encoder is "
                            "too slow); dropping frames until it catches up.",
                            MAX_BACKLOG_BYTES >> 20,
                        )
                    return
                self._backlog_bytes += size
        elif not self.has_audio:
            return
        self.last_time_s = max(self.last_time_s, event.time_s - self.start_s)
        self._queue.put(event)

    def add_output(self, output: FrameOutput) -> None:
        """One predictions.csv row (flushed at least once a second), in session time and frame
        numbers; an output of a frame before the recording started is left out."""
        start, first = self.start_s, self._first_index
        if start is None or first is None or output.frame_index < first:
            self.outputs_dropped += 1
            return
        row = output_row(output)
        row[0] = round(output.time_s - start, 4)
        row[1] = output.frame_index - first
        self._locked_write(lambda: self._predictions.write(row))

    def add_marker(self, time_s: float, label: str = "") -> None:
        """One markers.csv row, on disk at once; ``time_s`` in source time, like the events
        (written in session seconds, 0 before the first event)."""
        t = max(0.0, float(time_s) - (self.start_s if self.start_s is not None else time_s))
        self._locked_write(lambda: self._markers.write(t, str(label)))

    def set_self_report(self, ratings: dict[str, int]) -> None:
        """The user's seven ratings (EMOTIONS, each 1-100) for session.json; raises SessionError
        for bad ratings. After :meth:`close` it rewrites session.json at once."""
        self.self_report = check_self_report(ratings)
        if self._finished:
            try:
                self._write_json()
            except OSError as exc:
                self._fail(exc, "writing session.json")

    def _locked_write(self, write) -> None:
        if self.error is not None or self._finished:
            return
        try:
            with self._out_lock:
                write()
        except OSError as exc:
            self._fail(exc, "writing the predictions and markers")

    # ------------------------------------------------------------------ writer thread
    def _run(self) -> None:
        while True:
            try:
                item = self._queue.get(timeout=FLUSH_EVERY_S)
            except queue.Empty:
                item = None
            if item is _STOP:
                break
            if item is not None:
                if isinstance(item, VideoFrame):
                    with self._backlog:
                        self._backlog_bytes -= item.image.nbytes
                        self._backlog.notify_all()
                if self.error is None:
                    try:
                        self._write(item)
                    except Exception as exc:  # a full disk, an encoder failure
                        self._fail(exc, f"at {item.time_s:.1f} s")
            if self.error is None and time.monotonic() - self._last_flush >= FLUSH_EVERY_S:
                try:
                    self._flush()
                except Exception as exc:
                    self._fail(exc, "flushing")
        self._finish_media()

    def _write(self, event: VideoFrame | AudioChunk) -> None:
        import av

        if isinstance(event, VideoFrame):
            frame = av.VideoFrame.from_ndarray(self._to_i420(event.image), format="yuv420p")
            t = max(event.time_s - self.start_s, 0.0)
            pts = max(int(round(t * 1000)), self._last_pts + 1)
            frame.pts, frame.time_base = pts, VIDEO_TIME_BASE
            self._last_pts = pts
            for packet in self._video.encode(frame):
                self._container.mux(packet)
            self.frames_written += 1
            return
        samples = np.asarray(event.samples, dtype=np.float32).reshape(-1)
        start = int(round(max(event.time_s - self.start_s, 0.0) * self.sample_rate))
        expected = 0 if self._next_sample is None else self._next_sample
        pad = start - expected
        if pad > (AUDIO_GAP_S * self.sample_rate if self._next_sample is not None else 0):
            self._push_audio(np.zeros(pad, np.float32))
            self.audio_padding_samples += pad
        self._push_audio(samples)
        self.audio_samples_written += len(samples)

    def _to_i420(self, image: np.ndarray) -> np.ndarray:
        """RGB [H, W, 3] uint8 -> I420 planes [height * 3 / 2, width] uint8 at the video size
        (OpenCV: several times faster than swscale's RGB conversion), into one buffer reused
        for every frame (``av.VideoFrame.from_ndarray`` copies it)."""
        import cv2

        h, w = image.shape[:2]
        if (h, w) != (self.height, self.width):
            if h >= self.height and w >= self.width and h - self.height < 2 and w - self.width < 2:
                image = image[: self.height, : self.width]  # odd size: drop the last row/column
            else:
                image = cv2.resize(image, (self.width, self.height), interpolation=cv2.INTER_AREA)
        return cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2YUV_I420, dst=self._i420)

    def _push_audio(self, samples: np.ndarray) -> None:
        """Samples [n] float32 to the WAV buffer and the AAC encoder (in 1024-sample frames)."""
        if not len(samples):
            return
        self._next_sample = (self._next_sample or 0) + len(samples)
        pcm = (np.clip(samples, -1.0, 1.0) * 32767.0).astype("<i2")
        self._wav_pending.append(pcm.tobytes())
        self._aac_pending.append(samples)
        self._aac_pending_n += len(samples)
        if self._aac_pending_n >= AAC_FRAME:
            self._encode_aac(final=False)

    def _encode_aac(self, final: bool) -> None:
        import av

        if not self._aac_pending:
            buf = np.zeros(0, np.float32)
        else:
            buf = np.concatenate(self._aac_pending)
        n = len(buf) if final else len(buf) // AAC_FRAME * AAC_FRAME
        for i in range(0, n, AAC_FRAME):
            block = np.ascontiguousarray(buf[i : i + AAC_FRAME])[None]
            frame = av.AudioFrame.from_ndarray(block, format="fltp", layout="mono")
            frame.sample_rate = self.sample_rate
            frame.pts, frame.time_base = self._aac_pts, Fraction(1, self.sample_rate)
            self._aac_pts += block.shape[1]
            self._mux_audio(self._audio.encode(frame))
        rest = buf[n:]
        self._aac_pending = [rest] if len(rest) else []
        self._aac_pending_n = len(rest)

    def _flush(self) -> None:
        """audio.wav: pending samples written and the header sizes rewritten; predictions.csv
        flushed."""
        self._last_flush = time.monotonic()
        if self._wav is not None and self._wav_pending:
            data, self._wav_pending = b"".join(self._wav_pending), []
            self._wav.writeframes(data)  # also rewrites the header's sizes
            self._wav_file.flush()
        with self._out_lock:
            self._predictions.flush()

    def _finish_media(self) -> None:
        """Flush the encoders and close video.mp4 and audio.wav (their headers fixed)."""
        steps = []
        if self.error is None:
            steps.append(("flushing", self._flush))
            if self._audio is not None:
                steps.append(("encoding the last audio", self._flush_audio))
            steps.append(("encoding the last frames", self._flush_video))
        steps.append(("closing video.mp4", self._container.close))
        if self._wav is not None:
            steps.append(("closing audio.wav", self._close_wav))
        for what, step in steps:
            try:
                step()
            except Exception as exc:
                self._fail(exc, what)

    def _flush_audio(self) -> None:
        self._encode_aac(final=True)
        self._mux_audio(self._audio.encode(None))

    def _mux_audio(self, packets) -> None:
        """Mux AAC packets except the encoder's priming packet (pts < 0): a fragmented MP4 has
        no edit list to hide it, and keeping it would play the audio 64 ms late. Without it the
        mp4's audio is in sync; only the first few ms of its first frame decode imperfectly
        (audio.wav is exact)."""
        for packet in packets:
            if packet.pts is not None and packet.pts < 0:
                continue
            self._container.mux(packet)

    def _flush_video(self) -> None:
        for packet in self._video.encode(None):
            self._container.mux(packet)

    def _close_wav(self) -> None:
        try:
            self._wav.close()
        finally:
            self._wav_file.close()

    def _fail(self, exc: BaseException, when: str) -> None:
        """Keep the first failure as :attr:`error` (one sentence) and stop writing."""
        if self.error is not None:
            return
        self.error = SessionError(
            f"Recording to {self.out_dir} stopped {when} ({_reason(exc)}); free some space or "
            f"record to another folder (everything written before it is kept)."
        )
        log.error("%s", self.error)
        with self._backlog:
            self._backlog.notify_all()

    # ------------------------------------------------------------------ close
    def close(self) -> Path:
        """Finish: drain the queue, close the media files, write report.png and the final
        session.json ("complete": true). Idempotent; returns the session folder."""
        with self._close_lock:
            if self._closed:
                return self.out_dir
            self._closed = True
        self._queue.put(_STOP)
        self._thread.join(CLOSE_TIMEOUT_S)
        if self._thread.is_alive():
            self._fail(TimeoutError("the writer did not finish"), "while closing")
        self.end_time = now_iso()
        with self._out_lock:
            for writer in (self._predictions, self._markers):
                try:
                    writer.close()
                except OSError as exc:
                    self._fail(exc, "closing the predictions and markers")
        self._finished = True
        self._write_report()
        try:
            self._write_json()
        except OSError as exc:
            self._fail(exc, "writing session.json")
        log.debug("closed %s", self.out_dir)
        return self.out_dir

    def _write_report(self) -> None:
        try:
            data = read_predictions(self.out_dir / PREDICTIONS)
            intensities = np.stack([data[e] for e in EMOTIONS], axis=1)  # [N, 7]
            model = self.info.get("model") or {}
            untrained = model and not model.get("trained", False)
            plot_curves(
                data["time_s"],
                intensities,
                data["face_detected"],
                self.out_dir / REPORT,
                title=f"{self.out_dir.name}: emotional reaction intensity",
                subtitle=(
                    "UNTRAINED model (random weights): curves are not meaningful. "
                    if untrained
                    else ""
                )
                + f"{model.get('architecture') or 'model'}, {len(data['time_s'])} output steps",
            )
            self._report_written = True
        except (OSError, ValueError) as exc:
            log.warning("report.png was not written (%s).", _reason(exc))

    def _write_json(self) -> None:
        write_session_json(self.out_dir, self.to_json())

    def to_json(self) -> dict[str, Any]:
        """What session.json holds now (docs/design.md, "Sessions")."""
        duration = self.frames_written and (self._last_pts / 1000.0 + 1.0 / self.fps)
        if self.has_audio and self._next_sample:
            duration = max(duration or 0.0, self._next_sample / self.sample_rate)
        info = {k: v for k, v in self.info.items()}
        data: dict[str, Any] = {
            "format_version": SESSION_FORMAT_VERSION,
            "complete": self._finished and self.error is None,
            "start_time": self.start_time,
            "end_time": self.end_time,
            "duration_s": round(float(duration or 0.0), 4),
            # Source time of the session's 0 (a recording started while the source ran).
            "source_start_s": self.start_s,
            "source": info.pop("source", None),
            "model": info.pop("model", None),
            "backend": info.pop("backend", None),
            "precision": info.pop("precision", None),
            "device": info.pop("device", None),
            "video": {
                "file": VIDEO,
                "codec": "h264",
                "fps": self.fps,
                "width": self.width,
                "height": self.height,
                "frames": self.frames_written,
                "frames_dropped": self.frames_dropped,
                "first_source_index": self._first_index,
                "keyframe_every_s": KEYFRAME_EVERY_S,
            },
            "has_audio": self.has_audio,
            "audio": None,
            "predictions": {
                "file": PREDICTIONS,
                "rows": self.rows_written,
                "left_out_before_start": self.outputs_dropped,
            },
            "markers": {"file": MARKERS, "count": self.markers_written},
            "report": REPORT if self._report_written else None,
            "self_report": self.self_report,
            "error": str(self.error) if self.error is not None else None,
            "versions": versions(),
        }
        if self.has_audio:
            data["audio"] = {
                "file": AUDIO,
                "mp4_codec": "aac",
                "sample_rate": self.sample_rate,
                "samples": self.audio_samples_written,
                "padding_samples": self.audio_padding_samples,
            }
        for key, value in info.items():
            data.setdefault(key, value)
        return data

    def __enter__(self) -> SessionRecorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
