"""Whether an output can be written, checked before any work (the one place for that check).

Used by the ``eri`` command for its output options and by the session recorder for a session
folder. Only the standard library is imported, so ``eri --help`` stays fast.
"""

from __future__ import annotations

import os
from pathlib import Path

from eri.errors import EriError


class OutputPathError(EriError):
    """An output path that cannot be written; the message names it and the fix."""


def nearest_existing(path: Path) -> Path:
    """``path`` itself if it exists, else its nearest existing ancestor."""
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    return existing


def unwritable(path: str | Path) -> tuple[str, Path] | None:
    """Why ``path`` (a file or folder to write, missing parents to be created) cannot be
    written, without creating anything: ``("file", ancestor)`` when the nearest existing
    ancestor of its parent is a file, ``("denied", folder)`` when that folder (or ``path``
    itself, if it exists) is not writable; None when it can be written."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    existing = nearest_existing(parent)
    if not existing.is_dir():
        return "file", existing
    if not os.access(existing, os.W_OK | os.X_OK) or (
        path.exists() and not os.access(path, os.W_OK)
    ):
        return "denied", existing
    return None


def check_writable(
    path: str | Path, what: str, option: str, *, error: type[EriError] = OutputPathError
) -> Path:
    """Refuse, before any work, an output that could not be written at the end.

    A missing folder is fine when it can be created (the writers create it); a folder that
    cannot be created or written, or a path that is a directory, is an ``error`` naming
    ``option``.
    """
    path = Path(path)
    if path.is_dir():
        raise error(f"{option} {path} is a directory; give a file name for the {what}.")
    problem = unwritable(path)
    if problem is None:
        return path
    kind, existing = problem
    if kind == "file":
        raise error(
            f"{option} {path}: {existing} is a file, not a folder; choose another {option}."
        )
    parent = path.parent if str(path.parent) else Path(".")
    where = parent if existing == parent else f"{parent} (cannot create it in {existing})"
    raise error(
        f"Cannot write the {what} {path}: {where} is not writable; "
        f"choose a writable location for {option}."
    )
