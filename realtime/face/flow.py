"""Optical-flow face tracking between detector runs: pyramidal Lucas-Kanade flow with a
forward-backward check, and a RANSAC similarity fit that carries a :class:`Detection` from one
frame to the next.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

from eri.models.crop import transform_points
from eri.realtime.face.detector import Detection

logger = logging.getLogger(__name__)


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


class FlowTracker:
    """Carry a face from frame to frame by the motion of corners seeded inside its box.

    :meth:`seed` picks up to ``FEATURES`` corners (``cv2.goodFeaturesToTrack``) inside a
    detection's box (inset by 10 %); :meth:`track` follows them to the next frame
    (``cv2.calcOpticalFlowPyrLK``, forward and backward: a point survives if it comes back to
    within ``FB_PX``), ``cv2.estimateAffinePartial2D`` (RANSAC) fits the frame-to-frame
    similarity, and it moves the landmarks and the box. Fewer than ``MIN_POINTS`` surviving /
    inlier points, an inlier share under ``MIN_INLIER_FRAC``, a scale step over
    ``MAX_SCALE_STEP``, a rotation over ``MAX_ROTATION_DEG`` or a shift over ``MAX_SHIFT`` face
    sides per frame make the flow *uncertain*: :meth:`track` returns None and the caller runs
    the detector. The flow runs on a gray window (``WINDOW`` x the face box) reduced by a power
    of two so the face is at most ``FACE_PX`` pixels.
    """

    #: Features seeded per detection, the fewest that must survive, the face side the flow
    #: window is resampled to (at most), the window side over the face side, the
    #: forward-backward error allowed (window pixels), the RANSAC inlier threshold (fraction of
    #: the face side), the smallest inlier share, the largest per-frame scale change, rotation
    #: (degrees) and shift (face sides) still taken as the face's own motion, and the LK window
    #: side and pyramid levels.
    FEATURES = 50
    MIN_POINTS = 10
    FACE_PX = 160.0
    WINDOW = 3.0
    FB_PX = 1.0
    RANSAC_FRAC = 0.01
    MIN_INLIER_FRAC = 0.5
    MAX_SCALE_STEP = 0.15
    MAX_ROTATION_DEG = 15.0
    MAX_SHIFT = 0.5
    LK_WIN = 11
    LK_LEVELS = 3

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget the features (the next :meth:`track` needs a :meth:`seed` first)."""
        self._feats: np.ndarray | None = None  # [N, 2] float64 frame pixels, on the last frame
        self._prev: np.ndarray | None = None  # last frame's gray window [h, w] uint8
        self._win: _Window | None = None

    @property
    def ready(self) -> bool:
        """Features are seeded and can be tracked to the next frame."""
        return self._feats is not None

    def track(self, image: np.ndarray, anchor: Detection) -> Detection | None:
        """``anchor`` (the face on the last frame) carried to ``image``; None if uncertain."""
        flow = self._track(image, anchor)
        if flow is None:
            return None
        m, feats, gray = flow
        moved = _moved(anchor, m)
        self._keep(image, moved, feats, gray)
        return moved

    def _window(self, det: Detection, shape: tuple[int, ...]) -> _Window | None:
        """The flow window for a face at ``det`` (the current one while the face stays near)."""
        cx, cy = (float(v) for v in det.centre)
        side = det.side
        win = self._win
        if (
            win is not None
            and win.frame_shape == tuple(shape[:2])
            and math.hypot(cx - win.cx, cy - win.cy) <= 0.25 * win.side
            and abs(side / win.side - 1.0) <= 0.15
        ):
            return win
        h, w = shape[:2]
        step = 1
        while side / step > self.FACE_PX:
            step *= 2
        half = self.WINDOW * side / 2.0
        x0, y0 = max(0, math.floor(cx - half)), max(0, math.floor(cy - half))
        x1, y1 = min(w, math.ceil(cx + half)), min(h, math.ceil(cy + half))
        x1, y1 = x1 - (x1 - x0) % step, y1 - (y1 - y0) % step  # whole blocks of step px
        if x1 - x0 < 16 * step or y1 - y0 < 16 * step or side < 8:
            return None
        return _Window(x0, y0, x1, y1, step, cx, cy, side, (h, w))

    def seed(self, image: np.ndarray, det: Detection) -> None:
        """Seed features inside ``det``'s box (inset by 10 %) on this frame."""
        import cv2

        win = self._window(det, image.shape)
        if win is None:
            self.reset()
            return
        gray = win.gray(image)
        inset = 0.1 * (det.box[2:] - det.box[:2])
        (bx0, by0), (bx1, by1) = win.to_window(np.array([det.box[:2] + inset, det.box[2:] - inset]))
        gh, gw = gray.shape
        bx0, by0 = max(0, int(bx0)), max(0, int(by0))
        bx1, by1 = min(gw, int(math.ceil(bx1))), min(gh, int(math.ceil(by1)))
        self._win, self._prev, self._feats = win, gray, None
        if bx1 - bx0 < 8 or by1 - by0 < 8:
            return
        pts = cv2.goodFeaturesToTrack(
            gray[by0:by1, bx0:bx1],
            maxCorners=self.FEATURES,
            qualityLevel=0.01,
            minDistance=max(2.0, min(bx1 - bx0, by1 - by0) / 12.0),
            blockSize=5,
        )
        if pts is None or len(pts) < self.MIN_POINTS:
            logger.debug("too few features to track (%d)", 0 if pts is None else len(pts))
            return
        self._feats = win.to_frame(pts.reshape(-1, 2) + (bx0, by0))

    def _keep(self, image: np.ndarray, det: Detection, feats: np.ndarray, gray: np.ndarray) -> None:
        """After a flow frame: keep the surviving features and this frame's gray window."""
        win = self._window(det, image.shape)
        if win is None:
            self.reset()
            return
        if win is not self._win:
            gray = win.gray(image)
        self._win, self._prev, self._feats = win, gray, feats

    def _track(
        self, image: np.ndarray, anchor: Detection
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """Track the features from the last frame to ``image``.

        Returns the frame-to-frame similarity [2, 3] (frame pixels), the surviving features
        [N, 2] and this frame's gray window; None when the flow is uncertain (too few points
        survive the forward-backward check or RANSAC, or the motion is implausible).
        """
        import cv2

        win, prev, feats = self._win, self._prev, self._feats
        assert win is not None and prev is not None and feats is not None
        if image.shape[:2] != win.frame_shape:
            logger.debug("flow uncertain: the frame size changed")
            return None
        gray = win.gray(image)
        lk = {
            "winSize": (self.LK_WIN, self.LK_WIN),
            "maxLevel": self.LK_LEVELS,
            "criteria": (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 20, 0.03),
        }
        p0 = win.to_window(feats).reshape(-1, 1, 2)
        p1, st1, _ = cv2.calcOpticalFlowPyrLK(prev, gray, p0, None, **lk)
        back, st2, _ = cv2.calcOpticalFlowPyrLK(gray, prev, p1, None, **lk)
        fb = np.linalg.norm((back - p0).reshape(-1, 2), axis=1)
        ok = (st1.ravel() == 1) & (st2.ravel() == 1) & (fb < self.FB_PX)
        if int(ok.sum()) < self.MIN_POINTS:
            logger.debug("flow uncertain: %d of %d points survive", int(ok.sum()), len(p0))
            return None
        q0 = win.to_frame(p0.reshape(-1, 2)[ok])
        q1 = win.to_frame(p1.reshape(-1, 2)[ok])
        side = anchor.side
        m, inliers = cv2.estimateAffinePartial2D(
            q0,
            q1,
            method=cv2.RANSAC,
            ransacReprojThreshold=max(1.0, self.RANSAC_FRAC * side),
            maxIters=200,
            confidence=0.99,
            refineIters=10,
        )
        if m is None or inliers is None:
            logger.debug("flow uncertain: no similarity fits")
            return None
        inl = inliers.ravel().astype(bool)
        n = int(inl.sum())
        if n < self.MIN_POINTS or n < self.MIN_INLIER_FRAC * len(q0):
            logger.debug("flow uncertain: %d of %d points are inliers", n, len(q0))
            return None
        scale = math.hypot(m[0, 0], m[1, 0])
        angle = math.degrees(math.atan2(m[1, 0], m[0, 0]))
        shift = float(np.linalg.norm(transform_points(m, anchor.centre[None])[0] - anchor.centre))
        if (
            abs(scale - 1.0) > self.MAX_SCALE_STEP
            or abs(angle) > self.MAX_ROTATION_DEG
            or shift > self.MAX_SHIFT * side
        ):
            logger.debug(
                "flow uncertain: scale %.3f, rotation %.1f deg, shift %.1f px", scale, angle, shift
            )
            return None
        return m, q1[inl], gray
