"""The camera: :class:`CameraSource` (an OpenCV capture read by its own thread) and
:func:`list_cameras`."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from eri.realtime.buffers import LatestSlot
from eri.realtime.sources.events import Clock, Source, SourceError, VideoFrame

log = logging.getLogger(__name__)


@contextlib.contextmanager
def _quiet_opencv() -> Iterator[None]:
    """Silence OpenCV's log (warnings and errors) while probing cameras that may not exist.

    Opening a missing camera makes OpenCV's V4L2 and Orbbec backends log "can't open camera by
    index" / "Camera index out of range" straight to stderr. ``cv2.setLogLevel`` is the API in
    current wheels; older ones only have ``cv2.utils.logging``.
    """
    import cv2

    try:
        api = cv2 if hasattr(cv2, "setLogLevel") else cv2.utils.logging
        level = api.getLogLevel()
        api.setLogLevel(0)  # LOG_LEVEL_SILENT
    except Exception:  # pragma: no cover - no logging API in this build
        yield
        return
    try:
        yield
    finally:
        api.setLogLevel(level)


def _default_capture(index: int):
    import cv2

    with _quiet_opencv():
        return cv2.VideoCapture(index)


def _to_rgb(image: np.ndarray) -> np.ndarray:
    """A camera image (BGR, BGRA or gray) as [H, W, 3] uint8 RGB, C-contiguous."""
    import cv2

    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


class CameraSource(Source):
    """An OpenCV camera, read by its own thread so the newest frame always wins.

    The reader thread stamps each frame with the shared :class:`Clock` as ``read()`` returns,
    converts BGR to RGB and puts it into a :class:`LatestSlot`; frames the consumer did not take
    in time are replaced and counted in ``frames_dropped``. Frame ``index`` counts every
    captured frame, so skipped frames show as gaps. ``capture_factory(index)`` makes the
    ``cv2.VideoCapture``-like object (tests inject a fake one). A camera runs once: after
    :meth:`stop` create a new one.
    """

    live = True

    def __init__(
        self,
        index: int = 0,
        width: int = 640,
        height: int = 480,
        fps: float = 30.0,
        *,
        capture_factory: Callable[[int], Any] | None = None,
        clock: Clock | None = None,
        stall_timeout_s: float = 3.0,
    ) -> None:
        super().__init__()
        self.index = int(index)
        self.name = f"camera {self.index}"
        self.clock = clock or Clock()
        self.stall_timeout_s = stall_timeout_s
        factory = capture_factory or _default_capture
        try:
            cap = factory(self.index)
        except Exception as exc:
            raise SourceError(
                f"Camera {self.index} could not be opened ({exc}): run `eri info` to list "
                "cameras, or pass --source PATH to read a video file."
            ) from exc
        if cap is None or not cap.isOpened():
            if cap is not None:
                cap.release()
            raise SourceError(
                f"Camera {self.index} could not be opened: it does not exist or another program "
                "is using it; run `eri info` to list cameras, or pass --source PATH to read a "
                "video file."
            )
        self._cap = cap
        import cv2

        cap.set(cv2.CAP_PROP_FRAME_WIDTH, float(width))
        cap.set(cv2.CAP_PROP_FRAME_HEIGHT, float(height))
        cap.set(cv2.CAP_PROP_FPS, float(fps))
        self.width = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)) or width
        self.height = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)) or height
        self.fps = float(cap.get(cv2.CAP_PROP_FPS)) or float(fps)
        self.has_audio = False
        self.audio_note = "a camera has no audio; add a microphone"
        self._slot: LatestSlot[VideoFrame] = LatestSlot()
        self._thread: threading.Thread | None = None
        self._error: SourceError | None = None
        self._finished = False
        self._counters["read_failures"] = 0

    def start(self) -> None:
        if self._finished:
            raise SourceError(
                f"Camera {self.index} was stopped and cannot be restarted: open a new source."
            )
        if self._thread is not None:
            return
        super().start()
        self.clock.ensure_started()
        self._thread = threading.Thread(
            target=self._read_loop, name=f"camera-{self.index}", daemon=True
        )
        self._thread.start()

    def _read_loop(self) -> None:
        cap, counters = self._cap, self._counters
        captured = 0
        last_ok = time.monotonic()
        try:
            while not self._stop_event.is_set():
                ok, image = cap.read()
                t = self.clock.now()
                if not ok or image is None:
                    counters["read_failures"] += 1
                    if time.monotonic() - last_ok > self.stall_timeout_s:
                        self._error = SourceError(
                            f"Camera {self.index} stopped delivering frames after {captured} "
                            "frames: check its cable and that no other program took it; the "
                            "frames before were kept."
                        )
                        return
                    self._stop_event.wait(0.005)
                    continue
                last_ok = time.monotonic()
                frame = VideoFrame(index=captured, time_s=t, image=_to_rgb(image))
                captured += 1
                counters["frames_read"] = captured
                self._slot.put(frame)
                counters["frames_dropped"] = self._slot.replaced
        except Exception as exc:  # a driver error must not vanish with the thread
            log.exception("camera %d reader failed", self.index)
            self._error = SourceError(
                f"Camera {self.index} failed while reading ({exc}): reconnect it and start "
                "again; the frames before were kept."
            )
        finally:
            self._slot.close()

    def poll(self, timeout: float | None) -> VideoFrame | None:
        """The newest frame not yet taken, waiting up to ``timeout`` s; None if none came."""
        return self._slot.get(timeout)

    def ended(self) -> bool:
        """True once the reader has ended and every frame was taken; raises its error if any."""
        if self._slot.closed and len(self._slot) == 0:
            if self._error is not None:
                raise self._error
            return True
        return False

    def _events(self) -> Iterator[VideoFrame]:
        while True:
            frame = self.poll(0.1)
            if frame is not None:
                yield frame
            elif self.ended() or self.stopped:
                return

    def stop(self) -> None:
        super().stop()
        self._finished = True
        thread = self._thread
        if thread is not None:
            thread.join(timeout=2.0)
            if thread.is_alive():
                log.warning("camera %d reader did not stop within 2 s", self.index)
                return  # releasing a capture inside read() can crash the driver
        if self._cap is not None:
            self._cap.release()
            self._cap = None
        self._slot.close()

    def stats(self) -> dict[str, float]:
        counters = super().stats()
        counters["frames_dropped"] = self._slot.replaced
        return counters


def list_cameras(
    max_index: int = 5, capture_factory: Callable[[int], Any] | None = None
) -> list[dict[str, Any]]:
    """Cameras at indices 0..max_index that open: [{index, width, height, fps}]. Never raises."""
    found = []
    factory = capture_factory or _default_capture
    for index in range(max_index + 1):
        cap = None
        try:
            import cv2

            cap = factory(index)
            if cap is not None and cap.isOpened():
                found.append(
                    {
                        "index": index,
                        "width": int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)),
                        "height": int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)),
                        "fps": float(cap.get(cv2.CAP_PROP_FPS)),
                    }
                )
        except Exception as exc:  # eri info must always finish
            log.debug("camera %d probe failed: %s", index, exc)
        finally:
            with contextlib.suppress(Exception):
                if cap is not None:
                    cap.release()
    return found
