"""Preprocessing throughput: seconds of video preprocessed per second on one core.

    python benchmarks/preprocess.py [--repeats 3] [--clips 16] [--media ../shared/media]

Runs :func:`eri.training.preprocess.preprocess` with one worker (in this process, so one core)
into a fresh cache each repeat, on a generated dataset (2 s clips, 320x240 at 15 fps) and on the
real videos of the media folder when it exists, and prints the median over the repeats of
video-seconds per wall-second. The MediaPipe graphs are built once before timing (a worker
builds them once for all its clips). With one worker per core, a machine's throughput is this
number times its cores (the clips are independent).
"""

from __future__ import annotations

import argparse
import logging
import statistics
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--clips", type=int, default=16, help="generated clips")
    parser.add_argument("--media", type=Path, default=ROOT.parent / "shared" / "media")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

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
