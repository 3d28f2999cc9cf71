"""The one face crop used by training and live inference.

A face is aligned by the least-squares similarity transform (rotation, uniform scale,
translation; Umeyama 1991) that takes four landmarks -- image-left eye, image-right eye, nose
tip, mouth centre, in source pixels -- onto :meth:`CropSpec.template_points`, and resampled with
``cv2.warpAffine`` (bilinear). Pixels outside the source image are black (``BORDER_CONSTANT``
0): the ArcFace convention, deterministic, and it does not invent smeared texture at the edge.

When landmarks are unreliable, :func:`crop_from_box` maps a face box onto the box a typical
BlazeFace detection has in the aligned crop (no rotation), so both paths frame faces alike.
"""

from __future__ import annotations

import cv2
import numpy as np

from eri.models.spec import CropSpec

__all__ = [
    "FACE_BOX_IN_TEMPLATE",
    "align_face",
    "crop_from_box",
    "crop_matrix_from_box",
    "similarity_transform",
    "to_tensor_layout",
    "transform_points",
]

#: Where a BlazeFace box ``(x0, y0, x1, y1)`` lands in the 112-px template at margin 1.0, so
#: :func:`crop_from_box` frames a face as :func:`align_face` would. Measured as the typical
#: value (per-clip medians of the box mapped through the aligning similarity) on the frontal
#: faces of the shared test media, made square as BlazeFace boxes are. Margin and size are
#: applied exactly as for the template points.
FACE_BOX_IN_TEMPLATE: tuple[float, float, float, float] = (13.0, 32.0, 100.0, 119.0)


def similarity_transform(src_points: np.ndarray, dst_points: np.ndarray) -> np.ndarray:
    """Least-squares similarity taking ``src_points`` [K, 2] onto ``dst_points`` [K, 2].

    Umeyama's closed form (no reflection). Returns the [2, 3] float64 matrix ``M`` with
    ``dst ~= M[:, :2] @ src + M[:, 2]``. Raises ``ValueError`` for degenerate input (fewer than
    two distinct points).
    """
    src = np.asarray(src_points, dtype=np.float64)
    dst = np.asarray(dst_points, dtype=np.float64)
    if src.ndim != 2 or src.shape[1] != 2 or src.shape != dst.shape or src.shape[0] < 2:
        raise ValueError(
            f"similarity_transform needs two [K, 2] arrays with K >= 2, got {src.shape} "
            f"and {dst.shape}."
        )
    src_mean = src.mean(axis=0)
    dst_mean = dst.mean(axis=0)
    src_c = src - src_mean
    dst_c = dst - dst_mean
    src_var = float((src_c**2).sum()) / src.shape[0]
    if not np.isfinite(src_var) or src_var <= 1e-12:
        raise ValueError("similarity_transform got degenerate (coincident or NaN) source points.")
    cov = dst_c.T @ src_c / src.shape[0]
    u, s, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[1] = -1.0
    rot = u @ np.diag(d) @ vt
    scale = float((s * d).sum()) / src_var
    m = np.empty((2, 3), dtype=np.float64)
    m[:, :2] = scale * rot
    m[:, 2] = dst_mean - m[:, :2] @ src_mean
    return m


def transform_points(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a [2, 3] affine ``matrix`` to ``points`` [K, 2]; returns [K, 2] float64."""
    pts = np.asarray(points, dtype=np.float64)
    return pts @ matrix[:, :2].T + matrix[:, 2]


def _check_image(image: np.ndarray) -> None:
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(
            f"expected an [H, W, 3] uint8 RGB image, got shape {image.shape} {image.dtype}."
        )


def _warp(image: np.ndarray, matrix: np.ndarray, size: int) -> np.ndarray:
    return cv2.warpAffine(
        image,
        matrix,
        (size, size),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=(0, 0, 0),
    )


def align_face(image: np.ndarray, points: np.ndarray, spec: CropSpec | None = None) -> np.ndarray:
    """Aligned crop [S, S, 3] uint8 of ``image`` [H, W, 3] uint8 RGB.

    ``points`` [4, 2] are pixels: image-left eye, image-right eye, nose tip, mouth centre. The
    similarity to ``spec.template_points()`` is applied with bilinear sampling; outside the
    image is black.
    """
    spec = spec or CropSpec()
    _check_image(image)
    matrix = similarity_transform(points, spec.template_points())
    return _warp(image, matrix, spec.size)


def crop_matrix_from_box(box: np.ndarray | tuple, spec: CropSpec | None = None) -> np.ndarray:
    """The [2, 3] matrix (scale + translation) :func:`crop_from_box` warps with."""
    spec = spec or CropSpec()
    x0, y0, x1, y1 = (float(v) for v in box)
    side = float(np.sqrt(max(x1 - x0, 1e-6) * max(y1 - y0, 1e-6)))
    tx0, ty0, tx1, ty1 = FACE_BOX_IN_TEMPLATE
    k = spec.size / 112.0
    centre = spec.size / 2.0
    t_cx = centre + ((tx0 + tx1) / 2.0 * k - centre) * spec.margin
    t_cy = centre + ((ty0 + ty1) / 2.0 * k - centre) * spec.margin
    t_side = np.sqrt((tx1 - tx0) * (ty1 - ty0)) * k * spec.margin
    s = t_side / side
    return np.array(
        [[s, 0.0, t_cx - s * (x0 + x1) / 2.0], [0.0, s, t_cy - s * (y0 + y1) / 2.0]],
        dtype=np.float64,
    )


def crop_from_box(
    image: np.ndarray, box: np.ndarray | tuple, spec: CropSpec | None = None
) -> np.ndarray:
    """Fallback crop [S, S, 3] uint8 from a face ``box`` (x0, y0, x1, y1 pixels), no rotation.

    The box's centre and geometric-mean side are mapped onto :data:`FACE_BOX_IN_TEMPLATE`
    (after ``spec``'s size and margin), so the face fills the crop as an aligned one would.
    """
    spec = spec or CropSpec()
    _check_image(image)
    return _warp(image, crop_matrix_from_box(box, spec), spec.size)


def to_tensor_layout(crops: np.ndarray) -> np.ndarray:
    """Model input [N, 3, S, S] float32 in [0, 1] (RGB) from crops [N, S, S, 3] uint8."""
    crops = np.asarray(crops)
    if crops.ndim != 4 or crops.shape[3] != 3 or crops.dtype != np.uint8:
        raise ValueError(
            f"to_tensor_layout expects [N, S, S, 3] uint8 crops, got {crops.shape} {crops.dtype}."
        )
    out = np.empty((crops.shape[0], 3, crops.shape[1], crops.shape[2]), dtype=np.float32)
    np.multiply(crops.transpose(0, 3, 1, 2), np.float32(1.0 / 255.0), out=out)
    return out
