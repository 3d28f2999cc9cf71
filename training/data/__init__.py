"""Datasets behind one interface: the ABAW5 ERI release, recorded sessions, a manifest CSV.

:func:`open_dataset` detects the kind and returns a :class:`ClipIndex` of :class:`Clip`;
:func:`generate_dataset` writes a small dataset in the ABAW5 layout whose labels can be
learnt from the pixels and the sound (tests, smoke runs).
"""

from __future__ import annotations

from pathlib import Path

from eri.training.data.abaw import DATA_INFO, is_abaw, open_abaw
from eri.training.data.clips import (
    ABAW_COLUMNS,
    Clip,
    ClipIndex,
    DatasetError,
    normalise_labels,
)
from eri.training.data.manifest import MANIFEST, is_manifest, open_manifest
from eri.training.data.sessions import is_sessions, open_sessions

__all__ = [
    "ABAW_COLUMNS",
    "DEFAULT_CLIPS",
    "Clip",
    "ClipIndex",
    "DatasetError",
    "generate_dataset",
    "normalise_labels",
    "open_abaw",
    "open_dataset",
    "open_manifest",
    "open_sessions",
]


def __getattr__(name: str):
    # Imported on first use, so ``python -m eri.training.data.generate`` runs it only once.
    if name in ("generate_dataset", "DEFAULT_CLIPS"):
        from eri.training.data import generate

        return getattr(generate, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def open_dataset(path: str | Path) -> ClipIndex:
    """The dataset at ``path``, whatever its kind.

    - an ABAW5 ERI release: a folder with ``data_info.csv``, or that file;
    - a manifest: a ``.csv`` file with ``path, split`` and the emotions, or a folder holding
      ``manifest.csv``;
    - recorded sessions: a session folder, or a folder of them.

    Raises :class:`DatasetError` with one sentence when the path is none of these or is broken.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise DatasetError(f"Dataset path {path} does not exist; check the path.")
    if is_abaw(path):
        return open_abaw(path)
    if path.is_file() and path.suffix.lower() == ".csv":
        from eri.training.data.clips import read_table

        header, _ = read_table(path)
        if "file_id" in {h.lower() for h in header}:
            return open_abaw(path)
        return open_manifest(path)
    if is_manifest(path):
        return open_manifest(path)
    if is_sessions(path):
        return open_sessions(path)
    raise DatasetError(
        f"{path} is not a dataset: expected a folder with {DATA_INFO} (ABAW5), a manifest CSV "
        f"(or a folder with {MANIFEST}), or a folder of recorded sessions."
    )
