"""Audio front end: the constants and the MFCC / log-mel computation shared by training and live.

Like whisper's ``audio.py``, every audio fact lives here. Frames are computed without centring
(``center=False``): frame ``k`` covers samples ``[k * hop, k * hop + n_fft)`` and is complete
once its last sample has arrived, so a stream computes each frame exactly once and gets the
same numbers as the whole clip. Tokens stack ``stack`` consecutive frames; the token for a
sample time ``t`` is made of the last ``stack`` frames that end at or before ``t``. With
``stack * hop / sample_rate == WindowSpec.period_s`` the tokens of a full window tile its audio.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from models.spec import _from_dict

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
            raise ValueError(f"AudioSpec.n_mfcc ({self.n_mfcc}) cannot exceed n_mels ({self.n_mels}).")

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
