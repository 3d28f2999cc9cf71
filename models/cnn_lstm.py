"""``cnn_lstm``: the CNN-LSTM ERI system of Qian et al. (ABAW5), streaming.

Per frame (``encode_frames``): an ImageNet CNN used as a feature extractor::

    backbone="resnet50": ResNet50 conv1..layer4 -> global average pool -> [2048]     (D = 2048)
    backbone="vgg16":    VGG16 features -> AdaptiveAvgPool2d(7) -> fc6, ReLU, dropout,
                         fc7, ReLU -> [4096]                                        (D = 4096)

Per audio token (``encode_audio``, ``use_audio=True``): DeepSpectrum-style. A log-mel token of
``stack`` frames x ``n_mels`` bins (8 x 128 = 1024 values, frame-major), z-scored with dataset
statistics first when ``audio_norm="dataset"``, becomes a one-channel [1, n_mels, stack]
spectrogram image -> a small CNN (input BatchNorm, three conv3x3-BN-ReLU blocks with two 2x2
max pools, global average pool, Linear) -> [audio_dim] (A = 128). The CNN sees one token at a
time, so its features are per token: the same numbers whether a window's T tokens are encoded
together or one by one as they arrive (tested), and a live runner may cache them per token.

Per window (``head``)::

    visual: LayerNorm(D) per frame -> LSTM over [B, T, D] -> last hidden state [B, hidden]
    audio LSTM over [B, T, A]  -> last hidden state [B, audio_hidden]  (zeroed when missing)
    concat -> Linear -> ReLU -> dropout -> Linear(7) -> sigmoid

The frame LayerNorm is this project's addition: raw ImageNet features (2048/4096 values, up to
~170 in magnitude) saturate the LSTM's gates, and the head collapsed to a constant output at
lr 1e-3; normalised inside the head, the normalisation travels with the weights and the ONNX.
The paper fuses without modality dropout; here training also applies the shared modality
dropout to the two LSTM summaries, so "audio missing" (a zero audio summary) is an input the
model was trained on.

Parts: ``backbone`` (the ImageNet CNN; meant to be pretrained when frozen), ``visual`` (the
backbone, the frame norm and the visual LSTM), ``audio`` (spectrogram CNN + LSTM), ``fusion``.
"""

from __future__ import annotations

import torch
from torch import nn

from eri.models.audio import AudioSpec
from eri.models.base import ModelConfigError, StreamingModel, gate_modalities
from eri.models.layers import resnet50, vgg16
from eri.models.registry import register_model
from eri.models.spec import NUM_EMOTIONS, CropSpec, WindowSpec

BACKBONES = ("resnet50", "vgg16")


class SpectrogramCNN(nn.Module):
    """DeepSpectrum-style per-token spectrogram CNN.

    tokens [N, stack * n_mels] (frame-major: ``stack`` frames of ``n_mels`` bins) ->
    image [N, 1, n_mels, stack] -> [N, out_dim].
    """

    def __init__(self, n_mels: int, stack: int, out_dim: int = 128, width: int = 32) -> None:
        super().__init__()
        self.n_mels = n_mels
        self.stack = stack
        self.input_norm = nn.BatchNorm2d(1)  # log-mel values are raw dB-like numbers

        def block(cin: int, cout: int, pool: bool) -> list[nn.Module]:
            mods: list[nn.Module] = [
                nn.Conv2d(cin, cout, 3, padding=1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(),
            ]
            if pool:
                mods.append(nn.MaxPool2d(2))
            return mods

        # 2x2 max pools after the first two blocks (8 frames -> 4 -> 2), fewer for tiny tokens.
        n_pools = min(2, max(min(n_mels, stack).bit_length() - 1, 0))
        pools = [i < n_pools for i in range(3)]
        self.features = nn.Sequential(
            *block(1, width, pools[0]),
            *block(width, 2 * width, pools[1]),
            *block(2 * width, 4 * width, pools[2]),
        )
        self.fc = nn.Linear(4 * width, out_dim)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """[N, stack * n_mels] -> [N, out_dim]."""
        img = tokens.reshape(-1, self.stack, self.n_mels).transpose(1, 2).unsqueeze(1)
        x = self.features(self.input_norm(img))  # [N, C, h, w]
        return self.fc(x.mean(dim=(2, 3)))


@register_model
class CnnLstm(StreamingModel):
    """ImageNet CNN features + LSTM, optional DeepSpectrum audio + LSTM, fusion layer."""

    arch_name = "cnn_lstm"
    default_audio = AudioSpec(kind="logmel")  # 8 frames x 128 mels = 1024-d tokens
    PARTS = {
        "backbone": ("backbone",),
        "visual": ("backbone", "visual_norm", "visual_lstm"),
        "audio": ("audio_cnn", "audio_lstm"),
        "fusion": ("fusion",),
    }
    PRETRAINED_PARTS = ("backbone",)

    def __init__(
        self,
        *,
        window: WindowSpec,
        crop: CropSpec,
        audio: AudioSpec | None,
        backbone: str = "resnet50",
        use_audio: bool = True,
        hidden: int = 256,
        audio_dim: int = 128,
        audio_hidden: int = 128,
        fusion_dim: int = 128,
        dropout: float = 0.3,
        backbone_dropout: float = 0.5,
        p_both: float = 0.9,
        p_video: float = 0.5,
        audio_norm: str = "token",
    ) -> None:
        if backbone not in BACKBONES:
            raise ModelConfigError(
                f"cnn_lstm backbone must be one of {', '.join(BACKBONES)}, got {backbone!r}."
            )
        super().__init__(window=window, crop=crop, audio=audio if use_audio else None)
        self._init_audio_norm(audio_norm)
        self.p_both = float(p_both)
        self.p_video = float(p_video)

        # ---- per frame
        if backbone == "resnet50":
            self.backbone: nn.Module = resnet50()  # pooled 2048-d, no fc
            self.feature_dim = 2048
        else:
            self.backbone = vgg16(classifier_layers=5, dropout=backbone_dropout)  # fc7 ReLU
            self.feature_dim = 4096

        # ---- per window
        self.visual_norm = nn.LayerNorm(self.feature_dim)
        self.visual_lstm = nn.LSTM(self.feature_dim, hidden, batch_first=True)
        summary = hidden
        if self.audio_spec is not None:
            spec = self.audio_spec
            self.audio_cnn = SpectrogramCNN(spec.n_coeffs, spec.stack, out_dim=audio_dim)
            self.audio_feature_dim = audio_dim
            self.audio_lstm = nn.LSTM(audio_dim, audio_hidden, batch_first=True)
            summary += audio_hidden
        self.fusion = nn.Sequential(
            nn.Linear(summary, fusion_dim),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(fusion_dim, NUM_EMOTIONS),
        )

    # ------------------------------------------------------------------ the split
    def encode_frames(self, faces: torch.Tensor) -> torch.Tensor:
        """faces [N, 3, S, S] in [0, 1] -> features [N, 2048 | 4096]."""
        return self.backbone(self.normalize(faces))

    def encode_audio(self, tokens: torch.Tensor) -> torch.Tensor:
        """Log-mel tokens [B, T, stack * n_mels] -> per-token CNN features [B, T, audio_dim]."""
        if not self.has_audio:
            return super().encode_audio(tokens)
        if self.uses_audio_stats:
            tokens = self.dataset_audio_norm(tokens)
        b, t = tokens.shape[:2]
        return self.audio_cnn(tokens.flatten(0, 1)).view(b, t, -1)

    def head(
        self,
        visual: torch.Tensor,
        audio: torch.Tensor | None = None,
        audio_present: torch.Tensor | None = None,
        visual_present: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """visual [B, T, D], audio [B, T, A] | None, presence [B] -> intensities [B, 7]."""
        hv = self.visual_lstm(self.visual_norm(visual))[0][:, -1]  # [B, hidden]
        ha = None
        if self.has_audio:
            if audio is None:  # missing: a zero summary, flagged absent
                ha = visual.new_zeros(visual.shape[0], self.audio_lstm.hidden_size)
                audio_present = visual.new_zeros(visual.shape[0])
            else:
                ha = self.audio_lstm(audio)[0][:, -1]  # [B, audio_hidden]
        dropout = (self.p_both, self.p_video) if self.training else None
        summary = gate_modalities(hv, ha, visual_present, audio_present, dropout)
        return torch.sigmoid(self.fusion(summary))
