"""Typed configuration: one dataclass per concern, YAML for values, dotted command-line overrides.

    cfg = load_config(preset="small", config_file=None, overrides={"train.lr": "3e-4"})

Field names follow Hugging Face's `BertConfig` where the concept is the same, so converting a checkpoint is a key
map rather than a translation. Every field carries its help (`setting(default, help)`) and its type; enum-like
fields are typed `Literal[...]`. Those two are the single source of what `masklm COMMAND --help`, the coercion of
YAML / command-line values and docs/configuration.md (scripts/config_doc.py) say. `validate()` turns impossible
values into a `UserError` with a one-line fix.

This module must not import torch: the command line lists commands and settings without it.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml

from masklm.errors import UserError

PRESETS = ("tiny", "small", "base", "large")
# a length bound that never binds: the input limit of a model with rotary positions (ModelConfig.max_positions)
NO_LIMIT = 1 << 30


def setting(default: Any, help: str) -> Any:
    """A config field with its help text, the one description `--help` and docs/configuration.md show."""
    return field(default=default, metadata={"help": help})


@dataclass
class ModelConfig:
    """The encoder's shape and variant."""

    vocab_size: int = setting(30522, "tokenizer size; set from the tokenizer at run time")
    hidden_size: int = setting(768, "width of every hidden state (H)")
    embedding_size: int | None = setting(
        None,
        "width of the token embeddings (E; None = hidden_size); a linear layer projects them to hidden_size "
        "(ELECTRA's embeddings_project). The MLM head then predicts at width E, tied to the embeddings",
    )
    num_hidden_layers: int = setting(12, "Transformer blocks")
    num_attention_heads: int = setting(12, "attention heads per block (hidden_size must divide by it)")
    intermediate_size: int = setting(3072, "feed-forward width")
    max_position_embeddings: int = setting(512, "longest sequence with learned absolute positions")
    type_vocab_size: int = setting(2, "token-type (segment) embeddings; 0 disables them")
    hidden_dropout_prob: float = setting(0.1, "dropout after embeddings, attention and feed-forward")
    attention_probs_dropout_prob: float = setting(0.1, "dropout on attention weights")
    layer_norm_eps: float = setting(1e-12, "LayerNorm epsilon")
    initializer_range: float = setting(0.02, "std of the normal initialisation")
    hidden_act: Literal["gelu", "gelu_tanh", "relu"] = setting(
        "gelu", "activation: gelu (exact erf), gelu_tanh (tanh approximation) or relu"
    )
    pad_token_id: int = setting(0, "id of [PAD]; set from the tokenizer at run time")
    pad_vocab_multiple: int = setting(64, "embedding rows padded up to a multiple of this (ids unchanged)")
    # Variant switches. The defaults are BERT exactly; anything else cannot be exported to BertForMaskedLM.
    norm: Literal["post", "pre"] = setting(
        "post", "LayerNorm after (post, BERT) or before (pre) each sub-layer"
    )
    position: Literal["absolute", "rotary"] = setting(
        "absolute", "positions: learned absolute embeddings (BERT) or rotary"
    )
    ffn: Literal["mlp", "geglu"] = setting("mlp", "feed-forward: mlp (dense, act, dense; BERT) or geglu")
    bias: bool = setting(True, "biases in linear layers and LayerNorms")
    rope_theta: float = setting(10000.0, "rotary base frequency (position=rotary)")

    @property
    def padded_vocab_size(self) -> int:
        m = max(1, self.pad_vocab_multiple)
        return int(math.ceil(self.vocab_size / m) * m)

    @property
    def embedding_width(self) -> int:
        """E: the width of the embeddings (hidden_size unless embedding_size says otherwise)."""
        return self.embedding_size or self.hidden_size

    @property
    def max_positions(self) -> int | None:
        """The longest input the model reads: max_position_embeddings with learned positions; None (no limit)
        with rotary ones, which take any length."""
        return self.max_position_embeddings if self.position == "absolute" else None

    def modern_options(self, model_type: str = "bert") -> list[str]:
        """Names of the settings that Hugging Face's BERT (or, model_type="electra", ELECTRA) cannot express."""
        out = []
        if model_type == "bert" and self.embedding_width != self.hidden_size:
            out.append(f"model.embedding_size={self.embedding_size}")
        if self.norm != "post":
            out.append(f"model.norm={self.norm}")
        if self.position != "absolute":
            out.append(f"model.position={self.position}")
        if self.ffn != "mlp":
            out.append(f"model.ffn={self.ffn}")
        if not self.bias:
            out.append("model.bias=false")
        return out


@dataclass
class DataConfig:
    """What `prepare` reads and how it packs it."""

    seq_len: int = setting(128, "tokens per packed sequence, [CLS] and [SEP] included")
    vocab_size: int = setting(8192, "size of a newly trained WordPiece vocabulary")
    lowercase: bool = setting(True, "lowercase and strip accents before tokenizing (uncased BERT)")
    tokenizer: str | None = setting(None, "existing tokenizer.json or vocab.txt; None trains a new one")
    one_doc_per_line: bool = setting(
        False, ".txt files: each non-empty line is a document (else one per file)"
    )
    text_field: str = setting("text", ".jsonl key / .csv column holding the text")
    val_fraction: float = setting(0.01, "share of documents held out for validation")
    max_val_sequences: int = setting(2000, "cap on validation sequences, per segment (see segment_bytes)")
    shard_sequences: int = setting(1 << 16, "sequences per shard file")
    max_documents: int | None = setting(None, "stop after this many documents (None = all)")
    where: str | None = setting(
        None, '.csv/.jsonl/.parquet/.arrow: keep only rows where COLUMN=VALUE (e.g. "source=imdb")'
    )
    workers: int = setting(
        0, "processes that tokenize in parallel (0 = one per CPU core, at most 8; 1 = no extra process)"
    )
    tokenizer_sample_bytes: int = setting(
        200_000_000,
        "train a new tokenizer on at most this many characters of text, shared among the input files by size "
        "(the whole corpus when it is smaller)",
    )
    dedup: bool = setting(
        False, "keep only the first of documents that are equal once whitespace is normalised"
    )
    segment_bytes: int = setting(
        16_000_000,
        "packing restarts at each segment: consecutive whole files of at least this many bytes on disk, cut "
        "again every this many characters of text; the unit --num-shards parts are made of (docs/corpora.md)",
    )


@dataclass
class MaskConfig:
    """Dynamic masking: a fresh mask every time a sequence is drawn."""

    rate: float = setting(0.15, "share of (non-special) tokens chosen for prediction")
    mask_prob: float | None = setting(
        None, "of the chosen: replaced by [MASK] (None: 0.8 for objective mlm, as BERT; 0.85 for electra)"
    )
    random_prob: float | None = setting(
        None,
        "of the chosen: replaced by a random token; the rest stay unchanged (None: 0.1 for mlm, as BERT; 0 for "
        "electra, whose generator must not be shown the answer)",
    )
    strategy: Literal["token", "whole_word", "span"] = setting(
        "token", "what is chosen: single tokens, whole words, or spans of whole words"
    )
    span_mean: float = setting(3.0, "span masking: mean span length in words (geometric distribution)")
    span_max: int = setting(10, "span masking: longest span in words")

    def for_objective(self, objective: str) -> MaskConfig:
        """This config with the replacement split set where it is None: BERT's 80% [MASK] / 10% random / 10%
        unchanged for mlm; for electra, as Clark et al.'s reference code, 85% [MASK] / no random token / 15%
        unchanged, since a random token at a chosen position would show the generator the answer half of the
        time it is kept and teach it nothing to sample."""
        electra = objective == "electra"
        return dataclasses.replace(
            self,
            mask_prob=(0.85 if electra else 0.8) if self.mask_prob is None else self.mask_prob,
            random_prob=(0.0 if electra else 0.1) if self.random_prob is None else self.random_prob,
        )


@dataclass
class ObjectiveConfig:
    """What a pretraining step learns: masked-token prediction, or ELECTRA's replaced-token detection."""

    name: Literal["mlm", "electra"] = setting(
        "mlm",
        "mlm: predict the masked tokens; electra: a small MLM generator fills the masked positions with sampled "
        "tokens and the model (the discriminator) tells for every token whether it was replaced",
    )
    generator_fraction: float = setting(
        0.25, "electra: the generator's width (hidden size, heads, feed-forward) as a fraction of the model's"
    )
    discriminator_weight: float = setting(
        50.0, "electra: loss = generator MLM loss + this weight x discriminator loss (Clark et al. 2020: 50)"
    )


@dataclass
class TrainConfig:
    """The optimisation loop."""

    batch_size: int = setting(32, "sequences per micro-batch (per process)")
    grad_accum: int = setting(1, "micro-batches per optimizer step")
    lr: float = setting(5e-4, "peak learning rate")
    weight_decay: float = setting(0.01, "AdamW decay on matrices (not on biases / norms)")
    beta1: float = setting(0.9, "AdamW beta1")
    beta2: float = setting(0.98, "AdamW beta2")
    eps: float = setting(1e-6, "AdamW epsilon")
    schedule: Literal["linear", "cosine", "wsd", "constant"] = setting(
        "linear", "learning-rate schedule after warmup (wsd: warmup-stable-decay)"
    )
    warmup: float = setting(
        0.06, "warmup length: a fraction of the budget if < 1, else a step count (under a time budget too)"
    )
    decay_fraction: float = setting(0.2, "wsd: share of the budget spent decaying at the end")
    min_lr_ratio: float = setting(0.0, "the schedule ends at lr * min_lr_ratio")
    clip_norm: float = setting(1.0, "gradient-norm clipping; 0 disables")
    max_steps: int | None = setting(None, "budget in optimizer steps")
    max_tokens: int | None = setting(None, "budget in training tokens")
    max_minutes: float | None = setting(
        None,
        "budget in wall-clock minutes; the schedule decays to its end when no step budget is known (with "
        "max_steps, fine-tuning's epochs or max_tokens too, it follows the steps and the minutes only cut it)",
    )
    eval_every: int = setting(200, "steps between evaluations (0 = only at the end)")
    eval_sequences: int = setting(512, "validation sequences per evaluation, evenly spaced over the split")
    eval_pairs: str | None = setting(
        None,
        "JSONL minimal pairs {sentence_good, sentence_bad} (masklm score): each evaluation adds pairs_accuracy, "
        "the share whose good sentence has the higher pseudo-log-likelihood (keep it to a few hundred pairs)",
    )
    log_every: int = setting(10, "steps between metrics.jsonl lines")
    log: Literal["jsonl", "tensorboard"] = setting(
        "jsonl",
        "metrics always go to RUN/metrics.jsonl; tensorboard also writes TensorBoard event files to "
        "RUN/tensorboard (needs pip install 'masklm[tensorboard]')",
    )
    checkpoint_every: int = setting(500, "steps between checkpoints (0 = only at the end)")
    keep_last: int = setting(2, "checkpoints kept on disk")
    seed: int = setting(0, "seeds initialisation, data order and masks")
    precision: Literal["fp32", "bf16", "fp16", "auto"] = setting(
        "auto",
        "auto: bf16 autocast on GPUs and CPUs with native bf16, else fp32 (fp16 is refused: no loss scaling)",
    )
    layer_decay: float = setting(
        1.0,
        "layer-wise lr decay d (1: off): the head at lr, encoder block i of L (0 = lowest) at "
        "lr * d^(L - i), the embeddings at lr * d^(L + 1); e.g. 0.8 in fine-tuning; in pretraining (MLM only) it "
        "lets --init-from train a fresh head fast while the pretrained encoder moves slowly",
    )
    embedding_init: Literal["normal", "ppmi"] = setting(
        "normal",
        "how pretraining from scratch starts the word embeddings: normal (0, model.initializer_range), or ppmi: "
        "word vectors of the training text's co-occurrences (positive PMI within 5 tokens, truncated SVD; seconds "
        "to a minute before the first step, counted in the budget); not with --init-from, which brings its own",
    )
    compile: bool = setting(False, "torch.compile the model")
    device: str = setting("auto", 'where to train: "auto", "cpu", "cuda", "cuda:1", ...')
    threads: int | None = setting(None, "torch intra-op threads on CPU (None = torch's default)")
    nonfinite: Literal["skip", "stop"] = setting(
        "skip", "on a non-finite loss or gradient: skip the step or stop the run"
    )


@dataclass
class DistConfig:
    """Several processes under torchrun (ignored when running as one process)."""

    strategy: Literal["ddp", "fsdp"] = setting(
        "ddp", "ddp: the whole model in every process; fsdp: FSDP2, sharded weights and optimizer state"
    )
    backend: Literal["auto", "gloo", "nccl"] = setting("auto", "auto: NCCL on GPUs, gloo on CPU")


@dataclass
class Config:
    """Pretraining (and `prepare`): the sections model, data, mask, objective, train and dist."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    mask: MaskConfig = field(default_factory=MaskConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    dist: DistConfig = field(default_factory=DistConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self) -> Config:
        check_choices(self)
        m, d, k, t = self.model, self.data, self.mask, self.train
        check_model(m)
        o = self.objective
        _require(
            0 < o.generator_fraction <= 1,
            f"objective.generator_fraction must be in (0, 1], not {o.generator_fraction}",
        )
        _require(o.discriminator_weight >= 0, "objective.discriminator_weight must be >= 0")
        _require(d.seq_len >= 8, f"data.seq_len must be at least 8, not {d.seq_len}")
        _require(
            m.max_positions is None or d.seq_len <= m.max_positions,
            f"data.seq_len ({d.seq_len}) is above model.max_position_embeddings ({m.max_position_embeddings}); "
            "lower --data.seq_len or raise --model.max_position_embeddings",
        )
        _require(d.vocab_size >= 100, f"data.vocab_size must be at least 100, not {d.vocab_size}")
        _require(0 <= d.val_fraction < 1, "data.val_fraction must be in [0, 1)")
        _require(0 < k.rate < 1, f"mask.rate must be between 0 and 1, not {k.rate}")
        self.mask = k = k.for_objective(o.name)
        _require(
            k.mask_prob >= 0 and k.random_prob >= 0 and k.mask_prob + k.random_prob <= 1,
            "mask.mask_prob and mask.random_prob must be >= 0 and add up to at most 1",
        )
        _require(
            k.span_mean >= 1 and k.span_max >= 1,
            f"mask.span_mean and mask.span_max must be >= 1, not {k.span_mean:g} and {k.span_max}",
        )
        _require(t.batch_size > 0, f"train.batch_size must be positive, not {t.batch_size}")
        _require(t.grad_accum > 0, f"train.grad_accum must be positive, not {t.grad_accum}")
        _require(t.lr > 0, f"train.lr must be positive, not {t.lr}")
        _require(
            t.precision != "fp16",
            "train.precision fp16 is not offered: training in fp16 needs loss scaling, which masklm does not do "
            "(small gradients would round to 0); use bf16 (GPUs since Ampere, CPUs with AVX512-BF16 or AMX), auto "
            "or fp32",
        )
        _require(t.warmup >= 0, "train.warmup must be >= 0")
        for name in ("max_steps", "max_tokens"):
            v = getattr(t, name)
            _require(v is None or v > 0, f"train.{name} must be positive, not {v}")
        _require(t.max_minutes is None or t.max_minutes > 0, "train.max_minutes must be positive")
        _require(t.keep_last >= 1, "train.keep_last must be at least 1")
        _require(t.eval_every >= 0 and t.checkpoint_every >= 0, "eval_every/checkpoint_every must be >= 0")
        _require(t.eval_sequences > 0, "train.eval_sequences must be positive")
        _require(t.log_every > 0, "train.log_every must be positive")
        _require(0 < t.layer_decay <= 1, f"train.layer_decay must be in (0, 1], not {t.layer_decay}")
        _require(
            t.layer_decay == 1 or o.name == "mlm",
            "train.layer_decay in pretraining is for the mlm objective (ELECTRA has two encoders); set it to 1",
        )
        _check_optimizer_numbers(t)
        _require(
            d.max_documents is None or d.max_documents > 0, "data.max_documents must be positive (or None)"
        )
        return self


def check_model(m: ModelConfig) -> None:
    """The model's sizes and numbers: what a build would refuse with a traceback, or take and then train badly.
    Run for every config (`Config.validate`) and for every model folder read from disk (`model_from_dict`)."""
    _require(m.vocab_size > 0, f"model.vocab_size must be positive, not {m.vocab_size}")
    _require(
        m.hidden_size > 0 and m.num_hidden_layers > 0,
        f"model.hidden_size and model.num_hidden_layers must be positive, not {m.hidden_size} and "
        f"{m.num_hidden_layers}",
    )
    _require(
        m.num_attention_heads > 0 and m.hidden_size % m.num_attention_heads == 0,
        f"model.hidden_size ({m.hidden_size}) must be divisible by model.num_attention_heads "
        f"({m.num_attention_heads})",
    )
    _require(m.intermediate_size > 0, "model.intermediate_size must be positive")
    _require(
        m.embedding_size is None or m.embedding_size > 0,
        f"model.embedding_size must be positive (or None), not {m.embedding_size}",
    )
    if m.position == "rotary":
        _require(
            (m.hidden_size // m.num_attention_heads) % 2 == 0,
            f"rotary positions need an even head size, and model.hidden_size / model.num_attention_heads is "
            f"{m.hidden_size // m.num_attention_heads}: change one of the two, or pass --model.position absolute",
        )
    _require(
        0 <= m.pad_token_id < m.vocab_size,
        f"model.pad_token_id ({m.pad_token_id}) must be an id of the vocabulary (0 to {m.vocab_size - 1})",
    )
    _check_model_numbers(m)


def model_from_dict(values: Any, source: str) -> ModelConfig:
    """A ModelConfig from the "model" section of a saved config.json: each value coerced and checked as a
    setting, unknown keys refused, then `check_model` (a hand-edited or foreign file gets one line, not a crash
    deep inside the model's construction)."""
    if not isinstance(values, dict):
        raise UserError(f"{source} has no model section (a mapping of the model's settings)")
    cfg = apply_dict(Config(), {"model": values}, source).model
    check_model(cfg)
    return cfg


def _check_model_numbers(m: ModelConfig) -> None:
    """The model's numbers a build would take without complaint and then train badly (NaN, nothing) or crash."""
    for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
        value = getattr(m, name)
        _require(0 <= value < 1, f"model.{name} must be in [0, 1), not {value:g}")
    _require(
        m.initializer_range > 0, f"model.initializer_range must be positive, not {m.initializer_range:g}"
    )
    _require(m.layer_norm_eps > 0, f"model.layer_norm_eps must be positive, not {m.layer_norm_eps:g}")
    _require(m.rope_theta > 1, f"model.rope_theta must be above 1 (10000 is usual), not {m.rope_theta:g}")
    _require(m.type_vocab_size >= 0, f"model.type_vocab_size must be >= 0, not {m.type_vocab_size}")
    _require(
        m.pad_vocab_multiple >= 1, f"model.pad_vocab_multiple must be at least 1, not {m.pad_vocab_multiple}"
    )
    _require(
        m.max_position_embeddings >= 1,
        f"model.max_position_embeddings must be at least 1, not {m.max_position_embeddings}",
    )


def _check_optimizer_numbers(t: TrainConfig) -> None:
    """AdamW's and the schedule's numbers, the seed, threads and device: refused before anything is written."""
    _require(
        0 <= t.beta1 < 1 and 0 <= t.beta2 < 1,
        f"train.beta1 and beta2 must be in [0, 1), not {t.beta1:g}, {t.beta2:g}",
    )
    _require(t.eps > 0, f"train.eps must be positive (1e-6 is usual), not {t.eps:g}: 0 divides by zero")
    _require(t.weight_decay >= 0, f"train.weight_decay must be >= 0, not {t.weight_decay:g}")
    _require(t.clip_norm >= 0, f"train.clip_norm must be >= 0 (0 disables it), not {t.clip_norm:g}")
    _require(0 <= t.min_lr_ratio <= 1, f"train.min_lr_ratio must be in [0, 1], not {t.min_lr_ratio:g}")
    _require(0 <= t.decay_fraction <= 1, f"train.decay_fraction must be in [0, 1], not {t.decay_fraction:g}")
    _require(0 <= t.seed < 2**63, f"train.seed must be a whole number from 0 to 2**63 - 1, not {t.seed}")
    _require(
        t.threads is None or t.threads >= 1, f"train.threads must be at least 1 (or None), not {t.threads}"
    )
    _check_device_name(t.device)


def _check_device_name(device: str) -> None:
    """train.device is a device name masklm knows. Whether this machine has it is `check_device`'s question, asked
    when a run starts: a saved config of a GPU run must still load on a CPU machine (evaluate, --resume there)."""
    kind, _, index = device.partition(":")
    _require(
        kind in ("auto", "cpu", "cuda", "mps") and (not index or (kind == "cuda" and index.isdigit())),
        f'train.device must be "auto", "cpu", "cuda", "cuda:N" or "mps", not {device!r}',
    )


def check_device(device: str, precision: str) -> None:
    """A UserError when this machine lacks train.device (cuda without a GPU, ...) or train.precision fp16 would
    run on its CPU; called before a run writes anything."""
    import torch

    kind, _, index = device.partition(":")
    if kind == "cuda":
        _require(
            torch.cuda.is_available(), f"train.device {device}: this machine has no CUDA GPU; use auto or cpu"
        )
        _require(
            not index or int(index) < torch.cuda.device_count(),
            f"train.device {device}: this machine has {torch.cuda.device_count()} CUDA GPU(s)",
        )
    if kind == "mps":
        _require(
            torch.backends.mps.is_available(),
            "train.device mps: this machine has no MPS device; use auto or cpu",
        )
    on_cpu = kind == "cpu" or (kind == "auto" and not torch.cuda.is_available())
    _require(
        not (precision == "fp16" and on_cpu),
        "train.precision fp16 needs a GPU; use bf16, auto or fp32 on CPU",
    )


# ----------------------------------------------------------------------------------------------------------------
# Fine-tuning


@dataclass
class FinetuneTrainConfig(TrainConfig):
    """TrainConfig with fine-tuning defaults (BERT paper / Hugging Face Trainer), plus epochs and model selection.

    A field declared here with a plain default keeps TrainConfig's help."""

    batch_size: int = setting(32, "examples (QA: context windows) per micro-batch, per process")
    lr: float | None = setting(
        None,
        "peak learning rate; None: by the encoder's width, 3e-4 up to hidden size 256 (small encoders, from "
        "masklm pretraining or random init), 5e-5 above (BERT's); the value used is recorded in config.yaml",
    )
    beta2: float = 0.999
    eps: float = 1e-8
    warmup: float = setting(0.1, "warmup length: a fraction of all steps if < 1, else a step count")
    max_tokens: int | None = setting(
        None, "a pretraining budget, refused here: fine-tuning stops after epochs, max_steps or max_minutes"
    )
    epochs: float | None = setting(
        None,
        "passes over the training data (fractions allowed); None: 3, or more with few examples, so that training "
        "takes at least 150 optimizer steps; train.max_steps replaces it",
    )
    metric_for_best: str = setting(
        "auto",
        "keep the model with the best value of this validation metric (loss and mse: lower is better); "
        "auto: the task's main one (accuracy; pearson for regression; entity f1; QA f1)",
    )
    eval_every: int = setting(0, "extra evaluations every N steps (besides those of train.eval_epochs)")
    eval_epochs: int | None = setting(
        None,
        "epochs between evaluations of the validation file (each one a candidate for the best model) and the "
        "end; None: every epoch, or every ceil(validation / training examples) epochs when the validation file "
        "is the larger, so that evaluating takes at most about a quarter of the run (few labels)",
    )
    eval_sequences: int = setting(512, "not used in fine-tuning: the whole validation file is evaluated")
    eval_pairs: str | None = setting(None, "pretraining only (minimal pairs); refused in fine-tuning")
    embedding_init: Literal["normal", "ppmi"] = setting(
        "normal", "pretraining only (a fresh model's word embeddings); refused in fine-tuning"
    )
    eval_batch_size: int | None = setting(
        None, "batch size for evaluation and prediction (None: train.batch_size); saved with the model"
    )
    batching: Literal["bucketed", "random", "tokens"] = setting(
        "bucketed",
        "training batches: bucketed (batch_size examples of similar length), random (as transformers), or "
        "tokens (batch_size x the mean length in tokens, of similar length; loss summed / a constant)",
    )
    bucket_batches: int = setting(
        50,
        "length bucketing: batches' worth of shuffled examples sorted by length together (1: random batches)",
    )
    checkpoint_every: int | None = setting(
        None, "steps between checkpoints (None: at every evaluation of train.eval_epochs; 0: only at the end)"
    )
    keep_last: int = setting(1, "checkpoints kept on disk (the best model is kept separately in model/)")
    attention_dropout: float | None = setting(
        0.0,
        "dropout on attention weights while fine-tuning (None: the model's attention_probs_dropout_prob); the "
        "default 0 skips the mask over the T x T attention weights: as accurate over 3 tasks x 3 seeds and much "
        "faster on long inputs (docs/finetuning.md)",
    )


@dataclass
class FinetuneDataConfig:
    """How task files are read and encoded."""

    max_length: int | None = setting(
        None,
        "tokens per example / QA window, specials included (None: 128, QA 384, at most the model's positions)",
    )
    doc_stride: int | None = setting(
        None, "QA: tokens shared by consecutive windows of a long context (None: max_length // 3, 128 at 384)"
    )
    max_question_length: int = setting(64, "QA: questions keep their first N tokens")
    text_column: str = setting("text", "classification: the column / JSONL key with the text")
    text_pair_column: str | None = setting(
        None, "classification: the second text of a pair (None: single texts)"
    )
    label_column: str = setting("label", "classification: the column with the label (or score)")
    regression: bool = setting(
        False, "classification: labels are numbers; one output, MSE loss, Pearson / Spearman"
    )
    prompt: str | None = setting(
        None,
        "prompt-classification: the template each text is put into, with {text} (and {text_pair}) and one "
        "[MASK], e.g. '{text} it was [MASK] .'",
    )
    label_words: str | None = setting(
        None,
        "prompt-classification: each label's word at the [MASK], LABEL=WORD pairs separated by commas, e.g. "
        "'0=bad,1=good' (labels with a comma: a JSON object, '{\"a, b\": \"good\"}'); each word must be one token "
        "of the model's vocabulary",
    )
    label_all_subwords: bool = setting(
        False, "token classification: label every sub-word, not only a word's first"
    )
    n_best: int = setting(
        20,
        "QA: the highest start / end logits of each window (over all its tokens) paired into answer candidates",
    )
    max_answer_length: int = setting(30, "QA: longest answer in tokens")
    null_threshold: float = setting(0.0, 'QA v2: answer "" when null score - best span score > this')
    version_2: bool | None = setting(
        None, "QA: unanswerable questions allowed (None: detect from the training data)"
    )


@dataclass
class HeadConfig:
    """The task head put on the encoder (saved with the model; evaluate and predict use the saved values)."""

    pooling: Literal["cls", "mean"] = setting(
        "cls",
        "classification: cls (BERT's pooler, dense + tanh, on [CLS]) or mean (the mean of the hidden states "
        "over the real tokens, no pooler; exports to ONNX but not to Hugging Face)",
    )
    classifier_dropout: float | None = setting(
        None,
        "classification and token classification: dropout before the classifier (None: hidden_dropout_prob)",
    )


@dataclass
class FinetuneConfig:
    """Fine-tuning, evaluation and prediction: the sections train, data and head."""

    train: FinetuneTrainConfig = field(default_factory=FinetuneTrainConfig)
    data: FinetuneDataConfig = field(default_factory=FinetuneDataConfig)
    head: HeadConfig = field(default_factory=HeadConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self) -> FinetuneConfig:
        t, d = self.train, self.data
        check_choices(self)
        # the shared TrainConfig checks (batch size, lr, precision, ...)
        lr = 1.0 if t.lr is None else t.lr  # None: chosen by the model's width when it is loaded
        Config(train=dataclasses.replace(t, checkpoint_every=t.checkpoint_every or 0, lr=lr)).validate()
        _require(t.epochs is None or t.epochs > 0, f"train.epochs must be positive, not {t.epochs}")
        _require(
            t.max_tokens is None,
            "train.max_tokens is a pretraining budget; fine-tuning stops after train.epochs, train.max_steps "
            "or train.max_minutes",
        )
        _require(
            t.eval_pairs is None, "train.eval_pairs scores a masked LM during pretraining; not in fine-tuning"
        )
        _require(
            t.embedding_init == "normal",
            "train.embedding_init starts a model pretrained from scratch; fine-tuning starts from --model "
            "(--init random: normal initialisation)",
        )
        _require(t.eval_batch_size is None or t.eval_batch_size > 0, "train.eval_batch_size must be positive")
        _require(
            t.eval_epochs is None or t.eval_epochs >= 1,
            f"train.eval_epochs must be at least 1 (or None: automatic), not {t.eval_epochs}",
        )
        _require(t.bucket_batches >= 1, f"train.bucket_batches must be at least 1, not {t.bucket_batches}")
        _require(t.checkpoint_every is None or t.checkpoint_every >= 0, "train.checkpoint_every must be >= 0")
        _require(
            t.attention_dropout is None or 0 <= t.attention_dropout < 1,
            f"train.attention_dropout must be in [0, 1), not {t.attention_dropout}",
        )
        h = self.head
        _require(
            h.classifier_dropout is None or 0 <= h.classifier_dropout < 1,
            f"head.classifier_dropout must be in [0, 1), not {h.classifier_dropout}",
        )
        _require(
            d.max_length is None or d.max_length >= 8,
            f"data.max_length must be at least 8, not {d.max_length}",
        )
        _require(d.doc_stride is None or d.doc_stride >= 0, "data.doc_stride must be >= 0")
        _require(d.max_question_length >= 1, "data.max_question_length must be at least 1")
        _require(d.n_best >= 1, "data.n_best must be at least 1")
        _require(d.max_answer_length >= 1, "data.max_answer_length must be at least 1")
        return self


def build_config(
    overrides: dict[str, Any] | None = None,
    config_file: str | Path | None = None,
    source: str = "the command line",
) -> FinetuneConfig:
    """Defaults, then a YAML file (sections train / data / head), then dotted overrides (from `source`, as an
    unknown key's message names it); validated."""
    cfg = FinetuneConfig()
    if config_file:
        apply_dict(cfg, read_yaml(config_file), str(config_file))
    if overrides:
        apply_dict(cfg, overrides, source)
    return cfg.validate()


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise UserError(message)


# ----------------------------------------------------------------------------------------------------------------
# Settings: each field seen through its type and help (coercion, the --help text, the docs)


@dataclass(frozen=True)
class Setting:
    """One field of a config section, as YAML files, the command line and the docs see it."""

    section: str
    name: str
    kind: type  # int, float, bool or str
    optional: bool  # None is a valid value
    choices: tuple[str, ...] | None  # the allowed values of a Literal field
    default: Any
    help: str

    @property
    def key(self) -> str:
        return f"{self.section}.{self.name}"

    @property
    def default_text(self) -> str:
        """The default as one would type it: 5e-05, true, None, linear."""
        if isinstance(self.default, bool):
            return str(self.default).lower()
        return str(self.default)

    def coerce(self, value: Any) -> Any:
        """Turn a YAML / command-line value into the field's type; a `UserError` names the field otherwise."""
        if isinstance(value, str) and self.optional and value.strip().lower() in ("none", "null", "~"):
            return None
        if value is None:
            if self.optional:
                return None
            raise UserError(f"config key {self.key} cannot be empty")
        if self.choices is not None:
            if value not in self.choices:
                raise UserError(
                    f"config key {self.key} must be one of {', '.join(self.choices)}, not {value!r}"
                )
            return value
        try:
            return _PARSE[self.kind](value)
        except (TypeError, ValueError):
            wanted = "a finite number" if self.kind is float else self.kind.__name__
            raise UserError(f"config key {self.key} expects {wanted}, got {value!r}") from None


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    low = str(value).strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise ValueError(value)


def _to_int(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError(value)
    f = _to_float(value)
    if f != int(f):
        raise ValueError(value)
    return int(f)


def _to_float(value: Any) -> float:
    """A finite float: no setting means anything at inf or nan (an infinite lr trains a NaN model)."""
    if isinstance(value, bool):
        raise ValueError(value)
    f = float(value)
    if not math.isfinite(f):
        raise ValueError(value)
    return f


_PARSE = {bool: _to_bool, int: _to_int, float: _to_float, str: str}


def sections(root: type) -> dict[str, type]:
    """The section classes of a config (Config or FinetuneConfig) by name: {"model": ModelConfig, ...}."""
    hints = typing.get_type_hints(root)
    return {f.name: hints[f.name] for f in fields(root)}


def settings(root: type) -> list[Setting]:
    """Every setting of a config (Config or FinetuneConfig), section by section, in declaration order."""
    return [s for name, cls in sections(root).items() for s in section_settings(cls, name).values()]


@functools.cache
def section_settings(cls: type, section: str) -> dict[str, Setting]:
    """The settings of one section class by field name, read from its type hints and `setting(...)` help."""
    hints = typing.get_type_hints(cls)
    out = {}
    for f in fields(cls):
        kind, optional, choices = _parse_type(hints[f.name])
        if kind not in _PARSE:
            raise TypeError(f"{cls.__name__}.{f.name}: a setting must be int, float, bool, str or a Literal")
        out[f.name] = Setting(section, f.name, kind, optional, choices, f.default, _help(cls, f.name))
    return out


def _parse_type(hint: Any) -> tuple[type, bool, tuple[str, ...] | None]:
    """`int | None` → (int, True, None); `Literal["a", "b"]` → (str, False, ("a", "b"))."""
    optional = False
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        (hint,) = [a for a in args if a is not type(None)]
        optional = type(None) in args
    if typing.get_origin(hint) is Literal:
        return str, optional, typing.get_args(hint)
    return hint, optional, None


def _help(cls: type, name: str) -> str:
    """A field's help: its own, or that of the nearest base class that declares one (a changed default keeps it)."""
    for klass in cls.__mro__:
        f = getattr(klass, "__dataclass_fields__", {}).get(name)
        if f is not None and "help" in f.metadata:
            return f.metadata["help"]
    raise TypeError(f"{cls.__name__}.{name} has no help; declare it with setting(default, help)")


def check_choices(cfg: Any) -> None:
    """Every Literal field of `cfg`'s sections holds one of its allowed values."""
    for f in fields(cfg):
        section = getattr(cfg, f.name)
        for s in section_settings(type(section), f.name).values():
            value = getattr(section, s.name)
            if s.choices and not (value is None and s.optional) and value not in s.choices:
                raise UserError(f"{s.key} must be one of {', '.join(s.choices)}, not {value!r}")


# ----------------------------------------------------------------------------------------------------------------
# Building a Config from presets, YAML files and overrides


def apply_dict(cfg: Any, values: dict[str, Any], source: str) -> Any:
    """Set `values` ({"train": {"lr": 1e-3}} or {"train.lr": 1e-3}) on `cfg`, rejecting unknown keys.

    `cfg` is any dataclass whose fields are section dataclasses (Config, FinetuneConfig).
    """
    names = [f.name for f in fields(cfg)]
    flat = _dotted(values, names)
    for key, value in flat.items():
        if key in names:
            raise UserError(
                f"section {key!r} in {source} must map settings to values ({key}: {{name: value}}), not {value!r}"
            )
        section_name, _, name = key.partition(".")
        section = getattr(cfg, section_name) if section_name in names else None
        known = section_settings(type(section), section_name) if section is not None else {}
        if name not in known:
            raise UserError(
                f"unknown config key {key!r} in {source}; valid keys look like "
                f"{'|'.join(names)}.<field>; see docs/configuration.md for the list"
            )
        setattr(section, name, known[name].coerce(value))
    return cfg


def _dotted(values: dict[str, Any], sections: Iterable[str]) -> dict[str, Any]:
    """{"train": {"lr": 1e-3}} and {"train.lr": 1e-3} alike as {"train.lr": 1e-3}; an empty section ("model:" with
    nothing under it) gives nothing, and a section given a value that is no mapping stays as it is (refused by
    `apply_dict`)."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update({f"{key}.{name}": v for name, v in value.items()})
        elif not (key in sections and value is None):
            flat[key] = value
    return flat


def file_settings(path: str | Path) -> dict[str, Any]:
    """The settings a YAML config file gives, as dotted keys ({"train.lr": 1e-3}): a resumed run checks and applies
    them by the resume rule, as it does the command line's."""
    sections = {f.name for root in (Config, FinetuneConfig) for f in fields(root)}
    return _dotted(read_yaml(path), sections)


BUDGET_KEYS = ("train.max_steps", "train.max_tokens", "train.max_minutes")


def replaced_budget(given: dict[str, Any]) -> dict[str, Any]:
    """The budget settings that `given` (a command's dotted settings, from its flags and config file) clears: a
    budget named there in any form replaces the one before it, a preset's or a resumed run's, instead of adding
    to it (`--max-minutes 2` with the tiny preset's 40 steps runs 2 minutes; `--train.max_steps N` with the small
    preset's 9 minutes runs N steps). Empty when `given` names no budget."""
    if not any(key in given for key in BUDGET_KEYS):
        return {}
    return {key: None for key in BUDGET_KEYS if key not in given}


def preset_values(name: str) -> dict[str, Any]:
    if name not in PRESETS:
        raise UserError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    text = resources.files("masklm").joinpath("presets", f"{name}.yaml").read_text()
    return yaml.safe_load(text) or {}


def read_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if p.is_dir():
        raise UserError(f"config file {p} is a folder; give the YAML file itself")
    if not p.is_file():
        raise UserError(f"config file {p} does not exist")
    try:
        values = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise UserError(f"config file {p} is not valid YAML ({type(e).__name__}); fix its syntax") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise UserError(f"config file {p} must hold a mapping like 'train: {{lr: 1e-3}}'")
    return values


def load_config(
    preset: str | None = None,
    config_file: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
) -> Config:
    """Defaults, then the preset, then the YAML file, then dotted overrides; validated."""
    cfg = Config()
    if preset:
        apply_dict(cfg, preset_values(preset), f"preset {preset}")
    if config_file:
        apply_dict(cfg, read_yaml(config_file), str(config_file))
    if overrides:
        apply_dict(cfg, overrides, "the command line")
    return cfg.validate()


def config_from_dict(values: dict[str, Any]) -> Config:
    """Rebuild a Config saved with `to_dict()` (config.yaml in a run folder)."""
    return apply_dict(Config(), values, "saved config").validate()
