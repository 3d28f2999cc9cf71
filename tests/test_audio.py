"""Audio front end: librosa equivalence, streaming == whole clip, token tiling, file errors."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
import scipy.io.wavfile
import scipy.signal

from eri.models.audio import (
    AudioDecodeError,
    AudioSpec,
    StreamingFrontEnd,
    feature_frames,
    frame_end_times,
    hann_window,
    load_audio,
    mel_basis,
    tokens_at,
    waveform_tokens,
)
from eri.models.spec import WindowSpec

# Tolerances against librosa 0.11, from measurements on all 50 clips of ../shared/media/audio
# (speech_emotion and speech_other). Our pipeline runs in float64 and rounds to float32 at the
# end; librosa runs the mel/dB/DCT steps in float32, so the differences are float32 rounding:
#   MFCC:    max |diff| 9.2e-5 (coefficients reach ~900, where one float32 ulp is 6.1e-5);
#   log-mel: max |diff| 1.5e-5 dB (values within -100..+60 dB, one ulp at 32-64 is 3.8e-6).
# The bounds leave ~5x headroom for other BLAS/FFT builds.
MFCC_ABS_TOL = 5e-4
LOGMEL_ABS_TOL_DB = 1e-4
MEL_BASIS_ABS_TOL = 1e-6  # measured 2.9e-9 against librosa's float32 basis, 0 against float64

# librosa.load imports audioread, which imports stdlib modules deprecated in Python 3.11+.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:audioread")

SPEECH_CLIPS = ["00.wav", "05.wav", "15.wav", "30.wav", "41.wav"]  # angry, sad, happy, neutral
SPECS = [AudioSpec(), AudioSpec(kind="logmel")]


def _speech(media_dir: Path, name: str) -> Path:
    path = media_dir / "audio" / "speech_emotion" / name
    if not path.is_file():
        pytest.skip(f"real media file {path} is absent")
    return path


def _push_in_random_chunks(
    front: StreamingFrontEnd, y: np.ndarray, rng: np.random.Generator
) -> None:
    """Chunks of 0..49 samples (< hop), 50..799, and 800..2999 (> n_fft), mixed."""
    i = 0
    while i < y.shape[0]:
        kind = rng.integers(3)
        n = int(rng.integers(*((0, 50), (50, 800), (800, 3000))[kind]))
        front.push(y[i : i + n])
        i += n


# -- building blocks ---------------------------------------------------------------------------


def test_hann_window_is_scipy_periodic_hann() -> None:
    ref = scipy.signal.get_window("hann", 1024, fftbins=True)
    np.testing.assert_allclose(hann_window(1024), ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    "spec", SPECS + [AudioSpec(n_mels=64, n_mfcc=40, fmin=50.0, fmax=7600.0)], ids=str
)
def test_mel_basis_equals_librosa(spec: AudioSpec) -> None:
    librosa = pytest.importorskip("librosa")
    ref = librosa.filters.mel(
        sr=spec.sample_rate, n_fft=spec.n_fft, n_mels=spec.n_mels, fmin=spec.fmin, fmax=spec.fmax
    )
    ours = mel_basis(spec)
    assert ours.shape == ref.shape == (spec.n_mels, 1 + spec.n_fft // 2)
    assert np.abs(ours - ref).max() <= MEL_BASIS_ABS_TOL
    assert mel_basis(spec) is ours  # cached once per spec


@pytest.mark.parametrize("n_samples,n_frames", [(0, 0), (1023, 0), (1024, 1), (1823, 1), (1824, 2)])
def test_frame_count_and_end_times(n_samples: int, n_frames: int) -> None:
    spec = AudioSpec()
    frames = feature_frames(np.zeros(n_samples, dtype=np.float32), spec)
    assert frames.shape == (n_frames, spec.n_coeffs) and frames.dtype == np.float32
    # Digital silence: every mel band sits on the 1e-10 power floor, -100 dB, so the
    # orthonormal DCT gives -100 * sqrt(n_mels) in coefficient 0 and zeros elsewhere (up to
    # the FFT's rounding: one float32 ulp at 1131 is 1.2e-4).
    np.testing.assert_allclose(frames[:, 0], -100 * np.sqrt(spec.n_mels), rtol=1e-7, atol=0)
    np.testing.assert_allclose(frames[:, 1:], 0.0, rtol=0, atol=1e-4)
    logmel = feature_frames(np.zeros(n_samples, dtype=np.float32), AudioSpec(kind="logmel"))
    np.testing.assert_allclose(logmel, np.full((n_frames, spec.n_mels), -100.0), rtol=1e-7)
    ends = frame_end_times(3, spec, start_s=2.0)
    np.testing.assert_allclose(ends, [2.064, 2.114, 2.164], rtol=0, atol=1e-12)


def test_waveform_must_be_mono() -> None:
    with pytest.raises(ValueError, match="mono"):
        feature_frames(np.zeros((2, 4000), dtype=np.float32), AudioSpec())


# -- librosa on real speech --------------------------------------------------------------------


@pytest.mark.realmedia
@pytest.mark.parametrize("name", SPEECH_CLIPS)
def test_load_audio_matches_librosa_load(media_dir: Path, name: str) -> None:
    librosa = pytest.importorskip("librosa")
    path = _speech(media_dir, name)
    ref, _ = librosa.load(path, sr=16000)
    ours = load_audio(path)
    assert ours.dtype == np.float32 and ours.shape == ref.shape
    assert np.abs(ours - ref).max() <= 1e-6  # both read 16-bit PCM as x / 32768: measured 0


@pytest.mark.realmedia
@pytest.mark.parametrize("name", SPEECH_CLIPS)
def test_mfcc_and_logmel_match_librosa_on_speech(media_dir: Path, name: str) -> None:
    librosa = pytest.importorskip("librosa")
    y, _ = librosa.load(_speech(media_dir, name), sr=16000)
    mel = librosa.feature.melspectrogram(
        y=y, sr=16000, n_fft=1024, hop_length=800, center=False, n_mels=128, power=2.0
    )
    db = librosa.power_to_db(mel, top_db=None)
    mfcc = librosa.feature.mfcc(S=db, n_mfcc=128)

    ours_mfcc = feature_frames(y, AudioSpec())
    ours_db = feature_frames(y, AudioSpec(kind="logmel"))
    assert ours_mfcc.shape == mfcc.T.shape and ours_db.shape == db.T.shape
    assert ours_mfcc.shape[0] > 20
    assert np.abs(ours_mfcc - mfcc.T).max() <= MFCC_ABS_TOL
    assert np.abs(ours_db - db.T).max() <= LOGMEL_ABS_TOL_DB


# -- streaming == whole clip -------------------------------------------------------------------


def _check_stream_equals_clip(y: np.ndarray, spec: AudioSpec, seed: int) -> None:
    start_s = 3.25
    front = StreamingFrontEnd(spec, capacity_s=3600.0, start_s=start_s)
    _push_in_random_chunks(front, y, np.random.default_rng(seed))
    ref = feature_frames(y, spec)
    frames, ends = front.frames()
    assert front.samples_received == y.shape[0]
    assert front.frames_computed == ref.shape[0] and front.dropped_frames == 0
    assert front.time_s == pytest.approx(start_s + y.shape[0] / spec.sample_rate)
    assert frames.shape == ref.shape
    assert np.abs(frames - ref).max(initial=0.0) == 0.0
    np.testing.assert_array_equal(ends, frame_end_times(ref.shape[0], spec, start_s))

    times = start_s + np.linspace(-0.5, y.shape[0] / spec.sample_rate + 0.5, 97)
    tokens, present = front.tokens(times)
    ref_tokens, ref_present = waveform_tokens(y, times, spec, start_s=start_s)
    np.testing.assert_array_equal(present, ref_present)
    assert np.abs(tokens - ref_tokens).max() == 0.0


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.kind)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_streaming_equals_whole_clip_on_noise(spec: AudioSpec, seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    y = (rng.standard_normal(int(rng.integers(20_000, 60_000))) * 0.2).astype(np.float32)
    y[5000:9000] = 0.0  # digital silence exercises the 1e-10 floor
    _check_stream_equals_clip(y, spec, seed)


@pytest.mark.realmedia
@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.kind)
def test_streaming_equals_whole_clip_on_speech(media_dir: Path, spec: AudioSpec) -> None:
    _check_stream_equals_clip(load_audio(_speech(media_dir, "05.wav")), spec, seed=7)


def test_streaming_with_hop_longer_than_window() -> None:
    spec = AudioSpec(n_fft=512, hop_length=1200, n_mels=40, n_mfcc=20)
    y = np.random.default_rng(3).standard_normal(30_000).astype(np.float32)
    _check_stream_equals_clip(y, spec, seed=3)


def test_ring_overflow_keeps_newest_frames_and_counts_dropped() -> None:
    spec = AudioSpec()
    y = np.random.default_rng(5).standard_normal(5 * 16000).astype(np.float32)
    front = StreamingFrontEnd(spec, capacity_s=1.0)
    assert front.capacity == 20
    for chunk in np.array_split(y, 37):
        front.push(chunk)
    ref = feature_frames(y, spec)
    frames, ends = front.frames()
    assert front.frames_computed == ref.shape[0] == 99
    assert len(front) == 20 and front.dropped_frames == 99 - 20
    np.testing.assert_array_equal(frames, ref[-20:])
    np.testing.assert_array_equal(ends, frame_end_times(99, spec)[-20:])

    # Tokens whose frames are all still held (frames 79..98 end at 4.014 s..4.964 s) equal the
    # whole-clip tokens; a token reaching back past the ring gets zeros for the dropped frames.
    times = np.array([4.4, 4.7, front.time_s, 4.3])
    tokens, present = front.tokens(times)
    ref_tokens, ref_present = waveform_tokens(y, times, spec)
    assert present.all() and ref_present.all()
    np.testing.assert_array_equal(tokens[:3], ref_tokens[:3])
    c = spec.n_coeffs  # the token at 4.3 s wants frames 77..84; 77 and 78 were dropped
    np.testing.assert_array_equal(tokens[3, : 2 * c], 0.0)
    np.testing.assert_array_equal(tokens[3, 2 * c :], ref_tokens[3, 2 * c :])

    # One push far larger than the ring: only its newest frames stay.
    front.push(y)
    assert len(front) == 20 and front.frames_computed == 99 + 100
    assert front.dropped_frames == 199 - 20


# -- tokens ------------------------------------------------------------------------------------


def _index_frames(n: int, channels: int = 3) -> np.ndarray:
    """frames[k, :] == k, so a token shows which frames it holds."""
    return np.repeat(np.arange(n, dtype=np.float32)[:, None], channels, axis=1)


@pytest.mark.parametrize("end_s", [20.0, 20.064, 20.114, 33.3333, 101.2])
def test_full_window_tokens_tile_the_frames(end_s: float) -> None:
    spec, window = AudioSpec(), WindowSpec()
    assert spec.token_s == pytest.approx(window.period_s)  # 8 hops == one sample period
    n = 2500
    frames, ends = _index_frames(n), frame_end_times(n, spec)
    times = window.sample_times(end_s)
    tokens, present = tokens_at(frames, ends, times, spec)
    assert tokens.shape == (window.num_samples, spec.stack * 3) and present.all()
    used = tokens.reshape(window.num_samples, spec.stack, 3)[:, :, 0].astype(np.int64)
    # time-major: each token is `stack` consecutive frames, oldest first ...
    np.testing.assert_array_equal(np.diff(used, axis=1), 1)
    # ... the next token starts right after it: disjoint, gap-free, every frame used once.
    np.testing.assert_array_equal(used[1:, 0], used[:-1, -1] + 1)
    flat = used.reshape(-1)
    np.testing.assert_array_equal(flat, np.arange(flat[0], flat[0] + flat.size))
    # each token ends with the newest frame finished by its sample time
    newest = np.searchsorted(ends, times + 1e-9, side="right") - 1
    np.testing.assert_array_equal(used[:, -1], newest)
    assert ends[used[-1, -1]] <= end_s + 1e-9 < ends[used[-1, -1] + 1]


def test_short_clip_tokens_are_zero_padded() -> None:
    spec = AudioSpec()
    frames, ends = _index_frames(9) + 1.0, frame_end_times(9, spec)  # +1: frame k holds k + 1
    times = np.array([0.01, 0.064, 0.1, 0.2, 0.5])
    tokens, present = tokens_at(frames, ends, times, spec)
    np.testing.assert_array_equal(present, [False, True, True, True, True])
    held = tokens.reshape(5, spec.stack, 3)[:, :, 0]
    zeros = [0] * 8
    np.testing.assert_array_equal(held[0], zeros)  # no frame finished: absent, all zeros
    np.testing.assert_array_equal(held[1], zeros[:7] + [1])  # frame 0 ends exactly at 0.064
    np.testing.assert_array_equal(held[2], zeros[:7] + [1])
    np.testing.assert_array_equal(held[3], zeros[:5] + [1, 2, 3])
    np.testing.assert_array_equal(held[4], np.arange(2, 10))  # frames 1..8

    # The same on a real waveform of 0.5 s: 9 frames.
    y = np.random.default_rng(0).standard_normal(8000).astype(np.float32)
    tok, pres = waveform_tokens(y, times, spec)
    np.testing.assert_array_equal(pres, present)
    assert tok.shape == (5, spec.token_dim) and not tok[0].any()
    np.testing.assert_array_equal(tok[1, : 7 * spec.n_coeffs], 0.0)
    assert tok[1, 7 * spec.n_coeffs :].any()


@pytest.mark.parametrize("n_samples", [0, 500])
def test_no_frames_means_no_audio(n_samples: int) -> None:
    spec = AudioSpec()
    times = WindowSpec().clip_sample_times(10.0)
    tokens, present = waveform_tokens(np.zeros(n_samples, np.float32), times, spec)
    assert tokens.shape == (32, 1024) and tokens.dtype == np.float32
    assert not tokens.any() and not present.any()

    front = StreamingFrontEnd(spec)
    front.push(np.zeros(n_samples, np.float32))
    tokens, present = front.tokens(times)
    assert tokens.shape == (32, 1024) and not tokens.any() and not present.any()


# -- files -------------------------------------------------------------------------------------


def test_load_audio_resamples_stereo_to_mono(tmp_path: Path) -> None:
    t = np.arange(48_000) / 48_000
    tone = 0.5 * np.sin(2 * np.pi * 440.0 * t)
    path = tmp_path / "stereo48k.wav"
    scipy.io.wavfile.write(path, 48_000, np.stack([tone, tone], axis=1).astype(np.float32))
    y = load_audio(path)
    assert y.dtype == np.float32 and y.ndim == 1
    assert abs(y.shape[0] - 16_000) <= 64
    spectrum = np.abs(np.fft.rfft(y[2000:14000]))
    assert np.fft.rfftfreq(12000, 1 / 16000)[spectrum.argmax()] == pytest.approx(440.0, abs=2)


def _video_without_audio(path: Path) -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=5)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for i in range(5):
            image = np.full((32, 32, 3), 40 * i, dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


@pytest.mark.parametrize("case", ["missing", "empty", "video_only", "random_bytes"])
def test_load_audio_errors_name_the_file(tmp_path: Path, case: str) -> None:
    path = tmp_path / f"{case}.mp4"
    if case == "empty":
        path.write_bytes(b"")
    elif case == "video_only":
        _video_without_audio(path)
    elif case == "random_bytes":
        path.write_bytes(np.random.default_rng(0).bytes(20_000))
    expected = {
        "missing": "does not exist",
        "empty": "Cannot decode",
        "video_only": "no audio stream",
        "random_bytes": "Cannot decode",
    }[case]
    with pytest.raises(AudioDecodeError, match=expected) as info:
        load_audio(path)
    assert str(path) in str(info.value)
    assert isinstance(info.value, ValueError)
