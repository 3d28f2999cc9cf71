"""One training run, from a dataset folder to a bundle: what ``eri train`` does.

    open the dataset -> build the recipe's model (seeded) -> preprocess once (the cache)
    -> for the split (or each of K folds over Train+Val): fit the recipe's stages (Trainer)
    -> predictions_<split>.csv, curves, metrics.json, RUN/bundle ("trained": true)

Layout of RUN: ``config.yaml``, ``checkpoints/last.pt``, ``curves.csv``/``.png``,
``predictions_<split>.csv``, ``metrics.json``, ``bundle/``; with ``--folds K`` each fold has
its own ``folds/fold_<k>/`` (checkpoints, curves, its held-out predictions, ``result.json``,
``bundle/``) and RUN/bundle is the fold with the best validation mean PCC. Only rank 0 writes.
"""

from __future__ import annotations

import json
import logging
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from eri.errors import EriError
from eri.training import distributed as D
from eri.training.checkpoint import LAST, CheckpointError, load_checkpoint
from eri.training.config import TrainConfig, write_yaml
from eri.training.recipes import get_recipe
from eri.training.recipes.base import RowDataset, window_forward
from eri.training.trainer import Prediction, Trainer

log = logging.getLogger(__name__)

#: Cached windows are kept in RAM (``in_memory: null``) when they take at most this.
IN_MEMORY_BYTES = 2 * 1024**3


class TrainError(EriError, ValueError):
    """A run that cannot start or go on; the message names the thing and the fix."""


@dataclass
class RunResult:
    """What a run produced: the bundle, its metrics (``metrics.json``) and the history."""

    bundle: Path
    metrics: dict[str, Any]
    history: list[dict[str, Any]]


def train(
    data: str | Path,
    config: TrainConfig,
    out: str | Path,
    *,
    cache_root: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    on_epoch_end=None,
) -> RunResult:
    """Train ``config``'s recipe on the dataset at ``data`` into the run folder ``out``."""
    from eri.training.data import open_dataset
    from eri.training.preprocess import default_cache_root

    out = Path(out)
    ctx = D.init_distributed(config.device)
    torch.set_num_threads(config.threads or D.default_threads(ctx))
    _check_out(out, config, resume)
    index = open_dataset(data)
    # Every check the data allows comes before any preprocessing or training.
    train_clips = _labelled(index, config.train_split)
    if config.folds and config.val_split not in index.splits:
        val_clips = []  # k-fold over the training split alone (e.g. sessions without a Val split)
    else:
        val_clips = _labelled(index, config.val_split)
    if config.folds:
        from eri.training.folds import kfold

        kfold([c.clip_id for c in train_clips + val_clips], config.folds, seed=config.seed)
    recipe = get_recipe(config.recipe)(config)
    _seed(config.seed)
    model = recipe.build_model()  # refuses a config it cannot train before any preprocessing
    cache = _preprocess(
        index, model, Path(cache_root or default_cache_root()), config, ctx, progress
    )
    if ctx.is_main:
        write_yaml(config, out / "config.yaml")
    train_clips = _cached(train_clips, cache, config.train_split)
    val_clips = _cached(val_clips, cache, config.val_split) if val_clips else []
    fold_info = None
    if config.folds:
        from eri.training.folds import kfold, summarize_folds

        pool = train_clips + val_clips
        by_id = {c.clip_id: c for c in pool}
        splits = kfold([c.clip_id for c in pool], config.folds, seed=config.seed)
        results = []
        for k, (tr, va) in enumerate(splits, start=1):
            fold_dir = out / "folds" / f"fold_{k}"
            results.append(
                _fit_fold(
                    recipe,
                    config,
                    cache,
                    [by_id[i] for i in tr],
                    [by_id[i] for i in va],
                    fold_dir,
                    ctx,
                    resume,
                    f"fold_{k}",
                    on_epoch_end,
                    progress,
                )
            )
        summary = summarize_folds([r[1] for r in results])
        if ctx.is_main:
            log.info("%s", summary.table(f"{config.recipe}: {config.folds}-fold validation"))
        best = int(np.argmax([r[1].mean_pcc for r in results]))
        model, val_scores, history, stages = results[best]
        fold_info = {
            "k": config.folds,
            "seed": config.seed,
            "chosen": f"fold_{best + 1}",
            **summary.to_dict(),
        }
    else:
        model, val_scores, history, stages = _fit_fold(
            recipe,
            config,
            cache,
            train_clips,
            val_clips,
            out,
            ctx,
            resume,
            "",
            on_epoch_end,
            progress,
            fresh_model=model,
        )

    split_scores = _predict_splits(index, cache, model, config, ctx, out)
    metrics = {
        "val": val_scores.to_dict(),
        "stages": stages,
        "splits": split_scores,
        "folds": fold_info,
        "step_time_s": _step_times(history),
        "device": str(ctx.device),
        "world_size": ctx.world_size,
        "amp": bool(config.amp) and ctx.device.type == "cuda",
    }
    bundle = out / "bundle"
    if ctx.is_main:
        from eri.models.bundle import save_bundle

        provenance = {
            "created_by": "eri train",
            "recipe": config.recipe,
            "data": index.describe(),
            "config": config.to_dict(),
            "folds": fold_info,
            "metrics": metrics,
            **recipe.notes,
        }
        if getattr(model, "uses_audio_stats", False):
            provenance["audio_stats"] = {
                "source": f"{config.train_split} split"
                + (" of the chosen fold" if config.folds else ""),
                "mean": model.audio_mean.tolist(),
                "std": model.audio_std.tolist(),
            }
        save_bundle(model, bundle, trained=True, provenance=provenance, overwrite=True)
        _write_json(out / "metrics.json", metrics)
        log.debug("%s", val_scores.table(f"{config.recipe} val"))
        log.info("wrote %s", bundle)
    D.barrier(ctx)
    return RunResult(bundle, metrics, history)


def _fit_fold(
    recipe,
    config,
    cache,
    train_clips,
    val_clips,
    out_dir,
    ctx,
    resume,
    label,
    on_epoch_end,
    progress,
    fresh_model=None,
):
    """Train one model on ``train_clips``, validate on ``val_clips``: (model, its val Scores,
    history, each stage's best val scores)."""
    from eri.training.metrics import Scores, score

    result_file = out_dir / "result.json"
    if label and resume and result_file.is_file():  # a finished fold of a resumed k-fold run
        from eri.models.bundle import load_bundle

        load_checkpoint(out_dir / "checkpoints" / LAST, config)  # same config, or refuse
        saved = json.loads(result_file.read_text())
        log.info("%s already done (%s), skipped", label, result_file)
        model = load_bundle(out_dir / "bundle").model
        return model, Scores.from_dict(saved["val"]), saved["history"], saved["stages"]
    if fresh_model is None:
        _seed(config.seed)
        fresh_model = recipe.build_model()
    train_set = _windows(cache, train_clips, config, require_labels=True)
    val_set = _windows(cache, val_clips, config, require_labels=True)
    recipe.prepare(fresh_model, train_set)
    torch.manual_seed(config.seed + ctx.rank)  # per-rank dropout / modality dropout draws
    trainer = Trainer(
        config=config,
        recipe=recipe,
        model=fresh_model,
        train_set=train_set,
        val_set=val_set,
        out_dir=out_dir,
        ctx=ctx,
        resume=resume and (out_dir / "checkpoints" / LAST).is_file(),
        label=label,
        on_epoch_end=on_epoch_end,
    )
    pred = trainer.run()
    scores = score(pred.pred, pred.target)
    if ctx.is_main and label:
        from eri.models.bundle import save_bundle
        from eri.training.evaluate import predictions_name, write_predictions

        write_predictions(
            out_dir / predictions_name("val"), [val_clips[i] for i in pred.index], pred.pred
        )
        save_bundle(
            trainer.model,
            out_dir / "bundle",
            trained=True,
            overwrite=True,
            provenance={"created_by": "eri train", "fold": label},
        )
        _write_json(
            result_file,
            {"val": scores.to_dict(), "history": trainer.history, "stages": trainer.stage_scores},
        )
    return trainer.model, scores, trainer.history, trainer.stage_scores


def _predict_splits(index, cache, model, config, ctx, out) -> dict[str, Any]:
    """predictions_<split>.csv of the final model for every split; scores of labelled ones."""
    from eri.training.evaluate import predictions_name, write_predictions
    from eri.training.metrics import score

    runner = Trainer(
        config=config,
        recipe=None,
        model=model,
        train_set=None,
        val_set=None,
        out_dir=out,
        ctx=ctx,
    )
    scores = {}
    for split in index.splits:
        clips = [c for c in index.split(split) if cache.has(c.clip_id)]
        if not clips:
            continue
        pred: Prediction = runner.predict(window_forward, _windows(cache, clips, config, False))
        if ctx.is_main:
            write_predictions(
                out / predictions_name(split), [clips[i] for i in pred.index], pred.pred
            )
        if pred.labelled.any():
            scores[split] = score(pred.pred[pred.labelled], pred.target[pred.labelled]).to_dict()
    return scores


# ---------------------------------------------------------------------- data
def _preprocess(index, model, cache_root: Path, config: TrainConfig, ctx, progress: bool):
    """Preprocess every clip once (rank 0 first; the others then reuse the cache)."""
    from eri.training.preprocess import ClipCache, PreprocessConfig, preprocess

    pre = PreprocessConfig.from_model(model)
    report = None
    if ctx.is_main:
        report = preprocess(index, pre, cache_root, workers=None, progress=progress)
    D.barrier(ctx)
    if not ctx.is_main:
        report = preprocess(index, pre, cache_root, workers=None, progress=False)
    for clip_id, reason in report.skipped:
        log.warning("skipped clip %s: %s", clip_id, reason)
    return ClipCache(report.cache_dir)


def _labelled(index, split: str):
    """The clips of ``split``, every one labelled (else one sentence naming file and row)."""
    from eri.training.data import DatasetError

    clips = index.split(split)  # unknown or empty split: DatasetError listing the valid ones
    for clip in clips:
        if clip.labels is None:
            raise DatasetError(
                f"{clip.origin}: clip {clip.clip_id!r} of split {split!r} has no labels; "
                "fill in its seven intensities, or train on splits whose clips are all labelled."
            )
    return clips


def _cached(clips, cache, split: str):
    kept = [c for c in clips if cache.has(c.clip_id)]
    if not kept:
        raise TrainError(
            f"Split {split!r} has no clip whose media could be read; check its files, or "
            "choose other train_split / val_split in the config."
        )
    return kept


def _windows(cache, clips, config: TrainConfig, require_labels: bool) -> Dataset:
    """The cached windows of ``clips``, held in RAM when they fit (``in_memory``)."""
    from eri.training.preprocess import WindowDataset

    ds = WindowDataset(cache, clips, require_labels=require_labels)
    keep = config.in_memory
    if keep is None:
        first = ds[0]
        size = sum(v.numel() * v.element_size() for v in first.values() if torch.is_tensor(v))
        keep = size * len(ds) <= IN_MEMORY_BYTES
    if not keep:
        return ds
    items = [ds[i] for i in range(len(ds))]
    cols = {k: torch.stack([torch.as_tensor(it[k]) for it in items]) for k in items[0]}
    return RowDataset(cols)


# ---------------------------------------------------------------------- helpers
def _check_out(out: Path, config: TrainConfig, resume: bool) -> None:
    if resume:
        if not out.is_dir():
            raise CheckpointError(
                f"--resume: {out} does not exist; pass the --out of the run to resume."
            )
        has_any = (out / "checkpoints" / LAST).is_file() or any(
            (out / "folds").glob(f"fold_*/checkpoints/{LAST}")
        )
        if not has_any:
            raise CheckpointError(
                f"--resume found no checkpoint in {out}; run without --resume to start training."
            )
        return
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise TrainError(
            f"--out {out} already exists and is not empty; choose a new folder, or pass "
            "--resume to continue the run in it."
        )


def _seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _step_times(history: list[dict[str, Any]]) -> dict[str, float]:
    """Median over epochs of each stage's per-epoch median step time (seconds)."""
    by_stage: dict[str, list[float]] = {}
    for row in history:
        if row.get("step_time_s") is not None:
            by_stage.setdefault(row["stage"], []).append(row["step_time_s"])
    return {k: float(np.median(v)) for k, v in by_stage.items()}


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)
