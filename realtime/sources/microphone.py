"""The microphone: :class:`MicrophoneSource` (a sounddevice / PortAudio input stream),
:func:`list_microphones` and :func:`microphone_status`."""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from eri.errors import MissingDependencyError, missing_dependency
from eri.models.audio import Resampler
from eri.realtime.buffers import BoundedQueue
from eri.realtime.sources.events import AUDIO_RATE, AudioChunk, Clock, Source, SourceError

log = logging.getLogger(__name__)


class MicrophoneUnavailable(SourceError):
    """The microphone cannot be used: no such device, or it cannot be opened (busy)."""


#: The errors that mean "no microphone here": the device (:class:`MicrophoneUnavailable`) or the
#: PortAudio library / sounddevice package (:class:`~eri.errors.MissingDependencyError`).
NO_MICROPHONE = (MicrophoneUnavailable, MissingDependencyError)


def _import_sounddevice():
    """Import sounddevice; a missing PortAudio library or package raises ``missing_dependency``."""
    try:
        import sounddevice
    except OSError as exc:  # raised by sounddevice when libportaudio cannot be loaded
        raise missing_dependency("portaudio", exc) from exc
    except ImportError as exc:
        raise missing_dependency("sounddevice", exc) from exc
    return sounddevice


def microphone_status() -> tuple[bool, str]:
    """(usable, one line for `eri info`): the default input device, or why there is none."""
    try:
        sd = _import_sounddevice()
    except MissingDependencyError as exc:
        return False, str(exc)
    try:
        info = sd.query_devices(kind="input")
        version = sd.get_portaudio_version()[1]
        return True, (
            f"default input: {info['name']} ({info['default_samplerate']:.0f} Hz, {version})"
        )
    except Exception as exc:
        return False, f"no microphone found ({exc}); connect one or pass --mic none"


def list_microphones() -> list[dict[str, Any]]:
    """Input devices: [{index, name, channels, default_samplerate, hostapi}]. Never raises."""
    try:
        sd = _import_sounddevice()
        devices = sd.query_devices()
        hostapis = sd.query_hostapis()
    except Exception as exc:
        log.debug("no microphones: %s", exc)
        return []
    found = []
    for index, dev in enumerate(devices):
        if dev.get("max_input_channels", 0) > 0:
            hostapi = dev.get("hostapi")
            found.append(
                {
                    "index": index,
                    "name": dev.get("name"),
                    "channels": dev.get("max_input_channels"),
                    "default_samplerate": dev.get("default_samplerate"),
                    "hostapi": hostapis[hostapi]["name"] if hostapi is not None else None,
                }
            )
    return found


class MicrophoneSource(Source):
    """A microphone through sounddevice (PortAudio), delivering :class:`AudioChunk` events.

    The PortAudio callback only copies the first channel of each block into a
    :class:`BoundedQueue` (``queue_s`` seconds; the oldest block is dropped and counted when the
    consumer falls that far behind) together with the block's capture time on the shared
    :class:`Clock`: PortAudio's ADC time when the host API reports it, else the callback time
    minus the block duration. The consumer side keeps chunk times on a sample count and
    re-synchronises (``audio_resyncs``) when the measured time drifts by more than 0.1 s (after
    drops or device hiccups). If the device cannot record at ``sample_rate`` it records at its
    own default rate; chunks are always resampled to :data:`AUDIO_RATE`.

    Raises :func:`eri.errors.missing_dependency` (``"portaudio"``) when PortAudio is missing and
    :class:`MicrophoneUnavailable` when the device does not exist or cannot be opened.
    ``stream_factory`` replaces ``sounddevice.InputStream`` (tests).
    """

    live = True

    def __init__(
        self,
        device: int | str | None = None,
        sample_rate: int = AUDIO_RATE,
        blocksize: int = 800,
        *,
        queue_s: float = 10.0,
        clock: Clock | None = None,
        stream_factory: Callable[..., Any] | None = None,
        resync_s: float = 0.1,
    ) -> None:
        super().__init__()
        self.device = device
        self.name = f"microphone {device if device is not None else '(default)'}"
        self.clock = clock or Clock()
        self.blocksize = int(blocksize)
        self.resync_s = resync_s
        self.has_video = False
        self.fps = None
        self.has_audio = True
        self.audio_note = None
        self.sample_rate = int(sample_rate)
        self._stream_factory = stream_factory
        if stream_factory is None:
            sd = _import_sounddevice()
            self._stream_factory = sd.InputStream
            self.sample_rate = self._check_device(sd, device, self.sample_rate)
        maxlen = max(2, math.ceil(queue_s * self.sample_rate / max(1, self.blocksize)))
        self._queue: BoundedQueue[tuple[float, np.ndarray]] = BoundedQueue(maxlen)
        self._resample = (
            Resampler(AUDIO_RATE, self.sample_rate) if self.sample_rate != AUDIO_RATE else None
        )
        self._stream = None
        self._finished = False
        self._next_time: float | None = None
        self._counters.update({"input_overflows": 0, "audio_resyncs": 0})

    def _check_device(self, sd, device, rate: int) -> int:
        """The rate to record at on ``device``; raises MicrophoneUnavailable if it is unusable."""
        label = "the default microphone" if device is None else f"Microphone {device!r}"
        try:
            info = sd.query_devices(device, kind="input")
        except Exception as exc:
            raise MicrophoneUnavailable(
                f"{label} was not found ({exc}): run `eri info` to list microphones, or pass "
                "--mic none."
            ) from exc
        try:
            sd.check_input_settings(device=device, channels=1, dtype="float32", samplerate=rate)
            return rate
        except Exception:
            native = int(info["default_samplerate"])
            log.info("%s cannot record at %d Hz; recording at %d Hz", label, rate, native)
            return native

    def start(self) -> None:
        if self._finished:
            raise SourceError(f"{self.name} was stopped and cannot be restarted: open a new one.")
        if self._stream is not None:
            return
        super().start()
        self.clock.ensure_started()
        self._t0 = self.clock.t0
        self._period = self.blocksize / self.sample_rate
        try:
            stream = self._stream_factory(
                samplerate=self.sample_rate,
                blocksize=self.blocksize,
                device=self.device,
                channels=1,
                dtype="float32",
                callback=self._callback,
            )
            stream.start()
        except Exception as exc:
            self._finished = True
            raise MicrophoneUnavailable(
                f"{self.name} could not be opened ({exc}): close other programs using it, run "
                "`eri info` to list microphones, or pass --mic none."
            ) from exc
        self._stream = stream

    def _callback(self, indata, frames, time_info, status) -> None:
        """PortAudio thread: copy channel 0 with its capture time; nothing else."""
        now = time.monotonic()
        lag = frames / self.sample_rate
        try:
            adc, current = time_info.inputBufferAdcTime, time_info.currentTime
            if adc > 0 and 0.0 <= current - adc < 1.0:
                lag = current - adc
        except AttributeError:
            pass
        if status:
            self._counters["input_overflows"] += 1
        self._queue.put((now - lag - self._t0, indata[:, 0].copy()))

    def _to_chunk(self, measured: float, samples: np.ndarray) -> AudioChunk | None:
        if self._resample is not None:
            samples = self._resample(samples)
            if not len(samples):
                return None
        predicted = self._next_time
        if predicted is None:
            t = measured
        elif abs(measured - predicted) > self.resync_s:
            t = measured
            self._counters["audio_resyncs"] += 1
        else:
            t = predicted
        chunk = AudioChunk(t, np.ascontiguousarray(samples, dtype=np.float32))
        self._next_time = chunk.end_s
        self._count_chunk(chunk)
        return chunk

    def poll(self, timeout: float = 0.0) -> list[AudioChunk]:
        """Every queued chunk (waiting up to ``timeout`` s for the first), oldest first."""
        if timeout > 0 and not len(self._queue):
            self._queue.wait(timeout)
        chunks = [self._to_chunk(t, s) for t, s in self._queue.drain()]
        self._counters["audio_chunks_dropped"] = self._queue.dropped
        return [c for c in chunks if c is not None]

    def _events(self) -> Iterator[AudioChunk]:
        while not self.stopped:
            yield from self.poll(0.1)
        yield from self.poll(0)  # what was queued before stop()

    def stop(self) -> None:
        super().stop()
        self._finished = True
        stream, self._stream = self._stream, None
        if stream is not None:
            with contextlib.suppress(Exception):
                stream.stop()
            with contextlib.suppress(Exception):
                stream.close()
        self._queue.close()

    def stats(self) -> dict[str, float]:
        counters = super().stats()
        counters["audio_chunks_dropped"] = self._queue.dropped
        return counters
