"""Pretraining objectives: what one pretraining step computes from a masked batch, beside the model.

    objective = objective_for(cfg)                     # cfg.objective.name: "mlm" or "electra"
    model = objective.build(cfg.model)                 # a fresh model of objective.architecture
    loss = objective.loss(model, batch)                # a mean, or one mean per part (see `loss_items`)
    objective.loss_items(batch)                        # what each part averages over: fit weights by it
    metrics = evaluate(model, objective, batches, ...) # held-out metrics (objective.eval_sums / eval_metrics)
    objective.fill_mask_model(model)                   # the masked LM in it: the model, or ELECTRA's generator

An objective is one file here (mlm.py, electra.py) and its entry in `objective_for`. Batches come from
`masklm.train.pretrain.MaskedBatches`, which adds what an objective asks for (`extras`).
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from masklm import dist
from masklm.config import Config, ModelConfig
from masklm.data.masking import mask_seed

Batch = dict[str, torch.Tensor]
EVAL_SEED = 12345  # held-out masks (and ELECTRA samples) are seeded by it and the sequence's index


class Objective(Protocol):
    name: str
    architecture: str  # the registered head it trains (masklm.model.base)
    extras: bool  # whether batches carry ELECTRA's "sample_u" and "real" tensors

    def build(self, cfg: ModelConfig) -> nn.Module: ...

    def info(self) -> dict[str, Any]: ...  # saved with the model (ModelInfo.task)

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor: ...

    def loss_items(self, batch: Batch) -> int | tuple[int, ...]: ...

    def eval_sums(self, model: nn.Module, batch: Batch) -> dict[str, torch.Tensor]: ...

    def eval_metrics(self, sums: dict[str, float]) -> dict[str, float]: ...

    def fill_mask_model(
        self, model: nn.Module
    ) -> nn.Module: ...  # the MaskedLM inside (pseudo-log-likelihood)


def objective_for(cfg: Config) -> Objective:
    """The objective cfg.objective names."""
    o = cfg.objective
    if o.name == "electra":
        from masklm.objectives.electra import Electra

        return Electra(o.generator_fraction, o.discriminator_weight)
    from masklm.objectives.mlm import MLM

    return MLM()


def eval_rows(total: int, limit: int) -> np.ndarray:
    """The held-out rows an evaluation reads: `limit` of the `total`, evenly spaced (all of them when there are
    fewer). The validation split of several sources, or of a corpus of several files, lies one part after another:
    its first rows would be the first source's or the first files' alone."""
    n = min(limit, total)
    return (np.arange(n, dtype=np.int64) * total) // max(n, 1)


@torch.no_grad()
def evaluate(
    model: nn.Module, objective: Objective, batches: Any, limit: int, batch_size: int, device: torch.device
) -> dict[str, float]:
    """Held-out metrics of `objective` on `limit` sequences of `batches` (a MaskedBatches), evenly spaced over its
    validation split (`eval_rows`), with the same masks (and samples) at every evaluation, for any batch size or
    number of processes: each sequence's are seeded by its index.

    Each process evaluates a disjoint share of the batches and the sums are all-reduced. Every process runs the
    same number of forward passes (FSDP gathers parameters collectively in each one): a process with no batch
    left in the last round runs a stand-in batch and ignores it.
    """
    ds = batches.dataset
    rows = eval_rows(len(ds), limit)
    sums: dict[str, torch.Tensor] = {}
    r, w = dist.rank(), dist.world_size()
    starts = range(0, len(rows), batch_size)
    for round_ in range(-(-len(starts) // w)):
        j = round_ * w + r  # this process's batch in this round
        start = starts[j] if j < len(starts) else 0
        idx = rows[start : start + batch_size]
        ids, ws = ds.get(idx)
        masked = batches.masked(ids, ws, [mask_seed(EVAL_SEED, int(i)) for i in idx])  # one per sequence
        batch = {k: v.to(device) for k, v in masked.items()}
        got = objective.eval_sums(model, batch)
        for k, v in got.items():  # a stand-in batch counts nothing, but every process has the same names
            sums[k] = sums.get(k, torch.zeros((), dtype=torch.float64, device=device))
            if j < len(starts):
                sums[k] = sums[k] + v.double()
    totals = {k: float(dist.all_reduce_sum(v)) for k, v in sorted(sums.items())}
    return objective.eval_metrics(totals)
