"""The replay half of the viewer window (:class:`ReplayMixin` of
:class:`~eri.realtime.gui.main_window.ViewerWindow`): a recorded session's video, sound
(:mod:`eri.realtime.gui.replay_audio`), stored curves, markers and audio level, seekable with
the replay bar and the arrow keys, all following one :class:`ReplayClock`.
"""

from __future__ import annotations

import logging
from pathlib import Path

from PySide6 import QtGui, QtWidgets

from eri.realtime.gui.replay import VIDEO, ReplayBar, SessionData, VideoReader
from eri.realtime.gui.replay_audio import ReplayAudio, ReplayClock, open_replay_audio

log = logging.getLogger(__name__)


class ReplayMixin:
    """Replay for the viewer window (uses its curves, video, meter, controls and layout)."""

    def _init_replay(self) -> None:
        self._replay: SessionData | None = None
        self._reader: VideoReader | None = None
        self._clock: ReplayClock | None = None
        self._player: ReplayAudio | None = None
        #: Why the replay is silent (no audio.wav, no PortAudio, no output device), or None.
        self.silent_why: str | None = None
        self._replay_keys: list[QtGui.QShortcut] = []

    def enter_replay(self, directory: str | Path) -> None:
        """Play a recorded session: its video and sound, stored curves, markers and audio level.
        Raises an EriError (one sentence) for a session that cannot be replayed."""
        data = SessionData.load(directory)
        self._reader = VideoReader(Path(directory) / VIDEO)
        self._replay = data
        self._clock = ReplayClock(data.duration_s)
        self._clock.seek(float(data.times[0]) if len(data.times) else 0.0)
        if data.pcm is None:
            self._player, self.silent_why = None, "the session has no audio"
        else:
            self._player, self.silent_why = open_replay_audio(data.pcm, data.rate, self._clock)
        if self._player is None:
            log.info("the replay is silent: %s", self.silent_why)
        if data.notice:
            self.show_message(data.notice)
        self.curves.clear()
        self.curves.set_data(data.times, data.values, data.faces)
        for t, label in data.markers:
            self.curves.add_marker(t, label)
        self.markers = list(data.markers)
        bar = ReplayBar(data.duration_s)
        bar.seek.connect(self.seek)
        bar.play_toggled.connect(self.set_playing)
        self._layout.insertWidget(self._layout.indexOf(self.controls), bar)
        self.replay_bar = bar
        for keys, step in (
            ("Left", -1.0),
            ("Right", 1.0),
            ("Shift+Left", -10.0),
            ("Shift+Right", 10.0),
        ):
            sc = QtGui.QShortcut(QtGui.QKeySequence(keys), self)
            sc.activated.connect(lambda step=step: self.seek(self.replay_position + step))
            self._replay_keys.append(sc)
        sc = QtGui.QShortcut(QtGui.QKeySequence("Space"), self)
        sc.activated.connect(lambda: bar.play.toggle())
        self._replay_keys.append(sc)
        model = data.info.get("model") if isinstance(data.info.get("model"), dict) else {}
        self._update_banner(model.get("trained") is False)
        self.controls.start_stop.setEnabled(False)
        self.controls.record.setEnabled(False)
        self.set_playing(True)
        self.video.setFocus()  # arrows seek (a focused text field would take them)
        self._show_replay()
        self._update_status(force=True)

    def _leave_replay(self) -> None:
        if self._replay is None:
            return
        for sc in self._replay_keys:
            sc.setEnabled(False)
            sc.deleteLater()
        self._replay_keys.clear()
        self.replay_bar.deleteLater()
        if self._player is not None:
            self._player.close()
        if self._reader is not None:
            self._reader.close()
        self._replay, self._reader, self._clock, self._player = None, None, None, None
        self.controls.start_stop.setEnabled(True)
        self.controls.record.setEnabled(True)

    @property
    def replay_position(self) -> float:
        return self._clock.position() if self._clock is not None else 0.0

    def set_playing(self, playing: bool) -> None:
        if self._clock is not None:
            self._clock.set_playing(playing)

    def seek(self, t: float) -> None:
        """Jump the replay (picture, curves and sound) to ``t`` seconds."""
        if self._clock is None:
            return
        self._clock.seek(t)
        self._show_replay()

    def _tick_replay(self) -> None:
        clock = self._clock
        if clock is None or not clock.playing:
            return
        if clock.at_end:
            self.replay_bar.play.setChecked(False)  # pauses the clock
        self._show_replay()

    def _show_replay(self) -> None:
        data, pos = self._replay, self.replay_position
        assert data is not None and self._reader is not None
        found = self._reader.frame_at(pos)
        if found is not None:
            self.video.show_image(found[1])
        face = bool(data.faces[data.row_at(pos)]) if len(data.times) else False
        self.video.show_face(None, text=f"t = {pos:.1f} s" + ("" if face else ", no face"))
        self.curves.redraw(end_s=pos)
        self._set_meter(data.level_at(pos) if len(data.level_times) else None)
        self.replay_bar.set_position(pos)

    def _replay_status(self, s: dict[str, QtWidgets.QLabel]) -> None:
        """The status bar's labels during a replay: the session's source, model and backend,
        and whether its sound plays (or why not)."""
        info = self._replay.info
        model = info.get("model", {}) if isinstance(info.get("model"), dict) else {}
        s["source"].setText(f"replay: {self._replay.directory.name}")
        s["model"].setText(f"model: {model.get('name', '?')}")
        s["backend"].setText(f"{info.get('backend', '?')} {info.get('precision') or ''}")
        s["device"].setText(str(info.get("device") or ""))
        for key in ("fps", "latency", "counters"):
            s[key].setText("")
        s["audio"].setText(
            "audio: playing" if self._player is not None else f"silent: {self.silent_why}"
        )
