"""Inference backends behind one interface: ``torch``, ``onnxruntime`` and ``tensorrt``.

Each backend runs the graphs of the streaming split on numpy arrays, positionally:

    encode_frames(faces[N, 3, S, S] float32) -> features[N, D] float32
    encode_audio(tokens[N, F] float32)       -> audio features[N, A] float32  (models with audio)
    head(visual[B, T, D], audio_features[B, T, A] | None,
         audio_present[B] | None, visual_present[B]) -> intensities[B, 7] float32

Both encoders are per item, so the pipeline runs each frame and each audio token through them
once and caches the features.

The ONNX tensor names stay inside :class:`OnnxRuntimeBackend`. Heavy runtimes are imported
lazily so a CPU-only install imports cleanly; the ONNX export cache is in :mod:`models.export`.
The TensorRT backend lives in :mod:`eri.realtime.backend_tensorrt`, torch's CUDA graphs in
:mod:`eri.realtime.cuda_graph`. ``auto`` (:func:`choose_backend`) picks a TensorRT engine that
matches this GPU and TensorRT version, else torch on CUDA, else ONNX Runtime on the CPU, and
says why.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from eri.choices import BACKENDS, available_precisions
from eri.errors import EriError
from eri.models.export import (
    AUDIO_FEATURES,
    AUDIO_TOKENS,
    FACES,
    FEATURES,
    INTENSITIES,
    AudioEncoderGraph,
    head_graph,
    head_input_names,
    import_onnxruntime,
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
    """Runs the frame encoder, the audio encoder and the head on numpy arrays."""

    name: str = "?"
    precision: str = "fp32"
    device: str = "cpu"
    #: Why ``auto`` picked this backend ("" when it was named).
    reason: str = ""

    def __init__(self, bundle: Any) -> None:
        self.bundle = bundle
        self.model = bundle.model
        self.has_audio: bool = self.model.has_audio

    def encode_frames(self, faces: np.ndarray) -> np.ndarray:
        """faces [N, 3, S, S] float32 in [0, 1] -> features [N, D] float32."""
        raise NotImplementedError

    def encode_audio(self, tokens: np.ndarray) -> np.ndarray:
        """Raw audio tokens [N, F] float32 -> audio features [N, A] float32, one token each
        (models with an audio branch)."""
        raise NotImplementedError

    def head(
        self,
        visual: np.ndarray,
        audio_features: np.ndarray | None,
        audio_present: np.ndarray | None,
        visual_present: np.ndarray,
    ) -> np.ndarray:
        """visual [B, T, D], audio features [B, T, A] (:meth:`encode_audio`'s) | None, presence
        flags [B] (1 = present) -> intensities [B, 7]. A model without an audio branch ignores
        the audio arguments; one with an audio branch takes None as "no audio" (zero features,
        flagged absent: the gate zeroes the audio branch whatever its input, so this is exactly
        the input training's modality dropout produced)."""
        raise NotImplementedError

    def _head_args(
        self,
        visual: np.ndarray,
        audio_features: np.ndarray | None,
        audio_present: np.ndarray | None,
        visual_present: np.ndarray,
    ) -> list[np.ndarray]:
        """The head graph's inputs in its order, as contiguous float32 arrays."""
        args = [visual]
        if self.has_audio:
            b, t = visual.shape[:2]
            if audio_features is None:
                audio_features = np.zeros((b, t, self.model.audio_feature_dim), np.float32)
                audio_present = np.zeros(b, np.float32)
            elif audio_present is None:
                audio_present = np.ones(b, np.float32)
            args += [audio_features, audio_present]
        args.append(visual_present)
        return [np.ascontiguousarray(a, np.float32) for a in args]

    def _audio_only(self) -> None:
        if not self.has_audio:
            raise BackendError(
                f"{self.model.arch_name} has no audio branch, so it has no audio encoder; "
                "do not feed it audio tokens."
            )

    def describe(self) -> str:
        return f"{self.name} {self.precision} on {self.device}"


def cpu_threads() -> int:
    """Intra-op threads for live inference (viewer, recorder) on the CPU when none are asked
    for: all cores but one, which capture, face tracking, drawing and encoding need (1 on a
    2-core machine). OpenMP threads wait for each other at every op, so beside other CPU-bound
    work a descheduled one stalls the rest (2 cores, 2 busy processes: torch with 2 threads
    1-1.5 frames/s, with 1 thread 6-8; docs/benchmarks.md, "Under contention"). Offline runs
    (analyze, benchmark) keep the runtime's default, which is faster on an idle machine."""
    return max(1, (os.cpu_count() or 2) - 1)


class TorchBackend(Backend):
    """The bundle's torch model, on CUDA when available (or as asked), else the CPU.

    fp32 everywhere; fp16 on CUDA only, through autocast (which keeps reductions such as
    LayerNorm and softmax in fp32, as the fp16 ONNX keeps the raw audio front); int8 runs from
    the Q/DQ ONNX export, in ONNX Runtime. On CUDA each call shape that repeats (the streaming
    step's) is captured in a CUDA graph (:mod:`eri.realtime.cuda_graph`) unless ``graphs`` is
    False.
    """

    name = "torch"

    def __init__(
        self,
        bundle: Any,
        device: str | None = None,
        threads: int = 0,
        precision: str = "fp32",
        *,
        graphs: bool = True,
    ) -> None:
        super().__init__(bundle)
        import torch

        self._torch = torch
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if precision == "int8":
            raise BackendError(
                "The torch backend does not run int8 (it lives in the Q/DQ ONNX export); use "
                "--backend onnxruntime for --precision int8."
            )
        if precision == "fp16" and not device.startswith("cuda"):
            raise BackendError(
                f"The torch backend runs fp16 only on CUDA, not on {device}; use --backend "
                "onnxruntime for --precision fp16."
            )
        if precision == "fp16" and device.startswith("cuda"):
            from eri.models.engine import MIN_CAPABILITY

            capability = torch.cuda.get_device_capability(device)
            if capability < MIN_CAPABILITY["fp16"]:
                raise BackendError(
                    f"{torch.cuda.get_device_name(device)} (compute capability "
                    f"{capability[0]}.{capability[1]}) has no fp16 support; run --precision fp32."
                )
        if threads:
            torch.set_num_threads(threads)
        self.device = device
        self.precision = precision
        self.model = self.model.to(self.device).eval()
        self.graph = head_graph(self.model)
        self.audio_graph = AudioEncoderGraph(self.model) if self.has_audio else None
        self.graphs = None
        if graphs and device.startswith("cuda"):
            from eri.realtime.cuda_graph import GraphedModel

            self.graphs = GraphedModel(self.model, self.graph, precision, self.audio_graph)

    def _autocast(self):
        torch = self._torch
        return torch.autocast("cuda", dtype=torch.float16, enabled=self.precision == "fp16")

    def encode_frames(self, faces: np.ndarray) -> np.ndarray:
        torch = self._torch
        x = torch.from_numpy(np.ascontiguousarray(faces, np.float32)).to(self.device)
        if self.graphs is not None:
            return self.graphs("encode", x).float().cpu().numpy()
        with torch.inference_mode(), self._autocast():
            return self.model.encode_frames(x).float().cpu().numpy()

    def encode_audio(self, tokens: np.ndarray) -> np.ndarray:
        self._audio_only()
        torch = self._torch
        x = torch.from_numpy(np.ascontiguousarray(tokens, np.float32)).to(self.device)
        if self.graphs is not None:
            return self.graphs("audio", x).float().cpu().numpy()
        with torch.inference_mode(), self._autocast():
            return self.audio_graph(x).float().cpu().numpy()

    def head(self, visual, audio_features, audio_present, visual_present) -> np.ndarray:
        torch = self._torch
        args = self._head_args(visual, audio_features, audio_present, visual_present)
        t = [torch.from_numpy(a).to(self.device) for a in args]
        if self.graphs is not None:
            return self.graphs("head", *t).float().cpu().numpy()
        with torch.inference_mode(), self._autocast():
            return self.graph(*t).float().cpu().numpy()

    def describe(self) -> str:
        graphs = ", CUDA graphs" if self.graphs is not None and not self.graphs.failed else ""
        return f"{self.name} {self.precision} on {self.device}{graphs}"


class OnnxRuntimeBackend(Backend):
    """ONNX Runtime on the bundle's exported graphs at ``precision`` (the bundle's own exports,
    else the export cache: fp32 and fp16 made there when missing; int8 must have been exported
    with ``eri export --format onnx-int8``)."""

    name = "onnxruntime"

    def __init__(
        self,
        bundle: Any,
        threads: int = 0,
        providers: list[str] | None = None,
        precision: str = "fp32",
    ) -> None:
        super().__init__(bundle)
        import_onnxruntime()  # before a possibly long export, say what is missing
        from eri.models.precision import precision_paths

        paths = precision_paths(bundle, precision)
        self.precision = precision
        self.paths = paths
        log.info("onnxruntime %s: loading %s", precision, ", ".join(map(str, paths.values())))
        # Idle encoder threads do not busy-wait, leaving the cores to decoding and face tracking
        # (faster end to end and lower live latency on small machines).
        self.encoder = ort_session(paths["frame_encoder"], providers, threads, spin=False)
        # The head is tiny: one thread. A second multi-threaded pool would spin against the
        # encoder's between calls.
        self.input_names: list[str] = head_input_names(self.model)
        self.head_session = ort_session(paths["head"], providers, threads=1)
        # The audio encoder sees one or a few tokens per step (a small CNN or a LayerNorm).
        self.audio_session = (
            ort_session(paths["audio_encoder"], providers, threads=1) if self.has_audio else None
        )
        self.device = self.encoder.get_providers()[0].replace("ExecutionProvider", "").lower()

    def encode_frames(self, faces: np.ndarray) -> np.ndarray:
        return self.encoder.run([FEATURES], {FACES: np.ascontiguousarray(faces, np.float32)})[0]

    def encode_audio(self, tokens: np.ndarray) -> np.ndarray:
        self._audio_only()
        feed = {AUDIO_TOKENS: np.ascontiguousarray(tokens, np.float32)}
        return self.audio_session.run([AUDIO_FEATURES], feed)[0]

    def head(self, visual, audio_features, audio_present, visual_present) -> np.ndarray:
        args = self._head_args(visual, audio_features, audio_present, visual_present)
        feed = dict(zip(self.input_names, args))  # same order: head_input_names
        return self.head_session.run([INTENSITIES], feed)[0]


@dataclass(frozen=True)
class BackendChoice:
    """What ``auto`` runs (``name``), why (``reason``, one line), and the engines it found."""

    name: str
    reason: str
    engines: dict[str, Path] | None = None


def choose_backend(
    bundle: Any,
    precision: str,
    *,
    cuda: bool,
    engine_device: Any = None,
    no_engine: str = "TensorRT is not installed",
) -> BackendChoice:
    """``auto``'s pick: the bundle's TensorRT engines at ``precision`` when they match
    ``engine_device`` (:class:`~eri.models.engine.EngineDevice`; None: no TensorRT here, because
    ``no_engine``), else torch on CUDA (fp32, fp16) when ``cuda``, else ONNX Runtime on the CPU.
    An engine for another GPU or TensorRT version is refused, and its sentence is the reason."""
    why: list[str] = []
    if engine_device is not None:
        from eri.realtime.variants import find_engines

        lookup = find_engines(bundle, precision, engine_device)
        for refusal in lookup.refused:  # an engine for another GPU or TensorRT version
            log.warning("%s", refusal)
        if lookup.paths is not None:
            reason = f"{lookup.why} match {engine_device.describe()}"
            return BackendChoice("tensorrt", reason, lookup.paths)
        why.append(lookup.why)
    else:
        why.append(no_engine)
    if cuda and precision != "int8":
        return BackendChoice("torch", "torch on CUDA: " + "; ".join(why))
    why.append("torch does not run int8" if cuda else "no CUDA GPU")
    return BackendChoice("onnxruntime", "ONNX Runtime on the CPU: " + "; ".join(why))


def auto_backend(bundle: Any, precision: str) -> BackendChoice:
    """:func:`choose_backend` for this machine (its GPU, TensorRT, engines)."""
    import torch

    cuda = torch.cuda.is_available()
    device, no_engine = None, "TensorRT is not installed"
    if "tensorrt" in BACKENDS and not cuda:
        no_engine = "TensorRT needs a CUDA GPU"
    elif "tensorrt" in BACKENDS:
        from eri.models.engine import current_device

        try:
            device = current_device()
        except EriError as exc:
            no_engine = str(exc)
    return choose_backend(bundle, precision, cuda=cuda, engine_device=device, no_engine=no_engine)


def create_backend(
    bundle: Any,
    name: str = "auto",
    precision: str = "fp32",
    threads: int = 0,
    *,
    graphs: bool = True,
) -> Backend:
    """The backend ``name`` for ``bundle`` at ``precision`` (``eri.choices``); ``auto`` picks
    as :func:`choose_backend` says, logs why and keeps it in ``backend.reason``; an engine that
    fails to load there falls back to the next backend. A precision the backend cannot run, or
    whose export or engine is missing, is an :class:`~eri.errors.EriError` saying what to do.
    ``graphs=False`` keeps torch on CUDA eager (the benchmark compares both)."""
    if precision not in available_precisions():
        raise BackendError(
            f"Unknown precision {precision!r}; choose one of: {', '.join(available_precisions())}."
        )
    reason = ""
    if name == "auto":
        choice = auto_backend(bundle, precision)
        if choice.name == "tensorrt":
            from eri.realtime.backend_tensorrt import TensorRTBackend

            try:
                backend = TensorRTBackend(bundle, precision, engines=choice.engines)
            except EriError as exc:
                import torch

                log.warning("%s", exc)
                choice = choose_backend(
                    bundle, precision, cuda=torch.cuda.is_available(), no_engine=str(exc)
                )
            else:
                backend.reason = f"auto picked tensorrt: {choice.reason}"
                log.info("%s", backend.reason)
                return backend
        name, reason = choice.name, f"auto picked {choice.name}: {choice.reason}"
        log.info("%s", reason)
    if name == "torch":
        backend = TorchBackend(bundle, threads=threads, precision=precision, graphs=graphs)
    elif name == "onnxruntime":
        backend = OnnxRuntimeBackend(bundle, threads=threads, precision=precision)
    elif name == "tensorrt" and "tensorrt" in BACKENDS:
        from eri.realtime.backend_tensorrt import TensorRTBackend

        backend = TensorRTBackend(bundle, precision)
    else:
        hint = (
            " (tensorrt needs `pip install 'eri-live[tensorrt]'` on a machine with an NVIDIA GPU)"
            if name == "tensorrt"
            else ""
        )
        raise BackendError(
            f"Unknown backend {name!r}; choose one of: auto, {', '.join(BACKENDS)}{hint}."
        )
    backend.reason = reason
    return backend


class BackendError(EriError, ValueError):
    """A backend that cannot run here; the message says which one to use instead."""
