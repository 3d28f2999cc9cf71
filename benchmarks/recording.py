"""Cost of recording a session (docs/benchmarks.md, "Recording").

CPU: a 30 fps 640x480 synthetic source paced in real time runs through the live pipeline
(LiveRunner + the model) with the recorder off and on, interleaved (off, on, off, on, ...);
each run's process CPU time (all threads) per second of session. Reports the medians and their
ratio (target: on / off <= 1.20).

Memory: one long recording (``--minutes``); resident memory (VmRSS) and the video queued for
the encoder every ``--rss-every`` s (default 10), and the RSS growth after the first minute
(target: < 50 MB over 30 minutes; a starved encoder's queue, capped by the recorder, shows as
growth too).

    .venv/bin/python benchmarks/recording.py --seconds 20 --repeats 3 --minutes 4
    .venv/bin/python benchmarks/recording.py --repeats 0 --minutes 30      # the full memory run
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from _sampling import machine, rss_mb, sampled, setup_logging

from eri.realtime.session.format import versions

log = logging.getLogger("eri.benchmarks.recording")


def run_once(
    bundle, backend, seconds: float, out: Path | None, *, sample_rss=None, every_s: float = 10.0
) -> dict:
    """One paced run of ``seconds``; records into ``out`` when given. CPU s per session s."""
    from eri.realtime.analyze import make_tracker
    from eri.realtime.pipeline import LiveRunner, StreamingEngine
    from eri.realtime.session import SessionRecorder, session_info
    from eri.realtime.sources import SyntheticSource

    fps = 30.0
    source = SyntheticSource(
        num_frames=int(seconds * fps), fps=fps, width=640, height=480, realtime=True
    )
    tracker = make_tracker(bundle)
    engine = StreamingEngine(bundle, backend, tracker, fps=fps)
    engine.warmup()
    recorder = None
    if out is not None:
        recorder = SessionRecorder(
            out, fps=fps, width=640, height=480, info=session_info(source, bundle, backend)
        )
    runner = LiveRunner(source, engine, on_event=recorder.on_event if recorder else None)
    rows = 0
    c0, w0 = time.process_time(), time.monotonic()
    sample = None if sample_rss is None else (lambda t: sample_rss(t, recorder))
    for output in sampled(runner.run(), every_s, sample):
        rows += 1
        if recorder is not None:
            recorder.add_output(output)
    # The session's running cost; closing (encoder flush, report.png) is a one-off, reported
    # apart as close_s / close_cpu_s.
    cpu = time.process_time() - c0
    close_s = close_cpu = 0.0
    if recorder is not None:
        t, c = time.monotonic(), time.process_time()
        recorder.close()
        close_s, close_cpu = time.monotonic() - t, time.process_time() - c
    tracker.close()
    return {
        "recording": out is not None,
        "cpu_per_s": cpu / seconds,
        "wall_s": time.monotonic() - w0,
        "rows": rows,
        "skipped": runner.skipped,
        "frames_written": recorder.frames_written if recorder else None,
        "close_s": close_s,
        "close_cpu_s": close_cpu,
        "error": str(recorder.error) if recorder and recorder.error else None,
    }


def run_recorder_alone(seconds: float, out: Path) -> dict:
    """The recorder by itself: 30 fps 640x480 frames (30 pre-rendered, cycled) and 50 ms audio
    chunks fed in real time; CPU s per s of session, without the pipeline's noise."""
    from eri.realtime.session import SessionRecorder
    from eri.realtime.sources import AudioChunk, SyntheticSource, VideoFrame

    fps = 30.0
    synth = SyntheticSource(num_frames=None, fps=fps, width=640, height=480)
    images = [synth.render(i) for i in range(30)]
    recorder = SessionRecorder(out, fps=fps, width=640, height=480)
    frames = int(seconds * fps)
    chunks = int(seconds / 0.05)
    events = [(i / fps, "v", i) for i in range(frames)] + [
        (k * 0.05, "a", k) for k in range(chunks)
    ]
    events.sort()
    audio = [synth.audio_chunk(k) for k in range(20)]
    c0, w0 = time.process_time(), time.monotonic()
    for t, kind, i in events:
        delay = w0 + t - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        if kind == "v":
            recorder.on_event(VideoFrame(i, t, images[i % 30]))
        else:
            recorder.on_event(AudioChunk(t, audio[i % 20].samples))
    cpu = time.process_time() - c0
    recorder.close()
    return {"cpu_per_s": cpu / seconds, "frames_written": recorder.frames_written}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=float, default=20.0, help="length of each CPU run")
    p.add_argument("--repeats", type=int, default=3, help="CPU runs per setting (0: none)")
    p.add_argument("--minutes", type=float, default=0.0, help="memory run length (0: none)")
    p.add_argument("--rss-every", type=float, default=10.0, help="memory sample period, s")
    p.add_argument("--backend", default="onnxruntime")
    p.add_argument("--arch", default=None, help="architecture (default: the default one)")
    p.add_argument("--out", help="keep the sessions under this folder (default: deleted)")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args()
    setup_logging(log)

    from eri.models.bundle import untrained_bundle
    from eri.realtime.backends import create_backend

    bundle = untrained_bundle(args.arch) if args.arch else untrained_bundle()
    backend = create_backend(bundle, args.backend)
    root = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="eri-rec-bench-"))
    result: dict = {
        "machine": machine(),
        "versions": versions(),
        "backend": backend.describe(),
        "architecture": bundle.meta["architecture"],
        "cpu_runs": [],
    }
    try:
        for i in range(args.repeats):
            for on in (False, True):
                out = root / f"cpu-{i}" if on else None
                r = run_once(bundle, backend, args.seconds, out)
                result["cpu_runs"].append(r)
                log.info(
                    "run %d recording %-3s: %.3f CPU s per s, %d rows, %d skipped, close %.2f s",
                    i + 1,
                    "on" if on else "off",
                    r["cpu_per_s"],
                    r["rows"],
                    r["skipped"],
                    r["close_s"],
                )
                if out is not None and not args.out:
                    shutil.rmtree(out, ignore_errors=True)
        if args.repeats:
            off = statistics.median(
                r["cpu_per_s"] for r in result["cpu_runs"] if not r["recording"]
            )
            on = statistics.median(r["cpu_per_s"] for r in result["cpu_runs"] if r["recording"])
            result["cpu"] = {"off": off, "on": on, "ratio": on / off}
            log.info("CPU per second of session: off %.3f, on %.3f: x%.3f", off, on, on / off)
        if args.repeats:
            alone = [
                run_recorder_alone(args.seconds, root / f"alone-{i}")["cpu_per_s"]
                for i in range(args.repeats)
            ]
            result["recorder_alone_cpu_per_s"] = alone
            log.info(
                "recorder alone: %.3f CPU s per s (median of %s); %.1f %% of the pipeline's %.3f",
                statistics.median(alone),
                ", ".join(f"{a:.3f}" for a in alone),
                100 * statistics.median(alone) / result["cpu"]["off"],
                result["cpu"]["off"],
            )
        if args.minutes:
            samples: list[tuple[float, float]] = []
            backlog: list[float] = []

            def sample(t: float, recorder) -> None:
                samples.append((t, rss_mb()))
                backlog.append(recorder.backlog_bytes / 2**20)
                if len(samples) % 6 == 0:
                    log.info(
                        "  %.0f s: RSS %.1f MB, %.1f MB of video queued for the encoder",
                        t,
                        samples[-1][1],
                        backlog[-1],
                    )

            r = run_once(
                bundle,
                backend,
                args.minutes * 60,
                root / "memory",
                sample_rss=sample,
                every_s=args.rss_every,
            )
            after = [m for t, m in samples if t >= 60.0]
            at_1min = after[0] if after else float("nan")
            growth = max(after) - at_1min if after else float("nan")
            result["memory"] = {
                "minutes": args.minutes,
                "rss_mb": samples,
                "encoder_backlog_mb": backlog,
                "rss_at_1min_mb": at_1min,
                "rss_end_mb": samples[-1][1] if samples else None,
                "max_growth_after_1min_mb": growth,
                "run": r,
            }
            log.info(
                "memory over %.1f min: %.1f MB at 1 min, %.1f MB at the end, max growth %.1f MB; "
                "%d rows, %d frames written, %d skipped",
                args.minutes,
                at_1min,
                samples[-1][1],
                growth,
                r["rows"],
                r["frames_written"],
                r["skipped"],
            )
    finally:
        if not args.out:
            shutil.rmtree(root, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
