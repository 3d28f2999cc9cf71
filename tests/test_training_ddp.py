"""Scale-out: `torchrun --nproc_per_node 2 -m eri.training` (gloo, CPU) reaches the metric one
process reaches with the same command and seed.

Not exactly the same numbers, by design of data parallelism: each rank's BatchNorm layers (the
ResNet18 stem) normalise with the statistics of its half of every batch rather than the whole
batch, each rank draws its own dropout and modality-dropout masks, and DDP sums gradients in
another order. The ranks' batches together are exactly the single process's batches
(DistributedSampler deals one seeded permutation round-robin; batch_size is the global batch),
so the two runs follow the same trajectory up to those effects. Tolerance: 0.1 of mean PCC
on the 16 Val clips (on a split that small one clip moves the mean PCC by up to ~0.05).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from eri.training.config import merge
from tests.test_training import SMALL

TOLERANCE = 0.1


@pytest.mark.slow
def test_torchrun_two_cpu_processes_match_one(generated_dataset, tmp_path):
    config = tmp_path / "small.yaml"
    small = merge(SMALL, {"branch_epochs": 6, "epochs": 10, "batch_size": 8})
    config.write_text(yaml.safe_dump(small))
    cache = tmp_path / "cache"
    common = [
        "--data",
        str(generated_dataset),
        "--config",
        str(config),
        "--cache",
        str(cache),
        "--device",
        "cpu",
        "--no-progress",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run(
        [sys.executable, "-m", "eri.training", *common, "--out", str(tmp_path / "one")],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "eri.training",
            *common,
            "--out",
            str(tmp_path / "two"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    m1 = json.loads((tmp_path / "one" / "metrics.json").read_text())
    m2 = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert (m1["world_size"], m2["world_size"]) == (1, 2)
    # The metric is over the whole split, gathered from both ranks, not one rank's half.
    assert m2["val"]["n"] == m1["val"]["n"] == 16
    assert abs(m1["val"]["mean_pcc"] - m2["val"]["mean_pcc"]) <= TOLERANCE, (m1["val"], m2["val"])
    # Only rank 0 wrote: one bundle, one predictions file per split with every clip once.
    rows = (tmp_path / "two" / "predictions_Val.csv").read_text().splitlines()
    assert len(rows) == 1 + 16
