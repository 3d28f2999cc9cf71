"""The ERI metric, the training losses, k-fold splits and the training curves, checked against
scipy / numpy references on seeded random data."""

from __future__ import annotations

import csv
import warnings

import numpy as np
import pytest
import torch
from scipy.stats import pearsonr

from eri.errors import EriError
from eri.models.spec import EMOTIONS
from eri.training.curves import write_curves
from eri.training.folds import kfold, summarize_folds
from eri.training.losses import LOSSES, concordance, make_loss, pearson
from eri.training.metrics import (
    EMOTION_TITLES,
    EvaluationError,
    Scores,
    collapsed,
    format_table,
    pearson_per_emotion,
    score,
)

RNG = np.random.default_rng(0)


def _data(n: int = 50, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    target = rng.uniform(0, 1, (n, 7))
    pred = 0.5 * target + 0.5 * rng.uniform(0, 1, (n, 7))
    return pred, target


def _scipy_r(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    return np.array([pearsonr(pred[:, i], target[:, i])[0] for i in range(pred.shape[1])])


def _ccc(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Lin's CCC per column, population moments (numpy reference)."""
    cov = ((x - x.mean(0)) * (y - y.mean(0))).mean(0)
    return 2 * cov / (x.var(0) + y.var(0) + (x.mean(0) - y.mean(0)) ** 2)


# --------------------------------------------------------------------------- metrics
def test_pearson_matches_scipy():
    pred, target = _data()
    np.testing.assert_allclose(
        pearson_per_emotion(pred, target), _scipy_r(pred, target), rtol=1e-12
    )
    s = score(pred, target)
    assert s.mean_pcc == pytest.approx(_scipy_r(pred, target).mean(), rel=1e-12)
    assert s.n == 50 and not s.collapsed.any()


def test_constant_prediction_is_zero_and_collapsed():
    pred, target = _data()
    pred[:, 2] = 0.37
    pred[:, 5] = 0.5 + 1e-8 * RNG.standard_normal(50)  # constant-ish: below the 1e-6 spread
    r = pearson_per_emotion(pred, target)
    assert r[2] == 0.0 and r[5] == 0.0 and np.isfinite(r).all()
    keep = [0, 1, 3, 4, 6]
    np.testing.assert_allclose(r[keep], _scipy_r(pred[:, keep], target[:, keep]), rtol=1e-12)
    assert collapsed(pred).tolist() == [False, False, True, False, False, True, False]
    s = score(pred, target)
    assert s.mean_pcc == pytest.approx(r.sum() / 7, rel=1e-12)
    assert s.to_dict()["collapsed"] == ["anxiety", "fear"]


def test_constant_labels_and_single_row_give_zero_not_nan():
    pred, target = _data(n=10)
    target[:, 0] = 0.2
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no division warnings either
        r = pearson_per_emotion(pred, target)
        one = score(pred[:1], target[:1])
    assert r[0] == 0.0 and np.isfinite(r).all()
    assert one.pcc.tolist() == [0.0] * 7 and one.collapsed.all() and one.mean_pcc == 0.0


def test_nan_and_empty_inputs_are_user_errors():
    pred, target = _data(n=5)
    pred[1, 3] = np.nan
    with pytest.raises(EvaluationError, match="1 prediction value"):
        score(pred, target)
    with pytest.raises(EvaluationError, match="no clips"):
        score(np.zeros((0, 7)), np.zeros((0, 7)))


def test_scores_round_trip_and_table_layout():
    pred, target = _data()
    pred[:, 6] = 0.1
    s = score(pred, target)
    back = Scores.from_dict(s.to_dict())
    np.testing.assert_array_equal(back.pcc, s.pcc)
    assert back.mean_pcc == s.mean_pcc and back.n == s.n
    assert back.collapsed.tolist() == s.collapsed.tolist()
    lines = s.table("Val").splitlines()
    assert lines[0].split() == [*" ".join(EMOTION_TITLES).split(), "Mean", "n"]
    row = lines[2].split()
    assert row[0] == "Val" and row[-2] == f"{s.mean_pcc:.4f}" and row[-1] == "50"
    assert row[1:8] == [f"{v:.4f}" for v in s.pcc[:6]] + ["0.0000*"]
    assert "collapsed" in lines[3]
    two = format_table([("Train", score(*_data(seed=1))), ("Val", s)]).splitlines()
    assert [line.split()[0] for line in two[2:4]] == ["Train", "Val"]


# --------------------------------------------------------------------------- losses
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_losses_match_references(dtype):
    pred, target = _data(n=64, seed=3)
    p, t = torch.tensor(pred, dtype=dtype), torch.tensor(target, dtype=dtype)
    ref_r = _scipy_r(pred, target)
    # float64: what remains is EPS / sum of squares (about 3e-9 here), see eri.training.losses
    rtol = 1e-5 if dtype == torch.float32 else 1e-7
    np.testing.assert_allclose(pearson(p, t).numpy(), ref_r, rtol=rtol)
    np.testing.assert_allclose(concordance(p, t).numpy(), _ccc(pred, target), rtol=rtol)
    assert make_loss("pcc")(p, t).item() == pytest.approx(1 - ref_r.mean(), rel=rtol)
    assert make_loss("ccc")(p, t).item() == pytest.approx(1 - _ccc(pred, target).mean(), rel=rtol)
    assert make_loss("mse")(p, t).item() == pytest.approx(((pred - target) ** 2).mean(), rel=rtol)


@pytest.mark.parametrize("name", list(LOSSES))
def test_losses_are_finite_and_differentiable_on_constant_batches(name):
    target = torch.rand(8, 7, dtype=torch.float64)
    for pred0, tgt in (
        (torch.full((8, 7), 0.4, dtype=torch.float64), target),  # constant prediction
        (torch.rand(8, 7, dtype=torch.float64), torch.full((8, 7), 0.3, dtype=torch.float64)),
        (torch.rand(1, 7, dtype=torch.float64), torch.rand(1, 7, dtype=torch.float64)),  # B = 1
    ):
        pred = pred0.clone().requires_grad_(True)
        loss = make_loss(name)(pred, tgt)
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(pred.grad).all()
    if name == "pcc":
        assert make_loss(name)(torch.full((8, 7), 0.4), target.float()).item() == pytest.approx(1.0)


def test_loss_gradients_match_finite_differences():
    pred = torch.rand(6, 7, dtype=torch.float64, requires_grad=True)
    target = torch.rand(6, 7, dtype=torch.float64)
    for loss in LOSSES.values():
        assert torch.autograd.gradcheck(lambda p, fn=loss: fn(p, target), (pred,))


def test_unknown_loss_lists_the_valid_ones():
    with pytest.raises(EriError, match="Unknown loss 'l1'; choose one of: mse, pcc, ccc"):
        make_loss("l1")


# --------------------------------------------------------------------------- folds
def test_kfold_partitions_deterministically():
    ids = [f"clip{i:03d}" for i in range(23)]
    folds = kfold(ids, 5, seed=7)
    assert len(folds) == 5
    vals = [v for _, v in folds]
    assert sorted(sum(vals, [])) == ids  # every id validated exactly once
    assert sorted(len(v) for v in vals) == [4, 4, 5, 5, 5]
    for train, val in folds:
        assert not set(train) & set(val) and sorted(train + val) == ids
        assert train == [i for i in ids if i in train]  # input order kept
    assert kfold(ids, 5, seed=7) == folds
    assert kfold(ids[::-1], 5, seed=7)[0][1] == folds[0][1][::-1]  # same sets, any input order
    assert kfold(ids, 5, seed=8) != folds


@pytest.mark.parametrize("k,n", [(6, 5), (1, 5), (2, 1)])
def test_kfold_refuses_impossible_fold_counts(k, n):
    with pytest.raises(EriError, match=f"Cannot make {k} folds from {n} clip"):
        kfold([str(i) for i in range(n)], k)


def test_kfold_refuses_duplicate_ids():
    with pytest.raises(EriError, match="'b' appears twice"):
        kfold(["a", "b", "b", "c"], 2)


def test_fold_summary_means_and_table():
    folds = [score(*_data(n=30, seed=s)) for s in range(3)]
    folds[1].collapsed[0] = True
    summary = summarize_folds(folds)
    np.testing.assert_allclose(summary.mean.pcc, np.mean([f.pcc for f in folds], axis=0))
    assert summary.mean.mean_pcc == pytest.approx(np.mean([f.mean_pcc for f in folds]))
    assert summary.std_mean_pcc == pytest.approx(np.std([f.mean_pcc for f in folds]))
    assert summary.mean.n == 90 and summary.mean.collapsed.tolist() == [True] + [False] * 6
    lines = summary.table().splitlines()
    assert [line.split()[0] for line in lines[2:6]] == ["fold", "fold", "fold", "mean"]
    assert lines[5].split()[-2] == f"{summary.mean.mean_pcc:.4f}"
    d = summary.to_dict()
    assert len(d["folds"]) == 3 and set(d["std"]["pcc"]) == set(EMOTIONS)


# --------------------------------------------------------------------------- curves
def test_curves_csv_and_png(tmp_path):
    history = [
        {"stage": "visual", "epoch": 1, "train_loss": 0.05, "val_mean_pcc": 0.1, "lr": 1e-4},
        {"stage": "visual", "epoch": 2, "train_loss": 0.04, "val_mean_pcc": 0.2, "lr": 1e-4},
        {"stage": "fusion", "epoch": 1, "train_loss": 0.03, "val_loss": 0.035, "lr": 5e-5},
    ]
    csv_path, png_path = write_curves(history, tmp_path / "run")
    with csv_path.open() as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["stage", "epoch", "train_loss", "val_mean_pcc", "lr", "val_loss"]
    assert rows[1] == ["visual", "1", "0.05", "0.1", "0.0001", ""]
    assert rows[3] == ["fusion", "1", "0.03", "", "5e-05", "0.035"]
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["curves.csv", "curves.png"]
