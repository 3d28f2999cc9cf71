"""``mtl_dan``: the recipe of Oh et al. (ABAW5): a frozen per-frame MTL-DAN, an LSTM head,
PCC (or CCC) loss.

The MTL-DAN (EXPR + AU + VA heads on a ResNet18, trained on Aff-Wild2) is kept frozen, so it
needs its pretrained weights: without ``--pretrained`` the model's own reason
(``requires_pretrained_reason``) is the refusal. Its 22-d features are computed once per clip
and only the LSTM head trains on them. ``model: {freeze_frame_encoder: false}`` trains the
whole model end to end on the cached windows instead.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from eri.training.recipes.base import Recipe, Stage, head_stage, window_forward

if TYPE_CHECKING:
    from eri.models.base import StreamingModel
    from eri.training.trainer import Trainer


class MtlDanRecipe(Recipe):
    """Frozen MTL-DAN features (computed once) -> LSTM head."""

    name = "mtl_dan"
    arch = "mtl_dan"
    #: The per-frame MTL-DAN's part (``model.parts()``).
    FRAME_PART = "frame_encoder"

    def frozen_parts(self, model: StreamingModel) -> tuple[str, ...]:
        return (self.FRAME_PART,) if model.config.get("freeze_frame_encoder", True) else ()

    def stages(self, run: Trainer) -> Iterator[Stage]:
        model = run.model
        frozen = model.frozen_parts()
        parts = tuple(p for p in model.parts() if p not in frozen)
        if self.FRAME_PART in frozen:
            yield head_stage(run, "head", parts, self.config.epochs)
        else:
            windows = lambda: (run.train_set, run.val_set)  # noqa: E731
            yield Stage("end_to_end", parts, window_forward, windows, self.config.epochs)
