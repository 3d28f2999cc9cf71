"""``dual_branch``: the staged recipe of Yu et al. (ABAW5 2nd place).

1. ``audio``: the audio branch alone (token normalisation, TCN + Transformer, its own
   regression layer) on the MFCC tokens;
2. ``visual``: the visual branch alone (per-frame ResNet18 stem + spatial Transformer, TCN +
   Transformer, its own regression layer) on the face crops;
3. ``fusion``: the best epoch of each branch is kept and frozen; their features
   (``branch_features``) are computed once for every clip, and only the fusion (modality
   dropout, attention aggregation, output layer) trains on them.

Adam, lr 1e-4, batch 64, lr halved when the validation mean PCC has not improved for 10
epochs, MSE (training/configs/dual_branch.yaml). The bundle holds the whole model, so
``head(visual, audio)`` = ``fuse(*branch_features(visual, audio))`` runs live unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch

from eri.training.recipes.base import Batch, Recipe, Stage, encode_visual

if TYPE_CHECKING:
    from eri.models.base import StreamingModel
    from eri.training.trainer import Trainer


def audio_forward(model: StreamingModel, batch: Batch) -> torch.Tensor:
    """The audio branch alone: raw tokens [B, T, F] -> its regression layer's [B, 7]."""
    tokens = batch["audio_tokens"]  # [B, T, F]
    _, feats = model.branch_features(None, model.encode_audio(tokens))
    return model.branch_output("audio", feats)


def visual_forward(model: StreamingModel, batch: Batch) -> torch.Tensor:
    """The visual branch alone: faces [B, T, 3, S, S] -> its regression layer's [B, 7]."""
    feats, _ = model.branch_features(encode_visual(model, batch["faces"]), None)
    return model.branch_output("visual", feats)


def branch_features(model: StreamingModel, batch: Batch) -> dict[str, torch.Tensor]:
    """Frozen branches' temporal features of a window batch: v, a [B, T, d]."""
    audio = None
    if model.has_audio:
        audio = model.encode_audio(batch["audio_tokens"])
    v, a = model.branch_features(encode_visual(model, batch["faces"]), audio)
    out = {"v": v}
    if a is not None:
        out["a"] = a
    return out


def fusion_forward(model: StreamingModel, batch: Batch) -> torch.Tensor:
    """The fusion on cached branch features -> [B, 7] (modality dropout while training)."""
    return model.fuse(
        batch["v"], batch.get("a"), batch["visual_present"], batch.get("audio_present")
    )


class DualBranchRecipe(Recipe):
    """Audio branch, visual branch, then fusion on their frozen features."""

    name = "dual_branch"
    arch = "dual_branch"

    def stages(self, run: Trainer) -> Iterator[Stage]:
        cfg = self.config
        windows = lambda: (run.train_set, run.val_set)  # noqa: E731
        if run.model.has_audio:
            yield Stage("audio", ("audio",), audio_forward, windows, cfg.branch_epochs)
        yield Stage("visual", ("visual",), visual_forward, windows, cfg.branch_epochs)

        def fusion_data():
            return (
                run.encode(run.train_set, branch_features),
                run.encode(run.val_set, branch_features),
            )

        yield Stage("fusion", ("fusion",), fusion_forward, fusion_data, cfg.epochs)
