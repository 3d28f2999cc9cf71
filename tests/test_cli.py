"""The `eri` command: info, models, benchmark JSON, stubs and clear errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from eri.realtime.cli import main


def test_models_lists_the_three_architectures(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    names = [line.split()[0] for line in out.strip().splitlines()]
    assert names == ["cnn_lstm", "dual_branch", "mtl_dan"]
    assert "(default)" in next(line for line in out.splitlines() if line.startswith("dual_branch"))


def test_info_json(capsys):
    assert main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert {"torch", "onnxruntime"} <= set(info["versions"])
    assert info["backends"]["onnxruntime"].startswith("available")
    assert "microphone_support" in info and isinstance(info["cameras"], list)


def test_console_script_runs():
    """The installed `eri` entry point (python -m form) works in a fresh process."""
    out = subprocess.run(
        [sys.executable, "-m", "eri.realtime.cli", "models"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0 and "dual_branch" in out.stdout


def test_unknown_bundle_is_one_clear_error(tmp_path, caplog):
    assert main(["export", str(tmp_path / "nope")]) == 1
    assert "does not exist" in caplog.text


@pytest.mark.slow
def test_benchmark_json_schema(tmp_path, monkeypatch, capsys):
    out = tmp_path / "bench.json"
    code = main(
        [
            "benchmark",
            "--source",
            "synthetic",
            "--backends",
            "onnxruntime",
            "--mode",
            "streaming,recompute",
            "--frames",
            "32",
            "--repeats",
            "1",
            "--json",
            str(out),
        ]
    )
    assert code == 0
    result = json.loads(out.read_text())
    assert {"cpu", "cores", "versions"} <= set(result["device"])
    assert result["frames_per_run"] == 32 and result["warmup_frames"] == 16
    rows = {(r["backend"], r["mode"]): r for r in result["rows"]}
    assert set(rows) == {("onnxruntime", "streaming"), ("onnxruntime", "recompute")}
    for mode in ("streaming", "recompute"):
        row = rows[("onnxruntime", mode)]
        assert row["status"] == "ok" and row["precision"] == "fp32"
        assert row["fps"] > 0 and len(row["fps_runs"]) == 1
        assert row["frames"] == 32
        assert row["face_detected_fraction"] > 0.9  # the synthetic face is found: encoder runs
        assert set(row["latency_ms"]) == {"p50", "p95", "p99"}
        assert {"decode", "face", "encoder", "head", "total"} <= set(row["stages"])
        assert all(set(v) == {"p50", "p95"} for v in row["stages"].values())
    # Recompute re-encodes 32 crops per step: its encoder stage must cost more.
    assert (
        rows[("onnxruntime", "recompute")]["stages"]["encoder"]["p50"]
        > rows[("onnxruntime", "streaming")]["stages"]["encoder"]["p50"]
    )
    assert "| onnxruntime | fp32 | streaming | ok |" in capsys.readouterr().out


def test_unknown_architecture_lists_the_valid_ones(caplog):
    assert main(["benchmark", "--arch", "resnet9000"]) == 1
    assert "choose one of: cnn_lstm, dual_branch, mtl_dan" in caplog.text


def test_bundle_from_a_newer_version_is_refused_by_every_command(tmp_path, caplog):
    from eri.models.bundle import save_bundle
    from eri.models.registry import create_model
    from eri.models.spec import WindowSpec

    path = save_bundle(create_model("mtl_dan", window=WindowSpec(8, 3.2)), tmp_path / "b")
    meta = json.loads((path / "bundle.json").read_text())
    meta["format_version"] = 99
    (path / "bundle.json").write_text(json.dumps(meta))
    for args in (["export", str(path)], ["benchmark", "--model", str(path)]):
        caplog.clear()
        assert main(args) == 1
        assert "format version 99" in caplog.text and "upgrade" in caplog.text
    assert not (path / "frame_encoder.onnx").exists()  # nothing half-written


@pytest.mark.slow
def test_camera_that_is_not_there(caplog):
    code = main(
        [
            "benchmark",
            "--source",
            "7",
            "--backends",
            "onnxruntime",
            "--mode",
            "live",
            "--repeats",
            "1",
        ]
    )
    assert code == 1 and "Camera 7 could not be opened" in caplog.text
