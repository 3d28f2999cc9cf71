"""Session-scoped fixtures for the training tests (registered in conftest.py):

- ``generated_dataset``: the default generated dataset (ABAW5 layout, 72 clips of 2 s at
  15 fps; :func:`eri.training.data.generate_dataset`, seed 0), written once per test session;
- ``preprocess_config``: the dual_branch default specs with a small window
  (``WindowSpec(num_samples=8, context_s=2.0)``, so a clip's window is also the live window at
  its last frame);
- ``preprocessed``: the :class:`~eri.training.preprocess.ClipCache` of ``generated_dataset``
  under ``preprocess_config``, built once per session.
"""

from __future__ import annotations

from pathlib import Path

import pytest

#: The small window of the training fixtures: 8 samples over the 2 s clips.
FIXTURE_WINDOW = {"num_samples": 8, "context_s": 2.0}
#: The generated dataset's seed.
FIXTURE_SEED = 0


def fixture_config():
    """PreprocessConfig: dual_branch's crop and audio specs, the small window."""
    from eri.models.audio import AudioSpec
    from eri.models.spec import CropSpec, WindowSpec
    from eri.training.preprocess import PreprocessConfig

    return PreprocessConfig(WindowSpec(**FIXTURE_WINDOW), CropSpec(), AudioSpec())


@pytest.fixture(scope="session")
def generated_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Path of the generated ABAW5-layout dataset (do not modify it; copy it first)."""
    from eri.training.data import generate_dataset

    return generate_dataset(tmp_path_factory.mktemp("generated") / "data", seed=FIXTURE_SEED)


@pytest.fixture(scope="session")
def preprocess_config():
    return fixture_config()


@pytest.fixture(scope="session")
def preprocess_cache_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("preprocess-cache")


@pytest.fixture(scope="session")
def preprocessed(generated_dataset: Path, preprocess_config, preprocess_cache_root: Path):
    """ClipCache of every clip of ``generated_dataset`` under ``preprocess_config``."""
    from eri.training.data import open_dataset
    from eri.training.preprocess import ClipCache, preprocess

    index = open_dataset(generated_dataset)
    report = preprocess(index, preprocess_config, preprocess_cache_root, workers=2, progress=False)
    assert not report.skipped, report.skipped
    return ClipCache(report.cache_dir)
