"""TensorRT engines: the engine file (a checked header, then the serialized plan) and the builder.

One build path for TensorRT 10 and 11: the network is strongly typed, so the precision comes
from the ONNX file it is parsed from (fp32, fp16 with Casts, int8 as explicit Q/DQ); no
precision builder flags are set (TensorRT 11 removed them). The layer follows the documented
Python API: ``Builder.create_network`` with ``NetworkDefinitionCreationFlag.STRONGLY_TYPED``
(ignored, and always on, in 11), ``OnnxParser.parse_from_file`` with every
``parser.get_error(i)`` logged, one ``IOptimizationProfile`` per batch range, a timing cache
(``create_timing_cache`` / ``set_timing_cache`` / ``serialize``) and
``build_serialized_network``.

Engine file layout (all of it written under a temporary name, then moved into place)::

    MAGIC (8 bytes) | header length (uint32, little endian) | header JSON (UTF-8) | plan

The header names the bundle (architecture, weights hash of config + specs + weights), the
graph version of the ONNX it was built from (:data:`eri.models.export.GRAPH_VERSION`; engines
without one are from version 1, whose head took raw audio tokens), the precision, the TensorRT
version, the GPU name and compute capability it was built on, when, and the plan's length and
SHA-256. :func:`check_engine` refuses an engine for another GPU, compute capability, TensorRT
version, graph version or bundle with one sentence naming the engine and the command that
rebuilds it on this machine.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import struct
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from eri.choices import EXPORT_FORMATS
from eri.errors import EriError, missing_dependency
from eri.models.export import GRAPH_VERSION

log = logging.getLogger(__name__)

MAGIC = b"ERI-TRT\x00"
_PREFIX = struct.Struct("<8sI")  # magic, header length
FORMAT_VERSION = 1
ENGINE_SUFFIX = ".engine"
#: Largest header accepted (a damaged length field must not make us read gigabytes).
MAX_HEADER_BYTES = 1 << 20

#: Batch ranges (min, opt, max) of the optimisation profiles, one profile each. The encoders'
#: first profile serves the streaming step (1 frame, 1 new audio token), offline batches (8)
#: and recompute or a window's first step (T = 32 frames or tokens); their second serves
#: throughput batches and checks (up to 256). The head runs one output step.
ENCODER_PROFILES: tuple[tuple[int, int, int], ...] = ((1, 1, 32), (33, 256, 256))
HEAD_PROFILES: tuple[tuple[int, int, int], ...] = ((1, 1, 1),)
PROFILES: dict[str, tuple[tuple[int, int, int], ...]] = {
    "frame_encoder": ENCODER_PROFILES,
    "audio_encoder": ENCODER_PROFILES,
    "head": HEAD_PROFILES,
}
#: Builder scratch memory (TensorRT's WORKSPACE pool).
WORKSPACE_BYTES = 1 << 30
#: Smallest compute capability with native fp16 arithmetic (sm_53) and int8 dot products
#: (dp4a, sm_61); a GPU below it cannot run that precision's engine.
MIN_CAPABILITY: dict[str, tuple[int, int]] = {"fp16": (5, 3), "int8": (6, 1)}
#: Accepted |engine - fp32 torch| / max(1, max |torch|) of an fp32 engine (`eri export --check`):
#: GPU kernels (Winograd and implicit-GEMM convolutions, fused attention) sum in other orders
#: than the CPU, about 1e-4 relative on ResNet features; TF32 is switched off for fp32 engines.
ENGINE_FP32_TOLERANCE = 1e-3


class EngineError(EriError, ValueError):
    """An engine that cannot be built or used here; the message names it and the fix."""


# --------------------------------------------------------------------------- device
@dataclass(frozen=True)
class EngineDevice:
    """What an engine is specific to: the GPU model, its compute capability, TensorRT."""

    gpu: str
    compute_capability: str  # "9.0"
    tensorrt: str

    @property
    def capability(self) -> tuple[int, int]:
        major, minor = self.compute_capability.split(".")
        return int(major), int(minor)

    @property
    def tag(self) -> str:
        """``nvidia-h100-80gb-hbm3.sm90.trt10.7.0``: the file-name part naming this device."""
        gpu = re.sub(r"[^a-z0-9]+", "-", self.gpu.lower()).strip("-")
        return f"{gpu}.sm{self.compute_capability.replace('.', '')}.trt{self.tensorrt}"

    def describe(self) -> str:
        return (
            f"{self.gpu} (compute capability {self.compute_capability}, TensorRT {self.tensorrt})"
        )


def device_header(device: EngineDevice) -> dict[str, str]:
    """The header fields naming ``device`` (gpu, compute_capability, tensorrt)."""
    return asdict(device)


def import_tensorrt():
    """The ``tensorrt`` module, or the missing-dependency error that says how to install it."""
    try:
        import tensorrt
    except ImportError as exc:
        raise missing_dependency("tensorrt", exc) from exc
    return tensorrt


def current_device() -> EngineDevice:
    """This machine's GPU 0 and TensorRT version; an :class:`EngineError` without a CUDA GPU."""
    trt = import_tensorrt()
    import torch

    if not torch.cuda.is_available():
        raise EngineError(
            "TensorRT engines need an NVIDIA GPU with CUDA, and torch sees none here; run on a "
            "machine with one, or use --backend onnxruntime."
        )
    major, minor = torch.cuda.get_device_capability(0)
    return EngineDevice(torch.cuda.get_device_name(0), f"{major}.{minor}", trt.__version__)


def engine_format(precision: str) -> str:
    """The export format that builds ``precision``'s engines (``"fp16"`` -> ``"engine-fp16"``)."""
    for fmt in EXPORT_FORMATS:
        if fmt.runtime == "tensorrt" and fmt.precision == precision:
            return fmt.name
    raise ValueError(f"no TensorRT export format for precision {precision!r}")


def rebuild_hint(precision: str, bundle: str | Path | None = None) -> str:
    """```eri export BUNDLE --format engine-fp16``` (the command that builds the engine; int8
    also names the calibration it needs)."""
    where = bundle or "BUNDLE"
    export = f"`eri export {where} --format {engine_format(precision)}"
    if precision != "int8":
        return export + "`"
    return f"`eri calibrate {where} --data MEDIA_DIR --out CALIB` and {export} --calib CALIB`"


def check_precision_supported(
    precision: str, device: EngineDevice, bundle: str | Path | None = None
) -> None:
    """Refuse a precision this GPU cannot run (no fp16 below sm_53, no int8 below sm_61)."""
    need = MIN_CAPABILITY.get(precision)
    if need is not None and device.capability < need:
        raise EngineError(
            f"{device.gpu} (compute capability {device.compute_capability}) has no {precision} "
            f"support (it needs {need[0]}.{need[1]} or newer); build an fp32 engine with "
            f"{rebuild_hint('fp32', bundle)} or run --precision fp32."
        )


def engine_file_name(graph_file: str, precision: str, device: EngineDevice) -> str:
    """``frame_encoder_fp16.nvidia-h100-80gb-hbm3.sm90.trt10.7.0.engine`` for graph file
    ``frame_encoder.onnx``: graph, precision, GPU and TensorRT version in the name."""
    suffix = next(
        f.suffix for f in EXPORT_FORMATS if f.runtime == "tensorrt" and f.precision == precision
    )
    return f"{Path(graph_file).stem}{suffix}.{device.tag}{ENGINE_SUFFIX}"


# --------------------------------------------------------------------------- the file
@dataclass(frozen=True)
class EngineHeader:
    """The metadata at the start of an engine file (see the module docstring)."""

    path: Path
    graph: str
    precision: str
    architecture: str
    weights: str
    tensorrt: str
    gpu: str
    compute_capability: str
    created: str
    plan_bytes: int
    plan_sha256: str
    plan_offset: int
    profiles: list[list[int]]
    onnx: str = ""
    format_version: int = FORMAT_VERSION
    #: The ONNX graph version it was built from (headers without one: version 1).
    graph_version: int = 1

    @property
    def device(self) -> EngineDevice:
        return EngineDevice(self.gpu, self.compute_capability, self.tensorrt)


def _header_fields(meta: Mapping[str, Any]) -> dict[str, Any]:
    names = {f for f in EngineHeader.__dataclass_fields__ if f not in ("path", "plan_offset")}
    return {k: meta[k] for k in names if k in meta}


def write_engine(path: str | Path, plan: bytes, meta: Mapping[str, Any]) -> EngineHeader:
    """Write ``plan`` with its header (``meta``: graph, precision, architecture, weights,
    tensorrt, gpu, compute_capability, profiles, onnx, graph_version) to ``path``,
    atomically."""
    path = Path(path)
    fields = {
        **_header_fields(meta),
        "format_version": FORMAT_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "plan_bytes": len(plan),
        "plan_sha256": hashlib.sha256(plan).hexdigest(),
    }
    header = json.dumps(fields, sort_keys=True).encode()
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(_PREFIX.pack(MAGIC, len(header)))
            f.write(header)
            f.write(plan)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return EngineHeader(path=path, plan_offset=_PREFIX.size + len(header), **fields)


def read_engine_header(path: str | Path, precision: str = "fp32") -> EngineHeader:
    """The header of the engine file ``path``; an :class:`EngineError` for a file that is
    missing, not an ERI Live engine, from a newer format, or truncated (``precision`` only
    picks the rebuild command the message gives)."""
    path = Path(path)
    redo = f"rebuild it on this machine with {rebuild_hint(precision)}"
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            prefix = f.read(_PREFIX.size)
            if len(prefix) < _PREFIX.size or prefix[:8] != MAGIC:
                raise EngineError(
                    f"{path} is not an ERI Live TensorRT engine (no ERI header); {redo}."
                )
            _, length = _PREFIX.unpack(prefix)
            if length > MAX_HEADER_BYTES or _PREFIX.size + length > size:
                raise EngineError(
                    f"Engine {path} is truncated or damaged (its header is cut); {redo}."
                )
            raw = f.read(length)
    except OSError as exc:
        raise EngineError(f"Cannot read engine {path} ({exc.strerror}); {redo}.") from None
    try:
        fields = json.loads(raw)
        version = int(fields.get("format_version", 0))
    except (ValueError, TypeError, AttributeError):
        raise EngineError(f"Engine {path} has a damaged header; {redo}.") from None
    if version > FORMAT_VERSION:  # checked first: a newer header may hold other fields
        raise EngineError(
            f"Engine {path} has format {version}, newer than this ERI Live reads "
            f"({FORMAT_VERSION}); upgrade ERI Live or {redo}."
        )
    try:
        header = EngineHeader(
            path=path, plan_offset=_PREFIX.size + length, **_header_fields(fields)
        )
    except TypeError:
        raise EngineError(f"Engine {path} has a damaged header; {redo}.") from None
    redo = f"rebuild it on this machine with {rebuild_hint(header.precision)}"
    have = size - header.plan_offset
    if have != header.plan_bytes:
        raise EngineError(
            f"Engine {path} is truncated or damaged ({have} of {header.plan_bytes} plan bytes); "
            f"{redo}."
        )
    return header


def read_plan(header: EngineHeader) -> bytes:
    """The serialized plan of an engine whose header was read, checked against its SHA-256."""
    with open(header.path, "rb") as f:
        f.seek(header.plan_offset)
        plan = f.read()
    if len(plan) != header.plan_bytes or hashlib.sha256(plan).hexdigest() != header.plan_sha256:
        raise EngineError(
            f"Engine {header.path} is damaged (its plan does not match its checksum); rebuild it "
            f"on this machine with {rebuild_hint(header.precision)}."
        )
    return plan


def check_engine(
    header: EngineHeader,
    device: EngineDevice,
    *,
    weights: str | None = None,
    precision: str | None = None,
    bundle: str | Path | None = None,
) -> None:
    """Refuse an engine built for another GPU, compute capability, TensorRT version, bundle
    (``weights``: :func:`eri.models.export.weights_digest`), precision or graph version
    (:data:`eri.models.export.GRAPH_VERSION`), in one sentence."""
    redo = f"rebuild it on this machine with {rebuild_hint(precision or header.precision, bundle)}"
    name = f"Engine {header.path}"
    if header.gpu != device.gpu or header.compute_capability != device.compute_capability:
        raise EngineError(
            f"{name} was built for {header.gpu} (compute capability "
            f"{header.compute_capability}), not this {device.gpu} "
            f"({device.compute_capability}); {redo}."
        )
    if header.tensorrt != device.tensorrt:
        raise EngineError(
            f"{name} was built with TensorRT {header.tensorrt}, not the installed "
            f"{device.tensorrt}; {redo}."
        )
    if weights is not None and header.weights != weights:
        raise EngineError(
            f"{name} was built from other weights ({header.architecture} {header.weights}) than "
            f"this bundle's ({weights}); {redo}."
        )
    if precision is not None and header.precision != precision:
        raise EngineError(f"{name} is {header.precision}, not {precision}; {redo}.")
    if header.graph_version != GRAPH_VERSION:
        raise EngineError(
            f"{name} was built from graph version {header.graph_version}, not "
            f"{GRAPH_VERSION} (its head takes raw audio tokens); {redo}."
        )


# --------------------------------------------------------------------------- the builder
_LOGGER: Any = None


def trt_logger(trt: Any) -> Any:
    """One ``trt.ILogger`` for the process that forwards TensorRT's messages to logging."""
    global _LOGGER
    if _LOGGER is None:

        class _Logger(trt.ILogger):
            def __init__(self) -> None:
                trt.ILogger.__init__(self)

            def log(self, severity: Any, msg: str) -> None:
                if severity in (trt.ILogger.INTERNAL_ERROR, trt.ILogger.ERROR):
                    log.error("TensorRT: %s", msg)
                elif severity == trt.ILogger.WARNING:
                    log.warning("TensorRT: %s", msg)
                else:
                    log.debug("TensorRT: %s", msg)

        _LOGGER = _Logger()
    return _LOGGER


def _add_profiles(trt: Any, builder: Any, network: Any, config: Any, profiles, onnx: Path) -> None:
    """One optimisation profile per (min, opt, max) batch range; only axis 0 is dynamic."""
    inputs = [network.get_input(i) for i in range(network.num_inputs)]
    for lo, opt, hi in profiles:
        profile = builder.create_optimization_profile()
        for tensor in inputs:
            rest = list(tensor.shape)[1:]
            if any(d < 0 for d in rest):
                raise EngineError(
                    f"{onnx} input {tensor.name} has a dynamic axis other than the batch "
                    f"({list(tensor.shape)}); re-export it with `eri export BUNDLE --format onnx`."
                )
            profile.set_shape(tensor.name, (lo, *rest), (opt, *rest), (hi, *rest))
        config.add_optimization_profile(profile)


def _timing_cache(config: Any, path: Path | None) -> Any:
    """The builder's timing cache, from ``path`` when it holds one for this device."""
    if path is None:
        return None
    data = path.read_bytes() if path.is_file() else b""
    cache = config.create_timing_cache(data)
    if not config.set_timing_cache(cache, ignore_mismatch=False):
        log.warning("timing cache %s is for another device or version; starting a new one", path)
        cache = config.create_timing_cache(b"")
        config.set_timing_cache(cache, ignore_mismatch=False)
    return cache


def _save_timing_cache(config: Any, path: Path) -> None:
    data = bytes(memoryview(config.get_timing_cache().serialize()))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def build_engine(
    onnx_path: str | Path,
    out_path: str | Path,
    *,
    precision: str,
    profiles: Sequence[tuple[int, int, int]],
    timing_cache: str | Path | None = None,
    meta: Mapping[str, Any] | None = None,
    device: EngineDevice | None = None,
) -> EngineHeader:
    """Build ``onnx_path`` (the graph at ``precision``, as exported) into the engine file
    ``out_path``: strongly typed, one optimisation profile per batch range of ``profiles``,
    the ``timing_cache`` file read and updated, ``meta`` (graph, architecture, weights) and the
    device in the header. Nothing is written when parsing or building fails."""
    trt = import_tensorrt()
    onnx_path, out_path = Path(onnx_path), Path(out_path)
    device = device or current_device()
    check_precision_supported(precision, device)
    logger = trt_logger(trt)
    builder = trt.Builder(logger)
    strongly = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    network = builder.create_network(0 if strongly is None else 1 << int(strongly))
    parser = trt.OnnxParser(network, logger)
    parsed = parser.parse_from_file(str(onnx_path))
    errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
    for i, error in enumerate(errors):
        log.error("TensorRT parser error %d/%d in %s: %s", i + 1, len(errors), onnx_path, error)
    if not parsed or errors:
        first = errors[0] if errors else "no error reported"
        raise EngineError(
            f"TensorRT {device.tensorrt} could not parse {onnx_path} ({len(errors)} error(s) "
            f"logged, the first: {first}); re-export it with `eri export BUNDLE --format "
            "onnx` or report this with the bundle."
        )
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
    if precision == "fp32" and hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)  # fp32 means fp32 (TF32 rounds to 10 bits)
    _add_profiles(trt, builder, network, config, profiles, onnx_path)
    cache_path = Path(timing_cache) if timing_cache is not None else None
    _timing_cache(config, cache_path)
    log.info("building %s engine %s from %s (minutes)", precision, out_path.name, onnx_path)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise EngineError(
            f"TensorRT {device.tensorrt} could not build an engine from {onnx_path} (its errors "
            "are logged above); report this with the bundle, or use --backend onnxruntime."
        )
    if cache_path is not None:
        _save_timing_cache(config, cache_path)
    header = {
        **(meta or {}),
        **device_header(device),
        "precision": precision,
        "profiles": [list(p) for p in profiles],
        "onnx": onnx_path.name,
        "graph_version": GRAPH_VERSION,
    }
    return write_engine(out_path, bytes(memoryview(plan)), header)
