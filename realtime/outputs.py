"""What the pipeline writes: the predictions CSV (docs/design.md, "CSV columns") and the plot.

The CSV row is defined here once: :data:`CSV_COLUMNS` and :func:`prediction_row`.
"""

from __future__ import annotations

import csv
import logging
import textwrap
import threading
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from eri.errors import EriError
from eri.models.spec import EMOTIONS

log = logging.getLogger(__name__)

#: The CSV's columns: four per output step, then one intensity in [0, 1] per emotion.
CSV_COLUMNS: tuple[str, ...] = (
    "time_s",
    "frame_index",
    "face_detected",
    "audio_present",
    *EMOTIONS,
)
#: Index of the first emotion column in a row.
FIRST_EMOTION = CSV_COLUMNS.index(EMOTIONS[0])
FLUSH_EVERY_S = 1.0


def prediction_row(
    time_s: float,
    frame_index: int,
    face_detected: bool,
    audio_present: bool,
    intensities: Sequence[float] | np.ndarray,
) -> list[float | int]:
    """One output step as a row in :data:`CSV_COLUMNS` order: time in s (rounded to 0.1 ms),
    frame index, face and audio flags as 0/1, then ``intensities`` [>= 7], one per EMOTIONS."""
    values = [float(v) for v in intensities[: len(EMOTIONS)]]
    if len(values) != len(EMOTIONS):
        raise ValueError(f"A row needs {len(EMOTIONS)} intensities, got {len(values)}.")
    return [
        round(time_s, 4),
        frame_index,
        int(face_detected),
        int(audio_present),
        *values,
    ]


def format_row(row: Sequence[float | int]) -> list[str | int]:
    """A :func:`prediction_row` as the CSV writes it (4 decimals of time, 6 of intensity)."""
    t, index, face, audio, *values = row
    return [f"{t:.4f}", index, face, audio, *(f"{v:.6f}" for v in values)]


class OutputWriteError(EriError, OSError):
    """An output file cannot be written; the message names it and the fix."""


def open_for_writing(path: str | Path, what: str):
    """Open ``path`` for text writing (parents created) or say clearly why not."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return path.open("w", newline="")
    except OSError as exc:
        raise OutputWriteError(
            f"Cannot write the {what} {path} ({exc.strerror}); choose a writable location."
        ) from None


class PredictionWriter:
    """Writes one CSV row per output step, flushed at least once a second."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._file = open_for_writing(self.path, "predictions CSV")
        self._csv = csv.writer(self._file, lineterminator="\n")
        self._csv.writerow(CSV_COLUMNS)
        self._last_flush = time.monotonic()
        self.rows = 0

    def write(self, row: Sequence[float | int]) -> None:
        self._csv.writerow(format_row(row))
        self.rows += 1
        now = time.monotonic()
        if now - self._last_flush >= FLUSH_EVERY_S:
            self._file.flush()
            self._last_flush = now

    def close(self) -> None:
        if not self._file.closed:
            self._file.flush()
            self._file.close()

    def __enter__(self) -> PredictionWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_predictions(path: str | Path) -> dict[str, np.ndarray]:
    """A predictions CSV as columns: {name: array [rows]}."""
    with Path(path).open(newline="") as f:
        header = next(csv.reader(f), [])
        if tuple(header) != CSV_COLUMNS:
            raise ValueError(f"{path} has columns {header}, not {list(CSV_COLUMNS)}.")
        # np.loadtxt parses a 30-minute session (54,000 rows) about 3x faster than csv.reader.
        with warnings.catch_warnings():  # a session without rows: "input contained no data"
            warnings.simplefilter("ignore", UserWarning)
            data = np.loadtxt(f, delimiter=",", dtype=np.float64, ndmin=2)
    data = data.reshape(-1, len(header))
    return {name: data[:, i] for i, name in enumerate(header)}


def spans(
    times: np.ndarray, mask: np.ndarray, *, close_after_last: bool = False
) -> list[tuple[float, float]]:
    """Contiguous (start, end) time spans where ``mask`` [N] is True over ``times`` [N]; a span
    ends at the time of the first sample after it. One that runs to the end closes at the last
    time (the viewer's shading), or with ``close_after_last`` one frame period after it (the
    report, so a lost last frame still shows)."""
    times = np.asarray(times, dtype=np.float64)
    mask = np.asarray(mask, dtype=bool)
    if times.size == 0 or not mask.any():
        return []
    edges = np.flatnonzero(np.diff(np.concatenate(([False], mask, [False])).astype(np.int8)))
    starts, ends = edges[::2], edges[1::2]  # ends exclusive
    last = times[-1]
    if close_after_last:
        last += times[-1] - times[-2] if len(times) > 1 else 0.04
    end_times = np.append(times, last)[ends]
    return [(float(a), float(b)) for a, b in zip(times[starts], end_times)]


def _spans(times: np.ndarray, mask: np.ndarray) -> list[tuple[float, float]]:
    """:func:`spans` as the report draws them (a run to the end closes a frame period later)."""
    return spans(times, mask, close_after_last=True)


def envelope(times: np.ndarray, values: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """A long curve reduced for drawing: times [N], values [N, C] -> at most ``2 * bins``
    points per column, each of ``bins`` consecutive runs of samples kept as its minimum and
    maximum (at their own times, in time order), so a plot ``bins`` pixels wide looks the same.
    Curves of at most ``2 * bins`` points come back unchanged. Returns times [M, C] and
    values [M, C]."""
    n = len(times)
    values = np.asarray(values).reshape(n, -1)
    cols = values.shape[1]
    if n <= 2 * bins:
        return np.repeat(np.asarray(times)[:, None], cols, axis=1), values
    edges = np.linspace(0, n, bins + 1).astype(np.int64)
    lo = np.minimum.reduceat(values, edges[:-1], axis=0)  # [bins, C]
    hi = np.maximum.reduceat(values, edges[:-1], axis=0)
    idx = np.arange(n)[:, None]
    # Index of each run's minimum and maximum: the first sample equal to it in the run.
    run = np.repeat(np.arange(bins), np.diff(edges))
    at_lo = np.where(values == lo[run], idx, n)
    at_hi = np.where(values == hi[run], idx, n)
    i_lo = np.minimum.reduceat(at_lo, edges[:-1], axis=0)
    i_hi = np.minimum.reduceat(at_hi, edges[:-1], axis=0)
    first, second = np.minimum(i_lo, i_hi), np.maximum(i_lo, i_hi)
    order = np.stack([first, second], axis=1).reshape(2 * bins, cols)  # time order per column
    return np.asarray(times)[order], np.take_along_axis(values, order, axis=0)


#: Horizontal resolution the report's curves are reduced to (:func:`envelope`): about the
#: plot's width in pixels at its size and dpi.
REPORT_BINS = 1000


#: pyplot keeps global state: one figure at a time per process.
_PLOT_LOCK = threading.Lock()


def warm_up_plotting() -> None:
    """Import matplotlib and draw a tiny figure (fonts, text layout): a process's first figure
    costs ~0.4 s more than the next. The recorder runs this in the background at start, so
    closing a session does not pay it."""
    import io

    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    with _PLOT_LOCK:
        fig, ax = plt.subplots(figsize=(1, 1))
        ax.set_title("warm-up")
        fig.savefig(io.BytesIO(), format="png", dpi=10)
        plt.close(fig)


def plot_curves(
    times: np.ndarray,
    intensities: np.ndarray,
    face: np.ndarray,
    path: str | Path,
    *,
    title: str,
    subtitle: str = "",
    has_video: bool = True,
) -> Path:
    """PNG of the seven curves [N, 7] over time [N], face-lost spans shaded grey (only for a
    source with video: an audio-only source has no face to lose)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    path = Path(path)
    with _PLOT_LOCK:
        fig, axes = plt.subplots(
            len(EMOTIONS), 1, figsize=(11, 9), sharex=True, constrained_layout=True
        )
        colours = plt.get_cmap("tab10").colors
        lost = _spans(times, face < 0.5) if has_video and len(times) else []
        bars = [(a, b - a) for a, b in lost]
        line_t, line_y = envelope(times, intensities, REPORT_BINS)
        for i, (ax, name) in enumerate(zip(axes, EMOTIONS)):
            if bars:  # one collection per axis: thousands of spans draw as fast as one
                ax.broken_barh(
                    bars, (0, 1), color="0.85", lw=0, label="face lost" if i == 0 else None
                )
            ax.plot(line_t[:, i], line_y[:, i], color=colours[i % 10], lw=1.4)
            ax.set_ylim(0, 1)
            ax.set_ylabel(name.replace("_", " "), rotation=0, ha="right", va="center")
            ax.grid(alpha=0.3)
            ax.set_yticks([0, 0.5, 1])
        axes[-1].set_xlabel("time (s)")
        if lost:
            axes[0].legend(loc="upper right", fontsize=8)
        wrapped = "\n".join(textwrap.wrap(subtitle, 110)) if subtitle else ""
        fig.suptitle(title + (f"\n{wrapped}" if wrapped else ""), fontsize=10)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fig.savefig(path, dpi=100)
        except OSError as exc:
            raise OutputWriteError(
                f"Cannot write the plot {path} ({exc.strerror}); choose a writable location."
            ) from None
        finally:
            plt.close(fig)
    return path
