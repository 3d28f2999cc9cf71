"""Reading weight files safely: safetensors, or a ``.pt`` state dict loaded with
``weights_only=True``. Nothing here unpickles arbitrary objects or downloads anything."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from eri.errors import EriError

log = logging.getLogger(__name__)

#: Prefixes that training frameworks put in front of backbone keys; stripped when matching.
_WRAPPER_PREFIXES = ("module.", "model.", "backbone.", "base.", "encoder.", "features_extractor.")


class WeightsError(EriError, ValueError):
    """A weights file that cannot be used; the message names the file and the fix."""


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` file or a plain ``.pt``/``.pth`` state dict.

    Checkpoints that wrap the state dict (``{"state_dict": ...}``, ``{"model": ...}``) are
    unwrapped. Anything that is not a mapping of names to tensors is refused.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"Weights file {path} does not exist; check the path.")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:
            raise WeightsError(
                f"{path} is not a readable safetensors file ({exc}); re-export the weights."
            ) from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WeightsError(
            f"{path} is not a plain state dict of tensors (refused to unpickle it: {first}); "
            "save it with torch.save(model.state_dict(), path) or as .safetensors."
        ) from None
    for key in ("state_dict", "model_state_dict", "model", "net"):
        if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not obj:
        raise WeightsError(
            f"{path} holds a {type(obj).__name__}, not a state dict of tensors; "
            "save it with torch.save(model.state_dict(), path)."
        )
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise WeightsError(f"{path} contains no tensors; it is not a weights file.")
    return tensors


@dataclass
class LoadReport:
    """What a (partial) state-dict load matched."""

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"loaded {len(self.loaded)} tensors, {len(self.missing)} missing, "
            f"{len(self.unexpected)} unexpected"
        )


def _strip_prefix(state: dict[str, torch.Tensor], target_keys: set[str]) -> dict[str, torch.Tensor]:
    """Remove wrapper prefixes until the keys best match ``target_keys``."""
    best = state
    best_hits = len(target_keys & set(state))
    current = state
    for _ in range(3):
        for prefix in _WRAPPER_PREFIXES:
            if all(k.startswith(prefix) for k in current):
                current = {k[len(prefix) :]: v for k, v in current.items()}
                break
        else:
            # Not every key shares a prefix: try each prefix on the keys that have it.
            for prefix in _WRAPPER_PREFIXES:
                stripped = {k[len(prefix) :]: v for k, v in current.items() if k.startswith(prefix)}
                hits = len(target_keys & set(stripped))
                if hits > best_hits:
                    best, best_hits = stripped, hits
            break
        hits = len(target_keys & set(current))
        if hits > best_hits:
            best, best_hits = current, hits
    return best


def load_into(
    module: nn.Module, state: dict[str, torch.Tensor], *, source: str, strict: bool
) -> LoadReport:
    """Copy matching tensors of ``state`` into ``module``.

    Shapes must match for every shared key (a mismatch means weights of another architecture
    or configuration). With ``strict`` every key must match both ways.
    """
    own = module.state_dict()
    state = _strip_prefix(state, set(own))
    report = LoadReport(
        loaded=sorted(k for k in state if k in own),
        missing=sorted(k for k in own if k not in state),
        unexpected=sorted(k for k in state if k not in own),
    )
    if not report.loaded:
        raise WeightsError(
            f"{source} shares no parameter names with this model "
            f"(e.g. it has {sorted(state)[:3]}, the model expects {sorted(own)[:3]}); "
            "it is a weights file for another architecture."
        )
    mismatched = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in report.loaded
        if state[k].shape != own[k].shape
    ]
    if mismatched:
        raise WeightsError(
            f"{source} does not fit this model: {len(mismatched)} tensor(s) have other shapes "
            f"({mismatched[0]}); use weights trained with the same architecture and config."
        )
    if strict and (report.missing or report.unexpected):
        raise WeightsError(
            f"{source} does not match this model: {len(report.missing)} missing tensor(s) "
            f"(e.g. {report.missing[:2]}) and {len(report.unexpected)} unexpected "
            f"(e.g. {report.unexpected[:2]}); it was saved from another architecture or config."
        )
    with torch.no_grad():
        for k in report.loaded:
            own[k].copy_(state[k].to(own[k].dtype))
    return report


def load_backbone_weights(model: nn.Module, path: str | Path) -> LoadReport:
    """Load torchvision-style ImageNet or AffectNet backbone weights into ``model.backbone``.

    Keys the truncated backbone does not have (e.g. ``layer4.*`` and ``fc.*`` for the
    dual-branch stem) are reported as unexpected and skipped; tensors the file lacks are
    reported as missing and keep their initialisation. Shape mismatches are refused.
    """
    backbone = getattr(model, "backbone", None)
    if backbone is None:
        raise WeightsError(f"Architecture {type(model).__name__} has no pretrained backbone.")
    report = load_into(backbone, read_state_dict(path), source=str(path), strict=False)
    log.info("Backbone weights from %s: %s", path, report.summary())
    if report.missing:
        log.warning("Backbone tensors not in %s (left as initialised): %s", path, report.missing)
    if report.unexpected:
        log.info("Tensors in %s this backbone does not use: %s", path, report.unexpected)
    return report
