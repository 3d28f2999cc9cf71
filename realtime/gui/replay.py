"""Replay of a recorded session folder: its video, the stored ``predictions.csv`` curves, the
``markers.csv`` markers, the sound of ``audio.wav`` (:mod:`eri.realtime.gui.replay_audio`) and
its level, seekable with a slider and the arrow keys (:class:`SessionData`,
:class:`VideoReader`, :class:`ReplayBar`).
"""

from __future__ import annotations

import logging
import wave
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PySide6 import QtCore, QtWidgets

from eri.models.spec import EMOTIONS
from eri.realtime.gui.replay_audio import read_wav
from eri.realtime.gui.worker import SILENT_DB
from eri.realtime.session.format import (
    AUDIO,
    PREDICTIONS,
    SESSION_JSON,
    VIDEO,
    NewerSessionError,
    SessionError,
    read_markers,
    read_session,
)
from eri.realtime.sources import SourceError

log = logging.getLogger(__name__)

LEVEL_HOP_S = 0.05
#: Seeking further ahead than this seeks the container instead of decoding forward.
FORWARD_DECODE_S = 2.0


def is_session(path: str | Path) -> bool:
    """A folder with a recorded video and its predictions: replayed rather than re-analysed."""
    p = Path(path)
    return p.is_dir() and (p / VIDEO).is_file() and (p / PREDICTIONS).is_file()


def audio_levels(
    pcm: np.ndarray, rate: int, hop_s: float = LEVEL_HOP_S
) -> tuple[np.ndarray, np.ndarray]:
    """RMS level in dBFS of ``pcm`` [n] int16 every ``hop_s``: (times [m], levels [m])."""
    hop = max(1, int(round(rate * hop_s)))
    n = len(pcm) // hop
    if n == 0:
        return np.zeros(0), np.zeros(0)
    x = pcm[: n * hop].astype(np.float32).reshape(n, hop) / 32768.0
    rms = np.sqrt(np.mean(np.square(x), axis=1))
    with np.errstate(divide="ignore"):
        db = np.maximum(SILENT_DB, 20.0 * np.log10(rms))
    return np.arange(n) * (hop / rate), db


class VideoReader:
    """Frames of a video file by time, decoding forward and seeking back (PyAV)."""

    def __init__(self, path: str | Path) -> None:
        import av

        self.path = Path(path)
        try:
            self._container = av.open(str(self.path))
        except (av.FFmpegError, OSError) as exc:
            raise SourceError(
                f"{self.path} cannot be opened ({exc}); the session is damaged."
            ) from None
        self._stream = self._container.streams.video[0]
        self._stream.thread_type = "AUTO"
        self._start = (
            float(self._stream.start_time * self._stream.time_base)
            if (self._stream.start_time is not None)
            else 0.0
        )
        self._iter = None
        self._current: tuple[float, np.ndarray] | None = None
        self._next: tuple[float, np.ndarray] | None = None
        self.seeks = 0

    def close(self) -> None:
        self._container.close()

    def _decode_next(self) -> tuple[float, np.ndarray] | None:
        if self._iter is None:
            self._iter = self._container.decode(self._stream)
        try:
            frame = next(self._iter)
        except StopIteration:
            return None
        t = float(frame.time) if frame.time is not None else 0.0
        return t - self._start, frame.to_ndarray(format="rgb24")

    def _seek(self, t: float) -> None:
        self.seeks += 1
        target = int((t + self._start) / self._stream.time_base)
        self._container.seek(max(0, target), stream=self._stream, backward=True, any_frame=False)
        self._iter = None
        self._current, self._next = None, self._decode_next()

    def frame_at(self, t: float) -> tuple[float, np.ndarray] | None:
        """The last frame at or before ``t`` seconds (the first frame before it starts)."""
        cur = self._current
        if cur is None or t < cur[0] or t > cur[0] + FORWARD_DECODE_S:
            self._seek(t)
        elif self._next is None and self._iter is None:
            self._next = self._decode_next()
        while self._next is not None and (self._current is None or self._next[0] <= t):
            self._current = self._next
            self._next = self._decode_next()
        return self._current


@dataclass
class SessionData:
    """Everything a replay shows, read once from the session folder."""

    directory: Path
    times: np.ndarray
    values: np.ndarray  # [n, 7]
    faces: np.ndarray  # [n] bool
    audio: np.ndarray  # [n] bool
    markers: list[tuple[float, str]] = field(default_factory=list)
    level_times: np.ndarray = field(default_factory=lambda: np.zeros(0))
    levels: np.ndarray = field(default_factory=lambda: np.zeros(0))
    #: audio.wav: samples [n] int16 and their rate (None without one).
    pcm: np.ndarray | None = None
    rate: int = 0
    info: dict = field(default_factory=dict)
    #: One sentence about what the replay lacks (a corrupt session.json, an interrupted
    #: recording), or None.
    notice: str | None = None

    @classmethod
    def load(cls, directory: str | Path) -> SessionData:
        """Read the session; SessionError / SourceError (one sentence) for one that cannot be
        replayed: a newer format, unreadable predictions."""
        from eri.realtime.outputs import read_predictions

        d = Path(directory)
        info, notice = _session_info(d)
        try:
            cols = read_predictions(d / PREDICTIONS)
        except (OSError, ValueError) as exc:
            raise SourceError(
                f"{d / PREDICTIONS} cannot be read ({exc}); replay needs the session's "
                "predictions, or analyse its video with `eri analyze`."
            ) from None
        values = np.stack([cols[e] for e in EMOTIONS], axis=1).astype(np.float32)
        try:
            markers = read_markers(d)
        except SessionError as exc:
            markers, notice = [], notice or f"Replaying without markers: {exc}"
        data = cls(
            directory=d,
            times=cols["time_s"],
            values=values,
            faces=cols["face_detected"] > 0.5,
            audio=cols["audio_present"] > 0.5,
            markers=markers,
            info=info,
            notice=notice,
        )
        wav = d / AUDIO
        if wav.is_file():
            try:
                data.pcm, data.rate = read_wav(wav)
                data.level_times, data.levels = audio_levels(data.pcm, data.rate)
            except (OSError, EOFError, wave.Error, SourceError) as exc:
                log.warning("no audio for the replay: %s", exc)
                data.notice = data.notice or f"Replaying without sound: {wav} cannot be read."
        return data

    @property
    def duration_s(self) -> float:
        return float(self.times[-1]) if len(self.times) else 0.0

    def level_at(self, t: float) -> float:
        if not len(self.level_times):
            return SILENT_DB
        i = int(np.searchsorted(self.level_times, t, side="right")) - 1
        return float(self.levels[max(0, i)])

    def row_at(self, t: float) -> int:
        """Index of the last prediction row at or before ``t`` (0 before the first)."""
        return max(0, int(np.searchsorted(self.times, t, side="right")) - 1)


def _session_info(directory: Path) -> tuple[dict, str | None]:
    """session.json (validated) and a notice: {} without one; {} and the reason for a corrupt
    one (the video and curves still replay); the recording's error or an interrupted
    recording noted. A newer format is refused (NewerSessionError)."""
    if not (directory / SESSION_JSON).is_file():
        return {}, None
    try:
        info = read_session(directory)
    except NewerSessionError:
        raise
    except SessionError as exc:
        return {}, f"Replaying without the session details: {exc}"
    if info.get("error"):
        return info, f"This recording ended early: {info['error']}"
    if not info["complete"]:
        return info, (
            "This recording was not closed (the program was killed); it replays up to its "
            "last saved second."
        )
    return info, None


class ReplayBar(QtWidgets.QWidget):
    """Play / pause, a position slider (ms) and the time. Emits :attr:`seek` (seconds)."""

    seek = QtCore.Signal(float)
    play_toggled = QtCore.Signal(bool)

    def __init__(self, duration_s: float, parent=None) -> None:
        super().__init__(parent)
        self.duration_s = max(0.0, duration_s)
        self.play = QtWidgets.QPushButton("Pause")
        self.play.setCheckable(True)
        self.play.setChecked(True)
        self.play.toggled.connect(self._on_play)
        self.slider = QtWidgets.QSlider(QtCore.Qt.Orientation.Horizontal)
        self.slider.setRange(0, int(self.duration_s * 1000))
        self.slider.setSingleStep(1000)
        self.slider.setPageStep(10000)
        self.slider.setFocusPolicy(QtCore.Qt.FocusPolicy.NoFocus)  # arrows go to the window
        self.slider.sliderMoved.connect(lambda ms: self.seek.emit(ms / 1000.0))
        self.slider.actionTriggered.connect(self._on_action)
        self.time = QtWidgets.QLabel()
        self.time.setMinimumWidth(110)
        layout = QtWidgets.QHBoxLayout(self)
        layout.setContentsMargins(4, 0, 4, 0)
        layout.addWidget(self.play)
        layout.addWidget(self.slider, 1)
        layout.addWidget(self.time)
        self.set_position(0.0)

    def set_position(self, t: float) -> None:
        self.slider.blockSignals(True)
        self.slider.setValue(int(round(t * 1000)))
        self.slider.blockSignals(False)
        self.time.setText(f"{t:6.1f} / {self.duration_s:.1f} s")

    def _on_action(self, _action: int) -> None:
        # A click on the groove or a page step: the slider's new position is its sliderPosition.
        self.seek.emit(self.slider.sliderPosition() / 1000.0)

    def _on_play(self, playing: bool) -> None:
        self.play.setText("Pause" if playing else "Play")
        self.play_toggled.emit(playing)
