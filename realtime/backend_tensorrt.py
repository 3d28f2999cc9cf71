"""The ``tensorrt`` backend: the bundle's engines (frame encoder, audio encoder for models with
audio, head) run with TensorRT's Python runtime.

Memory and streams are torch's (no pycuda): per engine and optimisation profile one execution
context with device buffers for its largest batch and pinned host buffers of the same size,
allocated once; one CUDA stream for everything. A call copies the input into pinned memory,
then host -> device, ``execute_async_v3``, device -> host on the stream, and synchronises once.
The streaming step's shapes repeat (batch 1 per frame), so a context's ``execute_async_v3`` is
captured in a CUDA graph after the second call with the same shapes (TensorRT is run once
uncaptured first, as the CUDA-graph guidance asks, so deferred shape work is done outside the
capture) and replayed from then on; a shape change drops the graph.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from eri.models.engine import (
    EngineError,
    check_engine,
    current_device,
    import_tensorrt,
    read_engine_header,
    read_plan,
    trt_logger,
)
from eri.models.export import head_input_names
from eri.realtime.backends import Backend

log = logging.getLogger(__name__)


def _torch_dtype(trt: Any, dtype: Any) -> Any:
    import torch

    table = {
        trt.float32: torch.float32,
        trt.float16: torch.float16,
        trt.int32: torch.int32,
        trt.int8: torch.int8,
        trt.bool: torch.bool,
    }
    if hasattr(trt, "int64"):
        table[trt.int64] = torch.int64
    return table[dtype]


class _Profile:
    """One execution context bound to one optimisation profile, with its buffers."""

    def __init__(self, trt: Any, engine: Any, index: int, inputs, outputs, stream: Any) -> None:
        import torch

        self.index = index
        self.context = engine.create_execution_context()
        self.context.set_optimization_profile_async(index, stream.cuda_stream)
        lo, _, hi = engine.get_tensor_profile_shape(inputs[0], index)
        self.min_batch, self.max_batch = int(lo[0]), int(hi[0])
        self.device: dict[str, Any] = {}
        self.host: dict[str, Any] = {}
        for name in inputs:
            shape = tuple(engine.get_tensor_profile_shape(name, index)[2])
            self.context.set_input_shape(name, shape)
        for name in (*inputs, *outputs):
            shape = tuple(self.context.get_tensor_shape(name))
            dtype = _torch_dtype(trt, engine.get_tensor_dtype(name))
            self.device[name] = torch.empty(shape, dtype=dtype, device="cuda")
            self.host[name] = torch.empty(shape, dtype=dtype, pin_memory=True)
            self.context.set_tensor_address(name, self.device[name].data_ptr())
        self.batch = self.max_batch
        self.calls_at_batch = 0
        self.graph: Any = None


class EngineRunner:
    """One engine file: its contexts per profile, run on numpy arrays."""

    def __init__(self, path: Path, stream: Any, *, graphs: bool = True) -> None:
        trt = import_tensorrt()
        self.path = path
        self.stream = stream
        self.graphs = graphs
        header = read_engine_header(path)
        self.runtime = trt.Runtime(trt_logger(trt))
        self.engine = self.runtime.deserialize_cuda_engine(read_plan(header))
        if self.engine is None:
            raise EngineError(
                f"TensorRT could not load engine {path} (its errors are logged above); rebuild "
                f"it on this machine with `eri export BUNDLE --format engine...`."
            )
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        is_input = [self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names]
        self.inputs = [n for n, i in zip(names, is_input) if i]
        self.outputs = [n for n, i in zip(names, is_input) if not i]
        self.profiles = [
            _Profile(trt, self.engine, p, self.inputs, self.outputs, stream)
            for p in range(self.engine.num_optimization_profiles)
        ]
        self.max_batch = max(p.max_batch for p in self.profiles)

    def _profile(self, batch: int) -> _Profile:
        return next(p for p in self.profiles if p.min_batch <= batch <= p.max_batch)

    def run(self, arrays: list[np.ndarray]) -> np.ndarray:
        """The engine's first output for inputs ``arrays`` (in :attr:`inputs` order, batch
        first); batches beyond the largest profile run in chunks."""
        n = arrays[0].shape[0]
        if n > self.max_batch or n < self.profiles[0].min_batch:
            step = self.max_batch
            return np.concatenate(
                [self.run([a[i : i + step] for a in arrays]) for i in range(0, n, step)]
            )
        return self._run(self._profile(n), arrays, n)

    def _run(self, p: _Profile, arrays: list[np.ndarray], n: int) -> np.ndarray:
        import torch

        if p.batch != n:
            for name, a in zip(self.inputs, arrays):
                p.context.set_input_shape(name, tuple(a.shape))
            p.batch, p.calls_at_batch, p.graph = n, 0, None
        for name, a in zip(self.inputs, arrays):
            p.host[name][:n].numpy()[...] = a
        out = self.outputs[0]
        with torch.cuda.stream(self.stream):
            for name in self.inputs:
                p.device[name][:n].copy_(p.host[name][:n], non_blocking=True)
            if p.graph is not None:
                p.graph.replay()
            else:
                if not p.context.execute_async_v3(self.stream.cuda_stream):
                    raise EngineError(f"TensorRT failed to run engine {self.path}; see the log.")
                p.calls_at_batch += 1
            p.host[out][:n].copy_(p.device[out][:n], non_blocking=True)
        self.stream.synchronize()
        result = p.host[out][:n].numpy().copy()
        if p.graph is None and self.graphs and p.calls_at_batch >= 2:
            self._capture(p)
        return result

    def _capture(self, p: _Profile) -> None:
        """Capture the context's ``execute_async_v3`` at its current shapes in a CUDA graph."""
        import torch

        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, stream=self.stream, capture_error_mode="thread_local"):
                p.context.execute_async_v3(self.stream.cuda_stream)
        except Exception as exc:  # a capture TensorRT refuses: run uncaptured
            self.graphs = False
            log.warning("%s: CUDA graph capture failed (%s); running without", self.path, exc)
            return
        p.graph = graph


class TensorRTBackend(Backend):
    """The bundle's TensorRT engines at ``precision`` (:func:`find_engines` beside the bundle or
    in the export cache), checked against this GPU and TensorRT version before loading."""

    name = "tensorrt"

    def __init__(
        self,
        bundle: Any,
        precision: str = "fp32",
        *,
        engines: Mapping[str, Path] | None = None,
        graphs: bool = True,
    ) -> None:
        super().__init__(bundle)
        import torch

        from eri.models.export import weights_digest
        from eri.realtime.variants import find_engines

        device = current_device()
        if engines is None:  # found beside the bundle or in the cache, headers checked
            lookup = find_engines(bundle, precision, device)
            if lookup.paths is None:
                raise EngineError(lookup.why)
            engines = lookup.paths
        else:
            weights = weights_digest(self.model)
            for path in engines.values():
                header = read_engine_header(path, precision)
                check_engine(header, device, weights=weights, precision=precision)
        self.precision = precision
        self.device = f"cuda ({device.gpu})"
        self.paths = dict(engines)
        self.stream = torch.cuda.Stream()
        log.info("tensorrt %s: loading %s", precision, ", ".join(map(str, engines.values())))
        self.encoder = EngineRunner(engines["frame_encoder"], self.stream, graphs=graphs)
        self.audio_engine = (
            EngineRunner(engines["audio_encoder"], self.stream, graphs=graphs)
            if self.has_audio
            else None
        )
        self.head_engine = EngineRunner(engines["head"], self.stream, graphs=graphs)

    def encode_frames(self, faces: np.ndarray) -> np.ndarray:
        return self.encoder.run([np.ascontiguousarray(faces, np.float32)])

    def encode_audio(self, tokens: np.ndarray) -> np.ndarray:
        self._audio_only()
        return self.audio_engine.run([np.ascontiguousarray(tokens, np.float32)])

    def head(self, visual, audio_features, audio_present, visual_present) -> np.ndarray:
        args = self._head_args(visual, audio_features, audio_present, visual_present)
        feed = dict(zip(head_input_names(self.model), args))  # the engine's own order below
        return self.head_engine.run([feed[name] for name in self.head_engine.inputs])

    def describe(self) -> str:
        graphs = ", CUDA graphs" if self.encoder.graphs else ""
        return f"tensorrt {self.precision} on {self.device}{graphs}"
