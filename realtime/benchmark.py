"""`eri benchmark`: per-stage latency percentiles, end-to-end FPS and model-only throughput for
each backend, precision and mode, run side by side; a table and the JSON of docs/design.md.

Each run decodes ``WARMUP`` frames untimed, then times ``frames`` more. The offline modes encode
frames in batches of ``OFFLINE_BATCH``, so outputs arrive in bursts: the warm-up and the measured
frames are whole batches, and a run with fewer than ``MIN_FRAMES`` measured frames (a short
file) reports its FPS as not measured rather than a number dominated by one burst.
"""

from __future__ import annotations

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

from eri.errors import EriError
from eri.models.bundle import Bundle
from eri.models.export import (
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
#: Batch-1 model-only steps timed per configuration (after 3 untimed ones).
MODEL_STEPS = 10


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


def model_only_ms(backend, bundle: Bundle, mode: str, repeats: int = MODEL_STEPS) -> list[float]:
    """Model time of one output step [repeats] ms: streaming = encode 1 frame + head;
    recompute = encode T frames + head."""
    model = bundle.model
    n = model.window.num_samples if mode == "recompute" else 1
    faces = example_inputs(model, n)[FACES]
    example = example_inputs(model, 1)
    head_args = (
        example[VISUAL],
        example.get(AUDIO_TOKENS),
        example.get(AUDIO_PRESENT),
        example[VISUAL_PRESENT],
    )
    for _ in range(3):
        backend.encode_frames(faces)
        backend.head(*head_args)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        backend.encode_frames(faces)
        backend.head(*head_args)
        times.append((time.perf_counter() - t0) * 1e3)
    return times


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
        "ratios": _ratios(ordered),
    }


def _ratios(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Recompute vs streaming, per backend and precision, from rows run side by side."""
    out = {}

    def step_ms(row: dict[str, Any]) -> float:
        return row["stages"]["encoder"]["p50"] + row["stages"]["head"]["p50"]

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
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


def write_json(result: dict[str, Any], path: str | Path) -> None:
    from eri.realtime.outputs import open_for_writing

    with open_for_writing(path, "benchmark JSON") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
