#!/usr/bin/env python
"""Model-level GPU benchmark: the GPU table of docs/benchmarks.md (``benchmarks/gpu.sh``).

For each architecture (its default config, T = 32 samples over 12.8 s):

- the streaming step on the device (encode one frame and, with audio, one audio token, append
  them to the window, run the head; :func:`eri.realtime.cuda_graph.streaming_step`), eager and
  captured in a CUDA graph, fp32 and fp16 (autocast), with the largest |graph - eager|
  difference;
- the backend step with numpy in and out (what the live pipeline calls): torch with and without
  CUDA graphs, TensorRT engines fp32 / fp16 / int8 when TensorRT is installed (int8 calibrated
  on random inputs: a speed number only), ONNX Runtime's CUDA provider when present;
- frame encoder throughput at batch 256, fp32 and fp16.

Every timestamp follows a device synchronisation. Prints a Markdown table headed by the GPU and
versions, and writes JSON. Needs torch, numpy and OpenCV (through ``eri.models``); ONNX export
adds onnxscript, fp16 ONNX onnxconverter-common: no MediaPipe, PyAV, Qt or scipy. Runs from a
bare checkout: when ``eri`` is not installed the repository folders are mapped onto it. Without
a GPU: ``--device cpu --quick`` (the CUDA rows then say why they did not run).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib.util
import json
import logging
import platform
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("eri.benchmarks.gpu_models")


def import_eri() -> None:
    """Make ``eri.models`` importable: installed, or this checkout's folders mapped onto the
    ``eri`` package (``eri/`` first, then the repository root for ``models/``, ``realtime/``)."""
    try:
        import eri
    except ImportError:
        sys.path.insert(0, str(ROOT))
        import eri
    if importlib.util.find_spec("eri.models") is None:
        eri.__path__.append(str(ROOT))


def timed(fn: Any, steps: int, warmup: int, sync: Any) -> list[float]:
    """``fn()`` run ``warmup`` times, then ``steps`` times with a device synchronisation
    before each timestamp: ms per call [steps]."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(steps):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def stats(ms: list[float], per_call: int = 1) -> dict[str, float]:
    import numpy as np

    p50, p95, p99 = (float(np.percentile(ms, q)) for q in (50, 95, 99))
    return {"p50": p50, "p95": p95, "p99": p99, "per_s": per_call * 1e3 / p50}


def versions(device: str) -> dict[str, Any]:
    import torch

    out: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "device": device,
        "gpu": None,
    }
    if device == "cuda":
        major, minor = torch.cuda.get_device_capability(0)
        out["gpu"] = torch.cuda.get_device_name(0)
        out["compute_capability"] = f"{major}.{minor}"
    for module in ("numpy", "onnxruntime", "tensorrt"):
        if importlib.util.find_spec(module) is not None:
            out[module] = getattr(__import__(module), "__version__", "?")
    return out


def _row(arch: str, what: str, precision: str, status: str = "ok", **kw: Any) -> dict[str, Any]:
    return {"arch": arch, "what": what, "precision": precision, "status": status, **kw}


def device_rows(arch: str, model: Any, args: argparse.Namespace, sync: Any) -> list[dict]:
    """The streaming step on the device, eager and CUDA graph, fp32 and fp16; the encoder at
    batch ``args.batch``."""
    import torch

    from eri.models.export import (
        AUDIO_TOKENS,
        FACES,
        AudioEncoderGraph,
        example_inputs,
        head_graph,
        head_input_names,
    )
    from eri.realtime.cuda_graph import autocast, capture, graphs_unavailable, streaming_step

    dev = args.device
    ex = example_inputs(model, 1)
    face = torch.from_numpy(ex[FACES]).to(dev)
    rest = [torch.from_numpy(ex[n]).to(dev) for n in head_input_names(model)]
    if model.has_audio:  # step(face, token, visual, audio_features, flags...)
        step = streaming_step(model, head_graph(model), AudioEncoderGraph(model))
        inputs = [face, torch.from_numpy(ex[AUDIO_TOKENS]).to(dev), *rest]
    else:
        step = streaming_step(model, head_graph(model))
        inputs = [face, *rest]
    rows = []
    for precision in ("fp32", "fp16"):
        fp16 = precision == "fp16"
        if fp16 and dev != "cuda":
            for what in ("step eager", "step CUDA graph", f"encoder batch {args.batch}"):
                rows.append(_row(arch, what, precision, "unavailable: fp16 runs on CUDA only"))
            continue
        amp = autocast(True) if fp16 else contextlib.nullcontext()
        with torch.no_grad(), amp:
            ms = timed(lambda: step(*inputs), args.steps, args.warmup, sync)
            eager = step(*inputs).float().cpu()
        rows.append(_row(arch, "step eager", precision, **stats(ms)))
        why = graphs_unavailable(dev)
        if why is None:
            graph = capture(step, inputs, fp16=fp16)
            ms = timed(lambda g=graph: g(*inputs), args.steps, args.warmup, sync)
            out = graph(*inputs).float().cpu()
            diff = float((out - eager).abs().max()) / max(1.0, float(eager.abs().max()))
            note = f"max |graph - eager| / max(1, |eager|) = {diff:.1e}"
            rows.append(_row(arch, "step CUDA graph", precision, **stats(ms), note=note))
        else:
            rows.append(_row(arch, "step CUDA graph", precision, f"unavailable: {why}"))
        faces = torch.rand(args.batch, 3, model.crop.size, model.crop.size, device=dev)
        with torch.no_grad(), amp:
            ms = timed(lambda x=faces: model.encode_frames(x), max(3, args.steps // 10), 2, sync)
        rows.append(_row(arch, f"encoder batch {args.batch}", precision, **stats(ms, args.batch)))
    return rows


def _fp16_onnx(bundle: Any) -> None:
    """The fp16 ONNX in the bundle's export cache; the range probe's audio tokens from the
    real front end need scipy, so without it they are synthetic at the same scale (|x| <= 1131:
    the audio front stays fp32 whatever the probe, the visual path is probed with real
    features)."""
    import numpy as np

    from eri.models.export import AUDIO_TOKENS, model_cache_dir, onnx_paths
    from eri.models.precision import export_fp16, graph_feeds, to_fp16, variant_paths

    model, fp32 = bundle.model, onnx_paths(bundle)
    target = variant_paths(model_cache_dir(model), "onnx-fp16", model)
    if all(p.is_file() for p in target.values()):
        return
    if importlib.util.find_spec("scipy") is not None:
        export_fp16(model, fp32, model_cache_dir(model))
        return
    from eri.models.export import example_inputs

    probe = example_inputs(model, 4)
    if AUDIO_TOKENS in probe:
        rng = np.random.default_rng(0)
        tokens = np.clip(300.0 * rng.standard_normal(probe[AUDIO_TOKENS].shape), -1131, 1131)
        probe[AUDIO_TOKENS] = tokens.astype(np.float32)
    for graph, path in fp32.items():
        to_fp16(path, target[graph], feeds=graph_feeds(path, probe))


def _int8_onnx(bundle: Any) -> None:
    """A Q/DQ int8 ONNX in the export cache, calibrated on random inputs (speed only)."""
    import numpy as np

    from eri.calibration import from_arrays
    from eri.calibration.quantize import export_int8
    from eri.models.export import (
        AUDIO_PRESENT,
        AUDIO_TOKENS,
        FACES,
        VISUAL,
        example_inputs,
        model_cache_dir,
        onnx_paths,
    )
    from eri.models.precision import variant_paths

    model = bundle.model
    if all(p.is_file() for p in variant_paths(model_cache_dir(model), "onnx-int8", model).values()):
        return
    ex = example_inputs(model, 16)
    tokens = None
    if model.has_audio:  # windows of raw tokens [16, T, F]
        t = model.window.num_samples
        tokens = np.resize(ex[AUDIO_TOKENS], (16, t, ex[AUDIO_TOKENS].shape[1]))
    data = from_arrays(ex[FACES], ex[VISUAL], tokens, ex.get(AUDIO_PRESENT))
    export_int8(model, onnx_paths(bundle), data, model_cache_dir(model), method="minmax")


def _backend(bundle: Any, name: str, precision: str, args: argparse.Namespace) -> Any:
    """The backend of one backend-level row (ONNX files and engines made on first use)."""
    import torch

    from eri.realtime.backends import BackendError, OnnxRuntimeBackend, TorchBackend

    if name == "torch graph" and args.device != "cuda":
        raise BackendError("CUDA graphs need a CUDA GPU")
    if name.startswith("torch"):
        own = copy.copy(bundle)
        own.model = copy.deepcopy(bundle.model)
        return TorchBackend(own, device=args.device, precision=precision, graphs="graph" in name)
    if args.device != "cuda" or not torch.cuda.is_available():
        raise BackendError("no CUDA GPU")
    if precision == "fp16":
        _fp16_onnx(bundle)
    elif precision == "int8":
        _int8_onnx(bundle)
    if name == "onnxruntime":
        import onnxruntime

        if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
            raise BackendError("this onnxruntime has no CUDAExecutionProvider")
        return OnnxRuntimeBackend(bundle, providers=["CUDAExecutionProvider"], precision=precision)
    from eri.choices import HAS_TENSORRT
    from eri.models.engine import current_device
    from eri.models.export import model_cache_dir
    from eri.realtime.backend_tensorrt import TensorRTBackend
    from eri.realtime.variants import export_engines, find_engines

    if not HAS_TENSORRT:
        raise BackendError("TensorRT is not installed")
    if find_engines(bundle, precision, current_device()).paths is None:
        fmt = {"fp32": "engine", "fp16": "engine-fp16", "int8": "engine-int8"}[precision]
        export_engines(bundle, fmt, model_cache_dir(bundle.model))
    return TensorRTBackend(bundle, precision)


BACKEND_ROWS = (
    ("torch", ("fp32", "fp16")),
    ("torch graph", ("fp32", "fp16")),
    ("tensorrt", ("fp32", "fp16", "int8")),
    ("onnxruntime", ("fp32", "fp16")),
)


def backend_rows(arch: str, args: argparse.Namespace, sync: Any) -> list[dict]:
    """The backend step with numpy in and out: encode_frames(face [1, 3, S, S]) +
    encode_audio(token [1, F]) (models with audio) + head(window)."""
    from eri.models.bundle import untrained_bundle
    from eri.models.export import AUDIO_TOKENS, FACES, example_inputs, head_args

    # The seeded untrained model `eri benchmark` runs without --model: its cached ONNX files
    # and engines serve both. On the CPU: exports start from there.
    bundle = untrained_bundle(arch)
    ex = example_inputs(bundle.model, 1)
    rows = []
    for name, precisions in BACKEND_ROWS:
        if name.split()[0] not in args.backends:
            continue
        if name in ("tensorrt", "onnxruntime") and arch not in args.engine_archs:
            continue  # exports and engine builds take minutes: the default architecture only
        for precision in precisions:
            what = f"backend {name}"
            try:
                backend = _backend(bundle, name, precision, args)
            except Exception as exc:  # noqa: BLE001 - the row says why
                rows.append(_row(arch, what, precision, f"unavailable: {exc}"))
                continue

            def run(b: Any = backend) -> None:
                b.encode_frames(ex[FACES])
                if AUDIO_TOKENS in ex:
                    b.encode_audio(ex[AUDIO_TOKENS])
                b.head(*head_args(ex))

            ms = timed(run, args.steps, args.warmup, sync)
            rows.append(_row(arch, what, precision, **stats(ms), note=backend.describe()))
    return rows


def table(result: dict[str, Any]) -> str:
    v = result["versions"]
    gpu = v.get("gpu") or "no GPU (device cpu)"
    head = [
        f"GPU: {gpu}"
        + (f" (compute capability {v['compute_capability']})" if v.get("gpu") else ""),
        "versions: "
        + ", ".join(
            f"{k} {v[k]}"
            for k in ("python", "torch", "cuda", "cudnn", "onnxruntime", "tensorrt", "numpy")
            if v.get(k)
        ),
        "",
        "| architecture | what | precision | status | p50 ms | p95 ms | p99 ms | per s | note |",
        "|" + "---|" * 9,
    ]
    for r in result["rows"]:
        if r["status"] != "ok":
            head.append(f"| {r['arch']} | {r['what']} | {r['precision']} | {r['status']} |||||")
            continue
        per = "frames/s" if r["what"].startswith("encoder") else "steps/s"
        head.append(
            f"| {r['arch']} | {r['what']} | {r['precision']} | ok | {r['p50']:.3f} | "
            f"{r['p95']:.3f} | {r['p99']:.3f} | {r['per_s']:.0f} {per} | {r.get('note', '')} |"
        )
    for arch, best in result["best_step_ms"].items():
        verdict = "under" if best < 0.5 else "over"
        head.append(f"- {arch}: fastest streaming step p50 {best:.3f} ms ({verdict} 0.5 ms)")
    return "\n".join(head)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--archs", default="", help="comma list (default: every registered one)")
    p.add_argument("--backends", default="torch,tensorrt,onnxruntime")
    p.add_argument(
        "--engine-archs",
        default="dual_branch",
        help="architectures with TensorRT and ONNX Runtime rows (exports and builds take minutes)",
    )
    p.add_argument("--steps", type=int, default=300, help="timed steps per row")
    p.add_argument("--warmup", type=int, default=30)
    p.add_argument("--batch", type=int, default=256, help="encoder throughput batch")
    p.add_argument("--quick", action="store_true", help="few steps, batch 8 (a smoke test)")
    p.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "gpu_models.json"))
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.warmup, args.batch = (
            min(args.steps, 5),
            min(args.warmup, 2),
            min(args.batch, 8),
        )
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    import_eri()
    import torch

    from eri.models import create_model, list_models

    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("torch sees no CUDA GPU; run on a GPU machine, or pass --device cpu --quick")
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
    archs = [a for a in args.archs.split(",") if a] or list_models()
    args.backends = [b for b in args.backends.split(",") if b]
    args.engine_archs = [a for a in args.engine_archs.split(",") if a]
    result: dict[str, Any] = {"versions": versions(args.device), "rows": [], "best_step_ms": {}}
    for arch in archs:
        log.info("%s: streaming step and encoder on %s", arch, args.device)
        torch.manual_seed(0)
        model = create_model(arch).eval().to(args.device)
        rows = device_rows(arch, model, args, sync)
        del model
        rows += backend_rows(arch, args, sync)
        steps = [r["p50"] for r in rows if r["status"] == "ok" and "step" in r["what"]]
        result["rows"] += rows
        if steps:
            result["best_step_ms"][arch] = min(steps)
        out = Path(args.json)  # written after each architecture: a cut run keeps its rows
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(json.dumps(result, indent=2) + "\n")
        tmp.replace(out)
    print(table(result))
    log.info("wrote %s", args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
