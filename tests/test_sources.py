"""Capture sources: files (real and generated), camera and microphone logic, sessions, dispatch.

No camera or microphone exists on CI machines: the camera's reader thread and the microphone's
callback path run against injected fakes (``capture_factory`` / ``stream_factory``); the real
OpenCV and sounddevice are only used for the failure cases they must report clearly.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
import threading
import time
import wave
from pathlib import Path
from types import SimpleNamespace

import av
import numpy as np
import pytest

from eri.errors import INSTALL_HINTS, MissingDependencyError
from eri.models.audio import Resampler
from eri.realtime.sources import (
    AUDIO_RATE,
    AudioChunk,
    CameraSource,
    FileSource,
    LiveSource,
    MicrophoneSource,
    SessionSource,
    Source,
    SourceError,
    SyntheticSource,
    VideoFrame,
    list_cameras,
    list_microphones,
    microphone_status,
    open_source,
)

PEXELS = "video/WolfgangLanger_Pexels.mp4"


def media_file(media_dir: Path, relative: str) -> Path:
    """A file under ../shared/media (the ``media_dir`` fixture), or skip with the reason."""
    path = media_dir / relative
    if not path.is_file():
        pytest.skip(f"real media file {path} is absent")
    return path


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def write_mp4(
    path: Path,
    num_frames: int = 30,
    fps: int = 30,
    size: tuple[int, int] = (64, 48),
    codec: str = "libx264",
    audio: np.ndarray | None = None,
) -> Path:
    """A small video (moving gradient), optionally with an AAC track of ``audio`` [n] @ 16 kHz."""
    width, height = size
    with av.open(str(path), "w") as out:
        vs = out.add_stream(codec, rate=fps)
        vs.width, vs.height, vs.pix_fmt = width, height, "yuv420p"
        as_ = None
        if audio is not None:
            as_ = out.add_stream("aac", rate=AUDIO_RATE, layout="mono")
        ramp = np.linspace(0, 255, width, dtype=np.float32)
        for i in range(num_frames):
            img = np.empty((height, width, 3), np.uint8)
            img[..., 0] = ((ramp + 8 * i) % 256).astype(np.uint8)[None, :]
            img[..., 1] = 128
            img[..., 2] = (i * 7) % 256
            for packet in vs.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in vs.encode(None):
            out.mux(packet)
        if as_ is not None and audio is not None:
            block = 1024
            for k in range(0, len(audio), block):
                piece = np.ascontiguousarray(audio[k : k + block], dtype=np.float32)[None, :]
                frame = av.AudioFrame.from_ndarray(piece, format="fltp", layout="mono")
                frame.sample_rate, frame.pts = AUDIO_RATE, k
                for packet in as_.encode(frame):
                    out.mux(packet)
            for packet in as_.encode(None):
                out.mux(packet)
    return path


def write_wav(path: Path, num_samples: int, rate: int = AUDIO_RATE) -> Path:
    """A 16-bit mono wav of a 440 Hz tone, written with the stdlib."""
    t = np.arange(num_samples) / rate
    pcm = (0.3 * np.sin(2 * np.pi * 440 * t) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())
    return path


def collect(source: Source) -> tuple[list[VideoFrame], list[AudioChunk], list[float]]:
    frames, chunks, times = [], [], []
    for event in source:
        times.append(event.time_s)
        (frames if isinstance(event, VideoFrame) else chunks).append(event)
    return frames, chunks, times


def nondecreasing(times) -> bool:
    return bool(np.all(np.diff(np.asarray(times)) >= 0))


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    """1 s, 30 frames at 30 fps, 64x48 H.264, no audio track."""
    return write_mp4(tmp_path_factory.mktemp("clip") / "clip.mp4")


# --------------------------------------------------------------------------------------------
# FileSource on real media
# --------------------------------------------------------------------------------------------


@pytest.mark.realmedia
def test_file_source_pexels_frames_audio_and_order(media_dir):
    source = FileSource(media_file(media_dir, PEXELS))
    assert source.has_video and source.has_audio and source.audio_note is None
    assert source.fps == pytest.approx(23.976, abs=0.01)
    assert (source.width, source.height) == (640, 360)
    assert source.frame_count == 472
    assert source.duration_s == pytest.approx(19.69, abs=0.05)
    frames, chunks, times = collect(source)
    assert len(frames) == 472
    assert nondecreasing(times)
    assert [f.index for f in frames] == list(range(472))
    assert frames[0].time_s == pytest.approx(0.0, abs=1e-6)
    assert frames[-1].time_s == pytest.approx(471 / source.fps, abs=0.01)
    for frame in (frames[0], frames[200], frames[-1]):
        assert frame.image.shape == (360, 640, 3)
        assert frame.image.dtype == np.uint8 and frame.image.flags.c_contiguous
    samples = np.concatenate([c.samples for c in chunks])
    assert samples.dtype == np.float32
    assert len(samples) / AUDIO_RATE == pytest.approx(19.69, abs=0.05)
    # chunk times follow the sample count: the track is one contiguous timeline
    ends = np.array([c.end_s for c in chunks[:-1]])
    np.testing.assert_allclose([c.time_s for c in chunks[1:]], ends, atol=1e-9)
    stats = source.stats()
    assert stats["frames_read"] == 472 and stats["frames_dropped"] == 0
    assert stats["audio_samples_read"] == len(samples)


@pytest.mark.realmedia
def test_file_source_hevc_mov_with_late_starting_audio(media_dir):
    source = FileSource(media_file(media_dir, "video/face_noface.mov"))
    frames, chunks, times = collect(source)
    assert len(frames) == 169
    assert frames[0].image.shape == (540, 960, 3)
    assert nondecreasing(times)
    assert chunks and chunks[0].time_s == pytest.approx(2.43, abs=0.05)  # music starts late
    assert source.stats()["late_events"] == 0


@pytest.mark.realmedia
def test_file_source_wav_gives_all_samples_and_no_video(media_dir):
    path = media_file(media_dir, "audio/speech_emotion/00.wav")
    with wave.open(str(path)) as w:
        expected = w.getnframes() * AUDIO_RATE / w.getframerate()
    source = FileSource(path)
    assert source.has_audio and not source.has_video and source.fps is None
    frames, chunks, times = collect(source)
    assert frames == []
    assert nondecreasing(times) and chunks[0].time_s == pytest.approx(0.0, abs=1e-6)
    assert sum(len(c.samples) for c in chunks) == pytest.approx(expected, abs=2)


@pytest.mark.realmedia
def test_file_source_truncated_mp4_delivers_then_names_the_time(media_dir, tmp_path):
    data = media_file(media_dir, PEXELS).read_bytes()
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(data[: int(len(data) * 0.3)])
    frames: list[VideoFrame] = []
    with pytest.raises(SourceError) as info:
        for event in FileSource(truncated):
            if isinstance(event, VideoFrame):
                frames.append(event)
    message = str(info.value)
    assert "truncated.mp4" in message
    if frames:  # opened, decoded up to the cut, then said where it stopped
        assert 0 < len(frames) < 472
        stopped_at = float(re.search(r"(\d+\.\d\d) s", message).group(1))
        assert stopped_at == pytest.approx(frames[-1].time_s, abs=0.2)


# --------------------------------------------------------------------------------------------
# FileSource on generated files
# --------------------------------------------------------------------------------------------


def test_file_source_without_audio_track_says_so(clip):
    source = FileSource(clip)
    assert not source.has_audio
    assert source.audio_note == "the file has no audio track"
    assert source.fps == pytest.approx(30.0)
    frames, chunks, times = collect(source)
    assert len(frames) == 30 and chunks == []
    assert [f.index for f in frames] == list(range(30))
    np.testing.assert_allclose(times, np.arange(30) / 30.0, atol=1e-6)
    assert frames[0].image.shape == (48, 64, 3)


def test_file_source_audio_track_and_audio_off(tmp_path):
    audio = (0.1 * np.sin(np.arange(16000) / 10.0)).astype(np.float32)
    path = write_mp4(tmp_path / "av.mp4", audio=audio)
    frames, chunks, times = collect(FileSource(path))
    assert len(frames) == 30 and nondecreasing(times)
    total = sum(len(c.samples) for c in chunks) / AUDIO_RATE
    assert total == pytest.approx(1.0, abs=0.1)  # AAC pads up to a frame
    silent = FileSource(path, audio=False)
    assert not silent.has_audio and "turned off" in silent.audio_note
    assert collect(silent)[1] == []


def test_file_source_ignores_cover_art_of_an_audio_file(tmp_path):
    try:
        av.Codec("libmp3lame", "w")
    except Exception:
        pytest.skip("this FFmpeg build has no MP3 encoder to make the test file")
    path = tmp_path / "song.mp3"
    with av.open(str(path), "w") as out:
        audio = out.add_stream("libmp3lame", rate=AUDIO_RATE, layout="mono")
        art = out.add_stream("mjpeg", rate=1)
        art.width = art.height = 32
        art.pix_fmt = "yuvj420p"
        art.disposition = av.stream.Disposition.attached_pic
        picture = av.VideoFrame.from_ndarray(np.zeros((32, 32, 3), np.uint8), format="rgb24")
        for packet in [*art.encode(picture), *art.encode(None)]:
            out.mux(packet)
        signal = (0.1 * np.sin(np.arange(AUDIO_RATE) / 5.0)).astype(np.float32)
        size = audio.codec_context.frame_size or 1152
        for k in range(0, len(signal), size):
            frame = av.AudioFrame.from_ndarray(
                signal[None, k : k + size].copy(), format="fltp", layout="mono"
            )
            frame.sample_rate, frame.pts = AUDIO_RATE, k
            for packet in audio.encode(frame):
                out.mux(packet)
        for packet in audio.encode(None):
            out.mux(packet)
    source = FileSource(path)
    assert source.has_audio and not source.has_video and source.fps is None
    frames, chunks, _ = collect(source)
    assert frames == [] and sum(len(c.samples) for c in chunks) >= AUDIO_RATE


def test_file_source_iterates_again_from_the_start(clip):
    source = FileSource(clip)
    first = [e.index for e in source]
    second = [e.index for e in source]
    assert first == second == list(range(30))


def test_file_source_loop_keeps_time_and_index_running(clip):
    source = FileSource(clip, loop=True)
    frames = []
    for event in source:
        frames.append(event)
        if len(frames) == 75:
            source.stop()
    assert len(frames) == 75
    assert [f.index for f in frames] == list(range(75))
    times = np.array([f.time_s for f in frames])
    assert np.all(np.diff(times) > 0)
    assert times[30] == pytest.approx(1.0, abs=0.02)  # second pass starts after the first


def test_file_source_realtime_paces_at_timestamps(clip):
    start = time.monotonic()
    frames, _, _ = collect(FileSource(clip, realtime=True))
    elapsed = time.monotonic() - start
    assert len(frames) == 30
    assert elapsed >= 0.9  # last frame at 29/30 s; no upper bound (speed is not tested)


def test_file_source_stop_from_another_thread_ends_realtime_iteration(clip):
    source = FileSource(clip, realtime=True, loop=True)
    threading.Timer(0.2, source.stop).start()
    start = time.monotonic()
    frames, _, _ = collect(source)
    assert time.monotonic() - start < 2.0
    assert 0 < len(frames) < 30


def test_file_source_missing_empty_and_garbage_files(tmp_path):
    with pytest.raises(SourceError, match="does not exist"):
        FileSource(tmp_path / "missing.mp4")
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(SourceError, match=r"empty \(0 bytes\)"):
        FileSource(empty)
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(np.random.default_rng(0).bytes(50_000))
    with pytest.raises(SourceError, match="garbage.mp4"):
        FileSource(garbage)
    with pytest.raises(SourceError, match="folder"):
        FileSource(tmp_path)


def test_file_source_unsupported_codec_is_refused(tmp_path, monkeypatch):
    path = tmp_path / "exotic.mov"
    path.write_bytes(b"\0" * 100)
    fake = SimpleNamespace(
        format=SimpleNamespace(name="mov,mp4,m4a,3gp,3g2,mj2"),
        start_time=0,
        duration=1_000_000,
        streams=SimpleNamespace(
            video=[SimpleNamespace(codec_context=None, name="exotic_codec", index=0)], audio=[]
        ),
        close=lambda: None,
    )
    monkeypatch.setattr(av, "open", lambda *args, **kwargs: fake)
    with pytest.raises(SourceError, match=r"exotic_codec.*cannot decode.*ffmpeg"):
        FileSource(path)


class _FailingContainer:
    """A real container whose demuxer fails with an FFmpeg error after ``fail_after`` packets."""

    def __init__(self, real, fail_after: int) -> None:
        self._real, self._fail_after = real, fail_after

    def __getattr__(self, name):
        return getattr(self._real, name)

    def demux(self, *args, **kwargs):
        for i, packet in enumerate(self._real.demux(*args, **kwargs)):
            if i == self._fail_after:
                raise av.error.InvalidDataError(1094995529, "Invalid data found")
            yield packet


class _BadPacket:
    """A packet whose decoding fails like a corrupt one."""

    def __init__(self, packet) -> None:
        self.stream = packet.stream

    def decode(self):
        raise av.error.InvalidDataError(1094995529, "Invalid data found")


class _CorruptingContainer(_FailingContainer):
    """A real container whose video packets ``bad`` fail to decode."""

    def __init__(self, real, bad: range) -> None:
        super().__init__(real, fail_after=-1)
        self._bad = bad

    def demux(self, *args, **kwargs):
        for i, packet in enumerate(self._real.demux(*args, **kwargs)):
            yield _BadPacket(packet) if i in self._bad else packet


def test_file_source_skips_a_corrupt_packet_and_counts_it(clip, monkeypatch):
    real_open = av.open
    monkeypatch.setattr(
        av, "open", lambda *a, **k: _CorruptingContainer(real_open(*a, **k), range(10, 11))
    )
    source = FileSource(clip)
    frames, _, times = collect(source)
    assert 25 <= len(frames) <= 29 and nondecreasing(times)
    assert source.stats()["decode_errors"] == 1


def test_file_source_run_of_corrupt_packets_fails_naming_the_time(clip, monkeypatch):
    real_open = av.open
    monkeypatch.setattr(
        av, "open", lambda *a, **k: _CorruptingContainer(real_open(*a, **k), range(10, 30))
    )
    frames: list[VideoFrame] = []
    with pytest.raises(SourceError, match=r"clip.mp4 failed to decode at \d+\.\d\d s"):
        for event in FileSource(clip, max_decode_errors=3):
            frames.append(event)
    assert 0 < len(frames) <= 10


def test_file_source_failure_midway_delivers_frames_then_names_the_time(clip, monkeypatch):
    real_open = av.open
    monkeypatch.setattr(av, "open", lambda *a, **k: _FailingContainer(real_open(*a, **k), 20))
    frames: list[VideoFrame] = []
    with pytest.raises(SourceError) as info:
        for event in FileSource(clip):
            frames.append(event)
    assert 0 < len(frames) <= 20
    message = str(info.value)
    assert "clip.mp4" in message and "Invalid data found" in message
    assert f"failed to decode at {frames[-1].time_s:.2f} s" in message


# --------------------------------------------------------------------------------------------
# Synthetic
# --------------------------------------------------------------------------------------------


def test_synthetic_source_is_deterministic_and_complete():
    a = SyntheticSource(num_frames=12, fps=30.0, width=160, height=120, seed=3)
    b = SyntheticSource(num_frames=12, fps=30.0, width=160, height=120, seed=3)
    fa, ca, ta = collect(a)
    fb, cb, _ = collect(b)
    assert len(fa) == 12 and nondecreasing(ta)
    assert fa[0].image.shape == (120, 160, 3) and fa[0].image.dtype == np.uint8
    assert all(np.array_equal(x.image, y.image) for x, y in zip(fa, fb))
    assert all(np.array_equal(x.samples, y.samples) for x, y in zip(ca, cb))
    assert not np.array_equal(fa[0].image, fa[6].image)  # it moves
    assert sum(len(c.samples) for c in ca) == round(12 / 30 * AUDIO_RATE)
    other = collect(SyntheticSource(num_frames=2, width=160, height=120, seed=4))[0]
    assert not np.array_equal(other[0].image, fa[0].image)


def test_synthetic_source_realtime_and_endless_until_stop():
    start = time.monotonic()
    frames, _, _ = collect(SyntheticSource(num_frames=30, width=64, height=48, realtime=True))
    assert len(frames) == 30 and time.monotonic() - start >= 0.9
    endless = SyntheticSource(num_frames=None, width=64, height=48, audio=False)
    assert not endless.has_audio and endless.audio_note
    count = 0
    for event in endless:
        assert isinstance(event, VideoFrame)
        count += 1
        if count == 100:
            endless.stop()
    assert count == 100


# --------------------------------------------------------------------------------------------
# Camera (fake capture, real thread / slot / clock)
# --------------------------------------------------------------------------------------------


class FakeCapture:
    """A cv2.VideoCapture stand-in serving BGR frames (blue = 255, red = frame number)."""

    def __init__(self, index: int, delay_s: float = 0.002, fail: bool = False) -> None:
        self.index, self.delay_s, self.fail = index, delay_s, fail
        self.props: dict[int, float] = {}
        self.reads = 0
        self.released = False

    def isOpened(self) -> bool:  # noqa: N802 - the cv2 name
        return not self.released

    def set(self, prop: int, value: float) -> bool:
        self.props[prop] = value
        return True

    def get(self, prop: int) -> float:
        return self.props.get(prop, 0.0)

    def read(self):
        time.sleep(self.delay_s)
        if self.fail:
            return False, None
        w, h = int(self.props.get(3, 64)), int(self.props.get(4, 48))
        image = np.zeros((h, w, 3), np.uint8)
        image[..., 0] = 255
        image[..., 2] = self.reads % 256
        self.reads += 1
        return True, image

    def release(self) -> None:
        self.released = True


def fake_factory(**kwargs):
    made: list[FakeCapture] = []

    def factory(index: int) -> FakeCapture:
        made.append(FakeCapture(index, **kwargs))
        return made[-1]

    factory.made = made  # type: ignore[attr-defined]
    return factory


def test_camera_newest_frame_wins_and_skips_are_counted():
    factory = fake_factory(delay_s=0.002)
    camera = CameraSource(2, width=64, height=48, fps=30, capture_factory=factory)
    assert (camera.width, camera.height, camera.fps) == (64, 48, 30.0)
    assert camera.live and not camera.has_audio and camera.audio_note
    frames = []
    for frame in camera:
        frames.append(frame)
        time.sleep(0.03)  # a slow consumer
        if len(frames) == 6:
            break
    camera.stop()
    indices = [f.index for f in frames]
    assert indices == sorted(set(indices)) and indices[-1] - indices[0] > 5  # skipped frames
    times = [f.time_s for f in frames]
    assert np.all(np.diff(times) > 0) and times[0] >= 0
    image = frames[-1].image
    assert image.shape == (48, 64, 3) and image.dtype == np.uint8 and image.flags.c_contiguous
    assert np.all(image[..., 2] == 255)  # BGR blue came out as RGB blue
    assert np.all(image[..., 0] == frames[-1].index % 256)
    stats = camera.stats()
    assert stats["frames_dropped"] > 0
    assert stats["frames_read"] >= len(frames) + stats["frames_dropped"]
    assert not camera._thread.is_alive()  # stop() joined the reader thread
    assert factory.made[0].released
    with pytest.raises(SourceError, match="cannot be restarted"):
        camera.start()


def test_camera_that_stops_delivering_raises_after_the_timeout():
    camera = CameraSource(
        0, capture_factory=fake_factory(fail=True, delay_s=0.005), stall_timeout_s=0.2
    )
    with pytest.raises(SourceError, match="Camera 0 stopped delivering frames"):
        list(camera)
    camera.stop()
    assert camera.stats()["read_failures"] > 0


def test_camera_that_does_not_exist_real_opencv():
    with pytest.raises(SourceError, match=r"Camera 7 could not be opened.*eri info"):
        CameraSource(7)


def test_camera_listing_never_raises():
    def broken(index):
        raise RuntimeError("driver exploded")

    assert list_cameras(max_index=2, capture_factory=broken) == []
    found = list_cameras(max_index=1, capture_factory=fake_factory())
    assert [c["index"] for c in found] == [0, 1]
    assert isinstance(list_cameras(max_index=1), list)  # real OpenCV: none here, no error


#: What OpenCV prints when a camera is missing: "[ WARN:0@0.080] global cap_v4l.cpp:913 open
#: VIDEOIO(V4L2:/dev/video0): can't open camera by index", "[ERROR:0@0.081] ... out of range".
OPENCV_LOG_LINE = re.compile(r"\[ ?(WARN|ERROR|INFO)|can't open camera|VIDEOIO|index out of range")


def test_camera_probing_is_silent_real_opencv(capfd):
    """Probing indices with no camera behind them writes nothing to the native stderr."""
    list_cameras(max_index=3)
    with pytest.raises(SourceError):
        CameraSource(9)
    err = capfd.readouterr().err
    assert not OPENCV_LOG_LINE.search(err), err


@pytest.mark.slow
def test_eri_info_prints_no_opencv_warnings():
    """`eri info` on a machine without a camera: no OpenCV log lines on stderr."""
    eri = Path(sys.executable).with_name("eri")
    command = [str(eri)] if eri.is_file() else [sys.executable, "-m", "eri.realtime.cli"]
    env = {k: v for k, v in os.environ.items() if k != "OPENCV_LOG_LEVEL"}
    out = subprocess.run(
        [*command, "info"], capture_output=True, text=True, timeout=300, env=env, check=True
    )
    assert "Cameras:" in out.stdout
    bad = [line for line in out.stderr.splitlines() if OPENCV_LOG_LINE.search(line)]
    assert not bad, "\n".join(bad)


# --------------------------------------------------------------------------------------------
# Microphone (fake PortAudio stream, real callback / queue / clock)
# --------------------------------------------------------------------------------------------


class FakeInputStream:
    """A sounddevice.InputStream stand-in: a thread calling the callback with ramp blocks."""

    def __init__(self, *, samplerate, blocksize, device, channels, dtype, callback, **options):
        assert channels == 1 and dtype == "float32"
        self.rate, self.blocksize, self.callback = samplerate, blocksize, callback
        self.blocks = options.get("blocks")
        self.paced = options.get("paced", True)
        self.done = threading.Event()
        self._stop = threading.Event()
        self.closed = False

    def start(self):
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        k = 0
        period = self.blocksize / self.rate
        start = time.monotonic()
        while not self._stop.is_set() and (self.blocks is None or k < self.blocks):
            if self.paced:
                wait = start + (k + 1) * period - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
            ramp = (k * self.blocksize + np.arange(self.blocksize)).astype(np.float32)
            info = SimpleNamespace(inputBufferAdcTime=0.0, currentTime=0.0)
            self.callback(ramp[:, None] / 1e6, self.blocksize, info, 0)
            k += 1
        self.done.set()

    def stop(self):
        self._stop.set()
        self._thread.join()

    def close(self):
        self.closed = True


def stream_factory(**options):
    made: list[FakeInputStream] = []

    def factory(**kwargs):
        made.append(FakeInputStream(**kwargs, **options))
        return made[-1]

    factory.made = made  # type: ignore[attr-defined]
    return factory


def test_microphone_chunks_are_contiguous_and_timed():
    factory = stream_factory(blocks=20)
    mic = MicrophoneSource(blocksize=160, stream_factory=factory)
    assert mic.has_audio and not mic.has_video and mic.fps is None
    chunks = []
    for chunk in mic:
        chunks.append(chunk)
        if len(chunks) == 20:
            mic.stop()
    samples = np.concatenate([c.samples for c in chunks])
    np.testing.assert_allclose(samples * 1e6, np.arange(20 * 160), atol=0.5)
    times = [c.time_s for c in chunks]
    assert nondecreasing(times)
    assert -0.05 <= times[0] < 0.5
    assert times[-1] - times[0] == pytest.approx(19 * 0.01, abs=0.15)
    assert factory.made[0].closed
    assert mic.stats()["audio_chunks_read"] == 20 and mic.stats()["audio_chunks_dropped"] == 0


def test_microphone_queue_drops_oldest_blocks_when_the_consumer_stalls():
    factory = stream_factory(blocks=50, paced=False)
    mic = MicrophoneSource(blocksize=160, queue_s=0.02, stream_factory=factory)  # 2 blocks
    mic.start()
    assert factory.made[0].done.wait(5.0)
    chunks = mic.poll(0)
    mic.stop()
    assert len(chunks) == 2
    assert mic.stats()["audio_chunks_dropped"] == 48
    np.testing.assert_allclose(chunks[-1].samples[-1] * 1e6, 50 * 160 - 1, atol=0.5)  # newest


@pytest.mark.parametrize("rate", [48_000, 44_100, 22_050, 8_000])
def test_resampler_matches_scipy_resample_poly(rate):
    """The one resampler (eri.models.audio.Resampler: FFmpeg's swresample), fed in microphone
    blocks, against scipy.signal.resample_poly on a band-limited signal: same length, no delay,
    and within 2e-3 (the signal's peak is 0.6) away from the first and last 200 output samples,
    where the two filters' edge handling differs."""
    from scipy.signal import resample_poly

    t = np.arange(2 * rate) / rate
    x = (
        0.3 * np.sin(2 * np.pi * 440 * t)
        + 0.2 * np.sin(2 * np.pi * 1700 * t + 1)
        + 0.1 * np.sin(2 * np.pi * 5000 * t)
    ).astype(np.float32)
    resample = Resampler(AUDIO_RATE, rate)
    blocks = [resample(x[i : i + rate // 100]) for i in range(0, len(x), rate // 100)]
    ours = np.concatenate([*blocks, resample.flush()])
    g = math.gcd(AUDIO_RATE, rate)
    reference = resample_poly(x.astype(np.float64), AUDIO_RATE // g, rate // g)
    assert ours.dtype == np.float32 and len(ours) == len(reference) == 2 * AUDIO_RATE
    np.testing.assert_allclose(ours[200:-200], reference[200:-200], rtol=0, atol=2e-3)


def test_microphone_at_another_rate_is_resampled_to_16k():
    factory = stream_factory(blocks=30, paced=False)
    mic = MicrophoneSource(sample_rate=48_000, blocksize=480, stream_factory=factory)
    mic.start()
    assert factory.made[0].done.wait(5.0)
    time.sleep(0.05)
    chunks = mic.poll(0)
    mic.stop()
    total = sum(len(c.samples) for c in chunks)
    assert abs(total - 30 * 160) <= 64  # minus the resampler's short delay
    assert all(c.samples.dtype == np.float32 for c in chunks)


def test_microphone_without_portaudio_says_how_to_fix_it(monkeypatch):
    """sounddevice itself raises OSError when ctypes cannot find libportaudio; make it so even
    where PortAudio is installed, and re-import it for real: missing_dependency("portaudio")."""
    import ctypes.util

    real_find = ctypes.util.find_library
    monkeypatch.setattr(
        ctypes.util, "find_library", lambda name: None if "portaudio" in name else real_find(name)
    )
    monkeypatch.delitem(sys.modules, "sounddevice", raising=False)
    monkeypatch.delitem(sys.modules, "_sounddevice", raising=False)
    install = INSTALL_HINTS["portaudio"][1]
    with pytest.raises(MissingDependencyError) as info:
        MicrophoneSource()
    assert f"install it with `{install}`" in str(info.value)
    ok, line = microphone_status()
    assert not ok and install in line
    assert list_microphones() == []


def test_microphone_without_sounddevice_says_how_to_fix_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "sounddevice", None)  # import sounddevice -> ImportError
    with pytest.raises(MissingDependencyError) as info:
        MicrophoneSource()
    assert f"install it with `{INSTALL_HINTS['sounddevice'][1]}`" in str(info.value)
    ok, line = microphone_status()
    assert not ok and "pip install sounddevice" in line


def test_camera_without_portaudio_falls_back_to_visual_only(monkeypatch):
    """The default microphone missing its library is not fatal: the camera runs without audio."""
    import eri.realtime.sources.dispatch as dispatch
    import eri.realtime.sources.microphone as microphone

    def no_portaudio():
        raise microphone.missing_dependency("portaudio", OSError("PortAudio library not found"))

    monkeypatch.setattr(microphone, "_import_sounddevice", no_portaudio)
    monkeypatch.setattr(
        dispatch, "CameraSource", lambda index: CameraSource(index, capture_factory=fake_factory())
    )
    source = open_source("0", realtime=True)
    assert isinstance(source, LiveSource) and not source.has_audio
    assert INSTALL_HINTS["portaudio"][1] in source.audio_note
    source.stop()
    with pytest.raises(MissingDependencyError):
        open_source("0", realtime=True, mic="1")  # a microphone asked for by index: raise


def test_microphone_status_and_listing_never_raise():
    ok, line = microphone_status()
    assert isinstance(ok, bool) and isinstance(line, str) and line
    assert isinstance(list_microphones(), list)


# --------------------------------------------------------------------------------------------
# Camera + microphone
# --------------------------------------------------------------------------------------------


def test_live_source_combines_camera_and_microphone_on_one_clock():
    camera = CameraSource(0, width=64, height=48, capture_factory=fake_factory(delay_s=0.01))
    mic = MicrophoneSource(blocksize=160, stream_factory=stream_factory())
    live = LiveSource(camera, mic)
    assert live.has_audio and live.audio_note is None and live.live
    frames, chunks = [], []
    start = time.monotonic()
    with live:
        for event in live:
            (frames if isinstance(event, VideoFrame) else chunks).append(event)
            if time.monotonic() - start > 0.4:
                break
    elapsed = time.monotonic() - start
    assert len(frames) > 5 and len(chunks) > 5
    for events in (frames, chunks):
        times = [e.time_s for e in events]
        assert nondecreasing(times)
        assert min(times) >= -0.05 and max(times) <= elapsed + 0.05
    assert camera.clock is mic.clock is live.clock
    stats = live.stats()
    assert stats["frames_read"] >= len(frames) and stats["audio_chunks_read"] >= len(chunks)
    assert not camera._thread.is_alive()


def test_live_source_without_or_with_failing_microphone_is_visual_only():
    camera = CameraSource(0, capture_factory=fake_factory())
    live = LiveSource(camera, None, audio_note="the microphone was turned off (--mic none)")
    assert not live.has_audio and "--mic none" in live.audio_note
    live.stop()

    def broken(**kwargs):
        raise OSError("device busy")

    camera = CameraSource(0, capture_factory=fake_factory())
    live = LiveSource(camera, MicrophoneSource(stream_factory=broken))
    with live:
        event = next(iter(live))
    assert isinstance(event, VideoFrame)
    assert not live.has_audio and "device busy" in live.audio_note


# --------------------------------------------------------------------------------------------
# Sessions and dispatch
# --------------------------------------------------------------------------------------------


def test_session_source_round_trips_video_and_wav(tmp_path):
    session = tmp_path / "session"
    session.mkdir()
    write_mp4(session / "video.mp4", num_frames=45, fps=30)
    write_wav(session / "audio.wav", num_samples=24_000)
    source = SessionSource(session)
    assert source.has_audio and source.audio_note is None
    assert source.fps == pytest.approx(30.0) and source.frame_count == 45
    frames, chunks, times = collect(source)
    assert len(frames) == 45
    assert sum(len(c.samples) for c in chunks) == 24_000
    assert nondecreasing(times)
    assert source.stats()["frames_read"] == 45


def test_session_source_reads_a_crashed_recording_up_to_the_cut(tmp_path):
    """A fragmented MP4 cut mid-write (as after a crash) gives the frames before the cut."""
    session = tmp_path / "session"
    session.mkdir()
    video = session / "video.mp4"
    rng = np.random.default_rng(0)
    fragmented = {"movflags": "frag_keyframe+empty_moov+default_base_moof"}
    with av.open(str(video), "w", options=fragmented) as out:
        vs = out.add_stream("libx264", rate=30)
        vs.width, vs.height, vs.pix_fmt = 96, 64, "yuv420p"
        vs.options = {"g": "15", "preset": "ultrafast"}
        for _ in range(90):
            image = rng.integers(0, 256, (64, 96, 3), dtype=np.uint8)  # incompressible
            for packet in vs.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                out.mux(packet)
        for packet in vs.encode(None):
            out.mux(packet)
    data = video.read_bytes()
    video.write_bytes(data[: len(data) // 2])
    write_wav(session / "audio.wav", num_samples=3 * AUDIO_RATE)
    frames, chunks, times = collect(SessionSource(session))
    assert 30 < len(frames) < 90 and nondecreasing(times)
    assert [f.index for f in frames] == list(range(len(frames)))
    assert sum(len(c.samples) for c in chunks) == 3 * AUDIO_RATE


def test_session_source_falls_back_to_the_mp4_audio_track(tmp_path):
    session = tmp_path / "session"
    session.mkdir()
    audio = (0.1 * np.sin(np.arange(8000) / 5.0)).astype(np.float32)
    write_mp4(session / "video.mp4", num_frames=15, fps=30, audio=audio)
    source = SessionSource(session)
    assert source.has_audio
    frames, chunks, _ = collect(source)
    assert len(frames) == 15 and sum(len(c.samples) for c in chunks) >= 8000


def test_session_source_errors_name_the_missing_piece(tmp_path):
    with pytest.raises(SourceError, match="does not exist"):
        SessionSource(tmp_path / "nope")
    (tmp_path / "half").mkdir()
    write_wav(tmp_path / "half" / "audio.wav", 1600)
    with pytest.raises(SourceError, match="not a session folder: video.mp4 is missing"):
        SessionSource(tmp_path / "half")
    (tmp_path / "mute").mkdir()
    write_mp4(tmp_path / "mute" / "video.mp4", num_frames=3)
    mute = SessionSource(tmp_path / "mute")
    assert not mute.has_audio and "audio.wav" in mute.audio_note


def test_open_source_dispatch(tmp_path, clip):
    assert isinstance(open_source("synthetic", realtime=False), SyntheticSource)
    small = open_source("synthetic:12", realtime=True)
    assert isinstance(small, SyntheticSource) and small.num_frames == 12 and small.realtime
    assert isinstance(open_source(clip, realtime=False), FileSource)
    assert isinstance(open_source(str(clip), realtime=False), FileSource)
    session = tmp_path / "session"
    session.mkdir()
    write_mp4(session / "video.mp4", num_frames=3)
    assert isinstance(open_source(session, realtime=False), SessionSource)


@pytest.mark.parametrize(
    ("spec", "pattern"),
    [
        ("nonsense", r"not a camera index, 'synthetic', an existing media file"),
        ("missing/clip.mp4", "does not exist"),
        ("synthetic:many", "synthetic:N"),
        (7, "Camera 7 could not be opened"),
        ("7", "Camera 7 could not be opened"),
    ],
)
def test_open_source_errors(spec, pattern):
    with pytest.raises(SourceError, match=pattern):
        open_source(spec, realtime=False, mic="none")


def test_event_types_and_durations():
    chunk = AudioChunk(1.0, np.zeros(800, np.float32))
    assert chunk.duration_s == pytest.approx(0.05) and chunk.end_s == pytest.approx(1.05)
    assert "samples" not in repr(chunk)
    frame = VideoFrame(3, 0.1, np.zeros((2, 2, 3), np.uint8))
    assert "image" not in repr(frame) and math.isclose(frame.time_s, 0.1)
