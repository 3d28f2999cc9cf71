"""The desktop viewer, ``eri view``: PySide6 + pyqtgraph (docs/design.md, "The data path").

One job per module:

- ``app``: :class:`ViewerOptions` and :func:`run_viewer` (the QApplication, ``--exit-after``,
  ``--screenshot``, Ctrl-C).
- ``main_window``: :class:`ViewerWindow`, which puts the parts together and owns the redraw timer.
- ``curves``: the seven scrolling curves, face-lost shading, markers and the current-value bars.
- ``video``: the camera image with the tracked face box and landmarks; a click selects a face.
- ``controls``: source / microphone / model / backend pickers, start-stop, record, marker, PNG.
- ``worker``: :class:`PipelineWorker`, the thread bridge: model loading, capture and inference
  off the GUI thread; outputs through a bounded queue, the newest frame through a newest-wins
  slot (the python-sounddevice ``plot_input.py`` pattern: producers only copy, a GUI timer
  drains).
- ``recording``: the window's recording half (a session recorder attached to the pipeline,
  finished on stop, at the source's end or when a write fails).
- ``replay``, ``replay_mode``: a recorded session played back from its video, stored curves,
  markers and audio; ``replay_audio``: the replay clock and the sound, through sounddevice.
- ``self_report``: the seven 1-100 sliders of the Hume-Reaction protocol.

Importing this package does not import Qt; :func:`require_qt` says how to install it.
"""

from __future__ import annotations

import sys

from eri.errors import EriError, missing_dependency

#: PySide6 releases that drop a reference to None on every call of a void method under
#: Python < 3.12 (None is not immortal there): a window crashes with "none_dealloc" within
#: seconds of redrawing (measured here with 6.12.0; 6.11.3 is fine).
BROKEN_PYSIDE6 = ("6.12.0",)


def require_qt() -> None:
    """Raise an :class:`~eri.errors.EriError` with the install command if PySide6 or pyqtgraph
    cannot be imported."""
    try:
        import PySide6.QtWidgets  # noqa: F401
    except ImportError as exc:
        raise missing_dependency("PySide6", exc) from None
    import PySide6

    if PySide6.__version__ in BROKEN_PYSIDE6 and sys.version_info < (3, 12):
        raise EriError(
            f"PySide6 {PySide6.__version__} crashes on Python "
            f"{sys.version_info.major}.{sys.version_info.minor} (it over-releases None); "
            "install another version with `pip install 'PySide6-Essentials>=6.5,!=6.12.0'`."
        )
    try:
        import pyqtgraph  # noqa: F401
    except ImportError as exc:
        raise missing_dependency("pyqtgraph", exc) from None
