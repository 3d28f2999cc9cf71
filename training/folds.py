"""k-fold cross-validation over clip ids, and the per-fold table with the mean.

The dual-branch paper cross-validated over Train+Val with 5 folds. :func:`kfold` only splits ids
(the trainer runs the folds); :func:`summarize_folds` turns each fold's :class:`Scores` into
the table the trainer prints and the dict it stores.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from eri.models.spec import EMOTIONS
from eri.training.metrics import DECIMALS, EvaluationError, Scores, format_table


def kfold(clip_ids: Sequence[str], k: int, seed: int = 0) -> list[tuple[list[str], list[str]]]:
    """Split ``clip_ids`` into ``k`` folds: ``[(train_ids, val_ids)] * k``.

    The val parts partition the ids (each id is validated exactly once, sizes differ by at most
    one) and each train part is the rest. The folds depend only on the set of ids, ``k`` and
    ``seed`` (not on the input order); within a part, ids keep the input order.
    """
    ids = list(clip_ids)
    dups = [i for i, count in Counter(ids).items() if count > 1]
    if dups:
        raise EvaluationError(f"Clip id {dups[0]!r} appears twice; clip ids must be unique.")
    if not 2 <= k <= len(ids):
        fix = (
            f"choose --folds between 2 and {len(ids)}"
            if len(ids) >= 2
            else "cross-validation needs at least 2 clips"
        )
        raise EvaluationError(f"Cannot make {k} folds from {len(ids)} clip(s); {fix}.")
    order = np.random.default_rng(seed).permutation(len(ids))
    ranked = sorted(ids)
    fold_of = {ranked[i]: f for f, part in enumerate(np.array_split(order, k)) for i in part}
    return [
        ([i for i in ids if fold_of[i] != f], [i for i in ids if fold_of[i] == f]) for f in range(k)
    ]


@dataclass
class FoldSummary:
    """Per-fold scores and their mean: ``mean.pcc`` [7] is the mean over folds of each
    emotion's PCC, ``mean.mean_pcc`` the mean of the folds' mean PCCs, ``mean.collapsed`` [7]
    True where any fold collapsed, ``mean.n`` the clips over all folds; ``std_pcc`` [7] and
    ``std_mean_pcc`` the spread over folds (population standard deviation)."""

    folds: list[Scores]
    mean: Scores
    std_pcc: np.ndarray
    std_mean_pcc: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "folds": [s.to_dict() for s in self.folds],
            "mean": self.mean.to_dict(),
            "std": {
                "pcc": {e: float(v) for e, v in zip(EMOTIONS, self.std_pcc)},
                "mean_pcc": float(self.std_mean_pcc),
            },
        }

    def table(self, title: str = "") -> str:
        """One row per fold, then the mean row, in the papers' layout."""
        rows = [(f"fold {i + 1}", s) for i, s in enumerate(self.folds)]
        rows.append((f"mean of {len(self.folds)}", self.mean))
        spread = f"std over folds of the mean PCC: {self.std_mean_pcc:.{DECIMALS}f}"
        text = format_table(rows, extra=spread)
        return f"{title}\n{text}" if title else text


def summarize_folds(fold_scores: Sequence[Scores]) -> FoldSummary:
    """Each fold's validation :class:`Scores` -> the :class:`FoldSummary` with their mean."""
    folds = list(fold_scores)
    if not folds:
        raise ValueError("summarize_folds needs the scores of at least one fold.")
    pcc = np.stack([s.pcc for s in folds])
    means = np.array([s.mean_pcc for s in folds])
    mean = Scores(
        pcc=pcc.mean(axis=0),
        mean_pcc=float(means.mean()),
        collapsed=np.any([s.collapsed for s in folds], axis=0),
        n=sum(s.n for s in folds),
    )
    return FoldSummary(folds, mean, pcc.std(axis=0), float(means.std()))
