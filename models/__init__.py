"""Architectures, shared specs, audio front end, face crop, bundle and ONNX export.

The public API, timm-style::

    import eri.models
    model = eri.models.create_model("dual_branch")
    eri.models.list_models()          # ['cnn_lstm', 'dual_branch', 'mtl_dan']
    bundle = eri.models.save_bundle(model, "my_bundle")

Importing this package registers every built-in architecture.
"""

# Importing the architecture modules runs their @register_model decorators.
from eri.models import cnn_lstm, dual_branch, mtl_dan  # noqa: E402, F401, I001
from eri.models.bundle import Bundle, load_bundle, save_bundle
from eri.models.registry import (
    DEFAULT_ARCH,
    create_model,
    get_model_class,
    list_models,
    register_model,
)

__all__ = [
    "DEFAULT_ARCH",
    "Bundle",
    "create_model",
    "get_model_class",
    "list_models",
    "load_bundle",
    "register_model",
    "save_bundle",
]
