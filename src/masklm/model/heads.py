"""Task heads on top of the encoder. Each returns logits; the losses are computed where the model is trained
(`masklm.objectives` for pretraining, each task's `loss` in `masklm.tasks` for fine-tuning).

- MaskedLM: BERT's prediction head (dense → act → LayerNorm → decoder tied to the word embeddings). Given
  `labels`, it runs only at the masked positions: gather those hidden states first, then project to the vocabulary.
  Pretraining pads those rows to a multiple of `pad_rows` (see `masked_rows`) so that the head's large buffers
  keep a few sizes from step to step.
  With `embedding_size` set, the dense layer maps H to E and the decoder is the (V, E) embedding matrix.
- SequenceClassification: BERT's pooler (dense + tanh on [CLS]) → dropout → linear; with pooling="mean", the
  mean of the hidden states over the real tokens ([CLS] and [SEP] included, padding not) → dropout → linear,
  without a pooler (as sentence-transformers pools).
- TokenClassification: dropout → linear on every token.

`classifier_dropout` (None: the encoder's hidden_dropout_prob, as in transformers) sets the dropout before
the classifier of both classification heads.
- QuestionAnswering: linear to (start, end) logits on every token.

Each head says how it appears outside masklm (Hugging Face class and module names, pipeline tag, outputs): see
`masklm.model.base.Head`. A head defined elsewhere (a task module) joins them with `@register_head`.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from masklm.config import ModelConfig
from masklm.model.base import Head, register_head
from masklm.model.encoder import Embeddings, Encoder, activation, init_weights


def masked_rows(labels: torch.Tensor, multiple: int = 1) -> torch.Tensor:
    """Flat indexes (K,) of the positions where labels != -100, in order, padded with index 0 up to a multiple of
    `multiple` (`masked_targets` gives the padded rows the label -100, so losses and metrics ignore them).

    Why pad: the number of masked positions changes every batch, and with it the size of the head's largest
    buffers ((K, V) logits, their float32 copy, their gradients). Buffers of ever-new sizes fragment the C
    allocator's heap, which then holds more memory every step (docs/benchmarks.md, "Memory growth in a
    pretraining run"); rounded to a multiple, the same few sizes come back and their blocks are reused.
    """
    index = (labels.reshape(-1) != -100).nonzero().squeeze(1)
    extra = -index.numel() % multiple
    return F.pad(index, (0, extra)) if extra else index


def masked_targets(labels: torch.Tensor, rows: int) -> torch.Tensor:
    """The labels at the masked positions (M,), padded with -100 up to `rows` (the logits' rows, see masked_rows)."""
    target = labels[labels != -100]
    return F.pad(target, (0, rows - target.numel()), value=-100)


@register_head
class MaskedLM(Head):
    architecture = "MaskedLM"
    hf_class = "BertForMaskedLM"
    hf_auto_class = "AutoModelForMaskedLM"
    hf_also_reads = ("BertForPreTraining",)  # its next-sentence head is dropped
    pipeline_tag = "fill-mask"
    hf_modules = {
        "transform": "cls.predictions.transform.dense",
        "transform_norm": "cls.predictions.transform.LayerNorm",
        "decoder_bias": "cls.predictions.bias",
    }
    vocab_sized = ("decoder_bias",)
    head_title = "MLM head"

    def __init__(self, cfg: ModelConfig, shared_embeddings: Embeddings | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        H, E = cfg.hidden_size, cfg.embedding_width
        self.encoder = Encoder(cfg, shared_embeddings)
        self.transform = nn.Linear(H, E, bias=cfg.bias)
        self.act = activation(self.head_act(cfg))
        self.transform_norm = nn.LayerNorm(E, eps=cfg.layer_norm_eps, bias=cfg.bias)
        # The decoder's weight is the word-embedding matrix (tied); it has its own bias.
        self.decoder_bias = nn.Parameter(torch.zeros(cfg.padded_vocab_size))
        init_weights(self, cfg.initializer_range)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        pad_rows: int = 1,
    ) -> torch.Tensor:
        """Logits over the vocabulary: (B, T, V) without labels; with labels, (K, V) for the M positions where
        labels != -100, in order, then K - M padding rows (K: M rounded up to a multiple of `pad_rows`)."""
        h = self.encoder(input_ids, attention_mask, token_type_ids)  # (B, T, H)
        if labels is not None:  # only masked positions reach the vocabulary projection
            h = h.reshape(-1, h.shape[-1]).index_select(0, masked_rows(labels, pad_rows))  # (K, H)
        return self.vocab_logits(h)

    def logits_at(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, positions: torch.Tensor
    ) -> torch.Tensor:
        """(B, V) logits at one position per row (`positions`, (B,)): what pseudo-log-likelihood scoring reads.
        The encoder's last layer runs for those positions only (`Encoder.forward`), so this costs less than
        `forward` with one label per row; the numbers are the same."""
        return self.vocab_logits(self.encoder(input_ids, attention_mask, None, positions))

    def vocab_logits(self, h: torch.Tensor) -> torch.Tensor:
        """Hidden states (..., H) → logits over the vocabulary (..., V)."""
        h = self.transform_norm(self.act(self.transform(h)))  # (..., E)
        logits = F.linear(h, self.encoder.input_embeddings.word.weight, self.decoder_bias)  # (..., V_padded)
        return logits[..., : self.cfg.vocab_size]  # padded rows are not tokens

    @classmethod
    def head_act(cls, cfg: ModelConfig) -> str:
        """The prediction head's activation: the model's (BERT)."""
        return cfg.hidden_act

    @classmethod
    def hf_usage(cls) -> list[str]:
        return [
            "```python",
            "from transformers import pipeline",
            'fill = pipeline("fill-mask", model="PATH/TO/THIS/FOLDER")',
            'fill("the capital of france is [MASK] .")',
            "```",
        ]


@register_head
class SequenceClassification(Head):
    architecture = "SequenceClassification"
    hf_class = "BertForSequenceClassification"
    hf_auto_class = "AutoModelForSequenceClassification"
    pipeline_tag = "text-classification"
    hf_modules = {"pooler": "bert.pooler.dense", "classifier": "classifier"}
    label_layer = "classifier"
    options = {"pooling": "cls", "classifier_dropout": None}
    weight_options = ("pooling",)

    def __init__(
        self,
        cfg: ModelConfig,
        num_labels: int,
        classifier_dropout: float | None = None,
        pooling: str = "cls",
    ) -> None:
        super().__init__()
        if pooling not in ("cls", "mean"):
            raise ValueError(f"pooling must be cls or mean, not {pooling!r}")
        self.cfg = cfg
        self.num_labels = num_labels
        self.pooling, self.classifier_dropout = pooling, classifier_dropout
        self.encoder = Encoder(cfg)
        # mean pooling has no pooler: an unused layer would only hold weights that never train
        self.pooler = nn.Linear(cfg.hidden_size, cfg.hidden_size, bias=cfg.bias) if pooling == "cls" else None
        self.dropout = nn.Dropout(
            cfg.hidden_dropout_prob if classifier_dropout is None else classifier_dropout
        )
        self.classifier = nn.Linear(cfg.hidden_size, num_labels)
        init_weights(self, cfg.initializer_range)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        h = self.encoder(input_ids, attention_mask, token_type_ids)  # (B, T, H)
        # (B, H): the pooler on [CLS], or the mean over the real tokens
        pooled = torch.tanh(self.pooler(h[:, 0])) if self.pooler is not None else mean_pool(h, attention_mask)
        pooled = self.dropout(pooled)
        if self.num_labels == 1 and torch.is_autocast_enabled(pooled.device.type):
            # a regression score keeps float32's digits: under bf16 autocast it would keep three (3.0536 → 3.047)
            with torch.autocast(pooled.device.type, enabled=False):
                return self.classifier(pooled.float())
        return self.classifier(pooled)  # (B, num_labels)

    def hf_obstacle(self) -> str | None:
        if self.pooling == "mean":
            return (
                "this classifier pools the mean of its tokens (head.pooling=mean), which "
                "BertForSequenceClassification (pooler on [CLS]) cannot express; export it with --format onnx"
            )
        return None

    def hf_config(self) -> dict[str, Any]:
        return {} if self.classifier_dropout is None else {"classifier_dropout": self.classifier_dropout}


def mean_pool(h: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """(B, T, H) hidden states → (B, H): their mean where `attention_mask` is 1 (everywhere without one)."""
    if attention_mask is None:
        return h.mean(dim=1)
    mask = attention_mask.to(h.dtype).unsqueeze(-1)  # (B, T, 1)
    return (h * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)


@register_head
class TokenClassification(Head):
    architecture = "TokenClassification"
    hf_class = "BertForTokenClassification"
    hf_auto_class = "AutoModelForTokenClassification"
    pipeline_tag = "token-classification"
    hf_modules = {"classifier": "classifier"}
    label_layer = "classifier"
    options = {"classifier_dropout": None}

    def __init__(self, cfg: ModelConfig, num_labels: int, classifier_dropout: float | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.num_labels = num_labels
        self.classifier_dropout = classifier_dropout
        self.encoder = Encoder(cfg)
        self.dropout = nn.Dropout(
            cfg.hidden_dropout_prob if classifier_dropout is None else classifier_dropout
        )
        self.classifier = nn.Linear(cfg.hidden_size, num_labels)
        init_weights(self, cfg.initializer_range)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        h = self.encoder(input_ids, attention_mask, token_type_ids)
        return self.classifier(self.dropout(h))  # (B, T, num_labels)

    def hf_config(self) -> dict[str, Any]:
        return {} if self.classifier_dropout is None else {"classifier_dropout": self.classifier_dropout}


@register_head
class QuestionAnswering(Head):
    architecture = "QuestionAnswering"
    hf_class = "BertForQuestionAnswering"
    hf_auto_class = "AutoModelForQuestionAnswering"
    pipeline_tag = "question-answering"
    hf_modules = {"qa": "qa_outputs"}
    output_names = ("start_logits", "end_logits")  # the two columns of the logits

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.qa = nn.Linear(cfg.hidden_size, 2)
        init_weights(self, cfg.initializer_range)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        h = self.encoder(input_ids, attention_mask, token_type_ids)
        return self.qa(h)  # (B, T, 2): start and end logits
