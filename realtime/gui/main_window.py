"""The viewer's main window (:class:`ViewerWindow`): video with the face box, the seven curves,
the audio meter, the controls and the status bar, redrawn by one QTimer at display rate.

The redraw timer never blocks: it drains the worker's output queue and takes the newest frame
without waiting (:mod:`eri.realtime.gui.worker`). Closing the window stops capture and inference
and finalises a recording.
"""

from __future__ import annotations

import collections
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PySide6 import QtCore, QtGui, QtWidgets

from eri.choices import DEFAULT_ARCH
from eri.errors import EriError
from eri.realtime.gui.controls import ControlsPanel
from eri.realtime.gui.curves import DEFAULT_WINDOW_S, CurvesWidget
from eri.realtime.gui.recording import RecordingMixin
from eri.realtime.gui.replay import is_session
from eri.realtime.gui.replay_mode import ReplayMixin
from eri.realtime.gui.video import VideoWidget
from eri.realtime.gui.worker import SILENT_DB, PipelineWorker, RunConfig

if TYPE_CHECKING:
    from eri.realtime.gui.app import ViewerOptions

log = logging.getLogger(__name__)

#: Redraw tick (ms): a 60 Hz display's rate. A tick draws only what arrived since the last one
#: (outputs and camera frames come at most at the source's rate), so a shorter tick costs no
#: extra drawing and halves the wait between an output and its point on screen.
REDRAW_MS = 16
STATUS_EVERY_S = 0.25
METER_FLOOR_DB = -60.0
UNTRAINED_TEXT = (
    "UNTRAINED MODEL: random weights, the curves mean nothing. "
    "Load a trained bundle (--model or the Model picker)."
)


def settings_for(path: str | Path | None = None) -> QtCore.QSettings:
    """The viewer's settings: the user's (organisation "eri-live", application "viewer"), or an
    INI file at ``path`` (tests, scripted runs)."""
    if path is not None:
        return QtCore.QSettings(str(path), QtCore.QSettings.Format.IniFormat)
    return QtCore.QSettings("eri-live", "viewer")


class ViewerWindow(RecordingMixin, ReplayMixin, QtWidgets.QMainWindow):
    """The live viewer, or the replay of a recorded session."""

    def __init__(
        self,
        options: ViewerOptions,
        settings: QtCore.QSettings | None = None,
        *,
        probe_devices: bool = True,
    ) -> None:
        super().__init__()
        self.options = options
        self.settings = settings if settings is not None else settings_for()
        self.setWindowTitle("ERI Live")
        self.worker: PipelineWorker | None = None
        self.recorder: Any = None
        self.session_dirs: list[Path] = []
        self.markers: list[tuple[float, str]] = []
        self.error: BaseException | None = None
        #: Frame arrival -> curve point handed to pyqtgraph, and arrival -> pipeline output (ms).
        self.draw_latency_ms: collections.deque[float] = collections.deque(maxlen=100_000)
        self.output_latency_ms: collections.deque[float] = collections.deque(maxlen=100_000)
        #: Each drawn output's pipeline stage times (ms), for benchmarks.
        self.stages_ms: collections.deque[dict[str, float]] = collections.deque(maxlen=100_000)
        self.outputs_drawn = 0
        self._latency_ms: collections.deque[float] = collections.deque(maxlen=90)
        self._draw_times: collections.deque[float] = collections.deque(maxlen=240)
        self._last_status = 0.0
        self._reported_state = ""
        self._init_replay()
        #: Notices from any thread, shown by the redraw tick: (one sentence, turn recording off).
        self._notices: collections.deque[tuple[str, bool]] = collections.deque()

        # ---- widgets
        self.banner = QtWidgets.QLabel(UNTRAINED_TEXT)
        self.banner.setAlignment(QtCore.Qt.AlignmentFlag.AlignCenter)
        self.banner.setStyleSheet(
            "background:#c62828; color:white; font-weight:bold; font-size:15px; padding:6px;"
        )
        self.banner.hide()
        self.message = QtWidgets.QLabel()  # errors and notices, in the window itself
        self.message.setStyleSheet("background:#5d4037; color:white; padding:4px;")
        self.message.setWordWrap(True)
        self.message.hide()
        self.video = VideoWidget()
        self.video.clicked.connect(self.select_face_at)
        self.meter = QtWidgets.QProgressBar()
        self.meter.setOrientation(QtCore.Qt.Orientation.Vertical)
        self.meter.setRange(0, int(-METER_FLOOR_DB))
        self.meter.setTextVisible(False)
        self.meter.setFixedWidth(18)
        self.meter.setToolTip("audio level (dBFS, -60 to 0)")
        self.meter_label = QtWidgets.QLabel("audio")
        self.meter_label.setMinimumWidth(54)
        self.meter_label.setAlignment(QtCore.Qt.AlignmentFlag.AlignCenter)
        self.curves = CurvesWidget(DEFAULT_WINDOW_S)
        self.controls = ControlsPanel(probe_devices=probe_devices)
        self.controls.load_settings(self.settings)
        self._apply_options()
        self.curves.set_window(float(self.controls.window_s.value()))

        meter_box = QtWidgets.QVBoxLayout()
        meter_box.addWidget(self.meter, 1, QtCore.Qt.AlignmentFlag.AlignHCenter)
        meter_box.addWidget(self.meter_label)
        left = QtWidgets.QWidget()
        left_layout = QtWidgets.QHBoxLayout(left)
        left_layout.setContentsMargins(0, 0, 0, 0)
        left_layout.addWidget(self.video, 1)
        left_layout.addLayout(meter_box)
        self.splitter = QtWidgets.QSplitter(QtCore.Qt.Orientation.Horizontal)
        self.splitter.addWidget(left)
        self.splitter.addWidget(self.curves)
        self.splitter.setStretchFactor(0, 4)
        self.splitter.setStretchFactor(1, 5)
        central = QtWidgets.QWidget()
        self._layout = QtWidgets.QVBoxLayout(central)
        self._layout.setContentsMargins(4, 4, 4, 4)
        self._layout.addWidget(self.banner)
        self._layout.addWidget(self.message)
        self._layout.addWidget(self.splitter, 1)
        self._layout.addWidget(self.controls)
        self.setCentralWidget(central)

        self.status_labels: dict[str, QtWidgets.QLabel] = {}
        for key in ("source", "model", "backend", "device", "fps", "latency", "counters", "audio"):
            label = QtWidgets.QLabel()
            self.status_labels[key] = label
            self.statusBar().addWidget(label)

        # ---- wiring
        c = self.controls
        c.start_clicked.connect(self.start)
        c.stop_clicked.connect(lambda: self.stop())
        c.record_toggled.connect(self.set_recording)
        c.marker_clicked.connect(self.add_marker)
        c.save_png_clicked.connect(self._save_png_dialog)
        c.window_changed.connect(self.curves.set_window)
        shortcut = QtGui.QShortcut(QtGui.QKeySequence("M"), self)
        shortcut.activated.connect(lambda: self.add_marker())

        self.timer = QtCore.QTimer(self)
        self.timer.setTimerType(QtCore.Qt.TimerType.PreciseTimer)
        self.timer.setInterval(REDRAW_MS)
        self.timer.timeout.connect(self._tick)
        self.timer.start()
        geometry = self.settings.value("geometry")
        if isinstance(geometry, QtCore.QByteArray):
            self.restoreGeometry(geometry)
        else:
            self.resize(1400, 720)
        self._update_banner(options.model is None and options.bundle is None)

    # ------------------------------------------------------------------ options
    def _apply_options(self) -> None:
        """Command-line options win over the saved settings."""
        o, c = self.options, self.controls
        if o.source is not None:
            c.set_source(str(o.source))
        elif c.source.currentData() is None:
            c.set_source("0")
        if o.mic is not None:
            c.set_mic(o.mic)
        if o.model is not None:
            c.model.setText(str(o.model))
        if o.arch is not None:
            c.arch.setCurrentText(o.arch)
        if o.backend is not None:
            c.backend.setCurrentText(o.backend)
        if o.record:
            c.record_dir.setText(str(o.record))
            c.record.blockSignals(True)
            c.record.setChecked(True)
            c.record.blockSignals(False)
        if o.window_s is not None:
            c.window_s.setValue(int(o.window_s))

    def _update_banner(self, untrained: bool) -> None:
        self.banner.setVisible(bool(untrained))

    def show_message(self, text: str) -> None:
        """A notice above the curves (and in the log)."""
        self.message.setText(text)
        self.message.setVisible(bool(text))

    def add_message(self, text: str) -> None:
        """Another sentence after the notice shown (one event, one sentence)."""
        shown = self.message.text() if self.message.isVisibleTo(self) else ""
        self.show_message(f"{shown} {text}" if shown and text not in shown else text)

    # ------------------------------------------------------------------ start / stop
    @property
    def running(self) -> bool:
        return self.worker is not None and self.worker.state in ("loading", "running")

    def start(self) -> None:
        """Start the pipeline on the chosen source (or replay a recorded session)."""
        if self.running:
            return
        spec = self.controls.source_spec()
        source_obj = self.options.source_object
        self._leave_replay()
        self.show_message("")
        self.error = None
        if source_obj is None and is_session(spec):
            try:
                self.enter_replay(spec)
            except EriError as exc:  # a newer format, unreadable predictions or video
                self.error = exc
                self.show_message(str(exc))
                log.error("%s", exc)
            return
        c, o = self.controls, self.options
        arch = c.arch.currentText() or DEFAULT_ARCH
        model = c.model_path()
        config = RunConfig(
            source=source_obj if source_obj is not None else spec,
            mic=c.mic_spec(),
            model=model,
            arch=arch,
            backend=c.backend.currentText(),
            precision=o.precision,
            subject=o.subject,
            threads=o.threads,
        )
        same_model = model == o.model and arch == (o.arch or DEFAULT_ARCH)
        bundle = o.bundle if same_model else None
        self.curves.clear()
        self.markers.clear()
        self.draw_latency_ms.clear()
        self.output_latency_ms.clear()
        self.stages_ms.clear()
        self._latency_ms.clear()
        self._draw_times.clear()
        self.outputs_drawn = 0
        self.error = None
        self._reported_state = ""
        self.worker = PipelineWorker(config, bundle=bundle)
        if c.record.isChecked():
            self.worker.start_recording(self._make_recorder)
        self.worker.start()
        self._update_banner(model is None or (bundle is not None and not bundle.trained))
        c.set_running(True)
        self._update_status(force=True)

    def stop(self, *, ask_report: bool = True) -> bool:
        """Stop capture and inference and finalise a recording; True if the threads ended
        within a second."""
        worker = self.worker
        if worker is None:
            self.controls.set_running(False)
            return True
        ended = worker.stop(timeout=1.0)
        if not ended:
            log.warning("the inference thread is still busy; it ends on its own")
        self._drain()
        self._end_recording(ask_report=ask_report)
        self.controls.set_running(False)
        self._update_status(force=True)
        return ended

    # ------------------------------------------------------------------ user actions
    def current_time_s(self) -> float | None:
        """The time a marker would get now: the newest captured event, or the replay position."""
        if self._clock is not None:
            return self._clock.position()
        return self.worker.latest_time_s if self.worker is not None else None

    def add_marker(self, label: str | None = None) -> tuple[float, str] | None:
        """A marker at the current time, with ``label`` (default: the label field's text)."""
        t = self.current_time_s()
        if t is None:
            return None
        if label is None:
            label = self.controls.marker_label.text()
        label = label.strip()
        self.controls.marker_label.clear()
        self.markers.append((t, label))
        self.curves.add_marker(t, label)
        recorder = self.worker.recorder if self.worker is not None else None
        if recorder is not None:
            try:
                recorder.add_marker(t, label)
            except Exception as exc:
                log.error("marker not recorded: %s", exc)
        self.statusBar().showMessage(f"marker at {t:.2f} s {label}", 3000)
        return t, label

    def select_face_at(self, x: float, y: float) -> None:
        """Follow the face at image point (x, y) (a click on the video)."""
        if self.worker is not None and self.worker.select_face_at(x, y):
            self.statusBar().showMessage(f"following the face at ({x:.0f}, {y:.0f})", 3000)

    def save_curves_png(self, path: str | Path) -> bool:
        return self.curves.save_png(str(path))

    def save_screenshot(self, path: str | Path) -> bool:
        """The whole window as a PNG."""
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        return self.grab().save(str(path), "PNG", 0)  # 0: smallest file

    def _save_png_dialog(self) -> None:
        path, _ = QtWidgets.QFileDialog.getSaveFileName(
            self, "Save curves", "eri-curves.png", "PNG (*.png)"
        )
        if path:
            self.save_curves_png(path)

    # ------------------------------------------------------------------ drawing
    def _drain(self) -> int:
        """Move every queued output onto the curves; returns how many."""
        worker = self.worker
        if worker is None:
            return 0
        updates = worker.outputs.drain()
        if not updates:
            return 0
        outs = [u.output for u in updates]
        self.curves.append(
            np.array([o.time_s for o in outs]),
            np.stack([o.intensities for o in outs]),
            np.array([o.face_detected for o in outs]),
        )
        self.curves.redraw()
        drawn = time.perf_counter()
        for u in updates:
            self.draw_latency_ms.append((drawn - u.arrived) * 1e3)
            latency = u.output.stages_ms.get("latency", float("nan"))
            self._latency_ms.append(latency)
            self.output_latency_ms.append(latency)
            self.stages_ms.append(u.output.stages_ms)
            self._draw_times.append(drawn)
        self.outputs_drawn += len(updates)
        return len(updates)

    def _tick(self) -> None:
        if self._replay is not None:
            self._tick_replay()
            return
        worker = self.worker
        if worker is None:
            return
        self._drain()
        frame = worker.frames.get(timeout=0)
        if frame is not None:
            self.video.show_image(frame.image)
            faces = (
                f", {frame.num_faces} faces: click one to follow it" if frame.num_faces > 1 else ""
            )
            text = (
                f"t = {frame.time_s:.1f} s" + ("" if frame.face_detected else ", no face") + faces
            )
            self.video.show_face(frame.box, frame.points, detected=frame.face_detected, text=text)
        self._set_meter(worker.audio_level_db if worker.info.has_audio else None)
        self._check_recording(worker)
        self._show_notices()
        if worker.state != self._reported_state:
            self._on_state(worker)
        self._update_status()

    def _on_state(self, worker: PipelineWorker) -> None:
        self._reported_state = worker.state
        if worker.state == "running":
            self._update_banner(not worker.info.trained)
        elif worker.state in ("ended", "failed"):
            self._drain()
            self._check_recording(worker)
            saved = self._end_recording(ask_report=False)
            self._show_notices()
            if worker.state == "failed":
                self.error = worker.error
                self.add_message(f"The pipeline stopped: {worker.error}")
            else:
                end = f"{worker.latest_time_s:.1f} s" if worker.latest_time_s is not None else "0 s"
                where = f"; the session was saved to {saved}" if saved is not None else ""
                self.add_message(f"The source ended at {end}{where}.")
            self.controls.set_running(False)
        self._update_status(force=True)

    def _show_notices(self) -> None:
        """Show the notices queued in :attr:`_notices`; one that ends a recording also clears
        the Record box (without starting or stopping anything)."""
        while self._notices:
            text, record_off = self._notices.popleft()
            self.add_message(text)
            if record_off:
                self.controls.record.blockSignals(True)
                self.controls.record.setChecked(False)
                self.controls.record.blockSignals(False)

    def _set_meter(self, level_db: float | None) -> None:
        if level_db is None:
            self.meter.setValue(0)
            self.meter.setEnabled(False)
            self.meter_label.setText("no audio")
            return
        self.meter.setEnabled(True)
        self.meter.setValue(int(max(0.0, level_db - METER_FLOOR_DB)))
        self.meter_label.setText(f"{level_db:.0f} dB" if level_db > SILENT_DB else "silent")

    def fps(self) -> float:
        """Outputs drawn per second over the last couple of seconds."""
        now = time.perf_counter()
        recent = [t for t in self._draw_times if now - t <= 2.0]
        if len(recent) < 2:
            return 0.0
        return (len(recent) - 1) / max(1e-6, recent[-1] - recent[0])

    def _update_status(self, force: bool = False) -> None:
        now = time.perf_counter()
        if not force and now - self._last_status < STATUS_EVERY_S:
            return
        self._last_status = now
        s = self.status_labels
        worker = self.worker
        if self._replay is not None:
            self._replay_status(s)
            return
        if worker is None:
            s["source"].setText(f"source: {self.controls.source_spec()}")
            return
        i = worker.info
        s["source"].setText(f"source: {i.source}")
        s["model"].setText(
            f"model: {i.model or 'loading…'}" + ("" if i.trained else " (UNTRAINED)")
        )
        s["backend"].setText(f"{i.backend} {i.precision}".strip() or worker.config.backend)
        s["device"].setText(i.device)
        s["fps"].setText(f"{self.fps():.1f} fps")
        lat = [v for v in self._latency_ms if v == v]
        s["latency"].setText(f"latency {np.median(lat):.0f} ms" if lat else "latency -")
        s["counters"].setText(f"dropped {worker.dropped}, skipped {worker.skipped}")
        if worker.state == "loading":
            s["audio"].setText("loading the model…")
        elif i.has_audio:
            s["audio"].setText("audio: on")
        else:
            s["audio"].setText(f"visual only: {i.audio_note or 'no audio'}")

    # ------------------------------------------------------------------ closing
    def closeEvent(self, event: QtGui.QCloseEvent) -> None:
        """Stop everything and finalise the recording (no dialog), then save the settings."""
        t0 = time.perf_counter()
        self.timer.stop()
        self.stop(ask_report=False)
        self._leave_replay()
        self.controls.save_settings(self.settings)
        self.settings.setValue("geometry", self.saveGeometry())
        self.settings.sync()
        self.close_s = time.perf_counter() - t0
        log.debug("closed in %.3f s", self.close_s)
        super().closeEvent(event)
