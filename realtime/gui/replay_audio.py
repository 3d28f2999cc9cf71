"""Sound for the replay of a recorded session: the replay clock (:class:`ReplayClock`) and the
session's ``audio.wav`` played through a sounddevice output stream in step with it
(:class:`ReplayAudio`, opened by :func:`open_replay_audio`).

The clock is the master: the GUI draws the video and curves at its position, and the audio
callback (PortAudio's thread) asks it, for every block, which sample should reach the
loudspeaker when that block does (the clock's position plus the block's output latency). Within
:data:`SYNC_TOLERANCE_S` of that sample the audio plays on contiguously (no clicks); further
away (a seek, a pause, drift) it jumps there. Paused, or past the end, the callback writes
silence.
"""

from __future__ import annotations

import logging
import time
import wave
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from eri.realtime.sources import SourceError

log = logging.getLogger(__name__)

#: Audio further than this from where the clock says it should be jumps to the clock (an
#: offset below about 45 ms is not heard as out of sync with the picture).
SYNC_TOLERANCE_S = 0.03
#: Output latency assumed when the host reports none for a block.
FALLBACK_LATENCY_S = 0.05


class ReplayClock:
    """The replay position in session seconds, in [0, ``duration_s``], advancing in real time
    while playing. Read from any thread (its state is one tuple, replaced whole);
    ``now``: the time source in seconds (tests give a fake one)."""

    def __init__(self, duration_s: float, now: Callable[[], float] = time.perf_counter) -> None:
        self.duration_s = max(0.0, float(duration_s))
        self._now = now
        self._state = (0.0, now(), False)  # (position at t0, t0, playing)

    @property
    def playing(self) -> bool:
        return self._state[2]

    def position(self) -> float:
        pos, t0, playing = self._state
        if playing:
            pos += self._now() - t0
        return min(max(0.0, pos), self.duration_s)

    @property
    def at_end(self) -> bool:
        return self.position() >= self.duration_s

    def seek(self, t: float) -> None:
        self._state = (min(max(0.0, float(t)), self.duration_s), self._now(), self.playing)

    def set_playing(self, playing: bool) -> None:
        self._state = (self.position(), self._now(), bool(playing))


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """A 16-bit PCM WAV as (samples [n] int16, mono (channels averaged), rate in Hz)."""
    with wave.open(str(path), "rb") as w:
        rate, channels, width = w.getframerate(), w.getnchannels(), w.getsampwidth()
        raw = w.readframes(w.getnframes())
    if width != 2:
        raise SourceError(f"{path} is not 16-bit PCM; the replay cannot read its audio.")
    pcm = np.frombuffer(raw, "<i2")
    if channels > 1:
        pcm = pcm[: len(pcm) // channels * channels].reshape(-1, channels)
        pcm = pcm.mean(axis=1).astype(np.int16)
    return pcm, rate


def output_stream(**kwargs: Any):
    """A started-later ``sounddevice.OutputStream(**kwargs)`` (the one place sounddevice is
    opened for output; tests put a recording stub here)."""
    import sounddevice

    return sounddevice.OutputStream(**kwargs)


def output_status() -> tuple[bool, str]:
    """(usable, why not): PortAudio and a default output device, or the reason in words."""
    try:
        import sounddevice
    except OSError:  # sounddevice raises this when libportaudio cannot be loaded
        return False, "PortAudio is not installed (sudo apt-get install libportaudio2)"
    except ImportError:
        return False, "sounddevice is not installed (pip install sounddevice)"
    try:
        sounddevice.query_devices(kind="output")
    except Exception:
        return False, "no audio output device was found"
    return True, ""


class ReplayAudio:
    """Plays ``pcm`` [n] int16 (mono, ``rate`` Hz, sample 0 at session time 0) in step with
    ``clock`` through ``stream_factory(**OutputStream kwargs)`` (default :func:`output_stream`);
    :meth:`close` stops it."""

    def __init__(
        self,
        pcm: np.ndarray,
        rate: int,
        clock: ReplayClock,
        stream_factory: Callable[..., Any] | None = None,
    ) -> None:
        self.pcm = np.ascontiguousarray(pcm, np.int16)
        self.rate = int(rate)
        self.clock = clock
        self.resyncs = 0  # jumps to the clock (seeks, pauses, drift)
        self._pos: int | None = None  # next sample to play; None: follow the clock
        self._tolerance = int(SYNC_TOLERANCE_S * self.rate)
        self.stream = (stream_factory or output_stream)(
            samplerate=self.rate,
            channels=1,
            dtype="float32",
            latency="low",
            callback=self._callback,
        )
        self.stream.start()

    def _callback(self, outdata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        """PortAudio's thread: fill ``outdata`` [frames, 1] with what the clock says is heard
        when this block reaches the loudspeaker."""
        clock = self.clock
        if not clock.playing or clock.at_end:
            outdata.fill(0.0)
            self._pos = None
            return
        ahead = time_info.outputBufferDacTime - time_info.currentTime
        if not 0.0 < ahead < 1.0:  # some hosts report no times
            ahead = getattr(self.stream, "latency", None) or FALLBACK_LATENCY_S
        target = int(round((clock.position() + ahead) * self.rate))
        if self._pos is None or abs(self._pos - target) > self._tolerance:
            if self._pos is not None:
                self.resyncs += 1
            self._pos = target
        start = min(max(self._pos, 0), len(self.pcm))
        block = self.pcm[start : start + frames]
        outdata[: len(block), 0] = block * (1.0 / 32768.0)
        outdata[len(block) :] = 0.0
        self._pos += frames

    def close(self) -> None:
        try:
            self.stream.stop()
        finally:
            self.stream.close()


def open_replay_audio(
    pcm: np.ndarray, rate: int, clock: ReplayClock
) -> tuple[ReplayAudio | None, str | None]:
    """(player, None) playing ``pcm`` [n] int16 at ``rate`` Hz with ``clock``, or (None, why
    the replay is silent) when there is no PortAudio, no output device or it cannot be opened.
    A device that refuses ``rate`` gets the audio resampled to its default rate."""
    ok, why = output_status()
    if not ok:
        return None, why
    try:
        return ReplayAudio(pcm, rate, clock), None
    except Exception as exc:  # the device refused the rate, or is busy
        log.debug("audio output at %d Hz failed: %s", rate, exc)
    try:
        import sounddevice

        device_rate = int(sounddevice.query_devices(kind="output")["default_samplerate"])
        n = int(round(len(pcm) * device_rate / rate))
        resampled = np.interp(np.arange(n) * (rate / device_rate), np.arange(len(pcm)), pcm)
        return ReplayAudio(resampled.astype(np.int16), device_rate, clock), None
    except Exception as exc:
        return None, f"the audio output could not be opened ({exc})"
