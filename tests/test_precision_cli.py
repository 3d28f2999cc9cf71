"""fp16 and int8 through the product: `eri export --format onnx-fp16 | onnx-int8`, `eri
calibrate`, `--precision` on the backends and `eri benchmark` rows, and the bad inputs (no
--calib, empty or mismatched calibration, wrong shapes, no int8 export).

The bundles here are the seeded small dual_branch of tests/conftest.py, with the session's fp32
export (``onnx_exports``) copied in as the bundle's own, so nothing exports fp32 again.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from eri.calibration import (
    INT8_TOLERANCE,
    CalibrationCache,
    CalibrationError,
    calibrate,
    from_arrays,
)
from eri.models.bundle import load_bundle, record_export, save_bundle
from eri.models.export import (
    AUDIO_FEATURES,
    AUDIO_PRESENT,
    AUDIO_TOKENS,
    FACES,
    VISUAL,
    head_args,
    model_cache_dir,
    weights_digest,
)
from eri.models.precision import FP16_TOLERANCE, probe_inputs, torch_reference
from eri.realtime.backends import BackendError, create_backend
from eri.realtime.cli import main

ARCH = "dual_branch"
BACKENDS_LOG = "eri.realtime.backends"


def _bundle_with_fp32(onnx_exports, folder: Path) -> Path:
    """A bundle of the small seeded model whose own fp32 export is the session's."""
    export = onnx_exports[ARCH]
    path = save_bundle(export.model, folder)
    for graph, src in export.paths.items():
        shutil.copy(src, path / src.name)
        record_export(
            path,
            src.name,
            {"file": src.name, "format": "onnx", "precision": "fp32", "graph": graph},
        )
    return path


def _calibration_arrays(model, seed: int = 10):
    """8 windows and 16 crops at real scales (speech-like and silent audio tokens)."""
    probe = probe_inputs(model, batch=8, seed=seed)
    tokens = probe[AUDIO_TOKENS].reshape(*probe[VISUAL].shape[:2], -1)  # windows [B, T, F]
    return from_arrays(probe[FACES][:16], probe[VISUAL], tokens, probe.get(AUDIO_PRESENT))


def _variant_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if "_fp16" in p.name or "_int8" in p.name)


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


@pytest.fixture(scope="module")
def exported(onnx_exports, tmp_path_factory):
    """A bundle with fp32, fp16 and int8 exports made by the CLI (int8 from a calibration
    cache with a held-out set, minmax), and the --check output of each."""
    root = tmp_path_factory.mktemp("variants")
    bundle = _bundle_with_fp32(onnx_exports, root / "bundle")
    calib = root / "calib"
    calibrate(
        load_bundle(bundle), _calibration_arrays(onnx_exports[ARCH].model), calib, held_out=0.25
    )
    printed = {}
    for fmt, extra in (
        ("onnx-fp16", []),
        ("onnx-int8", ["--calib", str(calib), "--calib-method", "minmax"]),
    ):
        with contextlib.redirect_stdout(io.StringIO()) as out:
            assert main(["export", str(bundle), "--format", fmt, "--check", *extra]) == 0
        printed[fmt] = out.getvalue()
    return bundle, printed


# --------------------------------------------------------------------------- eri export
def test_export_fp16_and_int8_write_and_record(exported):
    bundle, _ = exported
    assert _variant_files(bundle) == [
        "audio_encoder_fp16.onnx",
        "audio_encoder_int8.onnx",
        "frame_encoder_fp16.onnx",
        "frame_encoder_int8.onnx",
        "head_fp16.onnx",
        "head_int8.onnx",
    ]
    assert _leftovers(bundle) == []
    exports = json.loads((bundle / "bundle.json").read_text())["exports"]
    assert exports["head_fp16.onnx"]["precision"] == "fp16"
    assert exports["frame_encoder_int8.onnx"]["format"] == "onnx-int8"
    assert exports["head_int8.onnx"]["calibration"]["method"] == "minmax"


def test_export_check_prints_results(exported):
    fp16, int8 = exported[1]["onnx-fp16"], exported[1]["onnx-int8"]
    assert "head.intensities" in fp16 and "end_to_end.intensities" in fp16
    assert "OK: within 0.005" in fp16
    assert "audio_encoder.audio_features" in fp16
    assert "end_to_end.intensities" in int8 and "OK: within 0.05" in int8
    assert re.search(r"audio_encoder\.audio_features on \d+ held-out audio tokens", int8)
    # The per-emotion correlation on the 2 windows held out of calibration (of 8).
    assert "over 2 held-out windows" in int8
    assert all(f"  {e}" in int8 for e in ("adoration", "surprise"))


@pytest.mark.slow  # a full fp16 conversion (~5-8 s on 2 cores)
def test_failed_check_writes_nothing(onnx_exports, tmp_path, monkeypatch, caplog):
    import eri.realtime.variants as variants

    bundle = _bundle_with_fp32(onnx_exports, tmp_path / "b")
    monkeypatch.setattr(variants, "FP16_TOLERANCE", 1e-12)  # nothing fp16 can meet
    assert main(["export", str(bundle), "--format", "onnx-fp16", "--check"]) == 1
    assert "not written" in caplog.text
    assert _variant_files(bundle) == [] and _leftovers(bundle) == []
    assert not any("fp16" in k for k in json.loads((bundle / "bundle.json").read_text())["exports"])


# --------------------------------------------------------------------------- bad input
def test_int8_without_calib_names_the_fix(onnx_exports, tmp_path, caplog):
    bundle = _bundle_with_fp32(onnx_exports, tmp_path / "b")
    assert main(["export", str(bundle), "--format", "onnx-int8"]) == 1
    assert "eri calibrate" in caplog.text and "--calib CALIB" in caplog.text
    assert _variant_files(bundle) == []


def test_calib_with_another_format_is_refused(onnx_exports, tmp_path, caplog):
    bundle = _bundle_with_fp32(onnx_exports, tmp_path / "b")
    assert main(["export", str(bundle), "--format", "onnx-fp16", "--calib", "c"]) == 1
    assert "onnx-int8 only" in caplog.text
    assert _variant_files(bundle) == []


def test_int8_with_empty_calibration_cache(onnx_exports, tmp_path, caplog):
    bundle = _bundle_with_fp32(onnx_exports, tmp_path / "b")
    (tmp_path / "calib").mkdir()
    args = ["--format", "onnx-int8", "--calib", str(tmp_path / "calib")]
    assert main(["export", str(bundle), *args]) == 1
    assert "holds no calibration" in caplog.text and "eri calibrate" in caplog.text
    assert _variant_files(bundle) == [] and _leftovers(bundle) == []


def test_int8_with_cache_of_other_weights(onnx_exports, small_model, tmp_path, caplog):
    bundle = _bundle_with_fp32(onnx_exports, tmp_path / "b")
    other = save_bundle(small_model(ARCH, seed=1), tmp_path / "other")
    calibrate(load_bundle(other), _calibration_arrays(small_model(ARCH, seed=1)), tmp_path / "c")
    args = ["--format", "onnx-int8", "--calib", str(tmp_path / "c")]
    assert main(["export", str(bundle), *args]) == 1
    assert "other weights" in caplog.text and "eri calibrate" in caplog.text
    assert _variant_files(bundle) == [] and _leftovers(bundle) == []


def test_calibration_data_of_wrong_shapes(onnx_exports, tmp_path, caplog):
    bundle = _bundle_with_fp32(onnx_exports, tmp_path / "b")
    model = onnx_exports[ARCH].model
    good = _calibration_arrays(model)
    small_faces = good.faces[:, :, :64, :64]  # crops of another size
    wrong = from_arrays(small_faces, good.windows[VISUAL], good.windows[AUDIO_TOKENS])
    # Through the Python API: refused before anything is cached.
    with pytest.raises(CalibrationError, match=r"faces of shape \[16, 3, 64, 64\]"):
        calibrate(load_bundle(bundle), wrong, tmp_path / "api")
    assert not (tmp_path / "api").exists()
    # A cache holding such arrays for these very weights (hand-made or damaged).
    CalibrationCache(tmp_path / "c").save(
        wrong, weights=weights_digest(model), architecture=model.arch_name
    )
    args = ["--format", "onnx-int8", "--calib", str(tmp_path / "c")]
    assert main(["export", str(bundle), *args]) == 1
    assert "takes ['N', 3, 112, 112]" in caplog.text and "eri calibrate" in caplog.text
    assert _variant_files(bundle) == [] and _leftovers(bundle) == []


def test_calibrate_refuses_empty_and_missing_data(onnx_exports, tmp_path, caplog):
    bundle = _bundle_with_fp32(onnx_exports, tmp_path / "b")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no media here")
    out = tmp_path / "calib"
    assert main(["calibrate", str(bundle), "--data", str(empty), "--out", str(out)]) == 1
    assert "holds no media files" in caplog.text
    assert main(["calibrate", str(bundle), "--data", str(tmp_path / "nope"), "--out", str(out)])
    assert "does not exist" in caplog.text
    assert not out.exists()


def test_precision_int8_without_export(onnx_exports, tmp_path, caplog):
    bundle = _bundle_with_fp32(onnx_exports, tmp_path / "b")
    media = tmp_path / "clip.mp4"
    media.write_bytes(b"")  # the backend is refused before the file is opened
    args = ["--model", str(bundle), "--backend", "onnxruntime", "--precision", "int8"]
    assert main(["analyze", str(media), *args]) == 1
    assert "no int8 export" in caplog.text
    assert "eri calibrate" in caplog.text and "--format onnx-int8" in caplog.text


def test_torch_refuses_fp16_and_int8_on_cpu(onnx_exports, tmp_path):
    bundle = load_bundle(_bundle_with_fp32(onnx_exports, tmp_path / "b"))
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA present: torch runs fp16 there")
    with pytest.raises(BackendError, match="fp16 only on CUDA.*--backend onnxruntime"):
        create_backend(bundle, "torch", "fp16")
    with pytest.raises(BackendError, match="does not run int8.*--backend onnxruntime"):
        create_backend(bundle, "torch", "int8")
    with pytest.raises(BackendError, match="Unknown precision 'int4'"):
        create_backend(bundle, "onnxruntime", "int4")


@pytest.mark.requires_cuda
def test_torch_fp16_on_cuda(onnx_exports, tmp_path):
    bundle = load_bundle(_bundle_with_fp32(onnx_exports, tmp_path / "b"))
    probe = probe_inputs(bundle.model, batch=2, seed=1)
    ref = torch_reference(bundle.model, probe)["head"]  # before the backend moves it to CUDA
    backend = create_backend(bundle, "torch", "fp16")
    got = backend.head(*head_args(probe))
    assert backend.precision == "fp16"
    assert np.abs(got - ref).max() <= FP16_TOLERANCE * np.abs(ref).max()


def test_benchmark_rows_say_why_a_precision_cannot_run(onnx_exports, tmp_path, capsys):
    bundle = _bundle_with_fp32(onnx_exports, tmp_path / "b")
    out = tmp_path / "bench.json"
    args = ["--model", str(bundle), "--backends", "torch,onnxruntime", "--precisions", "int8"]
    assert main(["benchmark", *args, "--mode", "streaming", "--json", str(out)]) == 0
    rows = {r["backend"]: r for r in json.loads(out.read_text())["rows"]}
    assert rows["onnxruntime"]["status"].startswith("unavailable:")
    assert "eri calibrate" in rows["onnxruntime"]["status"]
    assert "does not run int8" in rows["torch"]["status"]
    assert "| onnxruntime | int8 | streaming | unavailable:" in capsys.readouterr().out


# --------------------------------------------------------------------------- backends
@pytest.mark.parametrize(
    "precision, tolerance", [("fp16", FP16_TOLERANCE), ("int8", INT8_TOLERANCE)]
)
def test_backend_loads_the_bundles_variant(exported, precision, tolerance, caplog):
    bundle = load_bundle(exported[0])
    with caplog.at_level("INFO", logger=BACKENDS_LOG):
        backend = create_backend(bundle, "onnxruntime", precision)
    assert str(exported[0] / f"frame_encoder_{precision}.onnx") in caplog.text
    assert str(exported[0] / f"head_{precision}.onnx") in caplog.text
    assert str(exported[0] / f"audio_encoder_{precision}.onnx") in caplog.text
    assert backend.precision == precision and "fp32" not in backend.describe()
    probe = probe_inputs(bundle.model, batch=2, seed=30)
    ref = torch_reference(bundle.model, probe)
    features = backend.encode_frames(probe[FACES])
    audio = backend.encode_audio(probe[AUDIO_TOKENS])
    # End to end as the pipeline runs it: the variant's features into the variant's head.
    e2e = dict(probe, **{VISUAL: features.reshape(probe[VISUAL].shape)})
    e2e[AUDIO_FEATURES] = audio.reshape(probe[AUDIO_FEATURES].shape)
    got = backend.head(*head_args(e2e))
    bound = tolerance * np.abs(ref["head"]).max() if precision == "fp16" else tolerance
    assert np.abs(got - ref["head"]).max() <= bound


@pytest.mark.slow  # a full fp16 conversion (~5-8 s on 2 cores)
def test_fp16_made_on_demand_in_the_cache(onnx_exports, small_model, caplog):
    """A bundle without fp16 exports: converted once into the export cache, beside fp32."""
    from eri.models.bundle import Bundle, bundle_meta

    export = onnx_exports[ARCH]
    model = small_model(ARCH)
    target = model_cache_dir(model)
    target.mkdir(parents=True, exist_ok=True)
    for src in export.paths.values():  # the session's fp32 export, as if cached already
        shutil.copy(src, target / src.name)
    bundle = Bundle(model=model, meta=bundle_meta(model, trained=False))
    with caplog.at_level("INFO", logger="eri"):
        backend = create_backend(bundle, "onnxruntime", "fp16")
    assert f"loading {target / 'frame_encoder_fp16.onnx'}" in caplog.text
    assert (target / "head_fp16.onnx").is_file() and (target / "audio_encoder_fp16.onnx").is_file()
    probe = probe_inputs(model, batch=2, seed=30)
    ref = torch_reference(model, probe)["head"]
    got = backend.head(*head_args(probe))
    assert np.abs(got - ref).max() <= FP16_TOLERANCE * np.abs(ref).max()


@pytest.mark.slow
def test_calibrate_cli_on_real_media(media_dir, onnx_exports, tmp_path, capsys):
    """`eri calibrate` on a real video, then the int8 export checked on its held-out windows."""
    pytest.importorskip("mediapipe")
    bundle = _bundle_with_fp32(onnx_exports, tmp_path / "b")
    data = tmp_path / "media"
    data.mkdir()
    (data / "single_face.mp4").symlink_to(media_dir / "video" / "single_face.mp4")
    calib = tmp_path / "calib"
    assert main(["calibrate", str(bundle), "--data", str(data), "--out", str(calib)]) == 0
    meta = json.loads((calib / "calibration.json").read_text())
    assert meta["windows"] > 0 and meta["held_out"]["windows"] > 0
    assert meta["weights"] == weights_digest(load_bundle(bundle).model)
    args = ["--calib", str(calib), "--calib-method", "minmax", "--check"]
    assert main(["export", str(bundle), "--format", "onnx-int8", *args]) == 0
    assert "held-out windows" in capsys.readouterr().out
    assert (bundle / "head_int8.onnx").is_file()
