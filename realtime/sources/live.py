"""A camera and a microphone on one clock: :class:`LiveSource`."""

from __future__ import annotations

import logging
from collections.abc import Iterator

from eri.realtime.sources.camera import CameraSource
from eri.realtime.sources.events import Clock, Event, Source
from eri.realtime.sources.microphone import NO_MICROPHONE, MicrophoneSource

log = logging.getLogger(__name__)


class LiveSource(Source):
    """A camera and (optionally) a microphone on one clock.

    Each step takes the newest camera frame and every queued audio chunk and yields them sorted
    by time. Each stream is in time order on its own; across steps a microphone block can carry
    a time slightly before a frame already yielded (PortAudio delivers blocks a block length
    late), which consumers handle by placing events by ``time_s`` per stream. Without a
    microphone, or if it fails to start, the source is visual-only and ``audio_note`` says why.
    """

    live = True

    def __init__(
        self,
        camera: CameraSource,
        mic: MicrophoneSource | None = None,
        *,
        audio_note: str | None = None,
    ) -> None:
        super().__init__()
        self.camera = camera
        self.mic = mic
        self.clock = Clock()
        camera.clock = self.clock
        if mic is not None:
            mic.clock = self.clock
        self.name = camera.name + (f" + {mic.name}" if mic is not None else "")
        self.fps, self.width, self.height = camera.fps, camera.width, camera.height
        self.has_video = True
        self.has_audio = mic is not None
        self.audio_note = None if mic is not None else (audio_note or "no microphone was given")

    def start(self) -> None:
        if self._started:
            return
        super().start()
        self.clock.reset()
        self.camera.start()
        if self.mic is not None:
            try:
                self.mic.start()
            except NO_MICROPHONE as exc:
                log.warning("continuing without audio: %s", exc)
                self.mic = None
                self.has_audio = False
                self.audio_note = str(exc)

    def _events(self) -> Iterator[Event]:
        while not self.stopped:
            frame = self.camera.poll(0.02 if self.mic is not None else 0.1)
            batch: list[Event] = list(self.mic.poll(0)) if self.mic is not None else []
            if frame is not None:
                batch.append(frame)
            batch.sort(key=lambda e: e.time_s)
            yield from batch
            if frame is None and self.camera.ended():
                break
        if self.mic is not None:
            yield from self.mic.poll(0)

    def stop(self) -> None:
        super().stop()
        self.camera.stop()
        if self.mic is not None:
            self.mic.stop()

    def stats(self) -> dict[str, float]:
        counters = self.camera.stats()
        if self.mic is not None:
            for key, value in self.mic.stats().items():
                if key.startswith("audio") or key == "input_overflows":
                    counters[key] = value
        return counters
