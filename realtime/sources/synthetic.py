"""A deterministic drawn face and a tone, for tests and benchmarks: :class:`SyntheticSource`."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np

from eri.realtime.sources.events import AUDIO_RATE, AudioChunk, Event, Source, VideoFrame, _paced


class SyntheticSource(Source):
    """A deterministic drawn face (moving, blinking, mouth opening) and a tone with noise.

    ``num_frames=None`` runs until :meth:`stop`. Frames are at ``i / fps``; audio comes in
    50 ms chunks (800 samples at :data:`AUDIO_RATE`) covering the same span.
    """

    CHUNK = 800

    def __init__(
        self,
        num_frames: int | None = 300,
        fps: float = 30.0,
        width: int = 640,
        height: int = 360,
        audio: bool = True,
        realtime: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if num_frames is not None and num_frames < 0:
            raise ValueError(f"SyntheticSource num_frames must be >= 0, got {num_frames}.")
        self.num_frames = num_frames
        self.frame_count = num_frames
        self.fps = float(fps)
        self.width, self.height = int(width), int(height)
        self.realtime = realtime
        self.seed = seed
        self.name = "synthetic"
        self.has_video = True
        self.has_audio = audio
        self.audio_note = None if audio else "audio was turned off for this source"
        self.duration_s = None if num_frames is None else num_frames / self.fps
        rng = np.random.default_rng(seed)
        noise = rng.integers(0, 24, size=(self.height, self.width, 1), dtype=np.uint8)
        ramp = np.linspace(40, 110, self.width, dtype=np.float32)[None, :, None]
        base = np.broadcast_to(ramp, (self.height, self.width, 3)) * np.array([0.8, 0.9, 1.0])
        self._background = np.ascontiguousarray(base.astype(np.uint8) + noise)

    def render(self, i: int) -> np.ndarray:
        """Frame ``i`` [H, W, 3] uint8 RGB."""
        import cv2

        t = i / self.fps
        h, w = self.height, self.width
        img = self._background.copy()
        s = min(h, w)
        cx = int(w / 2 + 0.06 * w * math.sin(2 * math.pi * 0.2 * t))
        cy = int(h / 2 + 0.03 * h * math.sin(2 * math.pi * 0.13 * t + 1.0))
        fa, fb = int(0.24 * s), int(0.32 * s)
        cv2.ellipse(img, (cx, cy), (fa, fb), 0, 0, 360, (224, 172, 140), -1, cv2.LINE_AA)
        blink = (i % int(max(1, 3 * self.fps))) < 3
        for side in (-1, 1):
            ex, ey = cx + side * int(0.42 * fa), cy - int(0.22 * fb)
            eh = 1 if blink else max(2, int(0.07 * s))
            cv2.ellipse(img, (ex, ey), (int(0.1 * s), eh), 0, 0, 360, (250, 250, 250), -1)
            if not blink:
                cv2.circle(img, (ex, ey), max(2, int(0.04 * s)), (40, 30, 20), -1, cv2.LINE_AA)
            by = ey - int(0.13 * s)
            cv2.line(img, (ex - int(0.1 * s), by), (ex + int(0.1 * s), by), (90, 60, 40), 3)
        nose = (cx, cy + int(0.08 * fb))
        cv2.line(img, (cx, cy - int(0.05 * fb)), nose, (180, 120, 100), 2, cv2.LINE_AA)
        mouth_open = 0.5 + 0.5 * math.sin(2 * math.pi * 0.5 * t)
        my = cy + int(0.45 * fb)
        axes = (int(0.3 * fa), max(2, int(0.12 * s * mouth_open)))
        cv2.ellipse(img, (cx, my), axes, 0, 0, 360, (150, 40, 50), -1, cv2.LINE_AA)
        return img

    def audio_chunk(self, k: int) -> AudioChunk:
        """Audio chunk ``k`` (800 samples from ``k * 0.05`` s): a pulsing 220 Hz tone + noise."""
        n0 = k * self.CHUNK
        n = self.CHUNK
        if self.num_frames is not None:
            total = int(round(self.num_frames / self.fps * AUDIO_RATE))
            n = max(0, min(n, total - n0))
        t = (n0 + np.arange(n)) / AUDIO_RATE
        envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 0.5 * t)
        rng = np.random.default_rng((self.seed, k))
        samples = 0.2 * envelope * np.sin(2 * np.pi * 220.0 * t) + 0.01 * rng.standard_normal(n)
        return AudioChunk(n0 / AUDIO_RATE, samples.astype(np.float32))

    def _generate(self) -> Iterator[Event]:
        total = int(round(self.num_frames / self.fps * AUDIO_RATE)) if self.num_frames else 0
        chunks = math.ceil(total / self.CHUNK) if self.num_frames is not None else None
        i = k = 0
        while not self.stopped:
            frame_t = i / self.fps if self.num_frames is None or i < self.num_frames else math.inf
            chunk_t = k * self.CHUNK / AUDIO_RATE
            if not self.has_audio or (chunks is not None and k >= chunks):
                chunk_t = math.inf
            if frame_t == math.inf and chunk_t == math.inf:
                return
            if frame_t <= chunk_t:
                self._count_frame()
                yield VideoFrame(index=i, time_s=frame_t, image=self.render(i))
                i += 1
            else:
                chunk = self.audio_chunk(k)
                self._count_chunk(chunk)
                yield chunk
                k += 1

    def _events(self) -> Iterator[Event]:
        events = self._generate()
        if self.realtime:
            events = _paced(events, self._stop_event, self._counters)
        return events
