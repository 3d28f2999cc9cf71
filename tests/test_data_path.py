"""The seams of the data path: one Window per output step, one CSV row definition, positional
backends, the ONNX export cache, missing optional libraries, and what analyze keeps when a
stream fails or is interrupted."""

from __future__ import annotations

import json
import logging
import sys
from fractions import Fraction
from pathlib import Path
from types import SimpleNamespace

import av
import numpy as np
import pytest
import torch

import eri.models.export as export
from eri.errors import MissingDependencyError
from eri.models.base import gate_modalities
from eri.models.bundle import untrained_bundle
from eri.models.spec import EMOTIONS, WindowSpec
from eri.realtime import analyze as analyze_mod
from eri.realtime import pipeline
from eri.realtime.analyze import analyze, describe_failure, expected_rows
from eri.realtime.backends import create_backend
from eri.realtime.outputs import CSV_COLUMNS, PredictionWriter, prediction_row, read_predictions
from eri.realtime.pipeline import FrameOutput, StreamingEngine, Window, output_row
from eri.realtime.sources import AudioChunk, VideoFrame
from tests.media_utils import media_file, small_dual_branch, torch_backend_for, write_video


@pytest.fixture(scope="module")
def small_bundle():
    return small_dual_branch(context_s=1.0)


@pytest.fixture(scope="module")
def torch_backend(small_bundle):
    return torch_backend_for(small_bundle)


class FakeTracker:
    """A face on every frame but those listed: the crop is the frame's top-left corner."""

    def __init__(self, size: int, no_face: tuple[int, ...] = ()) -> None:
        self.size, self.no_face, self.calls = size, no_face, 0

    def process(self, image, time_s):
        i, self.calls = self.calls, self.calls + 1
        crop = None if i in self.no_face else np.ascontiguousarray(image[: self.size, : self.size])
        return SimpleNamespace(crop=crop, box=None)

    def stats(self):
        return {}


def _frames(n: int, size: int, fps: float = 25.0) -> list[VideoFrame]:
    rng = np.random.default_rng(0)
    return [
        VideoFrame(i, i / fps, rng.integers(0, 255, (size, size, 3), dtype=np.uint8))
        for i in range(n)
    ]


# ---------------------------------------------------------------------- the window
def test_one_window_for_both_modes(small_bundle, torch_backend):
    size = small_bundle.model.crop.size
    frames = _frames(12, size)
    noise = 0.1 * np.random.default_rng(2).standard_normal(8000)
    chunk = AudioChunk(0.0, noise.astype(np.float32))
    outs, windows = {}, {}
    for mode in ("streaming", "recompute"):
        engine = StreamingEngine(
            small_bundle, torch_backend, FakeTracker(size, no_face=(11,)), mode=mode
        )
        engine.push_audio(chunk)
        outs[mode] = engine.process_frames(frames)
        windows[mode] = engine.window_at(frames[-1].time_s, visual_present=True)
    w, r = windows["streaming"], windows["recompute"]
    assert isinstance(w, Window)
    t, d = small_bundle.model.window.num_samples, small_bundle.model.feature_dim
    assert w.times.shape == (t,) and np.all(np.diff(w.times) >= 0)
    assert w.rows.shape == (t, d) and w.rows.dtype == np.float32
    assert r.rows.shape == (t, size, size, 3) and r.rows.dtype == np.uint8
    assert w.audio_keys.shape == (t,) and w.audio_keys.dtype == np.int64 and w.audio_present
    np.testing.assert_array_equal(w.times, r.times)
    np.testing.assert_array_equal(w.audio_keys, r.audio_keys)
    # The same window in both modes gives the same outputs.
    a = np.stack([o.intensities for o in outs["streaming"]])
    b = np.stack([o.intensities for o in outs["recompute"]])
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)
    assert [o.face_detected for o in outs["streaming"]] == [True] * 11 + [False]


def test_window_before_any_frame_or_audio(small_bundle, torch_backend):
    engine = StreamingEngine(small_bundle, torch_backend, None)
    w = engine.window_at(0.5, visual_present=True)
    assert w.rows is None and not w.visual_present and not w.audio_present
    assert w.audio_keys is None  # no audio yet: the head gets "audio missing"
    with pytest.raises(pipeline.PipelineError, match="face tracker"):
        engine.process_frames(_frames(1, 8))


def test_pipeline_knows_no_onnx_names():
    source = Path(pipeline.__file__).read_text()
    for name in ("AUDIO_TOKENS", "AUDIO_PRESENT", "VISUAL_PRESENT", "eri.models.export"):
        assert name not in source


def test_backend_head_is_positional(small_bundle, torch_backend):
    t, d = small_bundle.model.window.num_samples, small_bundle.model.feature_dim
    visual = np.random.default_rng(1).standard_normal((2, t, d)).astype(np.float32)
    present = np.ones(2, np.float32)
    no_audio = torch_backend.head(visual, None, None, present)
    # What "no audio" was before the audio encoder was split off: zero tokens, flagged absent.
    tokens = np.zeros((2 * t, small_bundle.model.audio_spec.token_dim), np.float32)
    zero_tokens = torch_backend.encode_audio(tokens).reshape(2, t, -1)
    assert zero_tokens.shape[2] == small_bundle.model.audio_feature_dim
    flagged_off = torch_backend.head(visual, zero_tokens, np.zeros(2, np.float32), present)
    assert no_audio.shape == (2, len(EMOTIONS))
    np.testing.assert_array_equal(no_audio, flagged_off)
    visual_only = untrained_bundle("mtl_dan", window=WindowSpec(num_samples=8, context_s=1.0))
    backend = create_backend(visual_only, "torch")
    args = export.head_args(export.example_inputs(visual_only.model, 1))
    assert args[1] is None and args[2] is None
    assert backend.head(*args).shape == (1, len(EMOTIONS))


# ---------------------------------------------------------------------- the modality gate
def test_gate_zeroes_absent_branches_even_nan():
    v = torch.randn(3, 4, 5)
    a = torch.full((3, 4, 5), float("nan"))
    out = gate_modalities(v, a, torch.tensor([1.0, 0.0, 1.0]), torch.tensor([0.0, 0.0, 0.0]))
    assert out.shape == (3, 4, 10)
    assert torch.equal(out[:, :, 5:], torch.zeros(3, 4, 5))
    assert torch.equal(out[1, :, :5], torch.zeros(4, 5))
    assert torch.equal(out[0, :, :5], v[0])
    assert torch.equal(gate_modalities(v, None, None, None), v)


# ---------------------------------------------------------------------- the CSV row
def test_csv_row_defined_once_and_lf_line_endings(tmp_path):
    out = FrameOutput(1.23456, 7, True, False, np.linspace(0, 1, len(EMOTIONS), dtype=np.float32))
    row = output_row(out)
    assert row == prediction_row(1.23456, 7, True, False, out.intensities)
    assert len(row) == len(CSV_COLUMNS) and row[:4] == [1.2346, 7, 1, 0]
    path = tmp_path / "p.csv"
    with PredictionWriter(path) as writer:
        writer.write(row)
        writer.write(row)
    data = path.read_bytes()
    assert b"\r" not in data and data.count(b"\n") == 3
    cols = read_predictions(path)
    assert list(cols) == list(CSV_COLUMNS) and cols["frame_index"].tolist() == [7, 7]
    with pytest.raises(ValueError, match="7 intensities"):
        prediction_row(0.0, 0, False, False, [0.5])


# ---------------------------------------------------------------------- the export cache
def test_export_cache_dir_log_and_reuse(small_bundle, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("ERI_CACHE_DIR", str(tmp_path / "cache"))
    calls = []

    def fake_export(model, out_dir):
        calls.append(Path(out_dir))
        Path(out_dir).mkdir(parents=True)
        for name in (export.FRAME_ENCODER_FILE, export.AUDIO_ENCODER_FILE, export.HEAD_FILE):
            (Path(out_dir) / name).write_bytes(b"onnx")

    monkeypatch.setattr(export, "export_onnx", fake_export)
    with caplog.at_level(logging.INFO, logger="eri.models.export"):
        paths = export.onnx_paths(small_bundle)
    digest = export.weights_digest(small_bundle.model)
    target = tmp_path / "cache" / "onnx" / f"dual_branch-{digest}-g{export.GRAPH_VERSION}"
    assert paths == {
        "frame_encoder": target / export.FRAME_ENCODER_FILE,
        "audio_encoder": target / export.AUDIO_ENCODER_FILE,
        "head": target / export.HEAD_FILE,
    }
    assert calls and calls[0] != target  # written beside the target, then moved into place
    assert sorted(p.name for p in target.parent.iterdir()) == [target.name]
    messages = [r.getMessage() for r in caplog.records]
    assert any("exporting dual_branch to ONNX once" in m and str(target) in m for m in messages)
    assert any(m.startswith("exported dual_branch to ONNX in ") for m in messages)
    export.onnx_paths(small_bundle)
    assert len(calls) == 1  # cached


def test_missing_onnxruntime_says_how_to_install(small_bundle, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(MissingDependencyError, match="pip install onnxruntime"):
        create_backend(small_bundle, "onnxruntime")


# ---------------------------------------------------------------------- analyze
@pytest.mark.realmedia
def test_wav_needs_no_mediapipe_and_plot_not_shaded(
    small_bundle, torch_backend, tmp_path, monkeypatch
):
    import matplotlib.axes

    wav = media_file("audio/speech_emotion/15.wav")
    monkeypatch.setitem(sys.modules, "mediapipe", None)
    shaded = []
    original = matplotlib.axes.Axes.axvspan
    monkeypatch.setattr(
        matplotlib.axes.Axes, "axvspan", lambda *a, **k: shaded.append(a) or original(*a, **k)
    )
    result = analyze(wav, small_bundle, torch_backend, plot_path=tmp_path / "w.png", progress=False)
    assert len(result.rows) >= 10 and result.face.max() == 0
    assert result.summary["face_tracker"] == {}
    assert (tmp_path / "w.png").is_file() and not shaded


def _faststart(src: Path, dst: Path) -> Path:
    """Remux ``src`` with the index first, so a file cut short still opens."""
    with av.open(str(src)) as inp, av.open(str(dst), "w", options={"movflags": "faststart"}) as out:
        stream = out.add_stream_from_template(inp.streams.video[0])
        for packet in inp.demux(inp.streams.video[0]):
            if packet.dts is None:
                continue
            packet.stream = stream
            out.mux(packet)
    return dst


def test_truncated_mp4_every_delivered_frame_has_its_row(small_bundle, torch_backend, tmp_path):
    rng = np.random.default_rng(3)
    frames = [rng.integers(0, 255, (96, 96, 3), dtype=np.uint8) for _ in range(120)]
    full = _faststart(write_video(tmp_path / "a.mp4", frames, fps=30), tmp_path / "full.mp4")
    data = full.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: int(len(data) * 0.6)])
    csv_path, json_path = tmp_path / "cut.csv", tmp_path / "cut.json"
    with pytest.raises(Exception, match="delivered") as info:
        analyze(
            cut, small_bundle, torch_backend, csv_path=csv_path, json_path=json_path,
            progress=False,
        )  # fmt: skip
    summary = json.loads(json_path.read_text())
    delivered = summary["source_stats"]["frames_read"]
    assert 8 < delivered < 120 and delivered % 8 != 0  # a batch was pending when it failed
    assert f"{delivered} frames" in str(info.value)
    assert summary["rows"] == delivered == len(read_predictions(csv_path)["time_s"])
    assert summary["error"] and not summary["interrupted"]


def test_interrupted_run_writes_json_atomically(small_bundle, torch_backend, tmp_path, monkeypatch):
    json_path = tmp_path / "s.json"
    json_path.write_text('{"old": true}\n')
    seen = []

    def fake_run(source, engine):
        for i in range(3):
            seen.append(json_path.read_text())  # the old summary stays whole meanwhile
            yield engine.output_at(0.1 * (i + 1), i)
        raise KeyboardInterrupt

    monkeypatch.setattr(analyze_mod, "run_offline", fake_run)
    wav = media_file("audio/speech_emotion/15.wav")
    with pytest.raises(KeyboardInterrupt):
        analyze(wav, small_bundle, torch_backend, json_path=json_path, progress=False)
    assert seen == ['{"old": true}\n'] * 3
    summary = json.loads(json_path.read_text())
    assert summary["interrupted"] is True and summary["rows"] == 3
    assert "interrupted" in summary["error"]
    assert [p.name for p in tmp_path.iterdir()] == ["s.json"]  # no temporary file left


def test_failure_is_never_described_empty():
    assert describe_failure(RuntimeError()) == "RuntimeError()"
    assert describe_failure(ValueError("bad")) == "bad"
    assert "interrupted" in describe_failure(KeyboardInterrupt())
    assert "SystemExit" in describe_failure(SystemExit())


# ---------------------------------------------------------------------- progress
def test_expected_rows():
    src = SimpleNamespace
    assert expected_rows(src(has_video=True, frame_count=90, fps=30.0, duration_s=9.0)) == 90
    assert expected_rows(src(has_video=True, frame_count=0, fps=25.0, duration_s=2.0)) == 50
    assert expected_rows(src(has_video=True, frame_count=0, fps=None, duration_s=2.0)) is None
    wav = src(has_video=False, frame_count=None, fps=None, duration_s=3.0)
    assert expected_rows(wav) == int(3.0 * pipeline.AUDIO_ONLY_RATE)


def _vfr_video(path: Path, n: int) -> Path:
    """H.264 MP4 whose frame spacing changes midway (variable frame rate)."""
    with av.open(str(path), "w") as out:
        vs = out.add_stream("libx264", rate=30)
        vs.height = vs.width = 64
        vs.pix_fmt = "yuv420p"
        vs.codec_context.time_base = Fraction(1, 1000)
        t = 0
        for i in range(n):
            frame = av.VideoFrame.from_ndarray(np.full((64, 64, 3), i, np.uint8), format="rgb24")
            frame.pts, frame.time_base = t, Fraction(1, 1000)
            t += 33 if i < n // 2 else 200
            for packet in vs.encode(frame):
                out.mux(packet)
        for packet in vs.encode():
            out.mux(packet)
    return path


def test_progress_bar_ends_at_100_percent(small_bundle, torch_backend, tmp_path, monkeypatch):
    import tqdm

    bars = []

    class Recorder(tqdm.tqdm):
        def close(self):
            bars.append((self.n, self.total))
            super().close()

    monkeypatch.setattr(tqdm, "tqdm", Recorder)
    result = analyze(_vfr_video(tmp_path / "vfr.mp4", 40), small_bundle, torch_backend)
    assert bars and set(bars) == {(40, 40)} and len(result.rows) == 40
