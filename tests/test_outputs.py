"""The predictions CSV reader and the report plot's helpers (realtime/outputs.py)."""

from __future__ import annotations

import numpy as np
import pytest

from eri.models.spec import EMOTIONS
from eri.realtime.outputs import (
    PredictionWriter,
    _spans,
    envelope,
    plot_curves,
    prediction_row,
    read_predictions,
)


def test_spans_are_the_runs_of_the_mask():
    t = np.arange(8) * 0.5
    mask = np.array([1, 1, 0, 1, 0, 0, 1, 1], bool)
    # A run to the end closes one frame period (0.5 s) after the last time.
    assert _spans(t, mask) == [(0.0, 1.0), (1.5, 2.0), (3.0, 4.0)]
    assert _spans(t, np.zeros(8, bool)) == []
    assert _spans(t, np.ones(8, bool)) == [(0.0, 4.0)]
    assert _spans(np.array([2.0]), np.array([True])) == [(2.0, 2.04)]


def test_envelope_keeps_each_runs_minimum_and_maximum_in_time_order():
    rng = np.random.default_rng(3)
    n, bins = 10_007, 100
    t = np.arange(n) / 30.0
    y = rng.random((n, 7))
    et, ey = envelope(t, y, bins)
    assert et.shape == ey.shape == (2 * bins, 7)
    edges = np.linspace(0, n, bins + 1).astype(int)
    for c in range(7):
        assert np.all(np.diff(et[:, c]) >= 0)  # time order within each column
        for b in range(bins):
            run = y[edges[b] : edges[b + 1], c]
            pair = ey[2 * b : 2 * b + 2, c]
            assert sorted(pair) == [run.min(), run.max()]  # exact: values are copied
            # ... at the times they were measured.
            for v, tv in zip(ey[2 * b : 2 * b + 2, c], et[2 * b : 2 * b + 2, c]):
                assert y[int(round(tv * 30)), c] == v
    # The overall extremes survive.
    np.testing.assert_array_equal(ey.max(axis=0), y.max(axis=0))
    np.testing.assert_array_equal(ey.min(axis=0), y.min(axis=0))


def test_envelope_leaves_short_curves_unchanged():
    t = np.arange(150) / 30.0
    y = np.random.default_rng(0).random((150, 7))
    et, ey = envelope(t, y, 100)
    np.testing.assert_array_equal(ey, y)
    np.testing.assert_array_equal(et, np.repeat(t[:, None], 7, axis=1))


def test_read_predictions_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    values = rng.random((500, 7))
    path = tmp_path / "predictions.csv"
    with PredictionWriter(path) as w:
        for i, v in enumerate(values):
            w.write(prediction_row(i / 30.0, i, i % 3 != 0, i % 2 == 0, v))
    data = read_predictions(path)
    np.testing.assert_array_equal(data["frame_index"], np.arange(500))
    np.testing.assert_array_equal(data["face_detected"], (np.arange(500) % 3 != 0).astype(float))
    got = np.stack([data[e] for e in EMOTIONS], axis=1)
    np.testing.assert_allclose(got, values, atol=5e-5)  # the CSV keeps 4 decimals
    empty = tmp_path / "empty.csv"
    PredictionWriter(empty).close()
    assert read_predictions(empty)["time_s"].shape == (0,)
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="columns"):
        read_predictions(tmp_path / "bad.csv")


def test_report_of_a_long_session_with_many_face_lost_spans(tmp_path):
    """30 minutes at 30 fps with the face lost in ~500 short spans: a readable PNG whose
    shading covers the lost share of the plot."""
    import matplotlib.image as mpimg

    n = 54_000
    rng = np.random.default_rng(0)
    t = np.arange(n) / 30.0
    y = np.full((n, 7), 0.5)
    face = (rng.random(n) > 0.01).astype(float)
    face[n // 2 : n // 2 + 9000] = 0.0  # five minutes without a face in the middle
    path = plot_curves(t, y, face, tmp_path / "report.png", title="long")
    img = mpimg.imread(path)
    assert img.shape[:2] == (900, 1100)
    # The five-minute gap is a wide grey (0.85) band across the first axis' middle.
    row = img[60, :, :3]  # a quarter down the first axis, away from the curve at 0.5
    grey = np.all(np.abs(row - 0.85) < 0.02, axis=1)
    assert 120 < grey.sum() < 200  # 5 of 30 minutes: ~1/6 of ~950 plot pixels, plus the short spans
