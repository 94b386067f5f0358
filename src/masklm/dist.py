"""Everything torch.distributed in one place: the torchrun environment, rank helpers, model wrapping and the
distributed halves of checkpointing.

Under `torchrun` (WORLD_SIZE > 1) `init()` joins the process group (NCCL on GPUs, gloo on CPU, or what
`dist.backend` says) and `wrap()` parallelises the model:

- "ddp"  (default): DistributedDataParallel; every process holds the whole model and optimizer.
- "fsdp": FSDP2 (`torch.distributed.fsdp.fully_shard`), applied to each encoder block after construction and then
  to the root, so parameters, gradients and optimizer state are sharded across processes.

A single process needs none of it: every helper here is then a no-op or the plain single-process computation.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as tdist
from torch import nn

from masklm.config import Config
from masklm.errors import UserError
from masklm.model.encoder import Encoder

T = TypeVar("T")


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device | None = None  # set when running distributed


def is_distributed() -> bool:
    return tdist.is_available() and tdist.is_initialized()


def rank() -> int:
    """This process's rank: the process group's once it is joined, before that torchrun's RANK (0 without it).

    The one rank of masklm: rank-0 logging asks it before `init()` as well as after.
    """
    return tdist.get_rank() if is_distributed() else int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return tdist.get_world_size() if is_distributed() else 1


def init(backend: str = "auto", device: str = "auto") -> DistInfo:
    """Join the process group when launched by torchrun with more than one process (idempotent).

    Each process takes GPU LOCAL_RANK when there are GPUs (and `device` does not say "cpu"). backend "auto" is
    NCCL for GPUs and gloo for CPUs.
    """
    ws = int(os.environ.get("WORLD_SIZE", "1"))
    if ws <= 1:
        return DistInfo()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and not device.startswith("cpu")
    dev = torch.device("cuda", local) if use_cuda else torch.device("cpu")
    if backend == "auto":
        backend = "nccl" if use_cuda else "gloo"
    if backend == "nccl" and not use_cuda:
        raise UserError("dist.backend=nccl needs GPUs; use --dist.backend gloo (or auto) on CPU")
    if use_cuda:
        torch.cuda.set_device(dev)
    if not is_distributed():
        tdist.init_process_group(backend=backend)
    return DistInfo(rank(), world_size(), local, dev)


def _plain(model: nn.Module) -> nn.Module:
    """Under a torch.compile wrapper, the module it compiled (DDP, FSDP or plain)."""
    return getattr(model, "_orig_mod", model)


def is_fsdp(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(_plain(model), FSDPModule)


def wrap(model: nn.Module, cfg: Config | Any, device: torch.device) -> nn.Module:
    """DDP or FSDP2 as cfg.dist.strategy says; the model itself when running as one process.

    Build the optimizer after this call: FSDP2 replaces the parameters by sharded ones (DTensors) in place.
    """
    if not is_distributed():
        return model
    strategy = getattr(getattr(cfg, "dist", None), "strategy", "ddp")  # configs without a dist section: DDP
    if strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard

        # One FSDP unit per block of every encoder in the model (all-gathered just before it runs, freed after;
        # ELECTRA has two encoders, its discriminator and its generator), then the root, which holds the
        # embeddings (tied to the MLM decoder, shared by ELECTRA's two encoders) and the heads.
        for block in encoder_blocks(model):
            fully_shard(block)
        fully_shard(model)
        # The heads return slices of their logits (padded vocabulary rows cut off); nothing modifies them in
        # place, which is what this warning is about.
        warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def encoder_blocks(model: nn.Module) -> list[nn.Module]:
    """The Transformer blocks of every encoder in `model`, in order."""
    return [block for module in model.modules() if isinstance(module, Encoder) for block in module.layers]


def no_sync(model: nn.Module) -> Callable[[], contextlib.AbstractContextManager] | None:
    """For the micro-batches before the last one of an accumulation step: no gradient synchronisation.

    DDP: its no_sync(); FSDP2: set_requires_gradient_sync(False) inside, True again after. None otherwise.
    """
    inner = _plain(model)
    if is_fsdp(inner):

        @contextlib.contextmanager
        def fsdp_no_sync() -> Iterator[None]:
            inner.set_requires_gradient_sync(False)  # type: ignore[operator]
            try:
                yield
            finally:
                inner.set_requires_gradient_sync(True)  # type: ignore[operator]

        return fsdp_no_sync
    return getattr(inner, "no_sync", None)


def clip_grad_norm_(model: nn.Module, max_norm: float) -> torch.Tensor:
    """The norm of the gradient of the whole model (all processes); clips to max_norm when it is > 0.

    Under FSDP each process holds a shard of every gradient: the norm is reduced across processes, so every
    process sees (and clips with) the same global norm. Under DDP the gradients are already identical.
    """
    params = [p for p in model.parameters() if p.grad is not None]
    total = torch.nn.utils.get_total_norm([p.grad for p in params], 2.0)
    if hasattr(total, "full_tensor"):  # a DTensor: gather the global value
        total = total.full_tensor()
    if max_norm > 0:
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, total)
    return total


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    if is_distributed():
        x = x.clone()
        tdist.all_reduce(x, op=tdist.ReduceOp.SUM)
    return x


def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    return all_reduce_sum(x) / world_size()


def all_reduce_max(x: torch.Tensor) -> torch.Tensor:
    """Element-wise maximum across processes: how ranks agree on flags (stop, skip) and on elapsed time."""
    if is_distributed():
        x = x.clone()
        tdist.all_reduce(x, op=tdist.ReduceOp.MAX)
    return x


def all_gather_object(obj: T) -> list[T]:
    """[the object of rank 0, of rank 1, ...] on every process."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * world_size()
    tdist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if is_distributed():
        tdist.barrier()


def on_rank0(fn: Callable[[], T], what: str) -> T | None:
    """Run fn on rank 0 while the others wait; if it fails there, fail everywhere instead of waiting forever."""
    if not is_distributed():
        return fn()
    result: T | None = None
    error: BaseException | None = None
    if rank() == 0:
        try:
            result = fn()
        except BaseException as e:  # re-raised below, after telling the other processes
            error = e
    status = [None if error is None else f"{type(error).__name__}: {error}"]
    tdist.broadcast_object_list(status, src=0)
    if error is not None:
        raise error
    if status[0] is not None:
        raise UserError(f"{what} failed on rank 0 ({status[0]})")
    return result


def shutdown() -> None:
    if is_distributed():
        tdist.barrier()
        tdist.destroy_process_group()


# ----------------------------------------------------------------------------------------------------------------
# State dicts for checkpoints: sharded (torch.distributed.checkpoint) and full


@contextlib.contextmanager
def _no_warnings() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        yield


def save_sharded(folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Collective: each process writes its shards of model and optimizer state into `folder` (DCP format)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_sd, optim_sd = get_state_dict(_plain(model), optimizer)
    with _no_warnings():
        dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(folder))


def load_sharded(folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None) -> None:
    """Load a DCP checkpoint into any layout: FSDP with any number of processes, DDP, or one plain process.

    DCP reshards on load: each process asks for the pieces its own (sharded or full) tensors cover.
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_state_dict,
        set_model_state_dict,
        set_state_dict,
    )

    m = _plain(model)
    with _no_warnings():
        if optimizer is None:
            model_sd = get_model_state_dict(m)
            dcp.load({"model": model_sd}, checkpoint_id=str(folder))
            set_model_state_dict(m, model_sd)
            return
        model_sd, optim_sd = get_state_dict(m, optimizer)
        dcp.load({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(folder))
        set_state_dict(m, optimizer, model_state_dict=model_sd, optim_state_dict=optim_sd)


def load_full_into_sharded(
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    model_sd: dict[str, torch.Tensor],
    optim_sd: dict[str, Any] | None,
) -> None:
    """A single-file checkpoint (whole tensors, optimizer keyed by parameter index) into an FSDP model."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    m = _plain(model)
    options = StateDictOptions(full_state_dict=True)
    if optimizer is None or optim_sd is None:
        from torch.distributed.checkpoint.state_dict import set_model_state_dict

        set_model_state_dict(m, model_sd, options=options)
        return
    # optimizer.state_dict() numbers parameters in the order of the optimizer's groups; DCP wants names.
    names = {id(p): n for n, p in m.named_parameters()}
    ordered = [names[id(p)] for g in optimizer.param_groups for p in g["params"]]
    saved_ids = [i for g in optim_sd["param_groups"] for i in g["params"]]
    if len(saved_ids) != len(ordered):
        raise UserError("the checkpoint's optimizer does not match this model; resume with the saved config")
    by_name = dict(zip(saved_ids, ordered))
    named = {
        "state": {by_name[i]: s for i, s in optim_sd["state"].items()},
        "param_groups": [
            {**g, "params": [by_name[i] for i in g["params"]]} for g in optim_sd["param_groups"]
        ],
    }
    set_state_dict(m, optimizer, model_state_dict=model_sd, optim_state_dict=named, options=options)


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole model's weights on CPU. Collective under FSDP (gathered; complete on rank 0 only)."""
    m = _plain(model)
    if not is_fsdp(m):
        while hasattr(m, "module") and isinstance(m.module, nn.Module):  # DDP
            m = m.module
        return {k: v.detach().cpu() for k, v in m.state_dict().items()}
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(m, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
