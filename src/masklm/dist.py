"""Everything torch.distributed in one place: the torchrun environment, rank helpers and model wrapping.

Under `torchrun` (WORLD_SIZE > 1) `init()` starts the process group (NCCL on GPUs, gloo on CPU) and `wrap()` puts
the model in DistributedDataParallel. A single process needs none of it: every helper here is then a no-op.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as tdist
from torch import nn

from masklm.config import Config


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device | None = None  # set when running distributed


def is_distributed() -> bool:
    return tdist.is_available() and tdist.is_initialized()


def rank() -> int:
    return tdist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return tdist.get_world_size() if is_distributed() else 1


def init(backend: str | None = None) -> DistInfo:
    """Join the process group when launched by torchrun with more than one process."""
    ws = int(os.environ.get("WORLD_SIZE", "1"))
    if ws <= 1:
        return DistInfo()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available()
    if not is_distributed():
        tdist.init_process_group(backend=backend or ("nccl" if use_cuda else "gloo"))
    device = torch.device("cuda", local) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    return DistInfo(rank(), world_size(), local, device)


def wrap(model: nn.Module, cfg: Config, device: torch.device) -> nn.Module:
    if not is_distributed():
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def no_sync(model: nn.Module) -> Callable[[], contextlib.AbstractContextManager] | None:
    """DDP's no_sync for the micro-batches before the last one of an accumulation step."""
    return getattr(model, "no_sync", None)


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    if is_distributed():
        x = x.clone()
        tdist.all_reduce(x, op=tdist.ReduceOp.SUM)
    return x


def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    return all_reduce_sum(x) / world_size()


def barrier() -> None:
    if is_distributed():
        tdist.barrier()


def shutdown() -> None:
    if is_distributed():
        tdist.barrier()
        tdist.destroy_process_group()
