"""Scale-out: one command on one CPU, one GPU, many GPUs or several nodes (torchrun + DDP).

``torchrun --nproc_per_node N -m eri.training --data DIR ...`` sets RANK / WORLD_SIZE /
LOCAL_RANK / MASTER_ADDR; :func:`init_distributed` reads them and joins the process group
(gloo on CPU, nccl on CUDA). Without them the run is a single process and nothing here talks
to anything. Each rank trains on its share of every batch (DistributedSampler), DDP averages
the gradients, validation predictions are gathered so the metric is over the whole split, and
only rank 0 writes files.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from eri.errors import EriError

log = logging.getLogger(__name__)


class DistributedError(EriError, RuntimeError):
    """A distributed launch that cannot work; the message says what to change."""


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: ``rank`` of ``world_size`` processes, its ``device``."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that writes files and logs progress."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` without a GPU is refused."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise DistributedError(
                "--device cuda was given but torch sees no CUDA GPU; use --device cpu or a "
                "CUDA build of torch."
            )
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def init_distributed(device: str) -> DistContext:
    """Join the process group torchrun describes in the environment (or run alone)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    dev = pick_device(device, local_rank)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(backend=backend, device_id=dev if dev.type == "cuda" else None)
        log.info("rank %d of %d joined the %s process group on %s", rank, world, backend, dev)
    return DistContext(rank, world, local_rank, max(1, local_world), dev)


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        dist.barrier()


def default_threads(ctx: DistContext) -> int:
    """Intra-op threads per process: the CPU cores shared by the processes of this node."""
    return max(1, (os.cpu_count() or 1) // ctx.local_world_size)


def all_mean(ctx: DistContext, value: float, count: int) -> float:
    """The mean over all ranks of a per-rank mean ``value`` over ``count`` items."""
    if not ctx.distributed:
        return value
    t = torch.tensor([value * count, float(count)], dtype=torch.float64, device=_comm(ctx))
    dist.all_reduce(t)
    return float(t[0] / t[1]) if t[1] > 0 else float("nan")


def gather_rows(ctx: DistContext, index: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, ...]:
    """Each rank's ``index`` [n] and ``rows`` [n, K] -> the whole split's, ordered by index,
    each index once (DistributedSampler pads the last ranks with repeats)."""
    if ctx.distributed:
        parts: list = [None] * ctx.world_size
        dist.all_gather_object(parts, (index, rows))
        index = np.concatenate([p[0] for p in parts])
        rows = np.concatenate([p[1] for p in parts])
    order = np.argsort(index, kind="stable")
    index, rows = index[order], rows[order]
    keep = np.ones(len(index), dtype=bool)
    keep[1:] = index[1:] != index[:-1]
    return index[keep], rows[keep]


def broadcast_flag(ctx: DistContext, flag: bool) -> bool:
    """Rank 0's ``flag`` on every rank (e.g. "stop early")."""
    if not ctx.distributed:
        return flag
    t = torch.tensor([1 if flag else 0], device=_comm(ctx))
    dist.broadcast(t, 0)
    return bool(t.item())


def gather_objects(ctx: DistContext, obj: object) -> list:
    """``obj`` of every rank, in rank order (a one-element list when alone)."""
    if not ctx.distributed:
        return [obj]
    parts: list = [None] * ctx.world_size
    dist.all_gather_object(parts, obj)
    return parts


def sync_buffers(module: torch.nn.Module, ctx: DistContext) -> None:
    """Rank 0's buffers (BatchNorm running statistics) on every rank, so every rank evaluates
    the model rank 0 saves."""
    if not ctx.distributed:
        return
    for buf in module.buffers():
        dist.broadcast(buf.data, 0)


def _comm(ctx: DistContext) -> torch.device:
    """The device collective tensors live on (nccl needs CUDA tensors)."""
    return ctx.device if ctx.device.type == "cuda" else torch.device("cpu")


def wrap_ddp(module: torch.nn.Module, ctx: DistContext) -> torch.nn.Module:
    """``module`` in DistributedDataParallel when there is more than one process."""
    if not ctx.distributed:
        return module
    from torch.nn.parallel import DistributedDataParallel

    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids, broadcast_buffers=False)


def sampler(dataset, ctx: DistContext, *, shuffle: bool, seed: int):
    """Each rank's share of ``dataset``: one seeded permutation per epoch (``set_epoch``), dealt
    round-robin, so the ranks' batches together are the batch a single process would take."""
    from torch.utils.data import DistributedSampler

    return DistributedSampler(
        dataset,
        num_replicas=ctx.world_size,
        rank=ctx.rank,
        shuffle=shuffle,
        seed=seed,
        drop_last=False,
    )
