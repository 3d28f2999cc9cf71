"""Training curves: the per-epoch history as ``curves.csv`` and ``curves.png``.

A history is a list of dicts, one per epoch, in order, e.g. ``{"stage": "visual", "epoch": 3,
"train_loss": 0.041, "val_loss": 0.044, "val_mean_pcc": 0.21, "lr": 1e-4}``. Any keys are kept
in the CSV (columns in first-seen order, empty where an epoch lacks one). The plot has one panel
for keys containing ``loss``, one for correlations (keys containing ``pcc`` or ``ccc``) and one
for ``lr`` (log scale) when present; the x axis counts epochs over all stages, with the stages of
a staged recipe (a ``stage`` key) separated by dashed lines.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from eri.realtime.outputs import OutputWriteError

CURVES_CSV = "curves.csv"
CURVES_PNG = "curves.png"


def _columns(history: Sequence[dict[str, Any]]) -> list[str]:
    cols = list(dict.fromkeys(k for row in history for k in row))
    for first in ("epoch", "stage"):
        if first in cols:
            cols.insert(0, cols.pop(cols.index(first)))
    return cols


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary sibling, then rename it onto ``path`` (parents created)."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise OutputWriteError(
            f"Cannot write {path} ({exc.strerror}); choose a writable output folder."
        ) from None


def write_curves(history: Sequence[dict[str, Any]], out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``out_dir/curves.csv`` and ``out_dir/curves.png`` (each atomically, so a run
    killed mid-write keeps the previous epoch's files); returns their paths."""
    if not history:
        raise ValueError("write_curves needs at least one epoch of history.")
    out_dir = Path(out_dir)
    cols = _columns(history)
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(cols)
    for row in history:
        writer.writerow([_cell(row.get(c)) for c in cols])
    csv_path = out_dir / CURVES_CSV
    write_atomic(csv_path, text.getvalue().encode())
    png_path = out_dir / CURVES_PNG
    write_atomic(png_path, _plot(history, cols))
    return csv_path, png_path


def _panels(history: Sequence[dict[str, Any]], cols: list[str]) -> list[tuple[str, list[str]]]:
    numeric = [c for c in cols if c != "epoch" and any(_is_number(r.get(c)) for r in history)]
    losses = [c for c in numeric if "loss" in c]
    corr = [c for c in numeric if c not in losses and ("pcc" in c or "ccc" in c)]
    panels = [
        ("loss", losses),
        ("correlation", corr),
        ("learning rate", [c for c in numeric if c == "lr"]),
    ]
    return [(name, keys) for name, keys in panels if keys]


def _plot(history: Sequence[dict[str, Any]], cols: list[str]) -> bytes:
    """The PNG bytes of the curves."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    panels = _panels(history, cols) or [("(no numeric curves)", [])]
    x = list(range(1, len(history) + 1))
    fig, axes = plt.subplots(
        len(panels), 1, figsize=(9, 2.6 * len(panels) + 0.6), sharex=True, constrained_layout=True
    )
    axes = list(axes) if len(panels) > 1 else [axes]
    colours = plt.get_cmap("tab10").colors
    stages = [r.get("stage") for r in history]
    bounds = [i for i in range(1, len(stages)) if stages[i] != stages[i - 1]]
    for ax, (name, keys) in zip(axes, panels):
        for j, key in enumerate(keys):
            y = [float(r[key]) if _is_number(r.get(key)) else math.nan for r in history]
            ax.plot(
                x, y, color=colours[j % 10], lw=1.4, marker="." if len(x) < 40 else None, label=key
            )
        if name == "learning rate":
            ax.set_yscale("log")
        for b in bounds:
            ax.axvline(b + 0.5, color="0.5", ls="--", lw=0.8)
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        if keys:
            ax.legend(loc="best", fontsize=8)
    if any(s is not None for s in stages):
        starts = [0, *bounds]
        for a, b in zip(starts, [*bounds, len(stages)]):
            axes[0].text(
                (a + b) / 2 + 0.5,
                1.02,
                str(stages[a]),
                transform=axes[0].get_xaxis_transform(),
                ha="center",
                va="bottom",
                fontsize=8,
            )
    axes[-1].set_xlabel("epoch (all stages)" if bounds else "epoch")
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=100)
    finally:
        plt.close(fig)
    return buf.getvalue()
