"""The calibration cache: one directory per calibration, reused while it matches the model.

    CALIB/calibration.json        format, architecture, weights hash, method, source, counts
    CALIB/data.npz                the calibration set: faces [N, 3, S, S], head windows
    CALIB/heldout.npz             held-out faces and windows (never calibrated on; the check)
    CALIB/ranges_<graph>.json     ONNX Runtime's tensor ranges for that graph and method

The data are reused when the weights hash matches (the windows hold the model's own features);
the ranges only when the method and the graph version (:data:`eri.models.export.GRAPH_VERSION`:
ranges are per tensor name of the exported graphs) match too. A mismatch is logged and
recomputed, or refused when there is nothing to recompute from.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from eri.calibration.data import CalibrationError, CalibrationSet
from eri.models.export import FACES, GRAPH_FILES, GRAPH_VERSION

log = logging.getLogger(__name__)

CACHE_FORMAT = 1
CACHE_JSON, CACHE_DATA, CACHE_HELD_OUT = "calibration.json", "data.npz", "heldout.npz"


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

    @property
    def held_out_path(self) -> Path:
        return self.root / CACHE_HELD_OUT

    def ranges_path(self, graph: str) -> Path:
        return self.root / f"ranges_{graph}.json"

    def meta(self) -> dict[str, Any] | None:
        """calibration.json, or None when absent or unreadable (logged)."""
        if not self.json_path.is_file():
            return None
        try:
            meta = json.loads(self.json_path.read_text())
        except (OSError, ValueError) as exc:
            return self._stale("is unreadable (%s)", exc)
        if not isinstance(meta, dict):
            return self._stale("is unreadable (not a JSON object)")
        if meta.get("format") != CACHE_FORMAT:
            return self._stale("has format %s, not %s", meta.get("format"), CACHE_FORMAT)
        return meta

    def _stale(self, why: str, *args: Any) -> None:
        """Log why the cache is not used ("calibration cache ROOT <why>; recomputing")."""
        log.warning("calibration cache %s " + why + "; recomputing", self.root, *args)

    def load(self, weights: str) -> CalibrationSet | None:
        """The cached set when it was made for ``weights``; else None (mismatch logged)."""
        meta = self.meta()
        if meta is None or not self.data_path.is_file():
            return None
        if meta.get("weights") != weights:
            return self._stale(
                "was made for weights %s, this model has %s", meta.get("weights"), weights
            )
        data = self._read(self.data_path, meta)
        log.info(
            "calibration: reusing %s (%d crops, %d windows)",
            self.root,
            data.num_faces,
            data.num_windows,
        )
        return data

    def load_held_out(self, weights: str) -> CalibrationSet | None:
        """The held-out set saved beside the calibration set for ``weights``, else None."""
        meta = self.meta()
        if meta is None or meta.get("weights") != weights or not self.held_out_path.is_file():
            return None
        return self._read(self.held_out_path, meta)

    def _read(self, path: Path, meta: dict[str, Any]) -> CalibrationSet:
        try:
            with np.load(path) as npz:
                arrays = {k: npz[k] for k in npz.files}
        except (OSError, ValueError) as exc:
            raise CalibrationError(
                f"Calibration cache {self.root} is damaged ({path.name}: {exc}); run "
                "`eri calibrate` again."
            ) from None
        if FACES not in arrays:
            raise CalibrationError(
                f"Calibration cache {self.root} has no face crops in {path.name}; run "
                "`eri calibrate` again."
            )
        faces = arrays.pop(FACES)
        return CalibrationSet(faces, arrays, f"{self.root}", meta.get("info", {}))

    def save(
        self,
        data: CalibrationSet,
        *,
        weights: str,
        architecture: str,
        held_out: CalibrationSet | None = None,
    ) -> None:
        """Write the set (and a ``held_out`` set for checking) and its json, replacing any
        previous calibration and its ranges."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.json_path.unlink(missing_ok=True)  # until rewritten below: no calibration here
        for graph in GRAPH_FILES:
            self.ranges_path(graph).unlink(missing_ok=True)
        self.held_out_path.unlink(missing_ok=True)
        for part, path in ((data, self.data_path), (held_out, self.held_out_path)):
            if part is None:
                continue
            tmp = path.with_name(path.stem + ".tmp.npz")
            np.savez(tmp, **{FACES: part.faces}, **part.windows)
            os.replace(tmp, path)
        meta = {
            "format": CACHE_FORMAT,
            "architecture": architecture,
            "weights": weights,
            "method": None,
            "source": data.source,
            "faces": data.num_faces,
            "windows": data.num_windows,
            "held_out": None
            if held_out is None
            else {"faces": held_out.num_faces, "windows": held_out.num_windows},
            "info": data.info,
        }
        self._write_meta(meta)

    def ranges_for(self, graph: str, weights: str, method: str) -> Path:
        """Where ``graph``'s ranges for ``method`` live; stale ranges (other weights, method or
        graph version) are deleted with a log line, so the caller recomputes them here."""
        path = self.ranges_path(graph)
        meta = self.meta() or {}
        ranges = meta.get("ranges", {})
        version = meta.get("graph_version", 1)
        if path.is_file() and (
            meta.get("weights") != weights
            or ranges.get(graph) != method
            or version != GRAPH_VERSION
        ):
            log.info(
                "calibration: %s ranges in %s were computed with %s for weights %s and graph "
                "version %s; recomputing with %s",
                graph,
                self.root,
                ranges.get(graph),
                meta.get("weights"),
                version,
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
        if meta.get("graph_version", 1) != GRAPH_VERSION:  # older graphs' ranges: none apply
            meta["ranges"] = {}
        meta.setdefault("ranges", {})[graph] = method
        meta["method"] = method
        meta["graph_version"] = GRAPH_VERSION
        self._write_meta(meta)

    def _write_meta(self, meta: dict[str, Any]) -> None:
        tmp = self.json_path.with_name(CACHE_JSON + ".tmp")
        tmp.write_text(json.dumps(meta, indent=2) + "\n")
        os.replace(tmp, self.json_path)
