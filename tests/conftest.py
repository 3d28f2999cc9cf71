"""Shared fixtures: the real media folder beside the project, and hardware skips."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

PROJECT_ROOT = Path(__file__).resolve().parents[1]
MEDIA_DIR = Path(os.environ.get("ERI_MEDIA_DIR", PROJECT_ROOT.parent / "shared" / "media"))


@pytest.fixture(scope="session")
def media_dir() -> Path:
    """../shared/media (or $ERI_MEDIA_DIR); tests using it are skipped when it is absent."""
    if not MEDIA_DIR.is_dir():
        pytest.skip(f"real media folder {MEDIA_DIR} is absent (set ERI_MEDIA_DIR to use another)")
    return MEDIA_DIR


def media_file(relative: str) -> Path:
    """A file under the media folder, or skip the test with the reason."""
    path = MEDIA_DIR / relative
    if not path.is_file():
        pytest.skip(f"real media file {path} is absent")
    return path


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except Exception:  # pragma: no cover
        has_cuda = False
    try:
        import tensorrt  # noqa: F401

        has_trt = has_cuda
    except Exception:
        has_trt = False
    for item in items:
        if "requires_cuda" in item.keywords and not has_cuda:
            item.add_marker(pytest.mark.skip(reason="no CUDA GPU on this machine"))
        if "requires_tensorrt" in item.keywords and not has_trt:
            item.add_marker(pytest.mark.skip(reason="TensorRT with a CUDA GPU is not available"))
