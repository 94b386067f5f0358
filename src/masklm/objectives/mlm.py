"""Masked-language modelling (BERT): predict the tokens behind the masked positions.

The loss is the mean cross-entropy over the masked positions only; the head projects only those to the
vocabulary (`MaskedLM.forward` with labels), padded to a multiple of PAD_ROWS rows that the loss ignores.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from masklm.config import ModelConfig
from masklm.model.heads import MaskedLM, masked_targets
from masklm.train.loop import perplexity

Batch = dict[str, torch.Tensor]

# The masked-LM head's rows are padded to a multiple of this (masklm.model.heads.masked_rows): at 4,096 tokens
# per batch and 15-30% masking, a few sizes recur instead of a new one each step (flat memory in long runs),
# for at most PAD_ROWS - 1 wasted rows (1-10% of the head's work).
PAD_ROWS = 128


def masked_tokens(batch: Batch) -> int:
    """What mlm_loss averages over: fit weights micro-batches by it (see fit's loss_items)."""
    return int((batch["labels"] != -100).sum())


def mlm_loss(model: nn.Module, batch: Batch) -> torch.Tensor:
    labels = batch["labels"]
    logits = model(batch["input_ids"], batch.get("attention_mask"), None, labels, pad_rows=PAD_ROWS)  # (K, V)
    return F.cross_entropy(logits.float(), masked_targets(labels, logits.shape[0]))  # padded rows are ignored


def mlm_sums(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """Summed loss, correct predictions and count at the masked positions (logits (K, V): the M masked positions
    in order, then any padding rows, which count nowhere)."""
    target = masked_targets(
        labels, logits.shape[0]
    )  # -100 on padding rows: never argmax, ignored by the loss
    logits = logits.float()
    return {
        "loss_sum": F.cross_entropy(logits, target, reduction="sum"),
        "correct": (logits.argmax(-1) == target).sum(),
        "count": (target != -100).sum(),
    }


def mlm_metrics(sums: dict[str, float]) -> dict[str, float]:
    """loss, accuracy (of the masked tokens) and perplexity from `mlm_sums` totals."""
    count = max(sums["count"], 1.0)
    loss = sums["loss_sum"] / count
    return {"loss": loss, "accuracy": sums["correct"] / count, "perplexity": perplexity(loss)}


class MLM:
    """The MLM objective (see masklm.objectives)."""

    name = "mlm"
    architecture = MaskedLM.architecture
    extras = False

    def build(self, cfg: ModelConfig) -> nn.Module:
        return MaskedLM(cfg)

    def info(self) -> dict[str, Any]:
        return {}

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        return mlm_loss(model, batch)  # looked up at call time: tests wrap it

    def loss_items(self, batch: Batch) -> int:
        return masked_tokens(batch)

    def eval_sums(self, model: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
        labels = batch["labels"]
        logits = model(batch["input_ids"], batch.get("attention_mask"), None, labels, pad_rows=PAD_ROWS)
        return mlm_sums(logits, labels)

    def eval_metrics(self, sums: dict[str, float]) -> dict[str, float]:
        return mlm_metrics(sums)

    def fill_mask_model(self, model: nn.Module) -> nn.Module:
        return model
