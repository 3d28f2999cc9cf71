"""What the training recipes need from the architectures: dual_branch's branch API (parts,
branch_features / branch_output / fuse), freezing, the modality gate's presence rule, dataset
audio statistics through the bundle and the ONNX, cnn_lstm's feature normalisation and
per-token audio, and mtl_dan's pretrained rule, shared feature and window."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from eri.models.base import ModelConfigError, gate_modalities
from eri.models.registry import create_model
from eri.models.spec import NUM_EMOTIONS, CropSpec, WindowSpec

T = 4
B = 8
#: A tiny dual_branch: 32x32 crops, one spatial and one temporal layer, width 32.
TINY_DUAL = {
    "window": WindowSpec(num_samples=T, context_s=1.6),
    "crop": CropSpec(size=32),
    "spatial_layers": 1,
    "spatial_ff": 64,
    "temporal_dim": 32,
    "tcn_levels": 2,
    "temporal_layers": 1,
    "temporal_heads": 2,
    "temporal_ff": 64,
    "dropout": 0.0,
    "spatial_dropout": 0.0,
}


def tiny_dual(**changes):
    torch.manual_seed(0)
    return create_model("dual_branch", **{**TINY_DUAL, **changes})


def window_batch(model, batch: int = B, seed: int = 1):
    """faces [B, T, 3, S, S] in [0, 1], frame features [B, T, D], raw audio tokens [B, T, F]
    at MFCC scale (|values| up to a few hundred) and a target [B, 7] in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    t, s = model.window.num_samples, model.crop.size
    faces = torch.rand(batch, t, 3, s, s, generator=g)
    visual = torch.randn(batch, t, model.feature_dim, generator=g)
    tokens = None
    if model.has_audio:
        tokens = 100 * torch.randn(batch, t, model.audio_spec.token_dim, generator=g) - 200
    target = torch.rand(batch, NUM_EMOTIONS, generator=g)
    return faces, visual, tokens, target


def names_with_grad(model) -> set[str]:
    return {n for n, p in model.named_parameters() if p.grad is not None}


def part_names(model, part: str) -> set[str]:
    ids = {id(p) for p in model._part_parameters(part)}
    return {n for n, p in model.named_parameters() if id(p) in ids}


# ------------------------------------------------------------------------------ dual_branch


def test_dual_branch_parts_cover_every_parameter() -> None:
    model = tiny_dual()
    assert model.parts() == ("visual", "audio", "fusion")
    covered = set().union(*(part_names(model, p) for p in model.parts()))
    assert covered == {n for n, _ in model.named_parameters()}
    assert not part_names(model, "visual") & part_names(model, "audio")
    assert tiny_dual(audio=None).parts() == ("visual", "fusion")
    with pytest.raises(ModelConfigError, match="its parts are: visual, audio, fusion"):
        model.freeze("backbone")


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_dual_branch_head_is_fuse_of_branch_features(mode: str) -> None:
    model = tiny_dual(dropout=0.1, p_both=0.5)
    model.train(mode == "train")
    _, visual, tokens, _ = window_batch(model)
    audio = model.encode_audio(tokens)
    present = torch.tensor([1.0, 0.0] * (B // 2))
    with torch.no_grad():
        for a, ap in ((audio, None), (audio, present), (None, None)):
            torch.manual_seed(7)  # the same dropout draws for both
            head = model.head(visual, a, ap, present.flip(0))
            torch.manual_seed(7)
            fused = model.fuse(*model.branch_features(visual, a), present.flip(0), ap)
            assert torch.equal(head, fused)
    v, a = model.branch_features(visual, None)
    assert v.shape == (B, T, 32) and a is None
    assert model.branch_features(None, audio)[0] is None


@pytest.mark.parametrize("branch", ["visual", "audio"])
def test_branch_output_trains_alone(branch: str) -> None:
    """20 SGD steps on one branch's own regression layer fit a fixed target (loss / 4), and
    neither the other branch nor the fusion gets a gradient."""
    model = tiny_dual().train()
    _, visual, tokens, target = window_batch(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    losses = []
    for step in range(20):
        opt.zero_grad(set_to_none=True)
        if branch == "visual":
            feats = model.branch_features(visual, None)[0]
        else:
            feats = model.branch_features(None, model.encode_audio(tokens))[1]
        loss = F.mse_loss(model.branch_output(branch, feats), target)
        loss.backward()
        if step == 0:
            other = "audio" if branch == "visual" else "visual"
            got = names_with_grad(model)
            assert not got & (part_names(model, other) | part_names(model, "fusion"))
            temporal = {n for n in part_names(model, branch) if "temporal" in n}
            assert temporal and temporal <= got
            assert {n for n in got if "regressor" in n} == {
                n for n in part_names(model, branch) if "regressor" in n
            }
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] / 4, losses
    with pytest.raises(ModelConfigError, match="no branch 'fusion'"):
        model.branch_output("fusion", feats)


def test_freeze_keeps_parameters_and_batchnorm_statistics() -> None:
    """Stage 2 of the recipe: both branches frozen, one optimizer step on the fusion through the
    whole forward in train mode; the frozen parts (and the backbone's BatchNorm statistics)
    stay bit-identical, the fusion moves."""
    model = tiny_dual()
    model.freeze("visual")
    model.freeze("audio")
    assert model.frozen_parts() == ("visual", "audio")
    model.train()  # what a trainer does each epoch
    assert not model.backbone.training and not model.audio_temporal.training
    assert model.fusion_norm.training and model.training
    before = {k: v.clone() for k, v in model.state_dict().items()}
    faces, _, tokens, target = window_batch(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-2)
    opt.zero_grad()
    F.mse_loss(model(faces, tokens), target).backward()
    opt.step()
    after = model.state_dict()
    frozen = part_names(model, "visual") | part_names(model, "audio")
    running = {k for k in before if "running_" in k or "num_batches" in k}
    assert running and frozen
    assert all(torch.equal(before[k], after[k]) for k in frozen | running)
    assert any(not torch.equal(before[k], after[k]) for k in part_names(model, "fusion"))
    # Unfreezing gives the gradients and the train mode back.
    model.freeze("visual", False)
    assert model.frozen_parts() == ("audio",)
    assert all(p.requires_grad for p in model._part_parameters("visual"))
    assert model.backbone.training and not model.audio_temporal.training


# ------------------------------------------------------------------------------ the gate


@pytest.mark.parametrize("p_both, p_video", [(0.0, 0.0), (0.0, 1.0), (0.5, 0.5)])
def test_gate_never_drops_the_only_present_modality(p_both: float, p_video: float) -> None:
    n = 256
    visual, audio = torch.ones(n, T, 3), torch.ones(n, T, 5)
    ones, zeros = torch.ones(n), torch.zeros(n)
    torch.manual_seed(3)
    no_audio = gate_modalities(visual, audio, ones, zeros, (p_both, p_video))
    assert (no_audio[..., :3] == 1).all() and (no_audio[..., 3:] == 0).all()
    no_face = gate_modalities(visual, audio, zeros, ones, (p_both, p_video))
    assert (no_face[..., :3] == 0).all() and (no_face[..., 3:] == 1).all()
    neither = gate_modalities(visual, audio, zeros, zeros, (p_both, p_video))
    assert (neither == 0).all()
    # Both present: dropout still drops one of them, as drawn, never both.
    both = gate_modalities(visual, audio, ones, ones, (p_both, p_video))
    kept_v, kept_a = both[:, 0, 0] == 1, both[:, 0, 3] == 1
    assert (kept_v | kept_a).all()
    assert (kept_v & kept_a).float().mean() <= p_both + 0.1
    if p_video == 0.0:
        assert not kept_v.any() if p_both == 0.0 else kept_a.all()


def test_dual_branch_without_audio_keeps_visual_under_dropout() -> None:
    """ "Audio only" drawn for a window without audio used to zero both branches; now the
    window keeps its visual branch: train-mode output == eval output without audio."""
    model = tiny_dual(p_both=0.0, p_video=0.0)  # always draws "audio only"
    _, visual, tokens, _ = window_batch(model)
    audio = model.encode_audio(tokens)
    with torch.no_grad():
        expected = model.eval().head(visual, None)
        model.train()
        assert torch.equal(model.head(visual, None), expected)
        assert torch.equal(model.head(visual, audio, torch.zeros(B)), expected)
        no_face = model.eval().head(visual, audio, visual_present=torch.zeros(B))
        model.train()
        p_video_1 = tiny_dual(p_both=0.0, p_video=1.0).train()  # always "video only"
        got = p_video_1.head(visual, audio, visual_present=torch.zeros(B))
        assert torch.equal(got, p_video_1.eval().head(visual, audio, None, torch.zeros(B)))
    assert not torch.equal(no_face, expected)


# ------------------------------------------------------------------------------ audio statistics


def _token_stats(model, seed: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std [F] of speech-like MFCC tokens through the real front end."""
    from eri.models.precision import synthetic_audio_tokens

    tokens = synthetic_audio_tokens(model.audio_spec, model.window, 8, seed=seed)
    tokens = tokens.reshape(-1, model.audio_spec.token_dim)
    return tokens.mean(axis=0), tokens.std(axis=0)


def test_dataset_audio_norm_is_the_z_score() -> None:
    model = tiny_dual(audio_norm="dataset").eval()
    assert not hasattr(model, "audio_norm")  # no per-token LayerNorm in this mode
    mean, std = _token_stats(model)
    std[0] = 0.0  # a constant feature divides by the floor, not by zero
    model.set_audio_stats(mean, std)
    tokens = window_batch(model)[2]
    expected = (tokens.double() - torch.from_numpy(mean)) / torch.from_numpy(std).clamp_min(1e-3)
    got = model.encode_audio(tokens)
    assert (got.double() - expected).abs().max() <= 1e-5 * expected.abs().max()
    # Loudness survives: a 20 dB quieter copy (c0 of each frame lower) is a different input.
    quieter = tokens.clone()
    quieter[..., ::128] -= 20 * np.sqrt(128) / 2
    assert (model.encode_audio(quieter) - got).abs().max() > 0.1


def test_set_audio_stats_refusals() -> None:
    token = tiny_dual()
    f = token.audio_spec.token_dim
    with pytest.raises(ModelConfigError, match="audio_norm: dataset"):
        token.set_audio_stats(np.zeros(f), np.ones(f))
    with pytest.raises(ModelConfigError, match="has no audio branch"):
        create_model("mtl_dan").set_audio_stats(np.zeros(f), np.ones(f))
    model = tiny_dual(audio_norm="dataset")
    with pytest.raises(ModelConfigError, match=f"two arrays of {f} values"):
        model.set_audio_stats(np.zeros(f - 1), np.ones(f - 1))
    with pytest.raises(ModelConfigError, match="NaN"):
        model.set_audio_stats(np.full(f, np.nan), np.ones(f))
    with pytest.raises(ModelConfigError, match="audio_norm must be one of token, dataset"):
        tiny_dual(audio_norm="global")


def test_audio_stats_round_trip_through_the_bundle(tmp_path) -> None:
    from eri.models.bundle import load_bundle, save_bundle

    model = tiny_dual(audio_norm="dataset").eval()
    mean, std = _token_stats(model)
    model.set_audio_stats(mean, std)
    loaded = load_bundle(save_bundle(model, tmp_path / "b")).model
    assert loaded.config["audio_norm"] == "dataset"
    assert torch.equal(loaded.audio_mean, model.audio_mean)
    assert torch.equal(loaded.audio_std, model.audio_std)
    assert torch.allclose(loaded.audio_std, torch.from_numpy(std).float(), rtol=1e-6)
    faces, _, tokens, _ = window_batch(model, batch=2)
    with torch.no_grad():
        assert torch.equal(loaded(faces, tokens), model(faces, tokens))


@pytest.mark.slow  # two ONNX exports and an fp16 conversion: ~20 s on 2 cores
def test_audio_stats_travel_in_the_onnx_and_stay_fp32_in_fp16(tmp_path) -> None:
    from eri.models.export import FP32_TOLERANCE, compare_onnx, export_onnx, ort_session
    from eri.models.precision import (
        FP16_TOLERANCE,
        check_variant,
        export_fp16,
        probe_inputs,
    )

    model = tiny_dual(audio_norm="dataset").eval()
    model.set_audio_stats(*_token_stats(model))
    paths = export_onnx(model, tmp_path / "fp32")
    errors = compare_onnx(model, paths)
    assert max(errors.values()) <= FP32_TOLERANCE, errors
    # The statistics are in the graph: realistic tokens give what the torch model gives, and
    # not what the same weights give with identity statistics.
    probes = probe_inputs(model, batch=4, seed=3)
    names = ["visual", "audio_tokens", "audio_present", "visual_present"]
    features = ort_session(paths["audio_encoder"]).run(None, {"audio_tokens": probes[names[1]]})
    feed = {n: probes[n] for n in names if n != "audio_tokens"}
    feed["audio_features"] = features[0].reshape(probes["audio_features"].shape)
    got = ort_session(paths["head"]).run(None, feed)[0]
    identity = tiny_dual(audio_norm="dataset").eval()
    with torch.no_grad():
        args = [torch.from_numpy(probes[n]) for n in names]
        args[1] = args[1].view(*probes["visual"].shape[:2], -1)  # tokens [B, T, F]
        ours = model.head(args[0], model.encode_audio(args[1]), args[2], args[3]).numpy()
        theirs = identity.head(args[0], identity.encode_audio(args[1]), args[2], args[3])
    assert np.abs(got - ours).max() <= FP32_TOLERANCE
    assert np.abs(ours - theirs.numpy()).max() > 1e-3
    # fp16: raw tokens (|c0| up to ~1131) and the statistics (variances ~1e5) stay fp32.
    fp16 = export_fp16(model, paths, tmp_path / "fp16")
    checks = check_variant(model, fp16, probe_inputs(model, batch=6, seed=4), FP16_TOLERANCE)
    assert checks and all(c.ok for c in checks), [c.describe() for c in checks]


# ------------------------------------------------------------------------------ cnn_lstm


@pytest.fixture(scope="module")
def cnn_lstm_small():
    """cnn_lstm on 32x32 crops with a small head (the ResNet50 cannot shrink)."""
    torch.manual_seed(0)
    window = WindowSpec(num_samples=T, context_s=1.6)
    return create_model(
        "cnn_lstm", window=window, crop=CropSpec(size=32), hidden=32, fusion_dim=16
    ).eval()


def test_cnn_lstm_parts_overlap(cnn_lstm_small) -> None:
    model = cnn_lstm_small
    assert model.parts() == ("backbone", "visual", "audio", "fusion")
    model.freeze("backbone")
    model.freeze("visual")
    model.freeze("visual", False)  # the backbone stays frozen: its own part still is
    assert not any(p.requires_grad for p in model.backbone.parameters())
    assert all(p.requires_grad for p in model.visual_lstm.parameters())
    model.train()
    assert not model.backbone.training and model.visual_lstm.training
    assert "backbone is frozen but holds random weights" in model.requires_pretrained_reason()
    model.freeze("backbone", False)
    assert model.requires_pretrained_reason() is None
    assert all(p.requires_grad for p in model.parameters())
    model.eval()


@pytest.mark.parametrize("audio_norm", ["token", "dataset"])
def test_cnn_lstm_audio_is_per_token(cnn_lstm_small, audio_norm: str) -> None:
    """The spectrogram CNN runs once per token: encoding the window's T tokens one at a time
    (what a live runner caching per token does) gives the per-window encode_audio's numbers,
    and the head on those cached features gives forward()'s intensities (the per-window
    computation: every token encoded together for each window)."""
    model = cnn_lstm_small
    if audio_norm == "dataset":
        torch.manual_seed(0)
        model = create_model(
            "cnn_lstm", **{**model.config, **model.specs(), "audio_norm": audio_norm}
        )
        model.load_state_dict(cnn_lstm_small.state_dict(), strict=False)
        model.set_audio_stats(*_token_stats(model))
        model.eval()
    faces, _, tokens, _ = window_batch(model, batch=3)
    with torch.no_grad():
        whole = model.encode_audio(tokens)  # [B, T, A]
        one_by_one = torch.cat([model.encode_audio(tokens[:, i : i + 1]) for i in range(T)], 1)
        visual = model.encode_frames(faces.flatten(0, 1)).view(3, T, -1)
        cached = model.head(visual, one_by_one)
        forward = model(faces, tokens)
    assert whole.shape == (3, T, 128)
    assert (one_by_one - whole).abs().max() <= 1e-5 * (1 + whole.abs().max())
    assert (cached - forward).abs().max() <= 1e-6


def test_cnn_lstm_head_does_not_collapse_on_raw_imagenet_scale_features() -> None:
    """Frame features of an untrained ResNet50, scaled x10 to what it gives 112x112 faces
    (up to ~150, nearly the same for every face). 100 Adam steps at lr 1e-3 on the head: with
    the frame LayerNorm the outputs vary across windows and the loss falls; the same run with
    the raw features (the LayerNorm replaced by the identity, as before) ends with one
    constant output for every window."""
    torch.manual_seed(0)
    window = WindowSpec(num_samples=T, context_s=1.6)
    options = {"crop": CropSpec(size=32), "hidden": 32, "fusion_dim": 16, "use_audio": False}
    model = create_model("cnn_lstm", window=window, **options)
    g = torch.Generator().manual_seed(1)
    n = 16
    faces = 0.7 * torch.rand(1, 1, 3, 32, 32, generator=g)
    faces = faces + 0.3 * torch.rand(n, T, 3, 32, 32, generator=g)
    with torch.no_grad():
        visual = 10 * model.eval().encode_frames(faces.flatten(0, 1)).view(n, T, -1)
    target = torch.rand(n, NUM_EMOTIONS, generator=g)
    initial = {k: v.clone() for k, v in model.state_dict().items()}

    def train() -> tuple[float, float, float]:
        """(first loss, last loss, mean over emotions of the output's std across windows)."""
        model.load_state_dict(initial, strict=False)
        model.freeze("backbone")
        model.train()
        opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
        losses = []
        for _ in range(100):
            opt.zero_grad()
            loss = F.mse_loss(model.head(visual), target)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        with torch.no_grad():
            out = model.eval().head(visual)
        return losses[0], losses[-1], out.std(dim=0).mean().item()

    first, last, spread = train()
    assert spread > 0.02 and last < 0.85 * first, (first, last, spread)
    model.visual_norm = torch.nn.Identity()
    assert train()[2] < 1e-4


# ------------------------------------------------------------------------------ mtl_dan


def test_mtl_dan_default_window_samples_one_frame_a_second() -> None:
    from eri.models.bundle import untrained_bundle

    model = create_model("mtl_dan")
    assert model.window == WindowSpec(num_samples=12, context_s=12.0)
    assert untrained_bundle("mtl_dan").meta["window"] == {"num_samples": 12, "context_s": 12.0}
    assert create_model("dual_branch", spatial_layers=1).window == WindowSpec()


def test_mtl_dan_frozen_without_pretrained_is_refused(tmp_path) -> None:
    from safetensors.torch import save_file

    from eri.models.bundle import load_bundle, save_bundle

    window = WindowSpec(num_samples=T, context_s=4.0)
    torch.manual_seed(0)
    model = create_model("mtl_dan", window=window)
    reason = model.requires_pretrained_reason()
    assert reason.startswith("mtl_dan's frame encoder (the MTL-DAN) is frozen but holds no")
    assert "one-hot expression" in reason and "freeze_frame_encoder: false" in reason
    assert (
        create_model(
            "mtl_dan", window=window, freeze_frame_encoder=False
        ).requires_pretrained_reason()
        is None
    )
    # ResNet18 backbone weights alone leave the DAN heads random: still refused.
    backbone = tmp_path / "resnet18.safetensors"
    save_file({k: v.contiguous() for k, v in model.backbone.state_dict().items()}, backbone)
    model.load_pretrained(backbone)
    assert not model.pretrained and model.requires_pretrained_reason() == reason
    # A whole MTL-DAN (its attention heads included) fills the frame encoder.
    other = create_model("mtl_dan", window=window)
    full = {
        k: v.contiguous()
        for k, v in other.state_dict().items()
        if k.startswith(("backbone.", "expr_head.", "au_head.", "va_fc."))
    }
    save_file({f"module.{k}": v for k, v in full.items()}, tmp_path / "mtl_dan.safetensors")
    report = model.load_pretrained(tmp_path / "mtl_dan.safetensors")
    assert not report.missing and model.pretrained
    assert model.requires_pretrained_reason() is None
    assert torch.equal(model.expr_head.fc.weight, other.expr_head.fc.weight)
    # The flag travels with the weights.
    loaded = load_bundle(save_bundle(model, tmp_path / "b")).model
    assert loaded.pretrained and loaded.requires_pretrained_reason() is None


def test_mtl_dan_shared_feature_feeds_every_head() -> None:
    """EXPR, AU and VA all read the 1024-d shared feature [EXPR attention | AU attention]:
    each task's output alone gives the other task's attention heads a gradient."""
    torch.manual_seed(0)
    window = WindowSpec(num_samples=T, context_s=4.0)
    model = create_model(
        "mtl_dan", window=window, crop=CropSpec(size=64), freeze_frame_encoder=False
    ).train()
    assert model.expr_head.fc.in_features == model.au_head.fc.in_features == 1024
    assert model.va_fc.in_features == 1024
    faces = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    feats = model.encode_frames(faces)
    for task, dims, other in (
        ("expr", slice(0, 8), "au_head"),
        ("au", slice(8, 20), "expr_head"),
        ("va", slice(20, 22), "au_head"),
    ):
        heads = [p for n, p in model.named_parameters() if n.startswith(other + ".cat_head")]
        out = feats[:, dims] * torch.linspace(-1, 1, dims.stop - dims.start)
        grads = torch.autograd.grad(out.sum(), heads, retain_graph=True, allow_unused=True)
        assert any(g is not None and g.abs().sum() > 0 for g in grads), task
