"""Optimizer and learning-rate schedule.

AdamW with two parameter groups: weight decay on matrices, none on biases, LayerNorm weights and embeddings'
padding-free norms (anything with fewer than two dimensions). The schedule is a pure function of training
progress in [0, 1], so step budgets and wall-clock budgets use the same code.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from masklm import dist
from masklm.config import TrainConfig


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.ndim >= 2 else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def make_optimizer(model: nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    # The fused kernel is one pass over all parameters: on CPU it halves the optimizer step against foreach
    # (21 vs 49 ms for 11M parameters, docs/profile.md). FSDP2's sharded DTensor parameters take foreach.
    fused = device.type in ("cuda", "cpu") and not dist.is_fsdp(model)
    kwargs = {"fused": True} if fused else {"foreach": True}
    return torch.optim.AdamW(
        param_groups(model, cfg.weight_decay),
        lr=cfg.lr,
        betas=(cfg.beta1, cfg.beta2),
        eps=cfg.eps,
        **kwargs,
    )


def lr_factor(progress: float, cfg: TrainConfig, total_steps: int | None = None) -> float:
    """Multiplier on cfg.lr at `progress` (0 = start, 1 = end of the budget).

    warmup: linear from 0 to 1 over the warmup (a fraction of the budget if < 1, else a step count);
    then "linear" and "cosine" decay to min_lr_ratio at the end, "wsd" stays flat and decays linearly over the
    last decay_fraction, "constant" stays at 1.
    """
    progress = min(max(progress, 0.0), 1.0)
    warm = cfg.warmup if cfg.warmup < 1 else (cfg.warmup / total_steps if total_steps else 0.0)
    warm = min(warm, 1.0)
    if warm > 0 and progress < warm:
        return progress / warm
    if cfg.schedule == "constant":
        return 1.0
    floor = cfg.min_lr_ratio
    if cfg.schedule == "wsd":
        start = 1.0 - cfg.decay_fraction
        if progress < start or cfg.decay_fraction <= 0:
            return 1.0
        t = (progress - start) / cfg.decay_fraction
        return floor + (1 - floor) * (1 - t)
    t = (progress - warm) / max(1e-12, 1 - warm)
    if cfg.schedule == "cosine":
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t))
    return floor + (1 - floor) * (1 - t)  # linear


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
