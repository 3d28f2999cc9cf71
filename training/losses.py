"""Training losses over a batch of intensities: MSE, PCC and CCC (any recipe may use any).

``pcc`` is 1 - the mean over emotions of Pearson's r over the batch, ``ccc`` 1 - the mean of
Lin's concordance correlation coefficient; both are differentiable and stay finite (values and
gradients) on a batch whose predictions or labels are constant: ``EPS`` is added to the sums of
squares, which moves r by a relative EPS / (2 sum (x - mean)^2), about 1e-8 for a batch of 64
with a standard deviation of 0.1. At an exactly constant prediction r is 0 and its gradient is
finite but steep (about 1 / sqrt(EPS)), as Pearson's r itself is there.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from eri.training.metrics import EvaluationError

#: Keeps the correlations finite on constant batches (added to sums of squares, not variances).
EPS = 1e-8

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _check(pred: torch.Tensor, target: torch.Tensor) -> None:
    if pred.shape != target.shape or pred.dim() != 2:
        raise ValueError(
            f"A loss needs pred and target of one shape [B, K]; got {list(pred.shape)} and "
            f"{list(target.shape)}."
        )


def mse_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error over every element: pred, target [B, K] -> scalar []."""
    _check(pred, target)
    return F.mse_loss(pred, target)


def pearson(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Pearson r over the batch per column: [B, K] -> [K]; 0 for a constant column."""
    _check(pred, target)
    xc = pred - pred.mean(dim=0)
    yc = target - target.mean(dim=0)
    cov = (xc * yc).sum(dim=0)
    return cov / (torch.sqrt((xc * xc).sum(dim=0) + EPS) * torch.sqrt((yc * yc).sum(dim=0) + EPS))


def concordance(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Lin's CCC over the batch per column (population moments): [B, K] -> [K]."""
    _check(pred, target)
    mx, my = pred.mean(dim=0), target.mean(dim=0)
    xc, yc = pred - mx, target - my
    n = pred.shape[0]
    cov = (xc * yc).sum(dim=0)
    spread = (xc * xc).sum(dim=0) + (yc * yc).sum(dim=0) + n * (mx - my) ** 2
    return 2 * cov / (spread + EPS)


def pcc_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - mean per-emotion Pearson r over the batch: [B, K] -> scalar [] in [0, 2]."""
    return 1 - pearson(pred, target).mean()


def ccc_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - mean per-emotion concordance over the batch: [B, K] -> scalar [] in [0, 2]."""
    return 1 - concordance(pred, target).mean()


LOSSES: dict[str, Loss] = {"mse": mse_loss, "pcc": pcc_loss, "ccc": ccc_loss}


def make_loss(name: str) -> Loss:
    """The loss called ``name`` (one of :data:`LOSSES`)."""
    try:
        return LOSSES[name]
    except KeyError:
        raise EvaluationError(
            f"Unknown loss {name!r}; choose one of: {', '.join(LOSSES)}."
        ) from None
