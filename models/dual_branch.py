"""``dual_branch``: the USTC dual-branch ERI system (Yu et al., ABAW5 2nd place), streaming.

Per frame (``encode_frames``)::

    face [3, 112, 112] -> ImageNet normalisation -> ResNet18 conv1..layer3 -> [256, 7, 7]
    -> 49 tokens + learned spatial position embedding [49, 256]
    -> spatial Transformer encoder (4 blocks, 4 heads, d=256, pre-norm)
    -> attention pooling over the 49 tokens -> [256]                                (D = 256)

Per audio token (``encode_audio``): the raw 1024-d stacked MFCC token -> LayerNorm(1024)
(``audio_norm="token"``, the default) or a z-score with dataset statistics
(``audio_norm="dataset"``, :meth:`~eri.models.base.StreamingModel.set_audio_stats`; keeps
loudness, which a per-token LayerNorm hides) (A = 1024).

Per window (``head``), for each branch (visual [B, T, 256], audio [B, T, 1024])::

    causal dilated TCN (1x1 projection to 128, kernel 3, dilations 1, 2, 4, 8, 16, residual)
    -> + learned temporal position embedding [T, 128]
    -> temporal Transformer encoder (2 layers, 4 heads, d=128, pre-norm)            [B, T, 128]

then modality-dropout fusion: each branch's output is gated by a keep mask [B] (training: both
kept with ``p_both``, else video alone with ``p_video``, else audio alone; always: the presence
flags > 0), concatenated [B, T, 256] -> LayerNorm -> attention aggregation over T ->
Linear(256, 7) -> sigmoid. A gated branch is exactly zero, and audio ``None`` is a zero audio
branch, so a missing modality at inference is exactly the input training-time dropout produced.

Staged training, as in the paper (parts ``visual``, ``audio``, ``fusion``)::

    v, a = model.branch_features(visual, audio)          # the two temporal encoders
    model.branch_output("visual", v)                     # per-branch regression layer -> [B, 7]
    model.fuse(v, a, visual_present, audio_present)      # the fusion above -> [B, 7]
    model.head(visual, audio, ...) == model.fuse(*model.branch_features(visual, audio), ...)

Each branch first trains alone through its own regression layer (attention pooling over T ->
Linear(d, 7) -> sigmoid), then both are frozen (``model.freeze("visual")``, ...) and the fusion
trains on their features. ``head`` (and so ``forward`` and the exports) never uses the branch
regression layers: a DDP trainer that trains end to end needs ``find_unused_parameters=True``
or those layers frozen.

Choices not fixed by the paper:

- ``spatial_ff=1024`` (4 x d): the standard Transformer/ViT ratio. The frame encoder runs once
  per frame, and the 4 spatial blocks at 1024 cost ~0.32 GFLOPs of the ~1.0 GFLOPs per frame
  (ResNet18 stem ~0.7); halving it would save ~10 % per frame for a weaker encoder.
- temporal Transformer: 2 layers, 4 heads (head dim 32), ``temporal_ff=512`` (4 x d). The head
  re-runs at camera rate on only T=32 steps, so its cost (~0.1 GFLOPs per step) is minor.
- pre-norm layers with GELU and a final LayerNorm (stable training from scratch); attention
  implemented in plain ops with ``nn.MultiheadAttention`` parameter names (see
  :class:`models.layers.SelfAttention`) so ONNX export sees the same math as training.
- the TCN's receptive field (63 steps) covers the whole window; it is causal so each step
  only summarises the past, the Transformer then relates all steps of the window.
"""

from __future__ import annotations

import torch
from torch import nn

from eri.models.audio import AudioSpec
from eri.models.base import ModelConfigError, StreamingModel, gate_modalities
from eri.models.layers import AttentionPool, TemporalConvNet, resnet18, transformer_encoder
from eri.models.registry import register_model
from eri.models.spec import NUM_EMOTIONS, CropSpec, WindowSpec


def _resnet_grid(size: int, num_stages: int) -> int:
    """Side of a ResNet feature map for a ``size`` x ``size`` input after ``num_stages``."""
    side = size
    for _ in range(2 + max(num_stages - 1, 0)):  # conv1, maxpool, then one /2 per later stage
        side = -(-side // 2)
    return side


class TemporalBranch(nn.Module):
    """One modality's temporal encoder: TCN -> + position embedding -> Transformer.

    [B, T, C_in] -> [B, T, d]. Windows shorter than ``max_len`` use the first T embeddings.
    """

    def __init__(
        self,
        in_dim: int,
        d: int,
        max_len: int,
        *,
        tcn_kernel: int,
        tcn_levels: int,
        layers: int,
        heads: int,
        ff: int,
        dropout: float,
    ) -> None:
        super().__init__()
        self.tcn = TemporalConvNet(
            in_dim,
            d,
            kernel_size=tcn_kernel,
            dilations=tuple(2**i for i in range(tcn_levels)),
            dropout=dropout,
        )
        self.pos = nn.Parameter(torch.zeros(1, max_len, d))
        nn.init.trunc_normal_(self.pos, std=0.02)
        self.encoder = transformer_encoder(d, layers, heads, ff, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, T, C_in] -> [B, T, d]."""
        y = self.tcn(x)
        y = y + self.pos[:, : y.shape[1]]
        return self.encoder(y)


class BranchRegressor(nn.Module):
    """One branch's own regression layer: attention pooling over T -> Linear -> sigmoid.
    [B, T, d] -> [B, 7]."""

    def __init__(self, d: int, dropout: float) -> None:
        super().__init__()
        self.pool = AttentionPool(d)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(d, NUM_EMOTIONS)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.out(self.drop(self.pool(feats))))


BRANCHES = ("visual", "audio")


@register_model
class DualBranch(StreamingModel):
    """Dual-branch (visual + MFCC audio) ERI model with modality-dropout fusion."""

    arch_name = "dual_branch"
    default_audio = AudioSpec()  # 128 MFCC x 8 frames = 1024-d tokens
    feature_dim = 256
    PARTS = {
        "visual": (
            "backbone",
            "spatial_pos",
            "spatial_encoder",
            "spatial_pool",
            "visual_temporal",
            "visual_regressor",
        ),
        "audio": ("audio_norm", "audio_temporal", "audio_regressor"),
        "fusion": ("fusion_norm", "temporal_pool", "out"),
    }

    def __init__(
        self,
        *,
        window: WindowSpec,
        crop: CropSpec,
        audio: AudioSpec | None,
        spatial_layers: int = 4,
        spatial_heads: int = 4,
        spatial_ff: int = 1024,
        spatial_dropout: float = 0.1,
        temporal_dim: int = 128,
        tcn_kernel: int = 3,
        tcn_levels: int = 5,
        temporal_layers: int = 2,
        temporal_heads: int = 4,
        temporal_ff: int = 512,
        dropout: float = 0.1,
        p_both: float = 0.9,
        p_video: float = 0.5,
        audio_norm: str = "token",
    ) -> None:
        super().__init__(window=window, crop=crop, audio=audio)
        self._init_audio_norm(audio_norm)
        d = self.feature_dim
        self.p_both = float(p_both)
        self.p_video = float(p_video)

        # ---- per frame
        self.backbone = resnet18(num_stages=3)  # conv1..layer3 -> [256, S/16, S/16]
        grid = _resnet_grid(crop.size, 3)
        self.num_spatial_tokens = grid * grid
        self.spatial_pos = nn.Parameter(torch.zeros(1, grid * grid, d))
        nn.init.trunc_normal_(self.spatial_pos, std=0.02)
        self.spatial_encoder = transformer_encoder(
            d, spatial_layers, spatial_heads, spatial_ff, spatial_dropout
        )
        self.spatial_pool = AttentionPool(d)

        # ---- per audio token
        branch = {
            "tcn_kernel": tcn_kernel,
            "tcn_levels": tcn_levels,
            "layers": temporal_layers,
            "heads": temporal_heads,
            "ff": temporal_ff,
            "dropout": dropout,
        }
        t = window.num_samples
        self.visual_temporal = TemporalBranch(d, temporal_dim, t, **branch)
        self.visual_regressor = BranchRegressor(temporal_dim, dropout)
        if audio is not None:
            if audio_norm == "token":
                self.audio_norm = nn.LayerNorm(audio.token_dim)
            self.audio_feature_dim = audio.token_dim
            self.audio_temporal = TemporalBranch(audio.token_dim, temporal_dim, t, **branch)
            self.audio_regressor = BranchRegressor(temporal_dim, dropout)
        fused = temporal_dim * (2 if audio is not None else 1)

        # ---- fusion
        self.fusion_norm = nn.LayerNorm(fused)
        self.temporal_pool = AttentionPool(fused)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(fused, NUM_EMOTIONS)

    # ------------------------------------------------------------------ the split
    def encode_frames(self, faces: torch.Tensor) -> torch.Tensor:
        """faces [N, 3, S, S] in [0, 1] -> features [N, 256]."""
        fmap = self.backbone.forward_features(self.normalize(faces))  # [N, 256, g, g]
        tokens = fmap.flatten(2).transpose(1, 2) + self.spatial_pos  # [N, g*g, 256]
        return self.spatial_pool(self.spatial_encoder(tokens))

    def encode_audio(self, tokens: torch.Tensor) -> torch.Tensor:
        """Raw stacked MFCC tokens [B, T, F] -> per-token normalised [B, T, F] (A = F)."""
        if not self.has_audio:
            return super().encode_audio(tokens)
        if self.uses_audio_stats:
            return self.dataset_audio_norm(tokens)
        return self.audio_norm(tokens)

    def branch_features(
        self, visual: torch.Tensor | None, audio: torch.Tensor | None = None
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The temporal encoders: visual [B, T, 256], audio [B, T, A] | None (encoded tokens)
        -> (v [B, T, d], a [B, T, d] | None); a is None without audio or an audio branch.
        ``visual=None`` skips the visual encoder (v None), for training the audio branch."""
        v = None if visual is None else self.visual_temporal(visual)
        a = self.audio_temporal(audio) if audio is not None and self.has_audio else None
        return v, a

    def branch_output(self, name: str, feats: torch.Tensor) -> torch.Tensor:
        """One branch alone: its features [B, T, d] -> its own regression [B, 7] in [0, 1]."""
        if name not in BRANCHES or (name == "audio" and not self.has_audio):
            offered = BRANCHES if self.has_audio else BRANCHES[:1]
            raise ModelConfigError(
                f"dual_branch has no branch {name!r}; choose {' or '.join(offered)}."
            )
        return getattr(self, f"{name}_regressor")(feats)

    def fuse(
        self,
        v: torch.Tensor,
        a: torch.Tensor | None,
        visual_present: torch.Tensor | None = None,
        audio_present: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Modality-dropout fusion of the branch features: v [B, T, d], a [B, T, d] | None
        (None = audio missing), presence [B] -> intensities [B, 7]."""
        if self.has_audio and a is None:  # missing: a zero branch, flagged absent
            a, audio_present = torch.zeros_like(v), v.new_zeros(v.shape[0])
        dropout = (self.p_both, self.p_video) if self.training else None
        fused = gate_modalities(v, a, visual_present, audio_present, dropout)  # [B, T, 2d | d]
        pooled = self.temporal_pool(self.fusion_norm(fused))  # [B, 2d]
        return torch.sigmoid(self.out(self.drop(pooled)))

    def head(
        self,
        visual: torch.Tensor,
        audio: torch.Tensor | None = None,
        audio_present: torch.Tensor | None = None,
        visual_present: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """visual [B, T, 256], audio [B, T, A] | None, presence [B] -> intensities [B, 7];
        exactly ``fuse(*branch_features(visual, audio), visual_present, audio_present)``."""
        v, a = self.branch_features(visual, audio)
        return self.fuse(v, a, visual_present, audio_present)
