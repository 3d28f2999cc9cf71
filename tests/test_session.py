"""Recorded sessions: the recorder's files decoded back with PyAV, crash safety (SIGKILL),
bad input (existing folder, unwritable folder, full disk, newer or corrupt session.json) and
`eri record` / `eri analyze SESSION`."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
import wave
from pathlib import Path

import av
import numpy as np
import pytest

from eri.models.spec import EMOTIONS
from eri.realtime.session import (
    SESSION_FORMAT_VERSION,
    SessionError,
    SessionRecorder,
    read_markers,
    read_session,
    session_info,
)
from eri.realtime.sources import AudioChunk, SessionSource, SyntheticSource, VideoFrame
from tests.media_utils import (
    PROJECT_ROOT,
    decode_frames,
    media_file,
    mount_tmpfs,
    small_dual_branch,
    torch_backend_for,
    umount,
)

#: Mean absolute RGB difference allowed between a source frame and its decoded H.264 copy
#: (crf 23, 4:2:0 chroma): the synthetic face measures about 1.6 at 640x480.
CODEC_MAD = 4.0
SELF_REPORT = {name: 10 * (i + 1) for i, name in enumerate(EMOTIONS)}


@pytest.fixture(scope="module")
def bundle():
    return small_dual_branch(context_s=3.2)


@pytest.fixture(scope="module")
def backend(bundle):
    return torch_backend_for(bundle)


def _decode(path: Path, kind: str = "video") -> tuple[list, Exception | None]:
    """Frames of one stream until the end or the first error (a truncated file): (frames, err)."""
    frames: list = []
    try:
        with av.open(str(path)) as c:
            for f in c.decode(**{kind: 0}):
                frames.append(f)
    except (av.FFmpegError, OSError) as exc:
        return frames, exc
    return frames, None


def _rows(path: Path) -> list[list[str]]:
    """Complete data rows of a predictions CSV (a killed writer may leave half a line)."""
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    return [r for r in rows[1:] if len(r) == 4 + len(EMOTIONS)]


def _mad(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def _one_sentence(message: str) -> None:
    assert "\n" not in message and message.endswith("."), message


# --------------------------------------------------------------------------- round trip
def test_recorded_session_decodes_back(tmp_path, bundle, backend):
    """Every frame and sample of a live run is in the session, decodable, in time."""
    from eri.realtime.analyze import analyze, make_tracker
    from eri.realtime.pipeline import LiveRunner, StreamingEngine

    fps, n, w, h = 30.0, 45, 320, 240
    src = SyntheticSource(num_frames=n, fps=fps, width=w, height=h)
    out = tmp_path / "s"
    tracker = make_tracker(bundle)
    engine = StreamingEngine(bundle, backend, tracker, fps=fps)
    rec = SessionRecorder(
        out, fps=fps, width=w, height=h, info=session_info(src, bundle, backend), backpressure=True
    )
    outputs = []
    with rec:
        runner = LiveRunner(src, engine, on_event=rec.on_event)
        for o in runner.run():
            rec.add_output(o)
            outputs.append(o)
        rec.add_marker(1.25, "peak, laughing")
        rec.set_self_report(SELF_REPORT)
    tracker.close()
    assert rec.close() == out  # idempotent
    assert rec.error is None
    assert rec.frames_written == n and rec.audio_samples_written == n / fps * 16000

    # video.mp4: one H.264 and one AAC stream, every frame at its source time, same pixels.
    with av.open(str(out / "video.mp4")) as c:
        assert [s.type for s in c.streams] == ["video", "audio"]
        assert c.streams.video[0].codec_context.name == "h264"
        assert c.streams.audio[0].codec_context.name == "aac"
        assert abs(c.duration / 1e6 - n / fps) < 0.2
    frames, err = _decode(out / "video.mp4")
    assert err is None and len(frames) == n
    np.testing.assert_allclose([float(f.time) for f in frames], np.arange(n) / fps, atol=1e-3)
    for i in (0, n // 2, n - 1):
        assert _mad(frames[i].to_ndarray(format="rgb24"), src.render(i)) < CODEC_MAD
    audio, err = _decode(out / "video.mp4", "audio")
    assert err is None
    assert abs(float(audio[-1].time) + audio[-1].samples / 16000 - n / fps) < 0.2

    # audio.wav: every sample, exactly (16-bit).
    source_audio = np.concatenate([e.samples for e in src if isinstance(e, AudioChunk)])
    with wave.open(str(out / "audio.wav")) as wf:
        assert (wf.getframerate(), wf.getnchannels(), wf.getsampwidth()) == (16000, 1, 2)
        pcm = np.frombuffer(wf.readframes(wf.getnframes()), "<i2") / 32767.0
    assert len(pcm) == len(source_audio)
    np.testing.assert_allclose(pcm, source_audio, atol=1.5 / 32767)

    # predictions.csv: one row per output step; markers; session.json; report.png.
    rows = _rows(out / "predictions.csv")
    assert len(rows) == len(outputs) >= 2
    assert [float(r[0]) for r in rows] == [round(o.time_s, 4) for o in outputs]
    assert read_markers(out) == [(1.25, "peak, laughing")]
    meta = read_session(out)
    assert meta["format_version"] == SESSION_FORMAT_VERSION and meta["complete"] is True
    assert meta["self_report"] == SELF_REPORT
    assert meta["video"]["frames"] == n and meta["audio"]["samples"] == len(source_audio)
    assert meta["predictions"]["rows"] == len(outputs) and meta["markers"]["count"] == 1
    assert meta["model"]["trained"] is False and meta["backend"] == "torch"
    assert meta["device"] == "cpu" and "av" in meta["versions"] and meta["error"] is None
    assert abs(meta["duration_s"] - n / fps) < 0.05
    assert (out / "report.png").read_bytes()[:4] == b"\x89PNG"

    # The session is a source again: `eri analyze SESSION_DIR` gives one row per frame.
    s = SessionSource(out)
    assert s.has_audio and s.fps == pytest.approx(fps, rel=0.05)
    result = analyze(out, bundle, backend, progress=False)
    assert len(result.rows) == n
    np.testing.assert_allclose(result.times, np.arange(n) / fps, atol=1e-3)


def test_session_clock_variable_rate_and_audio_gaps(tmp_path):
    """A recording started while the source ran (times from 100 s, frames from index 7) starts
    at 0 in every file; frames keep their own times (a variable camera rate, video starting
    after audio); audio.wav stays on the session clock (silence fills a dropped-chunk gap)."""
    from eri.realtime.pipeline import FrameOutput

    t0 = 100.0
    rng = np.random.default_rng(0)
    times = 0.045 + np.concatenate([[0.0], np.cumsum(rng.uniform(0.02, 0.06, 39))])
    img = SyntheticSource(num_frames=1, width=160, height=120).render(0)
    out = tmp_path / "s"
    with SessionRecorder(out, fps=30, width=160, height=120) as rec:
        chunks = [(0.0, 800), (0.05, 800), (0.25, 1600)]  # 0.10-0.25 dropped
        events = [VideoFrame(7 + i, t0 + t, img) for i, t in enumerate(times)]
        events += [AudioChunk(t0 + t, np.full(k, 0.5, np.float32)) for t, k in chunks]
        for e in sorted(events, key=lambda e: e.time_s):
            rec.on_event(e)
        for index, t in ((5, t0 - 0.1), (7, t0 + times[0]), (8, t0 + times[1])):
            rec.add_output(FrameOutput(t, index, True, True, np.full(7, 0.5, np.float32)))
        rec.add_marker(t0 + 0.5, "half")
    assert rec.start_s == t0 and rec.outputs_dropped == 1
    frames, err = _decode(out / "video.mp4")
    assert err is None
    np.testing.assert_allclose([float(f.time) for f in frames], np.round(times, 3), atol=1e-3)
    with wave.open(str(out / "audio.wav")) as wf:
        pcm = np.frombuffer(wf.readframes(wf.getnframes()), "<i2")
    assert len(pcm) == int(0.35 * 16000)
    loud = pcm > 10000
    assert loud[:1600].all() and not loud[1600:4000].any() and loud[4000:].all()
    assert rec.audio_samples_written == 3200 and rec.audio_padding_samples == 2400
    rows = _rows(out / "predictions.csv")
    assert [(float(r[0]), int(r[1])) for r in rows] == [(0.045, 0), (round(times[1], 4), 1)]
    assert read_markers(out) == [(0.5, "half")]
    assert read_session(out)["source_start_s"] == t0


# --------------------------------------------------------------------------- eri record
def _eri(*args: str) -> list[str]:
    return [
        sys.executable,
        "-c",
        "from eri.realtime.cli import main; raise SystemExit(main())",
        *args,
    ]


#: One torch thread: on a busy 2-core machine spinning intra-op threads make inference (and so
#: the rows) fall seconds behind capture.
_ONE_THREAD = dict(os.environ, OMP_NUM_THREADS="1")


def test_cli_record_visual_only(tmp_path, caplog):
    """`--mic none` records visual-only and says so: no AAC stream, no audio.wav;
    `--duration 1.5` of the endless synthetic source gives 45 frames at 30 fps."""
    from eri.realtime.cli import main

    out = tmp_path / "s"
    with caplog.at_level("INFO", logger="eri"):
        rc = main(
            ["record", "--out", str(out), "--source", "synthetic", "--duration", "1.5"]
            + ["--mic", "none", "--fast", "--backend", "torch"]
        )
    assert rc == 0
    assert "visual-only" in caplog.text and "recorded 45 frames" in caplog.text
    assert not (out / "audio.wav").exists()
    with av.open(str(out / "video.mp4")) as c:
        assert [s.type for s in c.streams] == ["video"]
    meta = read_session(out)
    assert meta["has_audio"] is False and meta["audio"] is None
    assert meta["video"]["frames"] == 45 and meta["complete"]


def _wait_for_rows(proc: subprocess.Popen, out: Path) -> None:
    """Until the first predictions row is on disk (flushed within a second of capture starting:
    a conservative start of the recording's clock)."""
    deadline = time.monotonic() + 60
    while not (out / "predictions.csv").exists() or not _rows(out / "predictions.csv"):
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline, "eri record did not start within 60 s"
        time.sleep(0.05)


def _start_recording(out: Path) -> subprocess.Popen:
    """`eri record` of the real-time synthetic source into ``out`` (torch, one thread), returned
    once its first predictions row is on disk."""
    proc = subprocess.Popen(
        _eri("record", "--out", str(out), "--source", "synthetic", "--backend", "torch"),
        cwd=PROJECT_ROOT,
        env=_ONE_THREAD,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for_rows(proc, out)
    except BaseException:
        proc.kill()
        proc.communicate(timeout=10)
        raise
    return proc


def test_sigkill_keeps_the_session_up_to_the_kill(tmp_path):
    """kill -9 five seconds into `eri record` (real-time synthetic source): the video decodes
    up to at least 2 s before the kill, predictions.csv and audio.wav hold what came before."""
    out = tmp_path / "s"
    proc = _start_recording(out)
    try:
        time.sleep(5.0)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(10)
        proc.stderr.close()
    frames, _ = _decode(out / "video.mp4")  # a torn last fragment may end in an error
    assert frames and float(frames[-1].time) >= 5.0 - 2.0
    assert len(frames) >= 30 * (5.0 - 2.0)
    rows = _rows(out / "predictions.csv")
    assert float(rows[-1][0]) >= 5.0 - 2.0, (len(rows), [r[0] for r in rows[-5:]])
    with wave.open(str(out / "audio.wav")) as wf:  # the header was kept current
        assert wf.getnframes() / 16000 >= 5.0 - 2.0
        assert len(wf.readframes(wf.getnframes())) == 2 * wf.getnframes()
    meta = read_session(out)
    assert meta["complete"] is False


def test_sigterm_closes_the_session(tmp_path):
    """SIGTERM (as Ctrl-C) stops `eri record` cleanly: exit 130, a complete session whose
    files all decode, and the summary line."""
    out = tmp_path / "s"
    proc = _start_recording(out)
    try:
        time.sleep(1.0)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "recorded" in err and "stopped by Ctrl-C / SIGTERM" in err
    meta = read_session(out)
    assert meta["complete"] is True and meta["error"] is None
    frames, decode_error = _decode(out / "video.mp4")
    assert decode_error is None and len(frames) == meta["video"]["frames"] >= 30
    assert (out / "report.png").is_file()


# --------------------------------------------------------------------------- bad input
def test_refuses_a_folder_that_is_not_empty(tmp_path, caplog):
    from eri.realtime.cli import main

    out = tmp_path / "s"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(SessionError, match="not empty") as info:
        SessionRecorder(out, fps=30, width=64, height=64)
    _one_sentence(str(info.value))
    assert main(["record", "--out", str(out), "--source", "synthetic:5"]) == 1
    assert "not empty" in caplog.text
    with pytest.raises(SystemExit) as exc:  # a usage error, before any work
        main(["record", "--out", str(tmp_path / "new"), "--duration", "0"])
    assert exc.value.code == 2 and not (tmp_path / "new").exists()
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]


def test_refuses_an_unwritable_folder(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(SessionError, match="is a file") as info:
        SessionRecorder(blocker / "s", fps=30, width=64, height=64)
    _one_sentence(str(info.value))
    ro = tmp_path / "ro"
    if os.geteuid() == 0:  # root writes through permissions: use a read-only mount
        mount_tmpfs(ro, "ro,size=1m")
    else:
        ro.mkdir()
        ro.chmod(0o555)
    try:
        with pytest.raises(SessionError, match="Cannot write the session folder") as info:
            SessionRecorder(ro / "s", fps=30, width=64, height=64)
        _one_sentence(str(info.value))
    finally:
        umount(ro) if os.geteuid() == 0 else ro.chmod(0o755)


def test_full_disk_is_reported_and_keeps_what_was_written(tmp_path):
    """A 2 MB tmpfs fills up mid-recording: one sentence in `error`, nothing raised into the
    caller, the video decodes up to the failure, the other files stay readable."""
    disk = tmp_path / "disk"
    mount_tmpfs(disk, "size=2m")
    try:
        n = 900  # 30 s: about 4.5 MB of video and 1 MB of audio.wav
        src = SyntheticSource(num_frames=n, fps=30, width=640, height=480)
        # backpressure: the feeding loop is far faster than real time; keep the queue short.
        rec = SessionRecorder(disk / "s", fps=30, width=640, height=480, backpressure=True)
        for e in src:
            rec.on_event(e)  # never raises
        rec.add_marker(1.0, "before the end")
        rec.close()
        assert isinstance(rec.error, SessionError)
        _one_sentence(str(rec.error))
        assert "disk is full" in str(rec.error)
        assert 0 < rec.frames_written < n
        frames, _ = _decode(disk / "s" / "video.mp4")
        assert len(frames) >= min(30, rec.frames_written - 60)
        assert _mad(frames[0].to_ndarray(format="rgb24"), src.render(0)) < CODEC_MAD
        with wave.open(str(disk / "s" / "audio.wav")) as wf:
            assert wf.getframerate() == 16000
            assert len(wf.readframes(wf.getnframes())) == 2 * wf.getnframes()
        meta = read_session(disk / "s")  # the last whole session.json: never half-written
        assert meta["complete"] is False
    finally:
        umount(disk)


def test_session_json_newer_or_corrupt(tmp_path):
    folder = tmp_path / "s"
    folder.mkdir()
    path = folder / "session.json"
    path.write_text(json.dumps({"format_version": SESSION_FORMAT_VERSION + 1, "complete": True}))
    with pytest.raises(SessionError, match="newer than this ERI Live reads") as info:
        read_session(folder)
    _one_sentence(str(info.value))
    for text in ('{"format_version": 1, "comp', "[1, 2]", '{"complete": true}'):
        path.write_text(text)
        with pytest.raises(SessionError, match="corrupt") as info:
            read_session(path)
        _one_sentence(str(info.value))
    with pytest.raises(SessionError, match="does not exist"):
        read_session(tmp_path / "nothing")
    bad = dict.fromkeys(EMOTIONS, 50) | {"fear": 101}
    rec = SessionRecorder(tmp_path / "r", fps=30, width=64, height=64, has_audio=False)
    with pytest.raises(SessionError, match="fear"):
        rec.set_self_report(bad)
    rec.close()
    rec.set_self_report(SELF_REPORT)  # after close: session.json is rewritten at once
    assert read_session(tmp_path / "r")["self_report"] == SELF_REPORT


# --------------------------------------------------------------------------- real media
@pytest.mark.realmedia
def test_record_real_clip_fast(tmp_path, bundle, backend):
    """A real clip recorded with `--fast`: every frame (inference skips some), same length."""
    from eri.realtime.session.record import open_record_source, record

    clip = media_file("video/single_face.mp4")
    source = open_record_source(str(clip), fast=True)
    result = record(tmp_path / "s", source, bundle, backend, fast=True)
    original = decode_frames(clip)
    frames, err = _decode(tmp_path / "s" / "video.mp4")
    assert err is None and len(frames) == len(original) == result.frames
    for i in (0, len(frames) // 2, len(frames) - 1):  # two H.264 generations
        assert _mad(frames[i].to_ndarray(format="rgb24"), original[i]) < 2 * CODEC_MAD
    with av.open(str(clip)) as c:
        duration = c.duration / 1e6
    assert abs(read_session(tmp_path / "s")["duration_s"] - duration) < 0.2
    assert result.rows == len(_rows(tmp_path / "s" / "predictions.csv")) >= 2
