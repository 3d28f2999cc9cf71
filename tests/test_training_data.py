"""Datasets behind one interface (eri.training.data): the ABAW5 layouts, recorded sessions, a
manifest CSV, label normalisation, every bad input, and the generated dataset."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from eri.models.spec import EMOTIONS
from eri.realtime.session.format import SESSION_FORMAT_VERSION, write_session_json
from eri.training.data import (
    ABAW_COLUMNS,
    DatasetError,
    generate_dataset,
    normalise_labels,
    open_dataset,
)

HEADER = ["File_ID", "Split", *ABAW_COLUMNS]
PROJECT_ROOT = Path(__file__).resolve().parents[1]


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def _data_info(root: Path, rows: list[list[str]], header: list[str] = HEADER) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    with (root / "data_info.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return root / "data_info.csv"


def _abaw(root: Path, rows: list[list[str]], prefix: str = "") -> Path:
    """A release with an mp4 and a wav for every row (empty files: loaders only find them)."""
    for row in rows:
        for kind, ext in (("mp4", ".mp4"), ("wav", ".wav")):
            _touch(root / prefix / row[1] / kind / f"{row[0]}{ext}")
    _data_info(root, rows)
    return root


LABELS = ["0.1", "0.2", "0.3", "0.4", "0.5", "0.6", "0.7"]


# ----------------------------------------------------------------------------- ABAW5
@pytest.mark.parametrize("prefix", ["", "raw"])
def test_abaw_layouts(tmp_path, prefix):
    rows = [
        ["00001", "Train", *LABELS],
        ["00002", "Val", "10", "20", "40", "80", "1", "5", "50"],
        ["00003", "Test", *[""] * 7],
    ]
    root = _abaw(tmp_path / "abaw", rows, prefix)
    index = open_dataset(root)
    assert index.kind == "abaw5" and index.splits == ["Train", "Val", "Test"]
    a, b, c = index.clips
    assert a.video == root / prefix / "Train" / "mp4" / "00001.mp4"
    assert a.audio == root / prefix / "Train" / "wav" / "00001.wav"
    assert a.labels.dtype == np.float32 and a.labels.tolist() == pytest.approx(
        [float(v) for v in LABELS]
    )
    # 1-100 self-reports are divided by the row's maximum (80).
    np.testing.assert_allclose(b.labels, np.array([10, 20, 40, 80, 1, 5, 50]) / 80, rtol=1e-6)
    assert c.labels is None and a.origin == "data_info.csv line 2"
    assert open_dataset(root / "data_info.csv").clips == index.clips
    info = index.describe()
    assert info["clips"] == {"Train": 1, "Val": 1, "Test": 1}
    assert info["labelled"] == {"Train": 1, "Val": 1, "Test": 0}
    assert len(info["labels_sha256"]) == 64
    json.dumps(info)


def test_abaw_video_only_and_audio_only_rows(tmp_path):
    root = tmp_path / "abaw"
    _touch(root / "train" / "mp4" / "v.mp4")  # a lower-case split folder is found too
    _touch(root / "Train" / "wav" / "a.wav")
    _data_info(root, [["v", "Train", *LABELS], ["a", "Train", *LABELS]])
    v, a = open_dataset(root).clips
    assert v.video == v.audio == root / "train" / "mp4" / "v.mp4"  # its own audio track
    assert a.video is None and a.audio == root / "Train" / "wav" / "a.wav"


def test_abaw_split_errors(tmp_path):
    root = _abaw(tmp_path / "abaw", [["1", "Train", *LABELS], ["2", "Test", *[""] * 7]])
    index = open_dataset(root)
    with pytest.raises(
        DatasetError, match=r"no clips in split 'Dev'; valid splits are: Train, Test"
    ):
        index.split("Dev")
    with pytest.raises(DatasetError, match="Split 'Test' .* has no labelled clips"):
        index.labelled("Test")
    assert [c.clip_id for c in index.labelled("Train")] == ["1"]


@pytest.mark.parametrize(
    ("rows", "header", "message"),
    [
        ([], HEADER[:-2], r"lacks the column\(s\) Fear, Surprise"),
        (
            [["1", "Train", "0.1", *LABELS[1:6], "1.5e3"]],
            HEADER,
            r"line 2: surprise = 1.5e3 is out of range",
        ),
        (
            [["1", "Train", "-0.1", *LABELS[1:]]],
            HEADER,
            r"line 2: adoration = -0.1 is out of range",
        ),
        ([["1", "Train", "nan", *LABELS[1:]]], HEADER, r"line 2: adoration = nan is out of range"),
        (
            [["1", "Train", "high", *LABELS[1:]]],
            HEADER,
            r"line 2: adoration = 'high' is not a number",
        ),
        ([["1", "Train", "", *LABELS[1:]]], HEADER, r"line 2 has empty labels for adoration"),
        (
            [["1", "Train", *LABELS], ["1", "Val", *LABELS]],
            HEADER,
            r"'1' appears twice \(data_info.csv line 2 and data_info.csv line 3\)",
        ),
        ([["1", "", *LABELS]], HEADER, r"line 2 has an empty Split"),
        ([], HEADER, r"lists no clips"),
    ],
)
def test_abaw_bad_data_info(tmp_path, rows, header, message):
    root = tmp_path / "abaw"
    for row in rows:
        if row[1]:
            _touch(root / row[1] / "mp4" / f"{row[0]}.mp4")
    _data_info(root, rows, header)
    with pytest.raises(DatasetError, match=message) as err:
        open_dataset(root)
    assert "data_info.csv" in str(err.value)


def test_abaw_file_id_without_media(tmp_path):
    root = _abaw(tmp_path / "abaw", [["1", "Train", *LABELS]])
    with (root / "data_info.csv").open("a", newline="") as f:
        csv.writer(f).writerow(["missing", "Val", *LABELS])
    with pytest.raises(
        DatasetError,
        match=r"data_info.csv line 3: File_ID 'missing' has no media; put missing.mp4 or "
        r"missing.wav under one of Val/mp4",
    ):
        open_dataset(root)


def test_missing_or_empty_data_info(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        open_dataset(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(
        DatasetError, match="is not a dataset: expected a folder with data_info.csv"
    ):
        open_dataset(tmp_path / "empty")
    (tmp_path / "empty" / "data_info.csv").write_text("")
    with pytest.raises(DatasetError, match="data_info.csv is empty"):
        open_dataset(tmp_path / "empty")
    (tmp_path / "empty" / "data_info.csv").write_bytes(b"\xff\xfe\x00garbage\x00")
    with pytest.raises(DatasetError, match="Cannot read .*data_info.csv"):
        open_dataset(tmp_path / "empty")


def test_normalise_labels():
    assert normalise_labels([""] * 7, "x") is None
    same = normalise_labels(["1"] * 7, "x")  # max 1: [0, 1] labels, or 1-100 all at 1: equal
    assert same.tolist() == [1.0] * 7
    out = normalise_labels([100, 50, 25, 1, 2, 3, 4], "x")
    np.testing.assert_array_equal(out, np.float32([1, 0.5, 0.25, 0.01, 0.02, 0.03, 0.04]))
    with pytest.raises(DatasetError, match="x has 6 label values"):
        normalise_labels(["1"] * 6, "x")
    with pytest.raises(DatasetError, match="x: fear = 101 is out of range"):
        normalise_labels(["1"] * 5 + ["101", "1"], "x")


# ----------------------------------------------------------------------------- sessions
def _session(root: Path, name: str, report: dict | None, split: str | None = None) -> Path:
    folder = root / name
    _touch(folder / "video.mp4")
    _touch(folder / "audio.wav")
    data = {"format_version": SESSION_FORMAT_VERSION, "complete": True}
    if report is not None:
        data["self_report"] = report
    if split is not None:
        data["split"] = split
    write_session_json(folder, data)
    return folder


def test_sessions_folder(tmp_path):
    ratings = dict(zip(EMOTIONS, [10, 20, 30, 40, 50, 60, 80]))
    _session(tmp_path, "s1", ratings)
    _session(tmp_path, "s2", None, split="Val")
    (tmp_path / "notes").mkdir()  # a folder that is not a session is ignored
    index = open_dataset(tmp_path)
    assert index.kind == "sessions" and index.splits == ["Train", "Val"]
    s1, s2 = index.clips
    assert s1.video == tmp_path / "s1" / "video.mp4" and s1.audio == tmp_path / "s1" / "audio.wav"
    np.testing.assert_allclose(s1.labels, np.array([10, 20, 30, 40, 50, 60, 80]) / 80, rtol=1e-6)
    assert s2.labels is None and s2.split == "Val"
    one = open_dataset(tmp_path / "s1")  # a single session folder is a dataset too
    assert [c.clip_id for c in one.clips] == ["s1"]
    assert len(index.describe()["labels_sha256"]) == 64


def test_session_without_wav_uses_video_track(tmp_path):
    folder = _session(tmp_path, "s", None)
    (folder / "audio.wav").unlink()
    (clip,) = open_dataset(tmp_path).clips
    assert clip.audio == clip.video == folder / "video.mp4"


def test_bad_sessions(tmp_path):
    folder = _session(tmp_path, "s", None)
    (folder / "session.json").write_text("{not json")
    with pytest.raises(DatasetError, match=r"session.json is corrupt"):
        open_dataset(tmp_path)
    _session(tmp_path, "s", None, split="")
    with pytest.raises(DatasetError, match=r"'split' = '' is not a split name"):
        open_dataset(tmp_path)
    _session(tmp_path, "s", None)
    (folder / "video.mp4").unlink()
    with pytest.raises(DatasetError, match=r"has no video.mp4"):
        open_dataset(tmp_path)


# ----------------------------------------------------------------------------- manifest
def test_manifest(tmp_path):
    _touch(tmp_path / "media" / "a.mp4")
    _touch(tmp_path / "media" / "b.wav")
    _touch(tmp_path / "media" / "c.mp4")
    _touch(tmp_path / "media" / "c_mic.wav")
    header = ["path", "split", "Adoration", "amusement", "ANXIETY", "disgust", "Empathic-Pain",
              "fear", "surprise", "audio"]  # fmt: skip
    rows = [
        ["media/a.mp4", "Train", *LABELS, ""],
        ["media/b.wav", "Val", *[""] * 7, ""],
        [str(tmp_path / "media" / "c.mp4"), "Train", *["50"] * 7, "media/c_mic.wav"],
    ]
    with (tmp_path / "manifest.csv").open("w", newline="") as f:
        csv.writer(f).writerows([header, *rows])
    for path in (tmp_path, tmp_path / "manifest.csv"):
        index = open_dataset(path)
        assert index.kind == "manifest"
        a, b, c = index.clips
        assert a.clip_id == "media/a" and a.video == a.audio == tmp_path / "media" / "a.mp4"
        assert a.labels.tolist() == pytest.approx([float(v) for v in LABELS])
        assert b.video is None and b.audio == tmp_path / "media" / "b.wav" and b.labels is None
        assert c.audio == tmp_path / "media" / "c_mic.wav" and c.labels.tolist() == [1.0] * 7


def test_bad_manifest(tmp_path):
    path = tmp_path / "list.csv"
    path.write_text("path,split,adoration\nx.mp4,Train,0.5\n")
    with pytest.raises(DatasetError, match=r"list.csv lacks the column\(s\) amusement"):
        open_dataset(path)
    header = "path,split," + ",".join(EMOTIONS)
    path.write_text(f"{header}\nmissing.mp4,Train,{','.join(LABELS)}\n")
    with pytest.raises(DatasetError, match=r"list.csv line 2: path 'missing.mp4' does not exist"):
        open_dataset(path)
    _touch(tmp_path / "x.mp4")
    path.write_text(f"{header}\nx.mp4,Train,{','.join(LABELS)}\nx.mp4,Val,{','.join(LABELS)}\n")
    with pytest.raises(
        DatasetError, match=r"'x' appears twice \(list.csv line 2 and list.csv line 3\)"
    ):
        open_dataset(path)
    path.write_text(f"{header}\nx.mp4,,{','.join(LABELS)}\n")
    with pytest.raises(DatasetError, match=r"list.csv line 2 has an empty split"):
        open_dataset(path)


# ----------------------------------------------------------------------------- generated
def test_generated_dataset_layout(tmp_path):
    root = generate_dataset(tmp_path / "g", clips={"Train": 2, "Val": 1, "Test": 1}, seed=5)
    with (root / "data_info.csv").open(newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == HEADER and [r[:2] for r in rows[1:]] == [
        ["00000", "Train"], ["00001", "Train"], ["00002", "Val"], ["00003", "Test"],
    ]  # fmt: skip
    for r in rows[1:3]:
        values = [float(v) for v in r[2:]]
        assert all(0.05 <= v <= 0.95 for v in values) and all(
            len(v.split(".")[1]) == 4 for v in r[2:]
        )
    assert rows[4][2:] == [""] * 7
    index = open_dataset(root)
    assert index.describe()["labelled"] == {"Train": 2, "Val": 1, "Test": 0}

    from eri.models.audio import SAMPLE_RATE, load_audio
    from eri.realtime.sources.files import FileSource

    clip = index.clips[0]
    source = FileSource(clip.video)
    assert (source.fps, source.width, source.height, source.has_audio) == (15.0, 320, 240, False)
    assert [round(e.time_s, 6) for e in source][-1] == round(29 / 15, 6)
    assert load_audio(clip.audio).shape == (2 * SAMPLE_RATE,)
    again = generate_dataset(tmp_path / "h", clips={"Train": 2, "Val": 1, "Test": 1}, seed=5)
    assert (again / "data_info.csv").read_text() == (root / "data_info.csv").read_text()
    assert (again / "Val/wav/00002.wav").read_bytes() == (root / "Val/wav/00002.wav").read_bytes()
    other = generate_dataset(tmp_path / "o", clips={"Train": 1}, seed=6)
    assert (other / "data_info.csv").read_text() != (root / "data_info.csv").read_text()


@pytest.mark.slow
def test_generate_command(tmp_path):
    out = tmp_path / "cmd"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "eri.training.data.generate",
            str(out),
            "--train",
            "1",
            "--val",
            "1",
            "--test",
            "0",
            "--seed",
            "2",
        ],  # fmt: skip
        check=True,
        cwd=PROJECT_ROOT,
        capture_output=True,
    )
    assert open_dataset(out).describe()["clips"] == {"Train": 1, "Val": 1}
