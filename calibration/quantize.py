"""INT8 post-training quantization into explicit Q/DQ ONNX (``onnxruntime.quantization``).

``quantize_static`` with ``QuantFormat.QDQ``: QuantizeLinear/DequantizeLinear pairs around the
quantized ops, int8 weights per output channel, int8 activations with symmetric ranges (zero
point 0, which TensorRT's strongly typed INT8 requires), inputs and outputs left float32. The
audio front stays float (:func:`audio_front_nodes`). In the audio encoder graph:
``audio_tokens`` up to its first normalisation (raw MFCC tokens span ~+-1131, and 256 levels
over that range would be steps of ~9), and after it up to the next normalisation. dual_branch's
audio encoder is a LayerNorm and cnn_lstm's spectrogram CNN has no normalisation after its input
BatchNorm (the exporter folds the others into the convolutions), so both audio encoders stay
float as a whole (``audio_encoder_int8.onnx`` is the fp32 graph, every node listed in its
``eri.fp32_nodes``), as the audio CNN did when it was part of the head. In the head:
``audio_features`` (already normalised tokens or CNN features) up to the audio branch's next
normalisation or its fusion with the visual branch (dual_branch: the temporal convolutions over
the 1024 normalised token values; cnn_lstm: the audio LSTM). Quantizing those 1024-wide
activations with one scale per tensor moved the untrained dual_branch's intensities by up to
0.076 on held-out windows of real speech (Pearson r 0.973 on one emotion); kept float, 0.007
(r >= 0.997), for a few small 1-D convolutions. The head calibrates on the fp32 audio
encoder's features of the calibration tokens (what it is fed live).

Entry points for the command line:

- :func:`calibrate`: the calibration set from a media folder or arrays, through the cache;
- :func:`export_int8`: every graph quantized with that set (ranges cached per method);
- :func:`quantize_graph`: one graph.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import json
import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from eri.calibration.cache import CalibrationCache
from eri.calibration.data import (
    DEFAULT_FACES,
    DEFAULT_WINDOWS,
    ArrayDataReader,
    CalibrationError,
    CalibrationSet,
    check_shapes,
    from_media,
)
from eri.choices import CALIBRATION_METHODS
from eri.models.base import StreamingModel
from eri.models.export import (
    AUDIO_FEATURES,
    AUDIO_TOKENS,
    VISUAL,
    VISUAL_PRESENT,
    AudioEncoderGraph,
    weights_digest,
)
from eri.models.precision import (
    FP32_NODES_KEY,
    NORMALISATION_OPS,
    PRECISION_KEY,
    audio_norm_nodes,
    set_metadata,
    variant_paths,
)

log = logging.getLogger(__name__)

#: Largest |int8 ONNX Runtime - fp32 torch| accepted on the intensities (which lie in [0, 1]),
#: end to end (int8 encoder -> int8 head) on held-out windows. Measured on the seeded small
#: models with 32 calibration crops / windows: see the tests and the report. 0.05 is 5 points
#: on the 1-100 self-report scale the labels come from, well below the spread between raters;
#: a broken quantization (wrong range, overflow) moves intensities by 0.1-0.5.
INT8_TOLERANCE = 0.05

#: Calibration methods by the name the command line offers (``eri.choices``); the default first.
DEFAULT_METHOD = CALIBRATION_METHODS[0]

#: Percentile kept by the "percentile" method (ONNX Runtime's default).
PERCENTILE = 99.999

#: Counts of calibrator runs (range computations) in this process, by graph: tests read it to
#: check that a cached calibration is reused.
RANGE_COMPUTATIONS: dict[str, int] = {}

#: ONNX Runtime's root-logger advice to pre-process (the exports are already folded and typed).
_ORT_PREPROCESS_HINT = "pre-process"


def _method(name: str):
    from onnxruntime.quantization import CalibrationMethod

    table = {
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
        "minmax": CalibrationMethod.MinMax,
    }
    if name not in table:
        raise CalibrationError(
            f"Unknown calibration method {name!r}; choose one of: {', '.join(CALIBRATION_METHODS)}."
        )
    return table[name]


class _DropHint(logging.Filter):
    """Drops ONNX Runtime's root-logger advice to pre-process."""

    def filter(self, record: logging.LogRecord) -> bool:
        return _ORT_PREPROCESS_HINT not in record.getMessage()


def _supports_range_cache() -> bool:
    from onnxruntime.quantization import quantize_static

    return "calibration_cache_path" in inspect.signature(quantize_static).parameters


def _downstream(consumers: dict[str, list], tensors: list[str]) -> set[str]:
    """Every tensor computed from ``tensors`` (included)."""
    seen, frontier = set(tensors), list(tensors)
    while frontier:
        for node in consumers.get(frontier.pop(), []):
            for out in node.output:
                if out not in seen:
                    seen.add(out)
                    frontier.append(out)
    return seen


def audio_front_nodes(proto, input_name: str = AUDIO_TOKENS) -> list[str]:
    """Names of the nodes int8 keeps float: :func:`audio_norm_nodes` (``input_name``, the raw
    tokens, up to its first normalisation: the audio encoder graph), then the audio branch
    after that normalisation, or from the ``audio_features`` input (the head graph, whose audio
    input is already normalised), up to the next normalisation, never past where it meets the
    visual branch (a node reading a tensor computed from ``visual``). Empty when the graph has
    no audio input (mtl_dan, the frame encoder)."""
    front = audio_norm_nodes(proto, input_name)
    nodes = {n.name: n for n in proto.graph.node}
    consumers: dict[str, list] = {}
    for node in proto.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    visual = _downstream(consumers, [VISUAL, VISUAL_PRESENT])
    found = dict.fromkeys(front)
    frontier = [o for n in front if nodes[n].op_type in NORMALISATION_OPS for o in nodes[n].output]
    if any(i.name == AUDIO_FEATURES for i in proto.graph.input):
        frontier.append(AUDIO_FEATURES)
    while frontier:
        for node in consumers.get(frontier.pop(), []):
            if (
                node.name in found
                or node.op_type in NORMALISATION_OPS
                or any(t in visual for t in node.input)
            ):
                continue
            found[node.name] = None
            frontier.extend(node.output)
    return list(found)


def quantize_graph(
    src_onnx: str | Path,
    dst_onnx: str | Path,
    inputs: Mapping[str, np.ndarray] | None,
    *,
    method: str = DEFAULT_METHOD,
    exclude: Iterable[str] = (),
    ranges_path: str | Path | None = None,
    graph: str = "graph",
) -> Path:
    """Quantize the fp32 graph ``src_onnx`` to Q/DQ int8 at ``dst_onnx``.

    ``inputs``: calibration arrays keyed by input name (rows are samples); may be None when
    ``ranges_path`` already holds this graph's ranges. ``exclude``: node names kept float
    (:func:`audio_front_nodes` are always added). ``ranges_path``: ONNX Runtime's range cache
    for this graph, read when present and written after calibrating (ONNX Runtime >= the version
    with ``calibration_cache_path``; older ones recalibrate every time).
    """
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.registry import QDQRegistry

    src, dst = Path(src_onnx), Path(dst_onnx)
    proto = onnx.load(str(src))
    excluded = dict.fromkeys([*audio_front_nodes(proto), *exclude])
    kwargs: dict[str, Any] = {}
    cached = False
    if ranges_path is not None and _supports_range_cache():
        kwargs["calibration_cache_path"] = str(ranges_path)
        cached = Path(ranges_path).is_file()
    if not cached:
        if inputs is None:
            raise CalibrationError(
                f"No calibration data for {src.name}; run `eri calibrate` or pass --calib."
            )
        RANGE_COMPUTATIONS[graph] = RANGE_COMPUTATIONS.get(graph, 0) + 1
        log.info("int8: calibrating %s (%s)", src.name, method)
    else:
        log.info("int8: reusing %s ranges from %s", src.name, ranges_path)
    reader = None if cached else ArrayDataReader(inputs)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".tmp")
    root = logging.getLogger()
    hint = _DropHint()
    root.addFilter(hint)
    printed = io.StringIO()  # the calibrators print their progress: logged at debug instead
    try:
        with contextlib.redirect_stdout(printed):
            quantize_static(
                str(src),
                str(tmp),
                reader,
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QInt8,
                weight_type=QuantType.QInt8,
                # Normalisations stay float: int8 scale/shift vectors cost accuracy, gain nothing.
                op_types_to_quantize=sorted(set(QDQRegistry) - NORMALISATION_OPS),
                nodes_to_exclude=list(excluded),
                calibrate_method=_method(method),
                extra_options={
                    "ActivationSymmetric": True,
                    "WeightSymmetric": True,
                    "CalibPercentile": PERCENTILE,
                },
                **kwargs,
            )
        if printed.getvalue().strip():
            log.debug("%s", printed.getvalue().strip())
        quantized = onnx.load(str(tmp))
        set_metadata(
            quantized,
            {
                **{p.key: p.value for p in proto.metadata_props},
                PRECISION_KEY: "int8",
                FP32_NODES_KEY: json.dumps(list(excluded)),
                "eri.calibration": json.dumps({"method": method}),
            },
        )
        onnx.save_model(quantized, str(tmp))
        onnx.checker.check_model(str(tmp))
        os.replace(tmp, dst)
    finally:
        root.removeFilter(hint)
        tmp.unlink(missing_ok=True)
    return dst


def calibrate(
    bundle: Any,
    data: str | Path | CalibrationSet | None,
    cache_dir: str | Path | None = None,
    *,
    max_faces: int = DEFAULT_FACES,
    max_windows: int = DEFAULT_WINDOWS,
    held_out: float = 0.0,
    refresh: bool = False,
) -> CalibrationSet:
    """The calibration set of ``bundle``: from ``cache_dir`` when it matches the weights (and
    not ``refresh``), else collected from ``data`` (a media folder or a :class:`CalibrationSet`)
    and saved there. With ``held_out`` > 0, that fraction of newly collected crops and windows is
    set aside (``heldout.npz``, for checking) and the rest returned; the sample sizes grow so the
    calibration part keeps ``max_faces`` / ``max_windows``.

    Raises :class:`CalibrationError` when the cache does not match and there is no ``data``, or
    when the arrays do not have the shapes the model's graphs take.
    """
    model = bundle.model
    weights = weights_digest(model)
    cache = CalibrationCache(cache_dir) if cache_dir is not None else None
    if cache is not None and not refresh:
        found = cache.load(weights)
        if found is not None:
            check_shapes(found, model)
            return found
    if data is None:
        where = f"calibration cache {cache_dir} does not match this model" if cache else "none"
        raise CalibrationError(
            f"No calibration data ({where}); pass --calib with a folder of videos with faces."
        )
    if isinstance(data, CalibrationSet):
        collected = data
    else:
        grow = 1.0 / (1.0 - held_out) if 0.0 < held_out < 1.0 else 1.0
        collected = from_media(
            bundle,
            data,
            max_faces=int(np.ceil(max_faces * grow)),
            max_windows=int(np.ceil(max_windows * grow)),
        )
    check_shapes(collected, model)
    kept: CalibrationSet | None = None
    if 0.0 < held_out < 1.0 and collected.num_windows > 1 and collected.num_faces > 1:
        collected, kept = collected.split(held_out)
    if cache is not None:
        cache.save(collected, weights=weights, architecture=model.arch_name, held_out=kept)
    return collected


def export_int8(
    model: StreamingModel,
    fp32_paths: Mapping[str, Path],
    data: CalibrationSet | None,
    out_dir: str | Path,
    *,
    method: str = DEFAULT_METHOD,
    cache_dir: str | Path | None = None,
) -> dict[str, Path]:
    """The graphs of ``model`` (fp32 exports ``fp32_paths``) as Q/DQ int8 into ``out_dir``
    (``frame_encoder_int8.onnx``, ``audio_encoder_int8.onnx``, ``head_int8.onnx``), calibrated
    on ``data`` with ``method`` (the head on the fp32 audio encoder's features of its tokens).

    With ``cache_dir`` (a :class:`CalibrationCache` made by :func:`calibrate`) each graph's
    ranges are reused when computed for these weights with this method, else recomputed and
    stored; ``data`` may then be None when all ranges are cached.
    """
    _method(method)
    weights = weights_digest(model)
    cache = CalibrationCache(cache_dir) if cache_dir is not None else None
    out = variant_paths(out_dir, "onnx-int8", model)
    for graph, src in fp32_paths.items():
        ranges = cache.ranges_for(graph, weights, method) if cache is not None else None
        inputs = None if data is None else _graph_inputs(data, graph, src, model)
        quantize_graph(src, out[graph], inputs, method=method, ranges_path=ranges, graph=graph)
        if cache is not None and ranges is not None and ranges.is_file():
            cache.record_ranges(graph, weights, method)
    return out


def fp32_audio_encoder(model: StreamingModel):
    """tokens [N, F] -> features [N, A] float32: the model's fp32 audio encoder in torch."""
    import torch

    graph = AudioEncoderGraph(model.eval())

    def encode(tokens: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return graph(torch.from_numpy(np.ascontiguousarray(tokens, np.float32))).numpy()

    return encode


def _graph_inputs(
    data: CalibrationSet, graph: str, path: Path, model: StreamingModel
) -> dict[str, np.ndarray]:
    """The calibration arrays ``graph`` takes (by the input names of its ONNX file)."""
    import onnx

    names = [i.name for i in onnx.load(str(path), load_external_data=False).graph.input]
    encoder = fp32_audio_encoder(model) if model.has_audio else None
    arrays = data.graph_inputs(graph, encoder)
    missing = [n for n in names if n not in arrays]
    if missing:
        raise CalibrationError(
            f"The calibration set lacks {', '.join(missing)} for {path.name}; calibrate again "
            "for this model."
        )
    return {n: arrays[n] for n in names}
