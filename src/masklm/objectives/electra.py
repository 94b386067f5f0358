"""ELECTRA's replaced-token detection (Clark et al. 2020), with its generator's MLM loss.

One step (`ElectraPreTraining.forward` with labels; masklm.model.electra): the generator predicts the masked
positions; a token sampled from its softmax (without gradient) replaces each; the discriminator tells for every
token whether it was replaced. A sample equal to the original counts as original. The loss is

    generator MLM loss (mean over masked tokens) + discriminator_weight × discriminator loss (mean binary
    cross-entropy over real tokens: not padding, not [CLS] / [SEP] / other specials)

returned as its two parts with their counts (`loss_items`), so that fit weights each part by its own items and
the step's loss is the same for any split of the global batch into processes × micro-batches × accumulation.

The samples are a pure function of the run's seed and the stream position: `MaskedBatches` draws one uniform
number per token from each sequence's mask generator (`sample_u`) and the generator's softmax is inverted at it.

Evaluation keys: loss / accuracy / perplexity (the generator's, on the masked tokens, as for MLM),
discriminator_loss (mean binary cross-entropy over real tokens), discriminator_accuracy (share of real tokens
judged right, replaced or not), replaced_fraction (share of real tokens the generator's samples replaced) and
replaced_recall (share of the replaced tokens the discriminator caught).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from masklm.config import ModelConfig
from masklm.model.electra import ElectraPreTraining
from masklm.model.heads import masked_targets
from masklm.objectives.mlm import PAD_ROWS, mlm_metrics, mlm_sums

Batch = dict[str, torch.Tensor]


def electra_parts(model: nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(generator logits (K, V) at the masked positions and padding rows (see MLM), discriminator logits (B, T),
    replaced (B, T) bool)."""
    ids, mask, labels = batch["input_ids"], batch.get("attention_mask"), batch["labels"]
    return model(ids, mask, None, labels, sample_u=batch["sample_u"], pad_rows=PAD_ROWS)


def electra_loss(model: nn.Module, batch: Batch, weight: float) -> torch.Tensor:
    """[generator MLM loss, weight × discriminator loss], each a mean over its own items (see `loss_items`)."""
    labels, real = batch["labels"], batch["real"]
    gen_logits, disc_logits, replaced = electra_parts(model, batch)
    gen = F.cross_entropy(gen_logits.float(), masked_targets(labels, gen_logits.shape[0]))
    disc = F.binary_cross_entropy_with_logits(disc_logits.float()[real], replaced[real].float())
    return torch.stack([gen, weight * disc])


class Electra:
    """The ELECTRA objective (see masklm.objectives)."""

    name = "electra"
    architecture = ElectraPreTraining.architecture
    extras = True

    def __init__(self, generator_fraction: float = 0.25, discriminator_weight: float = 50.0) -> None:
        self.generator_fraction = generator_fraction
        self.weight = discriminator_weight

    def build(self, cfg: ModelConfig) -> nn.Module:
        return ElectraPreTraining(cfg, self.generator_fraction)

    def info(self) -> dict[str, Any]:
        return {"objective": "electra", "generator_fraction": self.generator_fraction}

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        return electra_loss(model, batch, self.weight)

    def loss_items(self, batch: Batch) -> tuple[int, int]:
        """(masked tokens, real tokens): what the two parts of the loss average over."""
        return int((batch["labels"] != -100).sum()), int(batch["real"].sum())

    def eval_sums(self, model: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
        labels, real = batch["labels"], batch["real"]
        gen_logits, disc_logits, replaced = electra_parts(model, batch)
        logits, target = disc_logits.float()[real], replaced[real]
        caught = (logits > 0) == target
        return {
            **mlm_sums(gen_logits, labels),
            "disc_loss_sum": F.binary_cross_entropy_with_logits(logits, target.float(), reduction="sum"),
            "disc_correct": caught.sum(),
            "real": real.sum(),
            "replaced": target.sum(),
            "replaced_caught": (caught & target).sum(),
        }

    def eval_metrics(self, sums: dict[str, float]) -> dict[str, float]:
        real = max(sums["real"], 1.0)
        return {
            **mlm_metrics(sums),
            "discriminator_loss": sums["disc_loss_sum"] / real,
            "discriminator_accuracy": sums["disc_correct"] / real,
            "replaced_fraction": sums["replaced"] / real,
            "replaced_recall": sums["replaced_caught"] / max(sums["replaced"], 1.0),
        }

    def fill_mask_model(self, model: nn.Module) -> nn.Module:
        """The generator (it shares the discriminator's embeddings): ELECTRA's masked LM."""
        return model.generator
