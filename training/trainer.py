"""The training loop every recipe's stages run through.

Per stage: the named parts train (the rest frozen, frozen BatchNorms in eval mode), Adam (or
AdamW) with ReduceLROnPlateau on the validation mean PCC, the best epoch kept and restored at
the end of the stage (optionally stopping ``early_stop`` epochs after it), a checkpoint after
every epoch. Validation predictions are gathered from every rank, so the metric is over the
whole split. On CUDA with ``amp`` the forward runs under fp16 autocast with a GradScaler.
Each epoch's median step time (seconds per optimizer step, CUDA synchronised) is logged into
the history.
"""

from __future__ import annotations

import gc
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from eri.training import distributed as D
from eri.training.checkpoint import (
    LAST,
    cpu_state,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from eri.training.config import ConfigError, TrainConfig
from eri.training.recipes.base import PASS_KEYS, Forward, Recipe, RowDataset, Stage

log = logging.getLogger(__name__)


class StageModule(nn.Module):
    """``forward(batch)`` of one stage, as a module DDP can wrap."""

    def __init__(self, model: nn.Module, forward: Forward) -> None:
        super().__init__()
        self.model = model
        self._forward = forward

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self._forward(self.model, batch)


@dataclass
class Prediction:
    """Gathered predictions of a split: pred, target [N, 7], labelled [N] bool, index [N]."""

    index: np.ndarray
    pred: np.ndarray
    target: np.ndarray
    labelled: np.ndarray


class Trainer:
    """Trains one model (one fold) through its recipe's stages; see the module docstring."""

    def __init__(
        self,
        *,
        config: TrainConfig,
        recipe: Recipe,
        model: nn.Module,
        train_set: Dataset,
        val_set: Dataset,
        out_dir: Path,
        ctx: D.DistContext,
        resume: bool = False,
        label: str = "",
        on_epoch_end: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.config = config
        self.recipe = recipe
        self.model = model.to(ctx.device)
        self.train_set = train_set
        self.val_set = val_set
        self.out_dir = out_dir
        self.ctx = ctx
        self.label = label
        self.on_epoch_end = on_epoch_end
        self.device = ctx.device
        self.amp = bool(config.amp) and self.device.type == "cuda"
        self.loss_fn = _loss(config.loss)
        self.history: list[dict[str, Any]] = []
        self.completed: list[str] = []
        #: each finished stage's best validation scores (Scores.to_dict()), by stage name
        self.stage_scores: dict[str, dict[str, Any]] = {}
        self.checkpoint_path = out_dir / "checkpoints" / LAST
        self._pending: dict[str, Any] | None = None
        if resume:
            self._pending = load_checkpoint(self.checkpoint_path, config)

    # ------------------------------------------------------------------ the run
    def run(self) -> Prediction:
        """Every stage, then the whole model's gathered predictions on the val split."""
        if self._pending is not None:
            state = self._pending
            self.model.load_state_dict(state["model"])
            self.completed = list(state["completed"])
            self.history = list(state["history"])
            self.stage_scores = dict(state.get("stage_scores", {}))
            log.info(
                "resuming %s from %s (stage %s, %d epoch(s) done)",
                self.label or "training",
                self.checkpoint_path,
                state["stage"],
                state["epoch"],
            )
            if state["done"]:  # stopped between stages: nothing stage-specific to restore
                self._restore_rng(state)
                self._pending = None
        for index, stage in enumerate(self.recipe.stages(self)):
            self.fit(index, stage)
        from eri.training.recipes.base import window_forward

        return self.predict(window_forward, self.val_set)

    def fit(self, index: int, stage: Stage) -> None:
        """Train one stage; the model ends with the stage's best epoch."""
        cfg = self.config
        if stage.name in self.completed:
            log.info("stage %s already done (checkpoint), skipped", stage.name)
            return
        trainable = set_trainable(self.model, stage.parts)
        if not trainable:
            raise ConfigError(f"Stage {stage.name!r} has no parameters to train.")
        train_set, val_set = stage.data()
        opt = _optimizer(cfg, trainable)
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
            opt, mode="max", factor=cfg.lr_factor, patience=cfg.lr_patience
        )
        scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        best: dict[str, Any] = {"metric": -math.inf, "epoch": -1, "state": None, "scores": None}
        start = 0
        pending = self._pending
        if pending is not None and pending["stage"] == stage.name:
            opt.load_state_dict(pending["optimizer"])
            sched.load_state_dict(pending["scheduler"])
            scaler.load_state_dict(pending["scaler"])
            best = dict(pending["best"])
            start = int(pending["epoch"])
            self._restore_rng(pending)
            self._pending = None
        net = D.wrap_ddp(StageModule(self.model, stage.forward), self.ctx)
        sampler = D.sampler(train_set, self.ctx, shuffle=True, seed=cfg.seed + index)
        loader = self._loader(train_set, sampler)
        epoch = start
        for epoch in range(start, stage.epochs):
            sampler.set_epoch(epoch)
            loss, steps = self._train_epoch(net, opt, scaler, loader)
            val = self.predict(stage.forward, val_set)
            scores = _score(val)
            sched.step(scores.mean_pcc)
            if scores.mean_pcc > best["metric"]:
                best = {
                    "metric": scores.mean_pcc,
                    "epoch": epoch,
                    "state": cpu_state(self.model),
                    "scores": scores.to_dict(),
                }
            row = {
                "stage": stage.name,
                "epoch": epoch + 1,
                "train_loss": loss,
                "val_loss": float(
                    self.loss_fn(torch.from_numpy(val.pred), torch.from_numpy(val.target))
                ),
                "val_mean_pcc": scores.mean_pcc,
                "lr": opt.param_groups[0]["lr"],
                "step_time_s": float(np.median(steps)) if steps else None,
            }
            if self.label:
                row = {"fold": self.label, **row}
            self.history.append(row)
            log.info(
                "%s%s epoch %d/%d: train loss %.4f, val loss %.4f, val mean PCC %.4f, lr %.2g, "
                "step %.3f s",
                f"{self.label} " if self.label else "",
                stage.name,
                epoch + 1,
                stage.epochs,
                row["train_loss"],
                row["val_loss"],
                row["val_mean_pcc"],
                row["lr"],
                row["step_time_s"] or 0.0,
            )
            stop = cfg.early_stop is not None and epoch - best["epoch"] >= cfg.early_stop
            self._save(stage, epoch + 1, False, opt, sched, scaler, best)
            if self.on_epoch_end is not None:
                self.on_epoch_end(row)
            if D.broadcast_flag(self.ctx, stop):
                log.info(
                    "stage %s: no improvement for %d epochs, stopped", stage.name, cfg.early_stop
                )
                break
        del net  # its DDP reducer's gradient hooks go with it
        gc.collect()
        if best["state"] is not None:
            self.model.load_state_dict(best["state"])
            log.info(
                "stage %s: kept epoch %d (val mean PCC %.4f)",
                stage.name,
                best["epoch"] + 1,
                best["metric"],
            )
        self.completed.append(stage.name)
        self.stage_scores[stage.name] = best["scores"]
        self._save(stage, epoch + 1, True, opt, sched, scaler, {**best, "state": None})

    def _train_epoch(self, net, opt, scaler, loader) -> tuple[float, list[float]]:
        self.model.train()
        eval_frozen_norms(self.model)
        total, count, steps = 0.0, 0, []
        for batch in loader:
            t0 = time.perf_counter()
            batch = _to(batch, self.device)
            with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.amp):
                pred = net(batch)
            loss = self.loss_fn(pred.float(), batch["labels"])
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if self.config.grad_clip:
                scaler.unscale_(opt)
                nn.utils.clip_grad_norm_(
                    [p for g in opt.param_groups for p in g["params"]], self.config.grad_clip
                )
            scaler.step(opt)
            scaler.update()
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            steps.append(time.perf_counter() - t0)
            n = len(batch["labels"])
            total += float(loss.detach()) * n
            count += n
        return D.all_mean(self.ctx, total / max(count, 1), count), steps

    @torch.no_grad()
    def predict(self, forward: Forward, dataset: Dataset) -> Prediction:
        """``forward`` over ``dataset`` in eval mode on every rank's share, gathered."""
        D.sync_buffers(self.model, self.ctx)
        self.model.eval()
        loader = self._loader(dataset, D.sampler(dataset, self.ctx, shuffle=False, seed=0))
        idx, rows = [], []
        for batch in loader:
            batch = _to(batch, self.device)
            with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.amp):
                pred = forward(self.model, batch)
            rows.append(
                torch.cat(
                    [pred.float(), batch["labels"].float(), batch["labelled"].float()[:, None]], 1
                ).cpu()
            )
            idx.append(batch["index"].cpu())
        index, table = D.gather_rows(
            self.ctx, torch.cat(idx).numpy(), torch.cat(rows).double().numpy()
        )
        return Prediction(index, table[:, :7], table[:, 7:14], table[:, 14] > 0.5)

    @torch.no_grad()
    def encode(self, dataset: Dataset, fn: Callable) -> RowDataset:
        """``fn(model, batch)`` -> dict of [B, ...] tensors, over all of ``dataset`` once, in
        eval mode (frozen parts), kept on the CPU with the batch's labels and flags."""
        self.model.eval()
        loader = DataLoader(dataset, batch_size=self.config.batch_size, shuffle=False)
        cols: dict[str, list[torch.Tensor]] = {}
        for batch in loader:
            out = fn(self.model, _to(batch, self.device))
            out.update({k: batch[k] for k in PASS_KEYS if k in batch})
            for k, v in out.items():
                cols.setdefault(k, []).append(
                    v.detach().float().cpu() if v.is_floating_point() else v.cpu()
                )
        return RowDataset({k: torch.cat(v) for k, v in cols.items()})

    # ------------------------------------------------------------------ helpers
    def _loader(self, dataset: Dataset, sampler) -> DataLoader:
        per_rank = max(1, self.config.batch_size // self.ctx.world_size)
        return DataLoader(
            dataset,
            batch_size=per_rank,
            sampler=sampler,
            num_workers=self.config.workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,
        )

    def _save(self, stage: Stage, epoch: int, done: bool, opt, sched, scaler, best) -> None:
        rngs = D.gather_objects(self.ctx, rng_state())
        if not self.ctx.is_main:
            return
        save_checkpoint(
            {
                "config": self.config.to_dict(),
                "stage": stage.name,
                "epoch": epoch,
                "done": done,
                "completed": list(self.completed),
                "model": cpu_state(self.model),
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(),
                "scaler": scaler.state_dict(),
                "best": best,
                "history": self.history,
                "stage_scores": self.stage_scores,
                "rng": rngs,
            },
            self.checkpoint_path,
        )
        from eri.training.curves import write_curves

        write_curves(self.history, self.out_dir)

    def _restore_rng(self, state: dict[str, Any]) -> None:
        rngs = state["rng"]
        if len(rngs) == self.ctx.world_size:
            set_rng_state(rngs[self.ctx.rank])
        else:
            log.warning(
                "the checkpoint was written by %d process(es), this run has %d: random "
                "states are reseeded, so the result will not equal an uninterrupted run",
                len(rngs),
                self.ctx.world_size,
            )
            torch.manual_seed(self.config.seed + 1000 * (len(self.history) + 1) + self.ctx.rank)


def set_trainable(model: nn.Module, parts: tuple[str, ...]) -> list[nn.Parameter]:
    """Freeze every part of ``model`` but ``parts`` (parts may overlap: a parameter a frozen
    part also holds stays frozen); returns the parameters that train."""
    valid = model.parts()
    unknown = [p for p in parts if p not in valid]
    if unknown:
        raise ConfigError(
            f"{type(model).__name__} has no part(s) {unknown}; its parts are {', '.join(valid)}."
        )
    for part in valid:
        if part not in parts:
            model.freeze(part, True)
    for part in parts:
        model.freeze(part, False)
    return [p for p in model.parameters() if p.requires_grad]


def eval_frozen_norms(model: nn.Module) -> None:
    """Frozen BatchNorms keep their running statistics (eval mode) while the rest trains."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            if not any(p.requires_grad for p in m.parameters(recurse=False)):
                m.eval()


def _to(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def _loss(name: str):
    from eri.training.losses import make_loss

    return make_loss(name)


def _optimizer(cfg: TrainConfig, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return cls(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def _score(p: Prediction):
    from eri.training.metrics import score

    return score(p.pred[p.labelled], p.target[p.labelled])
