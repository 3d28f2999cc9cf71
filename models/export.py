"""ONNX export of the streaming split: ``frame_encoder.onnx``, ``audio_encoder.onnx`` (models
with audio) and ``head.onnx``.

    frame_encoder: faces [N, 3, S, S] in [0, 1]  -> features [N, D]
    audio_encoder: audio_tokens [N, F] (raw)     -> audio_features [N, A]
    head:          visual [B, T, D], audio_features [B, T, A], audio_present [B],
                   visual_present [B]            -> intensities [B, 7]
                   (visual-only models: visual, visual_present)

Each has a dynamic batch axis, carries the bundle's specs and :data:`GRAPH_VERSION` in its
metadata, passes ``onnx.checker.check_model(full_check=True)``, and is compared with torch in
ONNX Runtime. The two encoders are per item, so live inference encodes each frame and each
audio token once and re-runs only the head per output step. The export formats table drives
``eri export`` (and later the benchmark table).

A graph whose ``eri.graph_version`` is not :data:`GRAPH_VERSION` (an export from before the
audio encoder was split out of the head, whose head took raw tokens) is never run: the export
cache folder's name carries the version, so the cache is re-made, and a bundle's own stale
export is refused with one sentence naming the file and ``eri export`` (:func:`check_graph`).

Bundles without their own exports are exported once into a cache (:func:`onnx_paths`):
``$ERI_CACHE_DIR/onnx/<arch>-<weights hash>-g<graph version>/`` (default ``~/.cache/eri-live``),
written beside the target and moved into place, so a killed export never leaves a half-written
graph there.
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
from eri.errors import EriError, missing_dependency
from eri.models.base import StreamingModel
from eri.models.spec import EMOTIONS

log = logging.getLogger(__name__)

OPSET = 18
# ONNX tensor names: one place, shared by the exporter and every runtime backend.
FACES, FEATURES = "faces", "features"
AUDIO_TOKENS, AUDIO_FEATURES = "audio_tokens", "audio_features"
VISUAL, AUDIO_PRESENT, VISUAL_PRESENT = "visual", "audio_present", "visual_present"
INTENSITIES = "intensities"
FRAME_ENCODER_FILE, AUDIO_ENCODER_FILE, HEAD_FILE = (
    "frame_encoder.onnx",
    "audio_encoder.onnx",
    "head.onnx",
)
#: The graphs of the streaming split, in order, and their fp32 file names (variants and engines
#: are named after them). ``audio_encoder`` exists only for models with audio (:func:`graphs`).
GRAPH_FILES: dict[str, str] = {
    "frame_encoder": FRAME_ENCODER_FILE,
    "audio_encoder": AUDIO_ENCODER_FILE,
    "head": HEAD_FILE,
}
#: Each graph's output name.
GRAPH_OUTPUTS: dict[str, str] = {
    "frame_encoder": FEATURES,
    "audio_encoder": AUDIO_FEATURES,
    "head": INTENSITIES,
}
#: Version of the graphs' inputs and outputs, in every export's metadata (``eri.graph_version``).
#: 2: the audio encoder is its own graph and the head takes audio features (1: raw tokens).
GRAPH_VERSION = 2
GRAPH_VERSION_KEY = "eri.graph_version"

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


class AudioEncoderGraph(nn.Module):
    """audio tokens [N, F] (raw) -> audio features [N, A]: ``encode_audio``, one token each."""

    def __init__(self, model: StreamingModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, audio_tokens: torch.Tensor) -> torch.Tensor:
        return self.model.encode_audio(audio_tokens.unsqueeze(1))[:, 0]


class HeadGraph(nn.Module):
    """visual [B, T, D], audio features [B, T, A] (``encode_audio``'s output), audio_present
    [B], visual_present [B] -> intensities [B, 7]."""

    def __init__(self, model: StreamingModel) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        visual: torch.Tensor,
        audio_features: torch.Tensor,
        audio_present: torch.Tensor,
        visual_present: torch.Tensor,
    ) -> torch.Tensor:
        return self.model.head(visual, audio_features, audio_present, visual_present)


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


def graphs(model: StreamingModel) -> list[str]:
    """The graphs ``model`` exports, in order: frame_encoder, audio_encoder (with audio), head."""
    return [g for g in GRAPH_FILES if g != "audio_encoder" or model.has_audio]


def graph_module(model: StreamingModel, graph: str) -> nn.Module:
    """The torch module of one exported graph (inputs in the order of :func:`input_names`)."""
    if graph == "frame_encoder":
        return FrameEncoderGraph(model)
    if graph == "audio_encoder":
        return AudioEncoderGraph(model)
    return head_graph(model)


def head_input_names(model: StreamingModel) -> list[str]:
    if model.has_audio:
        return [VISUAL, AUDIO_FEATURES, AUDIO_PRESENT, VISUAL_PRESENT]
    return [VISUAL, VISUAL_PRESENT]


def input_names(model: StreamingModel, graph: str) -> list[str]:
    """The ONNX input names of ``graph``, in order."""
    return {"frame_encoder": [FACES], "audio_encoder": [AUDIO_TOKENS]}.get(
        graph, head_input_names(model)
    )


def example_inputs(model: StreamingModel, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random float32 inputs for every graph, keyed by ONNX input name: faces [batch, 3, S, S],
    audio_tokens [batch, F] (raw-token scale), visual [batch, T, D], audio_features
    [batch, T, A], flags [batch] (audio absent on odd rows)."""
    rng = np.random.default_rng(seed)
    t, s, d = model.window.num_samples, model.crop.size, model.feature_dim
    inputs = {
        FACES: rng.random((batch, 3, s, s), dtype=np.float32),
        VISUAL: rng.standard_normal((batch, t, d), dtype=np.float32),
        VISUAL_PRESENT: np.ones(batch, dtype=np.float32),
    }
    if model.has_audio:
        inputs[AUDIO_TOKENS] = (
            10 * rng.standard_normal((batch, model.audio_spec.token_dim))
        ).astype(np.float32)
        inputs[AUDIO_FEATURES] = rng.standard_normal(
            (batch, t, model.audio_feature_dim), dtype=np.float32
        )
        inputs[AUDIO_PRESENT] = (np.arange(batch) % 2 == 0).astype(np.float32)
    return inputs


def head_args(
    inputs: dict[str, np.ndarray],
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None, np.ndarray]:
    """Head inputs keyed by ONNX name (e.g. :func:`example_inputs`) -> the backends' positional
    (visual, audio_features, audio_present, visual_present); the audio ones None when absent."""
    return (
        inputs[VISUAL],
        inputs.get(AUDIO_FEATURES),
        inputs.get(AUDIO_PRESENT),
        inputs[VISUAL_PRESENT],
    )


def onnx_metadata(model: StreamingModel, graph: str) -> dict[str, str]:
    return {
        "eri.graph": graph,
        GRAPH_VERSION_KEY: str(GRAPH_VERSION),
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


def graph_paths(model: StreamingModel, out_dir: str | Path) -> dict[str, Path]:
    """``{graph: OUT/<graph>.onnx}`` for the graphs ``model`` exports."""
    return {g: Path(out_dir) / GRAPH_FILES[g] for g in graphs(model)}


def export_onnx(model: StreamingModel, out_dir: str | Path, *, batch: int = 2) -> dict[str, Path]:
    """Write ``frame_encoder.onnx``, ``audio_encoder.onnx`` (models with audio) and
    ``head.onnx`` for ``model`` into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    example = {k: torch.from_numpy(v) for k, v in example_inputs(model, batch).items()}
    paths = graph_paths(model, out_dir)
    with torch.no_grad():
        for graph, path in paths.items():
            names = input_names(model, graph)
            _export_graph(
                graph_module(model, graph),
                tuple(example[n] for n in names),
                names,
                GRAPH_OUTPUTS[graph],
                path,
                onnx_metadata(model, graph),
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
    """The export cache folder of ``model``: ``cache_dir()/onnx/<arch>-<weights hash>-g<graph
    version>`` (exports of another graph version live in other folders and are never used)."""
    return cache_dir() / "onnx" / f"{model.arch_name}-{weights_digest(model)}-g{GRAPH_VERSION}"


class StaleExportError(EriError, ValueError):
    """An export made with another graph version than this ERI Live runs; re-export it."""


_VERSIONS: dict[tuple[str, int, int], str | None] = {}


def graph_version(path: str | Path) -> str | None:
    """The ``eri.graph_version`` in the metadata of the ONNX file ``path`` (None: none, as in
    exports from before the version existed). Cached per file, size and modification time."""
    path = Path(path)
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _VERSIONS:
        _VERSIONS[key] = read_onnx_metadata(path).get(GRAPH_VERSION_KEY)
    return _VERSIONS[key]


def check_graph(path: str | Path, bundle: Any = None) -> None:
    """Refuse the exported graph ``path`` when it is not of :data:`GRAPH_VERSION`."""
    found = graph_version(path)
    if found != str(GRAPH_VERSION):
        where = getattr(bundle, "path", None) or "BUNDLE"
        raise StaleExportError(
            f"{path} was exported with graph version {found or 1}, not {GRAPH_VERSION} (its "
            f"head takes raw audio tokens, without the separate audio encoder); re-export it "
            f"with `eri export {where} --format FORMAT` (the format it was made with)."
        )


def own_exports(bundle: Any, files: dict[str, str]) -> dict[str, Path] | None:
    """The bundle's own exports ``{graph: file name}`` (recorded in bundle.json), checked to be
    of this graph version; None when one of them is missing. A stale one is refused
    (:func:`check_graph`) as soon as any is present, so an old export is never run."""
    own = {g: bundle.export_path(f) for g, f in files.items()}
    for path in own.values():
        if path is not None:
            check_graph(path, bundle)
    if all(own.values()):
        return own  # type: ignore[return-value]
    return None


def onnx_paths(bundle: Any) -> dict[str, Path]:
    """The bundle's fp32 ONNX graphs (:func:`graphs`): its own exports, else a cached export
    made now."""
    own = own_exports(bundle, {g: GRAPH_FILES[g] for g in graphs(bundle.model)})
    if own is not None:
        return own
    arch = bundle.model.arch_name
    target = model_cache_dir(bundle.model)
    paths = graph_paths(bundle.model, target)
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
    """Per graph output (``"frame_encoder.features"``, ``"audio_encoder.audio_features"``,
    ``"head.intensities"``), ``max |onnxruntime - torch| / max(1, max |torch|)`` (see
    :func:`onnx_error`; faithful when <= FP32_TOLERANCE), on a batch size other than the
    export's."""
    model = model.eval()
    inputs = example_inputs(model, batch, seed)
    diffs: dict[str, float] = {}
    for graph, path in paths.items():
        names = input_names(model, graph)
        with torch.no_grad():
            ref = graph_module(model, graph)(*(torch.from_numpy(inputs[n]) for n in names))
        got = ort_session(path).run([GRAPH_OUTPUTS[graph]], {n: inputs[n] for n in names})[0]
        diffs[f"{graph}.{GRAPH_OUTPUTS[graph]}"] = onnx_error(got, ref.numpy())
    return diffs


def read_onnx_metadata(path: str | Path) -> dict[str, Any]:
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in proto.metadata_props}
