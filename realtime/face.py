"""Face tracking: MediaPipe BlazeFace -> one stable subject -> aligned crop + quality flags.

:class:`FaceTracker` follows ONE subject through a stream of RGB frames:

* **Detection.** BlazeFace (``mediapipe.solutions.face_detection``) gives a box and six
  keypoints per face: the subject's right eye, left eye, nose tip, mouth centre, right ear, left
  ear. In an unmirrored image the subject's right eye is on the image left, so the first four
  keypoints are the crop's (image-left eye, image-right eye, nose tip, mouth centre); if the
  geometry says the eyes are swapped (a mirrored source) they are swapped back.
* **Tracking** (``tracking="flow"``, the default). BlazeFace runs only on some frames; between
  them the face is followed by pyramidal Lucas-Kanade optical flow:

  - *Detector frames*: acquisition (full frame, then an ROI pass around the chosen face for the
    landmarks), every ``detect_every``-th frame, every frame after a miss, and any frame where
    the flow is uncertain. The detector runs on a square ROI (``roi_scale`` x the face box)
    around the current (flow-carried) face, and on the full frame only if the ROI misses. The
    landmarks snap back to the detection (the One-Euro filter below smooths the step) and up
    to 50 corners (``cv2.goodFeaturesToTrack``; 22-50, median 34-40 on the test clips) are
    seeded inside the face box.
  - *Flow frames* (all others): the features are tracked from the previous frame to this one
    (``cv2.calcOpticalFlowPyrLK``, forward and backward; a point survives if it comes back to
    within 1 px), ``cv2.estimateAffinePartial2D`` (RANSAC) fits the frame-to-frame similarity,
    and it moves the landmarks and the box. Fewer than 10 surviving / inlier points, an inlier
    share under half, a scale step over 15 %, a rotation over 15 degrees or a shift over half a
    face per frame make the flow *uncertain*: the detector runs on that same frame, so a scene
    cut is seen at once (on ``face_noface.mov`` no point survives the cut). Flow runs on a gray
    window (3 x the face box) reduced by a power of two so the face is at most 160 px.

  Measured on a 2-core CPU (WolfgangLanger_Pexels.mp4, 640x360, 472 frames; back to back): a
  flow frame costs about 0.5 ms including the crop, a detector frame 1.2-1.9 ms (one BlazeFace
  run, ~1.1 ms when it runs every frame but more when MediaPipe's threads have gone idle, plus
  0.1 ms of seeding); the detector runs on 20 % of the frames. Per-frame p50 / p95: 0.50 /
  1.59 ms against 1.35 / 2.47 ms for ``tracking="detector"``; paced at 20 ms per frame (two
  runs) 1.0-1.2 / 2.4-2.6 ms against 1.8-2.3 / 3.0-4.3 ms. The landmarks are steadier
  (deviation from a centred 5-frame mean: 0.27 % of the face size against 0.32 %) and stay
  within 1.0 % (mean) of the detector mode's. A tracked face is ``detected`` on flow frames;
  its ``score`` is the last detection's. The flow can be fooled for at most
  ``detect_every - 1`` frames (the next detector frame checks it). ``num_faces`` is updated
  only by full-frame passes, which in this mode run at acquisition and when the ROI misses.
  With ``detect_every=1`` there is no flow: the detector mode's full-frame pass.
* **Tracking** (``tracking="detector"``, the previous behaviour). A full-frame detection runs
  every ``detect_every`` frames, at (re)acquisition and on the frame after a miss; every frame
  the short-range detector runs on the ROI, mapped back to frame pixels. The ROI stays put
  while the face stays within 10 % of its size of the ROI centre, so a still face gives the
  detector the same input (in both modes). The landmarks always come from the ROI pass (a
  full-frame pass only finds and associates the face): alternating full-frame and ROI
  landmarks jitters the crop (second difference 1.6 % of the face size on
  WolfgangLanger_Pexels.mp4, against 0.85 % for ROI only and 0.92 % for full-frame only). With
  ``detect_every=1`` the full-frame pass alone is used.
* **Association.** Every detection is associated with the tracked face (IoU / centre-distance
  and size gate; the distance gate grows with the time since the face was last seen), so the
  tracker never jumps to another person. At acquisition the subject is the largest face, the
  one nearest the image centre, or the user's index counted left to right (``subject``), among
  faces scoring at least ``acquire_confidence``. One BlazeFace run costs about 0.9-1.1 ms at
  640x360 and hardly less on an ROI (the network input is 128x128 either way); the ROI's value
  is keeping the subject, steady landmarks, and seeing a distant face at a useful resolution
  (the ROI pass scores the small faces of a group photo 0.9 where the full frame gives
  0.6-0.8). Face Mesh (1.3 ms tracked, one face of its own choosing) was not needed: the
  smoothed BlazeFace points already give a steady crop.
* **Smoothing.** The four points go through a One-Euro filter (Casiez et al. 2012) whose speed
  term is measured in face sizes per second, so the same settings hold for near and far faces:
  steady when the head is still, little lag when it moves.
* **Gaps** (as the ABAW reference pipeline): for up to ``max_gap_s`` after the face was last
  found (detected or flow-tracked) the last good landmarks are held (``detected=False,
  interpolated=True``, the crop is cut from the held points); after that ``detected=False,
  interpolated=False, crop=None`` and the tracker reacquires from scratch.

MediaPipe is imported lazily, so ``import realtime.face`` is cheap. Not thread-safe: use one
tracker per thread.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import sys
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from eri.models.crop import align_face, transform_points
from eri.models.spec import CropSpec

__all__ = ["Detection", "FaceResult", "FaceTracker", "OneEuroFilter", "select_subject"]

logger = logging.getLogger(__name__)

_INSTALL_HINT = (
    "FaceTracker needs MediaPipe with its bundled face models: install mediapipe<=0.10.21, "
    "which ships the face models (pip install 'mediapipe>=0.10.9,<=0.10.21')."
)

#: Native log lines MediaPipe / TF-Lite print at start-up that carry no information.
_BENIGN_NATIVE = re.compile(
    r"Created TensorFlow Lite XNNPACK delegate"
    r"|All log messages before absl::InitializeLog\(\) is called"
    r"|inference_feedback_manager\.cc"
    r"|Disabling support for feedback tensors"
    r"|gl_context(_egl)?\.cc"
)


@contextlib.contextmanager
def _filtered_native_stderr() -> Iterator[None]:
    """Capture fd 2 while MediaPipe starts; write back every line that is not known noise.

    MediaPipe's C++ (absl/glog) and TF-Lite write straight to file descriptor 2, which neither
    ``GLOG_minloglevel`` nor Python logging reaches. Anything unexpected -- a real error -- is
    re-emitted verbatim on the real stderr.
    """
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no usable fd 2 (embedded interpreter): nothing to filter
        yield
        return
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            with contextlib.suppress(OSError, ValueError):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            text = tmp.read().decode("utf-8", errors="replace")
            kept = [ln for ln in text.splitlines() if ln.strip() and not _BENIGN_NATIVE.search(ln)]
            dropped = len(text.splitlines()) - len(kept)
            if kept:
                os.write(2, ("\n".join(kept) + "\n").encode())
            if dropped:
                logger.debug("suppressed %d MediaPipe start-up log lines", dropped)


def _import_mediapipe() -> Any:
    """Import ``mediapipe`` quietly; RuntimeError with the fix when it is missing."""
    os.environ.setdefault("GLOG_minloglevel", "2")  # C++ INFO/WARNING off; errors still shown
    warnings.filterwarnings(
        "ignore", message=r"SymbolDatabase\.GetPrototype\(\) is deprecated", category=UserWarning
    )
    try:
        import mediapipe as mp

        mp.solutions.face_detection.FaceDetection  # noqa: B018 (newer wheels dropped it)
    except (ImportError, AttributeError) as exc:
        raise RuntimeError(_INSTALL_HINT) from exc
    return mp


@dataclass(frozen=True)
class Detection:
    """One BlazeFace face in frame pixels.

    ``box`` [4] float64 (x0, y0, x1, y1); ``keypoints`` [6, 2] float64: image-left eye,
    image-right eye, nose tip, mouth centre, then the ears (subject's right, left).
    """

    score: float
    box: np.ndarray
    keypoints: np.ndarray

    @property
    def points(self) -> np.ndarray:
        """The four alignment points [4, 2] (image-left eye, image-right eye, nose, mouth)."""
        return self.keypoints[:4]

    @property
    def centre(self) -> np.ndarray:
        return (self.box[:2] + self.box[2:]) / 2.0

    @property
    def side(self) -> float:
        """Geometric-mean side of the box, pixels."""
        w, h = self.box[2:] - self.box[:2]
        return float(math.sqrt(max(w, 0.0) * max(h, 0.0)))

    @property
    def area(self) -> float:
        w, h = self.box[2:] - self.box[:2]
        return float(max(w, 0.0) * max(h, 0.0))


@dataclass
class FaceResult:
    """What the tracker says about one frame.

    ``detected``: the subject was found on this frame (by a full-frame or an ROI detection, or
    carried from one by optical flow: ``ran_flow``; ``score`` is then the last detection's).
    ``interpolated``: not found, but within ``max_gap_s`` of the last detection, so ``points``,
    ``box`` and ``crop`` are held from it. Neither: no face (``crop`` is None).
    ``points`` [4, 2] are the smoothed alignment points the crop was cut from; ``crop`` is
    [S, S, 3] uint8 RGB. Quality: ``face_size_px`` (box side), ``yaw`` (nose offset along the
    eye line over the eye distance: 0 frontal, about +-0.5 in profile, positive towards the
    image right), ``roll_deg`` (eye-line angle), ``too_small``, ``near_border``.
    ``ran_detector`` / ``ran_roi`` / ``ran_flow``: which passes ran on this frame (full-frame
    detector, ROI detector, optical flow that tracked the face). ``num_faces``: faces found by
    the latest full-frame pass.
    """

    time_s: float
    detected: bool = False
    interpolated: bool = False
    crop: np.ndarray | None = None
    box: tuple[float, float, float, float] | None = None
    points: np.ndarray | None = None
    score: float = 0.0
    face_size_px: float = 0.0
    yaw: float = 0.0
    roll_deg: float = 0.0
    too_small: bool = False
    near_border: bool = False
    ran_detector: bool = False
    ran_roi: bool = False
    num_faces: int = 0
    track_id: int = 0
    ran_flow: bool = False

    @property
    def has_face(self) -> bool:
        """A crop exists (detected or held): the CSV's ``face_detected``."""
        return self.crop is not None

    def quality(self) -> dict[str, Any]:
        """The quality flags as a plain dict (for logs and JSON)."""
        return {
            "face_size_px": self.face_size_px,
            "yaw": self.yaw,
            "roll_deg": self.roll_deg,
            "too_small": self.too_small,
            "near_border": self.near_border,
            "ran_detector": self.ran_detector,
            "ran_roi": self.ran_roi,
            "ran_flow": self.ran_flow,
            "num_faces": self.num_faces,
        }


class OneEuroFilter:
    """One-Euro filter for a small point set [K, 2], speed measured in ``scale`` units/s.

    ``cutoff = min_cutoff + beta * speed`` with speed the mean point speed (filtered at
    ``d_cutoff``) divided by ``scale`` (the face size); all points share one cutoff so the
    filtered shape stays rigid.
    """

    def __init__(self, min_cutoff: float = 1.0, beta: float = 8.0, d_cutoff: float = 1.0):
        self.min_cutoff = min_cutoff
        self.beta = beta
        self.d_cutoff = d_cutoff
        self.reset()

    def reset(self) -> None:
        self._x: np.ndarray | None = None
        self._dx: np.ndarray | None = None
        self._t = 0.0

    @staticmethod
    def _alpha(dt: float, cutoff: float) -> float:
        tau = 1.0 / (2.0 * math.pi * cutoff)
        return 1.0 / (1.0 + tau / dt)

    def __call__(self, x: np.ndarray, t: float, scale: float = 1.0) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        if self._x is None or self._dx is None:
            self._x, self._dx, self._t = x.copy(), np.zeros_like(x), t
            return x.copy()
        dt = max(t - self._t, 1e-3)
        self._t = t
        a_d = self._alpha(dt, self.d_cutoff)
        self._dx = a_d * (x - self._x) / dt + (1.0 - a_d) * self._dx
        speed = float(np.linalg.norm(self._dx, axis=-1).mean()) / max(scale, 1e-6)
        a = self._alpha(dt, self.min_cutoff + self.beta * speed)
        self._x = a * x + (1.0 - a) * self._x
        return self._x.copy()


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def select_subject(
    detections: list[Detection], subject: str | int, image_shape: tuple[int, ...]
) -> Detection | None:
    """The face to follow at (re)acquisition, or None.

    ``"largest"``: largest box area; ``"center"``: box centre nearest the image centre; an int:
    that index among the faces sorted left to right by box centre (None if out of range).
    """
    if not detections:
        return None
    if subject == "largest":
        return max(detections, key=lambda d: d.area)
    if subject in ("center", "centre"):
        centre = np.array([image_shape[1] / 2.0, image_shape[0] / 2.0])
        return min(detections, key=lambda d: float(np.linalg.norm(d.centre - centre)))
    if isinstance(subject, (int, np.integer)) and not isinstance(subject, bool):
        ordered = sorted(detections, key=lambda d: float(d.centre[0]))
        return ordered[subject] if -len(ordered) <= subject < len(ordered) else None
    raise ValueError(f"subject must be 'largest', 'center' or an int index, got {subject!r}.")


@dataclass(frozen=True)
class _Window:
    """Where the optical flow looks: frame pixels ``[y0:y1, x0:x1]`` reduced ``step`` times (a
    power of two, so the reduction is a fast exact block average), the face centre / side it
    was cut for (the window is kept while the face stays near them) and the frame's (H, W)."""

    x0: int
    y0: int
    x1: int
    y1: int
    step: int
    cx: float
    cy: float
    side: float
    frame_shape: tuple[int, int]

    def to_window(self, pts: np.ndarray) -> np.ndarray:
        """Frame pixels [N, 2] -> window pixels [N, 2] float32."""
        return ((pts - (self.x0, self.y0)) / self.step).astype(np.float32)

    def to_frame(self, pts: np.ndarray) -> np.ndarray:
        """Window pixels [N, 2] -> frame pixels [N, 2] float64."""
        return np.asarray(pts, dtype=np.float64) * self.step + (self.x0, self.y0)

    def gray(self, image: np.ndarray) -> np.ndarray:
        """This window of ``image`` [H, W, 3] uint8 RGB as gray [h / step, w / step] uint8."""
        import cv2

        gray = cv2.cvtColor(image[self.y0 : self.y1, self.x0 : self.x1], cv2.COLOR_RGB2GRAY)
        if self.step > 1:
            size = (gray.shape[1] // self.step, gray.shape[0] // self.step)
            gray = cv2.resize(gray, size, interpolation=cv2.INTER_AREA)
        return gray


def _moved(det: Detection, m: np.ndarray) -> Detection:
    """``det`` carried by the similarity ``m`` [2, 3]: keypoints and box centre mapped, box
    sides scaled (the box stays axis-aligned)."""
    scale = math.hypot(m[0, 0], m[1, 0])
    centre = transform_points(m, det.centre[None])[0]
    half = (det.box[2:] - det.box[:2]) * scale / 2.0
    box = np.concatenate([centre - half, centre + half])
    return Detection(score=det.score, box=box, keypoints=transform_points(m, det.keypoints))


class FaceTracker:
    """Follow one face through a stream of frames; see the module docstring.

    Args:
        crop: the face crop (size, margin, template) the crop is cut to.
        detect_every: ``tracking="flow"``: a detector run (ROI, full frame if it misses) every
            this many frames, optical flow in between; ``"detector"``: a full-frame detection
            every this many frames, ROI detections on every frame. 1: a full-frame detection
            on every frame, no ROI, no flow (both modes).
        min_confidence: BlazeFace score threshold for continuing a track.
        acquire_confidence: the score a face needs to become the subject (at least
            ``min_confidence``). Real faces score 0.9+ at webcam range while skin-coloured
            clutter (blurry title text in the test cartoon) reaches 0.5-0.6, so a higher bar to
            start a track than to keep one removes those false acquisitions. Lower it for
            small faces in group photos with ``model="full"``.
        max_gap_s: hold the last landmarks for gaps up to this long, then report no face.
        subject: ``"largest"``, ``"center"`` or an int index (faces left to right) chosen at
            (re)acquisition.
        smoothing: One-Euro strength; 0 disables, 1 is the tuned default (min cutoff 1 Hz,
            beta 8 per face-size/s), larger is steadier with more lag.
        model: the full-frame BlazeFace: ``"short"`` (faces within ~2 m, ~0.9 ms at 640x360) or
            ``"full"`` (small, distant faces, group photos; ~2.5 ms). The ROI pass always uses
            the short-range model, as the ROI is face-sized.
        roi_scale: ROI side over the face box side.
        min_face_px: faces with a smaller box side are flagged ``too_small``.
        border_frac: boxes within this fraction of the frame size from an edge are flagged
            ``near_border``.
        tracking: ``"flow"`` (optical flow between detector runs; the default) or
            ``"detector"`` (the ROI detector on every frame); see the module docstring.
    """

    #: The ROI is kept while the face centre and size move less than this fraction of its size.
    ROI_HYSTERESIS = 0.1
    #: Optical flow (``tracking="flow"``): features seeded per detection, the fewest that must
    #: survive, the face side the flow window is resampled to (at most), the window side over
    #: the face side, the forward-backward error allowed (window pixels), the RANSAC inlier
    #: threshold (fraction of the face side), and the largest per-frame scale change, rotation
    #: (degrees) and shift (face sides) still taken as the face's own motion.
    FLOW_FEATURES = 50
    FLOW_MIN_POINTS = 10
    FLOW_FACE_PX = 160.0
    FLOW_WINDOW = 3.0
    FLOW_FB_PX = 1.0
    FLOW_RANSAC_FRAC = 0.01
    FLOW_MIN_INLIER_FRAC = 0.5
    FLOW_MAX_SCALE_STEP = 0.15
    FLOW_MAX_ROTATION_DEG = 15.0
    FLOW_MAX_SHIFT = 0.5
    FLOW_LK_WIN = 11
    FLOW_LK_LEVELS = 3

    def __init__(
        self,
        crop: CropSpec | None = None,
        detect_every: int = 5,
        min_confidence: float = 0.5,
        max_gap_s: float = 0.5,
        subject: str | int = "largest",
        smoothing: float = 1.0,
        *,
        acquire_confidence: float = 0.7,
        model: str = "short",
        roi_scale: float = 2.0,
        min_face_px: float = 40.0,
        border_frac: float = 0.02,
        tracking: str = "flow",
    ) -> None:
        if detect_every < 1:
            raise ValueError(f"detect_every must be >= 1, got {detect_every}.")
        if not 0.0 < min_confidence < 1.0:
            raise ValueError(f"min_confidence must be in (0, 1), got {min_confidence}.")
        if max_gap_s < 0:
            raise ValueError(f"max_gap_s must be >= 0, got {max_gap_s}.")
        if smoothing < 0:
            raise ValueError(f"smoothing must be >= 0 (0 disables it), got {smoothing}.")
        if model not in ("short", "full"):
            raise ValueError(f"model must be 'short' or 'full', got {model!r}.")
        if tracking not in ("flow", "detector"):
            raise ValueError(f"tracking must be 'flow' or 'detector', got {tracking!r}.")
        if roi_scale < 1.2:
            raise ValueError(f"roi_scale must be >= 1.2, got {roi_scale}.")
        if isinstance(subject, bool) or not (
            isinstance(subject, (int, np.integer)) or subject in ("largest", "center", "centre")
        ):
            raise ValueError(f"subject must be 'largest', 'center' or an int, got {subject!r}.")
        self.crop = crop or CropSpec()
        self.detect_every = int(detect_every)
        self.min_confidence = float(min_confidence)
        self.acquire_confidence = max(float(acquire_confidence), self.min_confidence)
        self.max_gap_s = float(max_gap_s)
        self.subject = subject
        self.smoothing = float(smoothing)
        self.model = model
        self.roi_scale = float(roi_scale)
        self.min_face_px = float(min_face_px)
        self.border_frac = float(border_frac)
        self.tracking = tracking
        self._filter = (
            OneEuroFilter(min_cutoff=1.0 / self.smoothing, beta=8.0 / self.smoothing)
            if self.smoothing > 0
            else None
        )

        mp = _import_mediapipe()
        fd = mp.solutions.face_detection
        warm = np.zeros((64, 64, 3), dtype=np.uint8)  # start-up logs come on the first run
        with _filtered_native_stderr():
            self._roi_detector = fd.FaceDetection(
                model_selection=0, min_detection_confidence=self.min_confidence
            )
            self._full_detector = self._roi_detector
            try:
                self._roi_detector.process(warm)
                if model == "full":
                    self._full_detector = fd.FaceDetection(
                        model_selection=1, min_detection_confidence=self.min_confidence
                    )
                    self._full_detector.process(warm)
            except BaseException:
                self._roi_detector.close()
                raise
        self._closed = False
        self._warned_index = False
        self.reset()

    # -- lifecycle ------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget the subject and zero the counters (e.g. for a new source)."""
        self.frames = 0
        self.detector_runs = 0
        self.roi_runs = 0
        self.lost_events = 0
        self.held_frames = 0
        self.flow_runs = 0
        self.flow_rejects = 0
        self._drop_track()
        self._track_id = 0
        self._last_time: float | None = None
        self._num_faces = 0

    def _drop_track(self) -> None:
        self._track: Detection | None = None
        self._points: np.ndarray | None = None
        self._crop: np.ndarray | None = None
        self._last_seen = -math.inf
        self._since_full = 0
        self._missed = False
        self._roi: tuple[float, float, float] | None = None
        self._since_det = 0
        self._drop_flow()
        if self._filter is not None:
            self._filter.reset()

    def _drop_flow(self) -> None:
        self._feats: np.ndarray | None = None  # [N, 2] float64 frame pixels, on the last frame
        self._flow_prev: np.ndarray | None = None  # last frame's gray window [h, w] uint8
        self._flow_win: _Window | None = None

    def close(self) -> None:
        """Release the MediaPipe graphs (idempotent)."""
        if getattr(self, "_closed", True):
            return
        self._closed = True
        if self._full_detector is not self._roi_detector:
            self._full_detector.close()
        self._roi_detector.close()

    def __enter__(self) -> FaceTracker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def stats(self) -> dict[str, int]:
        """Counters: frames, detector_runs (full frame), roi_runs, flow_runs (frames tracked by
        optical flow), flow_rejects (frames where the flow was uncertain and the detector ran
        instead), lost_events, held_frames."""
        return {
            "frames": self.frames,
            "detector_runs": self.detector_runs,
            "roi_runs": self.roi_runs,
            "flow_runs": self.flow_runs,
            "flow_rejects": self.flow_rejects,
            "lost_events": self.lost_events,
            "held_frames": self.held_frames,
        }

    # -- detection ------------------------------------------------------------------------

    def _run(self, detector: Any, image: np.ndarray, x0: int = 0, y0: int = 0) -> list[Detection]:
        h, w = image.shape[:2]
        out = detector.process(image)
        dets: list[Detection] = []
        for d in out.detections or ():
            loc = d.location_data
            bb = loc.relative_bounding_box
            box = np.array(
                [
                    x0 + bb.xmin * w,
                    y0 + bb.ymin * h,
                    x0 + (bb.xmin + bb.width) * w,
                    y0 + (bb.ymin + bb.height) * h,
                ]
            )
            kp = np.array([[x0 + k.x * w, y0 + k.y * h] for k in loc.relative_keypoints])
            if kp.shape != (6, 2):
                continue
            # Image-left eye first: if eyes->mouth turns the wrong way, the source is mirrored.
            e = kp[1] - kp[0]
            m = kp[3] - (kp[0] + kp[1]) / 2.0
            if e[0] * m[1] - e[1] * m[0] < 0:
                kp[[0, 1]] = kp[[1, 0]]
                kp[[4, 5]] = kp[[5, 4]]
            dets.append(Detection(score=float(d.score[0]), box=box, keypoints=kp))
        return dets

    def detect_all(self, image: np.ndarray) -> list[Detection]:
        """All faces of a full-frame detection, sorted left to right (the ``subject`` index)."""
        self._check_open()
        _check_frame(image)
        dets = self._run(self._full_detector, np.ascontiguousarray(image))
        return sorted(dets, key=lambda d: float(d.centre[0]))

    def _detect_full(self, image: np.ndarray) -> list[Detection]:
        self.detector_runs += 1
        self._since_full = 0
        dets = self._run(self._full_detector, image)
        self._num_faces = len(dets)
        return dets

    def _detect_roi(self, image: np.ndarray, anchor: Detection) -> list[Detection]:
        """Detect in a square ROI around ``anchor`` (kept while the face stays near its centre)."""
        h, w = image.shape[:2]
        cx, cy = anchor.centre
        side = anchor.side
        if self._roi is not None:
            rcx, rcy, rside = self._roi
            moved = math.hypot(cx - rcx, cy - rcy) > self.ROI_HYSTERESIS * side
            if not moved and abs(side / rside - 1.0) <= self.ROI_HYSTERESIS:
                cx, cy, side = rcx, rcy, rside
        self._roi = (cx, cy, side)
        half = side * self.roi_scale / 2.0
        x0, y0 = max(0, int(round(cx - half))), max(0, int(round(cy - half)))
        x1, y1 = min(w, int(round(cx + half))), min(h, int(round(cy + half)))
        if x1 - x0 < 16 or y1 - y0 < 16:
            return []
        self.roi_runs += 1
        roi = np.ascontiguousarray(image[y0:y1, x0:x1])
        return self._run(self._roi_detector, roi, x0, y0)

    def _associate(
        self, dets: list[Detection], anchor: Detection, time_s: float
    ) -> Detection | None:
        """The detection that continues ``anchor``, or None (gated on IoU / distance / size)."""
        if not dets:
            return None
        gap = max(0.0, time_s - self._last_seen)
        radius = anchor.side * (0.75 + 4.0 * gap)
        best, best_key = None, -math.inf
        for d in dets:
            iou = _iou(d.box, anchor.box)
            dist = float(np.linalg.norm(d.centre - anchor.centre))
            ratio = d.side / max(anchor.side, 1e-6)
            if not 0.5 <= ratio <= 2.0 or (iou < 0.3 and dist > radius):
                continue
            key = iou - dist / max(radius, 1e-6)
            if key > best_key:
                best, best_key = d, key
        return best

    def _find(self, image: np.ndarray, time_s: float) -> tuple[Detection | None, bool, bool]:
        """This frame's detection of the subject, and whether the full / ROI passes ran.

        The landmarks come from the ROI pass whenever it finds the face, so they do not
        switch between two detector resolutions from frame to frame.
        """
        anchor = self._track
        full_due = anchor is None or self._missed or self._since_full + 1 >= self.detect_every
        found: Detection | None = None
        if full_due:
            dets = self._detect_full(image)
            if anchor is None:
                dets = [d for d in dets if d.score >= self.acquire_confidence]
                found = select_subject(dets, self.subject, image.shape)
                if found is None and dets and not self._warned_index:
                    logger.warning(
                        "subject index %s is out of range: %d faces in view",
                        self.subject,
                        len(dets),
                    )
                    self._warned_index = True
                if found is None:
                    return None, True, False
                self._last_seen = time_s
            else:
                found = self._associate(dets, anchor, time_s)
            if found is not None:
                anchor = found
        assert anchor is not None
        if self.detect_every == 1 and found is not None:
            return found, True, False  # every frame full-frame: one landmark source, one run
        det = self._associate(self._detect_roi(image, anchor), anchor, time_s)
        if det is None:
            det = found
        if det is None and not full_due:  # the ROI lost it: look at the whole frame
            det = self._associate(self._detect_full(image), anchor, time_s)
            full_due = True
        return det, full_due, True

    # -- optical-flow tracking ------------------------------------------------------------

    @property
    def _uses_flow(self) -> bool:
        return self.tracking == "flow" and self.detect_every > 1

    def _step_flow(
        self, image: np.ndarray, time_s: float
    ) -> tuple[Detection | None, bool, bool, bool]:
        """This frame's subject in flow mode, and whether the full / ROI / flow passes ran.

        Flow between detector runs; the detector (ROI, then full frame if the ROI misses) every
        ``detect_every`` frames, after a miss, and whenever the flow is uncertain.
        """
        anchor = self._track
        due = self._since_det + 1 >= self.detect_every
        if anchor is not None and not self._missed and not due and self._feats is not None:
            flow = self._flow(image, anchor)
            if flow is not None:
                m, feats, gray = flow
                moved = _moved(anchor, m)
                self._since_det += 1
                self.flow_runs += 1
                self._flow_keep(image, moved, feats, gray)
                return moved, False, False, True
            self.flow_rejects += 1
        self._since_det = 0
        if anchor is None:  # acquisition: full frame, then the ROI for the landmarks
            det, ran_full, ran_roi = self._find(image, time_s)
        else:
            before = self.roi_runs
            det = self._associate(self._detect_roi(image, anchor), anchor, time_s)
            ran_roi, ran_full = self.roi_runs > before, det is None
            if det is None:
                det = self._associate(self._detect_full(image), anchor, time_s)
        if det is not None:
            self._flow_seed(image, det)
        else:
            self._drop_flow()
        return det, ran_full, ran_roi, False

    def _flow_window(self, det: Detection, shape: tuple[int, ...]) -> _Window | None:
        """The flow window for a face at ``det`` (the current one while the face stays near)."""
        cx, cy = (float(v) for v in det.centre)
        side = det.side
        win = self._flow_win
        if (
            win is not None
            and win.frame_shape == tuple(shape[:2])
            and math.hypot(cx - win.cx, cy - win.cy) <= 0.25 * win.side
            and abs(side / win.side - 1.0) <= 0.15
        ):
            return win
        h, w = shape[:2]
        step = 1
        while side / step > self.FLOW_FACE_PX:
            step *= 2
        half = self.FLOW_WINDOW * side / 2.0
        x0, y0 = max(0, math.floor(cx - half)), max(0, math.floor(cy - half))
        x1, y1 = min(w, math.ceil(cx + half)), min(h, math.ceil(cy + half))
        x1, y1 = x1 - (x1 - x0) % step, y1 - (y1 - y0) % step  # whole blocks of step px
        if x1 - x0 < 16 * step or y1 - y0 < 16 * step or side < 8:
            return None
        return _Window(x0, y0, x1, y1, step, cx, cy, side, (h, w))

    def _flow_seed(self, image: np.ndarray, det: Detection) -> None:
        """Seed features inside ``det``'s box (inset by 10 %) on this frame."""
        import cv2

        win = self._flow_window(det, image.shape)
        if win is None:
            self._drop_flow()
            return
        gray = win.gray(image)
        inset = 0.1 * (det.box[2:] - det.box[:2])
        (bx0, by0), (bx1, by1) = win.to_window(np.array([det.box[:2] + inset, det.box[2:] - inset]))
        gh, gw = gray.shape
        bx0, by0 = max(0, int(bx0)), max(0, int(by0))
        bx1, by1 = min(gw, int(math.ceil(bx1))), min(gh, int(math.ceil(by1)))
        self._flow_win, self._flow_prev, self._feats = win, gray, None
        if bx1 - bx0 < 8 or by1 - by0 < 8:
            return
        pts = cv2.goodFeaturesToTrack(
            gray[by0:by1, bx0:bx1],
            maxCorners=self.FLOW_FEATURES,
            qualityLevel=0.01,
            minDistance=max(2.0, min(bx1 - bx0, by1 - by0) / 12.0),
            blockSize=5,
        )
        if pts is None or len(pts) < self.FLOW_MIN_POINTS:
            logger.debug("too few features to track (%d)", 0 if pts is None else len(pts))
            return
        self._feats = win.to_frame(pts.reshape(-1, 2) + (bx0, by0))

    def _flow_keep(
        self, image: np.ndarray, det: Detection, feats: np.ndarray, gray: np.ndarray
    ) -> None:
        """After a flow frame: keep the surviving features and this frame's gray window."""
        win = self._flow_window(det, image.shape)
        if win is None:
            self._drop_flow()
            return
        if win is not self._flow_win:
            gray = win.gray(image)
        self._flow_win, self._flow_prev, self._feats = win, gray, feats

    def _flow(
        self, image: np.ndarray, anchor: Detection
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """Track the features from the last frame to ``image``.

        Returns the frame-to-frame similarity [2, 3] (frame pixels), the surviving features
        [N, 2] and this frame's gray window; None when the flow is uncertain (too few points
        survive the forward-backward check or RANSAC, or the motion is implausible).
        """
        import cv2

        win, prev, feats = self._flow_win, self._flow_prev, self._feats
        assert win is not None and prev is not None and feats is not None
        if image.shape[:2] != win.frame_shape:
            logger.debug("flow uncertain: the frame size changed")
            return None
        gray = win.gray(image)
        lk = {
            "winSize": (self.FLOW_LK_WIN, self.FLOW_LK_WIN),
            "maxLevel": self.FLOW_LK_LEVELS,
            "criteria": (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 20, 0.03),
        }
        p0 = win.to_window(feats).reshape(-1, 1, 2)
        p1, st1, _ = cv2.calcOpticalFlowPyrLK(prev, gray, p0, None, **lk)
        back, st2, _ = cv2.calcOpticalFlowPyrLK(gray, prev, p1, None, **lk)
        fb = np.linalg.norm((back - p0).reshape(-1, 2), axis=1)
        ok = (st1.ravel() == 1) & (st2.ravel() == 1) & (fb < self.FLOW_FB_PX)
        if int(ok.sum()) < self.FLOW_MIN_POINTS:
            logger.debug("flow uncertain: %d of %d points survive", int(ok.sum()), len(p0))
            return None
        q0 = win.to_frame(p0.reshape(-1, 2)[ok])
        q1 = win.to_frame(p1.reshape(-1, 2)[ok])
        side = anchor.side
        m, inliers = cv2.estimateAffinePartial2D(
            q0,
            q1,
            method=cv2.RANSAC,
            ransacReprojThreshold=max(1.0, self.FLOW_RANSAC_FRAC * side),
            maxIters=200,
            confidence=0.99,
            refineIters=10,
        )
        if m is None or inliers is None:
            logger.debug("flow uncertain: no similarity fits")
            return None
        inl = inliers.ravel().astype(bool)
        n = int(inl.sum())
        if n < self.FLOW_MIN_POINTS or n < self.FLOW_MIN_INLIER_FRAC * len(q0):
            logger.debug("flow uncertain: %d of %d points are inliers", n, len(q0))
            return None
        scale = math.hypot(m[0, 0], m[1, 0])
        angle = math.degrees(math.atan2(m[1, 0], m[0, 0]))
        shift = float(np.linalg.norm(transform_points(m, anchor.centre[None])[0] - anchor.centre))
        if (
            abs(scale - 1.0) > self.FLOW_MAX_SCALE_STEP
            or abs(angle) > self.FLOW_MAX_ROTATION_DEG
            or shift > self.FLOW_MAX_SHIFT * side
        ):
            logger.debug(
                "flow uncertain: scale %.3f, rotation %.1f deg, shift %.1f px", scale, angle, shift
            )
            return None
        return m, q1[inl], gray

    # -- the per-frame step ---------------------------------------------------------------

    def process(self, image: np.ndarray, time_s: float) -> FaceResult:
        """Track the subject on one frame [H, W, 3] uint8 RGB taken at ``time_s`` seconds."""
        self._check_open()
        _check_frame(image)
        if self._last_time is not None and time_s < self._last_time:
            logger.info("time went back (%.3f -> %.3f s): tracker reset", self._last_time, time_s)
            self.reset()
        self._last_time = time_s
        self.frames += 1
        image = np.ascontiguousarray(image)
        new_track = self._track is None
        ran_flow = False
        if self._uses_flow:
            det, ran_full, ran_roi, ran_flow = self._step_flow(image, time_s)
        else:
            det, ran_full, ran_roi = self._find(image, time_s)
            if not ran_full:
                self._since_full += 1

        if det is not None:
            if new_track:
                self._track_id += 1
                if self._filter is not None:
                    self._filter.reset()
            self._track = det
            self._last_seen = time_s
            self._missed = False
            pts = det.points
            if self._filter is not None:
                pts = self._filter(pts, time_s, scale=det.side)
            self._points = pts
            self._crop = align_face(image, pts, self.crop)
            return self._result(
                time_s, det, image.shape, True, ran_full, ran_roi, ran_flow=ran_flow
            )

        self._missed = True
        if self._track is not None and time_s - self._last_seen <= self.max_gap_s:
            self.held_frames += 1
            assert self._points is not None
            crop = align_face(image, self._points, self.crop)
            return self._result(time_s, self._track, image.shape, False, ran_full, ran_roi, crop)
        if self._track is not None:
            self.lost_events += 1
            logger.debug("face lost at %.3f s (last seen %.3f s)", time_s, self._last_seen)
            self._drop_track()
        return FaceResult(
            time_s=time_s,
            ran_detector=ran_full,
            ran_roi=ran_roi,
            num_faces=self._num_faces,
        )

    def _result(
        self,
        time_s: float,
        det: Detection,
        shape: tuple[int, ...],
        detected: bool,
        ran_full: bool,
        ran_roi: bool,
        crop: np.ndarray | None = None,
        ran_flow: bool = False,
    ) -> FaceResult:
        assert self._points is not None
        pts = self._points
        e = pts[1] - pts[0]
        iod = float(np.hypot(*e))
        yaw = float(np.dot(pts[2] - (pts[0] + pts[1]) / 2.0, e) / (iod * iod)) if iod > 0 else 0.0
        h, w = shape[:2]
        mx, my = self.border_frac * w, self.border_frac * h
        x0, y0, x1, y1 = (float(v) for v in det.box)
        return FaceResult(
            time_s=time_s,
            detected=detected,
            interpolated=not detected,
            crop=self._crop if crop is None else crop,
            box=(x0, y0, x1, y1),
            points=pts.copy(),
            score=det.score,
            face_size_px=det.side,
            yaw=yaw,
            roll_deg=math.degrees(math.atan2(e[1], e[0])),
            too_small=det.side < self.min_face_px,
            near_border=x0 < mx or y0 < my or x1 > w - mx or y1 > h - my,
            ran_detector=ran_full,
            ran_roi=ran_roi,
            num_faces=self._num_faces,
            track_id=self._track_id,
            ran_flow=ran_flow,
        )

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("this FaceTracker is closed; create a new one.")


def _check_frame(image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(
            f"FaceTracker expects an [H, W, 3] uint8 RGB frame, got "
            f"{getattr(image, 'shape', type(image))}."
        )
    if image.dtype != np.uint8:
        raise ValueError(f"FaceTracker expects a uint8 RGB frame, got dtype {image.dtype}.")
