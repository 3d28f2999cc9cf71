"""The recording half of the viewer window (:class:`RecordingMixin` of
:class:`~eri.realtime.gui.main_window.ViewerWindow`): a
:class:`~eri.realtime.session.SessionRecorder` attached to the running pipeline, finished on
stop, at the end of the source, or at once when it fails (a full disk), with a notice.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from PySide6 import QtWidgets

from eri.realtime.gui.worker import PipelineWorker

log = logging.getLogger(__name__)


def next_free_dir(path: Path) -> Path:
    """``path`` if it is missing or empty, else the first of ``path-2``, ``path-3``, ... that is."""
    candidate, n = path, 1
    while candidate.exists() and (not candidate.is_dir() or any(candidate.iterdir())):
        n += 1
        candidate = path.with_name(f"{path.name}-{n}")
    return candidate


class RecordingMixin:
    """Recording for the viewer window (uses its worker, controls, notices and status bar)."""

    def _make_recorder(self, source: Any) -> Any:
        """A SessionRecorder for ``source`` (any thread); None, with a notice, if it fails."""
        try:
            from eri.realtime.session import SessionRecorder
        except ImportError as exc:
            self._notices.append((f"Recording is not available in this version ({exc}).", True))
            return None
        try:
            from eri.realtime.session.format import session_info

            worker = self.worker
            info = session_info(
                source,
                worker.bundle if worker is not None else None,
                worker.backend if worker is not None else None,
            )
        except Exception:
            info = {"source": {"name": getattr(source, "name", str(source))}}
        text = self.controls.record_dir.text().strip()
        base = Path(text) if text else Path.home() / "eri-sessions" / time.strftime("%Y%m%d-%H%M%S")
        base = base.expanduser()
        out = next_free_dir(base)
        if out != base:
            text = f"{base} already exists and is not empty, so this session is recorded to {out}."
            self._notices.append((text, False))
        try:
            recorder = SessionRecorder(
                out,
                fps=float(source.fps or 30.0),
                width=int(source.width or 640),
                height=int(source.height or 480),
                has_audio=bool(source.has_audio),
                info=info,
            )
        except Exception as exc:
            self._notices.append((f"Recording did not start: {exc}", True))
            log.error("Recording did not start: %s", exc)
            return None
        self.recorder = recorder
        self.session_dirs.append(out)
        log.info("recording to %s", out)
        return recorder

    def set_recording(self, on: bool) -> None:
        """Record on / off; while running this starts or finishes a session at once."""
        worker = self.worker
        if not self.running or worker is None:
            return
        if on:
            worker.start_recording(self._make_recorder)
        else:
            self._end_recording(ask_report=True)

    def _end_recording(self, *, ask_report: bool) -> Path | None:
        """Detach the recorder and finish its session; the folder, or None if none was on."""
        worker = self.worker
        recorder = (worker.stop_recording() if worker is not None else None) or self.recorder
        self.recorder = None
        if recorder is None:
            return None
        return self._finish_recording(recorder, ask_report=ask_report)

    def _check_recording(self, worker: PipelineWorker) -> None:
        """A recording that failed (a full disk) is finished at once, keeping what was written,
        and the window says why in one sentence."""
        recorder = self.recorder
        if recorder is None:
            return
        error = getattr(recorder, "error", None) or worker.record_error
        if error is None:
            return
        self._end_recording(ask_report=False)
        self._notices.append((str(error), True))

    def _finish_recording(self, recorder: Any, *, ask_report: bool) -> Path | None:
        failed = getattr(recorder, "error", None) is not None
        if ask_report and self.controls.ask_report.isChecked() and not failed:
            from eri.realtime.gui.self_report import SelfReportDialog

            dialog = SelfReportDialog(self)
            if dialog.exec() == QtWidgets.QDialog.DialogCode.Accepted:
                try:
                    recorder.set_self_report(dialog.values())
                except Exception as exc:
                    log.error("self-report not saved: %s", exc)
        try:
            path = recorder.close()
        except Exception as exc:
            self.show_message(f"The recording could not be finished: {exc}")
            return None
        error = getattr(recorder, "error", None)
        note = f" ({error})" if error else ""
        self.statusBar().showMessage(f"session saved to {path}{note}", 10_000)
        log.info("session saved to %s%s", path, note)
        return Path(path)
