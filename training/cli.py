"""``eri train``: train a recipe on a dataset into a run folder with a bundle.

    eri train --data DIR [--recipe NAME | --arch NAME] [--config YAML] [--epochs N] ...
    torchrun --nproc_per_node N -m eri.training --data DIR --out RUN ...   (the same command)

Only the standard library is imported here, so building the ``eri`` parser stays instant;
torch and the training modules load when the command runs.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from eri.argtypes import int_at_least, positive_float

log = logging.getLogger(__name__)

#: Flags that override config keys (flag dest -> config key).
CONFIG_FLAGS = {
    "epochs": "epochs",
    "batch_size": "batch_size",
    "lr": "lr",
    "loss": "loss",
    "folds": "folds",
    "seed": "seed",
    "device": "device",
    "workers": "workers",
    "pretrained": "pretrained",
}


def add_train_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``eri train`` on the ``eri`` command's subparsers."""
    p = subparsers.add_parser(
        "train",
        help="train a model on a dataset (writes a bundle)",
        description="Train a recipe (dual_branch, cnn_lstm, mtl_dan: each paper's settings "
        "from training/configs/<recipe>.yaml, overridden by --config YAML, then by flags) and "
        "write RUN/bundle with its metrics and provenance, RUN/checkpoints, RUN/curves.csv/.png "
        "and RUN/predictions_<split>.csv. The same command runs under torchrun "
        "(`torchrun --nproc_per_node N -m eri.training ...`).",
    )
    p.add_argument(
        "--data", required=True, help="dataset: ABAW5 folder, manifest CSV or recorded sessions"
    )
    p.add_argument("--recipe", help="training recipe (default: dual_branch)")
    p.add_argument("--arch", help="architecture; picks the recipe that trains it")
    p.add_argument("--config", metavar="YAML", help="YAML of config keys overriding the recipe's")
    p.add_argument("--epochs", type=int_at_least(1), help="epochs of the last (or only) stage")
    p.add_argument("--batch-size", type=int_at_least(1), help="windows per step over all processes")
    p.add_argument("--lr", type=positive_float, help="learning rate")
    p.add_argument("--loss", choices=("mse", "pcc", "ccc"), help="training loss")
    p.add_argument("--out", metavar="RUN", help="run folder (default: runs/<recipe>-<time>)")
    p.add_argument(
        "--folds", type=int_at_least(2), help="k-fold cross-validation over Train+Val with K folds"
    )
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument(
        "--pretrained",
        metavar="PATH",
        help="backbone weights (torchvision-style or AffectNet ResNet state dict)",
    )
    p.add_argument("--workers", type=int_at_least(0), help="DataLoader worker processes")
    p.add_argument(
        "--cache",
        metavar="DIR",
        help="preprocessing cache root (default: $ERI_CACHE_DIR/preprocess or "
        "~/.cache/eri-live/preprocess)",
    )
    p.add_argument("--seed", type=int, help="random seed")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), help="default: auto")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)
    return p


def cmd_train(args: argparse.Namespace) -> int:
    """Run the training and print the validation table."""
    from eri.training.config import ConfigError, resolve_config

    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if rank > 0:  # one voice: the other ranks only warn
        logging.getLogger("eri").setLevel(logging.WARNING)
    if not Path(args.data).exists():
        raise ConfigError(f"--data {args.data} does not exist; pass a dataset folder or CSV.")
    if args.pretrained and not Path(args.pretrained).is_file():
        raise ConfigError(
            f"--pretrained {args.pretrained} does not exist; pass a backbone weights file "
            "(.safetensors, .pt or .pth)."
        )
    overrides = {key: getattr(args, flag) for flag, key in CONFIG_FLAGS.items()}
    config = resolve_config(
        recipe=args.recipe, arch=args.arch, config_path=args.config, overrides=overrides
    )
    if args.out is None:
        if args.resume or world > 1:
            what = "--resume" if args.resume else "a run under torchrun"
            raise ConfigError(f"{what} needs --out RUN (the run folder); pass it.")
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        args.out = str(Path("runs") / f"{config.recipe}-{stamp}")
    from eri.training import distributed
    from eri.training.run import train

    try:
        result = train(
            args.data,
            config,
            args.out,
            cache_root=args.cache,
            resume=args.resume,
            progress=not args.no_progress and rank == 0,
        )
    finally:
        distributed.shutdown()
    if rank == 0:
        from eri.training.metrics import Scores

        print(Scores.from_dict(result.metrics["val"]).table(f"{config.recipe} val"))
        print(f"bundle: {result.bundle}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m eri.training ARGS`` = ``eri train ARGS`` (what torchrun launches)."""
    from eri.realtime.cli import main as eri_main

    return eri_main(["train", *(sys.argv[1:] if argv is None else argv)])
