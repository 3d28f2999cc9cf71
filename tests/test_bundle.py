"""Model bundle save/load, safe weight loading and backbone weights."""

from __future__ import annotations

import json
import pickle

import pytest
import torch

from eri.models.bundle import (
    FORMAT_VERSION,
    BundleError,
    load_bundle,
    save_bundle,
    untrained_bundle,
)
from eri.models.layers import resnet18  # torchvision-named backbone
from eri.models.registry import create_model, list_models
from eri.models.spec import EMOTIONS, WindowSpec
from eri.models.weights import WeightsError, load_backbone_weights, read_state_dict

SMALL = {"window": WindowSpec(num_samples=8, context_s=3.2)}


def _window_inputs(model, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    t, s = model.window.num_samples, model.crop.size
    faces = torch.rand(batch, t, 3, s, s, generator=g)
    tokens = None
    if model.has_audio:
        tokens = 10 * torch.randn(batch, t, model.audio_spec.token_dim, generator=g)
    return faces, tokens


@pytest.mark.parametrize("arch", list_models())
def test_save_load_gives_identical_outputs(arch, tmp_path):
    model = create_model(arch, **SMALL).eval()
    path = save_bundle(model, tmp_path / "b", provenance={"data": "none"})
    meta = json.loads((path / "bundle.json").read_text())
    assert meta["format_version"] == FORMAT_VERSION
    assert meta["architecture"] == arch and meta["trained"] is False
    assert meta["emotions"] == list(EMOTIONS)
    assert meta["window"] == {"num_samples": 8, "context_s": 3.2}
    loaded = load_bundle(path)
    faces, tokens = _window_inputs(model)
    with torch.no_grad():
        assert torch.equal(model(faces, tokens), loaded.model(faces, tokens))
    assert loaded.model.config == model.config
    assert any("UNTRAINED" in n for n in loaded.notes)


def test_untrained_default_is_deterministic_and_flagged():
    a, b = untrained_bundle(), untrained_bundle()
    assert a.meta["architecture"] == "dual_branch" and not a.trained
    assert all(
        torch.equal(x, y)
        for x, y in zip(a.model.state_dict().values(), b.model.state_dict().values())
    )


def test_save_refuses_existing_and_leaves_nothing_half_written(tmp_path):
    model = create_model("mtl_dan", **SMALL)
    save_bundle(model, tmp_path / "b")
    with pytest.raises(BundleError, match="already exists"):
        save_bundle(model, tmp_path / "b")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


def test_newer_format_version_is_refused(tmp_path):
    path = save_bundle(create_model("mtl_dan", **SMALL), tmp_path / "b")
    meta = json.loads((path / "bundle.json").read_text())
    meta["format_version"] = FORMAT_VERSION + 1
    (path / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="newer than this ERI Live reads.*upgrade"):
        load_bundle(path)


def test_unknown_architecture_lists_valid_ones(tmp_path):
    with pytest.raises(ValueError, match="cnn_lstm, dual_branch, mtl_dan"):
        create_model("resnet9000")
    path = save_bundle(create_model("mtl_dan", **SMALL), tmp_path / "b")
    meta = json.loads((path / "bundle.json").read_text())
    meta["architecture"] = "resnet9000"
    (path / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="Unknown architecture 'resnet9000'"):
        load_bundle(path)


def test_weights_of_another_architecture_are_refused(tmp_path):
    a = save_bundle(create_model("mtl_dan", **SMALL), tmp_path / "a")
    b = save_bundle(create_model("dual_branch", **SMALL), tmp_path / "b")
    (a / "weights.safetensors").write_bytes((b / "weights.safetensors").read_bytes())
    with pytest.raises(BundleError, match="architecture 'dual_branch'.*'mtl_dan'"):
        load_bundle(a)


def test_a_bundle_from_before_new_tensors_says_to_recreate_it(tmp_path):
    """Weights that fit but lack tensors the model gained later (e.g. the audio statistics of
    dataset normalisation): one sentence naming the bundle and the command that re-makes it."""
    from safetensors.torch import load_file, save_file

    path = save_bundle(create_model("dual_branch", **SMALL), tmp_path / "b")
    weights = path / "weights.safetensors"
    state = load_file(weights)
    dropped = sorted(k for k in state if k.startswith("audio_"))[:2] or sorted(state)[-1:]
    for k in dropped:
        del state[k]
    save_file(state, weights, metadata={"architecture": "dual_branch", "format_version": "1"})
    with pytest.raises(
        BundleError, match=r"earlier version of ERI Live.*eri bundle --arch dual_branch"
    ):
        load_bundle(path)


def test_mismatched_shapes_are_refused(tmp_path):
    path = save_bundle(create_model("dual_branch", **SMALL), tmp_path / "b")
    meta = json.loads((path / "bundle.json").read_text())
    meta["window"]["num_samples"] = 16  # temporal position embeddings no longer fit
    (path / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="other shapes"):
        load_bundle(path)


def test_missing_bundle_and_not_a_bundle(tmp_path):
    with pytest.raises(BundleError, match="does not exist"):
        load_bundle(tmp_path / "nope")
    with pytest.raises(BundleError, match="not a model bundle"):
        load_bundle(tmp_path)


class _Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_pickle_that_is_not_a_state_dict_is_refused(tmp_path):
    evil = tmp_path / "evil.pt"
    with evil.open("wb") as f:
        pickle.dump({"conv1.weight": _Evil()}, f, protocol=2)
    with pytest.raises(WeightsError, match="not a plain state dict"):
        read_state_dict(evil)
    not_dict = tmp_path / "list.pt"
    torch.save([torch.zeros(1)], not_dict)
    with pytest.raises(WeightsError, match="not a state dict"):
        read_state_dict(not_dict)


def test_backbone_weights_load_by_torchvision_names(tmp_path):
    """A torchvision-style ResNet18 state dict (wrapped as trainers save it) fills the
    dual-branch stem; layer4/fc are reported unexpected, nothing is missing."""
    reference = resnet18(num_classes=1000)
    torch.nn.init.normal_(reference.conv1.weight)
    state = {f"module.{k}": v for k, v in reference.state_dict().items()}
    path = tmp_path / "resnet18_affectnet.pth"
    torch.save({"state_dict": state}, path)
    model = create_model("dual_branch", **SMALL)
    report = load_backbone_weights(model, path)
    assert report.missing == []
    assert any(k.startswith("layer4.") for k in report.unexpected)
    assert any(k.startswith("fc.") for k in report.unexpected)
    assert torch.equal(model.backbone.conv1.weight, reference.conv1.weight)


def test_backbone_weights_with_wrong_shapes_are_refused(tmp_path):
    path = tmp_path / "bad.pt"
    torch.save({"conv1.weight": torch.zeros(8, 3, 3, 3)}, path)
    with pytest.raises(WeightsError, match="other shapes"):
        load_backbone_weights(create_model("dual_branch", **SMALL), path)
