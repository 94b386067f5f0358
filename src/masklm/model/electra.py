"""ELECTRA (Clark et al. 2020): a discriminator encoder trained beside a small MLM generator.

    ElectraPreTraining   the pair as one module, what `masklm pretrain --objective electra` trains and saves:
        encoder.*                  the discriminator's encoder (it owns the word / position / type embeddings);
                                   fine-tuning keeps it, like any head's encoder
        discriminator_dense/_prediction   dense → act → dense to one logit per token: "was this token replaced?"
        generator.*                a MaskedLM of width generator_fraction × H that reads the discriminator's
                                   embeddings (shared, not copied) and predicts at width E, tied to them
    ElectraGenerator     the generator on its own: a MaskedLM that exports as Hugging Face's ElectraForMaskedLM

`ElectraPreTraining.forward` without labels scores every token of the input (ElectraForPreTraining's logits). With
labels (the masked positions) and `sample_u` (one uniform number per position) it runs a whole ELECTRA step:
generator logits at the masked positions → a token sampled from the generator's softmax (float32, no gradient) at
each → the input with those tokens in place → discriminator logits. What the step learns from them (the losses)
is `masklm.objectives.electra`'s business.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from masklm.config import ModelConfig
from masklm.model.base import Checkpoint, Head, read_config_json, register_head
from masklm.model.encoder import Encoder, activation, init_weights
from masklm.model.heads import MaskedLM

DEFAULT_GENERATOR_FRACTION = 0.25


def generator_config(cfg: ModelConfig, fraction: float) -> ModelConfig:
    """The generator's shape: heads, hidden and feed-forward width scaled by `fraction` (the head size kept, so the
    width divides by the heads), the same layers and embeddings (width E) as the discriminator."""
    heads = max(1, round(cfg.num_attention_heads * fraction))
    return dataclasses.replace(
        cfg,
        hidden_size=heads * (cfg.hidden_size // cfg.num_attention_heads),
        num_attention_heads=heads,
        intermediate_size=max(1, round(cfg.intermediate_size * fraction)),
        embedding_size=cfg.embedding_width,
    )


def sample_from_logits(logits: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """One token per row of `logits` (M, V), drawn from softmax(logits) in float32 by inverting its cumulative
    distribution at the uniform numbers `u` (M,): the draw is a function of `u` alone, whatever the batch."""
    cdf = logits.detach().float().softmax(-1).cumsum(-1)  # (M, V)
    picked = torch.searchsorted(cdf, u.float().unsqueeze(-1), right=True).squeeze(-1)  # first cdf > u
    return picked.clamp(max=logits.shape[-1] - 1)  # u above a rounded-down cdf[-1]


@register_head
class ElectraGenerator(MaskedLM):
    """ELECTRA's generator as a model of its own (fill-mask, `masklm export --generator`)."""

    architecture = "ElectraGenerator"
    hf_class = "ElectraForMaskedLM"
    hf_auto_class = "AutoModelForMaskedLM"
    hf_model_type = "electra"
    hf_also_reads = ()
    hf_modules = {
        "transform": "generator_predictions.dense",
        "transform_norm": "generator_predictions.LayerNorm",
        "decoder_bias": "generator_lm_head.bias",
    }
    head_title = "ELECTRA generator"
    # Its prediction head uses the model's activation like MaskedLM's (so that fill-mask can load it as one);
    # Hugging Face's ElectraGeneratorPredictions always uses gelu: the export refuses another (hf.py)


@register_head
class ElectraPreTraining(Head):
    architecture = "ElectraPreTraining"
    hf_class = "ElectraForPreTraining"
    hf_auto_class = "AutoModelForPreTraining"
    hf_model_type = "electra"
    pipeline_tag = "feature-extraction"
    hf_modules = {
        "discriminator_dense": "discriminator_predictions.dense",
        "discriminator_prediction": "discriminator_predictions.dense_prediction",
    }
    hf_skip = ("generator.",)
    head_title = "ELECTRA discriminator head"
    generator_fraction: float

    def __init__(self, cfg: ModelConfig, generator_fraction: float = DEFAULT_GENERATOR_FRACTION) -> None:
        super().__init__()
        self.cfg = cfg
        self.generator_fraction = generator_fraction
        H = cfg.hidden_size
        self.encoder = Encoder(cfg)  # the discriminator
        self.discriminator_dense = nn.Linear(H, H, bias=cfg.bias)
        self.act = activation(cfg.hidden_act)
        self.discriminator_prediction = nn.Linear(H, 1, bias=cfg.bias)
        self.generator = ElectraGenerator(generator_config(cfg, generator_fraction), self.encoder.embeddings)
        init_weights(self, cfg.initializer_range)

    @classmethod
    def create(
        cls,
        cfg: ModelConfig,
        labels: Any = None,
        options: dict[str, Any] | None = None,
        task: dict[str, Any] | None = None,
    ) -> Head:
        return cls(cfg, float((task or {}).get("generator_fraction", DEFAULT_GENERATOR_FRACTION)))

    def discriminate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """One logit per token (B, T): > 0 means "replaced"."""
        h = self.encoder(input_ids, attention_mask, token_type_ids)  # (B, T, H)
        return self.discriminator_prediction(self.act(self.discriminator_dense(h))).squeeze(-1)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        sample_u: torch.Tensor | None = None,
        pad_rows: int = 1,
    ) -> Any:
        """Without labels: the discriminator's logits (B, T). With labels (-100 where not masked) and sample_u (B, T)
        uniform numbers: (generator logits (K, V) at the M masked positions then K - M padding rows (see
        MaskedLM.forward), discriminator logits (B, T) on the input with sampled tokens at those positions,
        replaced (B, T) bool: where the sample differs from the original). Without sample_u the samples are
        drawn from torch's default generator."""
        if labels is None:
            return self.discriminate(input_ids, attention_mask, token_type_ids)
        gen_logits = self.generator(input_ids, attention_mask, token_type_ids, labels, pad_rows)  # (K, V)
        masked = labels != -100  # (B, T)
        u = sample_u[masked] if sample_u is not None else torch.rand(int(masked.sum()), device=labels.device)
        u = F.pad(u, (0, gen_logits.shape[0] - u.numel()), value=0.5)  # padding rows: drawn, then dropped
        with torch.no_grad():
            sampled = sample_from_logits(gen_logits, u)  # (K,): masked_scatter takes the first M
            original = torch.where(masked, labels, input_ids)  # (B, T): the text before masking
            corrupted = original.masked_scatter(masked, sampled)
        # a sample equal to the original token counts as original
        return gen_logits, self.discriminate(corrupted, attention_mask, token_type_ids), corrupted != original

    def generator_model(self) -> ElectraGenerator:
        """The generator as a model of its own with the shared embeddings (copied in)."""
        gen = ElectraGenerator(self.generator.cfg)
        gen.load_state_dict(_generator_state(self.state_dict()))
        return gen

    @classmethod
    def view(cls, checkpoint: Checkpoint, architecture: str) -> Checkpoint | None:
        """As a MaskedLM (fill-mask) or an ElectraGenerator (export): the generator with the shared embeddings."""
        if architecture not in ("MaskedLM", ElectraGenerator.architecture):
            return None
        fraction = float(checkpoint.task.get("generator_fraction", DEFAULT_GENERATOR_FRACTION))
        return dataclasses.replace(
            checkpoint,
            cfg=generator_config(checkpoint.cfg, fraction),
            state=_generator_state(checkpoint.state),
            architecture=architecture,
            described=f"the generator of {checkpoint.described}",
            task={},
        )


def is_electra_model(path: str | Path) -> bool:
    """Whether `path` is a masklm ELECTRA model (or run) folder."""
    # imported here: model.io needs masklm.utils, which needs masklm.dist, which needs this module
    from masklm.model.io import resolve_model_dir

    data = read_config_json(resolve_model_dir(path))
    return data.get("format") == "masklm" and data.get("architecture") == ElectraPreTraining.architecture


def _generator_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """ElectraPreTraining weights → the generator's as a MaskedLM: its own, plus the discriminator's embeddings."""
    out = {k.removeprefix("generator."): v for k, v in state.items() if k.startswith("generator.")}
    out.update({k: v for k, v in state.items() if k.startswith("encoder.embeddings.")})
    return out
