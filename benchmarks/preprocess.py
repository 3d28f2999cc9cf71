"""Preprocessing throughput: seconds of video preprocessed per second on one core.

    python benchmarks/preprocess.py [--repeats 3] [--clips 16] [--media ../shared/media]
    python benchmarks/preprocess.py --memory [--durations 30 300] [--fps 30]

Runs :func:`eri.training.preprocess.preprocess` with one worker (in this process, so one core)
into a fresh cache each repeat, on a generated dataset (2 s clips, 320x240 at 15 fps) and on the
real videos of the media folder when it exists, and prints the median over the repeats of
video-seconds per wall-second. The MediaPipe graphs are built once before timing (a worker
builds them once for all its clips). With one worker per core, a machine's throughput is this
number times its cores (the clips are independent).

``--memory``: the peak resident memory (``ru_maxrss``) of one worker extracting one generated
clip (320x240 video + 16 kHz wav; ``--no-audio``: video only) of each duration, each in a
fresh process, with the face crops held in memory (``spill_bytes=None``, as before they were
bounded) and bounded (the default); ``base`` is the peak before the clip (the imports and the
MediaPipe graphs), ``growth`` what the clip added.
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _manifest(media: Path, out: Path) -> Path | None:
    from eri.models.spec import EMOTIONS

    videos = sorted(p for p in (media / "video").glob("*") if p.suffix in (".mp4", ".mov"))
    if not videos:
        return None
    lines = ["path,split," + ",".join(EMOTIONS)]
    lines += [f"{v},Train,{','.join([''] * len(EMOTIONS))}" for v in videos]
    out.write_text("\n".join(lines) + "\n")
    return out


def _measure(index, config, tmp: Path, repeats: int) -> tuple[float, float, int]:
    """(median video-s per s, video seconds, clips) over ``repeats`` fresh runs."""
    from eri.training.preprocess import preprocess

    rates, video_s, done = [], 0.0, 0
    for r in range(repeats):
        t0 = time.perf_counter()
        report = preprocess(index, config, tmp / f"cache{r}", workers=1, progress=False)
        wall = time.perf_counter() - t0
        rates.append(report.video_s / wall)
        video_s, done = report.video_s, report.done
    return statistics.median(rates), video_s, done


def _long_clip(folder: Path, duration_s: float, fps: float) -> tuple[Path, Path]:
    """A generated clip (``eri.training.data.generate``'s face and sound) of ``duration_s``,
    rendered and encoded frame by frame (the generator holds a clip's frames in memory)."""
    from fractions import Fraction

    import av
    import numpy as np

    from eri.training.data import generate as g

    rng = np.random.default_rng([7, int(duration_s)])
    labels = g.clip_labels(rng)
    background = g._background(rng)
    motion = rng.uniform(0, 2 * np.pi, size=5)
    folder.mkdir(parents=True, exist_ok=True)
    video, audio = folder / "clip.mp4", folder / "clip.wav"
    with av.open(str(video), "w") as out:
        vs = out.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        vs.height, vs.width, vs.pix_fmt = g.HEIGHT, g.WIDTH, "yuv420p"
        vs.options = {"preset": "ultrafast", "crf": "18"}
        for i in range(int(round(duration_s * fps))):
            img = g.render_face(background, labels, i / fps, motion, rng)
            for packet in vs.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in vs.encode():
            out.mux(packet)
    g.write_wav(audio, g.render_audio(labels, duration_s, rng))
    return video, audio


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def _memory_child(video: Path, audio: Path | None, bounded: bool, spill_dir: Path) -> int:
    """Extract one clip in this (fresh) process; print base and peak RSS as JSON."""
    import inspect

    from eri.realtime.face import FaceTracker
    from eri.training.data.clips import Clip
    from eri.training.preprocess import PreprocessConfig
    from eri.training.windows import extract_clip

    config = PreprocessConfig() if audio is not None else PreprocessConfig(audio=None)
    tracker = FaceTracker(crop=config.crop)
    clip = Clip("clip", "Train", video, audio)
    kwargs = {}
    if "spill_bytes" in inspect.signature(extract_clip).parameters:
        kwargs = {"spill_dir": spill_dir} if bounded else {"spill_bytes": None}
    base = _peak_mb()
    t0 = time.perf_counter()
    cached = extract_clip(clip, config, tracker, **kwargs)
    wall = time.perf_counter() - t0
    tracker.close()
    result = {"base": base, "peak": _peak_mb(), "frames": cached.meta["frames"], "wall": wall}
    print(json.dumps(result))
    return 0


def _memory(durations: list[float], fps: float, with_audio: bool) -> int:
    """Each step in its own process: a child's ru_maxrss starts from its parent's RSS at the
    fork (it is kept across exec), so this process stays small."""

    def child(*args: str) -> str:
        cmd = [sys.executable, __file__, *args]
        return subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT).stdout

    rows = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for duration in durations:
            folder = tmp / f"clip{duration:g}"
            child("--make-clip", str(folder), str(duration), str(fps))
            video, audio = folder / "clip.mp4", folder / "clip.wav"
            wav = str(audio) if with_audio else "-"
            for bounded in (False, True):
                args = ["--memory-child", str(video), wav, "--spill-dir", str(folder)]
                out = child(*args, *([] if bounded else ["--in-memory"]))
                rows.append((duration, bounded, json.loads(out.strip().splitlines()[-1])))
            video.unlink()
            audio.unlink()
    head = f"{'clip':>8s} {'frames':>6s} {'crops':>9s} {'base MB':>8s} {'peak MB':>8s}"
    print(f"{head} {'growth':>7s}")
    for duration, bounded, r in rows:
        crops = "bounded" if bounded else "in memory"
        print(
            f"{duration:7g}s {r['frames']:6d} {crops:>9s} {r['base']:8.0f} {r['peak']:8.0f} "
            f"{r['peak'] - r['base']:7.0f}"
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--clips", type=int, default=16, help="generated clips")
    parser.add_argument("--media", type=Path, default=ROOT.parent / "shared" / "media")
    parser.add_argument("--memory", action="store_true", help="peak RSS of one long clip")
    parser.add_argument("--durations", type=float, nargs="+", default=[30.0, 300.0])
    parser.add_argument("--fps", type=float, default=30.0, help="frame rate for --memory")
    parser.add_argument("--no-audio", action="store_true", help="--memory without the wav")
    parser.add_argument("--memory-child", nargs=2, type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--make-clip", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--spill-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--in-memory", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.make_clip:
        _long_clip(Path(args.make_clip[0]), float(args.make_clip[1]), float(args.make_clip[2]))
        return 0
    if args.memory_child:
        video, audio = args.memory_child
        audio = None if str(audio) == "-" else audio
        return _memory_child(video, audio, not args.in_memory, args.spill_dir)
    if args.memory:
        return _memory(args.durations, args.fps, not args.no_audio)

    from eri.training.data import generate_dataset, open_dataset
    from eri.training.preprocess import PreprocessConfig, _tracker

    config = PreprocessConfig()  # the dual_branch defaults: 32 samples over 12.8 s
    _tracker(config)  # build the MediaPipe graphs before timing
    rows = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        gen = generate_dataset(tmp / "gen", clips={"Train": args.clips}, seed=0)
        rows.append(
            ("generated 320x240 15 fps", *_measure(open_dataset(gen), config, tmp, args.repeats))
        )
        manifest = _manifest(args.media, tmp / "media.csv") if args.media.is_dir() else None
        if manifest is not None:
            rows.append(
                ("shared/media/video", *_measure(open_dataset(manifest), config, tmp, args.repeats))
            )
        else:
            print(f"(no real videos: {args.media} is absent)", file=sys.stderr)
    print(f"{'data':28s} {'clips':>5s} {'video s':>8s} {'video-s/s/core (median)':>24s}")
    for name, rate, video_s, done in rows:
        print(f"{name:28s} {done:5d} {video_s:8.1f} {rate:24.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
