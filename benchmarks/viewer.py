"""The viewer under load: a real window (offscreen), a 30 fps source paced in real time, ONNX
Runtime, for ``--seconds``; measures

- frame arrival -> curve point drawn (the redraw tick that hands the point to pyqtgraph), ms;
- frame arrival -> output (the pipeline alone, ``stages_ms["latency"]``), ms;
- frames captured / processed / skipped, outputs drawn per second;
- the GUI thread's longest stall: a 5 ms QTimer heartbeat, the largest gap between its ticks
  minus 5 ms;
- the 1-minute load average, every second.

    QT_QPA_PLATFORM=offscreen .venv/bin/python benchmarks/viewer.py --seconds 45 \\
        [--source synthetic|PATH] [--backend onnxruntime] [--record DIR] [--json out.json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import tempfile
import time
from pathlib import Path

from _sampling import (
    VIEWER_DISTS,
    machine,
    percentiles,
    sampled,
    setup_logging,
)

from eri.realtime.session.format import versions

log = logging.getLogger("eri.benchmarks.viewer")
HEARTBEAT_MS = 5
#: Longest wait for the model to load and the first points to be drawn.
START_TIMEOUT_S = 300.0


def run(
    seconds: float,
    source_spec: str,
    backend: str,
    fps: float,
    *,
    record: str | Path | None = None,
    threads: int | None = None,
) -> dict:
    """One viewer run of ``seconds`` after the first 30 points; records into ``record`` when
    given; ``threads``: inference threads (None: the viewer's default)."""
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
    options = ViewerOptions(
        source_object=source,
        backend=backend,
        mic="none",
        record=str(record) if record else None,
        threads=threads,
    )
    win = ViewerWindow(options, settings_for(Path(settings_dir) / "viewer.ini"))
    win.resize(1400, 720)
    win.show()
    win.controls.ask_report.setChecked(False)
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

    wait(lambda: win.curves.point_count >= 30 or win.worker.state == "failed", START_TIMEOUT_S)
    if win.worker.state == "failed":
        raise SystemExit(f"the pipeline failed: {win.worker.error}")
    worker = win.worker
    win.draw_latency_ms.clear()
    stats0 = source.stats()
    processed0, skipped0, drawn0 = worker.frames_processed, worker.skipped, win.outputs_drawn
    win.output_latency_ms.clear()
    win.stages_ms.clear()
    gaps.clear()
    heartbeat.start(HEARTBEAT_MS)
    loads: list[float] = []
    last[0] = t0 = time.perf_counter()
    app.processEvents()
    for _ in sampled(
        itertools.repeat(None), 1.0, lambda t: loads.append(os.getloadavg()[0]), seconds=seconds
    ):
        app.processEvents(QtCore.QEventLoop.ProcessEventsFlag.WaitForMoreEvents, 50)
    elapsed = time.perf_counter() - t0
    heartbeat.stop()
    draw = list(win.draw_latency_ms)
    win_output_latency = list(win.output_latency_ms)
    stages = list(win.stages_ms)
    names = sorted({k for st in stages for k in st} - {"latency"})
    captured = source.stats()["frames_read"] - stats0["frames_read"]
    processed = worker.frames_processed - processed0
    skipped = worker.skipped - skipped0
    drawn = win.outputs_drawn - drawn0
    info = worker.info
    recorder = win.recorder
    t_close = time.perf_counter()
    win.close()
    close_s = time.perf_counter() - t_close
    dispose(win)
    stall = max(gaps) - HEARTBEAT_MS if gaps else None
    return {
        "machine": {**machine(), "qt_platform": os.environ.get("QT_QPA_PLATFORM")},
        "load_average_1m": percentiles(loads, (50, 95)),
        "versions": versions(*VIEWER_DISTS),
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
        "frames_processed_per_s": round(processed / elapsed, 2),
        "arrival_to_drawn_ms": percentiles(draw),
        "arrival_to_output_ms": percentiles(win_output_latency),
        "stages_ms": {k: percentiles((st[k] for st in stages if k in st), (50, 95)) for k in names},
        "gui_heartbeat_gap_ms": percentiles(gaps, (50, 99)),
        "gui_longest_stall_ms": round(stall, 1) if stall is not None else None,
        "close_s": round(close_s, 3),
        "recording": None
        if recorder is None
        else {
            "frames_written": recorder.frames_written,
            "frames_dropped": recorder.frames_dropped,
            "error": str(recorder.error) if recorder.error else None,
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=45.0)
    parser.add_argument("--source", default="synthetic", help="synthetic or a video file (looped)")
    parser.add_argument("--fps", type=float, default=30.0, help="synthetic source frame rate")
    parser.add_argument("--backend", default="onnxruntime")
    parser.add_argument("--record", metavar="DIR", help="record a session into DIR meanwhile")
    parser.add_argument("--threads", type=int, help="inference threads (default: the viewer's)")
    parser.add_argument("--json", help="write the result here")
    args = parser.parse_args()
    setup_logging(log)
    result = run(
        args.seconds, args.source, args.backend, args.fps, record=args.record, threads=args.threads
    )
    text = json.dumps(result, indent=2)
    log.info("%s", text)
    if args.json:
        Path(args.json).write_text(text + "\n")


if __name__ == "__main__":
    main()
