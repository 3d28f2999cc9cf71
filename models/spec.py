"""The facts every part of ERI Live shares: emotion names, the window, the face crop.

One place for each: training, live inference, export and the CSV writer import these and
never restate them. Audio constants live in :mod:`models.audio`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

#: The seven Hume-Reaction emotions, in the order of every model output, CSV column and plot.
EMOTIONS: tuple[str, ...] = (
    "adoration",
    "amusement",
    "anxiety",
    "disgust",
    "empathic_pain",
    "fear",
    "surprise",
)
NUM_EMOTIONS = len(EMOTIONS)


def _from_dict(cls, data: dict[str, Any] | None):
    """Build a frozen spec dataclass from a dict, refusing unknown keys with a clear message."""
    if data is None:
        return cls()
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(
            f"{cls.__name__} got unknown fields {unknown}; valid fields are {sorted(known)}."
        )
    kwargs = {k: tuple(map(tuple, v)) if k == "template" else v for k, v in data.items()}
    return cls(**kwargs)


@dataclass(frozen=True)
class WindowSpec:
    """T samples spaced uniformly over the last ``context_s`` seconds.

    A window ending at ``end`` over a span ``[start, end]`` samples the right edge of each of
    T equal sub-intervals: ``t_i = start + (i + 1) * span / T``, so the newest sample is ``end``
    and, for a full window, the sample period is ``context_s / T``. Before ``context_s`` seconds
    of history exist the span is what there is, as a short training clip would be.
    """

    num_samples: int = 32
    context_s: float = 12.8

    def __post_init__(self) -> None:
        if self.num_samples < 1:
            raise ValueError(f"WindowSpec.num_samples must be >= 1, got {self.num_samples}.")
        if not self.context_s > 0:
            raise ValueError(f"WindowSpec.context_s must be > 0, got {self.context_s}.")

    @property
    def period_s(self) -> float:
        """Spacing of the samples of a full window, in seconds."""
        return self.context_s / self.num_samples

    def sample_times(self, end_s: float, start_s: float = 0.0) -> np.ndarray:
        """Sample times [T] (float64 seconds) of the window ending at ``end_s``.

        ``start_s`` is when the source's history begins; the span is
        ``min(context_s, end_s - start_s)``.
        """
        span = min(self.context_s, max(0.0, end_s - start_s))
        steps = np.arange(1, self.num_samples + 1, dtype=np.float64)
        return (end_s - span) + steps * (span / self.num_samples)

    def clip_sample_times(self, duration_s: float) -> np.ndarray:
        """Sample times [T] spread uniformly over a whole clip ``[0, duration_s]`` (training)."""
        steps = np.arange(1, self.num_samples + 1, dtype=np.float64)
        return steps * (max(0.0, duration_s) / self.num_samples)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> WindowSpec:
        return _from_dict(cls, data)


def nearest_indices(times: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """For each query time, the index of the nearest entry of the sorted ``times`` [N].

    Ties go to the earlier entry. Returns int64 [len(queries)]. ``times`` must be non-empty.
    """
    times = np.asarray(times, dtype=np.float64)
    queries = np.asarray(queries, dtype=np.float64)
    if times.size == 0:
        raise ValueError("nearest_indices needs at least one time.")
    right = np.searchsorted(times, queries, side="left").clip(1, times.size - 1)
    left = right - 1
    if times.size == 1:
        return np.zeros(queries.shape, dtype=np.int64)
    pick_right = (times[right] - queries) < (queries - times[left])
    return np.where(pick_right, right, left).astype(np.int64)


#: 112x112 face template: image-left eye, image-right eye, nose tip, mouth centre (pixels).
#: The ArcFace 5-point template with the mouth corners averaged, widened by ``CropSpec.margin``
#: so the crop keeps the brows, forehead and chin that expressions move.
_ARCFACE_4PT = (
    (38.2946, 51.6963),
    (73.5318, 51.5014),
    (56.0252, 71.7366),
    (56.1396, 92.2848),
)


@dataclass(frozen=True)
class CropSpec:
    """The aligned face crop every model sees: RGB, ``size`` x ``size``, float in [0, 1].

    The crop is the similarity transform (rotation, uniform scale, translation) taking the four
    landmarks (image-left eye, image-right eye, nose tip, mouth centre) onto ``template``,
    shrunk towards the centre by ``margin`` (1.0 = ArcFace's tight crop). Per-channel mean/std
    normalisation happens inside each model, so it travels with the weights and the ONNX.
    """

    size: int = 112
    margin: float = 0.8
    template: tuple[tuple[float, float], ...] = _ARCFACE_4PT

    def template_points(self) -> np.ndarray:
        """Landmark targets [4, 2] in crop pixels, after the margin is applied."""
        pts = np.asarray(self.template, dtype=np.float64) * (self.size / 112.0)
        centre = np.array([self.size / 2.0, self.size / 2.0])
        return centre + (pts - centre) * self.margin

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["template"] = [list(p) for p in self.template]
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> CropSpec:
        return _from_dict(cls, data)
