"""``mtl_dan``: the recipe of Oh et al. (ABAW5): a frozen per-frame MTL-DAN, an LSTM head,
PCC (or CCC) loss.

The MTL-DAN (EXPR + AU + VA heads on a ResNet18, trained on Aff-Wild2) is kept frozen, so it
needs its pretrained weights: without ``--pretrained`` the model's own reason
(``requires_pretrained_reason``) is the refusal. Its 22-d features are computed once per clip
and only the LSTM head trains on them. ``model: {freeze_frame_encoder: false}`` trains the
whole model end to end on the cached windows instead.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from eri.training.recipes.base import FrameFeatureRecipe

if TYPE_CHECKING:
    from eri.models.base import StreamingModel


class MtlDanRecipe(FrameFeatureRecipe):
    """Frozen MTL-DAN features (computed once) -> LSTM head."""

    name = "mtl_dan"
    arch = "mtl_dan"
    FRAME_PART = "frame_encoder"

    def frozen_parts(self, model: StreamingModel) -> tuple[str, ...]:
        return (self.FRAME_PART,) if model.config.get("freeze_frame_encoder", True) else ()
