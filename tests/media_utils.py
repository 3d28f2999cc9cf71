"""Media helpers for the tests: the real media folder beside the project (``MEDIA_DIR``,
:func:`media_file`) and small clips written and decoded in the test itself (nothing from
../shared is copied). ``conftest.py`` holds only fixtures and imports from here."""

from __future__ import annotations

import os
import subprocess
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


def small_dual_branch(context_s: float):
    """The untrained dual_branch model (audio branch included) on an 8-sample window over
    ``context_s`` seconds: the default's graphs, a quarter of the work."""
    from eri.models.bundle import untrained_bundle
    from eri.models.spec import WindowSpec

    return untrained_bundle("dual_branch", window=WindowSpec(num_samples=8, context_s=context_s))


def torch_backend_for(bundle):
    """The torch backend (CPU here) for ``bundle``."""
    from eri.realtime.backends import create_backend

    return create_backend(bundle, "torch")


def mount_tmpfs(path: Path, options: str) -> None:
    """Create ``path`` and mount a tmpfs there with ``options`` (e.g. ``size=2m``, ``ro``), or
    skip the test when mounting is not permitted; :func:`umount` undoes it."""
    path.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or done.returncode})")


def umount(path: Path) -> None:
    subprocess.run(["umount", str(path)], capture_output=True)
