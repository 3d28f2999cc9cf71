"""ONNX export: checker passes, ONNX Runtime == torch, and `eri export --check`."""

from __future__ import annotations

import onnx
import pytest

from eri.models.bundle import load_bundle, save_bundle
from eri.models.export import (
    FP32_TOLERANCE,
    compare_onnx,
    export_onnx,
    read_onnx_metadata,
)
from eri.models.registry import create_model, list_models
from eri.models.spec import WindowSpec
from eri.realtime.cli import main

SMALL = {"window": WindowSpec(num_samples=8, context_s=3.2)}


@pytest.mark.parametrize("arch", list_models())
def test_onnx_matches_torch(arch, tmp_path):
    model = create_model(arch, **SMALL).eval()
    paths = export_onnx(model, tmp_path)
    for path in paths.values():
        onnx.checker.check_model(str(path), full_check=True)
        meta = read_onnx_metadata(path)
        assert meta["eri.architecture"] == arch
    # Dynamic batch: compared on a batch size other than the export's.
    diffs = compare_onnx(model, paths, batch=3)
    assert set(diffs) == {"frame_encoder.features", "head.intensities"}
    assert max(diffs.values()) <= FP32_TOLERANCE, diffs


def test_eri_export_check_prints_differences(tmp_path, capsys):
    bundle = save_bundle(create_model("mtl_dan", **SMALL), tmp_path / "b")
    assert main(["export", str(bundle), "--format", "onnx", "--check"]) == 0
    out = capsys.readouterr().out
    assert "frame_encoder.features: max |onnxruntime - torch|" in out
    assert "head.intensities: max |onnxruntime - torch|" in out
    assert (bundle / "frame_encoder.onnx").is_file() and (bundle / "head.onnx").is_file()
    # The export is recorded in the bundle and found again by the loader.
    assert load_bundle(bundle).export_path("head.onnx") == bundle / "head.onnx"


def test_eri_export_unbuilt_format_says_not_implemented(tmp_path):
    bundle = save_bundle(create_model("mtl_dan", **SMALL), tmp_path / "b")
    assert main(["export", str(bundle), "--format", "engine-int8"]) == 2
