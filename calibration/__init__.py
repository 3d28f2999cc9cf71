"""INT8 post-training quantization: calibration data, Q/DQ ONNX, calibration cache."""
