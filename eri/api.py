"""The Python API: ``eri.analyze(path)`` gives the per-frame table as a pandas DataFrame.

    >>> import eri
    >>> df = eri.analyze("clip.mp4", model="my_bundle")   # doctest: +SKIP
    >>> df.attrs["trained"], df["amusement"].mean()         # doctest: +SKIP

It runs the same pipeline as ``eri analyze`` (``eri.realtime.analyze.analyze``) and returns what
that command writes with ``--out``: the same columns and the same values.
"""

from __future__ import annotations

import logging
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from eri.errors import EriError, missing_dependency

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)


class AnalyzeError(EriError, ValueError):
    """An argument of :func:`analyze` that cannot be used; the message says how to fix it."""


def analyze(
    path: str | Path,
    model: str | Path | None = None,
    arch: str | None = None,
    backend: str = "auto",
    *,
    precision: str = "fp32",
    mode: str = "streaming",
    subject: str | int = "largest",
    progress: bool = False,
) -> pd.DataFrame:
    """Run the ERI pipeline over a video, audio file or session folder; one row per frame.

    Args:
        path: the media (any file ``eri analyze`` reads).
        model: a model bundle directory; ``None`` runs an untrained ``arch`` model (its numbers
            are not meaningful; a warning says so and ``df.attrs["trained"]`` is False).
        arch: architecture of the untrained model (default ``dual_branch``); with ``model``,
            it must match the bundle's architecture if given.
        backend: ``"auto"``, ``"torch"`` or ``"onnxruntime"``.
        precision, mode, subject: as ``eri analyze --precision / --mode / --subject``.
        progress: show a progress bar.

    Returns:
        A DataFrame with the CSV columns of ``eri analyze --out``: ``time_s``, ``frame_index``,
        ``face_detected``, ``audio_present`` and the seven emotions of
        ``eri.models.spec.EMOTIONS``. ``df.attrs`` holds ``source``, ``model``,
        ``architecture``, ``trained``, ``backend``, ``precision``, ``device``, ``mode`` and
        ``summary`` (the JSON summary of ``eri analyze --json``: per-emotion mean / max / p95,
        face and audio coverage, timings).

    Raises:
        eri.EriError: a missing file, a bad bundle or option, pandas not installed, ... (the
            message says how to fix it).
    """
    try:
        import pandas as pd
    except ImportError as exc:
        raise missing_dependency("pandas", exc) from None
    from eri.choices import BACKENDS, DEFAULT_ARCH, ENGINE_MODES, available_precisions

    media = Path(path)
    if not media.exists():
        raise AnalyzeError(f"{media} does not exist; pass a video, audio file or session folder.")
    for name, value, allowed in (
        ("backend", backend, ("auto", *BACKENDS)),
        ("precision", precision, tuple(available_precisions())),
        ("mode", mode, ENGINE_MODES),
    ):
        if value not in allowed:
            raise AnalyzeError(f"Unknown {name} {value!r}; choose one of: {', '.join(allowed)}.")

    from eri.models import list_models
    from eri.models.bundle import load_bundle
    from eri.realtime.analyze import analyze as run_analysis
    from eri.realtime.backends import create_backend

    if arch is not None and arch not in list_models():
        raise AnalyzeError(
            f"Unknown architecture {arch!r}; choose one of: {', '.join(list_models())}."
        )
    bundle = load_bundle(model, arch=arch or DEFAULT_ARCH)
    if model is not None and arch is not None and bundle.meta["architecture"] != arch:
        raise AnalyzeError(
            f"Bundle {model} is a {bundle.meta['architecture']} model, not {arch}; "
            "drop arch= or pass a bundle of that architecture."
        )
    for note in bundle.notes:
        warnings.warn(note, UserWarning, stacklevel=2)
    runner = create_backend(bundle, backend, precision)

    # The table is the CSV `eri analyze --out` writes, read back: the two cannot drift apart.
    with tempfile.TemporaryDirectory(prefix="eri-analyze-") as tmp:
        csv_path = Path(tmp) / "predictions.csv"
        result = run_analysis(
            media,
            bundle,
            runner,
            mode=mode,
            csv_path=csv_path,
            progress=progress,
            subject=subject,
        )
        df = pd.read_csv(csv_path)
    attrs: dict[str, Any] = {
        "source": str(media),
        "model": bundle.name,
        "architecture": bundle.meta["architecture"],
        "trained": bundle.trained,
        "backend": runner.name,
        "precision": runner.precision,
        "device": runner.device,
        "mode": mode,
        "summary": result.summary,
    }
    df.attrs.update(attrs)
    return df
