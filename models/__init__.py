"""Architectures, shared specs, audio front end, face crop, bundle and ONNX export."""
