"""benchmarks/gpu_train.py: its pack refusals, and a CPU run from a real pack with MediaPipe,
PyAV and Qt made unimportable (as on the GPU machine)."""

from __future__ import annotations

import importlib
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def gpu_train(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))  # the scripts import their siblings
    return importlib.import_module("gpu_train")


def _fake_pack(path: Path, key: str) -> None:
    (path / "clips").mkdir(parents=True)
    splits = ("Train", "Val")
    clips = [{"clip_id": f"{i:05d}", "split": s, "labels": [0.5] * 7} for i, s in enumerate(splits)]
    for c in clips:
        (path / "clips" / f"{c['clip_id']}.npz").write_bytes(b"")
    meta = {"recipe": "dual_branch", "key": key, "clips": clips}
    (path / "pack.json").write_text(json.dumps(meta))


def test_run_refuses_a_missing_pack(gpu_train, tmp_path, caplog):
    assert gpu_train.main(["run", "--device", "cpu", "--pack", str(tmp_path / "none")]) == 1
    assert "make the pack with `python benchmarks/gpu_train.py pack`" in caplog.text


def test_run_refuses_a_pack_missing_a_clip(gpu_train, tmp_path, caplog):
    _fake_pack(tmp_path, "0" * 16)
    (tmp_path / "clips" / "00001.npz").unlink()
    assert gpu_train.main(["run", "--device", "cpu", "--pack", str(tmp_path)]) == 1
    assert "lacks 1 clip file(s) (e.g. 00001); pack again." in caplog.text


def test_run_refuses_a_pack_made_for_other_specs(gpu_train, tmp_path, caplog):
    _fake_pack(tmp_path, "0" * 16)
    assert gpu_train.main(["run", "--device", "cpu", "--pack", str(tmp_path)]) == 1
    assert "holds windows for cache key 0000000000000000, but the recipe's model" in caplog.text


@pytest.mark.slow
def test_pack_then_cpu_run_without_the_app_libraries(gpu_train, tmp_path):
    pytest.importorskip("mediapipe")
    pytest.importorskip("av")
    pack = tmp_path / "pack"
    meta = gpu_train.make_pack(pack, train=2, val=2, seed=0, workers=1)
    assert sorted(p.name for p in (pack / "clips").iterdir()) == [f"{i:05d}.npz" for i in range(4)]
    assert [c["split"] for c in meta["clips"]] == ["Train", "Train", "Val", "Val"]
    out = tmp_path / "train.json"
    code = (
        "import sys, runpy\n"
        "for m in ('mediapipe', 'av', 'PySide6', 'pyqtgraph', 'sounddevice'):\n"
        "    sys.modules[m] = None\n"
        "sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in repr(f).lower()]\n"
        f"sys.path.insert(0, r'{ROOT / 'benchmarks'}')\n"
        "sys.argv = ['gpu_train.py', 'run', '--device', 'cpu', '--train-clips', '3',\n"
        f"            '--val-clips', '2', '--batch-size', '2', '--pack', r'{pack}',\n"
        f"            '--json', r'{out}']\n"
        f"runpy.run_path(r'{ROOT / 'benchmarks' / 'gpu_train.py'}', run_name='__main__')\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=600, cwd=tmp_path
    )
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["versions"]["device"] == "cpu" and result["versions"]["gpu"] is None
    assert result["unique_clips"] == {"Train": 2, "Val": 2}
    assert result["pack"]["key"] == meta["key"]
    (cpu,) = result["runs"]
    assert cpu["amp"] is False and cpu["in_memory"] is True
    assert (cpu["train_clips"], cpu["val_clips"]) == (3, 2)
    assert [s["stage"] for s in cpu["stages"]] == ["audio", "visual", "fusion"]
    for s in cpu["stages"]:
        (steps,) = s["step_s"]  # one epoch: batches of 2 and 1
        assert (s["epochs"], s["steps_per_epoch"], s["batch_size"]) == (1, 2, 2)
        assert s["median_step_s"] == float(np.median(steps)) == s["history"][0]["step_time_s"]
        assert math.isclose(s["samples_per_s"], 3 / sum(steps), rel_tol=1e-12)
        assert s["train_epoch_s"][0] >= sum(steps) and s["stage_wall_s"] >= s["train_epoch_s"][0]
    assert "| cpu | fp32 | visual | 3 | 2 | 2 |" in run.stdout
