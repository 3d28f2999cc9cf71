"""The session folder's names and version, and ``session.json`` / ``markers.csv`` read and write
(docs/design.md, "Sessions").

A session folder holds :data:`VIDEO`, :data:`AUDIO` (only when the source had audio),
:data:`PREDICTIONS`, :data:`MARKERS`, :data:`SESSION_JSON` and :data:`REPORT`. ``session.json``
carries :data:`SESSION_FORMAT_VERSION`; a reader refuses a newer version.
"""

from __future__ import annotations

import csv
import json
import os
import platform
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from eri.errors import EriError
from eri.models.spec import EMOTIONS

#: Version of the session layout and of ``session.json``; bump when either changes meaning.
SESSION_FORMAT_VERSION = 1

VIDEO = "video.mp4"
AUDIO = "audio.wav"
PREDICTIONS = "predictions.csv"
MARKERS = "markers.csv"
SESSION_JSON = "session.json"
REPORT = "report.png"
MARKER_COLUMNS = ("time_s", "label")
#: Self-report sliders: one integer per emotion in this range (as in Hume-Reaction).
SELF_REPORT_RANGE = (1, 100)

_VERSION_DISTS = ("eri-live", "torch", "onnxruntime", "mediapipe", "av", "numpy")


class SessionError(EriError, OSError):
    """A session folder cannot be written or read; the message names it and the fix."""


class NewerSessionError(SessionError):
    """A session written by a newer ERI Live, in a format this one does not read."""


def now_iso() -> str:
    """The current time as ISO 8601 with the UTC offset, to the millisecond."""
    return datetime.now(timezone.utc).astimezone().isoformat(timespec="milliseconds")


def versions(*extra: str) -> dict[str, str]:
    """Python, the platform and the versions of the libraries a session depends on (and of the
    ``extra`` distributions), those installed."""
    found = {"python": platform.python_version(), "platform": platform.platform()}
    for dist in (*_VERSION_DISTS, *extra):
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return found


def session_info(source: Any = None, bundle: Any = None, backend: Any = None) -> dict[str, Any]:
    """The ``info`` a :class:`~eri.realtime.session.SessionRecorder` stores in session.json:
    the source (name, kind, live, audio note), the model bundle (path or "untrained ARCH",
    architecture, trained flag), backend, precision and device. Any argument may be None."""
    info: dict[str, Any] = {}
    if source is not None:
        info["source"] = {
            "name": getattr(source, "name", str(source)),
            "kind": type(getattr(source, "inner", source)).__name__,
            "live": bool(getattr(source, "live", False)),
            "fps": getattr(source, "fps", None),
            "has_audio": bool(getattr(source, "has_audio", False)),
            "audio_note": getattr(source, "audio_note", None),
        }
    if bundle is not None:
        info["model"] = {
            "bundle": str(bundle.path) if getattr(bundle, "path", None) else None,
            "name": bundle.name,
            "architecture": bundle.meta.get("architecture"),
            "trained": bool(bundle.trained),
        }
    if backend is not None:
        info["backend"] = getattr(backend, "name", type(backend).__name__)
        info["precision"] = getattr(backend, "precision", None)
        info["device"] = getattr(backend, "device", None)
    return info


def check_self_report(ratings: dict[str, int]) -> dict[str, int]:
    """The seven ratings in EMOTIONS order, each an integer 1-100, or SessionError."""
    lo, hi = SELF_REPORT_RANGE
    missing = [e for e in EMOTIONS if e not in ratings]
    unknown = [k for k in ratings if k not in EMOTIONS]
    if missing or unknown:
        raise SessionError(
            f"The self-report needs exactly the seven emotions ({', '.join(EMOTIONS)}); "
            f"{'missing ' + ', '.join(missing) if missing else 'unknown ' + ', '.join(unknown)}."
        )
    out: dict[str, int] = {}
    for name in EMOTIONS:
        value = ratings[name]
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise SessionError(
                f"Self-report {name} = {value!r} is not valid; give a whole number {lo}-{hi}."
            )
        out[name] = value
    return out


# ---------------------------------------------------------------------------- session.json
def write_session_json(directory: str | Path, data: dict[str, Any]) -> Path:
    """Write ``session.json`` atomically (a temporary file, fsync, then rename).

    Raises OSError (e.g. a full disk); the previous session.json then stays as it was.
    """
    path = Path(directory) / SESSION_JSON
    tmp = path.with_name(f".{SESSION_JSON}.{os.getpid()}.tmp")
    try:
        with tmp.open("w", encoding="utf-8") as f:
            json.dump(data, f, indent=2)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _session_json_path(path: str | Path) -> Path:
    path = Path(path)
    return path / SESSION_JSON if path.is_dir() else path


def read_session(path: str | Path) -> dict[str, Any]:
    """``session.json`` of a session folder (or the file itself), validated.

    Raises SessionError with one sentence for a missing or corrupt file, or a format newer than
    :data:`SESSION_FORMAT_VERSION`.
    """
    file = _session_json_path(path)
    if not file.is_file():
        raise SessionError(
            f"{file} does not exist: pass a session folder written by `eri record` or the viewer."
        )
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SessionError(
            f"{file} is corrupt ({type(exc).__name__}: {exc}); the media files beside it can "
            "still be opened directly, e.g. `eri analyze` on the folder."
        ) from None
    version = data.get("format_version") if isinstance(data, dict) else None
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise SessionError(
            f"{file} is corrupt (no valid format_version); the media files beside it can still "
            "be opened directly, e.g. `eri analyze` on the folder."
        )
    if version > SESSION_FORMAT_VERSION:
        raise NewerSessionError(
            f"{file} has session format {version}, newer than this ERI Live reads "
            f"({SESSION_FORMAT_VERSION}); upgrade ERI Live (pip install -U eri-live)."
        )
    if not isinstance(data.get("complete"), bool):
        raise SessionError(
            f"{file} is corrupt (no valid 'complete' flag); the media files beside it can still "
            "be opened directly, e.g. `eri analyze` on the folder."
        )
    report = data.get("self_report")
    if report is not None:
        if not isinstance(report, dict):
            raise SessionError(
                f"{file} is corrupt (self_report is not a mapping); fix or remove it."
            )
        try:
            check_self_report(report)
        except SessionError as exc:
            raise SessionError(f"{file} has an invalid self_report: {exc}") from None
    return data


# ---------------------------------------------------------------------------- markers.csv
class MarkerWriter:
    """``markers.csv``: a ``time_s,label`` header, then one row per marker, flushed at once."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._file = self.path.open("w", newline="", encoding="utf-8")
        self._csv = csv.writer(self._file, lineterminator="\n")
        self._csv.writerow(MARKER_COLUMNS)
        self._file.flush()
        self.count = 0

    def write(self, time_s: float, label: str = "") -> None:
        self._csv.writerow([f"{time_s:.4f}", label])
        self._file.flush()
        self.count += 1

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()


def read_markers(path: str | Path) -> list[tuple[float, str]]:
    """The markers of a session folder (or of ``markers.csv`` itself): [(time_s, label)].

    A session without markers.csv has none; a malformed file raises SessionError.
    """
    path = Path(path)
    file = path / MARKERS if path.is_dir() else path
    if not file.exists():
        return []
    try:
        with file.open(newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError) as exc:
        raise SessionError(f"Cannot read {file} ({exc}); check the file or remove it.") from None
    if not rows:
        return []
    if tuple(rows[0]) != MARKER_COLUMNS:
        raise SessionError(
            f"{file} is corrupt (its header is {rows[0]}, not {list(MARKER_COLUMNS)}); "
            "fix the header or remove the file."
        )
    markers = []
    for n, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        try:
            markers.append((float(row[0]), row[1] if len(row) > 1 else ""))
        except ValueError:
            raise SessionError(
                f"{file} is corrupt at line {n} ({row[0]!r} is not a time); fix or remove the line."
            ) from None
    return markers
