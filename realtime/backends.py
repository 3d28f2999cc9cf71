"""Inference backends behind one interface: ``torch``, ``onnxruntime`` (and ``tensorrt``).

Each backend runs the two graphs of the streaming split on numpy arrays:

    encode_frames(faces[N, 3, S, S] float32) -> features[N, D] float32
    head(inputs: {name: array}) -> intensities[B, 7] float32

Heavy runtimes are imported lazily so a CPU-only install imports cleanly.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from eri.choices import BACKENDS
from eri.errors import EriError
from eri.models.export import (
    FACES,
    FEATURES,
    FRAME_ENCODER_FILE,
    HEAD_FILE,
    INTENSITIES,
    export_onnx,
    head_graph,
    head_input_names,
    ort_session,
)

log = logging.getLogger(__name__)


def available_backends() -> dict[str, str]:
    """Each backend's status on this machine, in words (for `eri info`)."""
    status: dict[str, str] = {}
    try:
        import torch

        status["torch"] = (
            "available ("
            + (f"CUDA: {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else "CPU")
            + ")"
        )
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
        status["tensorrt"] = (
            "unavailable: install the `tensorrt` extra on a machine with an NVIDIA GPU"
        )
    return status


class Backend:
    """Runs the frame encoder and the head on numpy arrays."""

    name: str = "?"
    precision: str = "fp32"
    device: str = "cpu"

    def __init__(self, bundle: Any) -> None:
        self.bundle = bundle
        self.model = bundle.model
        self.input_names: list[str] = head_input_names(self.model)

    def encode_frames(self, faces: np.ndarray) -> np.ndarray:
        """faces [N, 3, S, S] float32 in [0, 1] -> features [N, D] float32."""
        raise NotImplementedError

    def head(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """Head inputs keyed by ONNX name (visual [B, T, D], ...) -> intensities [B, 7]."""
        raise NotImplementedError

    def describe(self) -> str:
        return f"{self.name} {self.precision} on {self.device}"


class TorchBackend(Backend):
    """The bundle's torch model, on CUDA when available (or as asked), else the CPU."""

    name = "torch"

    def __init__(self, bundle: Any, device: str | None = None, threads: int = 0) -> None:
        super().__init__(bundle)
        import torch

        self._torch = torch
        if threads:
            torch.set_num_threads(threads)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model = self.model.to(self.device).eval()
        self.graph = head_graph(self.model)

    def encode_frames(self, faces: np.ndarray) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(faces)).to(self.device)
            return self.model.encode_frames(x).float().cpu().numpy()

    def head(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode():
            t = {
                k: torch.from_numpy(np.ascontiguousarray(v)).to(self.device)
                for k, v in inputs.items()
            }
            return self.graph(*(t[n] for n in self.input_names)).float().cpu().numpy()


class OnnxRuntimeBackend(Backend):
    """ONNX Runtime on the bundle's exported graphs (exported to a cache when missing)."""

    name = "onnxruntime"

    def __init__(self, bundle: Any, threads: int = 0, providers: list[str] | None = None) -> None:
        super().__init__(bundle)
        paths = onnx_paths(bundle)
        # Idle encoder threads do not busy-wait, leaving the cores to decoding and face tracking
        # (measured on 2 cores: 157 vs 139 frames/s end to end, live p95 latency 12 vs 18 ms).
        self.encoder = ort_session(paths["frame_encoder"], providers, threads, spin=False)
        # The head is tiny: one thread. A second multi-threaded pool would spin against the
        # encoder's between calls (measured: 7.7 ms vs 3.6 ms per output step on 2 cores).
        self.head_session = ort_session(paths["head"], providers, threads=1)
        self.device = self.encoder.get_providers()[0].replace("ExecutionProvider", "").lower()

    def encode_frames(self, faces: np.ndarray) -> np.ndarray:
        return self.encoder.run([FEATURES], {FACES: np.ascontiguousarray(faces, np.float32)})[0]

    def head(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        feed = {n: np.ascontiguousarray(inputs[n], np.float32) for n in self.input_names}
        return self.head_session.run([INTENSITIES], feed)[0]


def weights_digest(model: Any) -> str:
    """A short hash of a model's architecture, config, specs and weights (cache key)."""
    h = hashlib.sha256()
    h.update(json.dumps([model.arch_name, model.config, model.specs()], sort_keys=True).encode())
    for key, tensor in sorted(model.state_dict().items()):
        h.update(key.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def cache_dir() -> Path:
    """Where exports of bundles without their own live (``$ERI_CACHE_DIR`` overrides)."""
    root = os.environ.get("ERI_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "eri-live"
    )
    return Path(root)


def onnx_paths(bundle: Any) -> dict[str, Path]:
    """The bundle's fp32 ONNX graphs: its own exports, else a cached export made now."""
    own = {
        g: bundle.export_path(f)
        for g, f in (("frame_encoder", FRAME_ENCODER_FILE), ("head", HEAD_FILE))
    }
    if all(own.values()):
        return own  # type: ignore[return-value]
    target = cache_dir() / "onnx" / f"{bundle.model.arch_name}-{weights_digest(bundle.model)}"
    paths = {"frame_encoder": target / FRAME_ENCODER_FILE, "head": target / HEAD_FILE}
    if not all(p.is_file() for p in paths.values()):
        log.info("Exporting %s to ONNX in %s (once; cached)", bundle.name, target)
        tmp = target.with_name(target.name + f".tmp{os.getpid()}")
        export_onnx(bundle.model, tmp)
        tmp.mkdir(parents=True, exist_ok=True)
        if target.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            os.replace(tmp, target)
    return paths


def create_backend(
    bundle: Any, name: str = "auto", precision: str = "fp32", threads: int = 0
) -> Backend:
    """The backend ``name`` for ``bundle``; ``auto`` picks TensorRT > torch CUDA > ONNX Runtime."""
    if precision != "fp32":
        raise BackendError(
            f"Precision {precision} needs the fp16/int8 exports, which this "
            "version does not build yet; use --precision fp32."
        )
    if name == "auto":
        import torch

        name = "torch" if torch.cuda.is_available() else "onnxruntime"
    if name == "torch":
        return TorchBackend(bundle, threads=threads)
    if name == "onnxruntime":
        return OnnxRuntimeBackend(bundle, threads=threads)
    raise BackendError(f"Unknown backend {name!r}; choose one of: auto, {', '.join(BACKENDS)}.")


class BackendError(EriError, ValueError):
    """A backend that cannot run here; the message says which one to use instead."""
