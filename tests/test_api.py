"""`eri.analyze`: the per-frame table as a pandas DataFrame, equal to what `eri analyze` writes."""

from __future__ import annotations

import re
import sys

import numpy as np
import pytest

import eri
from eri.errors import INSTALL_HINTS, EriError, MissingDependencyError
from eri.models.spec import EMOTIONS
from eri.realtime.cli import main

pd = pytest.importorskip("pandas")

COLUMNS = ["time_s", "frame_index", "face_detected", "audio_present", *EMOTIONS]


def test_analyze_is_exposed_lazily():
    from eri.api import analyze

    assert eri.analyze is analyze


def test_dataframe_equals_the_csv_of_eri_analyze(tmp_path):
    from tests.media_utils import write_video

    rng = np.random.default_rng(1)
    base = rng.integers(0, 255, size=(96, 128, 3), dtype=np.uint8)
    audio = (0.1 * np.sin(np.linspace(0, 800 * np.pi, 16000 * 2))).astype(np.float32)
    video = write_video(
        tmp_path / "clip.mp4", [np.roll(base, 2 * i, axis=0) for i in range(48)], audio=audio
    )
    with pytest.warns(UserWarning, match="UNTRAINED MODEL"):
        df = eri.analyze(video, arch="mtl_dan", backend="torch")
    csv_path = tmp_path / "out.csv"
    args = ["analyze", str(video), "--arch", "mtl_dan", "--backend", "torch"]
    assert main([*args, "--out", str(csv_path), "--no-progress"]) == 0
    csv = pd.read_csv(csv_path)
    assert list(df.columns) == list(csv.columns) == COLUMNS
    assert len(df) == len(csv) == 48
    np.testing.assert_allclose(df.to_numpy(float), csv.to_numpy(float), rtol=0, atol=1e-6)
    assert df.attrs["trained"] is False
    assert df.attrs["source"] == str(video) and df.attrs["architecture"] == "mtl_dan"
    assert df.attrs["model"] == "untrained mtl_dan" and df.attrs["backend"] == "torch"
    assert df.attrs["summary"]["rows"] == 48
    assert set(df.attrs["summary"]["emotions"]) == set(EMOTIONS)


@pytest.mark.realmedia
@pytest.mark.slow
def test_real_clip(media_dir):
    clip = media_dir / "video" / "single_face.mp4"
    if not clip.is_file():
        pytest.skip(f"{clip} is absent")
    with pytest.warns(UserWarning, match="UNTRAINED"):
        df = eri.analyze(str(clip), backend="torch")
    assert list(df.columns) == COLUMNS
    assert 60 <= len(df) <= 80  # 2.4 s at 30 fps
    assert df["frame_index"].tolist() == list(range(len(df)))
    assert df["face_detected"].mean() > 0.8  # one smiling man, in view throughout
    assert df[list(EMOTIONS)].stack().between(0, 1).all()
    assert df.attrs["trained"] is False and df.attrs["architecture"] == "dual_branch"
    assert df.attrs["summary"]["face_detected_fraction"] == pytest.approx(
        df["face_detected"].mean()
    )


def test_missing_pandas_names_the_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas", None)  # `import pandas` now raises ImportError
    with pytest.raises(MissingDependencyError, match=re.escape(INSTALL_HINTS["pandas"][1])):
        eri.analyze(tmp_path / "x.mp4")


@pytest.mark.parametrize(
    "kwargs, says",
    [
        ({}, "does not exist"),
        ({"backend": "tensorrt"}, "Unknown backend 'tensorrt'; choose one of: auto, torch"),
        ({"mode": "fast"}, "Unknown mode 'fast'"),
        ({"arch": "resnet9000"}, "choose one of: cnn_lstm, dual_branch, mtl_dan"),
    ],
)
def test_bad_arguments_are_eri_errors(kwargs, says, tmp_path):
    path = tmp_path / "x.mp4"
    if kwargs:
        path.write_bytes(b"")
    with pytest.raises(EriError, match=says):
        eri.analyze(path, **kwargs)
