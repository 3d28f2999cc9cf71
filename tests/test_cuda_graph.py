"""torch CUDA graphs: the per-shape capture bookkeeping and the fused streaming step (on the CPU,
with the capture injected), graphs vs eager on a GPU (``requires_cuda``), the benchmark's model
rows that say why a CUDA row cannot run, and benchmarks/gpu_models.py on the CPU without
MediaPipe, PyAV, Qt or scipy."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from eri.models.bundle import load_bundle, record_export, save_bundle
from eri.models.export import (
    AUDIO_FEATURES,
    AUDIO_TOKENS,
    FACES,
    VISUAL,
    AudioEncoderGraph,
    example_inputs,
    head_args,
    head_graph,
)
from eri.models.export import head_input_names as names_of
from eri.realtime.backends import create_backend
from eri.realtime.cuda_graph import ShapeGraphs, graphs_unavailable, streaming_step

ARCH = "dual_branch"
ROOT = Path(__file__).resolve().parents[1]


class _Recorder:
    """``fn`` and ``capture`` stand-ins that count calls (the capture returns a tagged fn)."""

    def __init__(self, fail: bool = False) -> None:
        self.eager_calls = 0
        self.captured: list[tuple] = []
        self.fail = fail

    def fn(self, x: torch.Tensor) -> str:
        self.eager_calls += 1
        return "eager"

    def capture(self, fn, inputs):
        if self.fail:
            raise RuntimeError("operation not permitted when stream is capturing")
        self.captured.append(ShapeGraphs.key(inputs))
        return lambda *a: "graph"


def test_a_shape_is_captured_the_second_time_and_replayed_after():
    rec = _Recorder()
    graphs = ShapeGraphs(rec.fn, rec.capture, max_shapes=2)
    one = torch.zeros(1, 3)
    assert graphs(one) == "eager" and rec.captured == []  # a one-off shape is not captured
    assert graphs(one) == "graph" and graphs(one) == "graph"
    assert rec.captured == [(((1, 3), "torch.float32"),)] and rec.eager_calls == 1
    for n in (2, 2, 3, 3, 3):  # the second shape is captured, the third exceeds max_shapes
        graphs(torch.zeros(n, 3))
    assert len(graphs.graphs) == 2 and len(rec.captured) == 2
    assert graphs(torch.zeros(3, 3)) == "eager"
    assert graphs(torch.zeros(1, 3, dtype=torch.float16)) == "eager"  # dtype is in the key


def test_a_failed_capture_runs_eagerly_and_is_not_retried(caplog):
    rec = _Recorder(fail=True)
    graphs = ShapeGraphs(rec.fn, rec.capture, name="head")
    x = torch.zeros(1, 3)
    assert [graphs(x) for _ in range(4)] == ["eager"] * 4
    assert graphs.failed == "RuntimeError: operation not permitted when stream is capturing"
    assert caplog.text.count("head: CUDA graph capture failed") == 1


def test_streaming_step_appends_the_new_frame_last(small_model):
    model = small_model(ARCH)
    ex = example_inputs(model, 1, seed=4)
    head = head_graph(model)
    rest = [torch.from_numpy(ex[n]) for n in names_of(model)]
    face = torch.from_numpy(ex[FACES])
    with torch.no_grad():
        got = streaming_step(model, head)(face, *rest).numpy()
        feature = model.encode_frames(face).numpy()
        window = np.concatenate([ex[VISUAL][:, 1:], feature[:, None]], axis=1)
        want = head(torch.from_numpy(window), *rest[1:]).numpy()
    assert got.shape == (1, 7) and np.array_equal(got, want)


def test_streaming_step_with_audio_appends_the_new_token_last(small_model):
    model = small_model(ARCH)
    ex = example_inputs(model, 1, seed=4)
    head, audio = head_graph(model), AudioEncoderGraph(model)
    t = {k: torch.from_numpy(v) for k, v in ex.items()}
    flags = [t["audio_present"], t["visual_present"]]
    with torch.no_grad():
        step = streaming_step(model, head, audio)
        got = step(t[FACES], t[AUDIO_TOKENS], t[VISUAL], t[AUDIO_FEATURES], *flags).numpy()
        feature = model.encode_frames(t[FACES]).numpy()
        token = audio(t[AUDIO_TOKENS]).numpy()
        window = np.concatenate([ex[VISUAL][:, 1:], feature[:, None]], axis=1)
        features = np.concatenate([ex[AUDIO_FEATURES][:, 1:], token[:, None]], axis=1)
        want = head(torch.from_numpy(window), torch.from_numpy(features), *flags).numpy()
    assert got.shape == (1, 7) and np.array_equal(got, want)


def test_no_graphs_on_the_cpu(small_model, tmp_path):
    assert graphs_unavailable("cpu") == "CUDA graphs need a CUDA device, not cpu"
    backend = create_backend(load_bundle(save_bundle(small_model(ARCH), tmp_path / "b")), "torch")
    if backend.device == "cpu":
        assert backend.graphs is None and backend.describe() == "torch fp32 on cpu"


# --------------------------------------------------------------------------- benchmark rows
def test_benchmark_model_rows_say_why_cuda_rows_cannot_run(onnx_exports, tmp_path, monkeypatch):
    import eri.realtime.benchmark as bench

    if torch.cuda.is_available():
        pytest.skip("CUDA present: its rows run")
    bundle = save_bundle(onnx_exports[ARCH].model, tmp_path / "b")
    for graph, src in onnx_exports[ARCH].paths.items():
        shutil.copy(src, bundle / src.name)
        record_export(
            bundle,
            src.name,
            {"file": src.name, "format": "onnx", "precision": "fp32", "graph": graph},
        )
    monkeypatch.setattr(bench, "MODEL_SECONDS", 0.0)  # MODEL_STEPS steps only
    rows = bench.model_rows(load_bundle(bundle), ["fp32"], ["streaming", "live"])
    by = {(r["backend"], r["graphs"], r["device"].split()[0]): r for r in rows}
    assert len(rows) == len(bench.MODEL_CONFIGS)  # `live` is not a model-only mode
    assert by[("torch", False, "cpu")]["status"] == "ok"
    assert by[("torch", False, "cpu")]["steps"] == bench.MODEL_STEPS
    assert by[("onnxruntime", False, "cpu")]["steps_per_s"] > 0
    for key in (("torch", False, "cuda"), ("torch", True, "cuda"), ("tensorrt", True, "cuda")):
        assert by[key]["status"] == "unavailable: no CUDA GPU"
    table = bench.format_model_table(rows)
    assert "| torch (CUDA graphs) | cuda | fp32 | streaming | unavailable: no CUDA GPU |" in table


def test_gpu_models_runs_on_the_cpu_without_the_app_libraries(tmp_path):
    """The GPU script's CPU smoke run, with MediaPipe, PyAV, Qt and scipy made unimportable."""
    out = tmp_path / "gpu.json"
    code = (
        "import sys, runpy\n"
        "for m in ('mediapipe', 'av', 'PySide6', 'pyqtgraph', 'scipy', 'sounddevice'):\n"
        "    sys.modules[m] = None\n"
        f"sys.argv = ['gpu_models.py', '--device', 'cpu', '--quick', '--archs', '{ARCH}',\n"
        f"            '--backends', 'torch', '--steps', '1', '--warmup', '0', '--batch', '2',\n"
        f"            '--json', r'{out}']\n"
        f"runpy.run_path(r'{ROOT / 'benchmarks' / 'gpu_models.py'}', run_name='__main__')\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=600, cwd=tmp_path
    )
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(out.read_text())
    rows = {(r["what"], r["precision"]): r for r in result["rows"]}
    assert result["versions"]["gpu"] is None and result["versions"]["device"] == "cpu"
    assert rows[("step eager", "fp32")]["status"] == "ok"
    assert rows[("encoder batch 2", "fp32")]["per_s"] > 0
    assert rows[("step CUDA graph", "fp32")]["status"].startswith("unavailable: CUDA graphs")
    assert rows[("step eager", "fp16")]["status"] == "unavailable: fp16 runs on CUDA only"
    assert rows[("backend torch", "fp32")]["status"] == "ok"
    assert "| dual_branch | step eager | fp32 | ok |" in run.stdout


# --------------------------------------------------------------------------- on a GPU
@pytest.mark.requires_cuda
@pytest.mark.parametrize("precision, tolerance", [("fp32", 1e-5), ("fp16", 1e-3)])
def test_graphs_equal_eager_on_cuda(small_model, tmp_path, precision, tolerance):
    bundle = load_bundle(save_bundle(small_model(ARCH), tmp_path / "b"))
    graphed = create_backend(bundle, "torch", precision)
    eager = create_backend(bundle, "torch", precision, graphs=False)
    ex = example_inputs(bundle.model, 1, seed=5)
    faces8 = example_inputs(bundle.model, 8, seed=6)[FACES]
    for _ in range(3):  # captured at the second call, replayed at the third
        features = graphed.encode_frames(ex[FACES])
        audio = graphed.encode_audio(ex[AUDIO_TOKENS])
        out = graphed.head(*head_args(ex))
    assert graphed.graphs.encode.graphs and graphed.graphs.head.graphs
    assert graphed.graphs.audio.graphs
    ref_audio = eager.encode_audio(ex[AUDIO_TOKENS])
    assert np.abs(audio - ref_audio).max() <= tolerance * max(1.0, float(np.abs(ref_audio).max()))
    assert "CUDA graphs" in graphed.describe() and eager.graphs is None
    ref_features, ref_out = eager.encode_frames(ex[FACES]), eager.head(*head_args(ex))
    scale = max(1.0, float(np.abs(ref_features).max()))
    assert np.abs(features - ref_features).max() <= tolerance * scale
    assert np.abs(out - ref_out).max() <= tolerance
    batch = graphed.encode_frames(faces8)  # another shape, first seen: eager
    assert np.abs(batch - eager.encode_frames(faces8)).max() <= tolerance * scale


@pytest.mark.requires_cuda
def test_captured_streaming_step_equals_eager(small_model):
    from eri.realtime.cuda_graph import capture

    model = small_model(ARCH).cuda()
    ex = example_inputs(model, 1, seed=7)
    inputs = [torch.from_numpy(ex[FACES]).cuda()]
    inputs += [torch.from_numpy(ex[n]).cuda() for n in names_of(model)]
    step = streaming_step(model, head_graph(model))
    graph = capture(step, inputs)
    with torch.no_grad():
        want = step(*inputs)
    assert torch.allclose(graph(*inputs), want, rtol=0, atol=1e-5)
