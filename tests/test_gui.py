"""The viewer (``eri view``): a real window on Qt's offscreen platform, the real pipeline fed by
the synthetic face or a video file (no webcam or microphone here), the torch backend (no ONNX
export needed) and a temporary QSettings file per test."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import wave
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("PySide6.QtWidgets")
pytest.importorskip("pyqtgraph")
pytest.importorskip("pytestqt")

from PySide6 import QtCore, QtWidgets  # noqa: E402

from eri.models.spec import EMOTIONS  # noqa: E402
from eri.realtime.gui.app import ViewerOptions  # noqa: E402
from eri.realtime.gui.main_window import ViewerWindow, settings_for  # noqa: E402
from tests.media_utils import PROJECT_ROOT, mount_tmpfs, umount, write_video  # noqa: E402

pytestmark = pytest.mark.gui

FPS = 30.0
RATE = 15.0


@pytest.fixture(scope="module", autouse=True)
def _restore_torch_threads():
    """The viewer sets torch's (process-wide) thread count; give it back after this module."""
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def bundle():
    """The untrained default model, built once for the module."""
    from eri.models.bundle import untrained_bundle

    return untrained_bundle()


@pytest.fixture
def make_window(qtbot, tmp_path, bundle):
    """``make_window(**options)``: a shown ViewerWindow with a temporary settings file."""

    def make(**options) -> ViewerWindow:
        options.setdefault("backend", "torch")
        options.setdefault("bundle", bundle)
        win = ViewerWindow(
            ViewerOptions(**options), settings_for(tmp_path / "viewer.ini"), probe_devices=False
        )
        qtbot.addWidget(win)
        win.resize(1200, 640)
        win.show()
        return win

    return make


def _wait_running(qtbot, win: ViewerWindow, outputs: int = 1, timeout: int = 30_000) -> None:
    qtbot.waitUntil(
        lambda: (
            win.worker is not None
            and (win.worker.state == "failed" or win.curves.point_count >= outputs)
        ),
        timeout=timeout,
    )
    assert win.worker.state != "failed", win.worker.error


def _recorder_available() -> bool:
    try:
        from eri.realtime.session import SessionRecorder  # noqa: F401
    except ImportError:
        return False
    return True


# ---------------------------------------------------------------------------- curves
def test_curves_get_a_point_per_output_at_the_source_rate(qtbot, make_window):
    """Every output becomes one point on each curve, and outputs come at the source's rate.

    The synthetic face paced at 15 fps for 3 s: points == frames processed == outputs drawn
    (exactly: the GUI queue drops nothing); processed + skipped == frames captured (+-2 in
    flight); each point sits at a source frame's time (a multiple of 1/15 s), one frame apart
    wherever none was skipped. Rates are read from the source's timestamps, not the wall
    clock, so a loaded machine skips frames but cannot fail this; the wall-clock latency and
    the close time are measured by benchmarks/viewer.py.
    """
    from eri.realtime.sources import SyntheticSource

    source = SyntheticSource(num_frames=None, fps=RATE, audio=False, realtime=True)
    win = make_window(source_object=source, mic="none")
    win.start()
    _wait_running(qtbot, win, outputs=5)
    worker = win.worker
    p0, read0, skip0 = win.curves.point_count, worker.frames_processed, worker.skipped
    captured0 = source.stats()["frames_read"]
    t0 = time.perf_counter()
    qtbot.wait(3000)
    assert win.stop(ask_report=False)
    elapsed = time.perf_counter() - t0
    points = win.curves.point_count
    assert points == worker.frames_processed == win.outputs_drawn
    assert worker.outputs.dropped == 0
    captured = source.stats()["frames_read"] - captured0
    processed = worker.frames_processed - read0
    skipped = worker.skipped - skip0
    assert abs(processed + skipped - captured) <= 2
    assert captured > 0 and elapsed > 0
    frame_steps = np.diff(win.curves.times[p0:]) * RATE  # in source frames
    np.testing.assert_allclose(frame_steps, np.round(frame_steps), atol=1e-3)
    assert np.round(frame_steps).min() >= 1
    if skipped == 0:
        np.testing.assert_allclose(frame_steps, 1.0, atol=1e-3)
    # The curves hold the outputs in order, one value per emotion, in [0, 1].
    assert np.all(np.diff(win.curves.times) > 0)
    assert win.curves.values.shape == (points, len(EMOTIONS))
    assert 0.0 <= win.curves.values.min() and win.curves.values.max() <= 1.0
    assert "skipped" in win.status_labels["counters"].text()


def test_curves_widget_shades_face_lost_spans(qtbot):
    from eri.realtime.gui.curves import CurvesWidget, spans

    assert spans(np.arange(6.0), np.array([0, 1, 1, 0, 0, 1], bool)) == [(1.0, 3.0), (5.0, 5.0)]
    w = CurvesWidget(window_s=10.0)
    qtbot.addWidget(w)
    t = np.arange(0, 20, 0.5)
    faces = ~((t >= 12) & (t < 14))
    w.append(t, np.full((len(t), 7), 0.5, np.float32), faces)
    w.redraw()
    assert w.point_count == len(t)
    assert w.face_lost_spans() == [(12.0, 14.0)]
    assert w.plot.getViewBox().viewRange()[0] == pytest.approx([9.5, 19.5], abs=1e-6)


# ---------------------------------------------------------------------------- markers, recording
def test_marker_lands_with_its_time(qtbot, make_window, tmp_path):
    """M (and the button) add a marker at the current source time, with the label; with
    recording on it lands in the session's markers.csv."""
    record = tmp_path / "session"
    win = make_window(
        source="synthetic:100000", record=str(record) if _recorder_available() else None
    )
    win.controls.ask_report.setChecked(False)
    win.start()
    _wait_running(qtbot, win, outputs=10)
    win.controls.marker_label.setText("laugh")
    win.activateWindow()  # key shortcuts go to the active window
    qtbot.waitUntil(win.isActiveWindow, timeout=2000)
    qtbot.keyClick(win, QtCore.Qt.Key.Key_M)
    assert len(win.markers) == 1
    t_marker, label = win.markers[0]
    assert label == "laugh"
    assert t_marker == pytest.approx(win.worker.latest_time_s, abs=0.5)
    assert t_marker >= win.curves.times[-1] - 0.2
    qtbot.mouseClick(win.controls.marker, QtCore.Qt.MouseButton.LeftButton)
    assert len(win.markers) == 2 and win.markers[1][1] == ""
    assert [m for m, _ in win.curves.markers] == [m for m, _ in win.markers]
    qtbot.wait(300)
    win.stop(ask_report=False)
    if not _recorder_available():
        pytest.skip("eri.realtime.session.SessionRecorder is not there yet: window markers only")
    from eri.realtime.session import read_markers, read_session

    assert win.session_dirs == [record]
    markers = read_markers(record)
    assert [lab for _, lab in markers] == ["laugh", ""]
    assert markers[0][0] == pytest.approx(t_marker, abs=1e-3)
    assert read_session(record)["complete"] is True


def test_self_report_dialog_goes_into_the_session(qtbot, make_window, tmp_path, monkeypatch):
    pytest.importorskip("eri.realtime.session")
    from eri.realtime.gui.self_report import SelfReportDialog
    from eri.realtime.session import read_session

    ratings = {name: 10 * (i + 1) for i, name in enumerate(EMOTIONS)}

    def answer(dialog: SelfReportDialog) -> int:
        for name, value in ratings.items():
            dialog.sliders[name].setValue(value)
        assert dialog.values() == ratings
        return QtWidgets.QDialog.DialogCode.Accepted

    monkeypatch.setattr(SelfReportDialog, "exec", answer)
    record = tmp_path / "rated"
    win = make_window(source="synthetic:100000", mic="none", record=str(record))
    win.start()
    _wait_running(qtbot, win, outputs=5)
    win.stop()  # the dialog (answered above) at stop
    assert read_session(record)["self_report"] == ratings


def test_closing_stops_threads_and_finalises_recording_within_a_second(
    qtbot, make_window, tmp_path
):
    record = tmp_path / "closing"
    win = make_window(
        source="synthetic:100000", record=str(record) if _recorder_available() else None
    )
    win.start()
    _wait_running(qtbot, win, outputs=10)
    worker = win.worker
    t0 = time.perf_counter()
    win.close()
    elapsed = time.perf_counter() - t0
    assert not worker.alive
    names = {t.name for t in threading.enumerate()}
    assert not names & {"eri-capture", "eri-inference", "eri-recorder"}
    if _recorder_available():
        from eri.realtime.session import read_session

        assert read_session(record)["complete"] is True
    # Closing must not hang; its time (under a second on an idle machine) is measured by
    # benchmarks/viewer.py ("close_s"), not here.
    assert elapsed < 15.0, f"closing took {elapsed:.2f} s"


# ---------------------------------------------------------------------------- faces
def _two_faces(media_dir: Path) -> np.ndarray:
    """Two real faces side by side (the left one larger) on a 640x360 grey frame."""
    import cv2

    canvas = np.full((360, 640, 3), 96, np.uint8)
    for name, side, x0 in (("0-f15-hao-ph.jpg", 300, 10), ("0-f1-su-ph.jpg", 240, 380)):
        img = cv2.imread(str(media_dir / "images" / name))
        img = cv2.cvtColor(cv2.resize(img, (side, side)), cv2.COLOR_BGR2RGB)
        y0 = (360 - side) // 2
        canvas[y0 : y0 + side, x0 : x0 + side] = img
    return canvas


def test_detection_at_picks_the_box_under_the_point():
    from eri.realtime.face.detector import Detection
    from eri.realtime.face.tracker import detection_at

    def det(x0, y0, x1, y1):
        return Detection(0.9, np.array([x0, y0, x1, y1], float), np.zeros((6, 2)))

    big, small, other = det(0, 0, 100, 100), det(40, 40, 60, 60), det(200, 0, 300, 100)
    assert detection_at([big, small, other], 50, 50) is small
    assert detection_at([big, small, other], 10, 10) is big
    assert detection_at([big, small, other], 250, 50) is other
    assert detection_at([big, other], 150, 50) is None


def test_tracker_select_at_switches_subject(media_dir):
    from eri.realtime.face import FaceTracker

    frame = _two_faces(media_dir)
    with FaceTracker() as tracker:
        faces = tracker.detect_all(frame)
        assert len(faces) == 2
        first = tracker.process(frame, 0.0)
        assert first.box[0] < 320  # the larger, left face
        right = faces[1].centre
        tracker.select_at(*right)
        for i in range(1, 4):
            result = tracker.process(frame, i / FPS)
        assert result.detected and result.box[0] > 320
        assert result.track_id == first.track_id + 1
        tracker.select_at(5, 5)  # no face there: the subject stays
        assert tracker.process(frame, 4 / FPS).box[0] > 320


def test_clicking_the_second_face_switches_the_subject(qtbot, make_window, media_dir, tmp_path):
    frame = _two_faces(media_dir)
    clip = write_video(tmp_path / "two_faces.mp4", [frame] * 120, fps=15)
    win = make_window(source=str(clip), mic="none")
    win.start()
    _wait_running(qtbot, win, outputs=3)

    def box_centre_x() -> float | None:
        box = win.video.box_rect()
        return None if box is None else (box[0] + box[2]) / 2

    qtbot.waitUntil(lambda: (box_centre_x() or 1e9) < 320, timeout=5000)
    from eri.realtime.face import FaceTracker

    with FaceTracker() as t:
        right = t.detect_all(frame)[1].centre
    pos = win.video.image_to_viewport(*right)
    qtbot.mouseClick(win.video.viewport(), QtCore.Qt.MouseButton.LeftButton, pos=pos)
    qtbot.waitUntil(lambda: (box_centre_x() or 0) > 320, timeout=5000)
    assert abs(box_centre_x() - right[0]) < 40


# ---------------------------------------------------------------------------- screenshot
def test_screenshot_shows_the_face_and_seven_labelled_curves(qtbot, make_window, tmp_path):
    import cv2

    from eri.realtime.gui.curves import COLORS
    from eri.realtime.gui.video import FACE_PEN

    win = make_window(source="synthetic:100000", mic="none")
    win.start()
    _wait_running(qtbot, win, outputs=30)
    qtbot.waitUntil(lambda: win.video.box_rect() is not None, timeout=5000)
    assert win.curves.legend_names() == list(EMOTIONS)
    assert win.banner.isVisible() and "UNTRAINED" in win.banner.text()
    assert "visual only" in win.status_labels["audio"].text()  # --mic none says so
    png = tmp_path / "viewer.png"
    assert win.save_screenshot(png)
    image = cv2.cvtColor(cv2.imread(str(png)), cv2.COLOR_BGR2RGB)
    ratio = win.devicePixelRatioF()
    assert image.shape[:2] == (round(win.height() * ratio), round(win.width() * ratio))

    def region(widget: QtWidgets.QWidget) -> np.ndarray:
        top_left = widget.mapTo(win, QtCore.QPoint(0, 0))
        x, y = int(top_left.x() * ratio), int(top_left.y() * ratio)
        return image[y : y + int(widget.height() * ratio), x : x + int(widget.width() * ratio)]

    def has_colour(pixels: np.ndarray, rgb, tol: int = 12) -> bool:
        return bool(np.any(np.all(np.abs(pixels.astype(int) - rgb) <= tol, axis=-1)))

    assert has_colour(region(win.video), FACE_PEN)  # the face box is drawn
    curves = region(win.curves)
    for colour in COLORS:  # every curve's colour shows up (lines, legend, bars)
        rgb = tuple(int(colour[i : i + 2], 16) for i in (1, 3, 5))
        assert has_colour(curves, rgb), colour
    curves_png = tmp_path / "curves.png"
    assert win.save_curves_png(curves_png) and curves_png.stat().st_size > 1000


# ---------------------------------------------------------------------------- replay
def _session(directory: Path) -> Path:
    """A hand-made session: 4 s of video whose brightness is 40 * (whole second + 1), its
    predictions (a ramp), two markers and a 440 Hz tone in audio.wav from 2 s."""
    from eri.realtime.outputs import PredictionWriter, prediction_row

    directory.mkdir()
    fps, n = 10, 40
    frames = [np.full((120, 160, 3), 40 * (i // fps + 1), np.uint8) for i in range(n)]
    write_video(directory / "video.mp4", frames, fps=fps)
    with PredictionWriter(directory / "predictions.csv") as w:
        for i in range(n):
            w.write(prediction_row(i / fps, i, i < 30, True, np.full(7, i / n)))
    (directory / "markers.csv").write_text("time_s,label\n1.0000,start\n2.5000,laugh\n")
    sr = 16000
    tone = np.zeros(4 * sr, np.float32)
    tone[2 * sr :] = 0.5 * np.sin(2 * np.pi * 440 * np.arange(2 * sr) / sr)
    with wave.open(str(directory / "audio.wav"), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(sr)
        f.writeframes((tone * 32767).astype(np.int16).tobytes())
    return directory


def test_replay_plays_stored_curves_and_markers_and_seeks(qtbot, make_window, tmp_path):
    session = _session(tmp_path / "session")
    win = make_window(source=str(session))
    win.start()
    assert win.worker is None and win.replay_bar is not None  # no pipeline: stored curves
    win.replay_bar.play.setChecked(False)  # pause
    assert win.curves.point_count == 40
    assert [lab for _, lab in win.curves.markers] == ["start", "laugh"]

    def brightness() -> float:
        return float(win.video.image.image.mean())

    win.activateWindow()  # key shortcuts go to the active window
    qtbot.waitUntil(win.isActiveWindow, timeout=2000)
    win.seek(2.2)
    assert brightness() == pytest.approx(120, abs=6)
    assert win.meter_label.text() != "silent" and win.meter.value() > 40  # the tone
    qtbot.keyClick(win, QtCore.Qt.Key.Key_Left)
    assert win.replay_position == pytest.approx(1.2)
    assert brightness() == pytest.approx(80, abs=6)
    assert win.meter.value() == 0  # silence before 2 s
    qtbot.keyClick(win, QtCore.Qt.Key.Key_Right, QtCore.Qt.KeyboardModifier.ShiftModifier)
    assert win.replay_position == pytest.approx(3.9)  # clamped to the last row
    assert brightness() == pytest.approx(160, abs=6)
    assert win.replay_bar.slider.value() == 3900
    win.replay_bar.slider.setSliderPosition(500)
    win.replay_bar.slider.sliderMoved.emit(500)
    assert win.replay_position == pytest.approx(0.5) and brightness() == pytest.approx(40, abs=6)
    assert win.curves.face_lost_spans() == []  # the face is lost only from 3 s
    win.seek(3.9)
    assert win.curves.face_lost_spans() == [(3.0, 3.9)]
    win.replay_bar.play.setChecked(True)
    qtbot.wait(300)
    assert win.replay_position == pytest.approx(3.9)  # at the end it stays


def test_redrawing_keeps_none_alive(qtbot, make_window):
    """A redraw must not drop references to None (PySide6 6.12.0 on Python 3.11 does, and the
    window then dies with "none_dealloc" after a few seconds): None's count holds steady over
    many redraws of a running window."""
    win = make_window(source="synthetic:100000", mic="none")
    win.start()
    _wait_running(qtbot, win, outputs=5)
    win.timer.stop()
    win._tick()
    before = sys.getrefcount(None)
    for _ in range(200):
        win.video.show_image(np.zeros((36, 64, 3), np.uint8))
        win.video.show_face((1, 1, 20, 20), np.zeros((4, 2)), text="x")
        win.curves.redraw()
        win._update_status(force=True)
    assert sys.getrefcount(None) - before > -100  # -20,000 with the broken bindings


# ---------------------------------------------------------------------------- settings, errors
def test_settings_persist(qtbot, tmp_path, bundle):
    settings = settings_for(tmp_path / "viewer.ini")
    win = ViewerWindow(ViewerOptions(source="synthetic", mic="none"), settings, probe_devices=False)
    qtbot.addWidget(win)
    win.controls.window_s.setValue(45)
    win.controls.backend.setCurrentText("onnxruntime")
    win.close()
    again = ViewerWindow(
        ViewerOptions(), settings_for(tmp_path / "viewer.ini"), probe_devices=False
    )
    qtbot.addWidget(again)
    assert again.controls.window_s.value() == 45
    assert again.curves.window_s == 45
    assert again.controls.source_spec() == "synthetic"
    assert again.controls.mic_spec() == "none"
    assert again.controls.backend.currentText() == "onnxruntime"


def test_missing_qt_is_an_eri_error_with_the_install_command(monkeypatch):
    from eri.errors import EriError
    from eri.realtime.gui import require_qt

    monkeypatch.setitem(sys.modules, "pyqtgraph", None)
    with pytest.raises(EriError, match="pip install 'pyqtgraph"):
        require_qt()
    monkeypatch.setitem(sys.modules, "PySide6.QtWidgets", None)
    with pytest.raises(EriError, match="pip install 'PySide6-Essentials"):
        require_qt()


def test_eri_view_exit_after_writes_a_screenshot(tmp_path):
    """The command itself, in a fresh process (its own QApplication, settings in tmp)."""
    png = tmp_path / "shot.png"
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", XDG_CONFIG_HOME=str(tmp_path / "cfg"))
    cmd = [sys.executable, "-m", "eri.realtime.cli", "view", "--source", "synthetic:100000"]
    cmd += ["--mic", "none", "--backend", "torch", "--exit-after", "4", "--screenshot", str(png)]
    run = subprocess.run(cmd, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=90)
    assert run.returncode == 0, run.stderr
    assert png.stat().st_size > 10_000
    assert "UNTRAINED" in run.stderr
    bad = subprocess.run(
        [sys.executable, "-m", "eri.realtime.cli", "view", "--source", str(tmp_path / "nope.mp4")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 1 and "does not exist" in bad.stderr


# ---------------------------------------------------------------------------- bad input
def _one_sentence(text: str) -> None:
    assert text and "\n" not in text and text.endswith(".") and ". " not in text, text


def _wait_state(qtbot, win: ViewerWindow, states: tuple[str, ...], timeout: int = 30_000) -> None:
    """Until the worker reached one of ``states`` and the window has reacted to it."""
    qtbot.waitUntil(
        lambda: (
            win.worker is not None
            and win.worker.state in states
            and win._reported_state == win.worker.state
        ),
        timeout=timeout,
    )


class _VanishingCamera:
    """A cv2.VideoCapture stand-in (no webcam here): ``frames`` synthetic frames at 15 fps, then
    nothing, as a camera pulled out of its socket."""

    def __init__(self, frames: int) -> None:
        from eri.realtime.sources import SyntheticSource

        self.synth = SyntheticSource(num_frames=None, width=320, height=240)
        self.left, self.i = frames, 0

    def isOpened(self) -> bool:
        return True

    def set(self, prop, value) -> bool:
        return True

    def get(self, prop) -> float:
        return 0.0

    def read(self):
        time.sleep(1 / RATE)
        if self.left <= 0:
            return False, None
        self.left -= 1
        self.i += 1
        return True, self.synth.render(self.i)[:, :, ::-1].copy()  # BGR, as OpenCV gives

    def release(self) -> None:
        pass


def test_camera_lost_mid_session_keeps_the_recording(qtbot, make_window, tmp_path):
    """The camera stops delivering after 30 frames: the window stays up and says so in one
    sentence; the session is closed with every frame the camera delivered."""
    from eri.realtime.session import read_session
    from eri.realtime.sources import CameraSource

    camera = CameraSource(0, capture_factory=lambda i: _VanishingCamera(30), stall_timeout_s=0.3)
    record = tmp_path / "cam"
    win = make_window(source_object=camera, mic="none", record=str(record))
    win.controls.ask_report.setChecked(False)
    win.start()
    _wait_state(qtbot, win, ("failed",))
    assert win.isVisible() and win.message.isVisible()
    text = win.message.text()
    assert "Camera 0 stopped delivering frames after 30 frames" in text
    _one_sentence(text)
    assert win.recorder is None and win.controls.start_stop.text() == "Start"
    stats = camera.stats()
    meta = read_session(record)
    assert meta["complete"] is True and meta["error"] is None
    assert meta["video"]["frames"] == stats["frames_read"] - stats["frames_dropped"] > 0


def test_file_end_closes_the_recording_and_says_so(qtbot, make_window, tmp_path):
    from eri.realtime.session import read_session
    from eri.realtime.sources import SyntheticSource

    synth = SyntheticSource(num_frames=None, width=160, height=120)
    clip = write_video(tmp_path / "clip.mp4", [synth.render(i) for i in range(30)], fps=15)
    record = tmp_path / "ends"
    win = make_window(source=str(clip), mic="none", record=str(record))
    win.controls.ask_report.setChecked(False)
    win.start()
    _wait_state(qtbot, win, ("ended",))
    assert win.isVisible() and win.error is None
    assert win.message.text() == f"The source ended at 1.9 s; the session was saved to {record}."
    meta = read_session(record)
    assert meta["complete"] is True and meta["video"]["frames"] == 30


def test_full_disk_ends_the_recording_not_the_view(qtbot, make_window, tmp_path):
    """A 300 kB tmpfs fills up a second or two into the recording: the window says so in one
    sentence, finishes the session (what was written stays decodable) and keeps running."""
    import av

    from eri.realtime.session import read_session

    disk = tmp_path / "disk"
    mount_tmpfs(disk, "size=300k")
    try:
        win = make_window(source="synthetic:100000", record=str(disk / "s"))
        win.start()
        _wait_running(qtbot, win, outputs=3)
        qtbot.waitUntil(lambda: "disk is full" in win.message.text(), timeout=60_000)
        text = win.message.text()
        assert text.startswith(f"Recording to {disk / 's'} stopped at ")
        assert "everything written before it is kept" in text
        _one_sentence(text)
        assert win.recorder is None and not win.controls.record.isChecked()
        points = win.curves.point_count
        qtbot.waitUntil(lambda: win.curves.point_count > points + 5, timeout=20_000)
        assert win.worker.state == "running" and win.isVisible()
        assert read_session(disk / "s")["complete"] is False  # the last whole session.json
        with av.open(str(disk / "s" / "video.mp4")) as c:
            decoded = 0
            try:
                for _ in c.decode(video=0):
                    decoded += 1
            except av.FFmpegError:  # the torn last fragment
                pass
        assert decoded >= 1
        win.close()
    finally:
        umount(disk)


def test_existing_record_folder_is_kept_and_the_next_free_one_used(qtbot, make_window, tmp_path):
    from eri.realtime.session import read_session

    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    win = make_window(source="synthetic:100000", mic="none", record=str(taken))
    win.controls.ask_report.setChecked(False)
    win.start()
    _wait_running(qtbot, win, outputs=3)
    qtbot.waitUntil(win.message.isVisible, timeout=5000)
    other = tmp_path / "taken-2"
    assert win.message.text() == (
        f"{taken} already exists and is not empty, so this session is recorded to {other}."
    )
    win.stop(ask_report=False)
    assert sorted(p.name for p in taken.iterdir()) == ["keep.txt"]
    assert win.session_dirs == [other] and read_session(other)["complete"] is True


def test_replay_of_a_newer_or_corrupt_session(qtbot, make_window, tmp_path):
    """A newer format is refused in the window (one sentence, no replay); a corrupt
    session.json still replays the video and curves, saying what is missing."""
    from eri.realtime.session import SESSION_FORMAT_VERSION

    session = _session(tmp_path / "session")
    (session / "session.json").write_text(
        f'{{"format_version": {SESSION_FORMAT_VERSION + 1}, "complete": true}}'
    )
    win = make_window(source=str(session))
    win.start()
    assert win.isVisible() and win.replay_position == 0.0 and win.curves.point_count == 0
    assert "newer than this ERI Live reads" in win.message.text()
    _one_sentence(win.message.text())
    assert win.error is not None
    (session / "session.json").write_text('{"format_version": 1, "comp')
    win.start()
    assert win.error is None and win.curves.point_count == 40
    assert win.message.text().startswith("Replaying without the session details: ")
    assert "is corrupt" in win.message.text()
    win.close()


# ---------------------------------------------------------------------------- replay sound
class _FakeOutputStream:
    """Stands in for sounddevice.OutputStream (no audio device here): the real callback fills
    the blocks :meth:`pull` asks for, as PortAudio's thread would."""

    def __init__(self, **kwargs) -> None:
        self.kwargs, self.callback = kwargs, kwargs["callback"]
        self.started = self.closed = False
        self.latency = 0.05

    def start(self) -> None:
        self.started = True

    def stop(self) -> None:
        self.started = False

    def close(self) -> None:
        self.closed = True

    def pull(self, frames: int, ahead: float = 0.05) -> np.ndarray:
        """One block [frames] of what would be played ``ahead`` seconds from now."""
        out = np.full((frames, 1), np.nan, np.float32)
        times = SimpleNamespace(currentTime=10.0, outputBufferDacTime=10.0 + ahead)
        self.callback(out, frames, times, None)
        return out[:, 0]


class _FakeTime:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def _ramp(n: int) -> np.ndarray:
    """int16 samples whose value is their index (mod 32768): a block tells where it came from."""
    return (np.arange(n) % 32768).astype(np.int16)


def test_replay_audio_follows_the_clock_seeks_and_pauses():
    from eri.realtime.gui.replay_audio import SYNC_TOLERANCE_S, ReplayAudio, ReplayClock

    sr, block = 16000, 256
    pcm = _ramp(4 * sr)
    now = _FakeTime()
    clock = ReplayClock(4.0, now=now)
    player = ReplayAudio(pcm, sr, clock, stream_factory=_FakeOutputStream)
    stream = player.stream
    assert stream.started and stream.kwargs["samplerate"] == sr and stream.kwargs["channels"] == 1
    np.testing.assert_array_equal(stream.pull(block), 0.0)  # paused: silence
    clock.set_playing(True)
    first = stream.pull(block)  # heard 50 ms from now: from sample 800
    np.testing.assert_array_equal(first, pcm[800 : 800 + block] / 32768.0)
    # The clock moves a block plus 10 ms of drift (within the tolerance): played on contiguously.
    now.t += block / sr + 0.010
    np.testing.assert_array_equal(stream.pull(block), pcm[1056 : 1056 + block] / 32768.0)
    assert player.resyncs == 0
    # Beyond the tolerance it jumps to where the clock is.
    now.t += block / sr + SYNC_TOLERANCE_S
    target = int(round((clock.position() + 0.05) * sr))
    np.testing.assert_array_equal(stream.pull(block), pcm[target : target + block] / 32768.0)
    assert player.resyncs == 1
    clock.seek(2.5)
    np.testing.assert_array_equal(
        stream.pull(block, ahead=0.02), pcm[40320 : 40320 + block] / 32768
    )
    clock.set_playing(False)
    np.testing.assert_array_equal(stream.pull(block), 0.0)
    clock.set_playing(True)  # resumes where the clock stands (it did not move while paused)
    np.testing.assert_array_equal(stream.pull(block), pcm[40800 : 40800 + block] / 32768.0)
    clock.seek(4.0 - 0.06)  # the last 10 ms of audio, then silence; at the end only silence
    tail = stream.pull(block)
    np.testing.assert_array_equal(tail[:160], pcm[-160:] / 32768.0)
    np.testing.assert_array_equal(tail[160:], 0.0)
    clock.seek(4.0)
    np.testing.assert_array_equal(stream.pull(block), 0.0)
    player.close()
    assert stream.closed and not stream.started


def test_replay_window_plays_the_sound_in_step_with_seeks(
    qtbot, make_window, tmp_path, monkeypatch
):
    from eri.realtime.gui import replay_audio, replay_mode
    from eri.realtime.gui.replay_audio import ReplayClock

    session = _session(tmp_path / "session")
    sr, pcm = 16000, _ramp(4 * 16000)
    with wave.open(str(session / "audio.wav"), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(sr)
        f.writeframes(pcm.tobytes())
    now = _FakeTime()
    monkeypatch.setattr(replay_mode, "ReplayClock", lambda d: ReplayClock(d, now=now))
    monkeypatch.setattr(replay_audio, "output_status", lambda: (True, ""))
    monkeypatch.setattr(replay_audio, "output_stream", _FakeOutputStream)
    win = make_window(source=str(session))
    win.start()
    stream = win._player.stream
    assert win.status_labels["audio"].text() == "audio: playing"
    np.testing.assert_array_equal(stream.pull(320), pcm[800:1120] / 32768.0)
    win.seek(2.2)
    np.testing.assert_array_equal(stream.pull(320), pcm[36000:36320] / 32768.0)
    win.activateWindow()
    qtbot.waitUntil(win.isActiveWindow, timeout=2000)
    qtbot.keyClick(win, QtCore.Qt.Key.Key_Left)  # back one second
    assert win.replay_position == pytest.approx(1.2)
    np.testing.assert_array_equal(stream.pull(320), pcm[20000:20320] / 32768.0)
    win.replay_bar.play.setChecked(False)
    np.testing.assert_array_equal(stream.pull(320), 0.0)
    win.close()
    assert stream.closed


def test_replay_without_an_output_device_says_why_it_is_silent(
    qtbot, make_window, tmp_path, monkeypatch
):
    from eri.realtime.gui import replay_audio

    why = "no audio output device was found"
    monkeypatch.setattr(replay_audio, "output_status", lambda: (False, why))
    win = make_window(source=str(_session(tmp_path / "session")))
    win.start()
    assert win.silent_why == why and win.status_labels["audio"].text() == f"silent: {why}"
    assert win.curves.point_count == 40
