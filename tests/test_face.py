"""The face crop (models/crop.py) and the face tracker (the realtime/face/ package).

Crop geometry is tested on synthetic data; the tracker on the real media in ../shared/media
(marked ``realmedia``, skipped when the folder is absent), video tests in both tracking modes
(optical flow between detector runs, the default, and the ROI detector on every frame), and the
flow on a real photo moved by known amounts.
"""

from __future__ import annotations

import math
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest

from eri.models.crop import (
    FACE_BOX_IN_TEMPLATE,
    align_face,
    crop_from_box,
    crop_matrix_from_box,
    similarity_transform,
    to_tensor_layout,
    transform_points,
)
from eri.models.spec import CropSpec
from tests.media_utils import media_file

SPEC = CropSpec()
TEMPLATE = SPEC.template_points()


def _similarity(angle_deg: float, scale: float, tx: float, ty: float) -> np.ndarray:
    a = math.radians(angle_deg)
    c, s = scale * math.cos(a), scale * math.sin(a)
    return np.array([[c, -s, tx], [s, c, ty]])


def _read_rgb(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert image is not None, path
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


# -- models/crop.py ---------------------------------------------------------------------------


def test_similarity_transform_recovers_known_transform() -> None:
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 200, size=(4, 2))
    for angle, scale, tx, ty in [(23.0, 1.7, 12.0, -5.0), (-140.0, 0.31, 300.0, 80.0)]:
        m_true = _similarity(angle, scale, tx, ty)
        dst = transform_points(m_true, src)
        m = similarity_transform(src, dst)
        assert m.shape == (2, 3) and m.dtype == np.float64
        np.testing.assert_allclose(m, m_true, atol=1e-6)
        # OpenCV's robust estimator agrees on exact data.
        m_cv, _ = cv2.estimateAffinePartial2D(src, dst, method=cv2.LMEDS)
        np.testing.assert_allclose(m, m_cv, atol=1e-4)  # LMEDS refines to ~1e-6 only


def test_similarity_transform_is_least_squares_and_rejects_degenerate_input() -> None:
    rng = np.random.default_rng(1)
    src = rng.uniform(0, 100, size=(4, 2))
    dst = transform_points(_similarity(10, 1.2, 3, 4), src) + rng.normal(0, 0.5, size=(4, 2))
    m = similarity_transform(src, dst)
    err = ((transform_points(m, src) - dst) ** 2).sum()
    for _ in range(200):  # no nearby similarity fits better
        d = rng.normal(0, 1e-3, size=4)
        a, b = m[0, 0] + d[0], m[1, 0] + d[1]
        m2 = np.array([[a, -b, m[0, 2] + d[2]], [b, a, m[1, 2] + d[3]]])
        assert ((transform_points(m2, src) - dst) ** 2).sum() >= err - 1e-9
    with pytest.raises(ValueError, match="degenerate"):
        similarity_transform(np.ones((4, 2)), TEMPLATE)
    with pytest.raises(ValueError):
        similarity_transform(np.ones((4, 3)), TEMPLATE)


def _blob_centroid(image: np.ndarray, near: np.ndarray, radius: int = 6) -> np.ndarray:
    x0, y0 = int(round(near[0])) - radius, int(round(near[1])) - radius
    win = image[y0 : y0 + 2 * radius + 1, x0 : x0 + 2 * radius + 1, 0].astype(np.float64)
    ys, xs = np.mgrid[0 : win.shape[0], 0 : win.shape[1]]
    return np.array([(win * xs).sum() / win.sum() + x0, (win * ys).sum() / win.sum() + y0])


def test_align_face_puts_points_on_template() -> None:
    # Four Gaussian dots where a rotated, scaled face would have its landmarks.
    m_face = _similarity(-17.0, 2.3, 210.0, 40.0)
    points = transform_points(m_face, TEMPLATE)
    h, w = 360, 640
    ys, xs = np.mgrid[0:h, 0:w]
    field = np.zeros((h, w))
    for px, py in points:
        field += np.exp(-((xs - px) ** 2 + (ys - py) ** 2) / (2 * 2.5**2))
    image = np.repeat((255 * field).clip(0, 255).astype(np.uint8)[..., None], 3, axis=2)

    crop = align_face(image, points, SPEC)
    assert crop.shape == (SPEC.size, SPEC.size, 3) and crop.dtype == np.uint8
    for target in TEMPLATE:
        assert np.linalg.norm(_blob_centroid(crop, target) - target) < 1.0
    # The matrix itself maps the points onto the template exactly.
    m = similarity_transform(points, TEMPLATE)
    np.testing.assert_allclose(transform_points(m, points), TEMPLATE, atol=1e-6)


def test_align_face_border_is_black_and_size_follows_spec() -> None:
    image = np.full((100, 100, 3), 200, dtype=np.uint8)
    spec = CropSpec(size=64)
    # A face right at the image corner: part of the crop falls outside the image.
    crop = align_face(image, transform_points(_similarity(0, 1.0, -40, -40), TEMPLATE), spec)
    assert crop.shape == (64, 64, 3)
    assert crop[0, 0].tolist() == [0, 0, 0] and crop[-1, -1].tolist() == [200, 200, 200]
    with pytest.raises(ValueError, match="uint8"):
        align_face(image.astype(np.float32), TEMPLATE, spec)


def test_crop_from_box_maps_box_onto_template_box() -> None:
    image = np.zeros((360, 640, 3), dtype=np.uint8)
    box = (300.0, 100.0, 400.0, 200.0)
    crop = crop_from_box(image, box, SPEC)
    assert crop.shape == (112, 112, 3) and crop.dtype == np.uint8
    m = crop_matrix_from_box(box, SPEC)
    assert m[0, 1] == 0.0 and m[0, 0] == m[1, 1] > 0  # no rotation, uniform scale
    t_box = np.array(FACE_BOX_IN_TEMPLATE).reshape(2, 2)
    expected = 56.0 + (t_box - 56.0) * SPEC.margin  # same margin rule as the template points
    np.testing.assert_allclose(transform_points(m, np.array(box).reshape(2, 2)), expected)


@pytest.mark.realmedia
def test_crop_from_box_frames_the_face_like_align_face() -> None:
    from eri.realtime.face import FaceTracker

    image = _read_rgb(media_file("images/single_face.jpg"))
    with FaceTracker(smoothing=0) as tracker:
        r = tracker.process(image, 0.0)
    assert r.box is not None and r.points is not None
    via_box = transform_points(crop_matrix_from_box(r.box, SPEC), r.points)
    assert np.abs(via_box - TEMPLATE).max() < 8.0  # no rotation fix, so a looser bound


def test_to_tensor_layout() -> None:
    rng = np.random.default_rng(2)
    crops = rng.integers(0, 256, size=(3, 112, 112, 3), dtype=np.uint8)
    x = to_tensor_layout(crops)
    assert x.shape == (3, 3, 112, 112) and x.dtype == np.float32 and x.flags.c_contiguous
    assert 0.0 <= x.min() and x.max() <= 1.0
    np.testing.assert_allclose(x[1, 2], crops[1, :, :, 2] / 255.0, atol=1e-7)  # RGB order kept
    with pytest.raises(ValueError):
        to_tensor_layout(crops[0])


# -- realtime/face/: cheap checks ----------------------------------------------------------------


def test_import_is_cheap_and_missing_mediapipe_is_explained(monkeypatch) -> None:
    code = "import sys, eri.realtime.face; print('mediapipe' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"

    from eri.errors import INSTALL_HINTS, EriError
    from eri.realtime.face import FaceTracker

    monkeypatch.setitem(sys.modules, "mediapipe", None)  # import mediapipe -> ImportError
    with pytest.raises(EriError) as info:
        FaceTracker()
    assert isinstance(info.value, ImportError)
    assert f"install it with `{INSTALL_HINTS['mediapipe'][1]}`" in str(info.value)


def test_native_log_filter_drops_noise_keeps_errors(capfd) -> None:
    import os

    from eri.realtime.face.detector import _filtered_native_stderr

    with _filtered_native_stderr():
        os.write(2, b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n")
        os.write(2, b"E0000 real_problem.cc:1] model file is corrupt\n")
    err = capfd.readouterr().err
    assert "XNNPACK" not in err and "model file is corrupt" in err


def test_tracker_start_is_quiet() -> None:
    code = (
        "import numpy as np; from eri.realtime.face import FaceTracker\n"
        "with FaceTracker(model='full') as t: t.process(np.zeros((90, 160, 3), np.uint8), 0.0)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stderr.strip() == ""


def test_tracker_rejects_bad_arguments() -> None:
    from eri.realtime.face import FaceTracker

    for kwargs in (
        {"detect_every": 0},
        {"subject": "leftmost"},
        {"subject": True},
        {"model": "huge"},
        {"min_confidence": 1.5},
        {"tracking": "kalman"},
    ):
        with pytest.raises(ValueError):
            FaceTracker(**kwargs)


# -- realtime/face/ on real media ----------------------------------------------------------------


@pytest.fixture(scope="module")
def single_face() -> np.ndarray:
    return _read_rgb(media_file("images/single_face.jpg"))


@pytest.mark.realmedia
def test_single_face_image(single_face: np.ndarray) -> None:
    from eri.realtime.face import FaceTracker

    with FaceTracker() as tracker:
        r = tracker.process(single_face, 0.0)
        assert r.detected and not r.interpolated and r.has_face and r.score > 0.7
        assert r.crop is not None and r.crop.shape == (112, 112, 3) and r.crop.dtype == np.uint8
        assert r.points is not None and r.points.shape == (4, 2)
        assert r.points[0, 0] < r.points[1, 0]  # image-left eye first
        assert abs(r.roll_deg) < 8 and abs(r.yaw) < 0.25 and not r.too_small
        m = similarity_transform(r.points, TEMPLATE)
        assert np.abs(transform_points(m, r.points) - TEMPLATE).max() < 4.0
        # The crop's content: a face with level eyes where the template puts them.
        big = cv2.resize(r.crop, (224, 224), interpolation=cv2.INTER_CUBIC)
        found = tracker.detect_all(big)
        assert len(found) == 1
        eyes = found[0].points[:2] / 2.0
        assert abs(eyes[0, 1] - eyes[1, 1]) < 3.0
        assert np.abs(eyes - TEMPLATE[:2]).max() < 6.0
        assert tracker.stats()["frames"] == 1


@pytest.mark.realmedia
@pytest.mark.parametrize("angle", [20.0, -20.0])
def test_rotated_face_is_aligned(single_face: np.ndarray, angle: float) -> None:
    from eri.realtime.face import FaceTracker

    h, w = single_face.shape[:2]
    rot = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0)
    rotated = cv2.warpAffine(single_face, rot, (w, h))
    with FaceTracker() as tracker:
        upright = tracker.process(single_face, 0.0)
        tracker.reset()
        r = tracker.process(rotated, 0.0)
    assert r.detected and r.points is not None and upright.points is not None
    # cv2's positive angle turns the image anticlockwise: the eye line turns by -angle.
    assert abs(r.roll_deg - upright.roll_deg + angle) < 6.0
    # The landmarks follow the rotation ...
    expected = transform_points(rot, upright.points)
    assert np.abs(r.points - expected).max() < 0.05 * r.face_size_px
    # ... and the alignment brings them back onto the template.
    m = similarity_transform(r.points, TEMPLATE)
    assert np.abs(transform_points(m, r.points) - TEMPLATE).max() < 4.0


@pytest.mark.realmedia
def test_mirrored_face_keeps_image_left_eye_first(single_face: np.ndarray) -> None:
    from eri.realtime.face import FaceTracker

    with FaceTracker() as tracker:
        r = tracker.process(np.ascontiguousarray(single_face[:, ::-1]), 0.0)
    assert r.detected and r.points is not None
    assert r.points[0, 0] < r.points[1, 0]


@pytest.mark.realmedia
def test_no_face_image() -> None:
    from eri.realtime.face import FaceTracker

    image = _read_rgb(media_file("images/no-face.jpg"))
    with FaceTracker() as tracker:
        r = tracker.process(image, 0.0)
    assert not r.detected and not r.interpolated and r.crop is None and r.points is None
    assert not r.has_face and r.ran_detector


@pytest.mark.realmedia
@pytest.mark.parametrize("name", ["multi_face.jpg", "group_selfie.jpg"])
def test_subject_selection(name: str) -> None:
    from eri.realtime.face import FaceTracker

    image = _read_rgb(media_file(f"images/{name}"))
    h, w = image.shape[:2]
    # Group photos: small faces, so the full-range model and a lower bar to acquire.
    opts = {"model": "full", "acquire_confidence": 0.5}
    with FaceTracker(**opts) as probe:
        faces = probe.detect_all(image)
    assert len(faces) >= 4
    xs = [f.centre[0] for f in faces]
    assert xs == sorted(xs)  # detect_all lists faces left to right: the index order
    largest = max(faces, key=lambda f: f.area)
    central = min(faces, key=lambda f: np.hypot(f.centre[0] - w / 2, f.centre[1] - h / 2))
    cases: list[tuple[str | int, object]] = [("largest", largest), ("center", central)]
    cases += list(enumerate(faces))
    for subject, expected in cases:
        with FaceTracker(subject=subject, **opts) as tracker:
            r = tracker.process(image, 0.0)
        assert r.detected and r.box is not None, subject
        assert _iou(r.box, expected.box) > 0.5, subject
        assert r.num_faces == len(faces)
    with FaceTracker(subject=len(faces), **opts) as tracker:
        assert not tracker.process(image, 0.0).detected


@pytest.mark.realmedia
def test_short_gaps_hold_landmarks_long_gaps_drop_them(single_face: np.ndarray) -> None:
    from eri.realtime.face import FaceTracker

    blank = np.zeros_like(single_face)
    with FaceTracker(max_gap_s=0.5) as tracker:
        first = tracker.process(single_face, 0.0)
        assert first.detected and first.track_id == 1 and first.points is not None
        held = [tracker.process(blank, t) for t in (0.1, 0.3, 0.5)]
        for r in held:
            assert not r.detected and r.interpolated and r.crop is not None
            np.testing.assert_allclose(r.points, first.points)
            assert r.box == first.box
        gone = tracker.process(blank, 0.55)
        assert not gone.detected and not gone.interpolated and gone.crop is None
        assert tracker.lost_events == 1 and tracker.held_frames == 3
        again = tracker.process(single_face, 0.6)
        assert again.detected and again.track_id == 2
        # Time going backwards (a new source) resets the tracker.
        assert tracker.process(single_face, 0.0).track_id == 1
        assert tracker.stats()["frames"] == 1
        with pytest.raises(ValueError, match="RGB"):
            tracker.process(single_face[..., 0], 1.0)
        with pytest.raises(ValueError, match="uint8"):
            tracker.process(single_face.astype(np.float32), 1.0)
        tracker.close()
        tracker.close()  # idempotent
        with pytest.raises(RuntimeError, match="closed"):
            tracker.process(single_face, 1.0)


def _frames(path: Path):
    import av

    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            yield frame.to_ndarray(format="rgb24"), float(frame.time)


#: The tracking modes: optical flow between detector runs (the default), or the ROI detector on
#: every frame.
MODES = ("flow", "detector")


@dataclass
class _Run:
    results: list  # FaceResult without the crop
    stats: dict
    width: int
    mode: str


def _track_video(relative: str, **kwargs) -> _Run:
    from eri.realtime.face import FaceTracker

    results, width = [], 0
    with FaceTracker(**kwargs) as tracker:
        for image, t in _frames(media_file(relative)):
            width = image.shape[1]
            r = tracker.process(image, t)
            if r.crop is not None:
                assert r.crop.shape == (112, 112, 3)
            r.crop = None  # keep memory low
            results.append(r)
        stats = tracker.stats()
    return _Run(results, stats, width, tracker.tracking)


@pytest.fixture(scope="module")
def wolfgang_runs() -> dict[str, _Run]:
    """WolfgangLanger_Pexels.mp4 tracked in each mode (the default mode's run has no kwarg)."""
    runs = {"flow": _track_video("video/WolfgangLanger_Pexels.mp4")}
    runs["detector"] = _track_video("video/WolfgangLanger_Pexels.mp4", tracking="detector")
    assert runs["flow"].mode == "flow"  # flow is the default
    return runs


@pytest.fixture(params=MODES)
def wolfgang(request, wolfgang_runs: dict[str, _Run]) -> _Run:
    return wolfgang_runs[request.param]


@pytest.mark.realmedia
def test_video_face_found_on_almost_every_frame(wolfgang: _Run) -> None:
    rs = wolfgang.results
    assert len(rs) == 472
    found = sum(r.detected or r.interpolated for r in rs)
    assert found >= 0.95 * len(rs)
    assert sum(r.detected for r in rs) >= 0.9 * len(rs)  # held frames are the exception


@pytest.mark.realmedia
def test_video_detector_runs_on_a_minority_of_frames(wolfgang: _Run) -> None:
    rs, stats = wolfgang.results, wolfgang.stats
    n = len(rs)
    assert stats["frames"] == n
    for key, flag in (
        ("detector_runs", "ran_detector"),
        ("roi_runs", "ran_roi"),
        ("flow_runs", "ran_flow"),
    ):
        assert stats[key] == sum(getattr(r, flag) for r in rs), key
    assert stats["detector_runs"] <= 0.3 * n  # about 1 in detect_every=5
    if wolfgang.mode == "detector":
        assert stats["roi_runs"] >= 0.7 * n and stats["flow_runs"] == 0
        return
    # Flow mode: BlazeFace (full frame or ROI) runs on about 1 frame in detect_every=5
    # (measured 20 %); optical flow tracks the face on all the others.
    assert sum(r.ran_detector or r.ran_roi for r in rs) <= n / 3
    assert stats["flow_runs"] >= 0.6 * n
    assert not any(r.ran_flow and (r.ran_detector or r.ran_roi) for r in rs)
    assert all(r.ran_flow or r.ran_detector or r.ran_roi for r in rs)


@pytest.mark.realmedia
def test_video_subject_is_stable(wolfgang: _Run) -> None:
    rs = [r for r in wolfgang.results if r.box is not None]
    assert {r.track_id for r in rs} == {1}  # acquired once, never lost or switched
    centres = np.array([[(r.box[0] + r.box[2]) / 2, (r.box[1] + r.box[3]) / 2] for r in rs])
    jumps = np.linalg.norm(np.diff(centres, axis=0), axis=1)
    assert jumps.max() < 0.15 * wolfgang.width
    # Smoothed landmarks: frame-to-frame jitter (second difference) is a small fraction of
    # the face size.
    pts = np.array([r.points for r in rs])
    size = np.median([r.face_size_px for r in rs])
    assert np.abs(np.diff(pts, n=2, axis=0)).mean() < 0.01 * size


def _jitter(points: np.ndarray) -> float:
    """Mean distance of points [T, K, 2] from their centred 5-frame moving average, px."""
    mean = np.stack([points[i : len(points) - 4 + i] for i in range(5)]).mean(axis=0)
    return float(np.linalg.norm(points[2:-2] - mean, axis=-1).mean())


@pytest.mark.realmedia
def test_flow_landmarks_are_as_steady_as_the_detectors(wolfgang_runs: dict[str, _Run]) -> None:
    flow, detector = wolfgang_runs["flow"].results, wolfgang_runs["detector"].results
    assert all(r.points is not None for r in flow + detector)  # a face on every frame
    size = float(np.median([r.face_size_px for r in detector]))
    p_flow = np.array([r.points for r in flow])
    p_det = np.array([r.points for r in detector])
    # Measured: 0.27 % of the face size with flow, 0.32 % with the ROI detector every frame.
    assert _jitter(p_flow) <= 1.3 * _jitter(p_det)
    # The flow-carried landmarks stay on the detector's (measured: 1.0 % of the face size).
    assert np.linalg.norm(p_flow - p_det, axis=-1).mean() < 0.03 * size


@pytest.mark.realmedia
@pytest.mark.parametrize("mode", MODES)
def test_detect_every_frame_mode(mode: str) -> None:
    run = _track_video("video/single_face.mp4", detect_every=1, tracking=mode)
    assert all(r.detected for r in run.results)
    assert run.stats["detector_runs"] == run.stats["frames"] == len(run.results)
    assert run.stats["roi_runs"] == 0 and run.stats["flow_runs"] == 0


@pytest.mark.realmedia
@pytest.mark.parametrize("mode", MODES)
def test_face_then_cut_to_cartoon(mode: str) -> None:
    max_gap, cut = 0.5, 2.43
    run = _track_video("video/face_noface.mov", max_gap_s=max_gap, tracking=mode)
    rs = run.results
    dt = float(np.median(np.diff([r.time_s for r in rs])))
    early = [r for r in rs if r.time_s < 2.0]
    assert sum(r.detected for r in early) >= 0.95 * len(early)
    last_seen = max(r.time_s for r in rs if r.detected and r.time_s < 3.0)
    assert 2.2 <= last_seen <= 2.5  # the cut is at about 2.43 s
    after = [r for r in rs if r.time_s > last_seen]
    first_gone = next(r for r in after if not r.detected and not r.interpolated)
    assert first_gone.time_s <= last_seen + max_gap + dt + 1e-6
    assert first_gone.time_s <= cut + max_gap + 3 * dt
    assert after[0].interpolated and after[0].points is not None
    # The frame after the cut runs the detector (in flow mode: no feature survives the cut).
    assert after[0].ran_roi and not after[0].ran_flow
    assert all(r.interpolated for r in after if r.time_s < first_gone.time_s)
    late = [r for r in after if r.time_s >= first_gone.time_s]
    assert sum(r.has_face for r in late) <= 2  # no false faces in the cartoon


@pytest.mark.realmedia
@pytest.mark.parametrize("mode", MODES)
def test_cartoon_then_face(mode: str) -> None:
    run = _track_video("video/noface_face.mov", tracking=mode)
    rs = run.results
    appears = 3.93  # the cut to the face (duration 6.38 s - 2.43 s of face)
    before = [r for r in rs if r.time_s < appears - 0.1]
    assert sum(r.has_face for r in before) <= 2
    first = next(r for r in rs if r.detected and r.time_s >= appears - 0.1)
    assert first.time_s <= appears + 0.5
    after = [r for r in rs if r.time_s >= first.time_s]
    assert sum(r.detected for r in after) >= 0.95 * len(after)


@pytest.mark.realmedia
@pytest.mark.parametrize("mode", MODES)
def test_no_face_video_has_few_false_detections(mode: str) -> None:
    run = _track_video("video/no_face.mp4", tracking=mode)
    false_frames = sum(r.has_face for r in run.results)
    # Measured: 0 with the default acquire_confidence (0.7); with 0.5 the blurry title text
    # is acquired once (score 0.51) and held for 0.3 s.
    assert false_frames <= 3, f"{false_frames} false face frames"
    assert run.stats["lost_events"] <= 1


# -- optical-flow tracking on synthetic motion ---------------------------------------------------


def _moving(
    image: np.ndarray, frames: int, step: tuple[float, float, float, float]
) -> list[tuple[np.ndarray, np.ndarray]]:
    """``frames`` copies of ``image`` [H, W, 3], frame k moved by k steps of (dx, dy px, angle
    deg, scale factor) about the image centre: [(matrix [2, 3], frame [H, W, 3])]."""
    h, w = image.shape[:2]
    dx, dy, angle, scale = step
    out = []
    for k in range(frames):
        m = cv2.getRotationMatrix2D((w / 2, h / 2), angle * k, scale**k)
        m[:, 2] += (dx * k, dy * k)
        out.append((m, cv2.warpAffine(image, m, (w, h))))
    return out


@pytest.mark.realmedia
@pytest.mark.parametrize(
    "step",
    [(2.5, -1.5, 0.0, 1.0), (0.0, 0.0, 1.0, 1.0), (2.0, 1.0, -0.7, 1.005)],
    ids=["shift", "rotate", "shift-rotate-zoom"],
)
def test_flow_follows_known_motion(
    single_face: np.ndarray, step: tuple[float, float, float, float]
) -> None:
    from eri.realtime.face import FaceTracker

    frames = _moving(single_face, 20, step)
    # One detection, then flow alone (no re-anchoring) and no smoothing: the raw flow track.
    with FaceTracker(detect_every=1000, smoothing=0) as tracker:
        results = [tracker.process(frame, k / 30) for k, (_, frame) in enumerate(frames)]
        stats = tracker.stats()
    first = results[0]
    assert first.detected and first.ran_roi and first.points is not None
    assert all(r.detected and r.ran_flow and not (r.ran_roi or r.ran_detector) for r in results[1:])
    assert stats["flow_runs"] == len(frames) - 1 and stats["roi_runs"] == 1
    assert first.box is not None
    centre0 = np.array([[(first.box[0] + first.box[2]) / 2, (first.box[1] + first.box[3]) / 2]])
    for (m, _), r in zip(frames, results, strict=True):
        # Measured worst frame: 0.1 px (shift), 1.3 px after 19 degrees of rotation (LK slightly
        # under-reads rotation), 1.0 px (shift-rotate-zoom); the face is 211 px.
        assert np.abs(r.points - transform_points(m, first.points)).max() < 3.0
        centre = np.array([(r.box[0] + r.box[2]) / 2, (r.box[1] + r.box[3]) / 2])
        assert np.abs(centre - transform_points(m, centre0)[0]).max() < 3.0


@pytest.mark.realmedia
def test_uncertain_flow_runs_the_detector_on_that_frame(single_face: np.ndarray) -> None:
    from eri.realtime.face import FaceTracker

    h, w = single_face.shape[:2]
    turned = cv2.warpAffine(single_face, cv2.getRotationMatrix2D((w / 2, h / 2), 20.0, 1.0), (w, h))
    landscape = cv2.resize(_read_rgb(media_file("images/no-face.jpg")), (w, h))
    small = cv2.resize(single_face, (w * 4 // 5, h * 4 // 5), interpolation=cv2.INTER_AREA)
    with FaceTracker(smoothing=0) as tracker:
        first = tracker.process(single_face, 0.0)
        shifted = tracker.process(np.roll(single_face, 3, axis=1), 0.033)
        # 20 degrees in one frame is no head motion the flow accepts: the detector runs now.
        rotated = tracker.process(turned, 0.067)
        # A cut: no feature survives, the detector runs and misses, the landmarks are held.
        cut = tracker.process(landscape, 0.1)
        assert tracker.stats()["flow_rejects"] == 2  # the rotation and the cut
        tracker.reset()
        tracker.process(single_face, 0.0)
        # A new frame size under the flow window: the detector runs, nothing breaks.
        resized = tracker.process(small, 0.033)
    assert first.detected and shifted.ran_flow and shifted.detected
    assert rotated.detected and rotated.ran_roi and not rotated.ran_flow
    assert rotated.points is not None and first.points is not None
    assert abs(rotated.roll_deg - first.roll_deg + 20.0) < 6.0
    assert cut.interpolated and not cut.ran_flow and (cut.ran_roi or cut.ran_detector)
    assert resized.detected and not resized.ran_flow
    assert resized.ran_roi and resized.face_size_px == pytest.approx(
        0.8 * first.face_size_px, rel=0.1
    )


@pytest.mark.realmedia
@pytest.mark.parametrize("mode", MODES)
def test_subject_is_kept_in_a_moving_group(mode: str) -> None:
    from eri.realtime.face import FaceTracker

    image = _read_rgb(media_file("images/multi_face.jpg"))
    opts = {"model": "full", "acquire_confidence": 0.5, "tracking": mode}
    with FaceTracker(**opts) as probe:
        faces = probe.detect_all(image)
    assert len(faces) >= 4
    frames = _moving(image, 40, (-1.5, 1.0, 0.25, 1.0))  # a slow pan and roll
    for index, face in enumerate(faces):
        with FaceTracker(subject=index, **opts) as tracker:
            for k, (m, frame) in enumerate(frames):
                r = tracker.process(frame, k / 30)
                assert r.detected and r.track_id == 1 and r.box is not None, (index, k)
                cx, cy = transform_points(m, face.centre[None])[0]
                half = face.side / 2
                assert _iou(r.box, (cx - half, cy - half, cx + half, cy + half)) > 0.5, (index, k)
            if mode == "flow":
                assert tracker.stats()["flow_runs"] >= 0.6 * len(frames)
