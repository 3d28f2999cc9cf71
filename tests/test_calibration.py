"""INT8 Q/DQ (calibration/): explicit QuantizeLinear/DequantizeLinear, float32 IO, ONNX Runtime
CPU within INT8_TOLERANCE of fp32 torch on held-out windows, and the calibration cache reused
(not recomputed) while it matches the weights and method."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from eri.calibration import (
    INT8_TOLERANCE,
    ArrayDataReader,
    CalibrationCache,
    CalibrationError,
    calibrate,
    export_int8,
    from_arrays,
)
from eri.calibration import quantize as quantize_module
from eri.models.export import (
    AUDIO_FEATURES,
    AUDIO_PRESENT,
    AUDIO_TOKENS,
    FACES,
    VISUAL,
    ort_session,
    read_onnx_metadata,
)
from eri.models.precision import graph_feeds, probe_inputs, torch_reference

slow = pytest.mark.slow
ARCHS = [
    "dual_branch",
    pytest.param("cnn_lstm", marks=slow),
    pytest.param("mtl_dan", marks=slow),
]


@pytest.fixture(autouse=True)
def _cache_env(tmp_path, monkeypatch):
    monkeypatch.setenv("ERI_CACHE_DIR", str(tmp_path / "eri-cache"))


def calibration_set(model, seed: int = 10):
    """8 windows (and their 64 faces, of which 16 are used for the encoder) at real scales."""
    probe = probe_inputs(model, batch=8, seed=seed)
    tokens = probe.get(AUDIO_TOKENS)  # [B*T, F] -> windows of raw tokens [B, T, F]
    return from_arrays(
        probe[FACES][:16],
        probe[VISUAL],
        None if tokens is None else tokens.reshape(*probe[VISUAL].shape[:2], -1),
        probe.get(AUDIO_PRESENT),
    )


@pytest.fixture(scope="module")
def int8(onnx_exports, tmp_path_factory):
    """``int8(arch)`` -> (export, int8 paths, cache dir): quantized once per module (minmax:
    the quickest method; entropy and percentile are covered by a slow test)."""
    done = {}

    def get(arch):
        if arch not in done:
            export = onnx_exports[arch]
            root = tmp_path_factory.mktemp(f"int8-{arch}")
            bundle = SimpleNamespace(model=export.model)
            data = calibrate(bundle, calibration_set(export.model), root / "calib")
            paths = export_int8(
                export.model, export.paths, data, root, method="minmax", cache_dir=root / "calib"
            )
            done[arch] = (export, paths, root / "calib")
        return done[arch]

    return get


@pytest.mark.parametrize("arch", ARCHS)
def test_int8_is_qdq_with_float_io(int8, arch):
    import onnx
    from onnx import TensorProto

    export, paths, _ = int8(arch)
    assert ("audio_encoder" in paths) == export.model.has_audio
    for graph, path in paths.items():
        proto = onnx.load(str(path))
        ops = {n.op_type for n in proto.graph.node}
        io = [*proto.graph.input, *proto.graph.output]
        assert all(v.type.tensor_type.elem_type == TensorProto.FLOAT for v in io), graph
        if graph == "audio_encoder":
            # The audio front stays float as a whole: no Q/DQ, every node listed as fp32.
            assert not ops & {"QuantizeLinear", "DequantizeLinear"}
            kept = json.loads(read_onnx_metadata(path)["eri.fp32_nodes"])
            assert len(kept) == len(proto.graph.node)
            continue
        assert {"QuantizeLinear", "DequantizeLinear"} <= ops, graph
        assert all(v.type.tensor_type.elem_type == TensorProto.FLOAT for v in io), graph
        assert any(t.data_type == TensorProto.INT8 for t in proto.graph.initializer), graph


@pytest.mark.parametrize("arch", ARCHS)
def test_int8_matches_torch_on_held_out_windows(int8, arch):
    export, paths, _ = int8(arch)
    model = export.model
    held = probe_inputs(model, batch=4, seed=20)  # calibration used seed 10
    head = ort_session(paths["head"]).run(None, graph_feeds(paths["head"], held))[0]
    ref = torch_reference(model, held)["head"]
    assert np.abs(head - ref).max() <= INT8_TOLERANCE
    # End to end: int8 encoders' features into the int8 head.
    features = ort_session(paths["frame_encoder"]).run(None, {FACES: held[FACES]})[0]
    e2e = dict(held, **{VISUAL: features.reshape(held[VISUAL].shape)})
    if model.has_audio:
        audio = ort_session(paths["audio_encoder"]).run(None, {AUDIO_TOKENS: held[AUDIO_TOKENS]})
        e2e[AUDIO_FEATURES] = audio[0].reshape(held[AUDIO_FEATURES].shape)
    got = ort_session(paths["head"]).run(None, graph_feeds(paths["head"], e2e))[0]
    assert np.abs(got - ref).max() <= INT8_TOLERANCE


def test_cached_ranges_are_reused(int8, tmp_path):
    export, _, calib = int8("dual_branch")
    cache = CalibrationCache(calib)
    graphs = ("frame_encoder", "audio_encoder", "head")
    mtimes = {g: cache.ranges_path(g).stat().st_mtime_ns for g in graphs}
    before = dict(quantize_module.RANGE_COMPUTATIONS)
    # No data at all: everything must come from the cache.
    bundle = SimpleNamespace(model=export.model)
    data = calibrate(bundle, None, calib)
    export_int8(export.model, export.paths, data, tmp_path, method="minmax", cache_dir=calib)
    assert quantize_module.RANGE_COMPUTATIONS == before
    assert {g: cache.ranges_path(g).stat().st_mtime_ns for g in mtimes} == mtimes
    assert cache.meta()["ranges"] == dict.fromkeys(graphs, "minmax")


def test_head_calibrates_on_fp32_audio_features(small_model):
    """The head's calibration inputs are the fp32 audio encoder's features of the windows'
    tokens; the audio encoder's are the distinct tokens."""
    from eri.calibration.quantize import fp32_audio_encoder

    model = small_model("dual_branch")
    data = calibration_set(model)
    tokens = data.windows[AUDIO_TOKENS]
    head = data.graph_inputs("head", fp32_audio_encoder(model))
    assert AUDIO_TOKENS not in head and head[AUDIO_FEATURES].shape[:2] == tokens.shape[:2]
    with torch.no_grad():
        want = model.encode_audio(torch.from_numpy(tokens)).numpy()
    np.testing.assert_allclose(head[AUDIO_FEATURES], want, rtol=0, atol=1e-5)
    flat = data.graph_inputs("audio_encoder")[AUDIO_TOKENS]
    assert flat.shape[1] == tokens.shape[2] and len(flat) <= tokens.shape[0] * tokens.shape[1]
    assert len(np.unique(flat, axis=0)) == len(flat) and len(flat) % 8 == 0


def test_ranges_of_the_old_graph_version_are_recomputed(int8, tmp_path, caplog):
    """Ranges computed for graph version 1 (whose head took raw tokens) name other tensors:
    never reused, recomputed."""
    export, _, calib = int8("dual_branch")
    cache = CalibrationCache(calib)
    meta = cache.meta()
    meta.pop("graph_version")
    cache._write_meta(meta)
    with caplog.at_level("INFO", logger="eri.calibration"):
        path = cache.ranges_for("head", meta["weights"], "minmax")
    assert not path.exists() and "graph version 1; recomputing" in caplog.text
    data = calibrate(SimpleNamespace(model=export.model), None, calib)
    before = quantize_module.RANGE_COMPUTATIONS.get("head", 0)
    export_int8(export.model, export.paths, data, tmp_path, method="minmax", cache_dir=calib)
    assert quantize_module.RANGE_COMPUTATIONS["head"] == before + 1
    assert cache.meta()["graph_version"] == 2


def test_cache_for_other_weights_is_refused(int8, small_model, caplog):
    _, _, calib = int8("dual_branch")
    other = SimpleNamespace(model=small_model("dual_branch", seed=1))
    with caplog.at_level("WARNING", logger="eri.calibration"):
        with pytest.raises(CalibrationError, match="does not match"):
            calibrate(other, None, calib)
    assert "made for weights" in caplog.text


def test_cache_round_trip(small_model, tmp_path):
    model = small_model("mtl_dan")
    data = calibration_set(model)
    bundle = SimpleNamespace(model=model)
    calibrate(bundle, data, tmp_path / "c")
    again = calibrate(bundle, None, tmp_path / "c")
    assert np.array_equal(again.faces, data.faces)
    assert again.windows.keys() == data.windows.keys()
    for key, value in data.windows.items():
        assert np.array_equal(again.windows[key], value)


def test_reader_yields_every_row_in_batches():
    arrays = {"x": np.arange(10, dtype=np.float32).reshape(10, 1)}
    reader = ArrayDataReader(arrays, batch=4)
    rows = [b["x"] for b in iter(reader.get_next, None)]
    assert [len(r) for r in rows] == [4, 4, 2]
    reader.rewind()
    again = [b["x"] for b in iter(reader.get_next, None)]
    assert np.array_equal(np.concatenate(again), arrays["x"])


def test_unknown_method_is_refused(int8, tmp_path):
    export, _, _ = int8("dual_branch")
    with pytest.raises(CalibrationError, match="entropy"):
        export_int8(export.model, export.paths, None, tmp_path, method="kl")


@slow
@pytest.mark.parametrize("method", ["entropy", "percentile"])
def test_other_methods_within_tolerance(int8, method, tmp_path):
    export, _, calib = int8("dual_branch")
    model = export.model
    data = calibrate(SimpleNamespace(model=model), None, calib)
    paths = export_int8(model, export.paths, data, tmp_path, method=method)
    held = probe_inputs(model, batch=4, seed=20)
    got = ort_session(paths["head"]).run(None, graph_feeds(paths["head"], held))[0]
    assert np.abs(got - torch_reference(model, held)["head"]).max() <= INT8_TOLERANCE


@slow
def test_calibration_from_media(media_dir, small_model, tmp_path):
    """A real video through the pipeline's tracker, crop and audio front end."""
    pytest.importorskip("mediapipe")
    from eri.calibration import from_media

    folder = tmp_path / "media"
    folder.mkdir()
    (folder / "single_face.mp4").symlink_to(media_dir / "video" / "single_face.mp4")
    model = small_model("dual_branch")
    data = from_media(SimpleNamespace(model=model), folder, max_faces=16, max_windows=16)
    assert data.num_faces == 16 and data.num_windows == 16
    assert data.faces.shape[1:] == (3, model.crop.size, model.crop.size)
    assert 0.0 <= data.faces.min() and data.faces.max() <= 1.0
    assert data.windows[VISUAL].shape[1:] == (model.window.num_samples, model.feature_dim)
    assert data.windows[AUDIO_TOKENS].shape[2] == model.audio_spec.token_dim
    # The windows hold the raw tokens behind the features the head was fed (traced back from
    # the pipeline's per-token cache): real audio, not the zeros of "no audio".
    assert np.abs(data.windows[AUDIO_TOKENS]).max() > 10
