"""Each audio token's features computed once (realtime/audio_cache.py ``AudioFeatureCache``): token
keys are a pure function of the front end's frames, the cache encodes one new key per step in
steady state, clears on a gap reset, and cached outputs equal the uncached ones (all T tokens
re-encoded every step), live and offline, in torch and ONNX Runtime."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from eri.models.audio import AudioSpec, StreamingFrontEnd, load_audio
from eri.models.bundle import untrained_bundle
from eri.models.spec import WindowSpec
from eri.realtime.backends import create_backend
from eri.realtime.pipeline import MAX_AUDIO_GAP_S, StreamingEngine, run_offline
from eri.realtime.sources import AudioChunk, FileSource, VideoFrame
from tests.media_utils import media_file

SR = 16000
FPS = 30.0
#: 8 samples over 3.2 s: 0.4 s apart, like the default window (8 hops of 50 ms per sample).
WINDOW = WindowSpec(num_samples=8, context_s=3.2)
#: cnn_lstm's spectrogram CNN on 1 token vs on T tokens at once sums in other orders (oneDNN
#: picks its kernels by batch size): measured up to 6e-8 on the intensities; dual_branch's
#: per-token LayerNorm is the same numbers either way (exact).
TOLERANCE = {"dual_branch": 0.0, "cnn_lstm": 1e-6}


class CountingBackend:
    """A backend that records the batch size of every ``encode_audio`` call (delegates all)."""

    def __init__(self, inner) -> None:
        self.inner, self.batches = inner, []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def encode_audio(self, tokens):
        self.batches.append(len(tokens))
        return self.inner.encode_audio(tokens)


@pytest.fixture(scope="module")
def bundles():
    done = {}

    def get(arch):
        if arch not in done:
            done[arch] = untrained_bundle(arch, window=WINDOW)
        return done[arch]

    return get


def _tone(seconds: float, seed: int = 0) -> np.ndarray:
    """A gliding tone with pauses and a little noise [S] at 16 kHz (speech-like levels)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    f0 = 150 + 40 * np.sin(2 * np.pi * 0.5 * t)
    wave = np.sin(2 * np.pi * np.cumsum(f0) / SR) * (np.sin(2 * np.pi * 1.3 * t) > -0.4)
    return (0.2 * wave + 0.01 * rng.standard_normal(t.size)).astype(np.float32)


def _audio_steps(engine, wave: np.ndarray, start: float = 0.0, chunk_s: float = 0.02, after=None):
    """Feed ``wave`` in chunks and take an output step every 1/FPS s of it (no video);
    ``after()`` is called after each step."""
    outs, n, step = [], int(chunk_s * SR), 0
    next_t = start + 1.0 / FPS
    for i in range(0, len(wave), n):
        chunk = AudioChunk(start + i / SR, wave[i : i + n])
        engine.push_audio(chunk)
        while next_t <= chunk.end_s + 1e-9:
            outs.append(engine.output_at(next_t, step))
            if after is not None:
                after()
            next_t += 1.0 / FPS
            step += 1
    return outs


# ---------------------------------------------------------------------- the keys
def test_token_is_a_pure_function_of_its_key():
    """tokens(t) == tokens_for_keys(token_keys(t)) exactly, through zero padding at the start
    and a ring that has overwritten its oldest frames; keys count finished frames."""
    spec = AudioSpec()
    front = StreamingFrontEnd(spec, capacity_s=2.0, start_s=0.7)
    rng = np.random.default_rng(1)
    seen: dict[int, np.ndarray] = {}
    for _ in range(60):
        front.push(0.1 * rng.standard_normal(int(rng.integers(200, 2400))).astype(np.float32))
        times = front.start_s + np.sort(rng.random(8)) * (front.time_s - front.start_s + 0.2)
        keys = front.token_keys(times)
        tokens, _ = front.tokens(times)
        assert keys.dtype == np.int64 and np.all(np.diff(keys) >= 0)
        assert np.array_equal(tokens, front.tokens_for_keys(keys))
        assert keys.max() <= front.frames_computed
        for key, token in zip(keys.tolist(), tokens):
            first = key - spec.stack  # the token's oldest frame, held while in the ring
            if first >= front.dropped_frames and key in seen:
                assert np.array_equal(seen[key], token)  # the same key, the same token
            seen[key] = token
        assert not np.any(front.tokens_for_keys(np.array([0]))), "key 0: no frame finished yet"
    assert front.dropped_frames > 0  # the ring wrapped


# ---------------------------------------------------------------------- the cache
def test_one_new_key_per_step_in_steady_state(bundles):
    """At 30 output steps per second and 20 MFCC frames per second, once the window spans its
    full context each step encodes at most one token (about two steps in three encode one),
    and the cache holds at most the keys of the context and a margin."""
    bundle = bundles("dual_branch")
    backend = CountingBackend(create_backend(bundle, "torch"))
    engine = StreamingEngine(bundle, backend, None)
    cache = engine.audio_cache
    encoded = [0]
    outs = _audio_steps(engine, _tone(8.0), after=lambda: encoded.append(cache.encoded))
    per_step = np.diff(encoded)  # tokens encoded by each step
    assert per_step.sum() == sum(backend.batches)  # one batched call per step that had any
    assert len(backend.batches) == np.count_nonzero(per_step)
    t = WINDOW.num_samples
    steady = [i for i, o in enumerate(outs) if o.time_s > WINDOW.context_s + 0.5]
    assert len(steady) > 100
    assert per_step[steady].max() == 1 and per_step[steady].min() == 0
    frames_per_step = SR / AudioSpec().hop_length / FPS  # 2/3
    assert per_step[steady].sum() == pytest.approx(len(steady) * frames_per_step, abs=2)
    # Every step with an MFCC frame looks up its T keys (the first, before a whole frame, none).
    assert cache.hits + cache.encoded == t * (len(outs) - 1)
    assert len(cache) <= cache.keep + t


def test_gap_reset_clears_the_cache(bundles):
    """A gap longer than MAX_AUDIO_GAP_S starts a new front end, whose keys start at 0 again:
    the cache is cleared, and the outputs still equal the uncached engine's."""
    bundle = bundles("dual_branch")
    backend = create_backend(bundle, "torch")
    cached = StreamingEngine(bundle, backend, None)
    uncached = StreamingEngine(bundle, backend, None, cache_audio=False)
    assert uncached.audio_cache is None
    wave = _tone(6.0, seed=2)
    outs = {}
    for name, engine in (("cached", cached), ("uncached", uncached)):
        first = _audio_steps(engine, wave[: 4 * SR])
        size = len(engine.audio_cache) if engine.audio_cache is not None else 0
        later = 4.0 + MAX_AUDIO_GAP_S + 0.5
        engine.push_audio(AudioChunk(later, wave[4 * SR : 4 * SR + 320]))
        if engine.audio_cache is not None:
            assert size > 20 and len(engine.audio_cache) == 0  # cleared at the reset
        second = _audio_steps(engine, wave[4 * SR + 320 :], start=later + 0.02)
        assert engine.audio_gaps == 1
        outs[name] = np.stack([o.intensities for o in first + second])
    np.testing.assert_array_equal(outs["cached"], outs["uncached"])


@pytest.mark.parametrize("arch", ["dual_branch", "cnn_lstm"])
def test_cached_equals_uncached_with_video(bundles, arch):
    """Frames and audio through process_frames: the cached path gives the uncached numbers
    (TOLERANCE), and the audio encoder's time is in the "audio" stage of a total that is the
    sum of the stages."""
    bundle = bundles(arch)
    backend = create_backend(bundle, "torch")
    size = bundle.model.crop.size
    rng = np.random.default_rng(3)
    tracker = SimpleNamespace(
        process=lambda image, t: SimpleNamespace(crop=image, box=None), stats=dict
    )
    wave = _tone(4.5, seed=4)
    frames = [
        VideoFrame(i, (i + 1) / 10.0, rng.integers(0, 255, (size, size, 3), dtype=np.uint8))
        for i in range(40)
    ]
    results = {}
    for cache in (True, False):
        engine = StreamingEngine(bundle, backend, tracker, cache_audio=cache)
        outs = []
        for frame in frames:
            end = int(round(frame.time_s * SR))
            start = int(round((frame.time_s - 0.1) * SR))
            engine.push_audio(AudioChunk(start / SR, wave[start:end]))
            outs += engine.process_frames([frame])
        results[cache] = np.stack([o.intensities for o in outs])
        for out in outs:
            assert "audio" in out.stages_ms and out.stages_ms["audio"] >= 0
            parts = sum(v for k, v in out.stages_ms.items() if k != "total")
            assert out.stages_ms["total"] == pytest.approx(parts)
        assert all(o.audio_present for o in outs[5:])
    np.testing.assert_allclose(results[True], results[False], rtol=0, atol=TOLERANCE[arch])


@pytest.mark.slow  # an ONNX export of the small dual_branch (~20 s on 2 cores)
@pytest.mark.parametrize("arch, backend", [("dual_branch", "onnxruntime"), ("cnn_lstm", "torch")])
def test_offline_analysis_of_a_real_wav(bundles, arch, backend):
    """run_offline over real speech: cached equals uncached, in ONNX Runtime and torch."""
    path = media_file("audio/speech_other/count.wav")
    bundle = bundles(arch)
    runner = create_backend(bundle, backend)
    results = {}
    for cache in (True, False):
        counting = CountingBackend(runner)
        engine = StreamingEngine(bundle, counting, None, cache_audio=cache)
        with FileSource(str(path), realtime=False) as source:
            outs = list(run_offline(source, engine))
        results[cache] = np.stack([o.intensities for o in outs])
        tokens = sum(counting.batches)
        if cache:  # ~20 new keys per second of audio, against T per 0.1 s step uncached
            assert tokens <= 21 * len(load_audio(path)) / SR + 2 * WINDOW.num_samples
        else:
            assert tokens == WINDOW.num_samples * len(counting.batches)
    assert len(results[True]) > 20
    np.testing.assert_allclose(results[True], results[False], rtol=0, atol=TOLERANCE[arch])
