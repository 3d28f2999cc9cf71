"""One clip of training data and the index of a dataset: :class:`Clip`, :class:`ClipIndex`.

Every dataset kind (the ABAW5 release, recorded sessions, a manifest CSV) is read into the
same :class:`ClipIndex`, so preprocessing, training and evaluation never ask where a clip came
from. Labels are float32 [7] in [0, 1] in :data:`eri.models.spec.EMOTIONS` order, or None for
an unlabelled clip (the ABAW Test split, a session without a self-report).
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from eri.errors import EriError
from eri.models.spec import EMOTIONS, NUM_EMOTIONS

__all__ = [
    "ABAW_COLUMNS",
    "AUDIO_EXTENSIONS",
    "Clip",
    "ClipIndex",
    "DatasetError",
    "check_unique",
    "normalise_labels",
    "sha256_of",
]

#: The label columns of the ABAW5 ERI ``data_info.csv``, in :data:`EMOTIONS` order.
ABAW_COLUMNS: tuple[str, ...] = (
    "Adoration",
    "Amusement",
    "Anxiety",
    "Disgust",
    "Empathic-Pain",
    "Fear",
    "Surprise",
)
assert len(ABAW_COLUMNS) == NUM_EMOTIONS

#: Media that has no picture: a clip of such a file is audio-only.
AUDIO_EXTENSIONS = (".wav", ".mp3", ".flac", ".ogg", ".m4a", ".aac", ".opus")

#: Self-reports are 1-100 (Hume-Reaction); labels above 1 are on that scale.
SELF_REPORT_MAX = 100.0


class DatasetError(EriError, ValueError):
    """A dataset that cannot be read; the message names the file and the row and the fix."""


@dataclass(frozen=True)
class Clip:
    """One training clip.

    ``video``/``audio``: media files (``audio`` may be the video file itself: its own track;
    None: no such modality). ``labels``: float32 [7] in [0, 1] in EMOTIONS order, or None when
    unlabelled. ``origin``: where it was declared (e.g. ``"data_info.csv line 18"``).
    """

    clip_id: str
    split: str
    video: Path | None
    audio: Path | None
    labels: np.ndarray | None = field(default=None, compare=False)
    origin: str = ""

    @property
    def labelled(self) -> bool:
        return self.labels is not None


def normalise_labels(values: Sequence[str | float | None], origin: str) -> np.ndarray | None:
    """Seven label values of one row -> float32 [7] in [0, 1], or None when all are empty.

    Values already in [0, 1] (the ABAW5 release) are used as they are; a row with a value
    above 1 holds 1-100 self-reports and is divided by its maximum, as the ABAW5 papers
    normalise each sample. Raises :class:`DatasetError` naming ``origin`` for a partly empty
    row, a non-number, or a value outside [0, 100].
    """
    texts = ["" if v is None else str(v).strip() for v in values]
    if len(texts) != NUM_EMOTIONS:
        raise DatasetError(f"{origin} has {len(texts)} label values, not {NUM_EMOTIONS}.")
    if all(t == "" for t in texts):
        return None
    if any(t == "" for t in texts):
        empty = [EMOTIONS[i] for i, t in enumerate(texts) if t == ""]
        raise DatasetError(
            f"{origin} has empty labels for {', '.join(empty)}; give all seven or none "
            "(none = unlabelled)."
        )
    out = np.empty(NUM_EMOTIONS, dtype=np.float64)
    for i, text in enumerate(texts):
        try:
            out[i] = float(text)
        except ValueError:
            raise DatasetError(
                f"{origin}: {EMOTIONS[i]} = {text!r} is not a number; labels are numbers in "
                "[0, 1] or 1-100 self-reports."
            ) from None
        if not math.isfinite(out[i]) or not 0.0 <= out[i] <= SELF_REPORT_MAX:
            raise DatasetError(
                f"{origin}: {EMOTIONS[i]} = {text} is out of range; labels are in [0, 1] or "
                "1-100 self-reports."
            )
    peak = float(out.max())
    if peak > 1.0:
        out /= peak
    return out.astype(np.float32)


def sha256_of(data: bytes | Path) -> str:
    """Hex sha256 of bytes or of a file's contents."""
    if isinstance(data, Path):
        data = data.read_bytes()
    return hashlib.sha256(data).hexdigest()


@dataclass
class ClipIndex:
    """All clips of one dataset. ``kind``: "abaw5" | "sessions" | "manifest".

    ``label_digest``: sha256 of what the labels came from (for provenance).
    """

    root: Path
    kind: str
    clips: list[Clip]
    label_digest: str = ""
    source: Path | None = None  # the file the index was read from (data_info.csv, manifest)

    @property
    def splits(self) -> list[str]:
        """Split names in the order they first appear."""
        return list(dict.fromkeys(c.split for c in self.clips))

    def split(self, name: str) -> list[Clip]:
        """The clips of split ``name``; DatasetError for an unknown or empty split."""
        clips = [c for c in self.clips if c.split == name]
        if not clips:
            where = self.source or self.root
            valid = ", ".join(self.splits) or "none: the dataset has no clips"
            raise DatasetError(
                f"{where} has no clips in split {name!r}; valid splits are: {valid}."
            )
        return clips

    def labelled(self, name: str) -> list[Clip]:
        """The labelled clips of split ``name``; DatasetError if there are none."""
        clips = [c for c in self.split(name) if c.labelled]
        if not clips:
            raise DatasetError(
                f"Split {name!r} of {self.source or self.root} has no labelled clips; train "
                "and evaluate on a split with labels (e.g. Train or Val)."
            )
        return clips

    def by_id(self) -> dict[str, Clip]:
        return {c.clip_id: c for c in self.clips}

    def describe(self) -> dict[str, Any]:
        """JSON-able provenance: root, kind, clips and labelled clips per split, label sha256."""
        counts = Counter(c.split for c in self.clips)
        labelled = Counter(c.split for c in self.clips if c.labelled)
        return {
            "root": str(self.root),
            "kind": self.kind,
            "source": None if self.source is None else str(self.source),
            "clips": {s: counts[s] for s in self.splits},
            "labelled": {s: labelled[s] for s in self.splits},
            "labels_sha256": self.label_digest,
        }


def check_unique(clips: list[Clip], what: Path) -> None:
    """DatasetError naming both rows when two clips share an id."""
    seen: dict[str, Clip] = {}
    for clip in clips:
        if clip.clip_id in seen:
            raise DatasetError(
                f"{what}: clip id {clip.clip_id!r} appears twice ({seen[clip.clip_id].origin} "
                f"and {clip.origin}); ids must be unique, remove or rename one."
            )
        seen[clip.clip_id] = clip


def read_table(path: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """A CSV file's header and its non-blank rows as (line number, cells).

    DatasetError for a missing, unreadable or empty file.
    """
    import csv

    if not path.is_file():
        raise DatasetError(f"{path} does not exist; check the dataset path.")
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            lines = [(reader.line_num, row) for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"Cannot read {path} ({exc}); it must be a UTF-8 CSV file.") from None
    lines = [(n, [c.strip() for c in row]) for n, row in lines if any(c.strip() for c in row)]
    if not lines:
        raise DatasetError(f"{path} is empty; it needs a header row and one row per clip.")
    header = lines[0][1]
    return header, lines[1:]
