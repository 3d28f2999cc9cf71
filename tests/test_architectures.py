"""The three seed architectures: shapes, gradients, the streaming split, missing audio,
modality dropout, the frozen MTL-DAN, torchvision-compatible backbone names, ONNX export."""

from __future__ import annotations

import functools
import inspect
import json
import logging
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from eri.models.base import StreamingModel
from eri.models.export import (
    FP32_TOLERANCE,
    head_graph,
    head_input_names,
    onnx_error,
    ort_session,
)
from eri.models.layers import (
    ExportableAdaptiveAvgPool2d,
    TemporalConvNet,
    count_parameters,
    resnet18,
    resnet50,
    transformer_encoder,
    vgg16,
)
from eri.models.registry import create_model, get_model_class, list_models
from eri.models.spec import NUM_EMOTIONS, WindowSpec

log = logging.getLogger(__name__)

T = 8
B = 2
WINDOW = WindowSpec(num_samples=T, context_s=3.2)

#: (architecture, options): every registered default plus the extra variants.
VARIANTS: list[tuple[str, dict[str, Any]]] = [(name, {}) for name in list_models()] + [
    ("cnn_lstm", {"backbone": "vgg16"}),
    ("cnn_lstm", {"use_audio": False}),
    ("mtl_dan", {"freeze_frame_encoder": False}),
]


def _id(variant: tuple[str, dict[str, Any]]) -> str:
    name, opts = variant
    return name + "".join(f"-{k}={v}" for k, v in opts.items())


AUDIO_VARIANTS = [v for v in VARIANTS if get_model_class(v[0]).default_audio is not None]
AUDIO_VARIANTS = [v for v in AUDIO_VARIANTS if v[1].get("use_audio", True)]


def _marked(variants: list[tuple[str, dict[str, Any]]]) -> list[Any]:
    """The VGG16 variant (~0.5 GB of weights: 3-9 s per test on 2 cores) is slow."""
    return [
        pytest.param(v, marks=pytest.mark.slow) if v[1].get("backbone") == "vgg16" else v
        for v in variants
    ]


def _options(name: str) -> set[str]:
    return set(inspect.signature(get_model_class(name).__init__).parameters)


def _no_dropout(name: str) -> dict[str, float]:
    """Options that set every nn.Dropout rate of ``name`` to 0."""
    keys = ("dropout", "spatial_dropout", "backbone_dropout")
    return {k: 0.0 for k in keys if k in _options(name)}


@functools.cache
def _cached(name: str, frozen_opts: tuple[tuple[str, Any], ...]) -> StreamingModel:
    torch.manual_seed(0)
    return create_model(name, window=WINDOW, **dict(frozen_opts))


def build(name: str, **opts: Any) -> StreamingModel:
    """A (cached) model in eval mode; tests that train set the mode themselves."""
    model = _cached(name, tuple(sorted(opts.items())))
    model.zero_grad(set_to_none=True)
    return model.eval()


def inputs(model: StreamingModel, batch: int = B, seed: int = 1):
    """faces [B, T, 3, S, S] in [0, 1] and audio tokens [B, T, F] (None without audio)."""
    g = torch.Generator().manual_seed(seed)
    s = model.crop.size
    faces = torch.rand(batch, T, 3, s, s, generator=g)
    tokens = None
    if model.has_audio:
        tokens = torch.randn(batch, T, model.audio_spec.token_dim, generator=g) * 5.0
    return faces, tokens


def features(model: StreamingModel, faces: torch.Tensor, tokens: torch.Tensor | None):
    """The split's per-frame and per-token halves, in eval mode without grad."""
    model.eval()
    with torch.no_grad():
        visual = model.encode_frames(faces.flatten(0, 1)).view(faces.shape[0], T, -1)
        audio = None if tokens is None else model.encode_audio(tokens)
    return visual, audio


@functools.cache
def _cached_data(name: str, frozen_opts: tuple[tuple[str, Any], ...]):
    model = _cached(name, frozen_opts).eval()
    faces, tokens = inputs(model)
    return (faces, tokens, *features(model, faces, tokens))


@pytest.fixture(scope="module", autouse=True)
def _release_cached_models():
    """The cached models (VGG16 variants are ~0.5 GB each) live only while this module runs."""
    yield
    _cached_data.cache_clear()
    _cached.cache_clear()


def data(name: str, **opts: Any):
    """(faces, tokens, visual, audio) of the cached eval-mode model ``build(name, **opts)``."""
    return _cached_data(name, tuple(sorted(opts.items())))


def variant_of(name: str, opts: dict[str, Any], **changes: Any) -> StreamingModel:
    """``build(name, **opts, **changes)`` with the weights of ``build(name, **opts)``, so the
    cached features of the base variant apply (``changes`` must not alter parameters)."""
    model = build(name, **opts, **changes)
    model.load_state_dict(build(name, **opts).state_dict())
    return model


# ------------------------------------------------------------------------------ registry


def test_list_models() -> None:
    assert list_models() == ["cnn_lstm", "dual_branch", "mtl_dan"]


@pytest.mark.parametrize("name", list_models())
def test_unknown_option_is_refused(name: str) -> None:
    with pytest.raises(ValueError, match="valid options are") as err:
        create_model(name, window=WINDOW, no_such_option=1)
    assert "no_such_option" in str(err.value)
    for option in _options(name) - {"self", "window", "crop", "audio"}:
        assert option in str(err.value)


@pytest.mark.parametrize("variant", _marked(VARIANTS), ids=_id)
def test_config_is_json_and_rebuilds(variant) -> None:
    name, opts = variant
    model = build(name, **opts)
    config = json.loads(json.dumps({**model.config, **model.specs()}))
    again = create_model(name, **config)
    assert again.config == model.config
    assert again.specs() == model.specs()
    assert count_parameters(again) == count_parameters(model)
    assert again.feature_dim == model.feature_dim
    # The rebuilt model is the same network: the weights load strictly and give the same numbers.
    again.load_state_dict(model.state_dict())
    _, _, visual, audio = data(name, **opts)
    with torch.no_grad():
        assert torch.equal(again.eval().head(visual, audio), model.head(visual, audio))


# ------------------------------------------------------------------------------ shapes


@pytest.mark.parametrize("variant", _marked(VARIANTS), ids=_id)
def test_output_shape_and_range(variant) -> None:
    name, opts = variant
    model = build(name, **opts)
    faces, tokens, visual, audio = data(name, **opts)
    with torch.no_grad():
        out = model.head(visual, audio)
    assert out.shape == (B, NUM_EMOTIONS)
    assert torch.isfinite(out).all()
    assert ((out >= 0) & (out <= 1)).all()
    # Each window is predicted on its own: the same numbers alone as in the batch, and two
    # different windows give different intensities.
    with torch.no_grad():
        for i in range(B):
            alone = model.head(visual[i : i + 1], None if audio is None else audio[i : i + 1])
            torch.testing.assert_close(alone[0], out[i], rtol=0, atol=1e-6)
    if name == "mtl_dan":
        # An MTL-DAN at random initialisation (eval mode) gives every face the same features
        # (why training refuses it frozen), so two windows differ only through the head.
        visual = visual + torch.randn(visual.shape, generator=torch.Generator().manual_seed(2))
        with torch.no_grad():
            out = model.head(visual, audio)
    assert (out[0] - out[1]).abs().max() > 1e-6
    assert visual.shape == (B, T, model.feature_dim)
    if model.has_audio:
        assert audio.shape[:2] == (B, T)
    else:
        with pytest.raises(NotImplementedError):
            model.encode_audio(torch.zeros(B, T, 1024))
    log.info("%s: %d parameters", _id(variant), count_parameters(model))


# ------------------------------------------------------------------------------ gradients


@pytest.mark.parametrize("variant", _marked(VARIANTS), ids=_id)
def test_every_trainable_parameter_gets_a_gradient(variant) -> None:
    name, opts = variant
    if "p_both" in _options(name):
        opts = {**opts, "p_both": 1.0}  # keep both branches so every parameter is used
    torch.manual_seed(0)
    model = create_model(name, window=WINDOW, **opts).train()  # fresh: training moves BN stats
    faces, tokens = inputs(model)
    target = torch.rand(B, NUM_EMOTIONS, generator=torch.Generator().manual_seed(3))
    loss = F.mse_loss(model(faces, tokens), target)
    if hasattr(model, "branch_output"):  # dual_branch: the branches' own regression layers
        visual = model.encode_frames(faces.flatten(0, 1)).view(B, T, -1)
        v, a = model.branch_features(visual, model.encode_audio(tokens))
        for name, feats in (("visual", v), ("audio", a)):
            loss = loss + F.mse_loss(model.branch_output(name, feats), target)
    loss.backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert trainable
    no_grad = [n for n, p in trainable if p.grad is None]
    assert not no_grad, f"no gradient for {no_grad}"
    not_finite = [n for n, p in trainable if not torch.isfinite(p.grad).all()]
    assert not not_finite, f"non-finite gradient for {not_finite}"
    zero = [n for n, p in trainable if not p.grad.abs().sum() > 0]
    assert not zero, f"all-zero gradient for {zero}"


# ------------------------------------------------------------------------------ the split


@pytest.mark.parametrize("variant", _marked(VARIANTS), ids=_id)
def test_streaming_split_equals_forward(variant) -> None:
    name, opts = variant
    model = build(name, **opts)
    faces, tokens, visual, audio = data(name, **opts)
    present = torch.tensor([1.0, 0.0]) if model.has_audio else None
    with torch.no_grad():
        whole = model(faces, tokens, audio_present=present)
        split = model.head(visual, audio, audio_present=present)
        # Live: each frame is encoded on its own (N=1) into the feature ring, and each audio
        # token on its own; the head then reads the cached values.
        single = torch.cat([model.encode_frames(faces[1, i : i + 1]) for i in (0, T - 1)])
        audio_1 = None
        if tokens is not None:
            audio_1 = torch.cat([model.encode_audio(tokens[:, i : i + 1]) for i in range(T)], dim=1)
            assert (audio_1 - audio).abs().max() <= 1e-5
    assert (whole - split).abs().max() <= 1e-5
    scale = float(visual.abs().max()) + 1.0
    assert (single - visual[1, [0, T - 1]]).abs().max() <= 1e-5 * scale


# ------------------------------------------------------------------------------ missing audio


@pytest.mark.parametrize("variant", _marked(VARIANTS), ids=_id)
def test_missing_audio_is_exactly_the_zeroed_branch(variant) -> None:
    name, opts = variant
    model = build(name, **opts)
    faces, tokens, visual, audio = data(name, **opts)
    with torch.no_grad():
        missing = model.head(visual, None)
        if not model.has_audio:
            # No audio branch: audio arguments are ignored.
            junk = torch.randn(B, T, 16)
            assert torch.equal(model.head(visual, junk, torch.zeros(B)), missing)
            return
        flagged = model.head(visual, audio, audio_present=torch.zeros(B))
        present = model.head(visual, audio, audio_present=torch.ones(B))
        mixed = model.head(visual, audio, audio_present=torch.tensor([1.0, 0.0]))
        # A flagged-absent branch is gated to exact zeros, whatever its input held.
        garbage = model.head(visual, torch.full_like(audio, float("nan")), torch.zeros(B))
    assert torch.equal(missing, flagged)
    assert torch.equal(missing, garbage)
    assert not torch.allclose(present, missing)
    assert torch.allclose(mixed[0], present[0], atol=1e-6)
    assert torch.allclose(mixed[1], missing[1], atol=1e-6)


# ------------------------------------------------------------------------------ modality dropout


@pytest.mark.parametrize("variant", _marked(VARIANTS), ids=_id)
def test_eval_is_deterministic(variant) -> None:
    name, opts = variant
    model = build(name, **opts)
    _, _, visual, audio = data(name, **opts)
    with torch.no_grad():
        outs = [model.head(visual, audio) for _ in range(3)]
    assert all(torch.equal(outs[0], o) for o in outs[1:])


@pytest.mark.parametrize("variant", _marked(AUDIO_VARIANTS), ids=_id)
def test_modality_dropout_only_in_training(variant) -> None:
    name, opts = variant
    video_only = variant_of(name, opts, **_no_dropout(name), p_both=0.0, p_video=1.0)
    _, _, visual, audio = data(name, **opts)
    with torch.no_grad():
        eval_missing = video_only.head(visual, None)
        eval_present = video_only.head(visual, audio)  # eval: dropout inactive, audio used
        video_only.train()
        train_present = video_only.head(visual, audio)
        video_only.eval()
    assert not torch.allclose(eval_present, eval_missing)
    assert torch.allclose(train_present, eval_missing, atol=1e-6, rtol=0)

    audio_only = variant_of(name, opts, **_no_dropout(name), p_both=0.0, p_video=0.0)
    with torch.no_grad():
        eval_no_face = audio_only.head(visual, audio, visual_present=torch.zeros(B))
        audio_only.train()
        train_present = audio_only.head(visual, audio)
        audio_only.eval()
    assert torch.allclose(train_present, eval_no_face, atol=1e-6, rtol=0)


@pytest.mark.parametrize("variant", _marked(AUDIO_VARIANTS[:1]), ids=_id)
def test_modality_dropout_is_per_sample(variant) -> None:
    """p_both=0, p_video=0.5: each window of a batch is video-only or audio-only, at random."""
    name, opts = variant
    model = variant_of(name, opts, **_no_dropout(name), p_both=0.0, p_video=0.5)
    _, _, visual, audio = data(name, **opts)
    n = 32
    visual, audio = visual[:1].expand(n, -1, -1), audio[:1].expand(n, -1, -1)
    with torch.no_grad():
        video_only = model.head(visual[:1], None)
        audio_only = model.head(visual[:1], audio[:1], visual_present=torch.zeros(1))
        torch.manual_seed(5)
        model.train()
        out = model.head(visual, audio)
        model.eval()
    is_video = (out - video_only).abs().amax(dim=1) <= 1e-6
    is_audio = (out - audio_only).abs().amax(dim=1) <= 1e-6
    assert (is_video | is_audio).all()
    assert is_video.any() and is_audio.any()


# ------------------------------------------------------------------------------ MTL-DAN


def test_mtl_dan_frame_encoder_is_frozen() -> None:
    model = build("mtl_dan")
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(n.startswith(("lstm.", "fc.")) for n in trainable)
    for prefix in ("backbone.", "expr_head.", "au_head.", "va_fc."):
        assert any(n.startswith(prefix) for n in frozen)
    # Training the head never moves the MTL-DAN's BatchNorm statistics.
    before = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    model.train()
    assert not model.backbone.training and not model.expr_head.training
    assert model.lstm.training
    faces = data("mtl_dan")[0]
    model(faces).sum().backward()
    after = model.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())
    model.zero_grad(set_to_none=True)
    model.eval()

    unfrozen = build("mtl_dan", freeze_frame_encoder=False)
    assert all(p.requires_grad for p in unfrozen.parameters())
    assert count_parameters(unfrozen) == count_parameters(model)
    assert count_parameters(model, trainable_only=True) < count_parameters(unfrozen) // 100


def test_mtl_dan_frame_features() -> None:
    feats = data("mtl_dan")[2].flatten(0, 1)  # [B*T, 22]
    expr, au, va = feats[:, :8], feats[:, 8:20], feats[:, 20:]
    assert torch.allclose(expr.sum(dim=1), torch.ones(B * T), atol=1e-5)
    assert ((au >= 0) & (au <= 1)).all()
    assert (va.abs() <= 1).all()


# ------------------------------------------------------------------------------ backbones


def _torchvision_like(backbone: str) -> dict[str, torch.Tensor]:
    """A full torchvision-named ImageNet state dict (our layers use torchvision's names)."""
    full = {"resnet18": resnet18, "resnet50": resnet50}.get(backbone)
    model = full(num_classes=1000) if full else vgg16()
    return model.state_dict()


@pytest.mark.parametrize(
    "variant, source, unexpected_prefixes",
    [
        (("dual_branch", {}), "resnet18", ("layer4.", "fc.")),
        (("cnn_lstm", {}), "resnet50", ("fc.",)),
        (("cnn_lstm", {"backbone": "vgg16"}), "vgg16", ("classifier.6.",)),
        (("mtl_dan", {}), "resnet18", ("fc.",)),
    ],
    ids=["dual_branch", "cnn_lstm-resnet50", "cnn_lstm-vgg16", "mtl_dan"],
)
def test_backbone_loads_torchvision_state_dict(variant, source, unexpected_prefixes) -> None:
    name, opts = variant
    state = _torchvision_like(source)
    # torchvision's key counts: resnet18 122, resnet50 320, vgg16 32.
    assert len(state) == {"resnet18": 122, "resnet50": 320, "vgg16": 32}[source]
    backbone = create_model(name, window=WINDOW, **opts).backbone
    result = backbone.load_state_dict(state, strict=False)  # what the pretrained loader does
    assert result.missing_keys == []
    assert result.unexpected_keys
    assert all(k.startswith(unexpected_prefixes) for k in result.unexpected_keys)
    assert set(backbone.state_dict()) <= set(state)


def test_torchvision_names_spot_checks() -> None:
    r18 = resnet18(num_classes=1000).state_dict()
    assert "layer2.0.downsample.0.weight" in r18 and "layer2.0.downsample.1.running_var" in r18
    assert "layer1.0.downsample.0.weight" not in r18 and "fc.weight" in r18
    r50 = resnet50().state_dict()
    assert "layer1.0.downsample.0.weight" in r50 and "layer4.2.conv3.weight" in r50
    assert r50["layer4.2.conv3.weight"].shape == (2048, 512, 1, 1)
    v = vgg16(classifier_layers=5).state_dict()
    convs = sorted({int(k.split(".")[1]) for k in v if k.startswith("features.")})
    assert convs == [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]
    assert sorted({k.rsplit(".", 1)[0] for k in v if k.startswith("classifier.")}) == [
        "classifier.0",
        "classifier.3",
    ]
    assert resnet18(num_stages=3).out_channels == 256


# ------------------------------------------------------------------------------ layers


@pytest.mark.parametrize("size", [(3, 3), (14, 14), (5, 9), (7, 7)])
def test_exportable_adaptive_pool_matches_torch(size) -> None:
    x = torch.randn(2, 4, *size)
    ours = ExportableAdaptiveAvgPool2d(7)(x)
    assert torch.allclose(ours, F.adaptive_avg_pool2d(x, 7), atol=1e-6)


def test_transformer_is_state_dict_compatible_with_torch() -> None:
    torch.manual_seed(0)
    ours = transformer_encoder(32, 2, 4, 64, dropout=0.0)
    layer = nn.TransformerEncoderLayer(
        32, 4, 64, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
    )
    ref = nn.TransformerEncoder(layer, 2, norm=nn.LayerNorm(32), enable_nested_tensor=False)
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(3, 10, 32)
    assert torch.allclose(ours(x), ref(x), atol=1e-5)


def test_tcn_is_causal_and_keeps_length() -> None:
    torch.manual_seed(0)
    tcn = TemporalConvNet(6, 16, dropout=0.0).eval()
    assert tcn.receptive_field == 63
    x = torch.randn(1, 20, 6)
    y = tcn(x)
    assert y.shape == (1, 20, 16)
    x2 = x.clone()
    x2[:, 12] += 1.0
    diff = (tcn(x2) - y).abs().amax(dim=(0, 2))
    assert (diff[:12] == 0).all() and (diff[12:] > 0).all()


# ------------------------------------------------------------------------------ ONNX


@pytest.mark.slow  # the session's export of each architecture takes 15-30 s on 2 cores
@pytest.mark.parametrize("name", list_models())
def test_onnx_export_matches_torch(name: str, onnx_exports) -> None:
    """The session's export of ``name`` (conftest: exported once, from the same seed as
    ``build(name)``) runs this module's windows in ONNX Runtime: every frame of the batch, and
    the head with the second window's audio flagged absent. models/export.py's own checks are
    in test_export.py."""
    model = build(name)
    export = onnx_exports[name]
    theirs = export.model.state_dict()
    assert all(torch.equal(v, theirs[k]) for k, v in model.state_dict().items())
    faces, tokens, visual, _ = data(name)
    encoder = ort_session(export.paths["frame_encoder"])
    frames = faces.flatten(0, 1).numpy()  # [B*T, 3, S, S]: another batch size than the export's
    got = encoder.run(None, {"faces": frames})[0]
    assert onnx_error(got, visual.flatten(0, 1).numpy()) <= FP32_TOLERANCE

    args = {"visual": visual, "visual_present": torch.ones(B)}
    if tokens is not None:
        # The audio encoder graph: each token of the batch's windows, as one batch [B*T, F].
        audio = ort_session(export.paths["audio_encoder"])
        got = audio.run(None, {"audio_tokens": tokens.flatten(0, 1).numpy()})[0]
        with torch.no_grad():
            features = model.encode_audio(tokens)
        assert onnx_error(got, features.flatten(0, 1).numpy()) <= FP32_TOLERANCE
        args.update(audio_features=features, audio_present=torch.tensor([1.0, 0.0]))
    names = head_input_names(model)
    with torch.no_grad():
        expected = head_graph(model)(*(args[n] for n in names)).numpy()
    head = ort_session(export.paths["head"])
    got = head.run(None, {n: args[n].numpy() for n in names})[0]
    assert got.shape == (B, NUM_EMOTIONS)
    assert onnx_error(got, expected) <= FP32_TOLERANCE
