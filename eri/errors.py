"""The one error type a user can cause, and the sentence that names a missing dependency."""

from __future__ import annotations


class EriError(Exception):
    """A failure the user caused and can fix; its message is one sentence saying how.

    Every such error in ERI Live derives from this class, and the ``eri`` command catches this
    type alone: it prints the message and exits with status 1.
    """


class MissingDependencyError(EriError, ImportError):
    """An optional library (MediaPipe, PortAudio, ONNX Runtime, ...) is not installed."""


# What else the user can do instead of installing it.
ALTERNATIVES: dict[str, str] = {
    "sounddevice": "or pass --mic none to run visual-only",
    "portaudio": "or pass --mic none to run visual-only",
}

# What to install for each optional module: (what it is for, the install command).
INSTALL_HINTS: dict[str, tuple[str, str]] = {
    "mediapipe": ("face tracking", "pip install 'mediapipe>=0.10.9,<=0.10.21'"),
    "onnxruntime": ("the onnxruntime backend", "pip install onnxruntime"),
    "sounddevice": ("the microphone", "pip install sounddevice"),
    "portaudio": ("the microphone", "sudo apt-get install libportaudio2"),
    "av": ("reading and writing video", "pip install av"),
    "pandas": ("the DataFrame API", "pip install 'eri-live[pandas]'"),
    "tensorrt": ("the tensorrt backend", "pip install 'eri-live[tensorrt]'"),
    "PySide6": ("the viewer window (eri view)", "pip install 'PySide6-Essentials>=6.5'"),
    "pyqtgraph": ("the viewer's curves (eri view)", "pip install 'pyqtgraph>=0.13.3'"),
}


def missing_dependency(module: str, cause: BaseException | None = None) -> MissingDependencyError:
    """The error for a missing optional ``module``, with the command that installs it."""
    purpose, command = INSTALL_HINTS[module]
    name = "PortAudio" if module == "portaudio" else module
    alternative = f", {ALTERNATIVES[module]}" if module in ALTERNATIVES else ""
    err = MissingDependencyError(
        f"{name} is needed for {purpose} but is not installed; "
        f"install it with `{command}`{alternative}."
    )
    err.__cause__ = cause
    return err
