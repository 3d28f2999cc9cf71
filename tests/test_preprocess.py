"""The preprocessing cache (eri.training.preprocess): equivalence with live inference, resuming
a killed run, the config key, unreadable media, the torch dataset, and a real video."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from eri.models.audio import AudioSpec
from eri.models.crop import to_tensor_layout
from eri.models.spec import EMOTIONS, CropSpec, WindowSpec
from eri.training.data import DatasetError, generate_dataset, open_dataset
from eri.training.preprocess import (
    PreprocessConfig,
    WindowDataset,
    cache_dir_for,
    preprocess,
)
from tests.training_fixtures import fixture_config

PROJECT_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six generated clips (4 Train, 2 Val) for tests that run the preprocessing themselves."""
    return generate_dataset(
        tmp_path_factory.mktemp("small") / "data", clips={"Train": 4, "Val": 2}, seed=3
    )


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# ----------------------------------------------------------------------------- (a) live
@pytest.mark.slow
def test_cached_window_equals_live_window(generated_dataset, preprocessed, tmp_path):
    """The cached window of a clip is the live engine's window at the clip's last frame: the
    same sample times, face crops and audio tokens (bit for bit) and audio flag. The live run
    reads the clip as a recorded session (video.mp4 + audio.wav), in recompute mode so the
    window holds crops."""
    from eri.models.bundle import untrained_bundle
    from eri.realtime.analyze import make_tracker
    from eri.realtime.backends import create_backend
    from eri.realtime.pipeline import StreamingEngine, run_offline
    from eri.realtime.sources.files import SessionSource

    config = fixture_config()
    clip = open_dataset(generated_dataset).split("Train")[0]
    session = tmp_path / "session"
    session.mkdir()
    shutil.copy(clip.video, session / "video.mp4")
    shutil.copy(clip.audio, session / "audio.wav")

    bundle = untrained_bundle("dual_branch", window=config.window)
    assert PreprocessConfig.from_model(bundle.model) == config
    engine = StreamingEngine(
        bundle, create_backend(bundle, "torch", threads=1), make_tracker(bundle), mode="recompute"
    )
    try:
        outputs = list(run_offline(SessionSource(session), engine))
    finally:
        engine.tracker.close()
    last = outputs[-1]
    live = engine.window_at(last.time_s, visual_present=last.face_detected)
    cached = preprocessed.load(clip.clip_id)

    assert cached.duration_s == pytest.approx(last.time_s, abs=1e-9)
    np.testing.assert_allclose(cached.sample_times, live.times, rtol=0, atol=1e-12)
    assert live.rows is not None and live.rows.dtype == np.uint8
    assert np.array_equal(cached.faces, live.rows)  # the same crops, exactly
    live_tokens = engine.audio.tokens_for_keys(live.audio_keys)  # the live window's tokens
    assert np.array_equal(cached.audio_tokens, live_tokens)  # exactly
    assert cached.audio_present == live.audio_present is True
    assert cached.visual_present and cached.face_found.all()
    assert cached.meta["frames"] == len(outputs) == 30


@pytest.mark.slow
def test_video_with_its_own_audio_track_equals_live(generated_dataset, tmp_path):
    """A clip whose audio is the video's own AAC track (a manifest row): decoded once, with the
    live FileSource's times, so the window equals the live one exactly here too."""
    from eri.models.audio import load_audio
    from eri.models.bundle import untrained_bundle
    from eri.realtime.analyze import make_tracker
    from eri.realtime.backends import create_backend
    from eri.realtime.pipeline import StreamingEngine, run_offline
    from eri.realtime.sources.files import FileSource
    from tests.media_utils import decode_frames, write_video

    clip = open_dataset(generated_dataset).split("Val")[0]
    mp4 = write_video(
        tmp_path / "clip.mp4",
        decode_frames(clip.video, limit=15),
        fps=15,
        audio=load_audio(clip.audio)[:16000],
    )
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,split," + ",".join(EMOTIONS) + "\nclip.mp4,Val,,,,,,,\n")
    index = open_dataset(manifest)
    assert index.clips[0].audio == index.clips[0].video == mp4
    config = PreprocessConfig(WindowSpec(4, 1.0), CropSpec(), AudioSpec())
    report = preprocess(index, config, tmp_path / "c", workers=1, progress=False)
    cached = report.cache.load("clip")

    bundle = untrained_bundle("dual_branch", window=config.window)
    engine = StreamingEngine(
        bundle, create_backend(bundle, "torch", threads=1), make_tracker(bundle), mode="recompute"
    )
    try:
        outputs = list(run_offline(FileSource(mp4), engine))
    finally:
        engine.tracker.close()
    live = engine.window_at(outputs[-1].time_s, visual_present=True)
    np.testing.assert_allclose(cached.sample_times, live.times, rtol=0, atol=1e-12)
    assert np.array_equal(cached.faces, live.rows)
    assert np.array_equal(cached.audio_tokens, engine.audio.tokens_for_keys(live.audio_keys))
    assert cached.audio_present == live.audio_present is True
    assert cached.meta["audio_s"] > 0.9


# ----------------------------------------------------------------------------- (b) resume
@pytest.mark.slow
def test_killed_run_resumes_without_redoing_clips(small_dataset, tmp_path):
    """A run killed (SIGKILL) after some clips keeps them: the next run reuses exactly those
    files (not rewritten) and does only the rest; no temporary file is left behind."""
    root = tmp_path / "cache"
    config = fixture_config()
    index = open_dataset(small_dataset)
    clips_dir = cache_dir_for(index, config, root) / "clips"
    code = (
        "from eri.training.data import open_dataset\n"
        "from eri.training.preprocess import preprocess\n"
        "from tests.training_fixtures import fixture_config\n"
        f"preprocess(open_dataset({str(small_dataset)!r}), fixture_config(), {str(root)!r},"
        " workers=1, progress=False)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=PROJECT_ROOT)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if len(list(clips_dir.glob("*.npz"))) >= 2:
                break
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    finished = {p.name: p.stat().st_mtime_ns for p in clips_dir.glob("*.npz")}
    assert 2 <= len(finished) < len(index.clips), "the run must be killed mid-way"

    report = preprocess(index, config, root, workers=1, progress=False)
    assert report.reused == len(finished)
    assert report.done == len(index.clips) - len(finished)
    assert not report.skipped
    for name, mtime in finished.items():
        assert (clips_dir / name).stat().st_mtime_ns == mtime  # not rewritten
    assert sorted(p.name for p in clips_dir.iterdir()) == sorted(
        f"{c.clip_id}.npz" for c in index.clips
    )
    again = preprocess(index, config, root, workers=1, progress=False)
    assert (again.done, again.reused) == (0, len(index.clips))


# ----------------------------------------------------------------------------- (c) key
def test_changed_config_goes_to_another_folder(small_dataset, tmp_path):
    index = open_dataset(small_dataset)
    base = fixture_config()
    variants = [
        PreprocessConfig(WindowSpec(8, 3.0), base.crop, base.audio),
        PreprocessConfig(WindowSpec(16, 2.0), base.crop, base.audio),
        PreprocessConfig(base.window, CropSpec(size=96), base.audio),
        PreprocessConfig(base.window, CropSpec(margin=1.0), base.audio),
        PreprocessConfig(base.window, base.crop, AudioSpec(kind="logmel")),
        PreprocessConfig(base.window, base.crop, None),
    ]
    dirs = {cache_dir_for(index, c, tmp_path) for c in [base, *variants]}
    assert len(dirs) == len(variants) + 1
    same = PreprocessConfig.from_dict(json.loads(json.dumps(base.to_dict())))
    assert same.key() == base.key() and len(base.key()) == 16
    assert cache_dir_for(index, same, tmp_path) == cache_dir_for(index, base, tmp_path)


def test_audio_less_config_caches_no_tokens(small_dataset, tmp_path):
    index = open_dataset(small_dataset)
    clip = index.split("Val")[:1]
    config = PreprocessConfig(WindowSpec(4, 2.0), CropSpec(), None)
    report = preprocess(index, config, tmp_path, splits=["Val"], workers=1, progress=False)
    assert (report.done, report.skipped) == (2, [])
    cached = report.cache.load(clip[0].clip_id)
    assert cached.audio_tokens is None and not cached.audio_present
    item = WindowDataset(report.cache, clip)[0]
    assert "audio_tokens" not in item and item["faces"].shape == (4, 3, 112, 112)


# ----------------------------------------------------------------------------- (d) bad media
def test_unreadable_videos_are_skipped_and_listed(small_dataset, tmp_path, caplog):
    data = _copy(small_dataset, tmp_path / "data")
    garbage = data / "Train" / "mp4" / "00000.mp4"
    garbage.write_bytes(b"this is not a video" * 100)
    truncated = data / "Train" / "mp4" / "00001.mp4"
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    index = open_dataset(data)
    with caplog.at_level(logging.WARNING, logger="eri.training.preprocess"):
        report = preprocess(index, fixture_config(), tmp_path / "c", workers=1, progress=False)
    assert [c for c, _ in report.skipped] == ["00000", "00001"]
    assert report.done == len(index.clips) - 2
    assert all("00000.mp4" in r or "00001.mp4" in r for _, r in report.skipped)
    saved = json.loads((report.cache_dir / "report.json").read_text())
    assert [s["clip_id"] for s in saved["skipped"]] == ["00000", "00001"]
    assert saved["dataset"]["kind"] == "abaw5" and saved["done"] == report.done
    assert "skipped clip 00000" in caplog.text and "report.json" in caplog.text
    cache = report.cache
    assert not cache.has("00000") and cache.has("00002")
    assert [c.clip_id for c in cache.cached(index.split("Train"))] == ["00002", "00003"]
    with pytest.raises(DatasetError, match="00000.*not in the preprocessing cache"):
        cache.load("00000")
    with pytest.raises(DatasetError, match="not in the cache"):
        WindowDataset(cache, index.split("Train"))


def test_changed_media_is_preprocessed_again(small_dataset, tmp_path):
    data = _copy(small_dataset, tmp_path / "data")
    index = open_dataset(data)
    config = PreprocessConfig(WindowSpec(4, 2.0), CropSpec(), AudioSpec())
    first = preprocess(index, config, tmp_path / "c", splits=["Val"], workers=1, progress=False)
    assert first.done == 2
    wav = data / "Val" / "wav" / "00004.wav"
    os.utime(wav, ns=(wav.stat().st_atime_ns, wav.stat().st_mtime_ns + 10**9))
    second = preprocess(
        open_dataset(data), config, tmp_path / "c", splits=["Val"], workers=1, progress=False
    )
    assert (second.done, second.reused) == (1, 1)


def test_unknown_split_is_refused(small_dataset, tmp_path):
    with pytest.raises(DatasetError, match="no clips in split 'Dev'.*Train, Val"):
        preprocess(open_dataset(small_dataset), fixture_config(), tmp_path, splits=["Dev"])


# ----------------------------------------------------------------------------- dataset
def test_window_dataset_items(generated_dataset, preprocessed):
    index = open_dataset(generated_dataset)
    train = index.split("Train")
    ds = WindowDataset(preprocessed, train)
    item = ds[3]
    assert item["faces"].shape == (8, 3, 112, 112) and item["faces"].dtype == torch.float32
    assert 0.0 <= float(item["faces"].min()) and float(item["faces"].max()) <= 1.0
    assert item["audio_tokens"].shape == (8, 1024) and item["audio_tokens"].dtype == torch.float32
    assert torch.equal(item["labels"], torch.from_numpy(train[3].labels))
    assert float(item["labelled"]) == 1.0 and int(item["index"]) == 3
    cached = preprocessed.load(train[3].clip_id)
    assert torch.equal(item["faces"], torch.from_numpy(to_tensor_layout(cached.faces)))
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
    assert batch["faces"].shape == (4, 8, 3, 112, 112) and batch["audio_present"].shape == (4,)

    with pytest.raises(DatasetError, match="has no labels"):
        WindowDataset(preprocessed, index.split("Test"))
    test = WindowDataset(preprocessed, index.split("Test"), require_labels=False)
    assert float(test[0]["labelled"]) == 0.0 and float(test[0]["labels"].abs().sum()) == 0.0


def test_generated_labels_are_visible_and_audible(generated_dataset, preprocessed):
    """The generator's cues survive tracking, cropping and the audio front end: each visual
    label correlates with a simple measure of the cached crops, each audio label with one of
    the wav (Pearson r over the 64 labelled clips)."""
    from eri.models.audio import SAMPLE_RATE, load_audio
    from eri.training.data.generate import WHISTLE_HZ

    index = open_dataset(generated_dataset)
    clips = index.split("Train") + index.split("Val")
    labels = np.stack([c.labels for c in clips])
    face = np.stack([preprocessed.load(c.clip_id).faces.astype(np.float64) for c in clips])
    cheek = face[:, :, 60:75, 25:40]  # a skin patch left of the nose, [N, T, 15, 15, 3]
    measures = {
        0: cheek.mean(axis=(1, 2, 3, 4)),  # adoration: brightness
        2: (cheek[..., 0] - cheek[..., 2]).mean(axis=(1, 2, 3)),  # anxiety: red minus blue
    }
    for k, measure in measures.items():
        assert np.corrcoef(measure, labels[:, k])[0, 1] > 0.8, k
    pitch, noise, whistle = [], [], []
    for c in clips:
        wave = load_audio(c.audio)
        spectrum = np.abs(np.fft.rfft(wave)) ** 2
        hz = np.fft.rfftfreq(len(wave), 1.0 / SAMPLE_RATE)
        tone = spectrum[hz < 2000]  # the tone and its octave (180 .. 1440 Hz)
        pitch.append(np.argmax(tone))
        noise.append(spectrum[hz >= 4000].sum() / tone.sum())  # above the whistle
        whistle.append(spectrum[np.abs(hz - WHISTLE_HZ) < 20].sum() / tone.sum())
    assert np.corrcoef(np.log(pitch), labels[:, 4])[0, 1] > 0.95
    assert np.corrcoef(np.log(noise), labels[:, 5])[0, 1] > 0.8
    assert np.corrcoef(np.sqrt(whistle), labels[:, 6])[0, 1] > 0.8


# ----------------------------------------------------------------------------- real media
def test_real_video_is_preprocessed(media_dir, tmp_path):
    """single_face.mp4 (2.4 s, a smiling man, near-silent MP3) through a manifest: a face in
    every sample, its own audio track decoded; no_face.mp4 gives no visual input."""
    manifest = tmp_path / "manifest.csv"
    header = "path,split," + ",".join(EMOTIONS)
    rows = [
        f"{media_dir / 'video' / 'single_face.mp4'},Train,{','.join(['50'] * 7)}",
        f"{media_dir / 'video' / 'no_face.mp4'},Val,,,,,,,",
    ]
    manifest.write_text("\n".join([header, *rows]) + "\n")
    index = open_dataset(manifest)
    report = preprocess(index, fixture_config(), tmp_path / "c", workers=1, progress=False)
    assert (report.done, report.skipped) == (2, [])
    face = report.cache.load(index.clips[0].clip_id)
    assert face.visual_present and face.face_found.all() and face.faces.std() > 10
    assert 2.0 < face.duration_s < 2.5 and face.meta["audio_s"] > 2.0
    assert face.audio_tokens.shape == (8, 1024)
    none = report.cache.load(index.clips[1].clip_id)
    assert not none.visual_present and not none.faces.any()
    assert index.clips[0].labels.tolist() == [1.0] * 7


# ----------------------------------------------------------------------------- long clips
class _Tracker:
    """The live tracker, recording which files it sees open in ``watch`` (Linux /proc) and
    raising at frame ``fail_at`` (a failure midway through a clip)."""

    def __init__(self, tracker, watch: Path, fail_at: int | None = None) -> None:
        self.tracker, self.watch, self.fail_at = tracker, watch, fail_at
        self.frames, self.open_seen = 0, set()

    def reset(self) -> None:
        self.tracker.reset()
        self.frames = 0

    def process(self, image, time_s):
        self.frames += 1
        self.open_seen |= _open_files_in(self.watch)
        if self.frames == self.fail_at:
            raise RuntimeError("failed midway")
        return self.tracker.process(image, time_s)


def _open_files_in(folder: Path, pid: int | str = "self") -> set[str]:
    """Targets of the process's open file descriptors inside ``folder``."""
    out = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith(f"{folder}/"):
            out.add(target)
    return out


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory: pytest.TempPathFactory):
    """One generated clip of 8 s at 15 fps (120 frames, a face in each), and a live tracker."""
    from eri.realtime.face import FaceTracker

    data = generate_dataset(
        tmp_path_factory.mktemp("long") / "data", clips={"Train": 1}, duration_s=8.0, seed=5
    )
    config = PreprocessConfig(WindowSpec(16, 12.8), CropSpec(), AudioSpec())
    tracker = FaceTracker(crop=config.crop)
    yield open_dataset(data).clips[0], config, tracker
    tracker.close()


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs Linux /proc")
def test_long_clip_spills_crops_and_caches_the_same_window(long_clip, tmp_path):
    """Crops beyond the memory budget go to an unnamed file in the spill folder; the cached
    window is bit for bit the one of holding every crop in memory (and of a reference that
    tracks the frames here and picks the nearest crops itself); nothing is left behind."""
    from eri.models.spec import nearest_indices
    from eri.realtime.sources.files import FileSource
    from eri.training.windows import extract_clip

    clip, config, tracker = long_clip
    spill = tmp_path / "spill"
    spill.mkdir()
    crop_bytes = 112 * 112 * 3
    results = {}
    for budget in (None, 0, 50 * crop_bytes):  # all in memory, all on disk, from frame 51 on
        watched = _Tracker(tracker, spill)
        results[budget] = extract_clip(
            clip, config, watched, spill_dir=spill, spill_bytes=budget
        ).arrays()
        assert len(watched.open_seen) == (0 if budget is None else 1), budget
        assert all(name.endswith("(deleted)") for name in watched.open_seen)  # no name on disk
        assert not list(spill.iterdir()) and not _open_files_in(spill)
    held = results[None]
    assert held["faces"].shape == (16, 112, 112, 3) and held["face_found"].all()
    for budget in (0, 50 * crop_bytes):
        assert results[budget].keys() == held.keys()
        for key, value in held.items():
            assert np.array_equal(results[budget][key], value), (budget, key)

    tracker.reset()
    times, crops = [], []
    for frame in FileSource(clip.video, audio=False):
        crops.append(tracker.process(frame.image, frame.time_s).crop)
        times.append(frame.time_s)
    assert len(crops) == 120 and all(c is not None for c in crops)
    picks = nearest_indices(np.array(times), held["sample_times"])
    assert len(set(picks.tolist())) == 16  # sixteen different frames, none of them at the start
    assert np.array_equal(held["faces"], np.stack([crops[i] for i in picks]))


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs Linux /proc")
def test_failure_midway_leaves_no_spill_file(long_clip, tmp_path):
    from eri.training.windows import extract_clip

    clip, config, tracker = long_clip
    watched = _Tracker(tracker, tmp_path, fail_at=60)
    with pytest.raises(RuntimeError, match="failed midway"):
        extract_clip(clip, config, watched, spill_dir=tmp_path, spill_bytes=0)
    assert len(watched.open_seen) == 1  # it was spilling when it failed
    assert not list(tmp_path.iterdir()) and not _open_files_in(tmp_path)


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs Linux /proc")
def test_killed_worker_leaves_no_spill_file(long_clip, tmp_path):
    """SIGKILL while the crops are in the spill file: the file goes with the process."""
    clip, config, _ = long_clip
    spill = tmp_path / "spill"
    spill.mkdir()
    code = (
        "from pathlib import Path\n"
        "from eri.realtime.face import FaceTracker\n"
        "from eri.training.data import open_dataset\n"
        "from eri.training.preprocess import PreprocessConfig\n"
        "from eri.training.windows import extract_clip\n"
        f"config = PreprocessConfig.from_dict({config.to_dict()!r})\n"
        f"clip = open_dataset({str(clip.video.parents[2])!r}).clips[0]\n"
        "for _ in range(20):\n"
        "    extract_clip(clip, config, FaceTracker(crop=config.crop),"
        f" spill_dir=Path({str(spill)!r}), spill_bytes=0)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=PROJECT_ROOT)
    try:
        deadline = time.monotonic() + 120
        seen = set()
        while time.monotonic() < deadline and proc.poll() is None and not seen:
            seen = _open_files_in(spill, proc.pid)
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert len(seen) == 1, "the worker must be killed while spilling"
    assert not list(spill.iterdir())


def test_stale_named_spill_files_are_cleaned(tmp_path):
    """Where a spill file has a name (no O_TMPFILE), a dead worker's is removed at the next
    run's start, a live worker's kept."""
    from eri.training.crop_store import SPILL_PREFIX
    from eri.training.preprocess import _clean_stale_tmp

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f"{SPILL_PREFIX}k2x_9q.{dead.pid}.tmp"
    live = tmp_path / f"{SPILL_PREFIX}a8c1zz.{os.getpid()}.tmp"
    stale.write_bytes(b"\0" * 10)
    live.write_bytes(b"\0" * 10)
    _clean_stale_tmp(tmp_path)
    assert not stale.exists() and live.exists()
