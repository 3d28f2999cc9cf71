"""``eri view``: :class:`ViewerOptions` and :func:`run_viewer`, which opens the window, starts the
pipeline, and for scripted checks closes it after ``exit_after`` seconds, saving a screenshot.
"""

from __future__ import annotations

import logging
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eri.realtime.gui import require_qt

log = logging.getLogger(__name__)


@dataclass
class ViewerOptions:
    """What ``eri view`` was asked for; None means "the saved setting, else the default"."""

    source: str | None = None
    mic: str | None = None
    model: str | None = None
    arch: str | None = None
    backend: str | None = None
    precision: str = "fp32"
    record: str | None = None
    exit_after: float | None = None
    screenshot: str | None = None
    window_s: float | None = None
    subject: str | int = "largest"
    #: An already loaded bundle for ``model`` / ``arch`` (the command line loads it first so a
    #: wrong path fails before the window opens).
    bundle: Any = None
    autostart: bool = True
    settings_path: str | None = None
    #: Inference threads (None: all cores but one).
    threads: int | None = None
    #: A ready Source to run instead of ``source`` (tests, benchmarks).
    source_object: Any = None


def ensure_app():
    """The QApplication (created once)."""
    require_qt()
    import pyqtgraph as pg
    from PySide6 import QtWidgets

    app = QtWidgets.QApplication.instance()
    if app is None:
        app = QtWidgets.QApplication(["eri view"])
        app.setApplicationName("ERI Live")
        app.setOrganizationName("eri-live")
    # No antialiasing: it doubles the cost of drawing the curves in the software rasteriser.
    pg.setConfigOptions(antialias=False, background="#1e1e1e", foreground="#dddddd")
    return app


def dispose(window) -> None:
    """Delete the window's Qt objects now, while the QApplication lives: left to the
    interpreter's exit, PySide6 and pyqtgraph objects can be freed in an order that crashes."""
    import gc

    from PySide6 import QtCore

    window.deleteLater()
    QtCore.QCoreApplication.sendPostedEvents(None, QtCore.QEvent.Type.DeferredDelete)
    QtCore.QCoreApplication.processEvents()
    gc.collect()


def run_viewer(options: ViewerOptions) -> int:
    """Open the viewer and run until the window closes; returns the exit status (0, or 1 when
    the pipeline failed). Raises EriError for a failure before the window opens."""
    app = ensure_app()
    from PySide6 import QtCore

    from eri.realtime.gui.main_window import ViewerWindow, settings_for

    window = ViewerWindow(options, settings_for(options.settings_path))
    window.show()
    if options.autostart:
        window.start()

    def finish() -> None:
        if options.screenshot:
            if window.save_screenshot(options.screenshot):
                log.info("wrote %s", options.screenshot)
            else:
                log.error("could not write the screenshot %s", options.screenshot)
        window.close()

    if options.exit_after is not None:
        QtCore.QTimer.singleShot(int(options.exit_after * 1000), finish)
    # Ctrl-C / SIGTERM close the window (Python runs signal handlers between Qt events, so a
    # short idle timer gives it the chance).
    previous = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            previous[sig] = signal.signal(sig, lambda *_: window.close())
        except ValueError:  # not the main thread
            pass
    wake = QtCore.QTimer()
    wake.timeout.connect(lambda: None)
    wake.start(200)
    app.setQuitOnLastWindowClosed(True)
    try:
        app.exec()
    finally:
        wake.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if window.isVisible():
            window.close()
    error = window.error
    dispose(window)
    if error is not None:
        log.error("error: %s", error)
        return 1
    if options.screenshot and not Path(options.screenshot).is_file():
        return 1
    return 0
