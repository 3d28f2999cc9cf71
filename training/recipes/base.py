"""What a recipe is: how to build its model, and the stages that train it.

A recipe yields :class:`Stage` s; the trainer (:mod:`eri.training.trainer`) runs each one the
same way (optimizer, lr schedule on the validation mean PCC, best-epoch keeping, checkpoints,
DDP). A stage says which parts of the model train, what a batch becomes (``forward``: batch ->
intensities [B, 7]), and where its data comes from: the cached windows, or features the
recipe computed once from frozen parts (``run.encode``), which is how frozen per-frame
networks and the dual-branch fusion train without re-running what does not change.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from torch.utils.data import Dataset

from eri.training.config import ConfigError, TrainConfig

if TYPE_CHECKING:
    from eri.models.base import StreamingModel
    from eri.training.trainer import Trainer

log = logging.getLogger(__name__)

Batch = dict[str, torch.Tensor]
Forward = Callable[["StreamingModel", Batch], torch.Tensor]


@dataclass
class Stage:
    """One training stage.

    ``parts``: the model parts (``model.parts()``) that train; the others are frozen.
    ``forward``: batch -> intensities [B, 7]. ``data``: builds (train, val) datasets of batch
    dicts when the stage runs (not when a resumed run skips it). ``epochs``: its length.
    """

    name: str
    parts: tuple[str, ...]
    forward: Forward
    data: Callable[[], tuple[Dataset, Dataset]]
    epochs: int


class RowDataset(Dataset):
    """Rows of tensors computed once: ``columns[k]`` [N, ...] -> item ``{k: columns[k][i]}``."""

    def __init__(self, columns: dict[str, torch.Tensor]) -> None:
        sizes = {len(v) for v in columns.values()}
        if len(sizes) != 1:
            raise ValueError(f"RowDataset columns differ in length: {sizes}.")
        self.columns = columns
        self.size = sizes.pop()

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: v[i] for k, v in self.columns.items()}


#: Batch keys that pass through feature caching untouched.
PASS_KEYS = ("visual_present", "audio_present", "labels", "labelled", "index")


def window_forward(model: StreamingModel, batch: Batch) -> torch.Tensor:
    """The whole model on cached windows: faces [B, T, 3, S, S], tokens [B, T, F] -> [B, 7]."""
    return model(
        batch["faces"],
        batch.get("audio_tokens") if model.has_audio else None,
        batch.get("audio_present"),
        batch.get("visual_present"),
    )


def encode_visual(model: StreamingModel, faces: torch.Tensor) -> torch.Tensor:
    """faces [B, T, 3, S, S] -> per-frame features [B, T, D]."""
    b, t = faces.shape[:2]
    return model.encode_frames(faces.flatten(0, 1)).view(b, t, -1)


class Recipe:
    """Base class: build the model, prepare it from the data, yield the stages."""

    name: ClassVar[str]
    arch: ClassVar[str]

    def __init__(self, config: TrainConfig) -> None:
        self.config = config
        self.notes: dict[str, Any] = {}  # provenance the recipe adds (backbone load, ...)

    # ------------------------------------------------------------------ the model
    def model_options(self) -> dict[str, Any]:
        """Architecture options: the config's ``model`` mapping, plus ``audio_norm`` for an
        architecture that takes it."""
        options = dict(self.config.model)
        if accepts_option(self.arch, "audio_norm"):
            options.setdefault("audio_norm", self.config.audio_norm)
        return options

    def build_model(self) -> StreamingModel:
        """The architecture with the config's window, crop and options, its backbone loaded
        from ``pretrained`` when given; refuses a model that cannot train as configured (a
        frozen part that needs pretrained weights and got none)."""
        from eri.models.registry import create_model, get_model_class
        from eri.models.spec import CropSpec, WindowSpec

        try:
            default_window = get_model_class(self.arch).default_window.to_dict()
            window = WindowSpec.from_dict({**default_window, **self.config.window})
            crop = CropSpec.from_dict(self.config.crop)
            model = create_model(self.arch, window=window, crop=crop, **self.model_options())
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"Recipe {self.name!r}: {exc}") from None
        if self.config.pretrained:
            report = model.load_pretrained(self.config.pretrained)
            self.notes["backbone_weights"] = {
                "file": str(self.config.pretrained),
                "load": report.summary(),
                "missing": report.missing,
                "unexpected": report.unexpected,
            }
        for part in self.frozen_parts(model):
            model.freeze(part)
        reason = model.requires_pretrained_reason()
        if reason:
            raise ConfigError(reason)
        return model

    def frozen_parts(self, model: StreamingModel) -> tuple[str, ...]:
        """Parts that stay frozen through every stage (none by default)."""
        return ()

    def prepare(self, model: StreamingModel, train: Dataset) -> None:
        """Fit what the data fixes before training: the audio token statistics when the
        config says ``audio_norm: dataset``."""
        if model.uses_audio_stats:
            model.set_audio_stats(*audio_stats(train))

    # ------------------------------------------------------------------ training
    def stages(self, run: Trainer) -> Iterator[Stage]:
        raise NotImplementedError


def accepts_option(arch: str, option: str) -> bool:
    """Whether architecture ``arch`` takes the keyword ``option``."""
    from eri.models.registry import get_model_class

    return option in inspect.signature(get_model_class(arch).__init__).parameters


def audio_stats(dataset: Dataset) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and std [F] of the raw audio tokens of the clips with audio."""
    total = None
    total_sq = None
    count = 0
    for i in range(len(dataset)):
        item = dataset[i]
        if "audio_tokens" not in item or float(item["audio_present"]) <= 0:
            continue
        tok = item["audio_tokens"].double()  # [T, F]
        total = tok.sum(0) if total is None else total + tok.sum(0)
        total_sq = (tok**2).sum(0) if total_sq is None else total_sq + (tok**2).sum(0)
        count += tok.shape[0]
    if count == 0:
        raise ConfigError(
            "audio_norm: dataset needs Train clips with audio, but none has any; set "
            "audio_norm: token in the config."
        )
    mean = total / count
    std = (total_sq / count - mean**2).clamp_min(0).sqrt().clamp_min(1e-6)
    return mean.float().numpy(), std.float().numpy()


def head_forward(model: StreamingModel, batch: Batch) -> torch.Tensor:
    """The window head on per-frame features computed once: visual [B, T, D] (+ raw audio
    tokens through the trainable audio encoder) -> [B, 7]."""
    audio = None
    if model.has_audio and "audio_tokens" in batch:
        audio = model.encode_audio(batch["audio_tokens"])
    return model.head(
        batch["visual"], audio, batch.get("audio_present"), batch.get("visual_present")
    )


def frame_features(model: StreamingModel, batch: Batch) -> dict[str, torch.Tensor]:
    """Per-frame features of a window batch from the frozen frame encoder: visual [B, T, D];
    raw audio tokens pass through (the audio encoder may still train)."""
    out = {"visual": encode_visual(model, batch["faces"])}
    if "audio_tokens" in batch:
        out["audio_tokens"] = batch["audio_tokens"]
    return out


def head_stage(run: Trainer, name: str, parts: tuple[str, ...], epochs: int) -> Stage:
    """A stage that trains ``parts`` on frame features computed once by the frozen encoder."""

    def data() -> tuple[Dataset, Dataset]:
        return run.encode(run.train_set, frame_features), run.encode(run.val_set, frame_features)

    return Stage(name, parts, head_forward, data, epochs)


class FrameFeatureRecipe(Recipe):
    """A per-frame network (``FRAME_PART``) and a temporal head: with the frame part frozen,
    its features are computed once per clip and only the head trains on them; otherwise the
    whole model trains end to end on the cached windows."""

    #: The per-frame network's part (``model.parts()``).
    FRAME_PART: str = ""

    def stages(self, run: Trainer) -> Iterator[Stage]:
        model = run.model
        frozen = model.frozen_parts()
        parts = tuple(p for p in model.parts() if p not in frozen)
        if self.FRAME_PART in frozen:
            yield head_stage(run, "head", parts, self.config.epochs)
        else:
            windows = lambda: (run.train_set, run.val_set)  # noqa: E731
            yield Stage("end_to_end", parts, window_forward, windows, self.config.epochs)
