"""The viewer under load: a real window (offscreen), a 30 fps source paced in real time, ONNX
Runtime, for ``--seconds``; measures

- frame arrival -> curve point drawn (the redraw tick that hands the point to pyqtgraph), ms;
- frame arrival -> output (the pipeline alone, ``stages_ms["latency"]``), ms;
- frames captured / processed / skipped, outputs drawn per second;
- the GUI thread's longest stall: a 5 ms QTimer heartbeat, the largest gap between its ticks
  minus 5 ms.

    QT_QPA_PLATFORM=offscreen .venv/bin/python benchmarks/viewer.py --seconds 45 \\
        [--source synthetic|PATH] [--backend onnxruntime] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import tempfile
import time
from importlib import metadata
from pathlib import Path

import numpy as np

log = logging.getLogger("eri.benchmarks.viewer")
HEARTBEAT_MS = 5


def _pct(values, qs=(50, 95, 99)) -> dict[str, float]:
    arr = np.asarray(list(values), np.float64)
    return {f"p{q}": round(float(np.percentile(arr, q)), 2) if arr.size else None for q in qs}


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in ("PySide6-Essentials", "pyqtgraph", "onnxruntime", "torch", "mediapipe", "numpy"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


def run(seconds: float, source_spec: str, backend: str, fps: float) -> dict:
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6 import QtCore

    from eri.realtime.gui.app import ViewerOptions, dispose, ensure_app
    from eri.realtime.gui.main_window import ViewerWindow, settings_for
    from eri.realtime.sources import FileSource, SyntheticSource

    app = ensure_app()
    if source_spec == "synthetic":
        source = SyntheticSource(num_frames=None, fps=fps, realtime=True)
    else:
        source = FileSource(source_spec, realtime=True, loop=True)
    settings_dir = tempfile.mkdtemp(prefix="eri-viewer-bench-")
    options = ViewerOptions(source_object=source, backend=backend, mic="none")
    win = ViewerWindow(options, settings_for(Path(settings_dir) / "viewer.ini"))
    win.resize(1400, 720)
    win.show()
    win.start()

    gaps: list[float] = []
    last = [time.perf_counter()]

    def beat() -> None:
        now = time.perf_counter()
        gaps.append((now - last[0]) * 1e3)
        last[0] = now

    heartbeat = QtCore.QTimer()
    heartbeat.setTimerType(QtCore.Qt.TimerType.PreciseTimer)
    heartbeat.timeout.connect(beat)

    def wait(pred, timeout_s: float) -> None:
        end = time.perf_counter() + timeout_s
        while not pred() and time.perf_counter() < end:
            app.processEvents(QtCore.QEventLoop.ProcessEventsFlag.AllEvents, 20)

    wait(lambda: win.curves.point_count >= 30 or win.worker.state == "failed", 120)
    if win.worker.state == "failed":
        raise SystemExit(f"the pipeline failed: {win.worker.error}")
    worker = win.worker
    win.draw_latency_ms.clear()
    stats0 = source.stats()
    processed0, skipped0, drawn0 = worker.frames_processed, worker.skipped, win.outputs_drawn
    win.output_latency_ms.clear()
    gaps.clear()
    heartbeat.start(HEARTBEAT_MS)
    last[0] = t0 = time.perf_counter()
    app.processEvents()
    while time.perf_counter() - t0 < seconds:
        app.processEvents(QtCore.QEventLoop.ProcessEventsFlag.WaitForMoreEvents, 50)
    elapsed = time.perf_counter() - t0
    heartbeat.stop()
    draw = list(win.draw_latency_ms)
    win_output_latency = list(win.output_latency_ms)
    captured = source.stats()["frames_read"] - stats0["frames_read"]
    processed = worker.frames_processed - processed0
    skipped = worker.skipped - skipped0
    drawn = win.outputs_drawn - drawn0
    info = worker.info
    t_close = time.perf_counter()
    win.close()
    close_s = time.perf_counter() - t_close
    dispose(win)
    stall = max(gaps) - HEARTBEAT_MS if gaps else None
    return {
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "platform": platform.platform(),
            "load_average_1m_at_end": round(os.getloadavg()[0], 2),
            "qt_platform": os.environ.get("QT_QPA_PLATFORM"),
        },
        "versions": _versions(),
        "source": source.name,
        "source_fps": source.fps,
        "backend": f"{info.backend} {info.precision} on {info.device}",
        "model": info.model,
        "seconds": round(elapsed, 1),
        "frames_captured": captured,
        "frames_processed": processed,
        "frames_skipped": skipped,
        "points_drawn": drawn,
        "points_per_s": round(drawn / elapsed, 2),
        "arrival_to_drawn_ms": _pct(draw),
        "arrival_to_output_ms": _pct(win_output_latency),
        "gui_heartbeat_gap_ms": _pct(gaps, (50, 99)),
        "gui_longest_stall_ms": round(stall, 1) if stall is not None else None,
        "close_s": round(close_s, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=45.0)
    parser.add_argument("--source", default="synthetic", help="synthetic or a video file (looped)")
    parser.add_argument("--fps", type=float, default=30.0, help="synthetic source frame rate")
    parser.add_argument("--backend", default="onnxruntime")
    parser.add_argument("--json", help="write the result here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("eri").setLevel(logging.WARNING)
    log.setLevel(logging.INFO)
    result = run(args.seconds, args.source, args.backend, args.fps)
    text = json.dumps(result, indent=2)
    log.info("%s", text)
    if args.json:
        Path(args.json).write_text(text + "\n")


if __name__ == "__main__":
    main()
