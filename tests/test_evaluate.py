"""`eri evaluate` and evaluate_bundle: an untrained bundle scored on the generated dataset, the
files it writes, and one sentence (exit 1) for each input it cannot use."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from eri.models.spec import EMOTIONS
from eri.realtime.cli import main
from eri.training.evaluate import labels_of
from eri.training.metrics import EMOTION_TITLES, pearson_per_emotion
from tests.training_fixtures import FIXTURE_WINDOW


@pytest.fixture(scope="module")
def small_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained dual_branch bundle on the training fixtures' window (8 samples over 2 s)."""
    from eri.models.bundle import save_bundle, untrained_bundle
    from eri.models.spec import WindowSpec

    bundle = untrained_bundle("dual_branch", window=WindowSpec(**FIXTURE_WINDOW))
    return save_bundle(bundle.model, tmp_path_factory.mktemp("bundle") / "untrained")


def _read_csv(path: Path) -> list[list[str]]:
    with path.open(newline="") as f:
        return list(csv.reader(f))


def test_bundle_config_shares_the_fixture_cache(small_bundle, preprocess_config):
    from eri.models.bundle import load_bundle
    from eri.training.preprocess import PreprocessConfig

    config = PreprocessConfig.from_model(load_bundle(small_bundle).model)
    assert config.key() == preprocess_config.key()


def test_evaluate_command_on_the_generated_dataset(
    small_bundle, generated_dataset, preprocessed, preprocess_cache_root, tmp_path, capsys
):
    """The Val split, from the cache the fixture built: table, predictions CSV, metrics.json."""
    from eri.training.data import open_dataset

    out = tmp_path / "eval"
    args = [str(small_bundle), "--data", str(generated_dataset), "--split", "Val", "--cache"]
    args += [str(preprocess_cache_root), "--out", str(out), "--no-progress", "--device", "cpu"]
    assert main(["evaluate", *args]) == 0
    clips = open_dataset(generated_dataset).labelled("Val")

    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == [*" ".join(EMOTION_TITLES).split(), "Mean", "n"]
    row = lines[2].split()
    assert row[0] == "Val" and row[-1] == str(len(clips))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["trained"] is False and metrics["architecture"] == "dual_branch"
    assert list(metrics["splits"]) == ["Val"] and metrics["skipped"] == []
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json", "predictions_Val.csv"]

    table = _read_csv(out / "predictions_Val.csv")
    assert table[0] == ["clip_id", "split", *EMOTIONS]
    assert [r[:2] for r in table[1:]] == [[c.clip_id, "Val"] for c in clips]  # one row per clip
    pred = np.array([r[2:] for r in table[1:]], dtype=np.float64)
    assert np.isfinite(pred).all() and ((pred >= 0) & (pred <= 1)).all()
    s = metrics["splits"]["Val"]
    assert s["n"] == len(clips)
    # the stored PCC are those of the written predictions (rounded to 6 decimals)
    got = np.array([s["pcc"][e] for e in EMOTIONS])
    np.testing.assert_allclose(got, pearson_per_emotion(pred, labels_of(clips)), atol=1e-4)
    assert s["mean_pcc"] == pytest.approx(got.mean(), abs=1e-12)
    assert row[-2] == f"{s['mean_pcc']:.4f}"
    # an untrained model is near-constant: a collapsed emotion is a 0 marked with *
    for e, cell in zip(EMOTIONS, row[1:8]):
        assert cell.endswith("*") == (e in s["collapsed"])
        if e in s["collapsed"]:
            assert s["pcc"][e] == 0.0 and np.ptp(pred[:, EMOTIONS.index(e)]) <= 1e-5


@pytest.mark.slow
def test_evaluate_bundle_scores_every_labelled_split(
    small_bundle, generated_dataset, preprocessed, preprocess_cache_root
):
    from eri.training.data import open_dataset
    from eri.training.evaluate import evaluate_bundle

    scores = evaluate_bundle(
        small_bundle, generated_dataset, None, preprocess_cache_root, device="cpu", progress=False
    )
    index = open_dataset(generated_dataset)
    assert list(scores) == ["Train", "Val"]  # Test has no labels: not scored
    for split, s in scores.items():
        assert s.n == len(index.labelled(split)) and np.isfinite(s.pcc).all()
        assert s.mean_pcc == pytest.approx(s.pcc.mean())


def test_predict_restores_training_mode(small_bundle, preprocessed, generated_dataset):
    from eri.models.bundle import untrained_bundle
    from eri.models.spec import WindowSpec
    from eri.training.data import open_dataset
    from eri.training.evaluate import predict
    from eri.training.preprocess import WindowDataset

    model = untrained_bundle("dual_branch", window=WindowSpec(**FIXTURE_WINDOW)).model.train()
    clips = preprocessed.cached(open_dataset(generated_dataset).labelled("Val"))[:3]
    a = predict(model, WindowDataset(preprocessed, clips), batch_size=2)
    b = predict(model, WindowDataset(preprocessed, clips), batch_size=3)
    assert model.training and a.shape == (3, 7) and a.dtype == np.float32
    np.testing.assert_allclose(a, b, atol=1e-6)  # eval mode: no dropout, batch-independent


# --------------------------------------------------------------------------- bad input
@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An ABAW5 layout whose media are never decoded (the errors come before preprocessing)."""
    root = tmp_path_factory.mktemp("tiny")
    labels = ",".join(["0.5"] * 7)
    rows = ["File_ID,Split,Adoration,Amusement,Anxiety,Disgust,Empathic-Pain,Fear,Surprise"]
    rows += [f"a{i},Train,{labels}" for i in range(3)] + ["t0,Test" + "," * 7]
    for line in rows[1:]:
        clip_id, split = line.split(",")[:2]
        (root / split / "mp4").mkdir(parents=True, exist_ok=True)
        (root / split / "mp4" / f"{clip_id}.mp4").write_bytes(b"")
    (root / "data_info.csv").write_text("\n".join(rows) + "\n")
    return root


@pytest.mark.parametrize(
    "case,says",
    [
        ("not_a_bundle", "is not a model bundle"),
        ("missing_bundle", "does not exist"),
        ("unknown_split", "has no clips in split 'Val'; valid splits are: Train, Test"),
        ("unlabelled_split", "Split 'Test'"),
        ("no_labels_at_all", "has no labelled split"),
        ("bad_device", "--device tpu is not a device"),
    ],
)
def test_bad_input_is_one_sentence_and_exit_1(
    case, says, small_bundle, tiny_dataset, tmp_path, caplog, monkeypatch
):
    def no_work(*args, **kwargs):
        pytest.fail("preprocessing started before the input was checked")

    monkeypatch.setattr("eri.training.preprocess.preprocess", no_work)
    bundle, data, extra = str(small_bundle), tiny_dataset, []
    if case == "not_a_bundle":
        bundle = str(tiny_dataset)
    elif case == "missing_bundle":
        bundle = str(tmp_path / "nope")
    elif case == "unknown_split":
        extra = ["--split", "Val"]
    elif case == "unlabelled_split":
        extra = ["--split", "Test"]
    elif case == "no_labels_at_all":
        data = tmp_path / "unlabelled"
        shutil.copytree(tiny_dataset, data)
        text = (data / "data_info.csv").read_text().splitlines()
        header = text[0]
        (data / "data_info.csv").write_text("\n".join([header, text[-1]]) + "\n")
    elif case == "bad_device":
        extra = ["--device", "tpu"]
    caplog.clear()
    assert main(["evaluate", bundle, "--data", str(data), *extra]) == 1
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and says in errors[0], errors
    assert "\n" not in errors[0] and errors[0].endswith(".")  # one sentence


def test_unwritable_out_is_refused_before_work(small_bundle, tiny_dataset, tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("")
    args = [str(small_bundle), "--data", str(tiny_dataset), "--out", str(blocker / "eval")]
    assert main(["evaluate", *args]) == 1
    assert "--out" in caplog.text and "is a file, not a folder" in caplog.text
