"""The viewer beside other CPU-bound work (docs/benchmarks.md, "Under contention").

``--busy`` processes (default: one per core) spin in pure Python while a real viewer window
(Qt offscreen) runs the synthetic face at 30 fps paced in real time, recording a session, on
each CPU backend in turn. Per backend: frames processed per second and frame arrival -> output
p95 (``benchmarks/viewer.py`` does the measuring), against the targets of at least
:data:`MIN_FPS` frames/s and p95 under :data:`MAX_P95_MS` ms.

    QT_QPA_PLATFORM=offscreen .venv/bin/python benchmarks/contention.py --seconds 20 \\
        [--backends torch,onnxruntime] [--busy 2] [--threads N] [--json out.json]
        [--torch-in-process]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from _sampling import machine, setup_logging
from viewer import run

log = logging.getLogger("eri.benchmarks.contention")

MIN_FPS = 15.0
MAX_P95_MS = 150.0
BUSY_LOOP = "while True: pass"


def start_busy(n: int) -> list[subprocess.Popen]:
    """``n`` processes spinning in pure Python (CPU-bound work beside the viewer)."""
    return [subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) for _ in range(n)]


def stop_busy(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        proc.kill()
    for proc in procs:
        proc.wait(10)


def warm_up(backends: list[str]) -> None:
    """Build each backend once before the load starts (the ONNX export is cached)."""
    from eri.models.bundle import untrained_bundle
    from eri.realtime.backends import create_backend

    bundle = untrained_bundle()
    for name in backends:
        create_backend(bundle, name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="measured time per backend")
    parser.add_argument("--backends", default="torch,onnxruntime", help="comma list")
    parser.add_argument("--busy", type=int, default=os.cpu_count() or 2, help="busy processes")
    parser.add_argument("--threads", type=int, help="inference threads (default: the viewer's)")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument(
        "--torch-in-process",
        action="store_true",
        help="run torch in the viewer's process (as before the live commands moved it to its own)",
    )
    args = parser.parse_args()
    if args.torch_in_process:
        import eri.realtime.backend_process as backend_process
        from eri.realtime.backends import create_backend

        backend_process.live_backend = lambda bundle, name, precision, threads: create_backend(
            bundle, name, precision, threads=threads
        )
    setup_logging(log)
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    warm_up(backends)
    results: dict = {"machine_before": machine(), "busy_processes": args.busy, "runs": {}}
    root = Path(tempfile.mkdtemp(prefix="eri-contention-"))
    busy = start_busy(args.busy)
    try:
        for name in backends:
            r = run(args.seconds, "synthetic", name, 30.0, record=root / name, threads=args.threads)
            fps, p95 = r["frames_processed_per_s"], r["arrival_to_output_ms"]["p95"]
            r["meets_targets"] = fps >= MIN_FPS and p95 is not None and p95 < MAX_P95_MS
            results["runs"][name] = r
            stages = {k: v["p50"] for k, v in r["stages_ms"].items()}
            log.info(
                "%-12s %5.1f frames/s processed (%d captured, %d skipped), arrival -> output "
                "p50/p95 %s/%s ms, drawn p95 %s ms, load %s: %s; stage p50 ms %s",
                name,
                fps,
                r["frames_captured"],
                r["frames_skipped"],
                r["arrival_to_output_ms"]["p50"],
                p95,
                r["arrival_to_drawn_ms"]["p95"],
                r["load_average_1m"]["p50"],
                "meets the targets" if r["meets_targets"] else "MISSES the targets",
                stages,
            )
    finally:
        stop_busy(busy)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
