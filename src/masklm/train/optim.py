"""Optimizer and learning-rate schedule.

AdamW with two parameter groups: weight decay on matrices, none on biases, LayerNorm weights and embeddings'
padding-free norms (anything with fewer than two dimensions). The schedule is a pure function of training
progress in [0, 1], so step budgets and wall-clock budgets use the same code.

Layer-wise learning-rate decay (train.layer_decay = d < 1: fine-tuning, and MLM pretraining from a pretrained
encoder) splits both groups by depth, as BEiT and ELECTRA do: with L encoder blocks, the embeddings are depth 0,
block i (0 = the lowest) depth i + 1, everything else (the head, a pooler, a pre-LN model's final norm) depth
L + 1; depth k gets lr * d ** (L + 1 - k). So the head trains at lr, the top block at lr * d, block i at
lr * d ** (L - i) and the embeddings at lr * d ** (L + 1). Each such group carries its factor as "lr_scale", and
`set_lr` keeps the ratios.
"""

from __future__ import annotations

import dataclasses
import math
import re

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


_BLOCK = re.compile(r"(?:^|\.)encoder\.layers\.(\d+)\.")
# the embeddings and, with model.embedding_size, their projection to the hidden size (ELECTRA's embeddings_project,
# which ELECTRA's layer decay puts at depth 0 too): both lie below block 0
_EMBEDDINGS = re.compile(r"(?:^|\.)encoder\.(?:embeddings|embed_proj)\.")


def layer_depth(name: str, num_layers: int) -> int:
    """A parameter's depth for layer decay: 0 the embeddings (and their projection), i + 1 block i,
    num_layers + 1 the rest."""
    if _EMBEDDINGS.search(name):
        return 0
    block = _BLOCK.search(name)
    return int(block.group(1)) + 1 if block else num_layers + 1


def layer_decay_groups(model: nn.Module, weight_decay: float, lr: float, decay: float) -> list[dict]:
    """`param_groups` split by depth (see the module's docstring): the head's groups first, then down to the
    embeddings, each with "lr_scale" = decay ** (L + 1 - depth) and "lr" = lr * lr_scale; no empty group."""
    num_layers = int(model.cfg.num_hidden_layers)
    groups: dict[tuple[int, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        groups.setdefault((layer_depth(name, num_layers), p.ndim >= 2), []).append(p)
    out = []
    for depth in range(num_layers + 1, -1, -1):
        scale = decay ** (num_layers + 1 - depth)
        for decayed in (True, False):
            params = groups.get((depth, decayed))
            if params:
                out.append(
                    {
                        "params": params,
                        "weight_decay": weight_decay if decayed else 0.0,
                        "lr": lr * scale,
                        "lr_scale": scale,
                    }
                )
    return out


def make_optimizer(model: nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    # The fused kernel is one pass over all parameters: on CPU it halves the optimizer step against foreach
    # (21 vs 49 ms for 11M parameters, docs/profile.md). FSDP2's sharded DTensor parameters take foreach.
    fused = device.type in ("cuda", "cpu") and not dist.is_fsdp(model)
    kwargs = {"fused": True} if fused else {"foreach": True}
    decay = cfg.layer_decay
    groups = (
        param_groups(model, cfg.weight_decay)
        if decay == 1.0
        else layer_decay_groups(model, cfg.weight_decay, cfg.lr, decay)
    )
    return torch.optim.AdamW(
        groups,
        lr=cfg.lr,
        betas=(cfg.beta1, cfg.beta2),
        eps=cfg.eps,
        **kwargs,
    )


def lr_factor(
    progress: float, cfg: TrainConfig, total_steps: int | None = None, step: int | None = None
) -> float:
    """Multiplier on cfg.lr at `progress` (0 = start, 1 = end of the budget).

    warmup: linear from 0 to 1 over the warmup (a fraction of the budget if < 1, else a step count);
    then "linear" and "cosine" decay to min_lr_ratio at the end, "wsd" stays flat and decays linearly over the
    last decay_fraction, "constant" stays at 1. Under a time budget (no `total_steps`) a warmup in steps counts
    this `step`, up to where it meets the schedule's decay over the time (it was dropped: full rate at step 1).
    """
    if cfg.warmup >= 1 and not total_steps and step is not None:
        return min(step / cfg.warmup, lr_factor(progress, dataclasses.replace(cfg, warmup=0.0)))
    progress = min(max(progress, 0.0), 1.0)
    # (a warmup in steps longer than the budget keeps its slope, step / warmup: the rate never reaches train.lr)
    warm = cfg.warmup if cfg.warmup < 1 else (cfg.warmup / total_steps if total_steps else 0.0)
    if warm > 0 and progress < warm:
        return progress / warm
    if cfg.schedule == "constant":
        return 1.0
    floor = cfg.min_lr_ratio
    if cfg.schedule == "wsd":
        # the decay starts where the warmup ends when that is later (no drop from the warmup's top at once)
        start = max(1.0 - cfg.decay_fraction, warm)
        if progress < start or cfg.decay_fraction <= 0:
            return 1.0
        t = (progress - start) / max(1e-12, 1 - start)
        return floor + (1 - floor) * (1 - t)
    t = (progress - warm) / max(1e-12, 1 - warm)
    if cfg.schedule == "cosine":
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t))
    return floor + (1 - floor) * (1 - t)  # linear


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Every group at `lr` times its own "lr_scale" (layer-wise decay; 1 without it)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
