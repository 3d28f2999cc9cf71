"""Training checkpoints: written atomically at the end of every epoch, read back by --resume.

A checkpoint holds everything the rest of the run depends on: the model, optimizer, lr
scheduler and GradScaler states, the best epoch kept so far, the history, the completed
stages, and every rank's random number generator states, so a stopped run resumes to the
same numbers a straight run gives (exactly on CPU). It is a plain dict of tensors and
numbers, saved with ``torch.save`` and read with ``weights_only=True`` (nothing unpickled).
"""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path
from typing import Any

import torch

from eri.errors import EriError
from eri.training.config import TrainConfig, config_diff

log = logging.getLogger(__name__)

CHECKPOINT_VERSION = 1
LAST = "last.pt"


class CheckpointError(EriError, ValueError):
    """A checkpoint --resume cannot use; the message names it and the fix."""


def save_checkpoint(state: dict[str, Any], path: Path) -> Path:
    """Write ``state`` to ``path`` via a temporary name and os.replace (never half-written)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save({"version": CHECKPOINT_VERSION, **state}, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(path: Path, config: TrainConfig) -> dict[str, Any]:
    """The checkpoint at ``path``, refused when it is missing, unreadable or was made with a
    different config (one sentence naming the differing keys)."""
    if not path.is_file():
        raise CheckpointError(
            f"--resume found no checkpoint {path}; run without --resume to start training, or "
            "pass the --out of the run to resume."
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(
            f"Checkpoint {path} cannot be read ({type(exc).__name__}); delete it and train "
            "without --resume."
        ) from None
    if not isinstance(state, dict) or state.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(
            f"Checkpoint {path} is not an ERI Live training checkpoint of version "
            f"{CHECKPOINT_VERSION}; train without --resume into a new --out."
        )
    diff = config_diff(state["config"], config.to_dict())
    if diff:
        raise CheckpointError(
            f"--resume: the config differs from the checkpoint's in {', '.join(diff)}; "
            "resume with the same config (RUN/config.yaml), or train into a new --out."
        )
    return state


def rng_state() -> dict[str, Any]:
    """This process's random number generator states (torch CPU and CUDA, Python)."""
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "python" in state:
        random.setstate(_tuples(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tuples(x: Any) -> Any:
    """Lists back to tuples (random.setstate wants its nested tuples)."""
    return tuple(_tuples(v) for v in x) if isinstance(x, (list, tuple)) else x


def cpu_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A detached CPU copy of ``module.state_dict()``."""
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}
