"""The ABAW5 ERI release of Hume-Reaction: ``data_info.csv`` plus media per split.

``data_info.csv`` has ``File_ID``, ``Split`` (Train / Val / Test) and the seven label columns
:data:`ABAW_COLUMNS`. Media are found by ``File_ID`` under ``<split>/mp4/<id>.mp4`` and
``<split>/wav/<id>.wav``, or the same under ``raw/`` (the split folder may also be lower
case). A clip with only a video takes its audio from the video's own track; one with only a
wav is audio-only. Labels in [0, 1] are used as they are; 1-100 self-reports are divided by the
row's maximum (:func:`normalise_labels`); empty labels (the Test split) mean unlabelled.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from eri.training.data.clips import (
    ABAW_COLUMNS,
    Clip,
    ClipIndex,
    DatasetError,
    check_unique,
    normalise_labels,
    read_table,
    sha256_of,
)

logger = logging.getLogger(__name__)

DATA_INFO = "data_info.csv"
ID_COLUMN = "File_ID"
SPLIT_COLUMN = "Split"
REQUIRED_COLUMNS = (ID_COLUMN, SPLIT_COLUMN, *ABAW_COLUMNS)
#: (sub-folder, file extension) of the two media kinds.
VIDEO_DIR, VIDEO_EXT = "mp4", ".mp4"
AUDIO_DIR, AUDIO_EXT = "wav", ".wav"


def is_abaw(path: Path) -> bool:
    """True for a folder holding ``data_info.csv`` or that file itself."""
    return (path.is_dir() and (path / DATA_INFO).is_file()) or path.name == DATA_INFO


class _MediaFinder:
    """Finds ``<id><ext>`` under the candidate folders of a split; each folder listed once."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._listings: dict[Path, dict[str, Path]] = {}

    def _listing(self, folder: Path) -> dict[str, Path]:
        if folder not in self._listings:
            found: dict[str, Path] = {}
            if folder.is_dir():
                with os.scandir(folder) as entries:
                    for e in entries:
                        if e.is_file():
                            found[e.name] = Path(e.path)
            self._listings[folder] = found
        return self._listings[folder]

    def folders(self, split: str, kind: str) -> list[Path]:
        names = list(dict.fromkeys([split, split.lower()]))
        return [base / name / kind for base in (self.root, self.root / "raw") for name in names]

    def find(self, split: str, kind: str, file_name: str) -> Path | None:
        for folder in self.folders(split, kind):
            hit = self._listing(folder).get(file_name)
            if hit is not None:
                return hit
        return None


def _column_positions(header: list[str], csv_path: Path) -> dict[str, int]:
    lookup = {name.strip().lower(): i for i, name in enumerate(header)}
    missing = [c for c in REQUIRED_COLUMNS if c.lower() not in lookup]
    if missing:
        raise DatasetError(
            f"{csv_path} lacks the column(s) {', '.join(missing)}; its header must hold "
            f"{', '.join(REQUIRED_COLUMNS)}."
        )
    return {c: lookup[c.lower()] for c in REQUIRED_COLUMNS}


def open_abaw(path: str | Path) -> ClipIndex:
    """Read an ABAW5 ERI release (its folder, or its ``data_info.csv``) into a ClipIndex.

    Raises :class:`DatasetError` naming the file and the line for missing columns, bad or
    out-of-range labels, duplicate ids, an empty split name or a File_ID without media.
    """
    path = Path(path)
    csv_path = path / DATA_INFO if path.is_dir() else path
    root = csv_path.parent
    header, rows = read_table(csv_path)
    cols = _column_positions(header, csv_path)
    finder = _MediaFinder(root)
    clips: list[Clip] = []
    missing: list[tuple[int, str, str]] = []  # (line, File_ID, Split)
    for line, cells in rows:
        origin = f"{csv_path.name} line {line}"
        cells = cells + [""] * (len(header) - len(cells))
        clip_id, split = cells[cols[ID_COLUMN]], cells[cols[SPLIT_COLUMN]]
        if not clip_id or not split:
            empty = ID_COLUMN if not clip_id else SPLIT_COLUMN
            raise DatasetError(
                f"{csv_path} line {line} has an empty {empty}; every row needs a File_ID and a "
                "Split (Train, Val or Test)."
            )
        labels = normalise_labels([cells[cols[c]] for c in ABAW_COLUMNS], f"{csv_path} line {line}")
        video = finder.find(split, VIDEO_DIR, clip_id + VIDEO_EXT)
        audio = finder.find(split, AUDIO_DIR, clip_id + AUDIO_EXT)
        if video is None and audio is None:
            missing.append((line, clip_id, split))
            continue
        clips.append(Clip(clip_id, split, video, audio or video, labels, origin))
    if missing:
        line, clip_id, split = missing[0]
        tried = ", ".join(
            str(f.relative_to(root))
            for kind in (VIDEO_DIR, AUDIO_DIR)
            for f in finder.folders(split, kind)
        )
        more = f" ({len(missing)} rows in all)" if len(missing) > 1 else ""
        raise DatasetError(
            f"{csv_path} line {line}: File_ID {clip_id!r} has no media{more}; put "
            f"{clip_id}.mp4 or {clip_id}.wav under one of {tried}, or remove the row."
        )
    check_unique(clips, csv_path)
    if not clips:
        raise DatasetError(f"{csv_path} lists no clips; add one row per clip under the header.")
    logger.info(
        "%s: %d clips (%s)", csv_path, len(clips), ", ".join(sorted({c.split for c in clips}))
    )
    return ClipIndex(root, "abaw5", clips, sha256_of(csv_path), csv_path)
