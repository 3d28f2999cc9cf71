"""`eri train`: config merging, recipes, checkpoints and resume, learning on generated data.

The data-backed tests share one preprocessing of the generated dataset (``generated_dataset``
from tests/training_fixtures.py) with a small model: crops of 48 px and 4 samples per window
(the dual-branch ResNet18 stem trained from scratch costs ~6x less per step than at 112 px
with 8 samples, which keeps the learning test in CI time), one-layer Transformers, 32-d
temporal encoders.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from eri.models.spec import EMOTIONS

#: The generated dataset's cues (eri.training.data.generate): visible in the face / audible.
VISIBLE = ("adoration", "amusement", "anxiety", "disgust")
AUDIBLE = ("empathic_pain", "fear", "surprise")

SMALL_MODEL = {
    "spatial_layers": 1,
    "spatial_heads": 2,
    "spatial_ff": 64,
    "temporal_dim": 32,
    "tcn_levels": 2,
    "temporal_layers": 1,
    "temporal_heads": 2,
    "temporal_ff": 64,
}
SMALL = {
    "model": SMALL_MODEL,
    "window": {"num_samples": 4, "context_s": 2.0},
    "crop": {"size": 48},
    "batch_size": 16,
    "lr": 1.0e-3,
    "lr_patience": 3,
}


def small_config(**changes):
    from eri.training.config import TrainConfig, merge, resolve_config

    base = resolve_config(recipe="dual_branch").to_dict()
    return TrainConfig.from_dict(merge(merge(base, SMALL), changes))


# ---------------------------------------------------------------------------- config
def test_recipe_defaults_are_the_papers():
    from eri.training.config import resolve_config

    dual = resolve_config(recipe="dual_branch")
    assert (dual.optimizer, dual.lr, dual.batch_size, dual.loss) == ("adam", 1e-4, 64, "mse")
    assert (dual.lr_factor, dual.lr_patience, dual.audio_norm) == (0.5, 10, "dataset")
    cnn = resolve_config(recipe="cnn_lstm")
    assert cnn.loss == "mse" and cnn.model["use_audio"] is False
    mtl = resolve_config(recipe="mtl_dan")
    assert mtl.loss == "pcc" and mtl.model["freeze_frame_encoder"] is True


def test_config_yaml_then_flags(tmp_path):
    from eri.training.config import resolve_config

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"model": {"temporal_dim": 16}, "lr": 0.01, "epochs": 3}))
    cfg = resolve_config(config_path=path, overrides={"epochs": 5, "loss": None})
    assert cfg.model["temporal_dim"] == 16 and cfg.model["spatial_layers"] == 4  # merged
    assert (cfg.lr, cfg.epochs, cfg.loss) == (0.01, 5, "mse")  # flag wins, None = not given
    assert resolve_config(arch="mtl_dan").recipe == "mtl_dan"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"overrides": {"epohcs": 3}}, "unknown key.*epohcs.*valid keys are: recipe, model"),
        ({"recipe": "resnet"}, "Unknown recipe 'resnet'; choose one of: cnn_lstm, dual_branch"),
        ({"recipe": "cnn_lstm", "arch": "mtl_dan"}, "trains architecture 'cnn_lstm'"),
        ({"overrides": {"loss": "l1"}}, "loss: 'l1' is not one of mse, pcc, ccc"),
        ({"overrides": {"folds": 1}}, "folds must be 0 .* or at least 2"),
    ],
)
def test_bad_config_is_one_sentence(kwargs, match):
    from eri.training.config import ConfigError, resolve_config

    with pytest.raises(ConfigError, match=match):
        resolve_config(**kwargs)


def test_unknown_yaml_key_names_the_file(tmp_path):
    from eri.training.config import ConfigError, resolve_config

    path = tmp_path / "c.yaml"
    path.write_text("batchsize: 4\n")
    with pytest.raises(ConfigError, match=r"c\.yaml has unknown key\(s\) batchsize"):
        resolve_config(config_path=path)


def test_unknown_model_option_is_refused():
    from eri.training.config import ConfigError
    from eri.training.recipes import get_recipe

    cfg = small_config(model={"spatial_layer": 1})
    with pytest.raises(ConfigError, match="spatial_layer"):
        get_recipe("dual_branch")(cfg).build_model()


def test_mtl_dan_without_pretrained_weights_is_refused():
    from eri.training.config import ConfigError, resolve_config
    from eri.training.recipes import get_recipe

    cfg = resolve_config(recipe="mtl_dan")
    with pytest.raises(ConfigError, match="--pretrained"):
        get_recipe("mtl_dan")(cfg).build_model()


# ---------------------------------------------------------------------------- checkpoints
def test_checkpoint_refuses_a_changed_config(tmp_path):
    from eri.training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

    cfg = small_config()
    path = save_checkpoint({"config": cfg.to_dict()}, tmp_path / "last.pt")
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary left
    assert load_checkpoint(path, small_config(epochs=99))["version"] == 1  # epochs may grow
    with pytest.raises(CheckpointError, match=r"differs .* in lr, model\.temporal_dim; resume"):
        load_checkpoint(path, small_config(lr=0.5, model={"temporal_dim": 8}))
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(tmp_path / "none.pt", cfg)


def test_rng_state_round_trip():
    import torch

    from eri.training.checkpoint import rng_state, set_rng_state

    state = rng_state()
    a = torch.rand(5)
    set_rng_state(state)
    assert torch.equal(a, torch.rand(5))


# ---------------------------------------------------------------------------- CLI
def test_train_command_is_registered(capsys):
    from eri.realtime.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["train", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "--resume" in out and "--folds" in out and "--pretrained" in out


def test_train_missing_data_exits_1(tmp_path, caplog):
    from eri.training.cli import main

    assert main(["--data", str(tmp_path / "nope"), "--out", str(tmp_path / "run")]) == 1
    assert "does not exist" in caplog.text


# ---------------------------------------------------------------------------- on generated data
@pytest.fixture(scope="module")
def small_cache(tmp_path_factory):
    """Preprocessing cache root shared by this module's runs (one preprocessing)."""
    return tmp_path_factory.mktemp("train-cache")


def write_config(path: Path, **changes) -> Path:
    from eri.training.config import merge

    path.write_text(yaml.safe_dump(merge(SMALL, changes)))
    return path


def test_bad_data_is_refused_before_any_work(generated_dataset, small_cache, tmp_path):
    from eri.training.checkpoint import CheckpointError
    from eri.training.data import DatasetError
    from eri.training.metrics import EvaluationError
    from eri.training.run import train

    with pytest.raises(
        EvaluationError, match=r"Cannot make 100 folds from 64 clip.*between 2 and 64"
    ):
        train(generated_dataset, small_config(folds=100), tmp_path / "a", cache_root=small_cache)
    with pytest.raises(DatasetError, match="Valid"):
        train(
            generated_dataset,
            small_config(val_split="Valid"),
            tmp_path / "b",
            cache_root=small_cache,
        )
    with pytest.raises(CheckpointError, match="no checkpoint"):
        (tmp_path / "c").mkdir()
        train(
            generated_dataset, small_config(), tmp_path / "c", cache_root=small_cache, resume=True
        )
    # A Train row without labels: one sentence naming the file and the row.
    data = tmp_path / "data"
    data.mkdir()
    rows = (generated_dataset / "data_info.csv").read_text().splitlines()
    cells = rows[3].split(",")
    rows[3] = ",".join(cells[:2] + [""] * (len(cells) - 2))
    (data / "data_info.csv").write_text("\n".join(rows) + "\n")
    for split in ("Train", "Val", "Test"):
        (data / split).symlink_to(generated_dataset / split)
    with pytest.raises(DatasetError, match=r"data_info\.csv line 4: clip '00002' .* no labels"):
        train(data, small_config(), tmp_path / "d", cache_root=small_cache)
    assert not (tmp_path / "d").exists() or not any((tmp_path / "d").iterdir())


def _run_cli(*argv: str) -> int:
    from eri.realtime.cli import main

    return main(list(argv))


@pytest.mark.slow
def test_train_evaluate_analyze_end_to_end(generated_dataset, small_cache, tmp_path, capsys):
    """`eri train` -> bundle -> `eri evaluate` -> `eri analyze --model` on a generated mp4."""
    from safetensors.torch import load_file

    config = write_config(tmp_path / "small.yaml", branch_epochs=1, epochs=1)
    run = tmp_path / "run"
    data, cache = str(generated_dataset), str(small_cache)
    assert (
        _run_cli(
            "train",
            "--data",
            data,
            "--config",
            str(config),
            "--out",
            str(run),
            "--cache",
            cache,
            "--no-progress",
        )
        == 0
    )
    for name in (
        "config.yaml",
        "metrics.json",
        "curves.csv",
        "curves.png",
        "checkpoints/last.pt",
        "predictions_Train.csv",
        "predictions_Val.csv",
        "predictions_Test.csv",
        "bundle/bundle.json",
        "bundle/weights.safetensors",
    ):
        assert (run / name).is_file(), name
    meta = json.loads((run / "bundle" / "bundle.json").read_text())
    assert meta["trained"] is True and meta["architecture"] == "dual_branch"
    prov = meta["provenance"]
    assert prov["data"]["kind"] == "abaw5" and prov["config"]["crop"] == {"size": 48}
    assert prov["code_version"] and prov["folds"] is None
    assert len(prov["audio_stats"]["mean"]) == 1024  # audio_norm: dataset (the recipe's)
    weights = load_file(run / "bundle" / "weights.safetensors")
    assert np.allclose(weights["audio_mean"].numpy(), prov["audio_stats"]["mean"], rtol=1e-5)
    metrics = json.loads((run / "metrics.json").read_text())
    assert [r["stage"] for r in metrics_history(run)] == ["audio", "visual", "fusion"]
    assert set(metrics["step_time_s"]) == {"audio", "visual", "fusion"}
    assert metrics["splits"]["Val"]["mean_pcc"] == pytest.approx(metrics["val"]["mean_pcc"])
    capsys.readouterr()

    assert (
        _run_cli(
            "evaluate",
            str(run / "bundle"),
            "--data",
            data,
            "--split",
            "Val",
            "--cache",
            cache,
            "--no-progress",
        )
        == 0
    )
    table = capsys.readouterr().out
    assert f"{metrics['val']['mean_pcc']:.4f}" in table

    mp4 = sorted((generated_dataset / "Val" / "mp4").glob("*.mp4"))[0]
    csv = tmp_path / "analyze.csv"
    assert (
        _run_cli(
            "analyze",
            str(mp4),
            "--model",
            str(run / "bundle"),
            "--backend",
            "torch",
            "--out",
            str(csv),
            "--no-progress",
        )
        == 0
    )
    header, *rows = csv.read_text().splitlines()
    assert header.split(",")[-7:] == list(EMOTIONS) and len(rows) > 10


def metrics_history(run: Path) -> list[dict]:
    import csv

    with (run / "curves.csv").open() as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_dual_branch_learns_the_generated_cues(small_cache, tmp_path):
    """Learning, not just running: each branch alone learns its modality's labels, and the
    fusion of the two carries both onto the held-out Val split.

    Its own generated set, twice the shared fixture's Train: with 48 training clips the fused
    model overfits (Val mean PCC 0.77-0.78 with 30 or 200 fusion epochs) although each branch
    alone reaches 0.8-0.96 on its labels; with 96 it reached 0.94 (branches 0.90-0.98).
    """
    from eri.training.data import generate_dataset
    from eri.training.run import train

    data = generate_dataset(tmp_path / "data", clips={"Train": 96, "Val": 24, "Test": 2})
    config = small_config(branch_epochs=10, epochs=60, batch_size=8)
    result = train(data, config, tmp_path / "run", cache_root=small_cache, progress=False)
    stages = result.metrics["stages"]
    audio = {e: round(stages["audio"]["pcc"][e], 3) for e in AUDIBLE}
    visual = {e: round(stages["visual"]["pcc"][e], 3) for e in VISIBLE}
    fused = {e: round(result.metrics["val"]["pcc"][e], 3) for e in VISIBLE + AUDIBLE}
    assert min(audio.values()) >= 0.7, audio
    assert min(visual.values()) >= 0.7, visual
    assert min(fused.values()) >= 0.7, fused
    assert result.metrics["val"]["mean_pcc"] >= 0.8, result.metrics["val"]


@pytest.mark.slow
def test_a_stopped_run_resumes_to_the_same_result(generated_dataset, small_cache, tmp_path):
    """Train straight vs stop after 3 epochs (inside the visual stage) and --resume: the same
    weights and metrics, exactly (CPU, same thread count: every random state is in the
    checkpoint, and the CPU kernels are deterministic)."""
    from safetensors.torch import load_file

    from eri.training.run import train

    config = small_config(branch_epochs=2, epochs=2)
    kw = {"cache_root": small_cache, "progress": False}
    straight = train(generated_dataset, config, tmp_path / "straight", **kw)
    seen = []

    def stop(row):
        seen.append(row)
        if len(seen) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(generated_dataset, config, tmp_path / "stopped", on_epoch_end=stop, **kw)
    assert not (tmp_path / "stopped" / "bundle").exists()
    resumed = train(generated_dataset, config, tmp_path / "stopped", resume=True, **kw)

    a = load_file(straight.bundle / "weights.safetensors")
    b = load_file(resumed.bundle / "weights.safetensors")
    assert a.keys() == b.keys()
    assert all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)
    drop = {"step_time_s"}
    assert [{k: v for k, v in r.items() if k not in drop} for r in straight.history] == [
        {k: v for k, v in r.items() if k not in drop} for r in resumed.history
    ]
    assert straight.metrics["val"] == resumed.metrics["val"]


@pytest.mark.slow
def test_mtl_dan_trains_its_head_on_frozen_features(generated_dataset, small_cache, tmp_path):
    """mtl_dan: MTL-DAN weights from a local file (--pretrained), the frame encoder frozen
    (its features computed once), only the LSTM head trains, CCC loss."""
    import torch
    from safetensors.torch import load_file

    from eri.models.registry import create_model
    from eri.training.config import TrainConfig, merge, resolve_config
    from eri.training.run import train

    window = {"num_samples": 4, "context_s": 2.0}
    donor = create_model("mtl_dan", window=window)
    weights = tmp_path / "mtl_dan.pt"
    encoder = ("backbone.", "expr_head.", "au_head.", "va_fc.")
    torch.save({k: v for k, v in donor.state_dict().items() if k.startswith(encoder)}, weights)
    base = resolve_config(recipe="mtl_dan").to_dict()
    config = TrainConfig.from_dict(
        merge(
            base,
            {
                "window": window,
                "pretrained": str(weights),
                "epochs": 2,
                "loss": "ccc",
                "batch_size": 16,
            },
        )
    )
    result = train(
        generated_dataset, config, tmp_path / "run", cache_root=small_cache, progress=False
    )
    assert [r["stage"] for r in result.history] == ["head", "head"]
    trained = load_file(result.bundle / "weights.safetensors")
    start = donor.state_dict()
    for key, value in trained.items():
        if key.startswith(encoder) and "num_batches_tracked" not in key:
            assert torch.equal(value, start[key]), key  # frozen: unchanged, BN stats too
    assert not torch.equal(trained["fc.weight"], start["fc.weight"])  # the head trained
    meta = json.loads((result.bundle / "bundle.json").read_text())
    assert meta["provenance"]["backbone_weights"]["missing"] == []


def test_cnn_lstm_freezes_its_cnn_only_with_pretrained_weights(tmp_path):
    """cnn_lstm: an ImageNet CNN from a local file is a frozen feature extractor (the head
    trains on features computed once); without weights the whole model trains end to end."""
    import torch

    from eri.models.layers import resnet50
    from eri.training.config import resolve_config
    from eri.training.recipes import get_recipe

    weights = tmp_path / "resnet50.pth"
    state = resnet50(num_classes=1000).state_dict()  # torchvision-style keys, fc included
    torch.save(state, weights)
    cfg = resolve_config(recipe="cnn_lstm", overrides={"pretrained": str(weights)})
    recipe = get_recipe("cnn_lstm")(cfg)
    model = recipe.build_model()
    assert model.frozen_parts() == ("backbone",)
    assert recipe.notes["backbone_weights"]["missing"] == []
    assert "fc.weight" in recipe.notes["backbone_weights"]["unexpected"]
    assert not any(p.requires_grad for p in model.backbone.parameters())
    scratch = get_recipe("cnn_lstm")(resolve_config(recipe="cnn_lstm")).build_model()
    assert scratch.frozen_parts() == ()


@pytest.mark.slow
def test_kfold_over_a_dataset_without_val(small_cache, tmp_path):
    """`--folds 2` on a dataset that has only a Train split: two folds, each trained on one
    half and scored on the other, the per-fold and mean results in metrics.json, and RUN/bundle
    is the fold with the better held-out mean PCC."""
    from eri.training.data import generate_dataset
    from eri.training.run import train

    data = generate_dataset(tmp_path / "data", clips={"Train": 8})
    config = small_config(branch_epochs=1, epochs=1, folds=2)
    result = train(data, config, tmp_path / "run", cache_root=small_cache, progress=False)
    folds = result.metrics["folds"]
    assert folds["k"] == 2 and len(folds["folds"]) == 2
    per_fold = [f["mean_pcc"] for f in folds["folds"]]
    assert folds["mean"]["mean_pcc"] == pytest.approx(np.mean(per_fold), abs=1e-9)
    assert folds["chosen"] == f"fold_{int(np.argmax(per_fold)) + 1}"
    assert result.metrics["val"]["mean_pcc"] == pytest.approx(max(per_fold), abs=1e-9)
    assert sum(f["n"] for f in folds["folds"]) == 8  # every clip held out exactly once
    for k in (1, 2):
        assert (tmp_path / "run" / "folds" / f"fold_{k}" / "bundle" / "bundle.json").is_file()
    meta = json.loads((tmp_path / "run" / "bundle" / "bundle.json").read_text())
    assert meta["trained"] is True and meta["provenance"]["folds"]["chosen"] == folds["chosen"]
