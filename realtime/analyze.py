"""`eri analyze MEDIA`: the whole pipeline over a file, as fast as the machine allows."""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from eri.models.bundle import Bundle
from eri.models.spec import EMOTIONS
from eri.realtime.backends import Backend
from eri.realtime.outputs import (
    CSV_COLUMNS,
    FIRST_EMOTION,
    PredictionWriter,
    open_for_writing,
    plot_curves,
)
from eri.realtime.pipeline import (
    AUDIO_ONLY_RATE,
    STAGES,
    FrameOutput,
    StreamingEngine,
    output_row,
    run_offline,
)

log = logging.getLogger(__name__)


@dataclass
class Analysis:
    """Everything one run produced: the rows and a JSON-able summary."""

    rows: list[list[float | int]] = field(default_factory=list)
    stages_ms: dict[str, list[float]] = field(default_factory=lambda: {s: [] for s in STAGES})
    summary: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    def column(self, name: str) -> np.ndarray:
        """One CSV column [rows] as float64."""
        i = CSV_COLUMNS.index(name)
        return np.array([r[i] for r in self.rows], dtype=np.float64)

    @property
    def times(self) -> np.ndarray:
        return self.column("time_s")

    @property
    def intensities(self) -> np.ndarray:
        values = [r[FIRST_EMOTION : FIRST_EMOTION + len(EMOTIONS)] for r in self.rows]
        return np.array(values, dtype=np.float32).reshape(-1, len(EMOTIONS))

    @property
    def face(self) -> np.ndarray:
        return self.column("face_detected").astype(np.float32)

    @property
    def audio(self) -> np.ndarray:
        return self.column("audio_present").astype(np.float32)


def percentiles(values: list[float] | np.ndarray, qs: tuple[int, ...] = (50, 95, 99)) -> dict:
    """{"p50": ..., "p95": ..., "p99": ...} in the values' unit (NaN when empty)."""
    arr = np.asarray(values, dtype=np.float64)
    return {f"p{q}": float(np.percentile(arr, q)) if arr.size else float("nan") for q in qs}


def make_tracker(bundle: Bundle, subject: str | int = "largest"):
    """The face tracker for ``bundle``'s crop; ``subject`` picks the face to follow."""
    from eri.realtime.face import FaceTracker

    return FaceTracker(crop=bundle.model.crop, subject=subject)


def expected_rows(source) -> int | None:
    """Rows a source should give (the progress bar's total): the video stream's frame count,
    else its duration x frame rate; for a source without video, duration x AUDIO_ONLY_RATE.
    None when unknown."""
    has_video = getattr(source, "has_video", True)
    if has_video:
        count = getattr(source, "frame_count", None)
        if count and count > 0:
            return int(count)
    rate = getattr(source, "fps", None) if has_video else AUDIO_ONLY_RATE
    duration = getattr(source, "duration_s", None)
    if rate and duration and math.isfinite(rate * duration) and rate * duration >= 1:
        return int(round(rate * duration))
    return None


def describe_failure(exc: BaseException) -> str:
    """A failure in words for the JSON summary: never empty, Ctrl-C says "interrupted"."""
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted by the user (KeyboardInterrupt, Ctrl-C); the rows before it were kept"
    if not isinstance(exc, Exception):  # SystemExit, GeneratorExit, ...
        return f"interrupted ({exc!r}); the rows before it were kept"
    return str(exc).strip() or repr(exc)


class _AtomicJson:
    """A JSON file written whole or not at all: a temporary file beside it, then os.replace.

    The temporary file is created at once, so an unwritable location fails before any work.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        self._file = open_for_writing(self.tmp, "JSON summary")

    def write(self, data: Any) -> None:
        try:
            with self._file:
                json.dump(data, self._file, indent=2)
                self._file.write("\n")
                self._file.flush()
                os.fsync(self._file.fileno())
            os.replace(self.tmp, self.path)
        finally:
            self.tmp.unlink(missing_ok=True)

    def discard(self) -> None:
        self._file.close()
        self.tmp.unlink(missing_ok=True)


def analyze(
    media: str | Path,
    bundle: Bundle,
    backend: Backend,
    *,
    mode: str = "streaming",
    csv_path: str | Path | None = None,
    plot_path: str | Path | None = None,
    json_path: str | Path | None = None,
    progress: bool = True,
    subject: str | int = "largest",
) -> Analysis:
    """Run ``media`` through the pipeline; write the CSV / plot / JSON that were asked for.

    ``subject`` is the face to follow when there are several: "largest", "center", or an index
    counted left to right.

    A stream that fails midway keeps everything up to that point (CSV, plot and JSON are still
    written) and re-raises the error. A source without video builds no face tracker.
    """
    from eri.realtime.sources import open_source

    result = Analysis()
    source = open_source(str(media), realtime=False)
    # Open every output first, so a bad path fails before any work is done.
    json_file = _AtomicJson(json_path) if json_path else None
    writer = None
    try:
        writer = PredictionWriter(csv_path) if csv_path else None
        has_video = getattr(source, "has_video", True)
        tracker = make_tracker(bundle, subject) if has_video else None
        engine = StreamingEngine(bundle, backend, tracker, mode=mode, fps=source.fps)
    except BaseException:
        if json_file is not None:
            json_file.discard()
        if writer is not None:
            writer.close()
        raise
    bar = None
    if progress:
        from tqdm import tqdm

        unit = "frame" if has_video else "step"
        total = expected_rows(source)
        bar = tqdm(total=total, unit=unit, desc=Path(str(media)).name, leave=False)
    failure: BaseException | None = None
    wall0 = time.perf_counter()
    try:
        with source:
            for out in run_offline(source, engine):
                _collect(result, out, writer)
                if bar is not None:
                    bar.update(1)
    except BaseException as exc:
        failure = exc
        result.error = describe_failure(exc)
    finally:
        wall = time.perf_counter() - wall0
        if bar is not None:
            if failure is None and bar.n:  # the header's count is an estimate (VFR files)
                bar.total = bar.n
                bar.refresh()
            bar.close()
        if writer is not None:
            writer.close()
        close = getattr(tracker, "close", None)
        if close:
            close()
    result.summary = summarise(result, media, bundle, backend, mode, source, engine, wall)
    result.summary["interrupted"] = failure is not None and not isinstance(failure, Exception)
    if json_file is not None:
        json_file.write(result.summary)
    if plot_path and result.rows:
        plot_curves(
            result.times,
            result.intensities,
            result.face,
            plot_path,
            title=f"{Path(str(media)).name}: emotional reaction intensity",
            subtitle=_plot_subtitle(bundle, backend, result),
            has_video=has_video,
        )
    if failure is None and len(result.rows) < 2:
        from eri.realtime.pipeline import PipelineError

        what = "1 frame" if len(result.rows) == 1 else "no frames or audio"
        failure = PipelineError(
            f"{media} has {what}; ERI measures reactions over time, so give a video of at "
            "least 2 frames or an audio file of at least 0.1 s."
        )
    if failure is not None:
        if result.rows:
            log.error("Stopped after %d rows; everything up to then was written.", len(result.rows))
        raise failure
    return result


def _collect(result: Analysis, out: FrameOutput, writer: PredictionWriter | None) -> None:
    row = output_row(out)
    result.rows.append(row)
    for stage in STAGES:
        if stage in out.stages_ms:
            result.stages_ms[stage].append(out.stages_ms[stage])
    if writer is not None:
        writer.write(row)


def _plot_subtitle(bundle: Bundle, backend: Backend, result: Analysis) -> str:
    trained = (
        "" if bundle.trained else "UNTRAINED model (random weights): curves are not meaningful. "
    )
    return (
        f"{trained}{bundle.meta['architecture']} via {backend.describe()}; face on "
        f"{100 * result.face.mean():.0f}% of frames, audio on {100 * result.audio.mean():.0f}%"
    )


def summarise(
    result: Analysis,
    media,
    bundle: Bundle,
    backend: Backend,
    mode: str,
    source,
    engine: StreamingEngine,
    wall_s: float,
) -> dict[str, Any]:
    n = len(result.rows)
    values = result.intensities
    return {
        "media": str(media),
        "model": bundle.name,
        "architecture": bundle.meta["architecture"],
        "trained": bundle.trained,
        "backend": backend.name,
        "precision": backend.precision,
        "device": backend.device,
        "mode": mode,
        "rows": n,
        "duration_s": float(result.times[-1]) if n else 0.0,
        "has_audio": bool(getattr(source, "has_audio", False)),
        "audio_note": getattr(source, "audio_note", None),
        "face_detected_fraction": float(result.face.mean()) if n else 0.0,
        "audio_present_fraction": float(result.audio.mean()) if n else 0.0,
        "emotions": {
            name: {
                "mean": float(values[:, i].mean()),
                "max": float(values[:, i].max()),
                "p95": float(np.percentile(values[:, i], 95)),
            }
            if n
            else {}
            for i, name in enumerate(EMOTIONS)
        },
        "wall_s": wall_s,
        "fps": n / wall_s if wall_s > 0 else None,
        "stages_ms": {s: percentiles(v) for s, v in result.stages_ms.items() if v},
        "source_stats": source.stats() if hasattr(source, "stats") else {},
        "face_tracker": engine.tracker.stats() if engine.tracker is not None else {},
        "audio_gaps": engine.audio_gaps,
        "notes": list(bundle.notes),
        "error": result.error,
    }
