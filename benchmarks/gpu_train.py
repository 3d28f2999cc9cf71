#!/usr/bin/env python
"""Training benchmark: one epoch per stage of the dual_branch recipe on generated data, on a
GPU with mixed precision (the training row of docs/benchmarks.md's GPU section).

Two steps, because preprocessing needs MediaPipe and PyAV and a GPU machine may lack both:

    python benchmarks/gpu_train.py pack     # here, with the full package: generate + preprocess
    python3 benchmarks/gpu_train.py run     # there, from a bare checkout: train and time

``pack`` generates a small dataset (``python -m eri.training.data.generate``), preprocesses it
through the live tracker and audio front end for the recipe's default specs (32 samples, 112 px
crops), and keeps the preprocessing cache's ``clips/*.npz`` with the labels and the cache key in
``benchmarks/results/gpu_train_pack/`` (about 0.8 MB per clip: the generated video's pixel noise
does not compress). ``run`` needs torch, numpy and OpenCV only (no MediaPipe, PyAV, Qt, media
files or installed package: the checkout is mapped onto ``eri``); it refuses a pack whose key is
not the one the recipe's model needs. It trains the recipe as ``eri train`` does (the same
recipe, stages, Trainer, fp16 autocast with a gradient scaler on CUDA, datasets held in RAM) on
the packed clips repeated to ``--train-clips`` / ``--val-clips`` windows, so that an epoch has
several steps; only the data path differs: the windows come from the pack, not from a dataset
folder. Per stage it records every step's time (CUDA synchronised, as the trainer times it), the
trainer's median step time, samples/s, the epoch's wall time (batches loaded and trained) and
the stage's (with its data, validation and checkpoint), and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from gpu_models import ROOT, import_eri, versions

log = logging.getLogger("eri.benchmarks.gpu_train")
RECIPE = "dual_branch"
PACK = ROOT / "benchmarks" / "results" / "gpu_train_pack"
PACK_JSON = "pack.json"


class PackError(RuntimeError):
    """A pack that is missing, incomplete or made for other specs."""


# ----------------------------------------------------------------------------- pack (here)
def make_pack(out: Path, train: int, val: int, seed: int, workers: int | None) -> dict[str, Any]:
    """Generate ``train`` + ``val`` clips, preprocess them for the recipe's default specs and
    keep the cache's clips, labels and key in ``out`` (replaced whole; ``pack.json`` last)."""
    from eri.training.config import resolve_config
    from eri.training.data import generate_dataset, open_dataset
    from eri.training.preprocess import PreprocessConfig, preprocess
    from eri.training.recipes import get_recipe

    config = resolve_config(recipe=RECIPE)
    pre = PreprocessConfig.from_model(get_recipe(RECIPE)(config).build_model())
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="eri-gpu-train-") as tmp:
        data = generate_dataset(Path(tmp) / "data", clips={"Train": train, "Val": val}, seed=seed)
        index = open_dataset(data)
        report = preprocess(index, pre, Path(tmp) / "cache", workers=workers, progress=False)
        if report.skipped:
            raise PackError(f"{len(report.skipped)} generated clip(s) failed: {report.skipped}")
        staged = out.with_name(f".{out.name}.{os.getpid()}.tmp")
        shutil.rmtree(staged, ignore_errors=True)
        shutil.copytree(report.cache_dir / "clips", staged / "clips")
        meta = {
            "recipe": RECIPE,
            "key": pre.key(),
            "preprocess": pre.to_dict(),
            "generated": {"Train": train, "Val": val, "seed": seed},  # generator defaults else
            "preprocess_wall_s": report.wall_s,
            "video_s": report.video_s,
            "clips": [
                {"clip_id": c.clip_id, "split": c.split, "labels": c.labels.tolist()}
                for c in index.clips
            ],
        }
        (staged / PACK_JSON).write_text(json.dumps(meta, indent=1) + "\n")
        shutil.rmtree(out, ignore_errors=True)
        os.replace(staged, out)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    log.info("packed %d clips into %s (%.1f MB)", train + val, out, size / 1e6)
    return meta


# ----------------------------------------------------------------------------- run (there)
def read_pack(pack: Path) -> dict[str, Any]:
    path = pack / PACK_JSON
    if not path.is_file():
        raise PackError(
            f"{path} does not exist; make the pack with `python benchmarks/gpu_train.py pack` "
            "(needs MediaPipe and PyAV) and carry its folder."
        )
    meta = json.loads(path.read_text())
    from eri.training.preprocess import ClipCache

    cache = ClipCache(pack)
    missing = [c["clip_id"] for c in meta["clips"] if not cache.has(c["clip_id"])]
    if missing:
        raise PackError(
            f"{pack} lacks {len(missing)} clip file(s) (e.g. {missing[0]}); pack again."
        )
    return meta


def tiled(clips: list[Any], n: int) -> list[Any]:
    """``n`` clips: ``clips`` repeated in order."""
    return [clips[i % len(clips)] for i in range(n)]


def make_trainer_class() -> type:
    """The trainer with a stopwatch: every stage's steps, epochs and wall time."""
    import torch

    from eri.training.trainer import Trainer

    class TimedTrainer(Trainer):
        def __init__(self, **kw: Any) -> None:
            super().__init__(**kw)
            self.timing: list[dict[str, Any]] = []

        def fit(self, index: int, stage: Any) -> None:
            if self.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(self.device)
            self.timing.append({"stage": stage.name, "step_s": [], "train_epoch_s": []})
            t0 = time.perf_counter()
            super().fit(index, stage)
            self.timing[-1]["stage_wall_s"] = time.perf_counter() - t0
            if self.device.type == "cuda":
                peak = torch.cuda.max_memory_allocated(self.device)
                self.timing[-1]["peak_gpu_mem_gib"] = peak / 1024**3

        def _train_epoch(self, net, opt, scaler, loader):  # noqa: ANN001, ANN202
            t0 = time.perf_counter()
            loss, steps = super()._train_epoch(net, opt, scaler, loader)
            self.timing[-1]["train_epoch_s"].append(time.perf_counter() - t0)
            self.timing[-1]["step_s"].append(list(steps))
            return loss, steps

    return TimedTrainer


def stage_stats(t: dict[str, Any], samples: int, batch: int, history: list[dict]) -> dict:
    """One stage's numbers; ``samples``: training windows per epoch."""
    import numpy as np

    steps = [s for epoch in t["step_s"] for s in epoch]
    rows = [r for r in history if r["stage"] == t["stage"]]
    return {
        "stage": t["stage"],
        "epochs": len(t["step_s"]),
        "steps_per_epoch": len(t["step_s"][0]) if t["step_s"] else 0,
        "batch_size": batch,
        "samples_per_epoch": samples,
        # the trainer's number (metrics.json step_time_s): median over epochs of each epoch's
        # median step
        "median_step_s": float(np.median([r["step_time_s"] for r in rows])),
        "first_step_s": steps[0],
        "median_step_s_after_first": float(np.median(steps[1:] or steps)),
        "samples_per_s": samples * len(t["step_s"]) / sum(steps),
        "train_epoch_s": t["train_epoch_s"],
        "samples_per_s_epoch": samples * len(t["step_s"]) / sum(t["train_epoch_s"]),
        "stage_wall_s": t["stage_wall_s"],
        "peak_gpu_mem_gib": t.get("peak_gpu_mem_gib"),
        "step_s": t["step_s"],
        "history": rows,
    }


def train_once(pack: Path, meta: dict, device: str, amp: bool, args: argparse.Namespace) -> dict:
    """One timed training run (every stage, ``args.epochs`` each) on ``device``."""
    import numpy as np
    import torch

    from eri.training import distributed as D
    from eri.training.config import resolve_config
    from eri.training.data.clips import Clip
    from eri.training.preprocess import ClipCache, PreprocessConfig
    from eri.training.recipes import get_recipe
    from eri.training.recipes.base import RowDataset
    from eri.training.run import _seed, _windows

    n_train, n_val = (args.train_clips, args.val_clips) if device == "cuda" else args.cpu_clips
    overrides = {"epochs": args.epochs, "branch_epochs": args.epochs, "device": device}
    overrides |= {"amp": amp, "batch_size": args.batch_size, "threads": args.threads}
    config = resolve_config(recipe=meta["recipe"], overrides=overrides)
    ctx = D.init_distributed(config.device)
    torch.set_num_threads(config.threads or D.default_threads(ctx))
    recipe = get_recipe(config.recipe)(config)
    _seed(config.seed)
    model = recipe.build_model()
    key = PreprocessConfig.from_model(model).key()
    if key != meta["key"]:
        raise PackError(
            f"{pack} holds windows for cache key {meta['key']}, but the recipe's model needs "
            f"{key} (its window, crop, audio or tracker settings changed); pack again."
        )
    clips = {"Train": [], "Val": []}
    for c in meta["clips"]:
        labels = np.asarray(c["labels"], np.float32)
        clips[c["split"]].append(Clip(c["clip_id"], c["split"], None, None, labels))
    cache = ClipCache(pack)
    t0 = time.perf_counter()
    train_set = _windows(cache, tiled(clips["Train"], n_train), config, True)
    val_set = _windows(cache, tiled(clips["Val"], n_val), config, True)
    load_s = time.perf_counter() - t0
    recipe.prepare(model, train_set)
    torch.manual_seed(config.seed)
    with tempfile.TemporaryDirectory(prefix="eri-gpu-train-run-") as out:
        trainer = make_trainer_class()(
            config=config,
            recipe=recipe,
            model=model,
            train_set=train_set,
            val_set=val_set,
            out_dir=Path(out),
            ctx=ctx,
        )
        t0 = time.perf_counter()
        trainer.run()
        wall = time.perf_counter() - t0
    stages = [stage_stats(t, n_train, config.batch_size, trainer.history) for t in trainer.timing]
    in_memory = isinstance(train_set, RowDataset)
    del trainer, model, train_set, val_set
    if device == "cuda":
        torch.cuda.empty_cache()
    return {
        "device": str(ctx.device),
        "amp": bool(config.amp) and ctx.device.type == "cuda",
        "threads": torch.get_num_threads(),
        "train_clips": n_train,
        "val_clips": n_val,
        "in_memory": in_memory,
        "dataset_load_s": load_s,
        "train_wall_s": wall,
        "stages": stages,
    }


def table(result: dict[str, Any]) -> str:
    v = result["versions"]
    lines = [
        f"GPU: {v.get('gpu') or 'none'}; torch {v['torch']}, CUDA {v.get('cuda')}, "
        f"cuDNN {v.get('cudnn')}, Python {v['python']}",
        f"{RECIPE}, {result['epochs_per_stage']} epoch per stage, packed clips "
        f"{result['unique_clips']} repeated",
        "",
        "| device | precision | stage | windows | steps | batch | median step s | samples/s "
        "| train epoch s | stage wall s | peak GPU GiB |",
        "|" + "---|" * 11,
    ]
    for run in result["runs"]:
        precision = "fp16 autocast" if run["amp"] else "fp32"
        for s in run["stages"]:
            mem = f"{s['peak_gpu_mem_gib']:.2f}" if s["peak_gpu_mem_gib"] is not None else ""
            lines.append(
                f"| {run['device']} | {precision} | {s['stage']} | {s['samples_per_epoch']} | "
                f"{s['steps_per_epoch']} | {s['batch_size']} | {s['median_step_s']:.4f} | "
                f"{s['samples_per_s']:.1f} | {sum(s['train_epoch_s']):.2f} | "
                f"{s['stage_wall_s']:.2f} | {mem} |"
            )
    return "\n".join(lines)


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def run(args: argparse.Namespace) -> int:
    import torch

    pack = Path(args.pack)
    meta = read_pack(pack)
    counts = {s: sum(c["split"] == s for c in meta["clips"]) for s in ("Train", "Val")}
    plan = [("cuda", True)] if args.device == "cuda" else [("cpu", False)]
    if args.device == "cuda" and args.fp32:
        plan.append(("cuda", False))
    if args.device == "cuda" and args.cpu_clips[0] > 0:
        plan.append(("cpu", False))
    result: dict[str, Any] = {
        "recipe": RECIPE,
        "versions": versions(args.device),
        "epochs_per_stage": args.epochs,
        "unique_clips": counts,
        "pack": {k: meta.get(k) for k in ("key", "generated", "preprocess_wall_s", "video_s")},
        "runs": [],
    }
    for device, amp in plan:
        log.info("training on %s (%s)", device, "fp16 autocast" if amp else "fp32")
        result["runs"].append(train_once(pack, meta, device, amp, args))
        write_json(Path(args.json), result)  # after each run: a cut run keeps what it has
        if device == "cuda":
            torch.cuda.synchronize()
    print(table(result))
    log.info("wrote %s", args.json)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    pk = sub.add_parser("pack", help="generate and preprocess the clips (MediaPipe, PyAV)")
    pk.add_argument("--out", default=str(PACK))
    pk.add_argument("--train", type=int, default=16, help="generated Train clips")
    pk.add_argument("--val", type=int, default=8, help="generated Val clips")
    pk.add_argument("--seed", type=int, default=0)
    pk.add_argument("--workers", type=int, help="preprocessing processes (default: cores)")
    r = sub.add_parser("run", help="train one epoch per stage and time it")
    r.add_argument("--pack", default=str(PACK))
    r.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    r.add_argument("--epochs", type=int, default=1, help="epochs per stage")
    r.add_argument("--train-clips", type=int, default=384, help="training windows per epoch")
    r.add_argument("--val-clips", type=int, default=96)
    r.add_argument("--batch-size", type=int, help="default: the recipe's")
    r.add_argument("--threads", type=int, help="torch CPU threads (default: every core)")
    r.add_argument("--fp32", action="store_true", help="also train on CUDA without autocast")
    r.add_argument(
        "--cpu-clips",
        type=int,
        nargs=2,
        default=(0, 0),
        metavar=("TRAIN", "VAL"),
        help="also train on the CPU with this many windows (reference; 0 0: not)",
    )
    r.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "gpu_train.json"))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    import_eri()
    if args.command == "pack":
        make_pack(Path(args.out), args.train, args.val, args.seed, args.workers)
        return 0
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("torch sees no CUDA GPU; run on a GPU machine, or pass --device cpu")
    if args.device == "cpu":
        args.cpu_clips = (args.train_clips, args.val_clips)
    try:
        return run(args)
    except PackError as exc:
        log.error("%s", exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
