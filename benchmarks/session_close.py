"""Closing a long session (docs/benchmarks.md, "Recording"): what ``SessionRecorder.close``
costs once ``--minutes`` of output rows at 30 fps are in predictions.csv, with the face lost
in ``--lost`` of the frames (report.png shades every lost span). Video and audio are left out
(a few frames only), so the time is the CSV read-back, report.png and session.json.

    .venv/bin/python benchmarks/session_close.py --minutes 30 --repeats 3 [--lost 0.01]
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from _sampling import machine, setup_logging

log = logging.getLogger("eri.benchmarks.session_close")
FPS = 30.0


def close_once(rows: int, lost: float, seed: int) -> float:
    """Seconds ``close()`` takes on a recorder holding ``rows`` output rows."""
    from eri.realtime.pipeline import FrameOutput
    from eri.realtime.session.recorder import SessionRecorder
    from eri.realtime.sources.events import VideoFrame

    rng = np.random.default_rng(seed)
    out = Path(tempfile.mkdtemp(prefix="eri-close-")) / "session"
    info = {"model": {"architecture": "dual_branch", "trained": False}}
    rec = SessionRecorder(out, fps=FPS, width=64, height=48, has_audio=False, info=info)
    image = np.zeros((48, 64, 3), np.uint8)
    for i in range(int(FPS)):
        rec.on_event(VideoFrame(image=image, time_s=i / FPS, index=i))
    values = rng.random((rows, 7)).astype(np.float32)
    face = rng.random(rows) >= lost
    for i in range(rows):
        rec.add_output(
            FrameOutput(
                time_s=i / FPS,
                frame_index=i,
                face_detected=bool(face[i]),
                audio_present=False,
                intensities=values[i],
            )
        )
    time.sleep(1.0)  # as in a live session: the writer has caught up before the user stops
    start = time.perf_counter()
    rec.close()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--lost", type=float, default=0.01, help="share of face-lost frames")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    setup_logging(log)
    rows = int(args.minutes * 60 * FPS)
    times = [close_once(rows, args.lost, seed) for seed in range(args.repeats)]
    result = {
        "machine": machine(),
        "rows": rows,
        "lost": args.lost,
        "close_s": times,
        "close_s_median": statistics.median(times),
    }
    log.info(
        "%d rows, %.0f %% face lost: close %s s (median %.2f)",
        rows,
        100 * args.lost,
        ", ".join(f"{t:.2f}" for t in times),
        result["close_s_median"],
    )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
