"""Audio front end: the constants and the MFCC / log-mel computation shared by training and live.

Like whisper's ``audio.py``, every audio fact lives here. Frames are computed without centring
(``center=False``): frame ``k`` covers samples ``[k * hop, k * hop + n_fft)`` and is complete
once its last sample has arrived, so a stream computes each frame exactly once and gets the
same numbers as the whole clip. Tokens stack ``stack`` consecutive frames; the token for a
sample time ``t`` is made of the last ``stack`` frames that end at or before ``t``. With
``stack * hop / sample_rate == WindowSpec.period_s`` the tokens of a full window tile its audio.

The numbers, per frame (plain numpy/scipy; librosa is only the test reference):

1. samples ``x[k * hop : k * hop + n_fft]`` (float32 in, float64 inside), times a periodic Hann
   window (``scipy.signal.get_window("hann", n_fft, fftbins=True)``, as librosa uses);
2. power spectrum ``|rfft|^2`` [1 + n_fft // 2];
3. mel energies with the filterbank of ``librosa.filters.mel(sr, n_fft, n_mels, fmin, fmax)``
   (Slaney mel scale, Slaney area normalisation: librosa's defaults);
4. ``10 * log10(max(1e-10, mel))``: ``librosa.power_to_db(ref=1.0, amin=1e-10, top_db=None)``.
   No ``top_db`` clipping: it clips relative to the maximum of the *whole* clip, which a stream
   does not know yet, so it could never give the same numbers live and offline;
5. ``kind="mfcc"``: DCT-II with ``norm="ortho"`` over the mel axis, first ``n_mfcc``
   coefficients (``librosa.feature.mfcc``); ``kind="logmel"``: the dB mel values themselves.

Whole clips go through :func:`feature_frames` / :func:`waveform_tokens` (training, ``analyze``);
live audio through :class:`StreamingFrontEnd`, which gives the same frames and tokens.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from eri.errors import EriError
from eri.models.spec import _from_dict

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16_000
N_FFT = 1024
HOP_LENGTH = 800  # 50 ms: 8 hops = 0.4 s = one sample period of the default WindowSpec
N_MELS = 128
N_MFCC = 128
STACK = 8


@dataclass(frozen=True)
class AudioSpec:
    """How a waveform becomes per-sample audio tokens [T, stack * n_coeffs]."""

    kind: str = "mfcc"  # "mfcc" (dual-branch) or "logmel" (DeepSpectrum-style CNN input)
    sample_rate: int = SAMPLE_RATE
    n_fft: int = N_FFT
    hop_length: int = HOP_LENGTH
    n_mels: int = N_MELS
    n_mfcc: int = N_MFCC
    fmin: float = 0.0
    fmax: float | None = None  # None = sample_rate / 2
    stack: int = STACK

    def __post_init__(self) -> None:
        if self.kind not in ("mfcc", "logmel"):
            raise ValueError(f"AudioSpec.kind must be 'mfcc' or 'logmel', got {self.kind!r}.")
        if self.kind == "mfcc" and self.n_mfcc > self.n_mels:
            raise ValueError(
                f"AudioSpec.n_mfcc ({self.n_mfcc}) cannot exceed n_mels ({self.n_mels})."
            )

    @property
    def n_coeffs(self) -> int:
        """Values per frame: n_mfcc for MFCC, n_mels for log-mel."""
        return self.n_mfcc if self.kind == "mfcc" else self.n_mels

    @property
    def token_dim(self) -> int:
        """Length of one stacked token (1024 for the default MFCC spec)."""
        return self.stack * self.n_coeffs

    @property
    def token_s(self) -> float:
        """Seconds of audio one token's frames advance over (stack * hop)."""
        return self.stack * self.hop_length / self.sample_rate

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> AudioSpec:
        return _from_dict(cls, data)


# --------------------------------------------------------------------------------------------
# Window and mel filterbank (computed once per spec and cached, read-only)
# --------------------------------------------------------------------------------------------

AMIN = 1e-10  # power floor before log10, as librosa.power_to_db(amin=1e-10)
_TIME_EPS = 1e-9  # seconds: a frame ending at t (up to float rounding) belongs to t's token
_BLOCK_FRAMES = 2048  # frames per vectorised block: bounds temporary memory on long clips


@lru_cache(maxsize=8)
def hann_window(n_fft: int) -> np.ndarray:
    """Periodic Hann window [n_fft] float64 (``get_window("hann", n_fft, fftbins=True)``)."""
    window = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n_fft, dtype=np.float64) / n_fft)
    window.setflags(write=False)
    return window


def _hz_to_mel(hz: np.ndarray | float) -> np.ndarray:
    """Slaney mel scale: linear below 1 kHz (200/3 Hz per mel), logarithmic above."""
    hz = np.asarray(hz, dtype=np.float64)
    f_sp, min_log_hz = 200.0 / 3.0, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, math.log(6.4) / 27.0
    mel = hz / f_sp
    log_part = hz >= min_log_hz
    return np.where(
        log_part, min_log_mel + np.log(np.maximum(hz, min_log_hz) / min_log_hz) / logstep, mel
    )


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    """Inverse of :func:`_hz_to_mel`."""
    mel = np.asarray(mel, dtype=np.float64)
    f_sp, min_log_hz = 200.0 / 3.0, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, math.log(6.4) / 27.0
    return np.where(
        mel >= min_log_mel, min_log_hz * np.exp(logstep * (mel - min_log_mel)), f_sp * mel
    )


@lru_cache(maxsize=8)
def _mel_basis(sr: int, n_fft: int, n_mels: int, fmin: float, fmax: float) -> np.ndarray:
    fft_freqs = np.fft.rfftfreq(n_fft, d=1.0 / sr)
    mel_f = _mel_to_hz(np.linspace(_hz_to_mel(fmin), _hz_to_mel(fmax), n_mels + 2))
    fdiff = np.diff(mel_f)
    ramps = mel_f[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_f[2:] - mel_f[:-2]))[:, None]  # Slaney: ~constant energy per band
    if not np.all((mel_f[:-2] == 0) | (weights.max(axis=1) > 0)):
        logger.warning(
            "Mel filterbank (sr=%d, n_fft=%d, n_mels=%d) has empty bands; "
            "use fewer mel bands or a larger n_fft.",
            sr,
            n_fft,
            n_mels,
        )
    weights.setflags(write=False)
    return weights


def mel_basis(spec: AudioSpec) -> np.ndarray:
    """Mel filterbank [n_mels, 1 + n_fft // 2] float64, equal to ``librosa.filters.mel``.

    Slaney mel scale and Slaney normalisation (librosa's defaults); cached per spec, read-only.
    """
    fmax = float(spec.sample_rate) / 2 if spec.fmax is None else float(spec.fmax)
    return _mel_basis(spec.sample_rate, spec.n_fft, spec.n_mels, float(spec.fmin), fmax)


# --------------------------------------------------------------------------------------------
# Whole clips
# --------------------------------------------------------------------------------------------


def num_frames(n_samples: int, spec: AudioSpec) -> int:
    """Complete non-centred frames in ``n_samples`` samples: 0 if fewer than n_fft."""
    if n_samples < spec.n_fft:
        return 0
    return 1 + (n_samples - spec.n_fft) // spec.hop_length


def _as_mono_float32(waveform: np.ndarray, what: str) -> np.ndarray:
    waveform = np.asarray(waveform, dtype=np.float32)
    if waveform.ndim != 1:
        raise ValueError(f"{what} expects a mono waveform [S], got shape {waveform.shape}.")
    return waveform


def _frames_from_windows(windows: np.ndarray, spec: AudioSpec) -> np.ndarray:
    """Features [n, n_coeffs] float32 of sample windows [n, n_fft] (a strided view is fine)."""
    import scipy.fft  # here, not at the top: `import eri.models` needs no scipy (benchmarks/gpu.sh)

    basis = mel_basis(spec)
    window = hann_window(spec.n_fft)
    out = np.empty((windows.shape[0], spec.n_coeffs), dtype=np.float32)
    for b0 in range(0, windows.shape[0], _BLOCK_FRAMES):
        block = windows[b0 : b0 + _BLOCK_FRAMES] * window  # float32 * float64 -> float64
        spectrum = scipy.fft.rfft(block, axis=-1)
        power = spectrum.real**2 + spectrum.imag**2  # [n, 1 + n_fft // 2]
        # power_to_db(ref=1.0, amin=1e-10, top_db=None). No top_db: librosa clips at
        # (max over the whole clip) - top_db, which a stream cannot know, so live and offline
        # numbers would differ.
        db = 10.0 * np.log10(np.maximum(AMIN, power @ basis.T))
        if spec.kind == "mfcc":
            db = scipy.fft.dct(db, type=2, norm="ortho", axis=-1)[:, : spec.n_mfcc]
        out[b0 : b0 + block.shape[0]] = db
    return out


def feature_frames(waveform: np.ndarray, spec: AudioSpec) -> np.ndarray:
    """MFCC or log-mel frames of a whole waveform.

    Args:
        waveform: mono samples [S] at ``spec.sample_rate`` (converted to float32).
        spec: the audio spec.

    Returns:
        float32 [n_frames, spec.n_coeffs] with ``n_frames = 0 if S < n_fft else
        1 + (S - n_fft) // hop``; frame ``k`` covers samples ``[k * hop, k * hop + n_fft)``.
    """
    waveform = _as_mono_float32(waveform, "feature_frames")
    n = num_frames(waveform.shape[0], spec)
    if n == 0:
        return np.zeros((0, spec.n_coeffs), dtype=np.float32)
    windows = np.lib.stride_tricks.sliding_window_view(waveform, spec.n_fft)[:: spec.hop_length]
    return _frames_from_windows(windows[:n], spec)


#: A frame whose mean mel power is below this (dB re 1.0, i.e. |x| around 1e-4) is silence:
#: a muted microphone or a silent track gives the model the "audio missing" input.
SILENCE_DB = -80.0


def frame_level_db(frames: np.ndarray, spec: AudioSpec) -> np.ndarray:
    """Mean log-mel power [n] (dB) of feature frames [n, n_coeffs].

    For MFCC frames this is the 0th coefficient over sqrt(n_mels) (orthonormal DCT-II).
    """
    frames = np.asarray(frames, dtype=np.float32)
    if spec.kind == "mfcc":
        return frames[:, 0] / np.sqrt(spec.n_mels)
    return frames.mean(axis=1)


def window_audio_span(
    end_s: float, start_s: float, window: Any, spec: AudioSpec
) -> tuple[float, float]:
    """The (start, end] span whose frames decide whether a window's audio is present.

    A window ending at ``end_s`` (history from ``start_s``) with WindowSpec ``window`` reads
    tokens whose frames end in ``(first sample - token_s, end_s]``; that is the span.
    """
    span = min(window.context_s, max(0.0, end_s - start_s))
    return end_s - span - spec.token_s, end_s


def audio_present_in(
    level_db: np.ndarray, frame_end_s: np.ndarray, span: tuple[float, float]
) -> bool:
    """The silence rule, shared by live inference and training: a window has audio when any
    frame ending in ``span = (start, end]`` is louder than :data:`SILENCE_DB`.

    ``level_db`` [n] from :func:`frame_level_db`, ``frame_end_s`` [n] their end times.
    """
    inside = in_span(frame_end_s, span)
    return bool(inside.any() and np.asarray(level_db)[inside].max() > SILENCE_DB)


def in_span(frame_end_s: np.ndarray, span: tuple[float, float]) -> np.ndarray:
    """bool [n]: which frame end times lie in ``span = (start, end]`` (1e-9 s tolerance)."""
    start, end = span
    ends = np.asarray(frame_end_s, dtype=np.float64)
    return (ends > start - _TIME_EPS) & (ends <= end + _TIME_EPS)


def frame_end_times(n_frames: int, spec: AudioSpec, start_s: float = 0.0) -> np.ndarray:
    """Times [n_frames] float64 (seconds) at which each frame is complete.

    ``start_s + (k * hop + n_fft) / sample_rate``: the time just after its last sample.
    """
    return _end_times(0, n_frames, spec, start_s)


def _end_times(first: int, n_frames: int, spec: AudioSpec, start_s: float) -> np.ndarray:
    """End times of frames ``first .. first + n_frames - 1`` (one formula for clip and stream)."""
    k = np.arange(first, first + n_frames, dtype=np.float64)
    return start_s + (k * spec.hop_length + spec.n_fft) / spec.sample_rate


# --------------------------------------------------------------------------------------------
# Tokens
# --------------------------------------------------------------------------------------------


def _frames_done(frame_end_s: np.ndarray, sample_times: np.ndarray) -> np.ndarray:
    """For each time [T], how many of the frames (increasing end times [n]) end at or before
    it, with a 1e-9 s tolerance for float rounding: int64 [T]."""
    frame_end_s = np.asarray(frame_end_s, dtype=np.float64)
    sample_times = np.asarray(sample_times, dtype=np.float64).reshape(-1)
    return np.searchsorted(frame_end_s, sample_times + _TIME_EPS, side="right").astype(np.int64)


def _token_rows(
    frame_end_s: np.ndarray, sample_times: np.ndarray, stack: int
) -> tuple[np.ndarray, np.ndarray]:
    """Frame rows [T, stack] int64 (-1 = zero padding) and present flags [T] for each time."""
    n_done = _frames_done(frame_end_s, sample_times)
    rows = n_done[:, None] - stack + np.arange(stack, dtype=np.int64)[None, :]
    rows[rows < 0] = -1
    return rows, n_done > 0


def _gather(frames: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """frames[rows] with -1 rows as zeros, flattened time-major to [T, stack * C] float32."""
    if frames.shape[0] == 0:
        return np.zeros((rows.shape[0], rows.shape[1] * frames.shape[1]), dtype=np.float32)
    tokens = frames[np.maximum(rows, 0)].astype(np.float32, copy=True)  # [T, stack, C]
    tokens[rows < 0] = 0.0
    return tokens.reshape(rows.shape[0], -1)


def tokens_at(
    frames: np.ndarray, frame_end_s: np.ndarray, sample_times: np.ndarray, spec: AudioSpec
) -> tuple[np.ndarray, np.ndarray]:
    """Audio tokens for sample times: the last ``spec.stack`` frames finished by each time.

    The token for time ``t`` is ``frames[m - stack : m].reshape(-1)`` (time-major: frame after
    frame), where ``m`` is the number of frames whose end time is ``<= t`` (with a 1e-9 s
    tolerance for float rounding). When ``m < stack`` the missing leading (oldest) frames are
    zeros. A token is *present* when at least one frame contributed (``m >= 1``); an absent
    token is all zeros, which the model reads together with the flag as "audio missing".

    Args:
        frames: [n, C] consecutive frames, oldest first.
        frame_end_s: [n] increasing end times of those frames (seconds).
        sample_times: [T] query times (seconds, any order).
        spec: the audio spec (gives ``stack``).

    Returns:
        tokens float32 [T, stack * C] and present bool [T].
    """
    frames = np.asarray(frames)
    if frames.ndim != 2 or frames.shape[0] != np.shape(frame_end_s)[0]:
        raise ValueError(
            f"tokens_at needs frames [n, C] and frame_end_s [n], got {frames.shape} and "
            f"{np.shape(frame_end_s)}."
        )
    rows, present = _token_rows(frame_end_s, sample_times, spec.stack)
    return _gather(frames, rows), present


def waveform_tokens(
    waveform: np.ndarray, sample_times: np.ndarray, spec: AudioSpec, start_s: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """Whole-clip tokens: :func:`feature_frames` + :func:`frame_end_times` + :func:`tokens_at`.

    Args:
        waveform: mono samples [S] whose first sample is at ``start_s`` seconds.
        sample_times: [T] seconds on the same clock.

    Returns:
        tokens float32 [T, spec.token_dim] and present bool [T].
    """
    frames = feature_frames(waveform, spec)
    ends = frame_end_times(frames.shape[0], spec, start_s)
    return tokens_at(frames, ends, sample_times, spec)


# --------------------------------------------------------------------------------------------
# Streaming
# --------------------------------------------------------------------------------------------


class StreamingFrontEnd:
    """Live audio front end: the frames and tokens of :func:`waveform_tokens`, incrementally.

    Push consecutive samples (at ``spec.sample_rate``, the first one at ``start_s``) in chunks
    of any size. Each frame is computed exactly once, when its last sample arrives; only the
    fewer than ``n_fft`` samples that the next frame still needs are kept. Frames and their
    end times live in a preallocated ring of ``ceil(capacity_s * sr / hop)`` frames; when it is
    full the oldest are overwritten and counted in :attr:`dropped_frames`. A token whose frames
    were already overwritten gets zeros for them (keep ``capacity_s`` above the window's
    ``context_s``).
    """

    def __init__(self, spec: AudioSpec, capacity_s: float = 30.0, start_s: float = 0.0) -> None:
        if not capacity_s > 0:
            raise ValueError(f"StreamingFrontEnd capacity_s must be > 0, got {capacity_s}.")
        self.spec = spec
        self.start_s = float(start_s)
        self.capacity = max(1, math.ceil(capacity_s * spec.sample_rate / spec.hop_length))
        self._frames = np.zeros((self.capacity, spec.n_coeffs), dtype=np.float32)
        self._ends = np.zeros(self.capacity, dtype=np.float64)
        self._tail = np.zeros(0, dtype=np.float32)  # the last samples received, not yet framed
        self._count = 0  # frames held in the ring
        self._next = 0  # ring slot of the next frame
        self.samples_received = 0
        self.frames_computed = 0

    @property
    def time_s(self) -> float:
        """End time (seconds) of the audio received so far."""
        return self.start_s + self.samples_received / self.spec.sample_rate

    @property
    def dropped_frames(self) -> int:
        """Frames computed and then overwritten in the full ring."""
        return self.frames_computed - self._count

    def __len__(self) -> int:
        return self._count

    def push(self, samples: np.ndarray) -> int:
        """Append mono samples [n] (float32); compute the newly completed frames.

        Returns the number of new frames.
        """
        samples = _as_mono_float32(samples, "StreamingFrontEnd.push")
        spec = self.spec
        data = np.concatenate([self._tail, samples]) if self._tail.size else samples
        data_start = self.samples_received - self._tail.size  # absolute index of data[0]
        self.samples_received += samples.shape[0]
        first = self.frames_computed * spec.hop_length - data_start  # next frame's first sample
        new = np.zeros((0, spec.n_coeffs), dtype=np.float32)
        if first < data.shape[0]:
            new = feature_frames(data[first:], spec)
        n_new = new.shape[0]
        if n_new:
            self._store(new, _end_times(self.frames_computed, n_new, spec, self.start_s))
            self.frames_computed += n_new
        keep_from = self.frames_computed * spec.hop_length - data_start
        self._tail = data[max(0, keep_from) :].copy()
        return n_new

    def _store(self, frames: np.ndarray, ends: np.ndarray) -> None:
        if frames.shape[0] > self.capacity:
            frames, ends = frames[-self.capacity :], ends[-self.capacity :]
        n = frames.shape[0]
        slots = (self._next + np.arange(n)) % self.capacity
        self._frames[slots] = frames
        self._ends[slots] = ends
        self._next = (self._next + n) % self.capacity
        self._count = min(self.capacity, self._count + n)

    def _order(self) -> np.ndarray:
        """Ring slots [count] of the held frames, oldest first."""
        oldest = (self._next - self._count) % self.capacity
        return (oldest + np.arange(self._count)) % self.capacity

    def frames(self) -> tuple[np.ndarray, np.ndarray]:
        """Copies of the held frames [n, C] float32 and their end times [n], oldest first."""
        order = self._order()
        return self._frames[order], self._ends[order]

    def audio_present(self, span: tuple[float, float]) -> bool:
        """:func:`audio_present_in` over the held frames; only the frames in ``span`` get their
        level computed (this runs at every output step)."""
        slots = self._order()
        slots = slots[in_span(self._ends[slots], span)]
        return audio_present_in(
            frame_level_db(self._frames[slots], self.spec), self._ends[slots], span
        )

    def tokens(self, sample_times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Tokens [T, spec.token_dim] float32 and present [T] bool, as :func:`tokens_at`: the
        tokens of :meth:`token_keys`, present where a held frame was finished by the time."""
        keys = self.token_keys(sample_times)
        return self.tokens_for_keys(keys), keys > self.dropped_frames

    def token_keys(self, sample_times: np.ndarray) -> np.ndarray:
        """The key [T] int64 of each sample time's token: ``n_done``, the absolute count of
        frames finished by that time since this front end started. A token is a pure function
        of its key (:meth:`tokens_for_keys`; ``tokens(t) == tokens_for_keys(token_keys(t))``
        exactly), so a consumer may compute anything per token once per key."""
        return _frames_done(self._ends[self._order()], sample_times) + self.dropped_frames

    def tokens_for_keys(self, keys: np.ndarray) -> np.ndarray:
        """Tokens [N, spec.token_dim] float32 of the keys [N] (:meth:`token_keys`): frames
        ``key - stack .. key - 1``, zeros for frames before the first (``key < stack``) or
        already overwritten in the ring."""
        keys = np.asarray(keys, dtype=np.int64).reshape(-1)
        frames = keys[:, None] - self.spec.stack + np.arange(self.spec.stack, dtype=np.int64)
        held = frames - self.dropped_frames  # index among the held frames, oldest first
        ok = (held >= 0) & (held < self._count)
        oldest = (self._next - self._count) % self.capacity
        slots = np.where(ok, (oldest + np.maximum(held, 0)) % self.capacity, -1)
        return _gather(self._frames, slots)


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------


class Resampler:
    """Streaming resampler to mono float32 at ``rate``: FFmpeg's swresample through PyAV.

    The one resampler of ERI Live. Decoded PyAV audio frames (any layout, format and rate; files)
    go through :meth:`frame`; blocks of mono samples at ``source_rate`` (the microphone) through
    the call. Outputs are consecutive; :meth:`flush` returns the filter's tail at the end.
    """

    def __init__(self, rate: int = SAMPLE_RATE, source_rate: int | None = None) -> None:
        import av  # here, not at the top: only file and microphone input need FFmpeg

        self.rate = int(rate)
        self.source_rate = source_rate
        self._av = av
        self._resampler = av.AudioResampler(format="flt", layout="mono", rate=self.rate)

    def __call__(self, samples: np.ndarray) -> np.ndarray:
        """Consecutive mono samples [n] at ``source_rate`` -> [m] float32 at ``rate``."""
        if self.source_rate is None:
            raise ValueError("Resampler(source_rate=...) is needed to resample raw samples.")
        frame = self._av.AudioFrame.from_ndarray(
            np.ascontiguousarray(samples, dtype=np.float32).reshape(1, -1),
            format="flt",
            layout="mono",
        )
        frame.sample_rate = int(self.source_rate)
        return self.frame(frame)

    def frame(self, frame: Any) -> np.ndarray:
        """One decoded PyAV audio frame -> [m] float32 mono at ``rate``."""
        return self._join(self._resampler.resample(frame))

    def flush(self) -> np.ndarray:
        """The samples the filter still holds, once the input has ended."""
        return self._join(self._resampler.resample(None))

    @staticmethod
    def _join(frames: list) -> np.ndarray:
        if not frames:
            return np.zeros(0, np.float32)
        return np.concatenate([f.to_ndarray().reshape(-1) for f in frames]).astype(
            np.float32, copy=False
        )


class AudioDecodeError(EriError, ValueError):
    """An audio or video file could not give audio samples; the message says which and why."""


def load_audio(path: str | Path, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Decode the first audio stream of any audio or video file to mono float32 [S].

    Resampled with :class:`Resampler` to ``sample_rate``. Raises
    :class:`AudioDecodeError` when the file is missing, has no audio stream or cannot be decoded.
    """
    import av  # here, not at the top: only file input needs FFmpeg

    path = Path(path)
    if not path.is_file():
        raise AudioDecodeError(f"Audio file {path} does not exist; check the path.")
    chunks: list[np.ndarray] = []
    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise AudioDecodeError(
                    f"{path} has no audio stream; use a file with an audio track or run "
                    "without audio."
                )
            resampler = Resampler(sample_rate)
            for frame in container.decode(container.streams.audio[0]):
                chunks.append(resampler.frame(frame))
            chunks.append(resampler.flush())
    except av.FFmpegError as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise AudioDecodeError(
            f"Cannot decode audio from {path} ({reason}): the file is corrupt, truncated or not "
            "a media file; re-export or re-record it."
        ) from exc
    if not sum(len(c) for c in chunks):
        raise AudioDecodeError(
            f"{path} contains no decodable audio samples; re-export or re-record it."
        )
    return np.concatenate(chunks).astype(np.float32, copy=False)
