"""The self-report dialog: seven 1-100 sliders, as in the Hume-Reaction protocol, where each
subject rated how strongly they felt each emotion after a stimulus."""

from __future__ import annotations

from PySide6 import QtCore, QtWidgets

from eri.models.spec import EMOTIONS

SCALE = (1, 100)


class SelfReportDialog(QtWidgets.QDialog):
    """Ask "how strongly did you feel ...?" for each of the seven emotions, 1-100."""

    def __init__(self, parent=None, initial: dict[str, int] | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("How did you feel?")
        layout = QtWidgets.QVBoxLayout(self)
        layout.addWidget(
            QtWidgets.QLabel(
                "How strongly did you feel each emotion during the recording?\n"
                f"{SCALE[0]} = not at all, {SCALE[1]} = extremely."
            )
        )
        grid = QtWidgets.QGridLayout()
        self.sliders: dict[str, QtWidgets.QSlider] = {}
        for row, name in enumerate(EMOTIONS):
            slider = QtWidgets.QSlider(QtCore.Qt.Orientation.Horizontal)
            slider.setRange(*SCALE)
            slider.setValue(int((initial or {}).get(name, SCALE[0])))
            value = QtWidgets.QLabel(str(slider.value()))
            value.setMinimumWidth(28)
            slider.valueChanged.connect(lambda v, label=value: label.setText(str(v)))
            grid.addWidget(QtWidgets.QLabel(name.replace("_", " ")), row, 0)
            grid.addWidget(slider, row, 1)
            grid.addWidget(value, row, 2)
            self.sliders[name] = slider
        layout.addLayout(grid)
        buttons = QtWidgets.QDialogButtonBox(
            QtWidgets.QDialogButtonBox.StandardButton.Save
            | QtWidgets.QDialogButtonBox.StandardButton.Cancel
        )
        buttons.button(QtWidgets.QDialogButtonBox.StandardButton.Cancel).setText("Skip")
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        layout.addWidget(buttons)
        self.resize(420, self.sizeHint().height())

    def values(self) -> dict[str, int]:
        """{emotion: 1..100} in EMOTIONS order."""
        return {name: int(self.sliders[name].value()) for name in EMOTIONS}
