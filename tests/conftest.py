"""Shared fixtures: seeded torch, a per-session ONNX cache, each architecture exported to ONNX
once per session, the real media folder, and hardware skips. Media helpers live in
``tests/media_utils.py``."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.media_utils import MEDIA_DIR

pytest_plugins = ["tests.training_fixtures"]

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

#: Seed of every model a test builds (autouse ``_seed_torch``, ``small_model``, exports).
SEED = 0


def _small_window():
    from eri.models.spec import WindowSpec

    # 8 samples instead of 32: the same graphs, a quarter of the work.
    return WindowSpec(num_samples=8, context_s=3.2)


def _build_small(arch: str, seed: int = SEED, **options: Any):
    """``arch`` on the small window, initialised from ``seed`` whatever the global RNG holds."""
    import torch

    from eri.models.registry import create_model

    options.setdefault("window", _small_window())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return create_model(arch, **options).eval()


@pytest.fixture(autouse=True)
def _seed_torch() -> None:
    """Every test starts from the same torch RNG state: models and random inputs built in a
    test are the same numbers on every run."""
    import torch

    torch.manual_seed(SEED)


@pytest.fixture(scope="session", autouse=True)
def _onnx_cache(tmp_path_factory: pytest.TempPathFactory):
    """$ERI_CACHE_DIR is one temporary folder for the whole session: ONNX exports the backends
    make on first use (keyed by architecture + weights hash, so the seeded untrained models of
    different tests share one entry) are reused within the session and never touch ~/.cache."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ERI_CACHE_DIR", str(tmp_path_factory.mktemp("eri-cache")))
        yield


@pytest.fixture(scope="session")
def small_model() -> Callable[..., Any]:
    """``small_model(arch, seed=0, **options)``: a seeded model on the small window (eval mode),
    identical to the one ``onnx_exports[arch]`` exported when called with the defaults."""
    return _build_small


@dataclass(frozen=True)
class OnnxExport:
    """One architecture's seeded small model and its ``export_onnx`` files (do not modify)."""

    arch: str
    model: Any
    paths: dict[str, Path]


class OnnxExports:
    """``exports[arch]``: the architecture exported once per session, on first use (mtl_dan
    takes minutes on 2 cores: tests needing an export use this, never export again)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._done: dict[str, OnnxExport] = {}

    def __getitem__(self, arch: str) -> OnnxExport:
        if arch not in self._done:
            from eri.models.export import export_onnx

            model = _build_small(arch)
            paths = export_onnx(model, self.root / arch)
            self._done[arch] = OnnxExport(arch, model, paths)
        return self._done[arch]


@pytest.fixture(scope="session")
def onnx_exports(tmp_path_factory: pytest.TempPathFactory) -> OnnxExports:
    return OnnxExports(tmp_path_factory.mktemp("onnx-exports"))


@pytest.fixture(scope="session")
def media_dir() -> Path:
    """../shared/media (or $ERI_MEDIA_DIR); tests using it are skipped when it is absent."""
    if not MEDIA_DIR.is_dir():
        pytest.skip(f"real media folder {MEDIA_DIR} is absent (set ERI_MEDIA_DIR to use another)")
    return MEDIA_DIR


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
        if "media_dir" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.realmedia)  # reads ../shared/media
        if "requires_cuda" in item.keywords and not has_cuda:
            item.add_marker(pytest.mark.skip(reason="no CUDA GPU on this machine"))
        if "requires_tensorrt" in item.keywords and not has_trt:
            item.add_marker(pytest.mark.skip(reason="TensorRT with a CUDA GPU is not available"))
