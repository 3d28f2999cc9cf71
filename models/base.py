"""The streaming split every architecture implements (docs/design.md, "Streaming model contract").

    encode_frames(faces[N, 3, S, S])            -> features[N, D]     per frame, stateless
    encode_audio(tokens[B, T, F])               -> audio[B, T, A]     per token, stateless
                                                   (A = ``audio_feature_dim``)
    head(visual[B, T, D], audio[B, T, A] | None,
         audio_present[B] | None, visual_present[B] | None) -> intensities[B, 7] in [0, 1]
    forward(faces[B, T, 3, S, S], tokens[B, T, F] | None, ...) == head(encode_frames, encode_audio)

Both encoders are per item, so live inference computes each frame's features and each audio
token's features once and caches them (``eri.realtime.pipeline``); the exports are three graphs
(``frame_encoder``, ``audio_encoder``, ``head``; :mod:`eri.models.export`).

Faces are RGB floats in [0, 1] from :func:`models.crop.align_face`; each model normalises them
itself so the normalisation travels inside its weights and its ONNX. Audio tokens come from
:mod:`models.audio`. Missing audio is ``audio=None`` (or ``audio_present=0``), which every
architecture turns into exactly the input its modality dropout produced in training: the
fusion heads share one gate for that, :func:`gate_modalities`.

Training support (docs/training.md): each architecture names its trainable **parts**
(``parts()``; they may overlap) and ``freeze(part)`` stops their gradients and keeps their
modules in eval mode even after ``model.train()`` (BatchNorm statistics and dropout stay fixed,
so a frozen part gives the same features in training as in inference). ``audio_norm`` chooses
how raw audio tokens are normalised: ``"token"`` (the architecture's own normalisation, the
default) or ``"dataset"`` (a z-score with per-feature statistics from the training data,
:meth:`StreamingModel.set_audio_stats`, stored as buffers so they travel in the weights and the
ONNX). ``requires_pretrained_reason()`` says why a model cannot be trained as configured.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from eri.errors import EriError
from eri.models.audio import AudioSpec
from eri.models.layers import keep
from eri.models.spec import CropSpec, WindowSpec
from eri.models.weights import LoadReport, load_backbone_weights

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: Values of the ``audio_norm`` option: the architecture's own per-token normalisation, or a
#: z-score with dataset statistics (:meth:`StreamingModel.set_audio_stats`).
AUDIO_NORMS = ("token", "dataset")
#: Smallest standard deviation a dataset z-score divides by (a feature constant over the
#: training data, such as zero padding, would otherwise divide by zero).
AUDIO_STD_FLOOR = 1e-3
#: The epsilon of the dataset z-score's BatchNorm form (positive: some torch releases refuse 0),
#: subtracted from the variance first, so the divisor stays the stored std.
AUDIO_NORM_EPS = 1e-12


class ModelConfigError(EriError, ValueError):
    """A model option or training request the architecture cannot honour (one sentence)."""


class StreamingModel(nn.Module):
    """Base class: holds the specs and the config, implements ``forward`` from the split."""

    arch_name: ClassVar[str]
    #: Default audio spec of the architecture; None means the architecture has no audio branch.
    default_audio: ClassVar[AudioSpec | None] = None
    #: D, the length of one frame's features.
    feature_dim: int
    #: A, the length of one audio token's features (``encode_audio``'s output); 0 without audio.
    audio_feature_dim: int = 0
    #: The window a model gets when its config names none.
    default_window: ClassVar[WindowSpec] = WindowSpec()
    #: Trainable parts: name -> attribute names of the modules / parameters it holds. Parts may
    #: overlap (a parameter trains only while no frozen part holds it); attributes a config
    #: leaves out (no audio branch) are skipped, and a part left empty is not offered.
    PARTS: ClassVar[dict[str, tuple[str, ...]]] = {}
    #: Parts that are meant to hold pretrained weights whenever they are frozen.
    PRETRAINED_PARTS: ClassVar[tuple[str, ...]] = ()

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
        # 1 once load_pretrained() filled the pretrained parts (saved with the weights).
        self.register_buffer("pretrained_loaded", torch.zeros((), dtype=torch.int64))
        self.audio_norm_mode = "token"
        self._frozen: set[str] = set()
        self.config: dict[str, Any] = {}

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_config(cls, config: dict[str, Any]) -> StreamingModel:
        """Build from a config dict: architecture kwargs plus optional window/crop/audio specs."""
        config = dict(config)
        window = config.pop("window", None)
        crop = config.pop("crop", None)
        audio = config.pop("audio", "default")
        if window is None:
            window = cls.default_window
        elif not isinstance(window, WindowSpec):
            window = WindowSpec.from_dict(window)
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
            raise ModelConfigError(
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

    # ------------------------------------------------------------------ parts and freezing
    def parts(self) -> tuple[str, ...]:
        """Names of the parts :meth:`freeze` takes (those this config has)."""
        return tuple(p for p in self.PARTS if any(True for _ in self._part_parameters(p)))

    def _part_members(self, part: str) -> list[nn.Module | nn.Parameter]:
        names = self.PARTS.get(part, ())
        return [m for m in (getattr(self, n, None) for n in names) if m is not None]

    def _part_parameters(self, part: str) -> Iterator[nn.Parameter]:
        for member in self._part_members(part):
            if isinstance(member, nn.Parameter):
                yield member
            else:
                yield from member.parameters()

    def frozen_parts(self) -> tuple[str, ...]:
        """The parts frozen now, in :meth:`parts` order."""
        return tuple(p for p in self.PARTS if p in self._frozen)

    def freeze(self, part: str, frozen: bool = True) -> None:
        """Freeze (or unfreeze) one part: its parameters stop (or start) taking gradients and
        its modules stay in eval mode, also after ``model.train()`` (see :meth:`train`), so
        BatchNorm statistics and dropout in a frozen part never change. A parameter that
        another frozen part also holds stays frozen. Optimizers should be built after freezing
        (or skip parameters whose ``requires_grad`` is False)."""
        if part not in self.parts():
            raise ModelConfigError(
                f"{self.arch_name} has no part {part!r} in this configuration; "
                f"its parts are: {', '.join(self.parts())}."
            )
        if frozen:
            self._frozen.add(part)
        else:
            self._frozen.discard(part)
        still = {id(p) for q in self._frozen for p in self._part_parameters(q)}
        for p in self._part_parameters(part):
            p.requires_grad_(id(p) not in still)
        self.train(self.training)  # re-apply the modes

    def train(self, mode: bool = True) -> StreamingModel:
        """Like ``nn.Module.train``, but the modules of frozen parts always stay in eval mode
        (so a trainer's ``model.train()`` never moves their BatchNorm statistics)."""
        super().train(mode)
        for part in self._frozen:
            for member in self._part_members(part):
                if isinstance(member, nn.Module):
                    member.eval()
        return self

    # ------------------------------------------------------------------ pretrained weights
    @property
    def pretrained(self) -> bool:
        """Whether :meth:`load_pretrained` filled every pretrained part (saved in the weights)."""
        return bool(self.pretrained_loaded.item())

    def load_pretrained(self, path: str | Path) -> LoadReport:
        """Load pretrained weights (torchvision-style backbone weights into ``backbone``; see
        :func:`eri.models.weights.load_backbone_weights`) and record whether they filled it."""
        report = load_backbone_weights(self, path)
        self.pretrained_loaded.fill_(int(not report.missing))
        return report

    def requires_pretrained_reason(self) -> str | None:
        """Why this model cannot be trained as it is (None when it can): a part of
        :data:`PRETRAINED_PARTS` is frozen but holds no pretrained weights."""
        frozen = [p for p in self.PRETRAINED_PARTS if p in self._frozen]
        if not frozen or self.pretrained:
            return None
        return (
            f"{self.arch_name}'s {frozen[0]} is frozen but holds random weights, so the "
            "features it gives carry nothing to learn from; pass pretrained weights "
            f"(--pretrained PATH) or train the {frozen[0]} too."
        )

    # ------------------------------------------------------------------ audio normalisation
    def _init_audio_norm(self, audio_norm: str) -> None:
        """Set the ``audio_norm`` mode; ``"dataset"`` adds the statistics buffers [F]
        (identity until :meth:`set_audio_stats`)."""
        if audio_norm not in AUDIO_NORMS:
            raise ModelConfigError(
                f"{self.arch_name} audio_norm must be one of {', '.join(AUDIO_NORMS)}, "
                f"got {audio_norm!r}."
            )
        self.audio_norm_mode = audio_norm
        if audio_norm == "dataset" and self.audio_spec is not None:
            f = self.audio_spec.token_dim
            self.register_buffer("audio_mean", torch.zeros(f))
            self.register_buffer("audio_std", torch.ones(f))

    @property
    def uses_audio_stats(self) -> bool:
        """True when the model z-scores audio tokens with dataset statistics."""
        return self.has_audio and self.audio_norm_mode == "dataset"

    def set_audio_stats(self, mean: np.ndarray, std: np.ndarray) -> None:
        """Store the dataset statistics of the raw audio tokens: mean [F], std [F] (floored at
        :data:`AUDIO_STD_FLOOR`), as persistent buffers saved with the weights and baked into
        the ONNX head. Only for ``audio_norm="dataset"``."""
        if not self.uses_audio_stats:
            what = "has no audio branch" if not self.has_audio else "uses audio_norm='token'"
            raise ModelConfigError(
                f"{self.arch_name} {what}, so it takes no audio statistics; build it with "
                "audio_norm: dataset to z-score audio tokens with dataset statistics."
            )
        f = self.audio_spec.token_dim
        m = torch.as_tensor(np.asarray(mean, dtype=np.float64))
        s = torch.as_tensor(np.asarray(std, dtype=np.float64))
        if m.shape != (f,) or s.shape != (f,):
            raise ModelConfigError(
                f"Audio statistics must be two arrays of {f} values (one per token feature), "
                f"got {tuple(m.shape)} and {tuple(s.shape)}."
            )
        if not (torch.isfinite(m).all() and torch.isfinite(s).all() and (s >= 0).all()):
            raise ModelConfigError(
                "Audio statistics hold NaN, inf or a negative std; recompute them from the "
                "training tokens."
            )
        with torch.no_grad():
            self.audio_mean.copy_(m.to(self.audio_mean))
            self.audio_std.copy_(s.clamp_min(AUDIO_STD_FLOOR).to(self.audio_std))

    def dataset_audio_norm(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [B, T, F] -> (tokens - audio_mean) / audio_std [B, T, F].

        Written as an inference BatchNorm over the feature axis so the ONNX graph holds one
        ``BatchNormalization`` node: the fp16/int8 exports recognise it as the first
        normalisation of the audio front and keep it (and the raw tokens) in fp32.
        """
        # Some torch releases refuse eps = 0; var + eps is std^2 again (exactly, in float32,
        # wherever std^2 is more than ~1e4 x eps, i.e. every std above the floor's 10x).
        var = self.audio_std.square() - AUDIO_NORM_EPS
        x = F.batch_norm(
            tokens.transpose(1, 2), self.audio_mean, var, None, None, False, 0.0, AUDIO_NORM_EPS
        )
        return x.transpose(1, 2)

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
    Dropout never drops the only present modality: a window without audio keeps its visual
    branch (and one without a face its audio), whatever the draw. Returns visual alone, or
    [visual, audio] concatenated on the last axis.
    """
    shape = (-1,) + (1,) * (visual.dim() - 1)  # flags [B] broadcast over the branch output
    keep_v = presence(visual_present, visual).view(shape)
    if audio is None:
        return keep(visual, keep_v)
    keep_a = presence(audio_present, visual).view(shape)
    if dropout is not None:
        mv, ma = modality_dropout_masks(visual.shape[0], *dropout, visual.device)
        has_v, has_a = keep_v > 0, keep_a > 0
        keep_v = keep_v * ((mv.view(shape) > 0) | ~has_a).to(keep_v.dtype)
        keep_a = keep_a * ((ma.view(shape) > 0) | ~has_v).to(keep_a.dtype)
    return torch.cat([keep(visual, keep_v), keep(audio, keep_a)], dim=-1)
