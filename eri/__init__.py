"""ERI Live: real-time Emotional Reaction Intensity from a webcam and a microphone.

The installed package is ``eri``; its parts live in the repository's top-level folders:
``eri.models`` (``models/``), ``eri.realtime`` (``realtime/``), ``eri.training``
(``training/``) and ``eri.calibration`` (``calibration/``). Importing ``eri`` is cheap (no torch);
``eri.analyze`` is loaded on first use.
"""

from __future__ import annotations

import logging
from importlib import metadata
from typing import TYPE_CHECKING, Any

from eri.errors import EriError

try:
    __version__ = metadata.version("eri-live")
except metadata.PackageNotFoundError:  # pragma: no cover - running from a bare checkout
    __version__ = "0+unknown"

# One logger hierarchy: every module logs under "eri.<package>.<module>".
logging.getLogger("eri").addHandler(logging.NullHandler())

if TYPE_CHECKING:
    from eri.api import analyze

__all__ = ["EriError", "__version__", "analyze"]


def __getattr__(name: str) -> Any:
    if name == "analyze":
        from eri.api import analyze

        return analyze
    raise AttributeError(f"module 'eri' has no attribute {name!r}")
