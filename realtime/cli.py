"""The ``eri`` command: one subcommand per job (docs/design.md, "The `eri` command").

Only the standard library and ``eri.choices`` are imported here, so ``eri --help`` answers at
once; each command imports what it needs when it runs.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import signal
import sys
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

from eri import __version__
from eri.argtypes import int_at_least, positive_float
from eri.choices import (
    BACKENDS,
    BENCHMARK_MODES,
    CALIBRATION_METHODS,
    DEFAULT_ARCH,
    ENGINE_MODES,
    SUBJECT_POLICIES,
    available_formats,
    available_precisions,
    calibrated_formats,
)
from eri.errors import EriError
from eri.realtime.writable import check_writable

log = logging.getLogger("eri")

EXIT_USER_ERROR = 1
EXIT_INTERRUPTED = 130


class UserError(EriError):
    """A wrong command-line argument; its message is one sentence saying how to fix it."""


# `eri benchmark` defaults, sized to finish in about two minutes on an idle 2-core CPU (the
# test suite checks they match eri.realtime.benchmark, which this module must not import).
BENCH_WARMUP = 16  # frames before timing starts: two offline batches of 8
BENCH_MIN_FRAMES = 2 * BENCH_WARMUP  # fewer measured frames give no meaningful FPS
BENCH_FRAMES = 64
BENCH_REPEATS = 2
BENCH_BACKENDS = "onnxruntime"
BENCH_MODES = "streaming,recompute"


# --------------------------------------------------------------------------- checks before work
def plot_extensions() -> list[str]:
    """File extensions matplotlib can save a figure as (png, pdf, svg, jpg, ...), sorted."""
    from matplotlib.backend_bases import FigureCanvasBase

    return sorted(FigureCanvasBase.get_supported_filetypes())


def check_plot_path(path: str | Path) -> Path:
    """The plot's extension must be one matplotlib writes (png, pdf, svg, ...)."""
    ext = Path(path).suffix.lower().lstrip(".")
    known = plot_extensions()
    if ext not in known:
        shown = f".{ext}" if ext else "no extension"
        raise UserError(
            f"--plot {path} has {shown}, which matplotlib cannot write; end it in .png "
            f"(or one of {', '.join('.' + e for e in known if e != 'png')})."
        )
    return check_writable(path, "plot", "--plot")


# --------------------------------------------------------------------------- info / models
def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def collect_info() -> dict[str, Any]:
    """Versions, cameras, microphones, GPUs and backends, as a JSON-able dict."""
    from eri.realtime.backends import available_backends

    dists = [
        "eri-live",
        "torch",
        "onnx",
        "onnxruntime",
        "onnxruntime-gpu",
        "tensorrt",
        "mediapipe",
        "opencv-contrib-python",
        "opencv-python",
        "av",
        "numpy",
        "sounddevice",
        "PySide6-Essentials",
        "PySide6",
        "pyqtgraph",
    ]
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "versions": {d: v for d in dists if (v := _version(d)) is not None},
    }
    import torch

    info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    info["backends"] = available_backends()
    try:
        from eri.realtime.sources import list_cameras, list_microphones, microphone_status

        ok, why = microphone_status()
        info["microphone_support"] = {"available": ok, "note": why}
        info["microphones"] = list_microphones() if ok else []
        info["cameras"] = list_cameras()
    except ImportError as exc:  # capture layer missing from a partial install
        info["capture"] = f"unavailable: {exc}"
    return info


def cmd_info(args: argparse.Namespace) -> int:
    info = collect_info()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(
        f"ERI Live {info['versions'].get('eri-live', '?')} on Python {info['python']}, "
        f"{info['platform']}, {info['cpu_count']} CPUs"
    )
    print("Versions:")
    for name, ver in info["versions"].items():
        print(f"  {name:24s} {ver}")
    print("GPUs:        " + (", ".join(info["gpus"]) or "none (CUDA not available)"))
    print("Backends:")
    for name, status in info["backends"].items():
        print(f"  {name:12s} {status}")
    if "microphone_support" in info:
        mic = info["microphone_support"]
        print(
            "Microphones: "
            + (
                ", ".join(str(m.get("name", m)) for m in info["microphones"])
                or ("none found" if mic["available"] else mic["note"])
            )
        )
        cams = info["cameras"]
        print(
            "Cameras:     "
            + (
                ", ".join(
                    f"{c.get('index', '?')}: {c.get('width', '?')}x{c.get('height', '?')}"
                    for c in cams
                )
                or "none found"
            )
        )
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from eri.models import get_model_class, list_models

    for name in list_models():
        cls = get_model_class(name)
        doc = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        default = " (default)" if name == DEFAULT_ARCH else ""
        audio = "visual+audio" if cls.default_audio is not None else "visual"
        print(f"{name:12s} {audio:13s} {doc}{default}")
    return 0


# --------------------------------------------------------------------------- export
def cmd_export(args: argparse.Namespace) -> int:
    from eri.models.bundle import load_bundle, record_export
    from eri.models.export import (
        FP32_TOLERANCE,
        ONNX_ERROR_LABEL,
        compare_onnx,
        export_format,
        export_onnx,
    )

    fmt = export_format(args.format)
    check_calibration_args(args, fmt.precision)
    bundle = load_bundle(args.bundle)
    out_dir = Path(args.out) if args.out else bundle.path
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / ".eri-write-test"
        probe.touch()
        probe.unlink()
    except OSError as exc:
        raise UserError(
            f"Cannot write to {out_dir} ({exc.strerror}); pass a writable --out."
        ) from None
    if fmt.runtime == "tensorrt":
        return export_engine_format(args, bundle, fmt, out_dir)
    if fmt.precision != "fp32":
        return export_precision_variant(args, bundle, fmt, out_dir)
    paths = export_onnx(bundle.model, out_dir)
    for graph, path in paths.items():
        log.info("wrote %s", path)
        if out_dir == bundle.path:
            record_export(
                bundle.path,
                path.name,
                {"file": path.name, "format": fmt.name, "precision": fmt.precision, "graph": graph},
            )
    if args.check:
        diffs = compare_onnx(bundle.model, paths)
        worst = max(diffs.values())
        for name, diff in diffs.items():
            print(f"{name}: {ONNX_ERROR_LABEL} = {diff:.3e}")
        if worst > FP32_TOLERANCE:
            raise UserError(
                f"ONNX Runtime differs from torch by {worst:.3e} (relative to max(1, max |torch|))"
                f" > {FP32_TOLERANCE}; the export is not faithful, report this with the bundle."
            )
        print(f"OK: within {FP32_TOLERANCE:g} relative to max(1, max |torch|)")
    return 0


def check_calibration_args(args: argparse.Namespace, precision: str) -> None:
    """--calib / --calib-method go with the calibrated (int8) formats only, and those need it."""
    if precision == "int8" and not args.calib:
        raise UserError(
            f"--format {args.format} needs a calibration cache: run `eri calibrate "
            f"{args.bundle} --data MEDIA_DIR --out CALIB`, then pass --calib CALIB."
        )
    if precision != "int8" and (args.calib or args.calib_method):
        raise UserError(
            f"--calib and --calib-method are for {', '.join(calibrated_formats())} only; "
            f"drop them for --format {args.format}."
        )


def export_precision_variant(args: argparse.Namespace, bundle: Any, fmt: Any, out_dir: Path) -> int:
    """`eri export --format onnx-fp16 | onnx-int8`: the variant, checked before it is moved into
    place with --check, and recorded in bundle.json when written beside the bundle."""
    from eri.realtime.variants import export_variant

    report = export_variant(
        bundle, fmt.name, out_dir, calib=args.calib, method=args.calib_method, check=args.check
    )
    extra = {}
    if fmt.precision == "int8":
        method = args.calib_method or CALIBRATION_METHODS[0]
        extra["calibration"] = {"cache": str(Path(args.calib).resolve()), "method": method}
    return _install_report(
        args, bundle, fmt, out_dir, report, f"The {fmt.precision} export differs", extra
    )


def _install_report(
    args: argparse.Namespace,
    bundle: Any,
    fmt: Any,
    out_dir: Path,
    report: Any,
    what: str,
    extra: dict[str, Any],
) -> int:
    """Print an export's check, refuse one that was not written, log the files and record
    them in bundle.json when they were written beside it (``extra``: format-specific facts)."""
    from eri.models.bundle import record_export

    for line in report.lines():
        print(line)
    if not report.installed:
        raise UserError(
            f"{what} from fp32 torch beyond the tolerance ({report.tolerance:g}), so it was "
            "not written; report this with the bundle."
        )
    for graph, path in report.paths.items():
        log.info("wrote %s", path)
        if out_dir == bundle.path:
            info = {"file": path.name, "format": fmt.name, "precision": fmt.precision}
            record_export(bundle.path, path.name, {**info, **extra, "graph": graph})
    if args.check:
        print(f"OK: within {report.tolerance:g}")
    return 0


def export_engine_format(args: argparse.Namespace, bundle: Any, fmt: Any, out_dir: Path) -> int:
    """`eri export --format engine | engine-fp16 | engine-int8`: TensorRT engines built on this
    GPU from the precision's ONNX (int8: the Q/DQ export is made from --calib first), checked
    against fp32 torch with --check, and recorded in bundle.json when written beside it."""
    from eri.models.engine import check_precision_supported, current_device
    from eri.models.export import export_format
    from eri.models.precision import variant_paths
    from eri.realtime.variants import export_engines

    device = current_device()  # no GPU, or one without this precision: refused before work
    check_precision_supported(fmt.precision, device, args.bundle)
    onnx = None
    if fmt.precision == "int8":
        export_precision_variant(args, bundle, export_format("onnx-int8"), out_dir)
        onnx = variant_paths(out_dir, "onnx-int8")
    report = export_engines(bundle, fmt.name, out_dir, onnx=onnx, check=args.check)
    extra = {"gpu": device.gpu, "tensorrt": device.tensorrt}
    return _install_report(
        args, bundle, fmt, out_dir, report, f"The {fmt.name} engines differ", extra
    )


def cmd_calibrate(args: argparse.Namespace) -> int:
    """`eri calibrate BUNDLE --data DIR --out CALIB`: sample face crops and head windows from
    media files or recorded sessions through the real pipeline into a calibration cache."""
    data = Path(args.data)
    if not data.exists():
        raise UserError(
            f"--data {data} does not exist; pass a folder of videos or recorded sessions "
            "with faces."
        )
    out = Path(args.out)
    if out.is_file() or (
        out.is_dir() and any(out.iterdir()) and not (out / "calibration.json").is_file()
    ):
        raise UserError(
            f"--out {out} is not empty and not a calibration cache; choose a new folder."
        )
    check_writable(out / "calibration.json", "calibration cache", "--out")
    from eri.calibration import calibrate
    from eri.calibration.data import media_files
    from eri.models.bundle import load_bundle
    from eri.realtime.variants import HELD_OUT_FRACTION

    files = media_files(data)  # no media: refused before loading the model
    bundle = load_bundle(args.bundle)
    for note in bundle.notes:
        log.warning("%s", note)
    result = calibrate(bundle, data, out, held_out=HELD_OUT_FRACTION, refresh=True)
    log.info(
        "wrote calibration cache %s: %d crops and %d windows from %d file(s), %.0f%% more held "
        "out for `eri export --check`; next: eri export %s --format onnx-int8 --calib %s",
        out,
        result.num_faces,
        result.num_windows,
        len(files),
        100 * HELD_OUT_FRACTION / (1 - HELD_OUT_FRACTION),
        args.bundle,
        out,
    )
    return 0


# --------------------------------------------------------------------------- analyze
def load_bundle_arg(args: argparse.Namespace):
    """``--model BUNDLE``, or an untrained ``--arch`` model (announced loudly)."""
    from eri.models import list_models
    from eri.models.bundle import load_bundle

    arch = getattr(args, "arch", None) or DEFAULT_ARCH
    if args.model is None and arch not in list_models():
        raise UserError(
            f"Unknown architecture {arch!r}; choose one of: {', '.join(list_models())}."
        )
    bundle = load_bundle(args.model, arch=arch)
    for note in bundle.notes:
        log.warning("%s", note)
    return bundle


def _load_model(args: argparse.Namespace, threads: int = 0, *, live: bool = False):
    """The bundle and backend the user asked for; an untrained model is announced loudly.
    ``threads`` 0: the runtime's choice (offline runs); ``live``: torch on the CPU runs in its
    own process (:func:`~eri.realtime.backend_process.live_backend`)."""
    from eri.realtime.backend_process import live_backend
    from eri.realtime.backends import create_backend

    bundle = load_bundle_arg(args)
    make = live_backend if live else create_backend
    backend = make(bundle, args.backend, args.precision, threads)
    log.info("Model %s on %s", bundle.name, backend.describe())
    return bundle, backend


def cmd_analyze(args: argparse.Namespace) -> int:
    from eri.realtime.analyze import analyze

    media = Path(args.media)
    if not media.exists():
        raise UserError(f"{media} does not exist; pass a video, audio file or session folder.")
    if args.plot:
        check_plot_path(args.plot)
    if args.out:
        check_writable(args.out, "predictions CSV", "--out")
    if args.json:
        check_writable(args.json, "JSON summary", "--json")
    bundle, backend = _load_model(args)
    result = analyze(
        media,
        bundle,
        backend,
        mode=args.mode,
        csv_path=args.out,
        plot_path=args.plot,
        json_path=args.json,
        progress=not args.no_progress,
        subject=args.subject,
    )
    s = result.summary
    log.info(
        "%d rows in %.1f s (%.1f frames/s); face on %.1f%%, audio on %.1f%% of rows%s",
        s["rows"],
        s["wall_s"],
        s["fps"] or 0.0,
        100 * s["face_detected_fraction"],
        100 * s["audio_present_fraction"],
        "" if s["has_audio"] else f" ({s['audio_note'] or 'no audio'})",
    )
    for what, path in (("CSV", args.out), ("plot", args.plot), ("JSON", args.json)):
        if path:
            log.info("wrote %s %s", what, path)
    if not args.out and not args.plot and not args.json:
        means = ", ".join(f"{k} {v['mean']:.3f}" for k, v in s["emotions"].items() if v)
        print(f"mean intensities: {means}")
    return 0


# --------------------------------------------------------------------------- record
def cmd_record(args: argparse.Namespace) -> int:
    """``eri record``: a session folder from a camera, file or synthetic source, headless."""
    from eri.realtime.backends import cpu_threads
    from eri.realtime.session.record import open_record_source, record
    from eri.realtime.session.recorder import check_session_dir

    check_session_dir(args.out)
    bundle, backend = _load_model(args, threads=cpu_threads(), live=True)  # a core to capture
    source = open_record_source(args.source, mic=args.mic, fast=args.fast, duration_s=args.duration)
    result = record(args.out, source, bundle, backend, fast=args.fast)
    return EXIT_INTERRUPTED if result.interrupted else 0


# --------------------------------------------------------------------------- benchmark
def cmd_benchmark(args: argparse.Namespace) -> int:
    is_camera = args.source.isdigit()
    if args.source != "synthetic" and not is_camera and not Path(args.source).exists():
        raise UserError(
            f"{args.source} does not exist; pass a video file, a camera index or `synthetic`."
        )
    if args.json:
        check_writable(args.json, "benchmark JSON", "--json")
    from eri.realtime.benchmark import benchmark, format_table, write_json

    bundle = load_bundle_arg(args)
    result = benchmark(
        bundle,
        backends=args.backends,
        precisions=args.precisions,
        modes=args.mode,
        source=args.source,
        frames=args.frames,
        repeats=args.repeats,
        threads=args.threads,
        pace_fps=args.pace_fps,
        progress=not args.no_progress,
    )
    print(format_table(result))
    if args.json:
        write_json(result, args.json)
        log.info("wrote %s", args.json)
    return 0


# --------------------------------------------------------------------------- bundle
def cmd_bundle(args: argparse.Namespace) -> int:
    """Write an untrained bundle of ``--arch`` (its backbone from ``--pretrained`` if given)."""
    out = Path(args.out)
    if out.exists():
        raise UserError(f"{out} already exists; choose another --out or remove it first.")
    check_writable(out / "bundle.json", "bundle", "--out")
    if args.pretrained and not Path(args.pretrained).is_file():
        raise UserError(
            f"--pretrained {args.pretrained} does not exist; pass a backbone weights file "
            "(.safetensors, .pt or .pth)."
        )
    from eri.models import list_models

    if args.arch not in list_models():
        raise UserError(
            f"Unknown architecture {args.arch!r}; choose one of: {', '.join(list_models())}."
        )
    from eri.models.bundle import save_bundle, untrained_bundle

    bundle = untrained_bundle(args.arch)
    provenance: dict[str, Any] = {"created_by": "eri bundle"}
    if args.pretrained:
        from eri.models.weights import load_backbone_weights

        report = load_backbone_weights(bundle.model, args.pretrained)
        provenance["backbone_weights"] = {"file": str(args.pretrained), "load": report.summary()}
    save_bundle(bundle.model, out, trained=False, provenance=provenance)
    what = "pretrained backbone, untrained head" if args.pretrained else "random weights"
    log.info("wrote an untrained %s bundle (%s) to %s", args.arch, what, out)
    return 0


# --------------------------------------------------------------------------- view
def cmd_view(args: argparse.Namespace) -> int:
    """The viewer window (PySide6 + pyqtgraph, imported only here)."""
    from eri.realtime.gui import require_qt

    require_qt()
    source = args.source
    if (
        source is not None
        and not source.strip().isdigit()
        and not source.strip().lower().startswith("synthetic")
        and not Path(source).exists()
    ):
        raise UserError(
            f"{source} does not exist; pass a camera index, a video file, a session folder "
            "or synthetic."
        )
    if args.screenshot:
        if Path(args.screenshot).suffix.lower() != ".png":
            raise UserError(f"--screenshot {args.screenshot} must end in .png.")
        check_writable(args.screenshot, "screenshot", "--screenshot")
    if args.record:
        record = Path(args.record)
        if record.exists() and (not record.is_dir() or any(record.iterdir())):
            raise UserError(
                f"--record {record} already exists and is not an empty folder; choose a new "
                "folder (a session is never written over)."
            )
        check_writable(record / "session.json", "session", "--record")
    bundle = load_bundle_arg(args) if args.model else None
    from eri.realtime.gui.app import ViewerOptions, run_viewer

    options = ViewerOptions(
        source=source,
        mic=args.mic,
        model=args.model,
        arch=args.arch,
        backend=args.backend,
        precision=args.precision,
        record=args.record,
        exit_after=args.exit_after,
        screenshot=args.screenshot,
        bundle=bundle,
    )
    return run_viewer(options)


# --------------------------------------------------------------------------- parser
def _subject(text: str) -> str | int:
    if text in SUBJECT_POLICIES:
        return text
    if text.isdigit():
        return int(text)
    raise argparse.ArgumentTypeError("use largest, center or a face index (0, 1, ...)")


def _comma_list(kind: str, allowed: tuple[str, ...] | list[str]) -> Callable[[str], list[str]]:
    """A comma-separated list whose every item is one of ``allowed`` (else argparse's exit 2)."""

    def parse(text: str) -> list[str]:
        items = [x.strip() for x in text.split(",") if x.strip()]
        bad = [x for x in items if x not in allowed]
        if bad or not items:
            what = f"unknown {kind} {', '.join(map(repr, bad))}" if bad else f"no {kind} given"
            raise argparse.ArgumentTypeError(
                f"{what}; give a comma-separated list of {', '.join(allowed)}"
            )
        return list(dict.fromkeys(items))

    return parse


def add_model_options(p: argparse.ArgumentParser, *, runtime: bool = True) -> None:
    """--model and --arch; with ``runtime`` also --backend and --precision."""
    p.add_argument("--model", help="model bundle directory (default: an untrained --arch model)")
    p.add_argument(
        "--arch", default=DEFAULT_ARCH, help="architecture of the untrained model (eri models)"
    )
    if runtime:
        p.add_argument("--backend", default="auto", choices=["auto", *BACKENDS])
        p.add_argument("--precision", default="fp32", choices=available_precisions())


def add_source_options(
    p: argparse.ArgumentParser, source_help: str, *, default: str | None, mic_help: str | None
) -> None:
    """--source (with its command's default and help) and, when ``mic_help`` is given, --mic."""
    p.add_argument("--source", default=default, help=source_help)
    if mic_help is not None:
        p.add_argument("--mic", default=None, help=mic_help)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="eri", description="ERI Live: real-time Emotional Reaction Intensity."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("info", help="versions, cameras, microphones, GPUs, backends")
    p.add_argument("--json", action="store_true", help="print as JSON")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("models", help="registered architectures")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser(
        "view",
        help="live viewer window",
        description="Open the viewer: the camera image with the tracked face, the seven curves "
        "and the audio level, live from a camera, a video file or the synthetic face; a "
        "recorded session folder is replayed. Options not given take the viewer's saved "
        "settings.",
    )
    add_source_options(
        p,
        "camera index, video file, session folder or synthetic (default: 0)",
        default=None,
        mic_help="microphone name or index, or none (visual only)",
    )
    add_model_options(p)
    p.set_defaults(arch=None, backend=None)  # not given: the viewer's saved choice
    p.add_argument("--record", metavar="DIR", help="record a session into this new folder")
    p.add_argument(
        "--exit-after", type=positive_float, metavar="S", help="close the window after S seconds"
    )
    p.add_argument(
        "--screenshot", metavar="PNG", help="save the window as a PNG when it closes (scripts)"
    )
    p.set_defaults(func=cmd_view)

    p = sub.add_parser(
        "record",
        help="record a session without a window",
        description="Record a session folder (video.mp4, audio.wav, predictions.csv, "
        "markers.csv, session.json, report.png) while running the model live; stops at the "
        "end of the source, after --duration seconds, or on Ctrl-C / SIGTERM.",
    )
    p.add_argument(
        "--out", required=True, metavar="DIR", help="session folder to create (new or empty)"
    )
    add_source_options(
        p,
        "camera index, video file, session folder, or synthetic (endless; synthetic:N "
        "for N frames) (default: 0)",
        default="0",
        mic_help="microphone name or index, or none (visual-only)",
    )
    p.add_argument("--duration", type=positive_float, metavar="S", help="stop after S seconds")
    p.add_argument(
        "--fast",
        action="store_true",
        help="files: run as fast as possible instead of in real time (every frame is still "
        "recorded; inference skips frames it has no time for)",
    )
    add_model_options(p)
    p.set_defaults(func=cmd_record)

    p = sub.add_parser("analyze", help="run the pipeline over a video or audio file")
    p.add_argument("media")
    add_model_options(p)
    p.add_argument("--out", help="CSV of per-frame intensities")
    p.add_argument("--plot", help="image of the seven curves (.png, .pdf, .svg, ...)")
    p.add_argument("--json", help="JSON summary")
    p.add_argument("--mode", default="streaming", choices=ENGINE_MODES)
    p.add_argument(
        "--subject",
        default="largest",
        type=_subject,
        help="face to follow: largest (default), center, or an index counted left to right",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_analyze)

    from eri.training.cli import add_train_parser  # torch-free until the command runs

    add_train_parser(sub)

    from eri.training.evaluate import add_evaluate_parser  # torch-free until the command runs

    add_evaluate_parser(sub)

    p = sub.add_parser("export", help="export a bundle to ONNX or TensorRT")
    p.add_argument("bundle")
    p.add_argument("--format", default="onnx", choices=available_formats())
    p.add_argument("--out", help="output directory (default: the bundle itself)")
    p.add_argument(
        "--check",
        action="store_true",
        help="compare ONNX Runtime with torch and print the largest difference (int8: and the "
        "per-emotion correlation on held-out windows)",
    )
    p.add_argument(
        "--calib",
        metavar="CALIB",
        help=f"calibration cache from `eri calibrate` ({', '.join(calibrated_formats())} only)",
    )
    p.add_argument(
        "--calib-method",
        choices=CALIBRATION_METHODS,
        help=f"how int8 ranges are chosen (default: {CALIBRATION_METHODS[0]})",
    )
    p.set_defaults(func=cmd_export)

    p = sub.add_parser(
        "bundle",
        help="write an untrained model bundle (optionally with a pretrained backbone)",
        description="Write a model bundle directory of --arch: random weights from a fixed seed, "
        'or its backbone loaded from --pretrained; either way marked "trained": false. '
        "Use it with --model, or export it with `eri export DIR`.",
    )
    p.add_argument("--arch", default=DEFAULT_ARCH, help="architecture (eri models)")
    p.add_argument("--out", required=True, help="bundle directory to create (must not exist)")
    p.add_argument(
        "--pretrained",
        metavar="PATH",
        help="backbone weights (torchvision-style ImageNet or AffectNet ResNet/VGG state dict)",
    )
    p.set_defaults(func=cmd_bundle)

    p = sub.add_parser(
        "calibrate",
        help="INT8 calibration data from videos",
        description="Run the videos (or recorded sessions) in --data through the pipeline and "
        "keep a sample of face crops and windows in --out, for `eri export BUNDLE --format "
        "onnx-int8 --calib CALIB` (a quarter more is held out for its --check).",
    )
    p.add_argument("bundle", help="model bundle directory")
    p.add_argument("--data", required=True, help="folder of videos or recorded sessions")
    p.add_argument("--out", required=True, help="calibration cache folder to write")
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser(
        "benchmark",
        help="measure per-stage latency and FPS",
        description="Run every backend x precision x mode --repeats times, interleaved, and "
        "print per-stage latency, end-to-end FPS and model-only time. Each run skips "
        f"{BENCH_WARMUP} warm-up frames, then times --frames frames (rounded up to whole "
        "8-frame batches). The defaults take about two minutes on an idle 2-core CPU.",
    )
    add_model_options(p, runtime=False)
    add_source_options(
        p, "video file, camera index or synthetic", default="synthetic", mic_help=None
    )
    p.add_argument(
        "--backends",
        default=BENCH_BACKENDS,
        type=_comma_list("backend", BACKENDS),
        help=f"comma list of {', '.join(BACKENDS)} (default: {BENCH_BACKENDS})",
    )
    p.add_argument(
        "--precisions",
        default="fp32",
        type=_comma_list("precision", available_precisions()),
        help=f"comma list of {', '.join(available_precisions())} (default: fp32)",
    )
    p.add_argument(
        "--mode",
        default=BENCH_MODES,
        type=_comma_list("mode", BENCHMARK_MODES),
        help="comma list of streaming, recompute, live (paced at the source's rate) "
        f"(default: {BENCH_MODES})",
    )
    p.add_argument(
        "--frames",
        type=int_at_least(BENCH_MIN_FRAMES, f" (twice the {BENCH_WARMUP} warm-up frames)"),
        default=BENCH_FRAMES,
        help=f"measured frames per run, at least {BENCH_MIN_FRAMES} (default: {BENCH_FRAMES})",
    )
    p.add_argument(
        "--repeats",
        type=int_at_least(1),
        default=BENCH_REPEATS,
        help=f"runs per configuration, interleaved (default: {BENCH_REPEATS})",
    )
    p.add_argument(
        "--threads",
        type=int_at_least(0),
        default=0,
        help="intra-op threads (default 0: the runtime's choice)",
    )
    p.add_argument(
        "--pace-fps",
        type=positive_float,
        help="frame rate the live mode plays the source at (default: its own)",
    )
    p.add_argument("--json", help="write the full result as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_benchmark)
    return parser


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    # SIGTERM (kill, a service manager, a closed terminal's job control) stops a command the way
    # Ctrl-C does: outputs written so far are closed intact, exit status 130.
    installed, previous = False, None
    try:
        previous = signal.signal(signal.SIGTERM, _raise_interrupt)
        installed = True
    except ValueError:  # not the main thread (main() called from a worker): leave it alone
        pass
    try:
        return _main(argv)
    except KeyboardInterrupt:
        print("eri: interrupted; outputs written so far are kept.", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        if installed:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s" if args.verbose else "%(message)s",
    )
    # Our own packages speak at INFO; third-party libraries (exporters, MediaPipe) only warn.
    logging.getLogger("eri").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    try:
        return int(args.func(args) or 0)
    except EriError as exc:
        log.error("error: %s", exc)
        return EXIT_USER_ERROR


if __name__ == "__main__":
    sys.exit(main())
