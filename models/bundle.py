"""The model bundle: one directory is the whole model (docs/design.md, "The model bundle").

    BUNDLE/bundle.json          format version, architecture + config, emotions, specs,
                                normalisation, provenance, "trained", exports
    BUNDLE/weights.safetensors  the state dict (architecture name in its metadata)
    BUNDLE/*.onnx, *.engine     exports, listed in bundle.json["exports"]

Every consumer loads a model through :func:`load_bundle`. ``eri bundle --arch NAME --out DIR``
writes an untrained one (optionally with a pretrained backbone); training will write trained ones.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import subprocess
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from eri.errors import EriError
from eri.models.base import StreamingModel
from eri.models.registry import DEFAULT_ARCH, create_model, get_model_class
from eri.models.spec import EMOTIONS
from eri.models.weights import WeightsError, load_into, read_state_dict

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
BUNDLE_JSON = "bundle.json"
WEIGHTS_FILE = "weights.safetensors"


class BundleError(EriError, ValueError):
    """A model bundle that cannot be used; the message names the bundle and the fix."""


@dataclass
class Bundle:
    """A loaded model with its metadata. ``path`` is None for an in-memory untrained model."""

    model: StreamingModel
    meta: dict[str, Any]
    path: Path | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def trained(self) -> bool:
        return bool(self.meta.get("trained", False))

    @property
    def name(self) -> str:
        return str(self.path) if self.path else f"untrained {self.meta['architecture']}"

    def export_path(self, key: str) -> Path | None:
        """Path of an export recorded in bundle.json (``"frame_encoder.onnx"``, ...), if any."""
        rel = self.meta.get("exports", {}).get(key, {}).get("file")
        if self.path is None or rel is None:
            return None
        p = self.path / rel
        return p if p.is_file() else None


def code_version() -> str:
    """The git commit of this checkout when there is one, else the package version."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("eri-live")
    except PackageNotFoundError:
        return "unknown"


def bundle_meta(
    model: StreamingModel, *, trained: bool, provenance: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The bundle.json content describing ``model``."""
    return {
        "format_version": FORMAT_VERSION,
        "architecture": model.arch_name,
        "config": model.config,
        "emotions": list(EMOTIONS),
        **model.specs(),
        "normalisation": {
            "input": "RGB float in [0, 1], normalised inside the model",
            "mean": [float(x) for x in model.pixel_mean.flatten()],
            "std": [float(x) for x in model.pixel_std.flatten()],
        },
        "trained": trained,
        "provenance": {
            "code_version": code_version(),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            **(provenance or {}),
        },
        "weights": WEIGHTS_FILE,
        "exports": {},
    }


UNTRAINED_SEED = 0


def untrained_bundle(arch: str = DEFAULT_ARCH, **config: Any) -> Bundle:
    """A model of ``arch`` initialised from a fixed seed (the same numbers on every run and
    machine), flagged ``"trained": false`` everywhere."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(UNTRAINED_SEED)
        model = create_model(arch, **config).eval()
    bundle = Bundle(model=model, meta=bundle_meta(model, trained=False))
    bundle.notes.append(
        f"UNTRAINED MODEL: no model bundle given, running a randomly initialised {arch}; "
        "its intensities are not meaningful."
    )
    return bundle


def save_bundle(
    model: StreamingModel,
    path: str | Path,
    *,
    trained: bool = False,
    provenance: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``model`` as a bundle directory. Written to a temporary sibling first and moved
    into place, so a failure never leaves a half-written bundle. The directory and its files get
    the usual permissions under the process umask (typically 0755 and 0644)."""
    from safetensors.torch import save

    path = Path(path)
    if path.exists() and not overwrite:
        raise BundleError(f"{path} already exists; choose another --out or remove it first.")
    parent = path.parent if str(path.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        # Not tempfile.mkdtemp: it makes the directory 0700 whatever the umask.
        tmp = parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
        tmp.mkdir()
    except OSError as exc:
        raise BundleError(
            f"Cannot write the bundle in {parent} ({exc.strerror}); choose a writable folder."
        ) from None
    try:
        meta = bundle_meta(model, trained=trained, provenance=provenance)
        state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        # Bytes written with a plain open(), not save_file (which makes the file 0600).
        (tmp / WEIGHTS_FILE).write_bytes(
            save(
                state,
                metadata={"architecture": model.arch_name, "format_version": str(FORMAT_VERSION)},
            )
        )
        (tmp / BUNDLE_JSON).write_text(json.dumps(meta, indent=2) + "\n")
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("Saved %s bundle to %s", model.arch_name, path)
    return path


def read_meta(path: str | Path) -> dict[str, Any]:
    """bundle.json of ``path``, checked for a format this code understands."""
    path = Path(path)
    if not path.exists():
        raise BundleError(
            f"Model bundle {path} does not exist; check the path, or write one with "
            "`eri bundle --arch NAME --out DIR`."
        )
    meta_file = path / BUNDLE_JSON if path.is_dir() else path
    if meta_file.name != BUNDLE_JSON or not meta_file.is_file():
        raise BundleError(
            f"{path} is not a model bundle (no {BUNDLE_JSON} in it); pass a bundle directory, "
            "such as one `eri bundle --arch NAME --out DIR` writes."
        )
    try:
        meta = json.loads(meta_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(
            f"{meta_file} is not valid JSON ({exc}); the bundle is damaged."
        ) from None
    version = meta.get("format_version")
    if not isinstance(version, int):
        raise BundleError(f"{meta_file} has no integer format_version; the bundle is damaged.")
    if version > FORMAT_VERSION:
        raise BundleError(
            f"Bundle {path} has format version {version}, newer than this ERI Live reads "
            f"({FORMAT_VERSION}); upgrade ERI Live (pip install -U eri-live)."
        )
    missing = [k for k in ("architecture", "config", "window", "crop", "emotions") if k not in meta]
    if missing:
        raise BundleError(f"{meta_file} lacks {missing}; the bundle is damaged.")
    if list(meta["emotions"]) != list(EMOTIONS):
        raise BundleError(
            f"Bundle {path} predicts {meta['emotions']}, not this project's "
            f"{list(EMOTIONS)}; it is not an ERI Live bundle."
        )
    return meta


def load_bundle(path: str | Path | None, *, arch: str = DEFAULT_ARCH) -> Bundle:
    """Load a bundle directory; ``None`` gives an untrained model of ``arch`` (said loudly)."""
    if path is None:
        return untrained_bundle(arch)
    path = Path(path)
    if path.is_file() and path.name == BUNDLE_JSON:
        path = path.parent
    meta = read_meta(path)
    try:
        get_model_class(meta["architecture"])
    except ValueError as exc:
        raise BundleError(f"Bundle {path}: {exc}") from None
    config = dict(meta["config"])
    try:
        model = create_model(
            meta["architecture"],
            window=meta["window"],
            crop=meta["crop"],
            audio=meta.get("audio"),
            **config,
        )
    except (TypeError, ValueError) as exc:
        raise BundleError(f"Bundle {path} has a config this code cannot build ({exc}).") from None
    weights = path / meta.get("weights", WEIGHTS_FILE)
    _check_weights_architecture(weights, meta["architecture"])
    state = read_state_dict(weights)
    own = model.state_dict()
    missing = sorted(k for k in own if k not in state)
    if missing and state and all(k in own for k in state):
        # Every stored tensor fits and some are absent: written before the model gained them.
        raise BundleError(
            f"Bundle {path} was saved by an earlier version of ERI Live, before "
            f"{meta['architecture']} gained {len(missing)} tensor(s) (e.g. {missing[:2]}); "
            f"re-create it with `eri bundle --arch {meta['architecture']} --out DIR` or retrain "
            "it with `eri train`."
        )
    try:
        load_into(model, state, source=str(weights), strict=True)
    except WeightsError as exc:
        raise BundleError(str(exc)) from None
    model.eval()
    bundle = Bundle(model=model, meta=meta, path=path)
    if not bundle.trained:
        bundle.notes.append(f'UNTRAINED MODEL: {path} is marked "trained": false.')
    return bundle


def _check_weights_architecture(weights: Path, arch: str) -> None:
    """Refuse a safetensors file whose metadata names another architecture."""
    if weights.suffix != ".safetensors" or not weights.is_file():
        return
    from safetensors import safe_open

    try:
        with safe_open(str(weights), framework="pt") as f:
            saved = (f.metadata() or {}).get("architecture")
    except Exception as exc:
        raise BundleError(f"{weights} is not a readable safetensors file ({exc}).") from None
    if saved is not None and saved != arch:
        raise BundleError(
            f"{weights} holds weights of architecture {saved!r}, but bundle.json says {arch!r}; "
            "the bundle was assembled from two different models."
        )


def record_export(bundle_path: Path, key: str, info: dict[str, Any]) -> None:
    """Add an export entry to bundle.json (written atomically)."""
    meta_file = bundle_path / BUNDLE_JSON
    meta = json.loads(meta_file.read_text())
    meta.setdefault("exports", {})[key] = info
    tmp = meta_file.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(meta, indent=2) + "\n")
    os.replace(tmp, meta_file)
