"""INT8 post-training quantization: calibration data, Q/DQ ONNX, calibration cache.

- :mod:`eri.calibration.data`: :class:`CalibrationSet` (face crops for the frame encoder,
  windows for the head), from arrays or from media run through the real pipeline, and the
  data reader ONNX Runtime's calibrator takes;
- :mod:`eri.calibration.cache`: the calibration directory reused while it matches the model;
- :mod:`eri.calibration.quantize`: :func:`calibrate`, :func:`export_int8`, the tolerance.
"""

from eri.calibration.cache import CalibrationCache
from eri.calibration.data import (
    ArrayDataReader,
    CalibrationError,
    CalibrationSet,
    check_shapes,
    from_arrays,
    from_media,
)
from eri.calibration.quantize import (
    CALIBRATION_METHODS,
    DEFAULT_METHOD,
    INT8_TOLERANCE,
    calibrate,
    export_int8,
    quantize_graph,
)

__all__ = [
    "CALIBRATION_METHODS",
    "DEFAULT_METHOD",
    "INT8_TOLERANCE",
    "ArrayDataReader",
    "CalibrationCache",
    "CalibrationError",
    "CalibrationSet",
    "calibrate",
    "check_shapes",
    "export_int8",
    "from_arrays",
    "from_media",
    "quantize_graph",
]
