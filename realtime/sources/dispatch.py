"""``--source`` dispatch: :func:`open_source` turns a camera index, ``synthetic[:N]``, a media
file or a session folder into a :class:`Source`."""

from __future__ import annotations

import logging
from pathlib import Path

from eri.realtime.sources.camera import CameraSource
from eri.realtime.sources.events import Source, SourceError
from eri.realtime.sources.files import FileSource, SessionSource
from eri.realtime.sources.live import LiveSource
from eri.realtime.sources.microphone import NO_MICROPHONE, MicrophoneSource
from eri.realtime.sources.synthetic import SyntheticSource

log = logging.getLogger(__name__)


def _mic_device(mic: str | None) -> int | str | None:
    if mic is None or mic.strip().lower() in ("", "default"):
        return None
    return int(mic) if mic.strip().isdigit() else mic


def open_source(spec: str | int | Path, *, realtime: bool, mic: str | None = None) -> Source:
    """Turn a ``--source`` value into a Source.

    ``0`` / an int -> camera (with the default microphone, or ``mic``; ``mic="none"`` for none);
    ``synthetic`` or ``synthetic:N`` -> :class:`SyntheticSource` (N frames); a folder ->
    :class:`SessionSource`; a file -> :class:`FileSource`. With the default microphone a missing
    PortAudio or microphone makes the camera visual-only (``audio_note`` says why); a microphone
    that was asked for by name or index raises instead.
    """
    if isinstance(spec, bool):
        raise SourceError(
            f"Source {spec!r} is not valid: pass a camera index, a path or 'synthetic'."
        )
    if isinstance(spec, int) or (isinstance(spec, str) and spec.strip().isdigit()):
        camera = CameraSource(int(spec))
        if mic is not None and mic.strip().lower() == "none":
            return LiveSource(camera, None, audio_note="the microphone was turned off (--mic none)")
        device = _mic_device(mic)
        try:
            microphone = MicrophoneSource(device=device)
        except NO_MICROPHONE as exc:
            if device is not None:
                camera.stop()
                raise
            log.warning("continuing without audio: %s", exc)
            return LiveSource(camera, None, audio_note=str(exc))
        return LiveSource(camera, microphone)
    if isinstance(spec, str) and spec.strip().lower().startswith("synthetic"):
        kind, _, count = spec.strip().partition(":")
        if kind.lower() == "synthetic":
            try:
                frames = int(count) if count else 300
            except ValueError:
                frames = -1
            if frames < 0:
                raise SourceError(
                    f"Source {spec!r} is not valid: write synthetic or synthetic:N with N frames."
                )
            return SyntheticSource(num_frames=frames, realtime=realtime)
    path = Path(spec)
    if path.is_dir():
        return SessionSource(path, realtime=realtime)
    if path.exists() or path.suffix:
        return FileSource(path, realtime=realtime)
    raise SourceError(
        f"Source {str(spec)!r} is not a camera index, 'synthetic', an existing media file or a "
        "session folder: pass e.g. --source 0, --source clip.mp4 or --source path/to/session."
    )
