"""``cnn_lstm``: the recipe of Qian et al. (ABAW5), visual only or multimodal, MSE.

With ``--pretrained`` ImageNet weights the CNN is what the paper used it as, a fixed feature
extractor: it is frozen, its per-frame features are computed once for every clip, and the
LSTM head (and the audio CNN + LSTM when ``model.use_audio``) trains on them. Without
pretrained weights the whole model trains end to end on the cached windows (much slower: a
ResNet50 per frame), with a warning.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from eri.training.recipes.base import FrameFeatureRecipe

if TYPE_CHECKING:
    from eri.models.base import StreamingModel

log = logging.getLogger(__name__)


class CnnLstmRecipe(FrameFeatureRecipe):
    """Frozen ImageNet CNN features (computed once) -> LSTM head; end to end without them."""

    name = "cnn_lstm"
    arch = "cnn_lstm"
    FRAME_PART = "backbone"

    def frozen_parts(self, model: StreamingModel) -> tuple[str, ...]:
        if self.config.pretrained:
            return (self.FRAME_PART,)
        log.warning(
            "cnn_lstm without --pretrained: the CNN trains from random weights, end to end; "
            "the paper used ImageNet weights (pass --pretrained PATH)"
        )
        return ()
