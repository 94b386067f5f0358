"""Masked-language modelling (BERT): predict the tokens behind the masked positions.

The loss is the mean cross-entropy over the masked positions only; the head projects only those to the
vocabulary (`MaskedLM.forward` with labels).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from masklm.config import ModelConfig
from masklm.model.heads import MaskedLM
from masklm.train.loop import perplexity

Batch = dict[str, torch.Tensor]


def masked_tokens(batch: Batch) -> int:
    """What mlm_loss averages over: fit weights micro-batches by it (see fit's loss_items)."""
    return int((batch["labels"] != -100).sum())


def mlm_loss(model: nn.Module, batch: Batch) -> torch.Tensor:
    labels = batch["labels"]
    logits = model(
        batch["input_ids"], batch.get("attention_mask"), None, labels
    )  # (M, V) at masked positions
    return F.cross_entropy(logits.float(), labels[labels != -100])


def mlm_sums(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """Summed loss, correct predictions and count at the masked positions (logits (M, V) there)."""
    target = labels[labels != -100]
    logits = logits.float()
    return {
        "loss_sum": F.cross_entropy(logits, target, reduction="sum"),
        "correct": (logits.argmax(-1) == target).sum(),
        "count": torch.tensor(target.numel(), device=logits.device),
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
        return mlm_sums(model(batch["input_ids"], batch.get("attention_mask"), None, labels), labels)

    def eval_metrics(self, sums: dict[str, float]) -> dict[str, float]:
        return mlm_metrics(sums)

    def fill_mask_model(self, model: nn.Module) -> nn.Module:
        return model
