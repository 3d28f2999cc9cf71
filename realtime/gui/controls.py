"""The controls: source and microphone pickers, model bundle / architecture / backend pickers,
start-stop, record, add marker, the curves' time span and PNG export (:class:`ControlsPanel`).

The panel only collects choices and emits signals; the main window acts on them. Its choices
persist in the window's QSettings (:meth:`ControlsPanel.save_settings`).
"""

from __future__ import annotations

import logging
from typing import Any

from PySide6 import QtCore, QtWidgets

from eri.choices import BACKENDS, DEFAULT_ARCH

log = logging.getLogger(__name__)

FILE_ITEM, SESSION_ITEM = "file…", "session…"
MEDIA_FILTER = "Media (*.mp4 *.mov *.mkv *.avi *.webm *.m4v);;All files (*)"


def _devices() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Cameras and microphones found here (never raises)."""
    try:
        from eri.realtime.sources import list_cameras, list_microphones

        return list_cameras(), list_microphones()
    except Exception as exc:  # a partial install still opens the viewer
        log.debug("device listing failed: %s", exc)
        return [], []


class ControlsPanel(QtWidgets.QWidget):
    """Two rows of controls under the curves."""

    start_clicked = QtCore.Signal()
    stop_clicked = QtCore.Signal()
    record_toggled = QtCore.Signal(bool)
    marker_clicked = QtCore.Signal(str)
    save_png_clicked = QtCore.Signal()
    window_changed = QtCore.Signal(float)

    def __init__(self, parent=None, *, probe_devices: bool = True) -> None:
        super().__init__(parent)
        cameras, mics = _devices() if probe_devices else ([], [])

        self.source = QtWidgets.QComboBox()
        self.source.setMinimumContentsLength(18)
        for cam in cameras:
            self.source.addItem(
                f"camera {cam['index']} ({cam.get('width')}x{cam.get('height')})",
                str(cam["index"]),
            )
        self.source.addItem("synthetic face", "synthetic")
        self.source.addItem("video file…", FILE_ITEM)
        self.source.addItem("session folder…", SESSION_ITEM)
        self.source.activated.connect(self._on_source_activated)

        self.mic = QtWidgets.QComboBox()
        self.mic.addItem("default microphone", None)
        self.mic.addItem("no microphone (visual only)", "none")
        for m in mics:
            self.mic.addItem(str(m.get("name", m["index"])), str(m["index"]))

        self.model = QtWidgets.QLineEdit()
        self.model.setPlaceholderText("untrained model (no bundle)")
        self.model_browse = QtWidgets.QToolButton(text="…")
        self.model_browse.clicked.connect(self._browse_model)
        self.arch = QtWidgets.QComboBox()
        try:
            from eri.models.registry import list_models

            self.arch.addItems(list_models())
        except Exception:  # pragma: no cover - registry always importable in a full install
            self.arch.addItem(DEFAULT_ARCH)
        self.arch.setCurrentText(DEFAULT_ARCH)
        self.backend = QtWidgets.QComboBox()
        self.backend.addItems(["auto", *BACKENDS])

        self.start_stop = QtWidgets.QPushButton("Start")
        self.start_stop.setCheckable(True)
        self.start_stop.clicked.connect(self._on_start_stop)

        self.record = QtWidgets.QCheckBox("Record to")
        self.record.toggled.connect(self.record_toggled.emit)
        self.record_dir = QtWidgets.QLineEdit()
        self.record_dir.setPlaceholderText("session folder")
        self.record_browse = QtWidgets.QToolButton(text="…")
        self.record_browse.clicked.connect(self._browse_record)
        self.ask_report = QtWidgets.QCheckBox("self-report at stop")
        self.ask_report.setChecked(True)

        self.marker_label = QtWidgets.QLineEdit()
        self.marker_label.setPlaceholderText("marker label (optional)")
        self.marker_label.setMaximumWidth(180)
        self.marker = QtWidgets.QPushButton("Add marker (M)")
        self.marker.clicked.connect(lambda: self.marker_clicked.emit(self.marker_label.text()))

        self.window_s = QtWidgets.QSpinBox()
        self.window_s.setRange(5, 600)
        self.window_s.setSuffix(" s")
        self.window_s.setValue(30)
        self.window_s.valueChanged.connect(lambda v: self.window_changed.emit(float(v)))
        self.save_png = QtWidgets.QPushButton("Save PNG")
        self.save_png.clicked.connect(self.save_png_clicked.emit)

        row1 = QtWidgets.QHBoxLayout()
        for w in (
            QtWidgets.QLabel("Source"),
            self.source,
            self.mic,
            QtWidgets.QLabel("Model"),
            self.model,
            self.model_browse,
            self.arch,
            QtWidgets.QLabel("Backend"),
            self.backend,
            self.start_stop,
        ):
            row1.addWidget(w)
        row2 = QtWidgets.QHBoxLayout()
        for w in (
            self.record,
            self.record_dir,
            self.record_browse,
            self.ask_report,
            self.marker_label,
            self.marker,
            QtWidgets.QLabel("Show"),
            self.window_s,
            self.save_png,
        ):
            row2.addWidget(w)
        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(4, 2, 4, 2)
        layout.addLayout(row1)
        layout.addLayout(row2)

    # ------------------------------------------------------------------ values
    def source_spec(self) -> str:
        data = self.source.currentData()
        return str(data) if data not in (None, FILE_ITEM, SESSION_ITEM) else "synthetic"

    def set_source(self, spec: str) -> None:
        """Select ``spec`` (a camera index, "synthetic", a path), adding it when new."""
        i = self.source.findData(spec)
        if i < 0:
            label = f"camera {spec}" if spec.isdigit() else spec
            self.source.insertItem(self.source.count() - 2, label, spec)
            i = self.source.findData(spec)
        self.source.setCurrentIndex(i)

    def mic_spec(self) -> str | None:
        return self.mic.currentData()

    def set_mic(self, spec: str | None) -> None:
        i = self.mic.findData(spec)
        if i < 0 and spec is not None:
            self.mic.addItem(spec, spec)
            i = self.mic.findData(spec)
        self.mic.setCurrentIndex(max(i, 0))

    def model_path(self) -> str | None:
        return self.model.text().strip() or None

    def set_running(self, running: bool) -> None:
        """Reflect the pipeline's state: pickers are locked while it runs."""
        self.start_stop.setChecked(running)
        self.start_stop.setText("Stop" if running else "Start")
        for w in (self.source, self.mic, self.model, self.model_browse, self.arch, self.backend):
            w.setEnabled(not running)

    # ------------------------------------------------------------------ settings
    def save_settings(self, settings: QtCore.QSettings) -> None:
        settings.setValue("source", self.source_spec())
        settings.setValue("mic", self.mic_spec() or "")
        settings.setValue("model", self.model_path() or "")
        settings.setValue("arch", self.arch.currentText())
        settings.setValue("backend", self.backend.currentText())
        settings.setValue("record_dir", self.record_dir.text())
        settings.setValue("ask_report", self.ask_report.isChecked())
        settings.setValue("window_s", self.window_s.value())

    def load_settings(self, settings: QtCore.QSettings) -> None:
        if settings.contains("source"):
            self.set_source(str(settings.value("source")))
        if settings.contains("mic"):
            self.set_mic(str(settings.value("mic")) or None)
        self.model.setText(str(settings.value("model", "") or ""))
        if settings.contains("arch"):
            self.arch.setCurrentText(str(settings.value("arch")))
        if settings.contains("backend"):
            self.backend.setCurrentText(str(settings.value("backend")))
        self.record_dir.setText(str(settings.value("record_dir", "") or ""))
        self.ask_report.setChecked(str(settings.value("ask_report", "true")).lower() == "true")
        self.window_s.setValue(int(float(settings.value("window_s", 30))))

    # ------------------------------------------------------------------ slots
    def _on_source_activated(self, index: int) -> None:
        data = self.source.itemData(index)
        path = ""
        if data == FILE_ITEM:
            path, _ = QtWidgets.QFileDialog.getOpenFileName(self, "Video file", "", MEDIA_FILTER)
        elif data == SESSION_ITEM:
            path = QtWidgets.QFileDialog.getExistingDirectory(self, "Session folder")
        if data in (FILE_ITEM, SESSION_ITEM):
            if path:
                self.set_source(path)
            else:
                self.source.setCurrentIndex(0)

    def _browse_model(self) -> None:
        path = QtWidgets.QFileDialog.getExistingDirectory(self, "Model bundle folder")
        if path:
            self.model.setText(path)

    def _browse_record(self) -> None:
        path = QtWidgets.QFileDialog.getExistingDirectory(self, "Record sessions into")
        if path:
            self.record_dir.setText(path)

    def _on_start_stop(self, checked: bool) -> None:
        (self.start_clicked if checked else self.stop_clicked).emit()
