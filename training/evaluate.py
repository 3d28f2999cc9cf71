"""Scoring a model bundle on a dataset: ``eri evaluate BUNDLE --data DIR [--split NAME]``.

The clips of each split go through the preprocessing cache (the windows training sees), the
model runs in eval mode over them, and the per-emotion PCC and their mean are printed in the
papers' table layout; with ``--out``, ``predictions_<split>.csv`` (one row per clip) and
``metrics.json`` are written too. Torch and the dataset modules are imported only when a
command runs (``eri.models`` pulls in torch), so building the ``eri`` parser stays instant:
this module imports only the standard library at the top.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from eri.argtypes import int_at_least

if TYPE_CHECKING:
    import numpy as np

    from eri.models.base import StreamingModel
    from eri.training.data import Clip, ClipIndex
    from eri.training.metrics import Scores
    from eri.training.preprocess import WindowDataset

log = logging.getLogger(__name__)

#: The predictions CSV starts with these columns, then the seven EMOTIONS.
PREDICTIONS_KEY_COLUMNS: tuple[str, ...] = ("clip_id", "split")
METRICS_JSON = "metrics.json"
DEFAULT_BATCH_SIZE = 16


def predictions_name(split: str) -> str:
    """File name of a split's predictions CSV."""
    return f"predictions_{split}.csv"


# --------------------------------------------------------------------------- the pieces
def predict(
    model: StreamingModel,
    dataset: WindowDataset,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: Any = "cpu",
    workers: int = 0,
) -> np.ndarray:
    """The model's intensities for every window of ``dataset``, in dataset order: float32
    [N, 7]. Runs in eval mode without gradients (the model's mode is restored afterwards);
    batches go to ``device``, where the model must already be."""
    import numpy as np
    import torch
    from torch.utils.data import DataLoader

    from eri.models.spec import NUM_EMOTIONS

    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers)
    was_training = model.training
    model.eval()
    out: list[np.ndarray] = []
    try:
        with torch.inference_mode():
            for batch in loader:
                tokens = batch.get("audio_tokens") if model.has_audio else None
                pred = model(
                    batch["faces"].to(device),
                    None if tokens is None else tokens.to(device),
                    batch["audio_present"].to(device),
                    batch["visual_present"].to(device),
                )
                out.append(pred.float().cpu().numpy())
    finally:
        model.train(was_training)
    if not out:
        return np.zeros((0, NUM_EMOTIONS), dtype=np.float32)
    return np.concatenate(out).astype(np.float32, copy=False)


def write_predictions(path: str | Path, clips: Sequence[Clip], pred: np.ndarray) -> None:
    """CSV with one row per clip: ``clip_id, split`` then the seven intensities (6 decimals),
    written atomically. ``pred`` [len(clips), 7] in ``clips`` order."""
    import numpy as np

    from eri.models.spec import EMOTIONS, NUM_EMOTIONS
    from eri.training.curves import write_atomic

    pred = np.asarray(pred)
    if pred.shape != (len(clips), NUM_EMOTIONS):
        raise ValueError(
            f"{len(clips)} clips need predictions [{len(clips)}, 7], got {pred.shape}."
        )
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow([*PREDICTIONS_KEY_COLUMNS, *EMOTIONS])
    for clip, row in zip(clips, pred):
        writer.writerow([clip.clip_id, clip.split, *(f"{float(v):.6f}" for v in row)])
    write_atomic(Path(path), text.getvalue().encode())


def labels_of(clips: Sequence[Clip]) -> np.ndarray:
    """The labels of labelled clips, float32 [N, 7]."""
    import numpy as np

    return np.stack([c.labels for c in clips]).astype(np.float32)


def resolve_device(device: str | None) -> str:
    """``auto``/None -> ``cuda`` when available, else ``cpu``."""
    import torch

    from eri.training.metrics import EvaluationError

    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if not re.fullmatch(r"cpu|cuda(:\d+)?", device):
        raise EvaluationError(f"--device {device} is not a device; use auto, cpu, cuda or cuda:N.")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise EvaluationError(
            f"--device {device} was asked for but CUDA is not available; use cpu."
        )
    return device


def evaluation_splits(index: ClipIndex, split: str | None) -> list[str]:
    """The split asked for, or every split with labels; DatasetError for an unknown split or
    one without labels, EvaluationError when no split has labels."""
    from eri.training.metrics import EvaluationError

    if split is not None:
        index.labelled(split)
        return [split]
    splits = [s for s in index.splits if any(c.labelled for c in index.split(s))]
    if not splits:
        raise EvaluationError(
            f"{index.source or index.root} has no labelled split (splits: "
            f"{', '.join(index.splits) or 'none'}); evaluation needs labels to score against."
        )
    return splits


# --------------------------------------------------------------------------- the whole run
def evaluate_bundle(
    bundle_path: str | Path,
    data_path: str | Path,
    split: str | None = None,
    cache_root: str | Path | None = None,
    out_dir: str | Path | None = None,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: str | None = None,
    workers: int | None = None,
    progress: bool = True,
) -> dict[str, Scores]:
    """Score the bundle on ``split`` of the dataset (None: every labelled split).

    Checks the bundle, dataset and split before any work, preprocesses what the cache lacks,
    predicts, and (with ``out_dir``) writes ``predictions_<split>.csv`` and ``metrics.json``.
    Returns {split: Scores}.
    """
    from eri.models.bundle import load_bundle, read_meta
    from eri.training.curves import write_atomic
    from eri.training.data import open_dataset
    from eri.training.metrics import EvaluationError, score
    from eri.training.preprocess import (
        ClipCache,
        PreprocessConfig,
        WindowDataset,
        default_cache_root,
        preprocess,
    )

    read_meta(bundle_path)  # not a bundle: refused before the dataset is read
    index = open_dataset(data_path)
    splits = evaluation_splits(index, split)
    device = resolve_device(device)
    bundle = load_bundle(bundle_path)
    for note in bundle.notes:
        log.warning("%s", note)
    model = bundle.model.to(device)
    config = PreprocessConfig.from_model(model)
    cache_root = Path(cache_root) if cache_root is not None else default_cache_root()
    report = preprocess(
        index, config, cache_root, splits=splits, workers=workers, progress=progress
    )
    cache = ClipCache(report.cache_dir)
    skipped = dict(report.skipped)
    results: dict[str, Scores] = {}
    for name in splits:
        wanted = index.labelled(name)
        clips = cache.cached(wanted)
        if not clips:
            first = next(iter(skipped.items()), ("?", "unknown"))
            raise EvaluationError(
                f"None of the {len(wanted)} labelled clips of split {name!r} could be read "
                f"(e.g. {first[0]}: {first[1]}); check the media files of {index.root}."
            )
        if len(clips) < len(wanted):
            log.warning(
                "split %s: %d of %d labelled clips skipped (unreadable media), scored the rest",
                name,
                len(wanted) - len(clips),
                len(wanted),
            )
        dataset = WindowDataset(cache, clips)
        pred = predict(model, dataset, batch_size=batch_size, device=device)
        results[name] = score(pred, labels_of(clips))
        if out_dir is not None:
            write_predictions(Path(out_dir) / predictions_name(name), clips, pred)
    if out_dir is not None:
        metrics = {
            "bundle": str(bundle.path),
            "architecture": bundle.meta["architecture"],
            "trained": bundle.trained,
            "data": index.describe(),
            "preprocess": {"cache_dir": str(report.cache_dir), "key": config.key()},
            "skipped": [{"clip_id": c, "reason": r} for c, r in report.skipped],
            "splits": {name: s.to_dict() for name, s in results.items()},
        }
        write_atomic(Path(out_dir) / METRICS_JSON, (json.dumps(metrics, indent=2) + "\n").encode())
    return results


# --------------------------------------------------------------------------- the command
def add_evaluate_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``eri evaluate`` on the ``eri`` command's subparsers."""
    p = subparsers.add_parser(
        "evaluate",
        help="score a model bundle on a dataset (per-emotion PCC and their mean)",
        description="Run the bundle over every clip of a labelled split (default: each "
        "labelled split) and print the Pearson correlation per emotion and their mean, the "
        "ABAW5 ERI metric; a constant prediction counts as 0 and is marked as collapsed.",
    )
    p.add_argument("bundle", help="model bundle directory")
    p.add_argument(
        "--data",
        required=True,
        help="dataset: ABAW5 folder with data_info.csv, a manifest CSV, or recorded sessions",
    )
    p.add_argument("--split", help="split to score, e.g. Val (default: every labelled split)")
    p.add_argument(
        "--out", metavar="DIR", help="also write predictions_<split>.csv and metrics.json here"
    )
    p.add_argument(
        "--cache",
        metavar="DIR",
        help="preprocessing cache root (default: $ERI_CACHE_DIR/preprocess or "
        "~/.cache/eri-live/preprocess)",
    )
    p.add_argument(
        "--batch-size",
        type=int_at_least(1),
        default=DEFAULT_BATCH_SIZE,
        help=f"windows per forward pass (default: {DEFAULT_BATCH_SIZE})",
    )
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    p.add_argument("--workers", type=int_at_least(1), help="preprocessing processes")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_evaluate)
    return p


def cmd_evaluate(args: argparse.Namespace) -> int:
    """``eri evaluate``: print the table; with --out also write the files."""
    from eri.training.metrics import format_table

    if args.out:
        from eri.realtime.cli import check_writable

        check_writable(Path(args.out) / METRICS_JSON, "metrics", "--out")
    results = evaluate_bundle(
        args.bundle,
        args.data,
        args.split,
        args.cache,
        args.out,
        batch_size=args.batch_size,
        device=args.device,
        workers=args.workers,
        progress=not args.no_progress,
    )
    print(format_table(list(results.items())))
    if args.out:
        log.info(
            "wrote %s and %s in %s",
            METRICS_JSON,
            ", ".join(predictions_name(s) for s in results),
            args.out,
        )
    return 0
