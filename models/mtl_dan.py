"""``mtl_dan``: the MTL-DAN + LSTM ERI system of Oh et al. (ABAW5), streaming.

Per frame (``encode_frames``), a multi-task DAN (Wen et al., "Distract Your Attention:
Multi-head Cross Attention Network for Facial Expression Recognition")::

    face [3, 112, 112] -> ImageNet normalisation -> ResNet18 conv1..layer4 -> x [512, 4, 4]
    EXPR attention: num_heads cross-attention heads on x -> [H, 512] -> log_softmax over
                    heads -> sum -> e [512]
    AU attention:   its own num_heads heads on x, same fusion -> u [512]
    shared feature: [e, u] [1024], fed to every task head (as in the paper):
        EXPR: Linear(1024, 8) -> BatchNorm1d -> softmax                             [8]
        AU:   Linear(1024, 12) -> BatchNorm1d -> sigmoid                            [12]
        VA:   Linear(1024, 2) -> tanh                                               [2]
    -> concat                                                                   (D = 22)

Each cross-attention head is DAN's SpatialAttention (1x1 conv 512->256 + BN, then 3x3, 1x3 and
3x1 convs 256->512 + BN summed, ReLU, summed over channels into one map that multiplies x)
followed by ChannelAttention (GAP -> Linear(512, 32) -> BN -> ReLU -> Linear(32, 512) ->
sigmoid, scaling the pooled vector). Module names follow DAN's code (``cat_head{i}.sa.conv1x1.0``,
``fc``, ``bn``) so DAN attention weights load by name.

As in the paper the MTL-DAN is a frozen feature extractor (``freeze_frame_encoder=True``, the
part ``frame_encoder``): its parameters do not train and it stays in eval mode (BatchNorm
running statistics) even while the model trains. Frozen, it must hold pretrained MTL-DAN
weights (:meth:`MtlDan.load_pretrained`): at random initialisation it gives every face a
one-hot EXPR and 0/1 AUs (its 22 features hardly vary from face to face), so training refuses it
(:meth:`MtlDan.requires_pretrained_reason`); ``freeze_frame_encoder=False`` trains it end to
end instead. Per window (``head``): LSTM over [B, T, 22] -> last hidden state -> Linear(7) ->
sigmoid. No audio. The default window samples about one frame a second, 12 over 12 s, as the
paper samples about 12 frames per clip.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from eri.models.audio import AudioSpec
from eri.models.base import StreamingModel, presence
from eri.models.layers import keep, resnet18
from eri.models.registry import register_model
from eri.models.spec import NUM_EMOTIONS, CropSpec, WindowSpec
from eri.models.weights import LoadReport, load_into, read_state_dict

log = logging.getLogger(__name__)

NUM_EXPR = 8  # Aff-Wild2 EXPR: neutral, anger, disgust, fear, happiness, sadness, surprise, other
NUM_AU = 12  # Aff-Wild2 AUs 1, 2, 4, 6, 7, 10, 12, 15, 23, 24, 25, 26
NUM_VA = 2
#: The shared feature: the EXPR and AU attention features concatenated.
SHARED_DIM = 2 * 512


class SpatialAttention(nn.Module):
    """DAN spatial attention: [N, 512, h, w] -> x * (one non-negative map [N, 1, h, w])."""

    def __init__(self, channels: int = 512, reduced: int = 256) -> None:
        super().__init__()
        self.conv1x1 = nn.Sequential(nn.Conv2d(channels, reduced, 1), nn.BatchNorm2d(reduced))
        self.conv_3x3 = nn.Sequential(
            nn.Conv2d(reduced, channels, 3, padding=1), nn.BatchNorm2d(channels)
        )
        self.conv_1x3 = nn.Sequential(
            nn.Conv2d(reduced, channels, (1, 3), padding=(0, 1)), nn.BatchNorm2d(channels)
        )
        self.conv_3x1 = nn.Sequential(
            nn.Conv2d(reduced, channels, (3, 1), padding=(1, 0)), nn.BatchNorm2d(channels)
        )
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv1x1(x)
        y = self.relu(self.conv_3x3(y) + self.conv_1x3(y) + self.conv_3x1(y))
        return x * y.sum(dim=1, keepdim=True)


class ChannelAttention(nn.Module):
    """DAN channel attention: [N, 512, h, w] -> pooled [N, 512] scaled by a sigmoid gate."""

    def __init__(self, channels: int = 512, reduced: int = 32) -> None:
        super().__init__()
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.attention = nn.Sequential(
            nn.Linear(channels, reduced),
            nn.BatchNorm1d(reduced),
            nn.ReLU(),
            nn.Linear(reduced, channels),
            nn.Sigmoid(),
        )

    def forward(self, sa: torch.Tensor) -> torch.Tensor:
        pooled = torch.flatten(self.gap(sa), 1)
        return pooled * self.attention(pooled)


class CrossAttentionHead(nn.Module):
    """One DAN head: spatial then channel attention. [N, 512, h, w] -> [N, 512]."""

    def __init__(self) -> None:
        super().__init__()
        self.sa = SpatialAttention()
        self.ca = ChannelAttention()
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.001)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ca(self.sa(x))


def init_task_linear(fc: nn.Linear) -> None:
    """Task layers read the shared feature, whose entries reach ~3e4 at random initialisation
    (the spatial attention sums 512 channels): initialised like DAN's attention Linear layers
    (normal, std 0.001). With torch's default init the untrained logits reach ~4e3, and the
    float32 summation order alone (torch vs ONNX Runtime) moved an AU output by 1.5e-4; now
    they stay ~3e2 and it moves by 3e-8. Pretrained weights replace all of this."""
    nn.init.normal_(fc.weight, std=0.001)
    nn.init.zeros_(fc.bias)


class DanTaskHead(nn.Module):
    """DAN's multi-head cross attention for one task: ``num_heads`` heads, log-softmax across
    heads, summed (:meth:`features`, [N, 512, h, w] -> [N, 512]); then ``fc`` -> ``bn`` on the
    shared feature (:meth:`classify`, [N, 1024] -> logits [N, num_classes])."""

    def __init__(self, num_classes: int, num_heads: int = 4, in_features: int = SHARED_DIM) -> None:
        super().__init__()
        self.num_heads = num_heads
        for i in range(num_heads):
            setattr(self, f"cat_head{i}", CrossAttentionHead())
        self.fc = nn.Linear(in_features, num_classes)
        self.bn = nn.BatchNorm1d(num_classes)
        init_task_linear(self.fc)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        heads = torch.stack(
            [getattr(self, f"cat_head{i}")(x) for i in range(self.num_heads)], dim=1
        )  # [N, H, 512]
        if self.num_heads > 1:
            heads = F.log_softmax(heads, dim=1)
        return heads.sum(dim=1)

    def classify(self, shared: torch.Tensor) -> torch.Tensor:
        return self.bn(self.fc(shared))


@register_model
class MtlDan(StreamingModel):
    """Frozen multi-task DAN (EXPR 8 + AU 12 + VA 2 per frame) + LSTM temporal head."""

    arch_name = "mtl_dan"
    default_audio = None
    default_window = WindowSpec(num_samples=12, context_s=12.0)
    feature_dim = NUM_EXPR + NUM_AU + NUM_VA  # 22
    PARTS = {
        "frame_encoder": ("backbone", "expr_head", "au_head", "va_fc"),
        "temporal": ("lstm", "fc"),
    }
    PRETRAINED_PARTS = ("frame_encoder",)

    def __init__(
        self,
        *,
        window: WindowSpec,
        crop: CropSpec,
        audio: AudioSpec | None,
        num_heads: int = 4,
        freeze_frame_encoder: bool = True,
        hidden: int = 128,
    ) -> None:
        # No audio branch: an audio spec, if one is passed, is not used.
        super().__init__(window=window, crop=crop, audio=None)
        self.freeze_frame_encoder = bool(freeze_frame_encoder)

        # ---- per frame (the MTL-DAN)
        self.backbone = resnet18()  # conv1..layer4 -> [512, 4, 4]; pooled 512-d, no fc
        self.expr_head = DanTaskHead(NUM_EXPR, num_heads)
        self.au_head = DanTaskHead(NUM_AU, num_heads)
        self.va_fc = nn.Linear(SHARED_DIM, NUM_VA)
        init_task_linear(self.va_fc)

        # ---- per window
        self.lstm = nn.LSTM(self.feature_dim, hidden, batch_first=True)
        self.fc = nn.Linear(hidden, NUM_EMOTIONS)
        if self.freeze_frame_encoder:
            self.freeze("frame_encoder")

    def frame_encoder_modules(self) -> list[nn.Module]:
        """The MTL-DAN's modules (the part ``frame_encoder``)."""
        return [getattr(self, n) for n in self.PARTS["frame_encoder"]]

    def load_pretrained(self, path: str | Path) -> LoadReport:
        """Pretrained weights for the MTL-DAN: a file with its attention heads
        (``expr_head.*``/``au_head.*``, this module's names) fills the whole frame encoder and
        marks the model pretrained when nothing was missing; any other file is taken as
        ResNet18 backbone weights (the heads keep their random initialisation, so a frozen
        frame encoder is still refused)."""
        state = read_state_dict(path)
        if not any(("expr_head." in k or "au_head." in k) for k in state):
            report = super().load_pretrained(path)
            self.pretrained_loaded.fill_(0)
            return report
        encoder = nn.ModuleDict({n: getattr(self, n) for n in self.PARTS["frame_encoder"]})
        report = load_into(encoder, state, source=str(path), strict=False)
        self.pretrained_loaded.fill_(int(not report.missing))
        log.info("MTL-DAN weights from %s: %s", path, report.summary())
        if report.missing:
            log.warning("MTL-DAN tensors not in %s (left random): %s", path, report.missing)
        return report

    def requires_pretrained_reason(self) -> str | None:
        """The sentence refusing to train a frozen MTL-DAN without pretrained weights."""
        if "frame_encoder" not in self.frozen_parts() or self.pretrained:
            return None
        return (
            "mtl_dan's frame encoder (the MTL-DAN) is frozen but holds no pretrained MTL-DAN "
            "weights: at random initialisation it gives every face a one-hot expression and "
            "0/1 action units, so most of its 22 features never vary and the LSTM has nothing "
            "to learn from; pass pretrained MTL-DAN weights (--pretrained PATH) or set "
            "freeze_frame_encoder: false to train it end to end."
        )

    # ------------------------------------------------------------------ the split
    def encode_frames(self, faces: torch.Tensor) -> torch.Tensor:
        """faces [N, 3, S, S] in [0, 1] -> [N, 22] = EXPR probs 8 | AU probs 12 | VA 2."""
        x = self.backbone.forward_features(self.normalize(faces))  # [N, 512, h, w]
        shared = torch.cat([self.expr_head.features(x), self.au_head.features(x)], dim=-1)
        expr = torch.softmax(self.expr_head.classify(shared), dim=-1)
        au = torch.sigmoid(self.au_head.classify(shared))
        va = torch.tanh(self.va_fc(shared))
        return torch.cat([expr, au, va], dim=-1)

    def head(
        self,
        visual: torch.Tensor,
        audio: torch.Tensor | None = None,
        audio_present: torch.Tensor | None = None,
        visual_present: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """visual [B, T, 22] (audio ignored), visual_present [B] -> intensities [B, 7].

        A window without a face (``visual_present=0``) zeroes the LSTM summary, so the output
        is the head's bias prior.
        """
        summary = self.lstm(visual)[0][:, -1]  # [B, hidden]
        summary = keep(summary, presence(visual_present, visual).view(-1, 1))
        return torch.sigmoid(self.fc(summary))
