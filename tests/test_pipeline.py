"""The streaming pipeline end to end on real media: analyze, live == offline, streaming ==
recompute, the audio branch fed from a real speech clip, and bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

from eri.models.audio import load_audio
from eri.models.bundle import untrained_bundle
from eri.models.spec import EMOTIONS, WindowSpec
from eri.realtime.analyze import analyze, make_tracker
from eri.realtime.backends import create_backend
from eri.realtime.cli import main
from eri.realtime.outputs import CSV_COLUMNS, read_predictions
from eri.realtime.pipeline import LiveRunner, StreamingEngine, run_offline
from eri.realtime.sources import FileSource
from tests.media_utils import decode_frames, media_file, write_video

pytestmark = pytest.mark.realmedia


@pytest.fixture(scope="module")
def bundle():
    return untrained_bundle()


@pytest.fixture(scope="module")
def ort_backend(bundle):
    return create_backend(bundle, "onnxruntime")


@pytest.fixture(scope="module")
def speech_on_face(tmp_path_factory):
    """single_face.mp4's frames with a real emotional speech clip muxed on (made here: no clip
    in the media folder has a face with audible speech)."""
    frames = decode_frames(media_file("video/single_face.mp4"))
    speech = load_audio(media_file("audio/speech_emotion/00.wav"))
    n = int(len(frames) / 30 * 16000)
    path = tmp_path_factory.mktemp("mux") / "speech_on_face.mp4"
    return write_video(path, frames, fps=30, audio=speech[:n])


def test_analyze_wolfgang_rows_face_plot(bundle, ort_backend, tmp_path):
    media = media_file("video/WolfgangLanger_Pexels.mp4")
    result = analyze(
        media,
        bundle,
        ort_backend,
        csv_path=tmp_path / "a.csv",
        plot_path=tmp_path / "a.png",
        json_path=tmp_path / "a.json",
        progress=False,
    )
    cols = read_predictions(tmp_path / "a.csv")
    assert list(cols) == list(CSV_COLUMNS)
    assert len(cols["time_s"]) == 472
    assert np.all(np.diff(cols["time_s"]) > 0)
    assert cols["face_detected"].mean() >= 0.95
    values = np.stack([cols[e] for e in EMOTIONS], axis=1)
    assert np.all((values >= 0) & (values <= 1))
    np.testing.assert_allclose(values, result.intensities, atol=1e-6)
    summary = json.loads((tmp_path / "a.json").read_text())
    assert summary["rows"] == 472 and summary["trained"] is False
    import matplotlib.image

    png = matplotlib.image.imread(tmp_path / "a.png")
    assert png.shape[0] > 400 and png.shape[1] > 600


@pytest.mark.parametrize(
    "name, face_first, early_end, late_start",
    [
        ("face_noface.mov", True, 2.3, 3.0),  # the face is cut at ~2.43 s
        ("noface_face.mov", False, 3.8, 4.1),  # the face appears at ~3.95 s
    ],
)
def test_face_lost_spans(bundle, ort_backend, name, face_first, early_end, late_start):
    result = analyze(media_file(f"video/{name}"), bundle, ort_backend, progress=False)
    t, face = result.times, result.face
    early, late = face[t < early_end], face[t > late_start]
    if face_first:
        assert early.mean() > 0.9 and late.mean() < 0.05
    else:
        assert early.mean() < 0.05 and late.mean() > 0.9


def test_no_face_video_completes(bundle, ort_backend):
    result = analyze(media_file("video/no_face.mp4"), bundle, ort_backend, progress=False)
    assert len(result.rows) > 50
    assert result.face.mean() < 0.05
    assert np.all(np.isfinite(result.intensities))


def test_speech_reaches_the_audio_branch(bundle, ort_backend, speech_on_face, tmp_path):
    result = analyze(speech_on_face, bundle, ort_backend, progress=False)
    assert result.summary["has_audio"]
    # Audio is present once the first MFCC frame is complete (64 ms in).
    assert result.audio[result.times > 0.1].min() == 1
    # Same frames without the audio track: visual-only.
    silent = write_video(tmp_path / "silent.mp4", decode_frames(speech_on_face), fps=30)
    visual_only = analyze(silent, bundle, ort_backend, progress=False)
    assert not visual_only.summary["has_audio"] and visual_only.audio.max() == 0
    # The speech changes the output: the audio branch is really used.
    assert np.abs(result.intensities - visual_only.intensities).max() > 1e-4


def test_streaming_equals_recompute(ort_backend, bundle, speech_on_face):
    runs = {}
    for mode in ("streaming", "recompute"):
        engine = StreamingEngine(bundle, ort_backend, make_tracker(bundle), mode=mode)
        with FileSource(speech_on_face) as src:
            runs[mode] = np.stack([o.intensities for o in run_offline(src, engine)])
    assert runs["streaming"].shape == (72, 7)
    np.testing.assert_allclose(runs["streaming"], runs["recompute"], atol=1e-5, rtol=0)


def test_live_path_equals_analysis(ort_backend, bundle, speech_on_face):
    offline = analyze(speech_on_face, bundle, ort_backend, progress=False).intensities
    engine = StreamingEngine(bundle, ort_backend, make_tracker(bundle))
    # Played at half speed so a busy 2-core test machine still keeps up with every frame.
    runner = LiveRunner(FileSource(speech_on_face, realtime=True, speed=0.5), engine)
    outputs = list(runner.run())
    if runner.skipped:
        pytest.skip(f"the machine was too busy to keep up live ({runner.skipped} frames skipped)")
    live = np.stack([o.intensities for o in outputs])
    assert live.shape == offline.shape
    np.testing.assert_allclose(live, offline, atol=1e-5, rtol=0)


def test_torch_and_onnxruntime_agree(bundle, ort_backend):
    media = media_file("video/single_face.mp4")
    a = analyze(media, bundle, ort_backend, progress=False).intensities
    b = analyze(media, bundle, create_backend(bundle, "torch"), progress=False).intensities
    np.testing.assert_allclose(a, b, atol=1e-4, rtol=0)


def test_wav_file_runs_audio_only(bundle, ort_backend):
    result = analyze(media_file("audio/speech_emotion/15.wav"), bundle, ort_backend, progress=False)
    assert len(result.rows) >= 10
    assert result.face.max() == 0 and result.audio[result.times > 0.2].min() == 1


def test_small_window_model(tmp_path):
    """A non-default WindowSpec travels with the model through the whole pipeline."""
    b = untrained_bundle("mtl_dan", window=WindowSpec(num_samples=8, context_s=2.0))
    result = analyze(
        media_file("video/single_face.mp4"), b, create_backend(b, "torch"), progress=False
    )
    assert len(result.rows) == 72 and result.audio.max() == 0


# ---------------------------------------------------------------------- bad input
def _run(args, caplog):
    caplog.clear()
    code = main(args)
    return code, " ".join(r.getMessage() for r in caplog.records)


def test_cli_bad_input(tmp_path, caplog):
    code, msg = _run(["analyze", str(tmp_path / "missing.mp4")], caplog)
    assert code == 1 and "does not exist" in msg
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    code, msg = _run(["analyze", str(empty), "--no-progress"], caplog)
    assert code == 1 and "empty.wav" in msg
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(np.random.default_rng(0).bytes(50_000))
    code, msg = _run(["analyze", str(garbage), "--no-progress"], caplog)
    assert code == 1 and "garbage.mp4" in msg


def test_cli_one_frame_video(tmp_path, caplog):
    one = write_video(tmp_path / "one.mp4", decode_frames(media_file("video/single_face.mp4"), 1))
    code, msg = _run(
        ["analyze", str(one), "--no-progress", "--out", str(tmp_path / "o.csv")], caplog
    )
    assert code == 1 and "1 frame" in msg
    assert (tmp_path / "o.csv").is_file()  # what was computed is kept


def test_cli_truncated_file_keeps_rows(tmp_path, caplog):
    data = media_file("video/WolfgangLanger_Pexels.mp4").read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    csv_path = tmp_path / "cut.csv"
    code, msg = _run(["analyze", str(cut), "--no-progress", "--out", str(csv_path)], caplog)
    if code == 0:  # FFmpeg recovered what it could and saw a clean end: rows must be there
        assert len(read_predictions(csv_path)["time_s"]) > 0
    else:
        assert "cut.mp4" in msg


def test_cli_unwritable_output(tmp_path, caplog):
    media = media_file("video/single_face.mp4")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, msg = _run(
        ["analyze", str(media), "--no-progress", "--out", str(blocker / "sub" / "a.csv")], caplog
    )
    assert code == 1 and "writable" in msg
