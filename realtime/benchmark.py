"""`eri benchmark`: per-stage latency percentiles, end-to-end FPS and model-only throughput for
each backend, precision and mode, run side by side; a table and the JSON of docs/design.md.

Each run decodes ``WARMUP`` frames untimed, then times ``frames`` more. The offline modes encode
frames in batches of ``OFFLINE_BATCH``, so outputs arrive in bursts: the warm-up and the measured
frames are whole batches, and a run with fewer than ``MIN_FRAMES`` measured frames (a short
file) reports its FPS as not measured rather than a number dominated by one burst.

Beside the pipeline rows, a model-only table (:func:`model_rows`) times the output step alone
(batch 1: streaming = encode one frame and one audio token + head, recompute = encode T frames
and T tokens + head) for every backend, device and precision this version has: torch on the
CPU, torch on CUDA eager and with CUDA graphs, ONNX Runtime, TensorRT; a row that cannot run
here says why in its status.
On CUDA the device is synchronised before every model-only timestamp; the pipeline rows'
backends return host arrays, so each stage's time already ends after the device's work.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
import logging
import math
import os
import platform
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from eri.choices import BACKENDS, ENGINE_MODES
from eri.errors import EriError
from eri.models.bundle import Bundle
from eri.models.export import (
    AUDIO_FEATURES,
    AUDIO_PRESENT,
    AUDIO_TOKENS,
    FACES,
    VISUAL,
    VISUAL_PRESENT,
    example_inputs,
)
from eri.realtime.analyze import make_tracker, percentiles
from eri.realtime.backends import create_backend
from eri.realtime.pipeline import (
    OFFLINE_BATCH,
    STAGES,
    LiveRunner,
    StreamingEngine,
    run_offline,
)

log = logging.getLogger(__name__)

#: Untimed frames at the start of each run (two offline batches: tracker, caches, allocator).
WARMUP = 2 * OFFLINE_BATCH
#: Fewest measured frames that give a meaningful FPS; `eri benchmark --frames` refuses fewer.
MIN_FRAMES = 2 * WARMUP
#: Defaults of `eri benchmark` (its --help repeats them): about two minutes on an idle 2-core CPU.
DEFAULT_FRAMES = 64
DEFAULT_REPEATS = 2
DEFAULT_BACKENDS = ("onnxruntime",)
DEFAULT_MODES = ("streaming", "recompute")
#: Batch-1 model-only steps timed per configuration (after 3 untimed ones): at least
#: MODEL_STEPS, more until MODEL_SECONDS have passed (fast GPU steps get a real p99), at most
#: MODEL_MAX_STEPS.
MODEL_STEPS = 10
MODEL_SECONDS = 0.5
MODEL_MAX_STEPS = 2000
#: The model-only table's configurations: (backend, device, CUDA graphs).
MODEL_CONFIGS: tuple[tuple[str, str, bool], ...] = (
    ("torch", "cpu", False),
    ("torch", "cuda", False),
    ("torch", "cuda", True),
    ("onnxruntime", "cpu", False),
    ("tensorrt", "cuda", True),
)


@dataclass
class Config:
    backend: str
    precision: str
    mode: str  # "streaming" | "recompute" | "live" (streaming, paced at the source's rate)


def device_info() -> dict[str, Any]:
    """The machine and the versions a measurement was taken with."""
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(
                (line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu
            )
    except OSError:
        pass
    import torch

    versions = {}
    for dist in (
        "eri-live",
        "torch",
        "onnxruntime",
        "onnxruntime-gpu",
        "tensorrt",
        "mediapipe",
        "av",
        "numpy",
    ):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "versions": versions,
    }


def _open(source: str, frames: int, realtime: bool, pace_fps: float | None):
    """The benchmark's source; live runs are paced at ``pace_fps`` (default: the source's own
    rate, 30 fps for the synthetic source)."""
    from eri.realtime.sources import FileSource, SyntheticSource, open_source

    if source == "synthetic":
        return SyntheticSource(
            num_frames=frames, fps=pace_fps or 30.0, width=640, height=360, realtime=realtime
        )
    src = open_source(source, realtime=realtime)
    if realtime and pace_fps and isinstance(src, FileSource) and src.fps:
        src = FileSource(source, realtime=True, speed=pace_fps / src.fps)
    return src


def synchronizer(backend) -> Any:
    """A function that waits for the backend's device (``torch.cuda.synchronize`` on CUDA; a
    no-op on the CPU): called before every timestamp."""
    if not str(getattr(backend, "device", "cpu")).startswith("cuda"):
        return lambda: None
    import torch

    return torch.cuda.synchronize


def model_only_ms(backend, bundle: Bundle, mode: str, repeats: int = MODEL_STEPS) -> list[float]:
    """Model time of one output step [n] ms: streaming = encode 1 frame (+ 1 audio token, the
    steady state of the per-token cache) + head; recompute = encode T frames (+ T tokens) +
    head; ``repeats`` steps at least, more up to :data:`MODEL_SECONDS`."""
    model = bundle.model
    n = model.window.num_samples if mode == "recompute" else 1
    new = example_inputs(model, n)
    faces, tokens = new[FACES], new.get(AUDIO_TOKENS)
    example = example_inputs(model, 1)
    head_args = (
        example[VISUAL],
        example.get(AUDIO_FEATURES),
        example.get(AUDIO_PRESENT),
        example[VISUAL_PRESENT],
    )

    def step() -> None:
        backend.encode_frames(faces)
        if tokens is not None:
            backend.encode_audio(tokens)
        backend.head(*head_args)

    sync = synchronizer(backend)
    for _ in range(3):
        step()
    times: list[float] = []
    while len(times) < repeats or (
        sum(times) < MODEL_SECONDS * 1e3 and len(times) < MODEL_MAX_STEPS
    ):
        sync()
        t0 = time.perf_counter()
        step()
        sync()
        times.append((time.perf_counter() - t0) * 1e3)
    return times


def _on_cpu(bundle: Bundle) -> Bundle:
    """``bundle``, or a copy whose model is on the CPU (a torch CUDA row moved it), so that
    exports and copies start from the CPU."""
    if all(p.device.type == "cpu" for p in bundle.model.parameters()):
        return bundle
    return dataclasses.replace(bundle, model=copy.deepcopy(bundle.model).cpu())


def _model_backend(
    bundle: Bundle,
    backend: str,
    device: str,
    graphs: bool,
    precision: str,
    threads: int,
    built: dict[tuple[str, str], Any],
) -> Any:
    """The backend of one model-only row, reusing the pipeline rows' ONNX Runtime and TensorRT
    backends; an exception (its message the row's status) when it cannot run here."""
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise EriError("no CUDA GPU")
    if backend != "torch":
        if (backend, precision) not in built:
            if backend == "tensorrt" and backend not in BACKENDS:
                raise EriError(
                    "TensorRT is not installed (pip install 'eri-live[tensorrt]' on a machine "
                    "with an NVIDIA GPU)"
                )
            try:
                built[(backend, precision)] = create_backend(bundle, backend, precision, threads)
            except (EriError, ImportError) as exc:
                built[(backend, precision)] = exc
        if isinstance(built[(backend, precision)], Exception):
            raise built[(backend, precision)]
        return built[(backend, precision)]
    from eri.realtime.backends import TorchBackend

    # A copy of the model per torch row: the backend moves its model to its device.
    own = dataclasses.replace(bundle, model=copy.deepcopy(bundle.model))
    return TorchBackend(own, device=device, threads=threads, precision=precision, graphs=graphs)


def model_rows(
    bundle: Bundle,
    precisions: list[str],
    modes: list[str],
    *,
    threads: int = 0,
    built: dict[tuple[str, str], Any] | None = None,
) -> list[dict[str, Any]]:
    """The model-only table: one row per :data:`MODEL_CONFIGS` entry x precision x engine mode
    in ``modes``, with the batch-1 step's p50/p95/p99 ms and steps per second, or a status
    saying why it could not run here."""
    built = {} if built is None else built
    rows = []
    bundle = _on_cpu(bundle)
    for (backend, device, graphs), precision in itertools.product(MODEL_CONFIGS, precisions):
        base = {"backend": backend, "device": device, "graphs": graphs, "precision": precision}
        try:
            runner = _model_backend(bundle, backend, device, graphs, precision, threads, built)
        except (EriError, ImportError) as exc:
            for mode in (m for m in modes if m in ENGINE_MODES):
                rows.append({**base, "mode": mode, "status": f"unavailable: {exc}"})
            continue
        for mode in (m for m in modes if m in ENGINE_MODES):
            log.info("model only: %s %s %s %s", backend, runner.device, precision, mode)
            step = model_only_ms(runner, bundle, mode)
            rows.append(
                {
                    **base,
                    "device": runner.device,
                    "mode": mode,
                    "status": "ok",
                    "steps": len(step),
                    "step_ms": percentiles(step),
                    "steps_per_s": 1e3 / float(np.median(step)),
                }
            )
    return rows


def run_once(
    bundle: Bundle,
    backend,
    cfg: Config,
    source: str,
    frames: int,
    warmup: int = WARMUP,
    pace_fps: float | None = None,
    bar: Any = None,
) -> dict[str, Any]:
    """One pass over the source; per-frame stage times after ``warmup`` frames.

    The clock starts when the last warm-up output arrives and stops at the last measured one,
    so ``frames / wall_s`` covers exactly the measured frames (whole batches offline).
    """
    tracker = make_tracker(bundle)
    src = _open(source, frames + warmup, realtime=cfg.mode == "live", pace_fps=pace_fps)
    mode = "recompute" if cfg.mode == "recompute" else "streaming"
    engine = StreamingEngine(bundle, backend, tracker, mode=mode, fps=src.fps)
    stages: dict[str, list[float]] = {s: [] for s in (*STAGES, "latency")}
    count, skipped, faces = 0, 0, 0
    t_start = time.perf_counter() if warmup == 0 else None
    t_end = None
    with src:
        if cfg.mode == "live":
            runner = LiveRunner(src, engine)
            outputs = runner.run()
        else:
            runner = None
            outputs = run_offline(src, engine)
        for i, out in enumerate(outputs):
            if bar is not None:
                bar.update(1)
            if i < warmup:
                if i == warmup - 1:
                    t_start = time.perf_counter()
                continue
            count += 1
            faces += out.face_detected
            for k, v in out.stages_ms.items():
                stages.setdefault(k, []).append(v)
            t_end = time.perf_counter()
            if count >= frames:
                break
        if runner is not None:
            runner.stop()
            skipped = runner.skipped
    tracker.close()
    wall = t_end - t_start if t_start is not None and t_end is not None else float("nan")
    return {"frames": count, "wall_s": wall, "stages": stages, "skipped": skipped, "faces": faces}


def benchmark(
    bundle: Bundle,
    *,
    backends: list[str],
    precisions: list[str],
    modes: list[str],
    source: str = "synthetic",
    frames: int = DEFAULT_FRAMES,
    repeats: int = DEFAULT_REPEATS,
    threads: int = 0,
    pace_fps: float | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Run every configuration ``repeats`` times, interleaved, and summarise each.

    ``frames`` is rounded up to whole offline batches. With ``progress``, a bar shows each run
    and a log line before each run estimates the time left.
    """
    if frames < 1 or repeats < 1:
        raise ValueError(f"frames and repeats must be >= 1, got {frames} and {repeats}.")
    frames = math.ceil(frames / OFFLINE_BATCH) * OFFLINE_BATCH
    configs = [Config(b, p, m) for b, p, m in itertools.product(backends, precisions, modes)]
    built: dict[tuple[str, str], Any] = {}
    rows: dict[int, dict[str, Any]] = {}
    runs: dict[int, list[dict[str, Any]]] = {i: [] for i in range(len(configs))}
    for i, cfg in enumerate(configs):
        key = (cfg.backend, cfg.precision)
        if key not in built:
            try:
                built[key] = create_backend(bundle, cfg.backend, cfg.precision, threads=threads)
            except (EriError, ImportError) as exc:  # e.g. no int8 export: a row says so
                built[key] = exc
        if isinstance(built[key], Exception):
            rows[i] = {
                "backend": cfg.backend,
                "precision": cfg.precision,
                "mode": cfg.mode,
                "status": f"unavailable: {built[key]}",
            }
    todo = [(r, i) for r in range(repeats) for i in range(len(configs)) if i not in rows]
    took: dict[int, list[float]] = {i: [] for i in range(len(configs))}
    for done, (_, i) in enumerate(todo):
        cfg = configs[i]
        label = f"run {done + 1}/{len(todo)}: {cfg.backend} {cfg.precision} {cfg.mode}"
        if done:
            # A configuration's own earlier runs predict its next ones; one not yet run is
            # guessed at the mean of all runs so far (exact from the second repeat on).
            every = [t for ts in took.values() for t in ts]
            left = sum(
                float(np.mean(took[j])) if took[j] else float(np.mean(every))
                for _, j in todo[done:]
            )
            log.info("%s (about %s left)", label, _duration(left))
        else:
            log.info("%s", label)
        t_run = time.perf_counter()
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=frames + WARMUP, unit="frame", desc=label[4:], leave=False)
        try:
            runs[i].append(
                run_once(
                    bundle,
                    built[(cfg.backend, cfg.precision)],
                    cfg,
                    source,
                    frames,
                    pace_fps=pace_fps,
                    bar=bar,
                )
            )
        finally:
            if bar is not None:
                bar.close()
        took[i].append(time.perf_counter() - t_run)
    for i, cfg in enumerate(configs):
        if i in rows:
            continue
        backend = built[(cfg.backend, cfg.precision)]
        rs = runs[i]
        # A run that measured too few frames (a short file) gives no FPS: one burst of
        # batched outputs would read as thousands of frames a second.
        fps_runs = [
            r["frames"] / r["wall_s"] for r in rs if r["wall_s"] > 0 and r["frames"] >= MIN_FRAMES
        ]
        total = [v for r in rs for v in r["stages"]["total"]]
        stages = {
            s: percentiles([v for r in rs for v in r["stages"].get(s, [])], (50, 95))
            for s in (*STAGES, "latency")
            if any(r["stages"].get(s) for r in rs)
        }
        step = model_only_ms(backend, bundle, cfg.mode)
        row = {
            "backend": cfg.backend,
            "precision": cfg.precision,
            "mode": cfg.mode,
            "status": "ok",
            "device": backend.device,
            "fps": float(np.median(fps_runs)) if fps_runs else None,
            "fps_runs": fps_runs,
            "latency_ms": percentiles(total),
            "stages": stages,
            "frames": sum(r["frames"] for r in rs),
            "skipped": sum(r["skipped"] for r in rs),
            # Frames with a face crop: without one the encoder does not run.
            "face_detected_fraction": sum(r["faces"] for r in rs)
            / max(1, sum(r["frames"] for r in rs)),
            "model_step_ms": percentiles(step),
            "model_steps_per_s": 1e3 / float(np.median(step)),
        }
        if cfg.mode == "live":
            row["frame_to_output_ms"] = percentiles(
                [v for r in rs for v in r["stages"].get("latency", [])]
            )
        rows[i] = row
    ordered = [rows[i] for i in range(len(configs))]
    model = model_rows(bundle, precisions, modes, threads=threads, built=built)
    return {
        "device": device_info(),
        "model": bundle.name,
        "trained": bundle.trained,
        "architecture": bundle.meta["architecture"],
        "source": source,
        "warmup_frames": WARMUP,
        "frames_per_run": frames,
        "repeats": repeats,
        "pace_fps": pace_fps,
        "rows": ordered,
        "model_rows": model,
        "ratios": _ratios(ordered),
    }


def _ratios(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Recompute vs streaming, per backend and precision, from rows run side by side."""
    out = {}

    def step_ms(row: dict[str, Any]) -> float:
        st = row["stages"]
        return st["encoder"]["p50"] + st["head"]["p50"]

    for r in rows:
        if r.get("status") != "ok" or r["mode"] != "recompute":
            continue
        for s in rows:
            if (
                s.get("status") == "ok"
                and s["mode"] == "streaming"
                and s["backend"] == r["backend"]
                and s["precision"] == r["precision"]
            ):
                key = f"{r['backend']}/{r['precision']}"
                out[
                    f"{key}: model time per output step in the pipeline (encoder + head p50), "
                    "recompute / streaming"
                ] = step_ms(r) / step_ms(s)
                out[
                    f"{key}: model time per output step, batch-1 encoder + head, "
                    "recompute / streaming"
                ] = r["model_step_ms"]["p50"] / s["model_step_ms"]["p50"]
                if s["fps"] and r["fps"]:
                    out[f"{key}: end-to-end frames/s, streaming / recompute"] = s["fps"] / r["fps"]
    return out


def format_table(result: dict[str, Any]) -> str:
    """The benchmark as a Markdown table (also what `eri benchmark` prints)."""
    head = (
        "| backend | precision | mode | status | FPS (median) | total p50/p95/p99 ms | "
        "decode p50 | face p50 | encoder p50 | head p50 | model step p50 ms |"
    )
    lines = [head, "|" + "---|" * 11]
    for r in result["rows"]:
        if r["status"] != "ok":
            lines.append(
                f"| {r['backend']} | {r['precision']} | {r['mode']} | {r['status']} |" + " |" * 7
            )
            continue
        st = r["stages"]
        lat = r["latency_ms"]
        fps = f"{r['fps']:.1f}" if r["fps"] else f"not measured ({r['frames']} frames)"
        lines.append(
            f"| {r['backend']} | {r['precision']} | {r['mode']} | ok | {fps} | "
            f"{lat['p50']:.1f} / {lat['p95']:.1f} / {lat['p99']:.1f} | "
            + " | ".join(
                f"{st[s]['p50']:.2f}" if s in st else "-"
                for s in ("decode", "face", "encoder", "head")
            )
            + f" | {r['model_step_ms']['p50']:.2f} |"
        )
        if "frame_to_output_ms" in r:
            f2o = r["frame_to_output_ms"]
            lines[-1] += (
                f" frame-to-output p50/p95 {f2o['p50']:.1f}/{f2o['p95']:.1f} ms, "
                f"skipped {r['skipped']}"
            )
    if result["ratios"]:
        lines.append("")
    for k, v in result["ratios"].items():
        lines.append(f"- {k}: {v:.1f}x")
    if result.get("model_rows"):
        lines += ["", format_model_table(result["model_rows"])]
    return "\n".join(lines)


def format_model_table(rows: list[dict[str, Any]]) -> str:
    """The model-only rows as a Markdown table."""
    lines = [
        "| backend | device | precision | mode | status | model step p50 / p95 / p99 ms "
        "| steps/s |",
        "|" + "---|" * 7,
    ]
    for r in rows:
        name = r["backend"] + (" (CUDA graphs)" if r["graphs"] and r["backend"] == "torch" else "")
        head = f"| {name} | {r['device']} | {r['precision']} | {r['mode']} |"
        if r["status"] != "ok":
            lines.append(f"{head} {r['status']} | | |")
            continue
        ms = r["step_ms"]
        lines.append(
            f"{head} ok | {ms['p50']:.3f} / {ms['p95']:.3f} / {ms['p99']:.3f} | "
            f"{r['steps_per_s']:.1f} |"
        )
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


def write_json(result: dict[str, Any], path: str | Path) -> None:
    from eri.realtime.outputs import open_for_writing

    with open_for_writing(path, "benchmark JSON") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
