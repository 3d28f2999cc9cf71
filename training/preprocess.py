"""The preprocessing cache: every clip's window through the live tracker, crop and audio front
end, once, in parallel, resumable.

Per clip, in one worker, :func:`~eri.training.windows.extract_clip` (module
:mod:`eri.training.windows`): the video decoded once and tracked frame by frame by the live
tracker, the audio through the live front end, the window sampled over the whole clip.

The cache folder is ``<cache_root>/<dataset>-<hash of its path>/<config key>``: a change of
WindowSpec, CropSpec, AudioSpec, tracker defaults or schema is a new key and a new folder. One
``.npz`` per clip, written to a temporary name and renamed, so a killed run resumes where it
stopped (a long clip's face crops wait in a temporary file in the same folder, so a worker's
memory does not grow with the clip); files of clips whose media changed (size or time) are
redone. Unreadable media are skipped, logged and listed in ``report.json``; the run goes on.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
import re
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from eri.errors import EriError
from eri.models.audio import (
    AudioSpec,
)
from eri.models.spec import CropSpec, WindowSpec
from eri.training.data.clips import Clip, ClipIndex
from eri.training.windows import (
    CLIPS_DIR,
    CachedClip,
    ClipCache,
    WindowDataset,
    clip_file_name,
    extract_clip,
    media_signature,
    write_npz,
)

__all__ = [
    "SCHEMA_VERSION",
    "CachedClip",
    "ClipCache",
    "PreprocessConfig",
    "PreprocessReport",
    "WindowDataset",
    "cache_dir_for",
    "default_cache_root",
    "extract_clip",
    "preprocess",
]

logger = logging.getLogger(__name__)

#: Bump when the cached arrays change meaning: every cache folder is then rebuilt.
SCHEMA_VERSION = 1
REPORT_JSON = "report.json"
CONFIG_JSON = "config.json"


def _tracker_defaults() -> dict[str, Any]:
    """The live FaceTracker's default settings (part of the key: they shape the crops)."""
    from eri.realtime.face.tracker import FaceTracker

    params = inspect.signature(FaceTracker.__init__).parameters
    return {
        k: p.default
        for k, p in params.items()
        if k not in ("self", "crop") and p.default is not inspect.Parameter.empty
    }


@dataclass(frozen=True)
class PreprocessConfig:
    """Everything that changes the cached arrays; :meth:`key` names the cache folder."""

    window: WindowSpec = field(default_factory=WindowSpec)
    crop: CropSpec = field(default_factory=CropSpec)
    audio: AudioSpec | None = field(default_factory=AudioSpec)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA_VERSION,
            "window": self.window.to_dict(),
            "crop": self.crop.to_dict(),
            "audio": None if self.audio is None else self.audio.to_dict(),
            "tracker": _tracker_defaults(),
        }

    def key(self) -> str:
        """16 hex digits of the sha256 of :meth:`to_dict` (stable across runs and machines)."""
        text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PreprocessConfig:
        audio = data.get("audio")
        return cls(
            window=WindowSpec.from_dict(data.get("window")),
            crop=CropSpec.from_dict(data.get("crop")),
            audio=None if audio is None else AudioSpec.from_dict(audio),
        )

    @classmethod
    def from_model(cls, model: Any) -> PreprocessConfig:
        """The config a :class:`~eri.models.base.StreamingModel` needs (its three specs)."""
        return cls(window=model.window, crop=model.crop, audio=model.audio_spec)


@dataclass
class PreprocessReport:
    """What one :func:`preprocess` run did. ``skipped``: (clip_id, reason) of unreadable clips."""

    cache_dir: Path
    done: int = 0
    reused: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    wall_s: float = 0.0
    video_s: float = 0.0  # seconds of media processed by this run (not counting reused clips)

    @property
    def cache(self) -> ClipCache:
        return ClipCache(self.cache_dir)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["cache_dir"] = str(self.cache_dir)
        d["skipped"] = [{"clip_id": c, "reason": r} for c, r in self.skipped]
        return d


def default_cache_root() -> Path:
    """``preprocess/`` in the project's one cache folder (:func:`eri.models.export.cache_dir`:
    ``$ERI_CACHE_DIR``, else ``~/.cache/eri-live``)."""
    from eri.models.export import cache_dir

    return cache_dir() / "preprocess"


def cache_dir_for(index: ClipIndex, config: PreprocessConfig, cache_root: str | Path) -> Path:
    """``<cache_root>/<dataset name>-<hash of its resolved path>/<config key>``."""
    root = Path(index.source or index.root).resolve()
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(index.root).resolve().name)[:40] or "data"
    digest = hashlib.sha256(str(root).encode()).hexdigest()[:8]
    return Path(cache_root) / f"{slug}-{digest}" / config.key()


# ----------------------------------------------------------------------------- workers
_WORKER: dict[str, Any] = {}


def _worker_init(config_dict: dict[str, Any], single_thread: bool = True) -> None:
    if single_thread:  # one worker per core: OpenCV's own threads would oversubscribe
        import cv2

        cv2.setNumThreads(1)
    _WORKER["config"] = PreprocessConfig.from_dict(config_dict)
    _WORKER["tracker"] = None


def _tracker(config: PreprocessConfig) -> Any:
    if _WORKER.get("tracker") is None:
        from eri.realtime.face import FaceTracker

        _WORKER["tracker"] = FaceTracker(crop=config.crop)
    return _WORKER["tracker"]


def _run_one(clip: Clip, path: str, config: PreprocessConfig | None = None) -> tuple[str, float]:
    """Preprocess one clip into ``path``; returns (error or "", seconds of media)."""
    config = config or _WORKER["config"]
    try:
        tracker = _tracker(config) if clip.video is not None else None
        cached = extract_clip(clip, config, tracker, spill_dir=Path(path).parent)
        write_npz(Path(path), cached)
    except Exception as exc:  # unreadable media must not stop the run; listed in the report
        reason = str(exc).strip() or type(exc).__name__
        if not isinstance(exc, EriError):
            logger.debug("clip %s failed", clip.clip_id, exc_info=True)
            reason = f"{type(exc).__name__}: {reason}"
        return reason, 0.0
    return "", cached.duration_s


def _reusable(path: Path, clip: Clip) -> bool:
    if not path.is_file():
        return False
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
    except Exception:  # a damaged file (e.g. a disk error): redo it
        return False
    return meta.get("source") == json.loads(json.dumps(media_signature(clip)))


def _clean_stale_tmp(folder: Path) -> None:
    """Remove temporary files left by killed runs (their pid no longer exists): ``.npz`` and
    JSON files being written, and crop spill files where they have a name (``.crops-*.PID.tmp``;
    on Linux they have none)."""
    for tmp in folder.glob(".*.tmp"):
        try:
            pid = int(tmp.name.rsplit(".", 2)[-2])
            os.kill(pid, 0)
        except ProcessLookupError:
            tmp.unlink(missing_ok=True)
        except (ValueError, IndexError, PermissionError, OSError):
            continue


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def preprocess(
    index: ClipIndex,
    config: PreprocessConfig,
    cache_root: str | Path | None = None,
    *,
    splits: list[str] | None = None,
    workers: int | None = None,
    progress: bool = True,
) -> PreprocessReport:
    """Preprocess the clips of ``splits`` (default: all) into the cache; see the module doc.

    ``workers``: processes (None: one per CPU core, at most one per clip; 0 or 1: in this
    process). Returns the report (also written to ``<cache_dir>/report.json``).
    """
    from tqdm import tqdm

    t0 = time.perf_counter()
    cache_dir = cache_dir_for(index, config, cache_root or default_cache_root())
    clips_dir = cache_dir / CLIPS_DIR
    clips_dir.mkdir(parents=True, exist_ok=True)
    _clean_stale_tmp(clips_dir)
    if not (cache_dir / CONFIG_JSON).is_file():
        _write_json(cache_dir / CONFIG_JSON, {"key": config.key(), **config.to_dict()})
    clips = index.clips
    if splits is not None:
        clips = [c for name in splits for c in index.split(name)]
    report = PreprocessReport(cache_dir)
    todo = []
    for clip in clips:
        path = clips_dir / clip_file_name(clip.clip_id)
        if _reusable(path, clip):
            report.reused += 1
        else:
            todo.append((clip, str(path)))
    logger.info(
        "preprocessing %d clips into %s (%d already cached)", len(todo), cache_dir, report.reused
    )
    n_workers = (os.cpu_count() or 1) if workers is None else workers
    n_workers = max(1, min(n_workers, len(todo)))

    def record(clip: Clip, reason: str, seconds: float) -> None:
        if reason:
            logger.warning("skipped clip %s (%s): %s", clip.clip_id, clip.origin, reason)
            report.skipped.append((clip.clip_id, reason))
        else:
            report.done += 1
            report.video_s += seconds

    bar = tqdm(total=len(todo), unit="clip", disable=not progress, desc="preprocess")
    try:
        if n_workers <= 1:
            _worker_init(config.to_dict(), single_thread=False)
            for clip, path in todo:
                record(clip, *_run_one(clip, path, config))
                bar.update()
        else:
            ctx = get_context("spawn")  # MediaPipe and torch are not fork-safe
            with ProcessPoolExecutor(
                n_workers, mp_context=ctx, initializer=_worker_init, initargs=(config.to_dict(),)
            ) as pool:
                futures = {pool.submit(_run_one, clip, path): clip for clip, path in todo}
                try:
                    for future in as_completed(futures):
                        record(futures[future], *future.result())
                        bar.update()
                except BaseException:
                    pool.shutdown(wait=False, cancel_futures=True)
                    raise
    finally:
        bar.close()
        _close_worker_tracker()
    report.wall_s = time.perf_counter() - t0
    _write_json(
        cache_dir / REPORT_JSON,
        {"key": config.key(), "dataset": index.describe(), **report.to_dict()},
    )
    if report.skipped:
        logger.warning(
            "%d clip(s) could not be read and were skipped; they are listed in %s",
            len(report.skipped),
            cache_dir / REPORT_JSON,
        )
    return report


def _close_worker_tracker() -> None:
    tracker = _WORKER.pop("tracker", None)
    if tracker is not None:
        tracker.close()
