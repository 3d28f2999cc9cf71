"""The `eri` command refuses bad arguments before doing any work, answers --version and --help
without torch, writes bundles, and stops cleanly on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import eri
from eri.realtime import cli
from eri.realtime.cli import main

CLI = [sys.executable, "-m", "eri.realtime.cli"]


def _no_work(monkeypatch):
    """Make loading a model fail the test: the command must stop before it."""

    def fail(*args, **kwargs):
        pytest.fail("the command started work before checking its arguments")

    monkeypatch.setattr(cli, "load_bundle_arg", fail)
    monkeypatch.setattr(cli, "_load_model", fail)


# --------------------------------------------------------------------------- version / help
def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"eri {eri.__version__}"


def test_building_the_parser_imports_no_torch():
    code = "import sys; from eri.realtime.cli import build_parser; build_parser(); "
    code += "print('torch' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == "False"


def test_help_is_quick_and_documents_the_benchmark_defaults():
    t0 = time.perf_counter()
    out = subprocess.run([*CLI, "benchmark", "--help"], capture_output=True, text=True, timeout=60)
    elapsed = time.perf_counter() - t0
    assert out.returncode == 0
    assert elapsed < 5  # well under a second on an idle machine; generous for a loaded one
    text = " ".join(out.stdout.split())
    assert f"(default: {cli.BENCH_FRAMES})" in text and f"(default: {cli.BENCH_REPEATS})" in text
    assert f"at least {cli.BENCH_MIN_FRAMES}" in text


def test_cli_defaults_match_the_benchmark_module():
    from eri.realtime import benchmark

    assert cli.BENCH_WARMUP == benchmark.WARMUP
    assert cli.BENCH_MIN_FRAMES == benchmark.MIN_FRAMES
    assert cli.BENCH_FRAMES == benchmark.DEFAULT_FRAMES
    assert cli.BENCH_REPEATS == benchmark.DEFAULT_REPEATS
    assert cli.BENCH_BACKENDS.split(",") == list(benchmark.DEFAULT_BACKENDS)
    assert cli.BENCH_MODES.split(",") == list(benchmark.DEFAULT_MODES)


def test_plot_extensions_are_what_matplotlib_writes():
    assert {"png", "pdf", "svg", "jpg"} <= set(cli.plot_extensions())
    assert "xyz" not in cli.plot_extensions()


# --------------------------------------------------------------------------- benchmark syntax
@pytest.mark.parametrize(
    "args, says",
    [
        (["--frames", "0"], "--frames: 0 is too small; use at least 32"),
        (["--frames", "-5"], "--frames: -5 is too small"),
        (["--frames", "5"], "twice the 16 warm-up frames"),
        (["--frames", "many"], "'many' is not a whole number"),
        (["--repeats", "0"], "--repeats: 0 is too small; use at least 1"),
        (["--threads", "-1"], "--threads: -1 is too small"),
        (["--pace-fps", "0"], "--pace-fps: 0 must be greater than 0"),
        (["--backends", "foo"], "unknown backend 'foo'; give a comma-separated list of torch"),
        (["--backends", "onnxruntime,tensorrt"], "unknown backend 'tensorrt'"),
        (["--backends", ","], "no backend given"),
        (["--mode", "foo"], "unknown mode 'foo'; give a comma-separated list of streaming"),
        (["--precisions", "int4"], "unknown precision 'int4'"),
    ],
)
def test_benchmark_refuses_bad_values_before_work(args, says, capsys, monkeypatch):
    _no_work(monkeypatch)
    with pytest.raises(SystemExit) as exc:
        main(["benchmark", *args])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert says in err and "Traceback" not in err


def test_benchmark_bad_backend_in_a_fresh_process():
    """The reported case: `--backends foo` used to exit 0 after running nothing."""
    out = subprocess.run(
        [*CLI, "benchmark", "--backends", "foo"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 2
    assert "unknown backend 'foo'" in out.stderr and "Traceback" not in out.stderr


# --------------------------------------------------------------------------- output paths
@pytest.fixture
def media(tmp_path) -> Path:
    path = tmp_path / "clip.mp4"
    path.write_bytes(b"")  # never opened: the checks come first
    return path


@pytest.mark.parametrize("plot", ["x.xyz", "curves", "curves.PNGX"])
def test_analyze_refuses_a_plot_format_matplotlib_cannot_write(
    plot, media, tmp_path, caplog, monkeypatch
):
    _no_work(monkeypatch)
    assert main(["analyze", str(media), "--plot", str(tmp_path / plot)]) == 1
    assert "--plot" in caplog.text and "end it in .png" in caplog.text


def test_analyze_accepts_upper_case_plot_extension(media, tmp_path, monkeypatch):
    class Stop(Exception):
        pass

    def stop(*args, **kwargs):
        raise Stop

    monkeypatch.setattr(cli, "_load_model", stop)
    with pytest.raises(Stop):  # got past the checks to the model
        main(["analyze", str(media), "--plot", str(tmp_path / "c.PDF")])


@pytest.mark.parametrize("option", ["--out", "--json", "--plot"])
def test_analyze_output_under_a_file_is_refused_before_work(
    option, media, tmp_path, caplog, monkeypatch
):
    _no_work(monkeypatch)
    blocker = tmp_path / "notes.txt"
    blocker.write_text("x")
    target = blocker / "sub" / "out.png"
    assert main(["analyze", str(media), option, str(target)]) == 1
    assert option in caplog.text and "is a file, not a folder" in caplog.text
    assert not (tmp_path / "notes.txt" / "sub").exists()


@pytest.mark.parametrize("option", ["--out", "--json"])
def test_analyze_output_in_an_unwritable_folder_is_refused_before_work(
    option, media, tmp_path, caplog, monkeypatch
):
    _no_work(monkeypatch)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    real_access = os.access
    if real_access(locked, os.W_OK):  # root ignores the mode bits: say what a user would see
        monkeypatch.setattr(
            cli.os, "access", lambda p, m: False if Path(p) == locked else real_access(p, m)
        )
    try:
        assert main(["analyze", str(media), option, str(locked / "new" / "out.csv")]) == 1
    finally:
        locked.chmod(0o755)
    assert "is not writable" in caplog.text and option in caplog.text
    assert not (locked / "new").exists()


def test_analyze_output_that_is_a_directory(media, tmp_path, caplog, monkeypatch):
    _no_work(monkeypatch)
    assert main(["analyze", str(media), "--out", str(tmp_path)]) == 1
    assert "is a directory; give a file name" in caplog.text


def test_missing_output_folder_is_fine_when_it_can_be_created(tmp_path):
    path = cli.check_writable(tmp_path / "a" / "b" / "out.csv", "predictions CSV", "--out")
    assert not path.parent.exists()  # checked, not created: the writer creates it


def test_benchmark_json_in_an_impossible_folder_is_refused_before_work(
    tmp_path, caplog, monkeypatch
):
    _no_work(monkeypatch)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["benchmark", "--json", str(blocker / "bench.json")]) == 1
    assert "--json" in caplog.text and "is a file, not a folder" in caplog.text


# --------------------------------------------------------------------------- not yet built
def test_train_refuses_an_unknown_architecture_before_any_work(tmp_path, caplog):
    assert main(["train", "--data", str(tmp_path), "--arch", "nope"]) == 1
    assert "No training recipe trains architecture 'nope'" in caplog.text


def test_options_not_offered_are_syntax_errors(capsys):
    for args in (
        ["analyze", "x.mp4", "--backend", "tensorrt"],
        ["export", "b", "--calib-method", "kl"],  # not a calibration method
        ["export", "b", "--format", "engine"],
        ["view", "--precision", "int4"],
    ):
        with pytest.raises(SystemExit) as exc:
            main(args)
        assert exc.value.code == 2, args
    capsys.readouterr()


# --------------------------------------------------------------------------- eri bundle
@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def _modes(path: Path) -> dict[str, int]:
    out = {".": stat.S_IMODE(path.stat().st_mode)}
    out.update({p.name: stat.S_IMODE(p.stat().st_mode) for p in path.iterdir()})
    return out


def test_bundle_command_writes_a_loadable_untrained_bundle(tmp_path, umask_022):
    from eri.models.bundle import load_bundle

    out = tmp_path / "bundles" / "mtl"
    assert main(["bundle", "--arch", "mtl_dan", "--out", str(out)]) == 0
    assert _modes(out) == {".": 0o755, "bundle.json": 0o644, "weights.safetensors": 0o644}
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temp left
    bundle = load_bundle(out)
    assert bundle.meta["architecture"] == "mtl_dan" and not bundle.trained
    assert bundle.meta["provenance"]["created_by"] == "eri bundle"


def test_save_bundle_honours_the_umask(tmp_path):
    from eri.models.bundle import save_bundle, untrained_bundle

    model = untrained_bundle("mtl_dan").model
    old = os.umask(0o027)
    try:
        path = save_bundle(model, tmp_path / "b")
    finally:
        os.umask(old)
    assert _modes(path) == {".": 0o750, "bundle.json": 0o640, "weights.safetensors": 0o640}


def test_bundle_command_with_a_pretrained_backbone(tmp_path):
    import torch

    from eri.models.bundle import load_bundle, untrained_bundle

    backbone = untrained_bundle("dual_branch").model.backbone.state_dict()
    name = next(k for k, v in backbone.items() if v.dtype.is_floating_point and v.ndim == 4)
    state = {k: torch.full_like(v, 0.5) if k == name else v for k, v in backbone.items()}
    weights = tmp_path / "resnet18.pt"
    torch.save(state, weights)
    out = tmp_path / "b"
    assert main(["bundle", "--out", str(out), "--pretrained", str(weights)]) == 0
    bundle = load_bundle(out)
    assert torch.all(bundle.model.backbone.state_dict()[name] == 0.5)
    assert not bundle.trained
    meta = json.loads((out / "bundle.json").read_text())
    assert meta["provenance"]["backbone_weights"]["file"] == str(weights)


@pytest.mark.parametrize(
    "extra, says",
    [
        (["--arch", "resnet9000"], "choose one of: cnn_lstm, dual_branch, mtl_dan"),
        (["--pretrained", "missing.pt"], "--pretrained missing.pt does not exist"),
    ],
)
def test_bundle_command_errors(extra, says, tmp_path, caplog):
    out = tmp_path / "b"
    assert main(["bundle", "--out", str(out), *extra]) == 1
    assert says in caplog.text and not out.exists()


def test_bundle_command_will_not_overwrite(tmp_path, caplog):
    (tmp_path / "b").mkdir()
    assert main(["bundle", "--out", str(tmp_path / "b")]) == 1
    assert "already exists" in caplog.text


def test_bundle_errors_point_at_eri_bundle(tmp_path, caplog):
    assert main(["export", str(tmp_path / "nope")]) == 1
    assert "eri bundle --arch NAME --out DIR" in caplog.text
    assert "eri train" not in caplog.text and "--model" not in caplog.text
    caplog.clear()
    assert main(["export", str(tmp_path)]) == 1
    assert "no bundle.json" in caplog.text and "eri bundle" in caplog.text


# --------------------------------------------------------------------------- SIGTERM
@pytest.mark.slow
def test_sigterm_stops_analyze_like_ctrl_c_and_keeps_the_csv(tmp_path):
    from tests.media_utils import write_video

    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, size=(96, 128, 3), dtype=np.uint8)
    frames = [np.roll(base, i, axis=1) for i in range(1800)]  # 60 s at 30 fps
    video = write_video(tmp_path / "long.mp4", frames)
    csv_path = tmp_path / "out.csv"
    env = {**os.environ, "ERI_CACHE_DIR": str(tmp_path / "cache")}
    proc = subprocess.Popen(
        [*CLI, "analyze", str(video), "--backend", "torch", "--out", str(csv_path)]
        + ["--no-progress"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            if csv_path.exists() and len(csv_path.read_text().splitlines()) > 2:
                break
            time.sleep(0.1)
        assert proc.poll() is None, "analyze finished before it could be interrupted"
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    lines = csv_path.read_text().splitlines()
    header, rows = lines[0].split(","), [line.split(",") for line in lines[1:]]
    assert header[:4] == ["time_s", "frame_index", "face_detected", "audio_present"]
    assert 0 < len(rows) < len(frames)
    assert all(len(r) == len(header) for r in rows)
    values = np.array(rows, dtype=np.float64)  # every row parses
    assert np.all(np.diff(values[:, 1]) == 1)
