"""Precision variants for ``eri export --format onnx-fp16 | onnx-int8 | engine* [--check]``,
and where a precision's TensorRT engines are found (:func:`find_engines`).

:func:`export_variant` builds a variant from the bundle's fp32 export (made first when absent),
optionally checks it against fp32 torch, and only then moves the files (frame encoder, audio
encoder for models with audio, head) into place: a failed check, a bad calibration cache or a
crash leaves no new file behind. The checks:

- fp16: each graph on held-out probe inputs (:func:`eri.models.precision.probe_inputs`, another
  seed than the range probe) and the graphs end to end, within ``FP16_TOLERANCE`` relative
  to each output's scale;
- int8: the head on the held-out windows ``eri calibrate`` set aside (never calibrated on; their
  audio features from the fp32 audio encoder), with the per-emotion Pearson correlation of int8
  vs fp32 torch over those windows (target :data:`PEARSON_TARGET`), the encoders on the
  held-out crops and tokens, and the graphs end to end on probe inputs; intensities within
  ``INT8_TOLERANCE`` (absolute: they lie in [0, 1]).
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from eri.models.engine import (
    ENGINE_FP32_TOLERANCE,
    ENGINE_SUFFIX,
    PROFILES,
    EngineDevice,
    EngineError,
    build_engine,
    check_engine,
    check_precision_supported,
    current_device,
    engine_file_name,
    read_engine_header,
    rebuild_hint,
)
from eri.models.export import (
    AUDIO_FEATURES,
    AUDIO_TOKENS,
    FACES,
    FEATURES,
    GRAPH_FILES,
    INTENSITIES,
    VISUAL,
    cache_dir,
    export_format,
    graphs,
    model_cache_dir,
    onnx_paths,
    ort_session,
    weights_digest,
)
from eri.models.precision import (
    FP16_TOLERANCE,
    VariantCheck,
    check_variant,
    export_fp16,
    graph_feeds,
    precision_paths,
    probe_inputs,
    torch_reference,
    variant_paths,
)
from eri.models.spec import EMOTIONS

log = logging.getLogger(__name__)

#: Fraction of the crops and windows `eri calibrate` sets aside for the int8 check.
HELD_OUT_FRACTION = 0.25
#: Per-emotion Pearson correlation of int8 vs fp32 torch intensities the int8 check aims at.
PEARSON_TARGET = 0.99
#: Seed of the probe inputs the checks run on (the fp16 range probe uses 0, tests' calibration
#: sets 10).
CHECK_SEED = 20


@dataclass
class VariantReport:
    """What :func:`export_variant` made and measured. ``installed`` is False when a check
    failed (the files were not moved into place)."""

    fmt: str
    paths: dict[str, Path]
    checks: list[VariantCheck] = field(default_factory=list)
    tolerance: float = 0.0
    #: Per emotion: Pearson r of variant vs fp32 torch intensities over ``check_windows``
    #: (None: the emotion's fp32 intensity did not vary over them).
    pearson: dict[str, float | None] = field(default_factory=dict)
    check_windows: str = ""
    #: Measurements reported without a verdict of their own, one line each.
    notes: list[str] = field(default_factory=list)
    installed: bool = False

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def lines(self) -> list[str]:
        """The check's results, one line each (what ``eri export --check`` prints)."""
        out = [*self.notes, *(c.describe() for c in self.checks)]
        if self.pearson:
            out.append(
                f"Pearson r of {self.fmt} vs fp32 torch intensities per emotion, over "
                f"{self.check_windows} (target >= {PEARSON_TARGET}):"
            )
            for emotion, r in self.pearson.items():
                if r is None:
                    out.append(f"  {emotion:14s} n/a (fp32 intensity constant over these windows)")
                else:
                    verdict = "ok" if r >= PEARSON_TARGET else "below target"
                    out.append(f"  {emotion:14s} {r:.4f} {verdict}")
        return out


def _absolute(check: VariantCheck) -> VariantCheck:
    """The same measurement judged on an absolute scale (intensities lie in [0, 1])."""
    return VariantCheck(
        check.graph, check.output, check.max_abs, check.p99_abs, 1.0, check.tolerance
    )


def pearson_per_emotion(got: np.ndarray, ref: np.ndarray) -> dict[str, float | None]:
    """Pearson r per column of intensities [B, 7] (None where ``ref`` is constant)."""
    out: dict[str, float | None] = {}
    for i, emotion in enumerate(EMOTIONS):
        a, b = got[:, i].astype(np.float64), ref[:, i].astype(np.float64)
        if len(a) < 2 or np.std(b) < 1e-12 or np.std(a) < 1e-12:
            out[emotion] = None
        else:
            out[emotion] = float(np.corrcoef(a, b)[0, 1])
    return out


def end_to_end_check(
    model: Any, paths: Mapping[str, Path], inputs: Mapping[str, np.ndarray], tolerance: float
) -> VariantCheck:
    """The variant frame encoder's features of ``inputs[faces]`` [B*T, 3, S, S] and the variant
    audio encoder's of ``inputs[audio_tokens]`` [B*T, F] fed to the variant head (with the
    other head inputs), against fp32 torch on the same faces and tokens."""
    features = ort_session(paths["frame_encoder"]).run([FEATURES], {FACES: inputs[FACES]})[0]
    e2e = dict(inputs, **{VISUAL: features.reshape(inputs[VISUAL].shape)})
    if "audio_encoder" in paths:
        feed = {AUDIO_TOKENS: inputs[AUDIO_TOKENS]}
        audio = ort_session(paths["audio_encoder"]).run([AUDIO_FEATURES], feed)[0]
        e2e[AUDIO_FEATURES] = audio.reshape(inputs[AUDIO_FEATURES].shape)
    got = ort_session(paths["head"]).run([INTENSITIES], graph_feeds(paths["head"], e2e))[0]
    ref = torch_reference(model, inputs)["head"]
    diff = np.abs(got.astype(np.float64) - ref)
    finite = bool(np.all(np.isfinite(got)))
    return VariantCheck(
        "end_to_end",
        INTENSITIES,
        float(diff.max()) if finite else float("inf"),
        float(np.percentile(diff, 99)) if finite else float("inf"),
        float(np.abs(ref).max()),
        tolerance,
    )


def load_calibration(bundle: Any, calib: str | Path) -> tuple[Any, Any]:
    """(calibration set, held-out set or None) from the cache ``calib`` made by ``eri
    calibrate`` for this bundle's weights; a :class:`CalibrationError` naming the fix otherwise."""
    from eri.calibration import CalibrationCache, CalibrationError, check_shapes

    calib = Path(calib)
    cache = CalibrationCache(calib)
    where = bundle.path if bundle.path is not None else "BUNDLE"
    redo = f"`eri calibrate {where} --data MEDIA_DIR --out {calib}`"
    meta = cache.meta() if calib.is_dir() else None
    if meta is None or not cache.data_path.is_file():
        raise CalibrationError(f"{calib} holds no calibration; run {redo} first.")
    weights = weights_digest(bundle.model)
    if meta.get("weights") != weights:
        raise CalibrationError(
            f"Calibration cache {calib} was made for other weights ({meta.get('architecture')} "
            f"{meta.get('weights')}), not this bundle's; run {redo} again."
        )
    data = cache.load(weights)
    held = cache.load_held_out(weights)
    for part in (data, held):
        if part is not None:
            check_shapes(part, bundle.model)
    return data, held


def _install(report: VariantReport, made: dict[str, Path], final: dict[str, Path]) -> VariantReport:
    """Move the checked files ``made`` (graph -> temporary path) to ``final`` in one step each
    (os.replace), so a failed or refused export leaves nothing half-written beside the bundle."""
    for graph, path in made.items():
        os.replace(path, final[graph])
    report.paths, report.installed = final, True
    return report


def export_variant(
    bundle: Any,
    fmt: str,
    out_dir: str | Path,
    *,
    calib: str | Path | None = None,
    method: str | None = None,
    check: bool = False,
) -> VariantReport:
    """Build the ``fmt`` variant (``onnx-fp16`` or ``onnx-int8``) of ``bundle`` into ``out_dir``
    from its fp32 export, checked first when ``check``; see the module docstring."""
    from eri.calibration import INT8_TOLERANCE
    from eri.calibration.quantize import DEFAULT_METHOD, export_int8

    precision = export_format(fmt).precision
    model = bundle.model
    data = held = None
    if precision == "int8":
        if calib is None:
            raise ValueError("int8 needs a calibration cache")
        data, held = load_calibration(bundle, calib)  # refused before any work
    fp32 = onnx_paths(bundle)
    out_dir = Path(out_dir)
    tmp = out_dir / f".eri-{fmt}-{secrets.token_hex(4)}.tmp"
    tmp.mkdir(parents=True)
    try:
        if precision == "fp16":
            made = export_fp16(model, fp32, tmp)
        else:
            made = export_int8(
                model, fp32, data, tmp, method=method or DEFAULT_METHOD, cache_dir=calib
            )
        report = VariantReport(fmt, made)
        if check and precision == "fp16":
            held_probe = probe_inputs(model, batch=4, seed=CHECK_SEED)
            report.tolerance = FP16_TOLERANCE
            report.checks = check_variant(model, made, held_probe, FP16_TOLERANCE)
            report.checks.append(end_to_end_check(model, made, held_probe, FP16_TOLERANCE))
        elif check:
            from eri.calibration.quantize import fp32_audio_encoder

            report.tolerance = INT8_TOLERANCE
            probe = probe_inputs(model, batch=4, seed=CHECK_SEED)
            encoder = fp32_audio_encoder(model) if model.has_audio else None
            windows = held.graph_inputs("head", encoder) if held is not None else probe
            faces = held.faces if held is not None else probe[FACES]
            report.check_windows = (
                f"{len(windows[VISUAL])} held-out windows from {held.source}"
                if held is not None
                else f"{len(probe[VISUAL])} synthetic probe windows (no held-out set in {calib})"
            )
            head = check_variant(model, {"head": made["head"]}, windows, INT8_TOLERANCE)[0]
            # Features have no int8 tolerance of their own: reported, judged end to end.
            what = "held-out" if held is not None else "probe"
            encoders = {"frame_encoder": ({FACES: faces}, f"{what} crops")}
            if model.has_audio:
                tokens = held.graph_inputs("audio_encoder") if held is not None else probe
                encoders["audio_encoder"] = (
                    {AUDIO_TOKENS: tokens[AUDIO_TOKENS]},
                    f"{what} audio tokens",
                )
            for graph, (inputs, items) in encoders.items():
                enc = check_variant(model, {graph: made[graph]}, inputs, INT8_TOLERANCE)[0]
                count = len(next(iter(inputs.values())))
                report.notes.append(
                    f"{enc.graph}.{enc.output} on {count} {items}: max |diff| "
                    f"{enc.max_abs:.3g} on scale {enc.scale:.3g} (relative {enc.relative:.2e}, "
                    f"p99 {enc.p99_relative:.2e}; judged end to end below)"
                )
            got = ort_session(made["head"]).run([INTENSITIES], graph_feeds(made["head"], windows))
            ref = torch_reference(model, windows)["head"]
            report.pearson = pearson_per_emotion(got[0], ref)
            e2e = end_to_end_check(model, made, probe, INT8_TOLERANCE)
            report.checks = [_absolute(head), _absolute(e2e)]
        if check and not report.ok:
            return report
        return _install(report, made, variant_paths(out_dir, fmt, model))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------- TensorRT engines


def engine_dirs(bundle: Any) -> list[Path]:
    """Where a bundle's engines are looked for: beside it, then in its export cache folder."""
    dirs = [bundle.path] if bundle.path is not None else []
    dirs.append(model_cache_dir(bundle.model))
    return [d for d in dirs if d.is_dir()]


@dataclass
class EngineLookup:
    """What :func:`find_engines` found: ``paths`` (None when no match) and ``why`` in one
    sentence; ``refused`` holds the sentence for each engine judged and refused."""

    paths: dict[str, Path] | None
    why: str
    refused: list[str] = field(default_factory=list)


def find_engines(bundle: Any, precision: str, device: EngineDevice) -> EngineLookup:
    """The engines of ``bundle`` at ``precision`` that match ``device`` (GPU, compute
    capability, TensorRT version) and the bundle's weights, beside the bundle or in its export
    cache. Without a match, ``why`` is the sentence refusing the first engine that did not match
    (built for another GPU or TensorRT version, truncated, ...), else the sentence saying none
    exists and the command that builds one."""
    weights = weights_digest(bundle.model)
    found: dict[str, Path] = {}
    refused: list[str] = []
    dirs = engine_dirs(bundle)
    for graph in graphs(bundle.model):
        exact = engine_file_name(GRAPH_FILES[graph], precision, device)
        stem = exact.split(".", 1)[0]  # frame_encoder_fp16
        for folder in dirs:
            # The file named for this device first, then any other of this graph and precision
            # (a copied or renamed engine is judged by its header, not its name).
            candidates = sorted(
                folder.glob(f"{stem}.*{ENGINE_SUFFIX}"), key=lambda p: p.name != exact
            )
            for path in candidates:
                try:
                    header = read_engine_header(path, precision)
                    check_engine(
                        header, device, weights=weights, precision=precision, bundle=bundle.path
                    )
                except EngineError as exc:
                    refused.append(str(exc))
                    continue
                found[graph] = path
                break
            if graph in found:
                break
        if graph not in found:
            if refused:
                return EngineLookup(None, refused[0], refused)
            return EngineLookup(
                None,
                f"{bundle.name} has no {precision} TensorRT engine for {device.describe()}; "
                f"build one with {rebuild_hint(precision, bundle.path)}.",
            )
    why = f"{precision} TensorRT engines {', '.join(map(str, found.values()))}"
    return EngineLookup(found, why, refused)


def timing_cache_path(device: EngineDevice) -> Path:
    """The builder's timing cache for ``device``: ``cache_dir()/tensorrt/timing.<tag>.cache``."""
    return cache_dir() / "tensorrt" / f"timing.{device.tag}.cache"


def _engine_check(graph: str, output: str, got, ref, tolerance: float, absolute: bool):
    diff = np.abs(np.asarray(got, np.float64) - ref)
    finite = bool(np.all(np.isfinite(got)))
    scale = 1.0 if absolute else max(1.0, float(np.abs(ref).max()))
    return VariantCheck(
        graph,
        output,
        float(diff.max()) if finite else float("inf"),
        float(np.percentile(diff, 99)) if finite else float("inf"),
        scale,
        tolerance,
    )


def check_engines(bundle: Any, paths: Mapping[str, Path], precision: str) -> VariantReport:
    """Run the engines ``paths`` in TensorRT on probe inputs and compare with fp32 torch: the
    frame and audio features and intensities relative to max(1, scale) (fp32, fp16), int8
    intensities absolute (features reported), and the graphs end to end."""
    from eri.calibration import INT8_TOLERANCE
    from eri.models.export import head_args
    from eri.realtime.backend_tensorrt import TensorRTBackend

    model = bundle.model
    tolerance = {"fp32": ENGINE_FP32_TOLERANCE, "fp16": FP16_TOLERANCE}.get(
        precision, INT8_TOLERANCE
    )
    absolute = precision == "int8"
    backend = TensorRTBackend(bundle, precision, engines=paths)
    probe = probe_inputs(model, batch=4, seed=CHECK_SEED)
    ref = torch_reference(model, probe)
    features = backend.encode_frames(probe[FACES])
    head = backend.head(*head_args(probe))
    e2e_inputs = dict(probe, **{VISUAL: features.reshape(probe[VISUAL].shape)})
    encoded = {"frame_encoder": (FEATURES, features)}
    if model.has_audio:
        audio = backend.encode_audio(probe[AUDIO_TOKENS])
        e2e_inputs[AUDIO_FEATURES] = audio.reshape(probe[AUDIO_FEATURES].shape)
        encoded["audio_encoder"] = (AUDIO_FEATURES, audio)
    e2e = backend.head(*head_args(e2e_inputs))
    report = VariantReport(f"engine ({precision})", dict(paths), tolerance=tolerance)
    for graph, (output, got) in encoded.items():
        enc = _engine_check(graph, output, got, ref[graph], tolerance, False)
        if absolute:
            report.notes.append(f"{enc.describe().rsplit(' (', 1)[0]} (judged end to end below)")
        else:
            report.checks.append(enc)
    report.checks.append(_engine_check("head", INTENSITIES, head, ref["head"], tolerance, absolute))
    report.checks.append(
        _engine_check("end_to_end", INTENSITIES, e2e, ref["head"], tolerance, absolute)
    )
    return report


def export_engines(
    bundle: Any,
    fmt: str,
    out_dir: str | Path,
    *,
    onnx: Mapping[str, Path] | None = None,
    check: bool = False,
    timing_cache: str | Path | None = None,
) -> VariantReport:
    """Build the TensorRT engines of export format ``fmt`` (``engine``, ``engine-fp16``,
    ``engine-int8``) into ``out_dir`` from the precision's ONNX graphs (``onnx``, default:
    :func:`~eri.models.precision.precision_paths`), named by graph, precision, GPU and TensorRT
    version, checked against fp32 torch first when ``check``; a failed build or check leaves
    no new file behind."""
    precision = export_format(fmt).precision
    device = current_device()
    check_precision_supported(precision, device, bundle.path)
    onnx = dict(onnx) if onnx is not None else precision_paths(bundle, precision)
    model = bundle.model
    meta = {"architecture": model.arch_name, "weights": weights_digest(model)}
    out_dir = Path(out_dir)
    tmp = out_dir / f".eri-{fmt}-{secrets.token_hex(4)}.tmp"
    tmp.mkdir(parents=True)
    try:
        made = {}
        for graph in graphs(model):
            made[graph] = tmp / engine_file_name(GRAPH_FILES[graph], precision, device)
            build_engine(
                onnx[graph],
                made[graph],
                precision=precision,
                profiles=PROFILES[graph],
                timing_cache=timing_cache or timing_cache_path(device),
                meta={**meta, "graph": graph},
                device=device,
            )
        report = check_engines(bundle, made, precision) if check else VariantReport(fmt, made)
        report.fmt = fmt
        if check and not report.ok:
            return report
        return _install(report, made, {graph: out_dir / p.name for graph, p in made.items()})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
