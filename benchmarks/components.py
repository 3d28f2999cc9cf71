"""Where the time goes: each pipeline component measured alone, medians and p95 over repeats,
with the maintained library it replaces run side by side where there is one.

    python benchmarks/components.py [--media ../shared/media] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

log = logging.getLogger("benchmarks.components")


def timed(fn: Callable[[], object], repeats: int, warmup: int = 3) -> dict[str, float]:
    for _ in range(warmup):
        fn()
    ms = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ms.append((time.perf_counter() - t0) * 1e3)
    return {"p50": float(np.median(ms)), "p95": float(np.percentile(ms, 95)), "n": repeats}


def audio_front_end(media: Path) -> dict:
    from eri.models.audio import AudioSpec, StreamingFrontEnd, feature_frames, load_audio

    spec = AudioSpec()
    speech = load_audio(media / "audio/speech_other/diarizationExample.wav")[: 10 * 16000]
    out = {"ours_10s_ms": timed(lambda: feature_frames(speech, spec), 20)}
    try:
        import librosa

        def ref():
            mel = librosa.feature.melspectrogram(
                y=speech, sr=16000, n_fft=1024, hop_length=800, center=False, n_mels=128
            )
            return librosa.feature.mfcc(S=librosa.power_to_db(mel, top_db=None), n_mfcc=128)

        out["librosa_10s_ms"] = timed(ref, 20)
        out["librosa_over_ours"] = out["librosa_10s_ms"]["p50"] / out["ours_10s_ms"]["p50"]
    except ImportError:
        out["librosa_10s_ms"] = "librosa not installed (pip install -e .[dev])"
    fe = StreamingFrontEnd(spec)
    chunks = iter(np.array_split(np.tile(speech, 10), 2000))
    out["stream_push_50ms_ms"] = timed(lambda: fe.push(next(chunks)), 1000)
    return out


def face_tracker(media: Path) -> dict:
    import av

    from eri.realtime.face import FaceTracker

    with av.open(str(media / "video/WolfgangLanger_Pexels.mp4")) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    out = {}
    settings = {
        "flow (default)": {},
        "ROI detector every frame": {"tracking": "detector"},
        "full-frame detector every frame": {"detect_every": 1},
    }
    for name, options in settings.items():
        with FaceTracker(**options) as tracker:
            ms = []
            for i, img in enumerate(frames):
                t0 = time.perf_counter()
                tracker.process(img, i / 23.976)
                ms.append((time.perf_counter() - t0) * 1e3)
            stats = tracker.stats()
        out[name] = {
            "p50_ms": float(np.median(ms)),
            "p95_ms": float(np.percentile(ms, 95)),
            **stats,
        }
    return out


def decode(media: Path) -> dict:
    from eri.realtime.sources import FileSource

    def run():
        with FileSource(media / "video/WolfgangLanger_Pexels.mp4") as src:
            return sum(1 for _ in src)

    t = timed(run, 3, warmup=1)
    return {"file_pass_ms": t, "frames_per_s": 472 / (t["p50"] / 1e3)}


def encoders() -> dict:
    from eri.models.bundle import untrained_bundle
    from eri.realtime.backends import create_backend

    bundle = untrained_bundle()
    out = {}
    for name in ("onnxruntime", "torch"):
        backend = create_backend(bundle, name)
        for n in (1, 8, 32):
            x = np.random.default_rng(0).random((n, 3, 112, 112), dtype=np.float32)
            t = timed(lambda b=backend, x=x: b.encode_frames(x), 20)
            out[f"{name}_batch{n}_ms_per_frame"] = t["p50"] / n
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--media", default="../shared/media", type=Path)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from eri.realtime.benchmark import device_info

    result = {
        "device": device_info(),
        "audio_front_end": audio_front_end(args.media),
        "face_tracker": face_tracker(args.media),
        "decode": decode(args.media),
        "encoder": encoders(),
    }
    print(json.dumps({k: v for k, v in result.items() if k != "device"}, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
