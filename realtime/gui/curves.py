"""The seven scrolling curves (fixed order, names and colours), face-lost shading, markers, and
the current values as bars: :class:`CurvesWidget`.

The data live in growing numpy arrays; a redraw hands pyqtgraph only the visible slice (the
last ``window_s`` seconds before the view's end), as pyqtgraph's scrolling-plot examples do.
"""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6 import QtCore, QtGui, QtWidgets

from eri.models.spec import EMOTIONS
from eri.realtime.outputs import spans

#: One colour per emotion, in EMOTIONS order (Tableau 10, readable on a dark background).
COLORS: tuple[str, ...] = (
    "#ff9da7",  # adoration
    "#edc948",  # amusement
    "#59a14f",  # anxiety
    "#b07aa1",  # disgust
    "#f28e2b",  # empathic_pain
    "#4e79a7",  # fear
    "#76b7b2",  # surprise
)
SHORT_NAMES: tuple[str, ...] = ("ad", "am", "an", "di", "em", "fe", "su")
FACE_LOST_BRUSH = (200, 60, 60, 60)
DEFAULT_WINDOW_S = 30.0


class CurvesWidget(QtWidgets.QWidget):
    """Seven intensity curves over the last ``window_s`` seconds, with bars of the newest values."""

    def __init__(self, window_s: float = DEFAULT_WINDOW_S, parent=None) -> None:
        super().__init__(parent)
        self.window_s = float(window_s)
        self.graphics = pg.GraphicsLayoutWidget()
        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.graphics)

        self.plot = self.graphics.addPlot(row=0, col=0)
        self.plot.setLabel("bottom", "time", units="s")
        self.plot.setLabel("left", "intensity")
        self.plot.setYRange(0.0, 1.0, padding=0.02)
        self.plot.setMouseEnabled(x=False, y=False)
        self.plot.hideButtons()
        # No grid and 1 px pens: wider lines and a grid that moves every frame cost 30-40 ms a
        # redraw in Qt's software rasteriser (docs/benchmarks.md, "The viewer").
        self.legend = self.plot.addLegend(offset=(8, 8), labelTextSize="9pt")
        self.legend.setColumnCount(4)
        self.curves = [
            self.plot.plot(pen=pg.mkPen(color, width=1), name=name)
            for name, color in zip(EMOTIONS, COLORS)
        ]

        self.bars_plot = self.graphics.addPlot(row=0, col=1)
        self.bars_plot.setYRange(0.0, 1.0, padding=0.02)
        self.bars_plot.setXRange(-0.6, len(EMOTIONS) - 0.4, padding=0)
        self.bars_plot.setMouseEnabled(x=False, y=False)
        self.bars_plot.hideButtons()
        self.bars_plot.getAxis("bottom").setTicks([list(enumerate(SHORT_NAMES))])
        self.bars_plot.setTitle("now")
        self.bars = pg.BarGraphItem(
            x=np.arange(len(EMOTIONS)),
            height=np.zeros(len(EMOTIONS)),
            width=0.7,
            brushes=[pg.mkBrush(c) for c in COLORS],
        )
        self.bars_plot.addItem(self.bars)
        self.graphics.ci.layout.setColumnStretchFactor(0, 5)
        self.graphics.ci.layout.setColumnStretchFactor(1, 1)
        self.bars_plot.setMinimumWidth(150)

        self._regions: list[pg.LinearRegionItem] = []
        self.markers: list[tuple[float, str]] = []
        self._marker_lines: list[pg.InfiniteLine] = []
        self.clear()

    # ------------------------------------------------------------------ data
    def clear(self) -> None:
        """Forget every point and marker."""
        self._n = 0
        self._t = np.empty(1024, np.float64)
        self._v = np.empty((1024, len(EMOTIONS)), np.float32)
        self._face = np.empty(1024, bool)
        for line in self._marker_lines:
            self.plot.removeItem(line)
        self._marker_lines.clear()
        self.markers.clear()
        self.redraw()

    @property
    def point_count(self) -> int:
        """Points added so far (each curve has this many)."""
        return self._n

    @property
    def times(self) -> np.ndarray:
        return self._t[: self._n]

    @property
    def values(self) -> np.ndarray:
        return self._v[: self._n]

    def append(self, times: np.ndarray, values: np.ndarray, faces: np.ndarray) -> None:
        """Add points: times [n] s, values [n, 7], faces [n] bool (face found)."""
        n = len(times)
        if n == 0:
            return
        need = self._n + n
        if need > len(self._t):
            size = max(need, 2 * len(self._t))
            self._t = np.resize(self._t, size)
            self._v = np.resize(self._v, (size, len(EMOTIONS)))
            self._face = np.resize(self._face, size)
        self._t[self._n : need] = times
        self._v[self._n : need] = values
        self._face[self._n : need] = faces
        self._n = need

    def set_data(self, times: np.ndarray, values: np.ndarray, faces: np.ndarray) -> None:
        """Replace every point (a replayed session)."""
        self._n = 0
        self.append(np.asarray(times), np.asarray(values), np.asarray(faces, bool))

    def add_marker(self, time_s: float, label: str = "") -> None:
        """A vertical line at ``time_s`` with ``label`` (or "M")."""
        self.markers.append((float(time_s), label))
        line = pg.InfiniteLine(
            pos=time_s,
            angle=90,
            movable=False,
            pen=pg.mkPen("w", width=1, style=QtCore.Qt.PenStyle.DashLine),
            label=label or "M",
            labelOpts={"position": 0.95, "color": "w", "fill": (0, 0, 0, 120)},
        )
        self._marker_lines.append(line)
        self.plot.addItem(line)

    def set_window(self, seconds: float) -> None:
        self.window_s = max(1.0, float(seconds))
        self.redraw()

    def legend_names(self) -> list[str]:
        """The legend's labels, in order."""
        return [label.text for _, label in self.legend.items]

    # ------------------------------------------------------------------ drawing
    def redraw(self, end_s: float | None = None) -> None:
        """Show the ``window_s`` seconds ending at ``end_s`` (default: the newest point)."""
        t = self._t[: self._n]
        if end_s is None:
            end_s = float(t[-1]) if self._n else self.window_s
        first = float(t[0]) if self._n else 0.0
        view_end = max(end_s, first + self.window_s)  # the first window fills from the left
        start_s = view_end - self.window_s
        lo = int(np.searchsorted(t, start_s, side="left"))
        hi = int(np.searchsorted(t, end_s, side="right"))
        lo = max(0, lo - 1)  # one point before the left edge so the line reaches it
        visible_t = t[lo:hi]
        for i, curve in enumerate(self.curves):
            curve.setData(visible_t, self._v[lo:hi, i])
        self.plot.setXRange(start_s, view_end, padding=0)
        self.bars.setOpts(height=self._v[hi - 1] if hi > 0 else np.zeros(len(EMOTIONS)))
        self._shade(visible_t, ~self._face[lo:hi])

    def _shade(self, times: np.ndarray, lost: np.ndarray) -> None:
        found = spans(times, lost)
        while len(self._regions) < len(found):
            region = pg.LinearRegionItem(
                movable=False, brush=pg.mkBrush(FACE_LOST_BRUSH), pen=pg.mkPen(None)
            )
            region.setZValue(-10)
            self.plot.addItem(region)
            self._regions.append(region)
        for region, (a, b) in zip(self._regions, found):
            region.setRegion((a, b))
            region.show()
        for region in self._regions[len(found) :]:
            region.hide()

    def face_lost_spans(self) -> list[tuple[float, float]]:
        """The shaded spans now shown."""
        return [r.getRegion() for r in self._regions if r.isVisible()]

    def save_png(self, path: str) -> bool:
        """Save the curves (as shown) to a PNG."""
        pixmap: QtGui.QPixmap = self.grab()
        return pixmap.save(str(path), "PNG", 0)  # 0: smallest file
