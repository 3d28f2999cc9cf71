"""The MediaPipe BlazeFace adapter: a quiet import, native-stderr filtering, and
:class:`BlazeFace`, which turns MediaPipe's output into :class:`Detection` values in frame pixels.

MediaPipe is imported only when a detector is created, so importing this module is cheap.
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

from eri.errors import missing_dependency

logger = logging.getLogger(__name__)

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
    """Import ``mediapipe`` quietly; ``missing_dependency("mediapipe")`` when it is missing.

    Wheels newer than 0.10.21 dropped ``mediapipe.solutions`` and its bundled face models, which
    counts as missing too.
    """
    os.environ.setdefault("GLOG_minloglevel", "2")  # C++ INFO/WARNING off; errors still shown
    warnings.filterwarnings(
        "ignore", message=r"SymbolDatabase\.GetPrototype\(\) is deprecated", category=UserWarning
    )
    try:
        import mediapipe as mp

        mp.solutions.face_detection.FaceDetection  # noqa: B018 (newer wheels dropped it)
    except (ImportError, AttributeError) as exc:
        raise missing_dependency("mediapipe", exc) from exc
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


class BlazeFace:
    """One MediaPipe BlazeFace graph: ``full_range=False`` is the short-range model (faces within
    about 2 m), ``True`` the full-range one (small, distant faces).

    Creating it imports MediaPipe (``missing_dependency("mediapipe")`` when absent) and runs it
    once on a blank image with MediaPipe's start-up log filtered (its log lines come on the first
    run). Calling it detects faces in an RGB image.
    """

    def __init__(self, full_range: bool = False, min_confidence: float = 0.5) -> None:
        mp = _import_mediapipe()
        warm = np.zeros((64, 64, 3), dtype=np.uint8)
        with _filtered_native_stderr():
            self._graph = mp.solutions.face_detection.FaceDetection(
                model_selection=int(full_range), min_detection_confidence=min_confidence
            )
            try:
                self._graph.process(warm)
            except BaseException:
                self._graph.close()
                raise

    def __call__(self, image: np.ndarray, x0: int = 0, y0: int = 0) -> list[Detection]:
        """The faces in ``image`` [H, W, 3] uint8 RGB (C-contiguous), in the pixels of the frame
        it was cut from at (``x0``, ``y0``); the eyes and ears are put image-left first."""
        h, w = image.shape[:2]
        out = self._graph.process(image)
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

    def close(self) -> None:
        """Release the MediaPipe graph."""
        self._graph.close()
