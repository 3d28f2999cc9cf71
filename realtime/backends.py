"""Inference backends behind one interface: ``torch``, ``onnxruntime`` (and ``tensorrt``).

Each backend runs the two graphs of the streaming split on numpy arrays:

    encode_frames(faces[N, 3, S, S] float32) -> features[N, D] float32
    head(inputs: {name: array}) -> intensities[B, 7] float32

Heavy runtimes are imported lazily so a CPU-only install imports cleanly.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)

BACKENDS = ("torch", "onnxruntime", "tensorrt")


def available_backends() -> dict[str, str]:
    """Each backend's status on this machine, in words (for `eri info`)."""
    status: dict[str, str] = {}
    try:
        import torch

        status["torch"] = "available (" + (
            f"CUDA: {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else "CPU"
        ) + ")"
    except ImportError as exc:
        status["torch"] = f"unavailable: {exc}"
    try:
        import onnxruntime as ort

        status["onnxruntime"] = "available (" + ", ".join(ort.get_available_providers()) + ")"
    except ImportError as exc:
        status["onnxruntime"] = f"unavailable: {exc}"
    try:
        import tensorrt

        status["tensorrt"] = f"available ({tensorrt.__version__})"
    except ImportError:
        status["tensorrt"] = "unavailable: install the `tensorrt` extra on a machine with an NVIDIA GPU"
    return status


def describe(status: dict[str, Any]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in status.items())
