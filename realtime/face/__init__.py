"""Face tracking: MediaPipe BlazeFace -> one stable subject -> aligned crop + quality flags.

- ``detector``: the MediaPipe adapter (:class:`BlazeFace`, :class:`Detection`, the quiet
  import and the native-stderr filter);
- ``flow``: the optical-flow tracker (:class:`FlowTracker`: LK flow, forward-backward check,
  similarity fit);
- ``tracker``: the tracking policy (:class:`FaceTracker`: subject selection, gap bridging,
  One-Euro smoothing, :class:`FaceResult`); its module docstring describes the whole.

MediaPipe is imported only when a detector is created, so importing this package is cheap.
"""

from eri.realtime.face.detector import BlazeFace, Detection
from eri.realtime.face.flow import FlowTracker
from eri.realtime.face.tracker import FaceResult, FaceTracker, OneEuroFilter, select_subject

__all__ = [
    "BlazeFace",
    "Detection",
    "FaceResult",
    "FaceTracker",
    "FlowTracker",
    "OneEuroFilter",
    "select_subject",
]
