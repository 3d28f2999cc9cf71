"""The tracking policy: :class:`FaceTracker` follows one subject through a stream of RGB frames
and gives an aligned crop plus quality flags per frame (:class:`FaceResult`).

* **Detection** (:mod:`eri.realtime.face.detector`). BlazeFace
  (``mediapipe.solutions.face_detection``) gives a box and six keypoints per face: the
  subject's right eye, left eye, nose tip, mouth centre, right ear, left ear. In an unmirrored
  image the subject's right eye is on the image left, so the first four keypoints are the
  crop's (image-left eye, image-right eye, nose tip, mouth centre); if the geometry says the
  eyes are swapped (a mirrored source) they are swapped back.
* **Tracking** (``tracking="flow"``, the default). BlazeFace runs only on some frames; between
  them the face is followed by optical flow (:mod:`eri.realtime.face.flow`):

  - *Detector frames*: acquisition (full frame, then an ROI pass around the chosen face for the
    landmarks), every ``detect_every``-th frame, every frame after a miss, and any frame where
    the flow is uncertain. The detector runs on a square ROI (``roi_scale`` x the face box)
    around the current (flow-carried) face, and on the full frame only if the ROI misses. The
    landmarks snap back to the detection (the One-Euro filter below smooths the step) and up
    to :attr:`FlowTracker.FEATURES` corners are seeded inside the face box.
  - *Flow frames* (all others): :class:`FlowTracker` carries the landmarks and the box by the
    frame-to-frame similarity of the tracked corners. When the flow is uncertain (too few
    points survive, or the motion is implausible for a face) the detector runs on that same
    frame, so a scene cut is seen at once.

  A tracked face is ``detected`` on flow frames; its ``score`` is the last detection's. The
  flow can be fooled for at most ``detect_every - 1`` frames (the next detector frame checks
  it). ``num_faces`` is updated only by full-frame passes, which in this mode run at
  acquisition and when the ROI misses. With ``detect_every=1`` there is no flow: the detector
  mode's full-frame pass. Its cost and steadiness against the detector mode are in
  docs/benchmarks.md.
* **Tracking** (``tracking="detector"``, the previous behaviour). A full-frame detection runs
  every ``detect_every`` frames, at (re)acquisition and on the frame after a miss; every frame
  the short-range detector runs on the ROI, mapped back to frame pixels. The ROI stays put
  while the face stays within 10 % of its size of the ROI centre, so a still face gives the
  detector the same input (in both modes). The landmarks always come from the ROI pass (a
  full-frame pass only finds and associates the face): alternating full-frame and ROI
  landmarks jitters the crop more than either alone (docs/benchmarks.md). With
  ``detect_every=1`` the full-frame pass alone is used.
* **Association.** Every detection is associated with the tracked face (IoU / centre-distance
  and size gate; the distance gate grows with the time since the face was last seen), so the
  tracker never jumps to another person. At acquisition the subject is the largest face, the
  one nearest the image centre, or the user's index counted left to right (``subject``), among
  faces scoring at least ``acquire_confidence``. An ROI run costs about as much as a
  full-frame one (the network input is 128x128 either way); the ROI's value is keeping the
  subject, steady landmarks, and seeing a distant face at a useful resolution (it scores the
  small faces of a group photo higher than the full frame does). Face Mesh (one face of its
  own choosing) was not needed: the smoothed BlazeFace points already give a steady crop.
* **Smoothing.** The four points go through a One-Euro filter (Casiez et al. 2012) whose speed
  term is measured in face sizes per second, so the same settings hold for near and far faces:
  steady when the head is still, little lag when it moves.
* **Gaps** (as the ABAW reference pipeline): for up to ``max_gap_s`` after the face was last
  found (detected or flow-tracked) the last good landmarks are held (``detected=False,
  interpolated=True``, the crop is cut from the held points); after that ``detected=False,
  interpolated=False, crop=None`` and the tracker reacquires from scratch.

MediaPipe is imported lazily, so ``import eri.realtime.face`` is cheap. Not thread-safe: use
one tracker per thread.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from eri.models.crop import align_face
from eri.models.spec import CropSpec
from eri.realtime.face.detector import BlazeFace, Detection
from eri.realtime.face.flow import FlowTracker

__all__ = ["FaceResult", "FaceTracker", "OneEuroFilter", "detection_at", "select_subject"]

logger = logging.getLogger(__name__)


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


def detection_at(detections: list[Detection], x: float, y: float) -> Detection | None:
    """The face whose box contains the image point (x, y) (the smallest if boxes overlap), or
    None when no box contains it: a click on a face in the viewer."""
    inside = [d for d in detections if d.box[0] <= x <= d.box[2] and d.box[1] <= y <= d.box[3]]
    return min(inside, key=lambda d: d.area) if inside else None


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
            ``min_confidence``). Real faces at webcam range score well above it while
            skin-coloured clutter (blurry title text in the test cartoon) scores below it, so a
            higher bar to start a track than to keep one removes those false acquisitions (the
            scores are in docs/benchmarks.md). Lower it for small faces in group photos with
            ``model="full"``.
        max_gap_s: hold the last landmarks for gaps up to this long, then report no face.
        subject: ``"largest"``, ``"center"`` or an int index (faces left to right) chosen at
            (re)acquisition.
        smoothing: One-Euro strength; 0 disables, 1 is the tuned default (min cutoff 1 Hz,
            beta 8 per face-size/s), larger is steadier with more lag.
        model: the full-frame BlazeFace: ``"short"`` (faces within ~2 m) or ``"full"`` (small,
            distant faces, group photos; slower, see docs/benchmarks.md). The ROI pass always
            uses the short-range model, as the ROI is face-sized.
        roi_scale: ROI side over the face box side.
        min_face_px: faces with a smaller box side are flagged ``too_small``.
        border_frac: boxes within this fraction of the frame size from an edge are flagged
            ``near_border``.
        tracking: ``"flow"`` (optical flow between detector runs; the default) or
            ``"detector"`` (the ROI detector on every frame); see the module docstring.
    """

    #: The ROI is kept while the face centre and size move less than this fraction of its size.
    ROI_HYSTERESIS = 0.1

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

        self._flow = FlowTracker()
        self._roi_detector = BlazeFace(full_range=False, min_confidence=self.min_confidence)
        self._full_detector = self._roi_detector
        if model == "full":
            try:
                self._full_detector = BlazeFace(full_range=True, min_confidence=self.min_confidence)
            except BaseException:
                self._roi_detector.close()
                raise
        self._closed = False
        self._warned_index = False
        self._select_point: tuple[float, float] | None = None
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
        self._flow.reset()
        if self._filter is not None:
            self._filter.reset()

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

    def select_at(self, x: float, y: float) -> None:
        """Follow the face whose box contains the image point (x, y), from the next frame.

        Safe to call from another thread (a GUI click): it only leaves a request that the next
        :meth:`process` carries out with a full-frame detection. No face there: the current
        subject stays.
        """
        self._select_point = (float(x), float(y))

    def _switch_subject(self, image: np.ndarray, time_s: float) -> None:
        """Carry out a :meth:`select_at` request on this frame."""
        point, self._select_point = self._select_point, None
        if point is None:
            return
        found = detection_at(self._detect_full(image), *point)
        if found is None:
            logger.info("no face at (%.0f, %.0f): the subject stays", *point)
            return
        self._drop_track()
        self._track = found
        self._points = np.asarray(found.points, np.float64).copy()  # held if this frame misses
        self._last_seen = time_s
        self._track_id += 1
        logger.info("subject switched to the face at (%.0f, %.0f)", *point)

    # -- detection ------------------------------------------------------------------------

    def detect_all(self, image: np.ndarray) -> list[Detection]:
        """All faces of a full-frame detection, sorted left to right (the ``subject`` index)."""
        self._check_open()
        _check_frame(image)
        dets = self._full_detector(np.ascontiguousarray(image))
        return sorted(dets, key=lambda d: float(d.centre[0]))

    def _detect_full(self, image: np.ndarray) -> list[Detection]:
        self.detector_runs += 1
        self._since_full = 0
        dets = self._full_detector(image)
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
        return self._roi_detector(roi, x0, y0)

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
        if anchor is not None and not self._missed and not due and self._flow.ready:
            moved = self._flow.track(image, anchor)
            if moved is not None:
                self._since_det += 1
                self.flow_runs += 1
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
            self._flow.seed(image, det)
        else:
            self._flow.reset()
        return det, ran_full, ran_roi, False

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
        if self._select_point is not None:
            self._switch_subject(image, time_s)
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
