"""A generated dataset in the ABAW5 layout whose labels can be learnt from pixels and sound.

Each clip draws seven labels uniformly in [0.05, 0.95] (seeded, written with 4 decimals, and
the rounded values are the ones rendered). Four set what the face looks like and three what
the audio sounds like, strongly enough to read in a 112x112 aligned crop and in MFCC tokens:

=============  ================================================================
adoration      skin brightness (x0.75 .. x1.10 of a skin tone)
amusement      mouth opening (half-height 0.015 .. 0.075 of the frame's short side)
anxiety        red-vs-blue tint of the face (R +-36, B -+36)
disgust        eye size (x0.60 .. x1.25)
empathic_pain  tone pitch (180 .. 720 Hz, log scale)
fear           noise-to-tone ratio (noise std 0.02 .. 0.62 of the tone's amplitude)
surprise       level of a 3 kHz whistle relative to the tone (0 .. 1)
=============  ================================================================

Per-token LayerNorm in the models hides plain loudness, so the audio cues are spectral or
temporal. The face (hair, ears, neck, brows, nose) is drawn so MediaPipe finds it in every
frame at all label extremes. The nuisances: a per-clip background colour, a face that sways,
turns and breathes a little, per-frame pixel noise and 3 % jitter of the visual cues, a random
tone phase, loudness, vibrato and a slow amplitude modulation (1-3 Hz, depth 0.3).

Layout: ``<Split>/mp4/<id>.mp4`` (H.264, no audio track), ``<Split>/wav/<id>.wav`` (16 kHz
mono, 16-bit) and ``data_info.csv`` (Test rows have empty labels, as in the release).

Run as ``python -m eri.training.data.generate OUT [--train N --val N --test N --seed S]``.
"""

from __future__ import annotations

import argparse
import csv
import logging
import math
import os
import shutil
import wave
from fractions import Fraction
from pathlib import Path

import numpy as np

from eri.models.audio import SAMPLE_RATE
from eri.models.spec import NUM_EMOTIONS
from eri.training.data.clips import ABAW_COLUMNS

logger = logging.getLogger(__name__)

DEFAULT_CLIPS: dict[str, int] = {"Train": 48, "Val": 16, "Test": 8}
LABEL_RANGE = (0.05, 0.95)
WIDTH, HEIGHT = 320, 240
SKIN = np.array([224.0, 172.0, 140.0])
UNLABELLED_SPLITS = ("Test",)
#: The fixed pitch of the whistle whose level is the surprise label (Hz).
WHISTLE_HZ = 3000.0
#: Per-frame pixel noise (std ~4), drawn from a fixed bank: cheap, and still not static.
_NOISE = np.round(np.random.default_rng(1234).normal(0.0, 4.0, (8, HEIGHT, WIDTH, 3))).astype(
    np.int16
)


def clip_labels(rng: np.random.Generator) -> np.ndarray:
    """Seven labels [7] float64, uniform in LABEL_RANGE, rounded to 4 decimals."""
    return np.round(rng.uniform(*LABEL_RANGE, size=NUM_EMOTIONS), 4)


def _background(rng: np.random.Generator) -> np.ndarray:
    """[H, W, 3] uint8: a gradient of a random dull colour with fixed grain."""
    lo, hi = rng.uniform(30, 80), rng.uniform(90, 140)
    tint = rng.uniform(0.7, 1.0, size=3)
    ramp = np.linspace(lo, hi, WIDTH, dtype=np.float32)[None, :, None]
    base = np.broadcast_to(ramp, (HEIGHT, WIDTH, 3)) * tint
    grain = rng.integers(0, 20, size=(HEIGHT, WIDTH, 1))
    return np.clip(base + grain, 0, 255).astype(np.uint8)


def render_face(
    background: np.ndarray,
    labels: np.ndarray,
    t: float,
    motion: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    """One frame [H, W, 3] uint8 RGB at ``t`` s; ``motion`` [5] the clip's motion phases."""
    import cv2

    adoration, amusement, anxiety, disgust = (float(v) for v in labels[:4])
    jitter = 1.0 + 0.03 * rng.standard_normal(3)
    img = background.copy()
    s = min(HEIGHT, WIDTH)
    cx = int(WIDTH / 2 + 0.05 * WIDTH * math.sin(2 * math.pi * 0.4 * t + motion[0]))
    cy = int(HEIGHT / 2 + 0.03 * HEIGHT * math.sin(2 * math.pi * 0.3 * t + motion[1]))
    breathe = 1.0 + 0.03 * math.sin(2 * math.pi * 0.5 * t + motion[2])
    angle = 6.0 * math.sin(2 * math.pi * 0.25 * t + motion[3])
    fa, fb = int(0.24 * s * breathe), int(0.32 * s * breathe)

    shift = 80.0 * (anxiety - 0.5) * jitter[0]
    skin = SKIN * (0.75 + 0.35 * (adoration - 0.05) / 0.9 * jitter[1]) + np.array(
        [shift, 0, -shift]
    )
    skin_c = tuple(float(v) for v in np.clip(skin, 0, 255))
    rot = math.radians(angle)
    cos, sin = math.cos(rot), math.sin(rot)

    def at(dx: float, dy: float) -> tuple[int, int]:
        return int(round(cx + dx * cos - dy * sin)), int(round(cy + dx * sin + dy * cos))

    neck = (int(0.45 * fa), int(0.5 * fb))
    cv2.ellipse(img, at(0, 0.95 * fb), neck, angle, 0, 360, skin_c, -1, cv2.LINE_AA)
    cv2.ellipse(
        img,
        at(0, -0.12 * fb),
        (int(1.08 * fa), int(0.98 * fb)),
        angle,
        0,
        360,
        (45, 30, 20),
        -1,
        cv2.LINE_AA,
    )  # hair
    for side in (-1, 1):
        cv2.ellipse(
            img,
            at(side * 0.98 * fa, -0.02 * fb),
            (int(0.16 * fa), int(0.22 * fb)),
            angle,
            0,
            360,
            skin_c,
            -1,
            cv2.LINE_AA,
        )  # ears
    cv2.ellipse(img, (cx, cy), (fa, fb), angle, 0, 360, skin_c, -1, cv2.LINE_AA)

    eye = 0.6 + (disgust - 0.05) / 0.9 * 0.65 * jitter[2]
    for side in (-1, 1):
        ex, ey = at(side * 0.42 * fa, -0.22 * fb)
        axes = (max(2, int(0.085 * s * eye)), max(2, int(0.05 * s * eye)))
        cv2.ellipse(img, (ex, ey), axes, angle, 0, 360, (250, 250, 250), -1, cv2.LINE_AA)
        cv2.circle(img, (ex, ey), max(2, int(0.03 * s * eye)), (40, 30, 20), -1, cv2.LINE_AA)
        b0, b1 = (
            at(side * 0.42 * fa - 0.1 * s, -0.22 * fb - 0.13 * s),
            at(side * 0.42 * fa + 0.1 * s, -0.22 * fb - 0.13 * s),
        )
        cv2.line(img, b0, b1, (90, 60, 40), 3, cv2.LINE_AA)
    cv2.line(img, at(0, -0.05 * fb), at(0, 0.08 * fb), (180, 120, 100), 2, cv2.LINE_AA)
    mouth_h = s * (0.015 + 0.06 * (amusement - 0.05) / 0.9) * (1.0 + 0.05 * math.sin(4 * t))
    axes = (int(0.3 * fa), max(2, int(mouth_h)))
    cv2.ellipse(img, at(0, 0.45 * fb), axes, angle, 0, 360, (150, 40, 50), -1, cv2.LINE_AA)
    noise = _NOISE[int(rng.integers(len(_NOISE)))]
    return np.clip(img.astype(np.int16) + noise, 0, 255).astype(np.uint8)


def render_audio(labels: np.ndarray, duration_s: float, rng: np.random.Generator) -> np.ndarray:
    """Mono float32 [duration_s * SAMPLE_RATE] in [-1, 1]: tone + noise, amplitude modulated."""
    empathic_pain, fear, surprise = (float(v) for v in labels[4:7])
    n = int(round(duration_s * SAMPLE_RATE))
    t = np.arange(n) / SAMPLE_RATE
    f0 = 180.0 * 2.0 ** (2.0 * (empathic_pain - 0.05) / 0.9)
    vibrato = 1.0 + 0.01 * np.sin(2 * np.pi * rng.uniform(3, 6) * t)
    phase = 2 * np.pi * np.cumsum(f0 * vibrato) / SAMPLE_RATE + rng.uniform(0, 2 * np.pi)
    tone = np.sin(phase) + 0.3 * np.sin(2 * phase)
    noise = rng.standard_normal(n) * (0.02 + 0.6 * (fear - 0.05) / 0.9)
    # A bright whistle at a fixed high pitch, its level relative to the tone set by surprise.
    whistle = (surprise - 0.05) / 0.9 * np.sin(2 * np.pi * WHISTLE_HZ * t + rng.uniform(0, 6.3))
    envelope = 1.0 - 0.3 * (0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(1, 3) * t))
    gain = rng.uniform(0.15, 0.3)
    signal = gain * envelope * (tone + noise + whistle)
    return np.clip(signal, -1.0, 1.0).astype(np.float32)


def write_wav(path: Path, samples: np.ndarray, sample_rate: int = SAMPLE_RATE) -> None:
    """16-bit PCM mono wav, written to a temporary name then renamed."""
    tmp = path.with_name(f".{path.name}.tmp")
    pcm = np.clip(np.round(samples * 32767.0), -32768, 32767).astype("<i2")
    with wave.open(str(tmp), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(pcm.tobytes())
    os.replace(tmp, path)


def write_mp4(path: Path, frames: list[np.ndarray], fps: float) -> None:
    """H.264 (yuv420p) mp4 of RGB frames, no audio; temporary name then renamed."""
    import av

    tmp = path.with_name(f".{path.name}.tmp.mp4")
    rate = Fraction(fps).limit_denominator(1001)
    with av.open(str(tmp), "w") as out:
        vs = out.add_stream("libx264", rate=rate)
        vs.height, vs.width = frames[0].shape[:2]
        vs.pix_fmt = "yuv420p"
        vs.options = {"preset": "ultrafast", "crf": "18"}
        vs.thread_count = 1
        for img in frames:
            for packet in vs.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in vs.encode():
            out.mux(packet)
    os.replace(tmp, path)


def _write_clip(
    root: Path,
    split: str,
    clip_id: str,
    labels: np.ndarray,
    duration_s: float,
    fps: float,
    rng: np.random.Generator,
) -> None:
    background = _background(rng)
    motion = rng.uniform(0, 2 * np.pi, size=5)
    n_frames = max(1, int(round(duration_s * fps)))
    frames = [render_face(background, labels, i / fps, motion, rng) for i in range(n_frames)]
    (root / split / "mp4").mkdir(parents=True, exist_ok=True)
    (root / split / "wav").mkdir(parents=True, exist_ok=True)
    write_mp4(root / split / "mp4" / f"{clip_id}.mp4", frames, fps)
    write_wav(root / split / "wav" / f"{clip_id}.wav", render_audio(labels, duration_s, rng))


def generate_dataset(
    out: Path,
    *,
    clips: dict[str, int] | None = None,
    duration_s: float = 2.0,
    fps: float = 15.0,
    seed: int = 0,
) -> Path:
    """Write the generated dataset to ``out`` (created; existing clips are overwritten).

    ``clips``: clips per split (default :data:`DEFAULT_CLIPS`). Returns ``out``. The same
    arguments give the same labels and pixels (H.264 output is deterministic for one encoder
    build). ``data_info.csv`` is written last, so a folder without it is incomplete.
    """
    out = Path(out)
    clips = dict(DEFAULT_CLIPS if clips is None else clips)
    if duration_s <= 0 or fps <= 0:
        raise ValueError(f"duration_s and fps must be > 0, got {duration_s} and {fps}.")
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    index = 0
    for split, count in clips.items():
        for _ in range(int(count)):
            rng = np.random.default_rng([seed, index])
            labels = clip_labels(rng)
            clip_id = f"{index:05d}"
            _write_clip(out, split, clip_id, labels, duration_s, fps, rng)
            shown = [""] * NUM_EMOTIONS
            if split not in UNLABELLED_SPLITS:
                shown = [f"{v:.4f}" for v in labels]
            rows.append([clip_id, split, *shown])
            index += 1
    tmp = out / ".data_info.csv.tmp"
    with tmp.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["File_ID", "Split", *ABAW_COLUMNS])
        writer.writerows(rows)
    os.replace(tmp, out / "data_info.csv")
    logger.info("generated %d clips in %s", index, out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m eri.training.data.generate",
        description="Write a generated ERI dataset in the ABAW5 layout.",
    )
    parser.add_argument("out", type=Path, help="output folder")
    for split, count in DEFAULT_CLIPS.items():
        parser.add_argument(f"--{split.lower()}", type=int, default=count, help=f"{split} clips")
    parser.add_argument("--duration", type=float, default=2.0, help="seconds per clip")
    parser.add_argument("--fps", type=float, default=15.0, help="video frame rate")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="delete OUT first")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.force and args.out.exists():
        shutil.rmtree(args.out)
    counts = {split: getattr(args, split.lower()) for split in DEFAULT_CLIPS}
    generate_dataset(args.out, clips=counts, duration_s=args.duration, fps=args.fps, seed=args.seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
