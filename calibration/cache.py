"""The calibration cache: one directory per calibration, reused while it matches the model.

    CALIB/calibration.json        format, architecture, weights hash, method, source, counts
    CALIB/data.npz                the calibration set: faces [N, 3, S, S], head windows
    CALIB/ranges_<graph>.json     ONNX Runtime's tensor ranges for that graph and method

The data are reused when the weights hash matches (the windows hold the model's own features);
the ranges only when the method matches too. A mismatch is logged and recomputed, or refused
when there is nothing to recompute from.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from eri.calibration.data import CalibrationError, CalibrationSet
from eri.models.export import FACES

log = logging.getLogger(__name__)

CACHE_FORMAT = 1
CACHE_JSON, CACHE_DATA = "calibration.json", "data.npz"


class CalibrationCache:
    """A calibration directory (see the module docstring)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    @property
    def json_path(self) -> Path:
        return self.root / CACHE_JSON

    @property
    def data_path(self) -> Path:
        return self.root / CACHE_DATA

    def ranges_path(self, graph: str) -> Path:
        return self.root / f"ranges_{graph}.json"

    def meta(self) -> dict[str, Any] | None:
        """calibration.json, or None when absent or unreadable (logged)."""
        if not self.json_path.is_file():
            return None
        try:
            meta = json.loads(self.json_path.read_text())
        except (OSError, ValueError) as exc:
            log.warning("calibration cache %s is unreadable (%s); recomputing", self.root, exc)
            return None
        if meta.get("format") != CACHE_FORMAT:
            log.warning(
                "calibration cache %s has format %s, not %s; recomputing",
                self.root,
                meta.get("format"),
                CACHE_FORMAT,
            )
            return None
        return meta

    def load(self, weights: str) -> CalibrationSet | None:
        """The cached set when it was made for ``weights``; else None (mismatch logged)."""
        meta = self.meta()
        if meta is None or not self.data_path.is_file():
            return None
        if meta.get("weights") != weights:
            log.warning(
                "calibration cache %s was made for weights %s, this model has %s; recomputing",
                self.root,
                meta.get("weights"),
                weights,
            )
            return None
        with np.load(self.data_path) as npz:
            arrays = {k: npz[k] for k in npz.files}
        faces = arrays.pop(FACES)
        log.info(
            "calibration: reusing %s (%d crops, %d windows)", self.root, len(faces), len(arrays)
        )
        return CalibrationSet(faces, arrays, meta.get("source", "cache"), meta.get("info", {}))

    def save(self, data: CalibrationSet, *, weights: str, architecture: str) -> None:
        """Write the set and its json (replacing any previous calibration and its ranges)."""
        self.root.mkdir(parents=True, exist_ok=True)
        for graph in ("frame_encoder", "head"):
            self.ranges_path(graph).unlink(missing_ok=True)
        tmp = self.data_path.with_name(CACHE_DATA + ".tmp.npz")
        np.savez(tmp, **{FACES: data.faces}, **data.windows)
        os.replace(tmp, self.data_path)
        meta = {
            "format": CACHE_FORMAT,
            "architecture": architecture,
            "weights": weights,
            "method": None,
            "source": data.source,
            "faces": data.num_faces,
            "windows": data.num_windows,
            "info": data.info,
        }
        self._write_meta(meta)

    def ranges_for(self, graph: str, weights: str, method: str) -> Path:
        """Where ``graph``'s ranges for ``method`` live; stale ranges (other weights or method)
        are deleted with a log line, so the caller recomputes them into this path."""
        path = self.ranges_path(graph)
        meta = self.meta() or {}
        ranges = meta.get("ranges", {})
        if path.is_file() and (meta.get("weights") != weights or ranges.get(graph) != method):
            log.info(
                "calibration: %s ranges in %s were computed with %s for weights %s; "
                "recomputing with %s",
                graph,
                self.root,
                ranges.get(graph),
                meta.get("weights"),
                method,
            )
            path.unlink()
        return path

    def record_ranges(self, graph: str, weights: str, method: str) -> None:
        """Note in calibration.json that ``graph``'s ranges file holds ``method``'s ranges."""
        meta = self.meta() or {"format": CACHE_FORMAT, "weights": weights}
        if meta.get("weights") != weights:
            raise CalibrationError(
                f"Calibration cache {self.root} belongs to other weights; delete it or run "
                "`eri calibrate` again."
            )
        meta.setdefault("ranges", {})[graph] = method
        meta["method"] = method
        self._write_meta(meta)

    def _write_meta(self, meta: dict[str, Any]) -> None:
        tmp = self.json_path.with_name(CACHE_JSON + ".tmp")
        tmp.write_text(json.dumps(meta, indent=2) + "\n")
        os.replace(tmp, self.json_path)
