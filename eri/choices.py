"""The names the ``eri`` command offers, in one torch-free module so ``eri --help`` is instant.

Each table here is the single source: the exporter, the backends, the engine and the command
line all read it, so an option is offered exactly when the code behind it exists.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

#: Whether TensorRT is installed (found, not imported: ``eri --help`` stays instant). The engine
#: formats and the ``tensorrt`` backend are offered only then; a GPU is checked when they run.
HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None

#: Architecture an untrained run uses when no ``--arch`` is given.
DEFAULT_ARCH = "dual_branch"


@dataclass(frozen=True)
class ExportFormat:
    """One row of the export table: what ``eri export --format NAME`` makes.

    ``suffix`` goes between a graph's stem and its extension (``head_fp16.onnx``);
    ``available`` is False for formats this version cannot build yet (not offered).
    """

    name: str
    precision: str
    runtime: str
    suffix: str
    available: bool


EXPORT_FORMATS: tuple[ExportFormat, ...] = (
    ExportFormat("onnx", "fp32", "onnxruntime", "", True),
    ExportFormat("onnx-fp16", "fp16", "onnxruntime", "_fp16", True),
    ExportFormat("onnx-int8", "int8", "onnxruntime", "_int8", True),
    ExportFormat("engine", "fp32", "tensorrt", "", HAS_TENSORRT),
    ExportFormat("engine-fp16", "fp16", "tensorrt", "_fp16", HAS_TENSORRT),
    ExportFormat("engine-int8", "int8", "tensorrt", "_int8", HAS_TENSORRT),
)


def available_formats() -> list[str]:
    """Names of the export formats this version can build."""
    return [f.name for f in EXPORT_FORMATS if f.available]


def available_precisions() -> list[str]:
    """Precisions with at least one buildable format, in table order."""
    return list(dict.fromkeys(f.precision for f in EXPORT_FORMATS if f.available))


def calibrated_formats() -> list[str]:
    """Buildable export formats that need a calibration cache (``eri export --calib``)."""
    return [f.name for f in EXPORT_FORMATS if f.available and f.precision == "int8"]


#: INT8 calibration methods (``eri export --calib-method``), the default first; ONNX Runtime's
#: calibrators behind them live in ``eri.calibration.quantize``.
CALIBRATION_METHODS: tuple[str, ...] = ("entropy", "percentile", "minmax")


#: Every inference backend this version implements; the benchmark gives each a row, saying why
#: when one cannot run here.
ALL_BACKENDS: tuple[str, ...] = ("torch", "onnxruntime", "tensorrt")

#: Inference backends offered on this machine (``auto`` picks among them at run time).
BACKENDS: tuple[str, ...] = tuple(b for b in ALL_BACKENDS if b != "tensorrt" or HAS_TENSORRT)

#: How the engine produces an output step: cached per-frame features, or the seeds' way of
#: re-encoding every sampled frame of the window.
ENGINE_MODES: tuple[str, ...] = ("streaming", "recompute")

#: Benchmark modes: the engine modes, plus the live runner paced at the source's frame rate.
BENCHMARK_MODES: tuple[str, ...] = (*ENGINE_MODES, "live")

#: Which face the tracker follows when several are in view (or an integer index).
SUBJECT_POLICIES: tuple[str, ...] = ("largest", "center")
