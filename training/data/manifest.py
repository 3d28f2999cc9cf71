"""A plain manifest CSV for any other data: ``path, split`` and the seven emotions.

The emotion columns may use either spelling (``empathic_pain`` or ``Empathic-Pain``, any
case). Optional columns: ``id`` (else the path without its extension) and ``audio`` (a
separate audio file; else a video's own track). Relative paths are relative to the CSV. Empty
labels mean unlabelled; labels follow :func:`normalise_labels` (0-1 as is, 1-100 by the row's
maximum). The dataset path is the CSV itself or a folder holding ``manifest.csv``.
"""

from __future__ import annotations

from pathlib import Path

from eri.models.spec import EMOTIONS
from eri.training.data.clips import (
    AUDIO_EXTENSIONS,
    Clip,
    ClipIndex,
    DatasetError,
    check_unique,
    normalise_labels,
    read_table,
    sha256_of,
)

MANIFEST = "manifest.csv"


def _key(name: str) -> str:
    return name.strip().lower().replace("-", "_").replace(" ", "_")


def is_manifest(path: Path) -> bool:
    return (path.is_dir() and (path / MANIFEST).is_file()) or (
        path.is_file() and path.suffix.lower() == ".csv"
    )


def _resolve(base: Path, text: str, origin: str, column: str) -> Path:
    if not text:
        raise DatasetError(f"{origin} has an empty {column}; give the media file's path.")
    p = Path(text)
    p = p if p.is_absolute() else base / p
    if not p.is_file():
        raise DatasetError(
            f"{origin}: {column} {text!r} does not exist ({p}); fix the path (relative paths "
            "are relative to the CSV) or remove the row."
        )
    return p


def open_manifest(path: str | Path) -> ClipIndex:
    """Read a manifest CSV (or a folder holding ``manifest.csv``) into a ClipIndex."""
    path = Path(path)
    csv_path = path / MANIFEST if path.is_dir() else path
    base = csv_path.parent
    header, rows = read_table(csv_path)
    lookup = {_key(name): i for i, name in enumerate(header)}
    missing = [c for c in ("path", "split", *EMOTIONS) if c not in lookup]
    if missing:
        raise DatasetError(
            f"{csv_path} lacks the column(s) {', '.join(missing)}; a manifest's header is "
            f"path, split, {', '.join(EMOTIONS)} (optional: id, audio)."
        )
    clips = []
    for line, cells in rows:
        origin = f"{csv_path} line {line}"
        cells = cells + [""] * (len(header) - len(cells))
        media = _resolve(base, cells[lookup["path"]], origin, "path")
        split = cells[lookup["split"]]
        if not split:
            raise DatasetError(f"{origin} has an empty split; give e.g. Train, Val or Test.")
        audio_text = cells[lookup["audio"]] if "audio" in lookup else ""
        is_audio = media.suffix.lower() in AUDIO_EXTENSIONS
        video = None if is_audio else media
        audio = _resolve(base, audio_text, origin, "audio") if audio_text else media
        clip_id = cells[lookup["id"]] if "id" in lookup and cells[lookup["id"]] else ""
        if not clip_id:
            rel = Path(cells[lookup["path"]])
            clip_id = rel.with_suffix("").as_posix()
        labels = normalise_labels([cells[lookup[e]] for e in EMOTIONS], origin)
        clips.append(Clip(clip_id, split, video, audio, labels, f"{csv_path.name} line {line}"))
    if not clips:
        raise DatasetError(f"{csv_path} lists no clips; add one row per clip under the header.")
    check_unique(clips, csv_path)
    return ClipIndex(base, "manifest", clips, sha256_of(csv_path), csv_path)
