"""ONNX export of the streaming split: ``frame_encoder.onnx`` and ``head.onnx``.

Both have a dynamic batch axis, carry the bundle's specs in their metadata, pass
``onnx.checker.check_model(full_check=True)``, and are compared with torch in ONNX Runtime.
The export formats table drives ``eri export`` (and later the benchmark table).
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from eri.choices import EXPORT_FORMATS, ExportFormat, available_formats
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

#: Largest |ONNX Runtime - torch| accepted for fp32 exports.
FP32_TOLERANCE = 1e-4


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


def ort_session(
    path: str | Path, providers: list[str] | None = None, threads: int = 0, spin: bool = True
):
    """An ONNX Runtime session (CPU unless ``providers`` says otherwise). ``spin=False`` stops
    idle intra-op threads from busy-waiting, leaving the cores to other pipeline stages."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    if not spin:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=providers or ["CPUExecutionProvider"])


def compare_onnx(
    model: StreamingModel, paths: dict[str, Path], *, batch: int = 3, seed: int = 1
) -> dict[str, float]:
    """Largest |ONNX Runtime - torch| per graph output, on a batch size other than the export's."""
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
    diffs[f"frame_encoder.{FEATURES}"] = float(np.abs(enc - ref_features).max())
    diffs[f"head.{INTENSITIES}"] = float(np.abs(head - ref_head).max())
    return diffs


def read_onnx_metadata(path: str | Path) -> dict[str, Any]:
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in proto.metadata_props}
