"""One student on several processes: torch DistributedDataParallel, launched by torchrun.

`fit` asks `world()` whether a process group is up. With one, every rank walks the same
global batch order and takes its own contiguous shard of each global batch (`shard`);
DDP averages the gradients, so with equal shards the step is the step of the global
mean loss. Only rank 0 writes artifacts (`is_main`).

Batch norm is the one place where a shard is not the global batch: on CUDA, `wrap`
converts it to SyncBatchNorm, whose statistics are those of the global batch. PyTorch's
SyncBatchNorm runs on accelerators only, so on CPU (gloo) each rank normalises by its
shard's statistics and the result differs from single-process training; `fit` says so
in its log. A student without batch norm (mlp) matches single-process training within
float tolerance on either device (tests/train/test_ddp.py).
"""
from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

LAUNCH = "python -m torch.distributed.run --nproc_per_node N -m tasks.train_student --method M --seed S"


def world() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) without a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    """True on the one process that writes artifacts (rank 0, or the only process)."""
    return world()[0] == 0


def init_from_env(device: torch.device) -> None:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, MASTER_ADDR, ...).

    nccl on CUDA, where each rank takes GPU LOCAL_RANK; gloo on CPU.
    """
    missing = [name for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT") if name not in os.environ]
    if missing:
        raise RuntimeError(f"runtime.ddp is true but this process was not started by torchrun (no {', '.join(missing)}); run: {LAUNCH}")
    if dist.is_initialized():
        return
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timedelta(minutes=30))


def shard(indices: Tensor) -> Tensor:
    """This rank's contiguous slice of a global batch (the whole batch on one process)."""
    rank, size = world()
    if size == 1:
        return indices
    if len(indices) % size:
        raise ValueError(f"a global batch of {len(indices)} samples does not split evenly over {size} ranks")
    per_rank = len(indices) // size
    return indices[rank * per_rank : (rank + 1) * per_rank]


def has_batch_norm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """`model` under DistributedDataParallel; batch norm becomes SyncBatchNorm on CUDA.

    The conversion swaps the BatchNorm modules inside `model` in place (same parameters
    and buffers), so the caller's `model` stays the module to export.
    """
    if device.type == "cuda":
        for name, child in list(model.named_children()):
            setattr(model, name, nn.SyncBatchNorm.convert_sync_batchnorm(child))
        return DistributedDataParallel(model, device_ids=[device.index if device.index is not None else torch.cuda.current_device()])
    return DistributedDataParallel(model)


def all_sum(values: list[float], device: torch.device) -> list[float]:
    """Element-wise sum over ranks (the values themselves on one process)."""
    if world()[1] == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def all_true(flag: bool, device: torch.device) -> bool:
    """True when `flag` holds on every rank, so all ranks stop together (no rank left waiting)."""
    if world()[1] == 1:
        return flag
    t = torch.tensor([0.0 if flag else 1.0], device=device)
    dist.all_reduce(t)
    return t.item() == 0.0
