"""The streaming split every architecture implements (docs/design.md, "Streaming model contract").

    encode_frames(faces[N, 3, S, S])            -> features[N, D]     per frame, stateless
    encode_audio(tokens[B, T, F])               -> audio[B, T, A]     per token, stateless
    head(visual[B, T, D], audio[B, T, A] | None,
         audio_present[B] | None, visual_present[B] | None) -> intensities[B, 7] in [0, 1]
    forward(faces[B, T, 3, S, S], tokens[B, T, F] | None, ...) == head(encode_frames, encode_audio)

Faces are RGB floats in [0, 1] from :func:`models.crop.align_face`; each model normalises them
itself so the normalisation travels inside its weights and its ONNX. Audio tokens come from
:mod:`models.audio`. Missing audio is ``audio=None`` (or ``audio_present=0``), which every
architecture turns into exactly the input its modality dropout produced in training: the
fusion heads share one gate for that, :func:`gate_modalities`.
"""

from __future__ import annotations

import inspect
from typing import Any, ClassVar

import torch
from torch import nn

from eri.models.audio import AudioSpec
from eri.models.layers import keep
from eri.models.spec import CropSpec, WindowSpec

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class StreamingModel(nn.Module):
    """Base class: holds the specs and the config, implements ``forward`` from the split."""

    arch_name: ClassVar[str]
    #: Default audio spec of the architecture; None means the architecture has no audio branch.
    default_audio: ClassVar[AudioSpec | None] = None
    #: D, the length of one frame's features.
    feature_dim: int

    def __init__(
        self,
        *,
        window: WindowSpec,
        crop: CropSpec,
        audio: AudioSpec | None,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
    ) -> None:
        super().__init__()
        self.window = window
        self.crop = crop
        self.audio_spec = audio
        self.register_buffer("pixel_mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.config: dict[str, Any] = {}

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_config(cls, config: dict[str, Any]) -> StreamingModel:
        """Build from a config dict: architecture kwargs plus optional window/crop/audio specs."""
        config = dict(config)
        window = config.pop("window", None)
        crop = config.pop("crop", None)
        audio = config.pop("audio", "default")
        window = window if isinstance(window, WindowSpec) else WindowSpec.from_dict(window)
        crop = crop if isinstance(crop, CropSpec) else CropSpec.from_dict(crop)
        if isinstance(audio, str) and audio == "default":
            audio = cls.default_audio
        elif isinstance(audio, dict):
            audio = AudioSpec.from_dict(audio)
        params = inspect.signature(cls.__init__).parameters
        accepts_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
        valid = [n for n in params if n not in ("self", "window", "crop", "audio")]
        unknown = sorted(k for k in config if k not in valid)
        if unknown and not accepts_any:
            raise ValueError(
                f"Architecture {cls.arch_name!r} has no option(s) {unknown}; "
                f"valid options are: {', '.join(valid)}."
            )
        model = cls(window=window, crop=crop, audio=audio, **config)
        # Store the full config (defaults included) so a bundle rebuilds exactly this model.
        full = {
            n: p.default
            for n, p in params.items()
            if n in valid and p.default is not inspect.Parameter.empty
        }
        full.update(config)
        model.config = full
        return model

    def specs(self) -> dict[str, Any]:
        """The window, crop and audio specs as plain dicts (for bundle.json)."""
        return {
            "window": self.window.to_dict(),
            "crop": self.crop.to_dict(),
            "audio": None if self.audio_spec is None else self.audio_spec.to_dict(),
        }

    @property
    def has_audio(self) -> bool:
        return self.audio_spec is not None

    # ------------------------------------------------------------------ the split
    def normalize(self, faces: torch.Tensor) -> torch.Tensor:
        """[N, 3, S, S] RGB in [0, 1] -> normalised by the model's mean/std."""
        return (faces - self.pixel_mean) / self.pixel_std

    def encode_frames(self, faces: torch.Tensor) -> torch.Tensor:
        """faces [N, 3, S, S] float in [0, 1] -> features [N, D]."""
        raise NotImplementedError

    def encode_audio(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [B, T, F] -> per-token audio features [B, T, A]."""
        raise NotImplementedError(f"{self.arch_name} has no audio branch.")

    def head(
        self,
        visual: torch.Tensor,
        audio: torch.Tensor | None = None,
        audio_present: torch.Tensor | None = None,
        visual_present: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """visual [B, T, D], audio [B, T, A] | None, presence flags [B] -> intensities [B, 7]."""
        raise NotImplementedError

    def forward(
        self,
        faces: torch.Tensor,
        audio_tokens: torch.Tensor | None = None,
        audio_present: torch.Tensor | None = None,
        visual_present: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """One window: faces [B, T, 3, S, S], audio tokens [B, T, F] | None -> [B, 7]."""
        b, t = faces.shape[:2]
        visual = self.encode_frames(faces.flatten(0, 1)).view(b, t, -1)
        audio = None
        if audio_tokens is not None and self.has_audio:
            audio = self.encode_audio(audio_tokens)
        return self.head(visual, audio, audio_present, visual_present)


def presence(flag: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """Presence flags [B] as floats shaped [B, 1, 1] (all ones when ``flag`` is None)."""
    if flag is None:
        return like.new_ones(like.shape[0], 1, 1)
    return flag.to(like.dtype).view(-1, 1, 1)


def modality_dropout_masks(
    batch: int, p_both: float, p_video: float, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Training-time keep masks [B] (video, audio), as in the dual-branch paper.

    With probability ``p_both`` both modalities are kept; otherwise video alone with
    probability ``p_video``, else audio alone.
    """
    both = torch.rand(batch, device=device) < p_both
    video_only = torch.rand(batch, device=device) < p_video
    keep_video = both | video_only
    keep_audio = both | ~video_only
    return keep_video.float(), keep_audio.float()


def gate_modalities(
    visual: torch.Tensor,
    audio: torch.Tensor | None,
    visual_present: torch.Tensor | None,
    audio_present: torch.Tensor | None,
    dropout: tuple[float, float] | None = None,
) -> torch.Tensor:
    """The modality gate of the fusion heads: branch outputs -> one fused tensor.

    ``visual`` [B, ...] and ``audio`` [B, ...] (same rank; ``None`` for a model without an
    audio branch) are the two branches' outputs; ``visual_present`` / ``audio_present`` [B]
    their presence flags (None: present). Each branch becomes exactly zero where its flag is 0
    and, when ``dropout`` = (p_both, p_video) is given (training), where modality dropout drops
    it, so a modality missing at inference is exactly the input training-time dropout produced.
    Returns visual alone, or [visual, audio] concatenated on the last axis.
    """
    shape = (-1,) + (1,) * (visual.dim() - 1)  # flags [B] broadcast over the branch output
    keep_v = presence(visual_present, visual).view(shape)
    if audio is None:
        return keep(visual, keep_v)
    keep_a = presence(audio_present, visual).view(shape)
    if dropout is not None:
        mv, ma = modality_dropout_masks(visual.shape[0], *dropout, visual.device)
        keep_v = keep_v * mv.view(shape)
        keep_a = keep_a * ma.view(shape)
    return torch.cat([keep(visual, keep_v), keep(audio, keep_a)], dim=-1)
