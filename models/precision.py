"""Precision variants of the exported graphs: fp16 ONNX, and the checks every variant shares.

``to_fp16`` converts one fp32 graph with onnxconverter-common's maintained converter
(``float16.convert_float_to_float16(keep_io_types=True)``): inputs and outputs stay float32, so a
backend feeds every precision the same arrays. Two kinds of node stay in fp32 (the converter's
``node_block_list``, wrapped in Casts):

- the audio front: every op from ``audio_tokens`` up to and including the first
  normalisation (:func:`audio_norm_nodes`, found in the graph). Since the audio encoder is its
  own graph (``audio_encoder.onnx``, raw tokens in), the front lives there, and the head takes
  the normalised features. The front is the per-token LayerNorm, or for
  ``audio_norm="dataset"`` the z-score with the stored statistics (one inference
  ``BatchNormalization``, whose means and variances, up to ~1e5, stay fp32 too:
  :func:`keep_fp32_initializers`). Raw MFCC tokens reach ~1130 in
  magnitude (silence is -100 dB, so c0 = -100 * sqrt(128)); their square overflows fp16 and an
  fp16 mean-subtraction of values that large loses ~0.5 absolute. ONNX Runtime's CPU LayerNorm
  happens to accumulate in fp32, but other runtimes (TensorRT) need not. The rest of the audio
  encoder (cnn_lstm's spectrogram CNN) is converted like any other graph;
- every node that reads or writes a float tensor reaching :data:`FP16_SAFE_MAX` on probe inputs
  (:func:`fp16_range_nodes`). mtl_dan's DAN spatial attention multiplies the features by a map
  summed over 512 channels: values reach ~7e4 on random faces, past fp16's 65504.

Every variant is checked in ONNX Runtime on the CPU against fp32 torch (:func:`check_variant`),
relative to the scale of each output.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from eri.choices import EXPORT_FORMATS
from eri.errors import EriError
from eri.models.audio import AudioSpec, waveform_tokens
from eri.models.base import StreamingModel
from eri.models.export import (
    AUDIO_FEATURES,
    AUDIO_PRESENT,
    AUDIO_TOKENS,
    FACES,
    GRAPH_FILES,
    GRAPH_OUTPUTS,
    VISUAL,
    VISUAL_PRESENT,
    AudioEncoderGraph,
    FrameEncoderGraph,
    export_format,
    graph_module,
    graphs,
    input_names,
    model_cache_dir,
    onnx_paths,
    ort_session,
    own_exports,
)
from eri.models.spec import WindowSpec

log = logging.getLogger(__name__)

#: Largest |fp16 ONNX Runtime - fp32 torch| accepted, relative to the largest |fp32| value of
#: the output (features; intensities, which lie in [0, 1]). Measured on the seeded small models
#: of the three architectures (random faces, speech-like and silent audio tokens up to 1131):
#: at most 7.3e-4 on features and 1.5e-4 on intensities end to end; fp16's own relative step is
#: 2**-11 = 4.9e-4, so 5e-3 leaves room for a few roundings without hiding a real overflow.
FP16_TOLERANCE = 5e-3

#: A node runs in fp32 when a float tensor it reads or writes reaches this magnitude on the probe
#: inputs: 16x below fp16's largest finite value (65504), as headroom for inputs unlike the probe.
FP16_SAFE_MAX = 4096.0

#: Normalisation ops that end the audio front kept in fp32 (they rescale the raw tokens).
NORMALISATION_OPS = frozenset(
    {
        "LayerNormalization",
        "BatchNormalization",
        "InstanceNormalization",
        "GroupNormalization",
        "MeanVarianceNormalization",
        "SimplifiedLayerNormalization",
        "SkipLayerNormalization",
    }
)

#: Metadata keys the variants add beside the fp32 export's.
PRECISION_KEY, FP32_NODES_KEY = "eri.precision", "eri.fp32_nodes"

#: Waveform levels of the probe audio: loud to quiet speech-like tones, then exact silence,
#: whose MFCC c0 is the most negative a token can be (-100 dB floor: -1131 for 128 mels).
PROBE_AUDIO_LEVELS = (0.3, 0.05, 0.003, 0.0)

#: Faces the frame encoder's range probe runs on (every intermediate tensor is kept in memory).
PROBE_FACES = 8


# ------------------------------------------------------------------------------- file names
def variant_paths(
    out_dir: str | Path, fmt: str, model: StreamingModel | None = None
) -> dict[str, Path]:
    """``{"frame_encoder": OUT/frame_encoder<suffix>.onnx, "audio_encoder": ..., "head": ...}``
    for export format ``fmt`` (``"onnx-fp16"`` -> ``frame_encoder_fp16.onnx``); the suffix
    comes from ``eri.choices.EXPORT_FORMATS``. The graphs of ``model`` (no ``audio_encoder``
    without audio); without ``model``, every graph a model may have."""
    suffix = export_format(fmt).suffix
    out_dir = Path(out_dir)
    names = graphs(model) if model is not None else list(GRAPH_FILES)
    return {g: out_dir / f"{Path(GRAPH_FILES[g]).stem}{suffix}.onnx" for g in names}


class PrecisionError(EriError, ValueError):
    """A precision variant that does not exist; the message says how to make it."""


def onnx_format(precision: str) -> str:
    """The ONNX export format of ``precision`` (``"fp16"`` -> ``"onnx-fp16"``)."""
    for fmt in EXPORT_FORMATS:
        if fmt.runtime == "onnxruntime" and fmt.precision == precision and fmt.available:
            return fmt.name
    offered = [f.precision for f in EXPORT_FORMATS if f.runtime == "onnxruntime" and f.available]
    raise PrecisionError(f"Unknown precision {precision!r}; choose one of: {', '.join(offered)}.")


def precision_paths(bundle: Any, precision: str) -> dict[str, Path]:
    """The bundle's ONNX graphs at ``precision`` (``{"frame_encoder": path, "audio_encoder":
    path (models with audio), "head": path}``).

    The bundle's own exports (recorded in bundle.json) come first, then the export cache
    (:func:`eri.models.export.model_cache_dir`). fp32 and fp16 are made into the cache on demand
    (fp16 from fp32); int8 needs calibration data, so a missing int8 export is a
    :class:`PrecisionError` saying how to make one. An own export of another graph version is
    refused (:func:`eri.models.export.check_graph`).
    """
    if precision == "fp32":
        return onnx_paths(bundle)
    fmt = onnx_format(precision)
    files = {g: p.name for g, p in variant_paths(".", fmt, bundle.model).items()}
    own = own_exports(bundle, files)
    if own is not None:
        return own
    cached = variant_paths(model_cache_dir(bundle.model), fmt, bundle.model)
    if all(p.is_file() for p in cached.values()):
        return cached
    if precision == "fp16":
        fp32 = onnx_paths(bundle)
        target = model_cache_dir(bundle.model)
        log.info("converting %s to fp16 once; cached in %s", bundle.model.arch_name, target)
        return export_fp16(bundle.model, fp32, target)
    where = bundle.path if bundle.path is not None else "DIR"
    first = "" if bundle.path is not None else "save it with `eri bundle --out DIR`, "
    then = "" if bundle.path is not None else ", and pass --model DIR"
    raise PrecisionError(
        f"{bundle.name} has no {precision} export; {first}run `eri calibrate {where} --data "
        f"MEDIA_DIR --out CALIB` and then `eri export {where} --format {fmt} --calib CALIB`{then}."
    )


# ------------------------------------------------------------------------------- probe inputs
def synthetic_audio_tokens(
    spec: AudioSpec, window: WindowSpec, batch: int, seed: int = 0
) -> np.ndarray:
    """Speech-like audio tokens [B, T, F] float32 through the real front end
    (:func:`eri.models.audio.waveform_tokens`): a gliding harmonic tone with pauses plus noise at
    the levels of :data:`PROBE_AUDIO_LEVELS` in turn (the last is silence, |token| ~1131)."""
    rng = np.random.default_rng(seed)
    duration = window.context_s + spec.token_s
    n = int(round(duration * spec.sample_rate))
    t = np.arange(n) / spec.sample_rate
    times = window.sample_times(duration)
    tokens = []
    for b in range(batch):
        level = PROBE_AUDIO_LEVELS[b % len(PROBE_AUDIO_LEVELS)]
        f0 = 110.0 + 60.0 * rng.random() + 30.0 * np.sin(2 * np.pi * 0.7 * t)
        phase = 2 * np.pi * np.cumsum(f0) / spec.sample_rate
        voiced = sum(np.sin(k * phase) / k for k in range(1, 10))
        pauses = np.sin(2 * np.pi * (1.5 + rng.random()) * t) > -0.3
        wave = level * (voiced * pauses + 0.05 * rng.standard_normal(n))
        tokens.append(waveform_tokens(wave.astype(np.float32), times, spec)[0])
    return np.stack(tokens).astype(np.float32)


def probe_inputs(model: StreamingModel, batch: int = 4, seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs of every graph keyed by ONNX name, at realistic scales: faces [N, 3, S, S] in
    [0, 1] (N = B * T), visual [B, T, D] = the model's own features of those faces, audio tokens
    [N, F] from :func:`synthetic_audio_tokens`, audio features [B, T, A] = the model's own
    features of those tokens, presence flags [B] (audio absent on odd rows)."""
    rng = np.random.default_rng(seed)
    t, s = model.window.num_samples, model.crop.size
    faces = rng.random((batch * t, 3, s, s), dtype=np.float32)
    with torch.no_grad():
        features = FrameEncoderGraph(model.eval())(torch.from_numpy(faces)).numpy()
    inputs = {
        FACES: faces,
        VISUAL: features.reshape(batch, t, -1),
        VISUAL_PRESENT: np.ones(batch, np.float32),
    }
    if model.has_audio:
        tokens = synthetic_audio_tokens(model.audio_spec, model.window, batch, seed)
        tokens = tokens.reshape(batch * t, -1)
        with torch.no_grad():
            audio = AudioEncoderGraph(model)(torch.from_numpy(tokens)).numpy()
        inputs[AUDIO_TOKENS] = tokens
        inputs[AUDIO_FEATURES] = audio.reshape(batch, t, -1)
        inputs[AUDIO_PRESENT] = (np.arange(batch) % 2 == 0).astype(np.float32)
    return inputs


def graph_feeds(path: str | Path, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The entries of ``inputs`` that the ONNX graph at ``path`` takes."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return {i.name: inputs[i.name] for i in proto.graph.input}


# ------------------------------------------------------------------------------- graph analysis
def audio_norm_nodes(proto, input_name: str = AUDIO_TOKENS) -> list[str]:
    """Names of the nodes that handle ``input_name`` before and at its first normalisation.

    Walks forward from the input through its consumers; a node in :data:`NORMALISATION_OPS`
    is kept and not walked past. Empty when the graph has no such input (mtl_dan). If no
    normalisation is reached, every node downstream of the input is returned (all fp32)."""
    consumers: dict[str, list] = {}
    for node in proto.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    found: dict[str, None] = {}
    frontier = [input_name]
    while frontier:
        tensor = frontier.pop()
        for node in consumers.get(tensor, []):
            if node.name in found:
                continue
            found[node.name] = None
            if node.op_type not in NORMALISATION_OPS:
                frontier.extend(node.output)
    return list(found)


def _name_nodes(proto) -> None:
    """Give unnamed nodes a unique name (block lists and exclusions refer to nodes by name)."""
    used = {n.name for n in proto.graph.node if n.name}
    for i, node in enumerate(proto.graph.node):
        if not node.name:
            name = f"eri_{node.op_type}_{i}"
            while name in used:
                name += "_"
            node.name = name
            used.add(name)


def tensor_absmax(proto, feeds: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Largest |value| of every float tensor of the graph (inputs, node outputs) on ``feeds``,
    run in ONNX Runtime on the CPU with every intermediate exposed as an output."""
    import onnx
    from onnx import TensorProto

    probe = onnx.ModelProto()
    probe.CopyFrom(proto)
    inferred = onnx.shape_inference.infer_shapes(probe)
    types = {
        v.name: v.type.tensor_type.elem_type
        for v in (*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input)
    }
    existing = {o.name for o in probe.graph.output}
    for node in probe.graph.node:
        for name in node.output:
            if name and name not in existing and types.get(name) == TensorProto.FLOAT:
                probe.graph.output.append(
                    onnx.helper.make_tensor_value_info(name, types[name], None)
                )
                existing.add(name)
    session = ort_session_from_proto(probe)
    names = [o.name for o in session.get_outputs()]
    values = session.run(names, dict(feeds))
    out = {k: float(np.abs(v).max()) if v.size else 0.0 for k, v in feeds.items()}
    for name, value in zip(names, values):
        if np.issubdtype(np.asarray(value).dtype, np.floating) and np.asarray(value).size:
            out[name] = float(np.abs(value).max())
    return out


def ort_session_from_proto(proto):
    """A CPU ONNX Runtime session on an in-memory graph (written to a temporary file when it is
    too large to serialise in one protobuf)."""
    import tempfile

    import onnx

    with tempfile.TemporaryDirectory(prefix="eri-probe-") as tmp:
        path = Path(tmp) / "probe.onnx"
        onnx.save_model(proto, str(path))
        return ort_session(path, threads=1)


def fp16_range_nodes(
    proto, feeds: Mapping[str, np.ndarray], limit: float = FP16_SAFE_MAX
) -> list[str]:
    """Names of the nodes that read or write a float tensor reaching ``limit`` in magnitude on
    ``feeds`` (those would overflow, or come close to overflowing, in fp16)."""
    big = {name for name, value in tensor_absmax(proto, feeds).items() if value >= limit}
    return [
        node.name
        for node in proto.graph.node
        if any(t in big for t in node.input) or any(t in big for t in node.output)
    ]


# ------------------------------------------------------------------------------- conversion
def _save_checked(proto, dst: Path) -> None:
    """Check and write ``proto`` beside ``dst``, then move it into place (never half-written)."""
    import onnx

    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".tmp")
    try:
        onnx.save_model(proto, str(tmp))
        onnx.checker.check_model(str(tmp))
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)


def set_metadata(proto, values: Mapping[str, str]) -> None:
    """Set (replace) model metadata entries."""
    keep = [p for p in proto.metadata_props if p.key not in values]
    del proto.metadata_props[:]
    proto.metadata_props.extend(keep)
    for key, value in values.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value


def keep_fp32_initializers(converted, original, blocked: set[str]) -> list[str]:
    """Put back the fp32 values of the initializers that only nodes kept in fp32 read.

    The converter turns every initializer into fp16, clipped to +-1e4, including those of the
    blocked nodes (it renames their inputs to Casts first, so its own check misses them): the
    dataset audio statistics (means ~ -600, variances ~1e5) would lose their scale. An
    initializer is restored when, in ``original``, only ``blocked`` nodes read it and, in
    ``converted``, only those nodes or Casts to float do. Returns the restored names."""
    from onnx import TensorProto

    def readers(proto) -> dict[str, list]:
        out: dict[str, list] = {}
        for node in proto.graph.node:
            for name in node.input:
                out.setdefault(name, []).append(node)
        return out

    def casts_to_float(node) -> bool:
        to = next((a.i for a in node.attribute if a.name == "to"), None)
        return node.op_type == "Cast" and to == TensorProto.FLOAT

    before, after = readers(original), readers(converted)
    fp32 = {
        init.name: init
        for init in original.graph.initializer
        if init.data_type == TensorProto.FLOAT
        and before.get(init.name)
        and all(node.name in blocked for node in before[init.name])
    }
    restored = []
    for init in converted.graph.initializer:
        src = fp32.get(init.name)
        if src is None or init.data_type == TensorProto.FLOAT:
            continue
        if all(n.name in blocked or casts_to_float(n) for n in after.get(init.name, [])):
            init.CopyFrom(src)
            restored.append(init.name)
    names = set(restored)
    for info in (*converted.graph.value_info, *converted.graph.input):
        if info.name in names:
            info.type.tensor_type.elem_type = TensorProto.FLOAT
    return restored


def to_fp16(
    src_onnx: str | Path,
    dst_onnx: str | Path,
    *,
    feeds: Mapping[str, np.ndarray] | None = None,
    extra_fp32_nodes: Iterable[str] = (),
) -> Path:
    """Convert the fp32 graph ``src_onnx`` to fp16 at ``dst_onnx`` (inputs/outputs float32).

    Kept in fp32: :func:`audio_norm_nodes` (always), :func:`fp16_range_nodes` on ``feeds``
    (probe inputs keyed by input name; skipped when None) and ``extra_fp32_nodes``. The blocked
    node names are recorded in the metadata (``eri.fp32_nodes``) with ``eri.precision=fp16``.
    """
    import onnx
    from onnxconverter_common import float16

    src, dst = Path(src_onnx), Path(dst_onnx)
    proto = onnx.load(str(src))
    _name_nodes(proto)
    blocked = dict.fromkeys(audio_norm_nodes(proto))
    if feeds is not None:
        blocked.update(dict.fromkeys(fp16_range_nodes(proto, feeds)))
    blocked.update(dict.fromkeys(extra_fp32_nodes))
    with warnings.catch_warnings():
        # The converter warns once per constant it rounds to fp16's range (hundreds per graph).
        warnings.simplefilter("ignore", UserWarning)
        converted = float16.convert_float_to_float16(
            proto, keep_io_types=True, node_block_list=list(blocked)
        )
    restored = keep_fp32_initializers(converted, proto, set(blocked))
    log.debug("fp16: kept %d initializer(s) of fp32 nodes in fp32", len(restored))
    set_metadata(converted, {PRECISION_KEY: "fp16", FP32_NODES_KEY: json.dumps(list(blocked))})
    _save_checked(converted, dst)
    log.info("fp16: %s -> %s (%d node(s) kept in fp32)", src.name, dst, len(blocked))
    return dst


def export_fp16(
    model: StreamingModel,
    fp32_paths: Mapping[str, Path],
    out_dir: str | Path,
    *,
    probe_batch: int = 4,
) -> dict[str, Path]:
    """The graphs of ``model`` (its fp32 exports ``fp32_paths``) as fp16 into ``out_dir``
    (``frame_encoder_fp16.onnx``, ``audio_encoder_fp16.onnx``, ``head_fp16.onnx``),
    range-probed on :func:`probe_inputs`."""
    probes = probe_inputs(model, probe_batch)
    out = variant_paths(out_dir, "onnx-fp16", model)
    probes[FACES] = probes[FACES][:PROBE_FACES]
    for graph, path in fp32_paths.items():
        to_fp16(path, out[graph], feeds=graph_feeds(path, probes))
    return out


# ------------------------------------------------------------------------------- checking
@dataclass(frozen=True)
class VariantCheck:
    """One graph output of a precision variant against fp32 torch."""

    graph: str
    output: str
    max_abs: float  # largest |variant - torch|
    p99_abs: float  # 99th percentile of |variant - torch|
    scale: float  # largest |torch| (the output's scale)
    tolerance: float  # accepted max_abs / scale

    @property
    def relative(self) -> float:
        return self.max_abs / max(self.scale, 1e-12)

    @property
    def p99_relative(self) -> float:
        return self.p99_abs / max(self.scale, 1e-12)

    @property
    def ok(self) -> bool:
        return bool(np.isfinite(self.max_abs)) and self.relative <= self.tolerance

    def describe(self) -> str:
        verdict = "ok" if self.ok else "TOO LARGE"
        return (
            f"{self.graph}.{self.output}: max |diff| {self.max_abs:.3g} on scale "
            f"{self.scale:.3g} (relative {self.relative:.2e}, tolerance {self.tolerance:.0e}) "
            f"{verdict}"
        )


def torch_reference(
    model: StreamingModel, inputs: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """fp32 torch outputs: ``{"frame_encoder": features [N, D], "audio_encoder": audio
    features [N, A], "head": intensities [B, 7]}`` (each present when its inputs are)."""
    model = model.eval()
    out: dict[str, np.ndarray] = {}
    with torch.no_grad():
        for graph in graphs(model):
            names = input_names(model, graph)
            if all(n in inputs for n in names):
                args = [
                    torch.from_numpy(np.ascontiguousarray(inputs[n], np.float32)) for n in names
                ]
                out[graph] = graph_module(model, graph)(*args).numpy()
    return out


def check_variant(
    model: StreamingModel,
    paths: Mapping[str, Path],
    inputs: Mapping[str, np.ndarray],
    tolerance: float,
) -> list[VariantCheck]:
    """Run the variant graphs ``paths`` in ONNX Runtime (CPU) on ``inputs`` (keyed by ONNX
    name) and compare each output with fp32 torch on the same inputs."""
    ref = torch_reference(model, inputs)
    outputs = GRAPH_OUTPUTS
    checks = []
    for graph, path in paths.items():
        if graph not in ref:
            continue
        got = ort_session(path).run([outputs[graph]], graph_feeds(path, inputs))[0]
        diff = np.abs(got.astype(np.float64) - ref[graph])
        finite = bool(np.all(np.isfinite(got)))
        max_abs = float(diff.max()) if finite else float("inf")
        p99 = float(np.percentile(diff, 99)) if finite else float("inf")
        scale = float(np.abs(ref[graph]).max())
        checks.append(VariantCheck(graph, outputs[graph], max_abs, p99, scale, tolerance))
    return checks
