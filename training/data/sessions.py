"""A folder of recorded sessions as a dataset: one clip per session folder.

A session (``eri record`` / the viewer) holds ``video.mp4``, usually ``audio.wav`` (preferred
over the video's own track, as :class:`~eri.realtime.sources.files.SessionSource` does) and
``session.json``; its seven self-report sliders (1-100) are the labels, divided by their
maximum like the ABAW self-reports. A session without a self-report is unlabelled. The split
comes from session.json's optional ``"split"`` key, else ``"Train"``. The folder may be one
session itself or hold sessions as sub-folders (searched one level deep).
"""

from __future__ import annotations

import json
from pathlib import Path

from eri.models.spec import EMOTIONS
from eri.realtime.session.format import AUDIO, SESSION_JSON, VIDEO, SessionError, read_session
from eri.training.data.clips import (
    Clip,
    ClipIndex,
    DatasetError,
    check_unique,
    normalise_labels,
    sha256_of,
)

DEFAULT_SPLIT = "Train"


def session_folders(path: Path) -> list[Path]:
    """The session folders of ``path``: itself if it is one, else its sub-folders that are."""
    if (path / SESSION_JSON).is_file():
        return [path]
    if not path.is_dir():
        return []
    return sorted(p for p in path.iterdir() if p.is_dir() and (p / SESSION_JSON).is_file())


def is_sessions(path: Path) -> bool:
    return bool(session_folders(path))


def _clip(folder: Path) -> tuple[Clip, dict]:
    file = folder / SESSION_JSON
    try:
        data = read_session(folder)
    except SessionError as exc:
        raise DatasetError(str(exc)) from None
    split = data.get("split", DEFAULT_SPLIT)
    if not isinstance(split, str) or not split.strip():
        raise DatasetError(
            f'{file}: \'split\' = {split!r} is not a split name; use e.g. "Train" or "Val".'
        )
    video = folder / VIDEO
    if not video.is_file():
        raise DatasetError(
            f"{folder} has no {VIDEO}; the session is incomplete, remove it from the dataset."
        )
    wav = folder / AUDIO
    report = data.get("self_report")
    labels = None
    if report is not None:
        labels = normalise_labels([report[e] for e in EMOTIONS], f"{file} self_report")
    clip = Clip(
        folder.name, split.strip(), video, wav if wav.is_file() else video, labels, str(file)
    )
    return clip, {"id": folder.name, "split": clip.split, "self_report": report}


def open_sessions(path: str | Path) -> ClipIndex:
    """Read a folder of recorded sessions (or one session folder) into a ClipIndex."""
    path = Path(path)
    folders = session_folders(path)
    if not folders:
        raise DatasetError(
            f"{path} holds no recorded sessions (no {SESSION_JSON} in it or its sub-folders); "
            "pass a folder of sessions written by `eri record`."
        )
    pairs = [_clip(folder) for folder in folders]
    clips = [c for c, _ in pairs]
    check_unique(clips, path)
    digest = sha256_of(json.dumps([r for _, r in pairs], sort_keys=True).encode())
    return ClipIndex(path, "sessions", clips, digest, None)
