"""torch on CUDA with the per-frame work captured in CUDA graphs (``--backend torch`` on a GPU).

A streaming step launches a few hundred small kernels (one frame through the encoder, one
window through the head); on a fast GPU launching them costs more than running them. A CUDA
graph records the launches once and replays them as one. Each callable here is captured per
set of input shapes, into static input and output buffers:

- :class:`ShapeGraphs` serves a function from graphs keyed by its inputs' shapes: a shape is
  captured the second time it is seen (the streaming step's shapes repeat every frame; a
  one-off batch does not pay for a capture), at most ``max_shapes`` of them; other shapes, or
  all of them after a capture failed, run eagerly. The capture itself is injected, so the
  bookkeeping runs (and is tested) without a GPU.
- :func:`capture` records ``fn`` on CUDA: warm-up runs on a side stream (cuDNN and cuBLAS
  pick their kernels, the allocator fills), then one run under ``torch.cuda.graph``; fp16 runs
  under autocast with its cast cache off, as capture requires.
- :class:`GraphedModel` is what :class:`eri.realtime.backends.TorchBackend` uses on CUDA: the
  model's ``encode_frames``, its exported audio encoder (the streaming step's one new token)
  and its exported head, each behind a :class:`ShapeGraphs`.
- :func:`streaming_step` is the whole step as one function (encode the new frame, append its
  features to the window, run the head): what ``benchmarks/gpu_models.py`` captures and times.

On the CPU none of this is used; :func:`graphs_unavailable` says why.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

log = logging.getLogger(__name__)

#: Untimed runs on a side stream before a capture.
WARMUP_RUNS = 3
#: Input shapes captured per callable (streaming: 1; offline batches; recompute: T frames).
MAX_SHAPES = 4
#: Calls with the same shapes before they are captured.
CAPTURE_AFTER = 2


def graphs_unavailable(device: str) -> str | None:
    """Why CUDA graphs cannot run on ``device`` ("cpu", "cuda", "cuda:0"), or None if they can."""
    if not device.startswith("cuda"):
        return f"CUDA graphs need a CUDA device, not {device}"
    import torch

    if not torch.cuda.is_available():
        return "no CUDA GPU"
    return None


def autocast(fp16: bool) -> Any:
    """fp16 autocast on CUDA (off for fp32); the cast cache off, as graph capture needs."""
    import torch

    return torch.autocast("cuda", dtype=torch.float16, enabled=fp16, cache_enabled=False)


class GraphedCall:
    """A captured graph with its static inputs and output: copy in, replay, read out."""

    def __init__(self, graph: Any, static_inputs: Sequence[Any], static_output: Any) -> None:
        self.graph = graph
        self.static_inputs = list(static_inputs)
        self.static_output = static_output

    def __call__(self, *inputs: Any) -> Any:
        """The output tensor for ``inputs`` (overwritten by the next call: copy it out)."""
        for dst, src in zip(self.static_inputs, inputs):
            dst.copy_(src, non_blocking=True)
        self.graph.replay()
        return self.static_output


def capture(fn: Callable[..., Any], inputs: Sequence[Any], *, fp16: bool = False) -> GraphedCall:
    """``fn`` captured in a CUDA graph on copies of ``inputs`` (CUDA tensors), after
    :data:`WARMUP_RUNS` runs on a side stream, under fp16 autocast when ``fp16``."""
    import torch

    static_inputs = [t.detach().clone() for t in inputs]
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side), torch.no_grad(), autocast(fp16):
        for _ in range(WARMUP_RUNS):
            fn(*static_inputs)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.no_grad(), autocast(fp16), torch.cuda.graph(graph):
        static_output = fn(*static_inputs)
    return GraphedCall(graph, static_inputs, static_output)


Capture = Callable[[Callable[..., Any], Sequence[Any]], Callable[..., Any]]


class ShapeGraphs:
    """``fn`` served from graphs per input shapes (see the module docstring)."""

    def __init__(
        self,
        fn: Callable[..., Any],
        capture_fn: Capture,
        *,
        name: str = "",
        max_shapes: int = MAX_SHAPES,
        capture_after: int = CAPTURE_AFTER,
    ) -> None:
        self.fn = fn
        self.capture_fn = capture_fn
        self.name = name or getattr(fn, "__name__", "callable")
        self.max_shapes = max_shapes
        self.capture_after = capture_after
        self.graphs: dict[tuple, Callable[..., Any]] = {}
        self.seen: dict[tuple, int] = {}
        #: Why capture stopped (None while it works).
        self.failed: str | None = None

    @staticmethod
    def key(inputs: Sequence[Any]) -> tuple:
        return tuple((tuple(t.shape), str(t.dtype)) for t in inputs)

    def __call__(self, *inputs: Any) -> Any:
        key = self.key(inputs)
        graph = self.graphs.get(key)
        if graph is not None:
            return graph(*inputs)
        if self.failed is None and len(self.graphs) < self.max_shapes:
            self.seen[key] = self.seen.get(key, 0) + 1
            if self.seen[key] >= self.capture_after:
                try:
                    graph = self.graphs[key] = self.capture_fn(self.fn, inputs)
                except Exception as exc:  # e.g. an op that cannot be captured: run eagerly
                    self.failed = f"{type(exc).__name__}: {exc}"
                    log.warning(
                        "%s: CUDA graph capture failed (%s); running eagerly", self.name, exc
                    )
                else:
                    log.debug("%s: captured a CUDA graph for shapes %s", self.name, key)
                    return graph(*inputs)
        return self.fn(*inputs)


class GraphedModel:
    """A model's ``encode_frames``, audio encoder (``audio``: the exported audio encoder graph,
    tokens [N, F] -> [N, A]; None without audio) and ``head`` (the exported head graph) on
    CUDA, each served from CUDA graphs per input shape; fp16 under autocast, like the eager
    torch backend."""

    def __init__(self, model: Any, head: Any, precision: str = "fp32", audio: Any = None) -> None:
        self.fp16 = precision == "fp16"

        def encode(faces: Any) -> Any:
            return model.encode_frames(faces)

        def encode_audio(tokens: Any) -> Any:
            return audio(tokens)

        def run_head(*args: Any) -> Any:
            return head(*args)

        def cap(fn: Callable[..., Any], inputs: Sequence[Any]) -> GraphedCall:
            return capture(fn, inputs, fp16=self.fp16)

        self.encode = ShapeGraphs(encode, cap, name="encode_frames")
        self.audio = ShapeGraphs(encode_audio, cap, name="encode_audio") if audio else None
        self.head = ShapeGraphs(run_head, cap, name="head")

    def __call__(self, which: str, *inputs: Any) -> Any:
        """``which`` ("encode", "audio" or "head") on CUDA tensors, from a graph when there is
        one."""
        import torch

        graphs = {"encode": self.encode, "audio": self.audio, "head": self.head}[which]
        if graphs is None:
            raise ValueError("this model has no audio encoder")
        with torch.no_grad(), autocast(self.fp16):
            return graphs(*inputs)

    @property
    def failed(self) -> str | None:
        audio = self.audio.failed if self.audio is not None else None
        return self.encode.failed or audio or self.head.failed


def streaming_step(model: Any, head: Any, audio: Any = None) -> Callable[..., Any]:
    """One streaming step as one function: ``step(face [1, 3, S, S], visual [1, T, D], *rest)
    -> intensities [1, 7]``, where the window is ``visual`` shifted by one sample with the new
    frame's features last, and ``rest`` the head's other inputs (audio features and flags).
    With ``audio`` (the audio encoder graph, tokens [N, F] -> [N, A]) the step is
    ``step(face, token [1, F], visual, audio_features [1, T, A], audio_present,
    visual_present)``: the new token is encoded and appended the same way (what the pipeline's
    per-token cache does)."""
    import torch

    def shift(window: Any, new: Any) -> Any:
        return torch.cat([window[:, 1:], new[:, None].to(window.dtype)], dim=1)

    def step(face: Any, visual: Any, *rest: Any) -> Any:
        return head(shift(visual, model.encode_frames(face)), *rest)

    def step_audio(face: Any, token: Any, visual: Any, features: Any, *rest: Any) -> Any:
        window = shift(visual, model.encode_frames(face))
        return head(window, shift(features, audio(token)), *rest)

    return step if audio is None else step_audio
