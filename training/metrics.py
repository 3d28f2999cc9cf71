"""The ERI metric: per-emotion Pearson correlation and their mean, in the papers' table layout.

The 5th ABAW ERI challenge scores a system by the Pearson correlation coefficient (PCC) between
predicted and self-reported intensities, computed over all clips of a split for each of the seven
emotions, and by the mean of the seven. A prediction that is constant over the split has no
defined correlation; it is counted as PCC 0 and flagged as *collapsed*, the usual failure of a
regressor that learned only the label means.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from eri.errors import EriError
from eri.models.spec import EMOTIONS, NUM_EMOTIONS

#: Predictions whose spread (max - min over the split) is at most this are constant.
COLLAPSE_ATOL = 1e-6
#: Decimals of PCC in tables (the papers give four: 0.4439).
DECIMALS = 4
#: Column headers of the table, as the papers name the emotions.
EMOTION_TITLES: tuple[str, ...] = tuple(e.replace("_", " ").title() for e in EMOTIONS)
COLLAPSE_MARK = "*"


class EvaluationError(EriError, ValueError):
    """What is evaluated, split or scored cannot be used; the message names it and the fix."""


def _check(pred: np.ndarray, target: np.ndarray | None = None) -> None:
    if pred.ndim != 2 or pred.shape[1] != NUM_EMOTIONS:
        raise ValueError(f"Predictions must be [N, {NUM_EMOTIONS}], got {list(pred.shape)}.")
    if pred.shape[0] == 0:
        raise EvaluationError("There are no clips to score; give a split with labelled clips.")
    if target is not None and target.shape != pred.shape:
        raise ValueError(
            f"Targets {list(target.shape)} do not match predictions {list(pred.shape)}."
        )
    for what, arr in (("prediction", pred), ("label", target)):
        if arr is not None and not np.isfinite(arr).all():
            bad = int((~np.isfinite(arr)).sum())
            raise EvaluationError(
                f"{bad} {what} value(s) are NaN or infinite; "
                + (
                    "the model's weights are broken (retrain or use another bundle)."
                    if what == "prediction"
                    else "fix the labels in the dataset."
                )
            )


def collapsed(pred: np.ndarray, atol: float = COLLAPSE_ATOL) -> np.ndarray:
    """pred [N, 7] -> bool [7]: True where an emotion's prediction is constant over the N rows
    (its spread, max - min, is at most ``atol``)."""
    pred = np.asarray(pred, dtype=np.float64)
    _check(pred)
    return np.ptp(pred, axis=0) <= atol


def pearson_per_emotion(
    pred: np.ndarray, target: np.ndarray, atol: float = COLLAPSE_ATOL
) -> np.ndarray:
    """Pearson r per emotion over the N rows: pred, target [N, 7] -> float64 [7] in [-1, 1].

    A constant column (a collapsed prediction, see :func:`collapsed`, or constant labels) has
    no defined correlation and gives 0.0; the result never holds NaN.
    """
    pred = np.asarray(pred, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    _check(pred, target)
    xc = pred - pred.mean(axis=0)
    yc = target - target.mean(axis=0)
    defined = (np.ptp(pred, axis=0) > atol) & (np.ptp(target, axis=0) > 0)
    denom = np.sqrt((xc * xc).sum(axis=0) * (yc * yc).sum(axis=0))
    r = np.divide((xc * yc).sum(axis=0), denom, out=np.zeros(NUM_EMOTIONS), where=defined)
    return np.clip(r, -1.0, 1.0)


@dataclass
class Scores:
    """The metric of one split (or one fold): PCC per emotion [7], their mean, which emotions
    collapsed [7] (counted as 0 in ``pcc``), and the number of clips scored."""

    pcc: np.ndarray
    mean_pcc: float
    collapsed: np.ndarray
    n: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-able: ``{"pcc": {emotion: r}, "mean_pcc", "collapsed": [emotions], "n"}``."""
        return {
            "pcc": {e: float(v) for e, v in zip(EMOTIONS, self.pcc)},
            "mean_pcc": float(self.mean_pcc),
            "collapsed": [e for e, c in zip(EMOTIONS, self.collapsed) if c],
            "n": int(self.n),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Scores:
        """The inverse of :meth:`to_dict` (metrics.json, bundle provenance)."""
        gone = set(data.get("collapsed", []))
        return cls(
            pcc=np.array([data["pcc"][e] for e in EMOTIONS], dtype=np.float64),
            mean_pcc=float(data["mean_pcc"]),
            collapsed=np.array([e in gone for e in EMOTIONS]),
            n=int(data["n"]),
        )

    def table(self, title: str = "") -> str:
        """This row in the papers' layout (see :func:`format_table`)."""
        return format_table([(title or "PCC", self)])


def score(pred: np.ndarray, target: np.ndarray) -> Scores:
    """Score predictions against labels, both [N, 7] in EMOTIONS order."""
    pcc = pearson_per_emotion(pred, target)
    return Scores(pcc=pcc, mean_pcc=float(pcc.mean()), collapsed=collapsed(pred), n=len(pred))


def format_table(rows: Sequence[tuple[str, Scores]], *, extra: str = "") -> str:
    """A plain-text table in the papers' layout: one row per (name, Scores), the seven
    emotions then their mean as columns, PCC to four decimals; a collapsed emotion's 0 is
    marked ``*`` and explained under the table. ``extra`` is appended as a last line."""
    header = ["", *EMOTION_TITLES, "Mean", "n"]
    body = []
    for name, s in rows:
        cells = [
            f"{v:.{DECIMALS}f}" + (COLLAPSE_MARK if c else "") for v, c in zip(s.pcc, s.collapsed)
        ]
        body.append([name, *cells, f"{s.mean_pcc:.{DECIMALS}f}", str(s.n)])
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = (c.rjust(w) for c, w in zip(cells[1:], widths[1:]))
        return "  ".join([first, *rest]).rstrip()

    out = [line(header), "  ".join("-" * w for w in widths), *(line(r) for r in body)]
    if any(s.collapsed.any() for _, s in rows):
        out.append(f"{COLLAPSE_MARK} constant prediction (collapsed): counted as PCC 0")
    if extra:
        out.append(extra)
    return "\n".join(out)
