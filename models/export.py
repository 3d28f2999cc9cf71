"""ONNX export of the streaming split: ``frame_encoder.onnx`` and ``head.onnx``.

Both have a dynamic batch axis, carry the bundle's specs in their metadata, pass
``onnx.checker.check_model(full_check=True)``, and are compared with torch in ONNX Runtime.
The export formats table drives ``eri export`` (and later the benchmark table).

Bundles without their own exports are exported once into a cache (:func:`onnx_paths`):
``$ERI_CACHE_DIR/onnx/<arch>-<weights hash>/`` (default ``~/.cache/eri-live``), written beside
the target and moved into place, so a killed export never leaves a half-written graph there.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from eri.choices import EXPORT_FORMATS, ExportFormat, available_formats
from eri.errors import missing_dependency
from eri.models.base import StreamingModel
from eri.models.spec import EMOTIONS

log = logging.getLogger(__name__)

OPSET = 18
# ONNX tensor names: one place, shared by the exporter and every runtime backend.
FACES, FEATURES = "faces", "features"
VISUAL, AUDIO_TOKENS, AUDIO_PRESENT, VISUAL_PRESENT = (
    "visual",
    "audio_tokens",
    "audio_present",
    "visual_present",
)
INTENSITIES = "intensities"
FRAME_ENCODER_FILE, HEAD_FILE = "frame_encoder.onnx", "head.onnx"

#: fp32 exports are faithful when, for every graph output,
#:     max |onnxruntime - torch| <= FP32_TOLERANCE * max(1, max |torch|)
#: i.e. absolute within [-1, 1] and relative to the output's scale beyond it (an untrained
#: ResNet50's features reach ~170, where fp32 rounding alone gives ~1e-4). The rule lives in
#: :func:`onnx_error`; :func:`compare_onnx` reports that error (not the raw max difference).
FP32_TOLERANCE = 1e-4
#: What :func:`compare_onnx` reports, in words (for printing its numbers).
ONNX_ERROR_LABEL = "max |onnxruntime - torch| / max(1, max |torch|)"


def export_format(name: str) -> ExportFormat:
    for fmt in EXPORT_FORMATS:
        if fmt.name == name:
            return fmt
    raise ValueError(
        f"Unknown export format {name!r}; choose one of: {', '.join(available_formats())}."
    )


class FrameEncoderGraph(nn.Module):
    """faces [N, 3, S, S] -> features [N, D]."""

    def __init__(self, model: StreamingModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, faces: torch.Tensor) -> torch.Tensor:
        return self.model.encode_frames(faces)


class HeadGraph(nn.Module):
    """visual [B, T, D], audio tokens [B, T, F], audio_present [B], visual_present [B]
    -> intensities [B, 7]. Includes ``encode_audio`` so the head file takes raw tokens."""

    def __init__(self, model: StreamingModel) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        visual: torch.Tensor,
        audio_tokens: torch.Tensor,
        audio_present: torch.Tensor,
        visual_present: torch.Tensor,
    ) -> torch.Tensor:
        audio = self.model.encode_audio(audio_tokens)
        return self.model.head(visual, audio, audio_present, visual_present)


class VisualHeadGraph(nn.Module):
    """visual [B, T, D], visual_present [B] -> intensities [B, 7] (no audio branch)."""

    def __init__(self, model: StreamingModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, visual: torch.Tensor, visual_present: torch.Tensor) -> torch.Tensor:
        return self.model.head(visual, None, None, visual_present)


def head_graph(model: StreamingModel) -> nn.Module:
    """The head as exported: inputs in the order of :func:`head_input_names`."""
    return HeadGraph(model) if model.has_audio else VisualHeadGraph(model)


def head_input_names(model: StreamingModel) -> list[str]:
    if model.has_audio:
        return [VISUAL, AUDIO_TOKENS, AUDIO_PRESENT, VISUAL_PRESENT]
    return [VISUAL, VISUAL_PRESENT]


def example_inputs(model: StreamingModel, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random float32 inputs for both graphs, keyed by ONNX input name."""
    rng = np.random.default_rng(seed)
    t, s, d = model.window.num_samples, model.crop.size, model.feature_dim
    inputs = {
        FACES: rng.random((batch, 3, s, s), dtype=np.float32),
        VISUAL: rng.standard_normal((batch, t, d), dtype=np.float32),
        VISUAL_PRESENT: np.ones(batch, dtype=np.float32),
    }
    if model.has_audio:
        inputs[AUDIO_TOKENS] = (
            10 * rng.standard_normal((batch, t, model.audio_spec.token_dim))
        ).astype(np.float32)
        inputs[AUDIO_PRESENT] = (np.arange(batch) % 2 == 0).astype(np.float32)
    return inputs


def head_args(
    inputs: dict[str, np.ndarray],
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None, np.ndarray]:
    """Head inputs keyed by ONNX name (e.g. :func:`example_inputs`) -> the backends' positional
    (visual, audio_tokens, audio_present, visual_present); the audio ones None when absent."""
    return (
        inputs[VISUAL],
        inputs.get(AUDIO_TOKENS),
        inputs.get(AUDIO_PRESENT),
        inputs[VISUAL_PRESENT],
    )


def onnx_metadata(model: StreamingModel, graph: str) -> dict[str, str]:
    return {
        "eri.graph": graph,
        "eri.architecture": model.arch_name,
        "eri.config": json.dumps(model.config),
        "eri.emotions": json.dumps(list(EMOTIONS)),
        "eri.specs": json.dumps(model.specs()),
    }


def _export_graph(
    graph: nn.Module,
    inputs: tuple[torch.Tensor, ...],
    names: list[str],
    output: str,
    path: Path,
    metadata: dict[str, str],
) -> None:
    import onnx

    # The exporter warns that torchvision's detection ops are not registered: irrelevant here.
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    batch = torch.export.Dim("batch", min=1, max=4096)
    dynamic_shapes = tuple({0: batch} for _ in inputs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            graph,
            inputs,
            input_names=names,
            output_names=[output],
            opset_version=OPSET,
            dynamo=True,
            dynamic_shapes=dynamic_shapes,
            verbose=False,
            external_data=False,
        )
    proto = program.model_proto
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    # Written beside the target and moved into place once checked: never a half-written file.
    tmp = path.with_name(path.name + ".tmp")
    try:
        onnx.save_model(proto, str(tmp))
        onnx.checker.check_model(str(tmp), full_check=True)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def export_onnx(model: StreamingModel, out_dir: str | Path, *, batch: int = 2) -> dict[str, Path]:
    """Write ``frame_encoder.onnx`` and ``head.onnx`` for ``model`` into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    example = {k: torch.from_numpy(v) for k, v in example_inputs(model, batch).items()}
    paths = {"frame_encoder": out_dir / FRAME_ENCODER_FILE, "head": out_dir / HEAD_FILE}
    with torch.no_grad():
        _export_graph(
            FrameEncoderGraph(model),
            (example[FACES],),
            [FACES],
            FEATURES,
            paths["frame_encoder"],
            onnx_metadata(model, "frame_encoder"),
        )
        names = head_input_names(model)
        _export_graph(
            head_graph(model),
            tuple(example[n] for n in names),
            names,
            INTENSITIES,
            paths["head"],
            onnx_metadata(model, "head"),
        )
    log.debug("Exported %s to %s", model.arch_name, out_dir)
    return paths


def weights_digest(model: StreamingModel) -> str:
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


def model_cache_dir(model: StreamingModel) -> Path:
    """The export cache folder of ``model``: ``cache_dir()/onnx/<arch>-<weights hash>``."""
    return cache_dir() / "onnx" / f"{model.arch_name}-{weights_digest(model)}"


def onnx_paths(bundle: Any) -> dict[str, Path]:
    """The bundle's fp32 ONNX graphs: its own exports, else a cached export made now."""
    own = {
        g: bundle.export_path(f)
        for g, f in (("frame_encoder", FRAME_ENCODER_FILE), ("head", HEAD_FILE))
    }
    if all(own.values()):
        return own  # type: ignore[return-value]
    arch = bundle.model.arch_name
    target = model_cache_dir(bundle.model)
    paths = {"frame_encoder": target / FRAME_ENCODER_FILE, "head": target / HEAD_FILE}
    if not all(p.is_file() for p in paths.values()):
        log.info("exporting %s to ONNX once (about a minute); cached in %s", arch, target)
        t0 = time.perf_counter()
        tmp = target.with_name(target.name + f".tmp{os.getpid()}")
        export_onnx(bundle.model, tmp)
        tmp.mkdir(parents=True, exist_ok=True)
        if target.exists():  # another process finished first: keep its export
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            os.replace(tmp, target)
        log.info("exported %s to ONNX in %.1f s", arch, time.perf_counter() - t0)
    return paths


def import_onnxruntime():
    """The ``onnxruntime`` module, or the missing-dependency error that says how to install it."""
    try:
        import onnxruntime
    except ImportError as exc:
        raise missing_dependency("onnxruntime", exc) from exc
    return onnxruntime


def ort_session(
    path: str | Path, providers: list[str] | None = None, threads: int = 0, spin: bool = True
):
    """An ONNX Runtime session (CPU unless ``providers`` says otherwise). ``spin=False`` stops
    idle intra-op threads from busy-waiting, leaving the cores to other pipeline stages."""
    ort = import_onnxruntime()

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    if not spin:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=providers or ["CPUExecutionProvider"])


def onnx_error(got: np.ndarray, reference: np.ndarray) -> float:
    """max |got - reference| / max(1, max |reference|): the error the FP32_TOLERANCE rule
    bounds (absolute for outputs within [-1, 1], relative to the output's scale beyond)."""
    if got.shape != reference.shape:
        raise ValueError(f"ONNX output shape {got.shape} != torch output shape {reference.shape}")
    diff = np.abs(got.astype(np.float64) - reference.astype(np.float64))
    if not np.isfinite(diff).all():
        return float("inf")
    scale = max(1.0, float(np.abs(reference).max(initial=0.0)))
    return float(diff.max(initial=0.0)) / scale


def compare_onnx(
    model: StreamingModel, paths: dict[str, Path], *, batch: int = 3, seed: int = 1
) -> dict[str, float]:
    """Per graph output, ``max |onnxruntime - torch| / max(1, max |torch|)`` (see
    :func:`onnx_error`; faithful when <= FP32_TOLERANCE), on a batch size other than the
    export's."""
    model = model.eval()
    inputs = example_inputs(model, batch, seed)
    t = {k: torch.from_numpy(v) for k, v in inputs.items()}
    diffs: dict[str, float] = {}
    with torch.no_grad():
        ref_features = FrameEncoderGraph(model)(t[FACES]).numpy()
        names = head_input_names(model)
        ref_head = head_graph(model)(*(t[n] for n in names)).numpy()
    enc = ort_session(paths["frame_encoder"]).run([FEATURES], {FACES: inputs[FACES]})[0]
    head = ort_session(paths["head"]).run([INTENSITIES], {n: inputs[n] for n in names})[0]
    diffs[f"frame_encoder.{FEATURES}"] = onnx_error(enc, ref_features)
    diffs[f"head.{INTENSITIES}"] = onnx_error(head, ref_head)
    return diffs


def read_onnx_metadata(path: str | Path) -> dict[str, Any]:
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in proto.metadata_props}
