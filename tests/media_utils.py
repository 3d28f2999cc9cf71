"""Media helpers for the tests: the real media folder beside the project (``MEDIA_DIR``,
:func:`media_file`) and small clips written and decoded in the test itself (nothing from
../shared is copied). ``conftest.py`` holds only fixtures and imports from here."""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
#: ../shared/media beside the project, or $ERI_MEDIA_DIR. Tests reading it are marked realmedia.
MEDIA_DIR = Path(os.environ.get("ERI_MEDIA_DIR", PROJECT_ROOT.parent / "shared" / "media"))


def media_file(relative: str) -> Path:
    """A file under the media folder, or skip the test with the reason."""
    path = MEDIA_DIR / relative
    if not path.is_file():
        pytest.skip(f"real media file {path} is absent")
    return path


def write_video(
    path: Path,
    frames: list[np.ndarray],
    fps: int = 30,
    audio: np.ndarray | None = None,
    sample_rate: int = 16000,
) -> Path:
    """Write RGB frames [H, W, 3] uint8 as H.264 (+ AAC audio [S] float32 mono) in an MP4."""
    with av.open(str(path), "w") as out:
        vs = out.add_stream("libx264", rate=fps)
        vs.height, vs.width = frames[0].shape[:2]
        vs.pix_fmt = "yuv420p"
        as_ = None
        if audio is not None:
            as_ = out.add_stream("aac", rate=sample_rate)
            as_.layout = "mono"
        for img in frames:
            for packet in vs.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in vs.encode():
            out.mux(packet)
        if as_ is not None:
            pts = 0
            for i in range(0, len(audio), 1024):
                block = audio[i : i + 1024].astype(np.float32)[None]
                frame = av.AudioFrame.from_ndarray(block, format="fltp", layout="mono")
                frame.sample_rate = sample_rate
                frame.pts = pts
                frame.time_base = Fraction(1, sample_rate)
                pts += block.shape[1]
                for packet in as_.encode(frame):
                    out.mux(packet)
            for packet in as_.encode():
                out.mux(packet)
    return path


def decode_frames(path: Path, limit: int | None = None) -> list[np.ndarray]:
    """RGB frames of a video file, decoded with PyAV."""
    frames = []
    with av.open(str(path)) as c:
        for f in c.decode(video=0):
            frames.append(f.to_ndarray(format="rgb24"))
            if limit and len(frames) >= limit:
                break
    return frames
