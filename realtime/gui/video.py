"""The camera image with the tracked face box and landmarks: :class:`VideoWidget`.

A left click on the image emits :attr:`VideoWidget.clicked` with the point in image pixels
(the main window asks the tracker to follow the face there).
"""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6 import QtCore, QtGui, QtWidgets

FACE_PEN = (80, 230, 80)
HELD_PEN = (240, 170, 40)


class VideoWidget(pg.GraphicsLayoutWidget):
    """Shows RGB frames [H, W, 3] uint8, a face box and landmark points."""

    clicked = QtCore.Signal(float, float)

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.setMinimumSize(320, 180)
        self.vb = self.addViewBox(lockAspect=True, invertY=True, enableMouse=False)
        self.vb.setMenuEnabled(False)
        self.image = pg.ImageItem(axisOrder="row-major")
        self.vb.addItem(self.image)
        self.box = QtWidgets.QGraphicsRectItem()
        pen = pg.mkPen(FACE_PEN, width=3)
        pen.setCosmetic(True)
        self.box.setPen(pen)
        self.box.setBrush(QtGui.QBrush(QtCore.Qt.BrushStyle.NoBrush))
        self.box.hide()
        self.vb.addItem(self.box)
        self.landmarks = pg.ScatterPlotItem(
            size=7, brush=pg.mkBrush(255, 255, 255, 220), pen=pg.mkPen(FACE_PEN, width=1)
        )
        self.vb.addItem(self.landmarks)
        self.label = pg.TextItem("", color=(255, 255, 255), fill=(0, 0, 0, 140), anchor=(0, 0))
        self.vb.addItem(self.label)
        self._shape: tuple[int, int] | None = None
        self.frames_shown = 0
        self.scene().sigMouseClicked.connect(self._on_click)

    def show_image(self, image: np.ndarray) -> None:
        """Show an RGB frame [H, W, 3] uint8."""
        self.image.setImage(image, autoLevels=False, levels=(0, 255))
        shape = image.shape[:2]
        if shape != self._shape:
            self._shape = shape
            self.vb.setRange(xRange=(0, shape[1]), yRange=(0, shape[0]), padding=0)
        self.label.setPos(4, 4)
        self.frames_shown += 1

    def show_face(
        self,
        box: tuple[float, float, float, float] | None,
        points: np.ndarray | None = None,
        *,
        detected: bool = True,
        text: str = "",
    ) -> None:
        """The face box (x0, y0, x1, y1) in image pixels and landmarks [K, 2]; None hides them.
        ``detected`` False draws the box as held (the face is briefly lost)."""
        if box is None:
            self.box.hide()
            self.landmarks.setData([], [])
        else:
            x0, y0, x1, y1 = box
            pen = self.box.pen()
            pen.setColor(QtGui.QColor(*(FACE_PEN if detected else HELD_PEN)))
            self.box.setPen(pen)
            self.box.setRect(QtCore.QRectF(x0, y0, x1 - x0, y1 - y0))
            self.box.show()
            if points is not None and len(points):
                self.landmarks.setData(points[:, 0], points[:, 1])
            else:
                self.landmarks.setData([], [])
        self.label.setText(text)

    def box_rect(self) -> tuple[float, float, float, float] | None:
        """The box now shown (x0, y0, x1, y1), or None."""
        if not self.box.isVisible():
            return None
        r = self.box.rect()
        return (r.left(), r.top(), r.right(), r.bottom())

    def image_to_viewport(self, x: float, y: float) -> QtCore.QPoint:
        """Widget (viewport) coordinates of image pixel (x, y), e.g. to simulate a click."""
        scene = self.vb.mapViewToScene(QtCore.QPointF(x, y))
        return self.mapFromScene(scene)

    def _on_click(self, event) -> None:
        if event.button() != QtCore.Qt.MouseButton.LeftButton or self._shape is None:
            return
        p = self.vb.mapSceneToView(event.scenePos())
        h, w = self._shape
        if 0 <= p.x() < w and 0 <= p.y() < h:
            self.clicked.emit(float(p.x()), float(p.y()))
