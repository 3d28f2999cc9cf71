"""The wheel installs one top-level package, ``eri``, and the bare folder names never import."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]

IGNORED = shutil.ignore_patterns(
    ".venv", ".git", "__pycache__", "*.egg-info", "build", "dist", ".*_cache", "*.onnx"
)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built from a copy of the checkout (the checkout itself stays untouched)."""
    work = tmp_path_factory.mktemp("wheel")
    src = work / "src"
    shutil.copytree(PROJECT_ROOT, src, ignore=IGNORED)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(work / "dist"),
            str(src),
        ],
        check=True,
        capture_output=True,
    )
    (path,) = (work / "dist").glob("eri_live-*.whl")
    return path


def test_wheel_has_eri_as_its_only_top_level_package(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == {"eri"}
    for module in (
        "eri/__init__.py",
        "eri/models/__init__.py",
        "eri/models/dual_branch.py",
        "eri/realtime/cli.py",
        "eri/realtime/sources/__init__.py",
        "eri/realtime/face/__init__.py",
        "eri/training/__init__.py",
        "eri/calibration/__init__.py",
    ):
        assert module in names, module
    entry_points = zipfile.ZipFile(wheel).read(
        next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    )
    assert b"eri = eri.realtime.cli:main" in entry_points


def _run_outside(code: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def test_installed_package_imports_as_eri_only(tmp_path):
    """From a folder outside the checkout: ``import eri.models`` works, ``import models`` fails."""
    ok = _run_outside(
        "import eri.models, eri.realtime.cli; print(eri.models.list_models())", tmp_path
    )
    assert ok.returncode == 0, ok.stderr
    assert "dual_branch" in ok.stdout
    for bare in ("models", "realtime", "training", "calibration"):
        res = _run_outside(f"import {bare}", tmp_path)
        assert res.returncode != 0 and "ModuleNotFoundError" in res.stderr, bare


def test_each_module_is_loaded_under_one_name():
    """No module of the project is importable a second time under a bare folder name."""
    import eri.models  # noqa: F401
    import eri.realtime.cli  # noqa: F401

    bare = [m for m in sys.modules if m.split(".")[0] in {"models", "realtime", "calibration"}]
    assert bare == []
