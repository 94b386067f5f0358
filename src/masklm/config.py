"""Typed configuration: one dataclass per concern, YAML for values, dotted command-line overrides.

    cfg = load_config(preset="small", config_file=None, overrides={"train.lr": "3e-4"})

Field names follow Hugging Face's `BertConfig` where the concept is the same, so converting a checkpoint is a key
map rather than a translation. Every field has a comment saying what it does; `validate()` turns impossible values
into a `UserError` with a one-line fix.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from masklm.errors import UserError

PRESETS = ("tiny", "small", "base", "large")
TASKS = ("classification", "token-classification", "qa")  # what `masklm finetune --task` takes


@dataclass
class ModelConfig:
    """The encoder's shape and variant."""

    vocab_size: int = 30522  # tokenizer size; set from the tokenizer at run time
    hidden_size: int = 768  # width of every hidden state (H)
    num_hidden_layers: int = 12  # Transformer blocks
    num_attention_heads: int = 12  # attention heads per block (hidden_size must divide by it)
    intermediate_size: int = 3072  # feed-forward width
    max_position_embeddings: int = 512  # longest sequence with learned absolute positions
    type_vocab_size: int = 2  # token-type (segment) embeddings; 0 disables them
    hidden_dropout_prob: float = 0.1  # dropout after embeddings, attention and feed-forward
    attention_probs_dropout_prob: float = 0.1  # dropout on attention weights
    layer_norm_eps: float = 1e-12  # LayerNorm epsilon
    initializer_range: float = 0.02  # std of the normal initialisation
    hidden_act: str = "gelu"  # "gelu" (exact erf), "gelu_tanh" or "relu"
    pad_token_id: int = 0  # id of [PAD]; set from the tokenizer at run time
    pad_vocab_multiple: int = 64  # embedding rows padded up to a multiple of this (ids unchanged)
    # Variant switches. The defaults are BERT exactly; anything else cannot be exported to BertForMaskedLM.
    norm: str = "post"  # "post" (BERT) or "pre" LayerNorm
    position: str = "absolute"  # "absolute" learned positions (BERT) or "rotary"
    ffn: str = "mlp"  # "mlp" (dense, act, dense) or "geglu"
    bias: bool = True  # biases in linear layers and LayerNorms
    rope_theta: float = 10000.0  # rotary base frequency (position=rotary)

    @property
    def padded_vocab_size(self) -> int:
        m = max(1, self.pad_vocab_multiple)
        return int(math.ceil(self.vocab_size / m) * m)

    @property
    def is_bert_compatible(self) -> bool:
        return not self.modern_options()

    def modern_options(self) -> list[str]:
        """Names of the settings that Hugging Face's BertForMaskedLM cannot express."""
        out = []
        if self.norm != "post":
            out.append(f"model.norm={self.norm}")
        if self.position != "absolute":
            out.append(f"model.position={self.position}")
        if self.ffn != "mlp":
            out.append(f"model.ffn={self.ffn}")
        if not self.bias:
            out.append("model.bias=false")
        if self.hidden_act not in ("gelu", "gelu_tanh", "relu"):
            out.append(f"model.hidden_act={self.hidden_act}")
        return out


@dataclass
class DataConfig:
    """What `prepare` reads and how it packs it."""

    seq_len: int = 128  # tokens per packed sequence, [CLS] and [SEP] included
    vocab_size: int = 8192  # size of a newly trained WordPiece vocabulary
    lowercase: bool = True  # lowercase and strip accents before tokenizing (uncased BERT)
    tokenizer: str | None = None  # existing tokenizer.json or vocab.txt; None trains a new one
    one_doc_per_line: bool = False  # .txt files: each non-empty line is a document (else one per file)
    text_field: str = "text"  # .jsonl key / .csv column holding the text
    val_fraction: float = 0.01  # share of documents held out for validation
    max_val_sequences: int = 2000  # cap on validation sequences
    shard_sequences: int = 1 << 16  # sequences per shard file
    max_documents: int | None = None  # stop after this many documents (None = all)
    where: str | None = None  # .csv/.jsonl: keep only rows where COLUMN=VALUE (e.g. "source=imdb")
    workers: int = (
        0  # processes that tokenize in parallel (0 = one per CPU core, at most 8; 1 = no extra process)
    )


@dataclass
class MaskConfig:
    """Dynamic masking: a fresh mask every time a sequence is drawn."""

    rate: float = 0.15  # share of (non-special) tokens chosen for prediction
    mask_prob: float = 0.8  # of the chosen: replaced by [MASK]
    random_prob: float = 0.1  # of the chosen: replaced by a random token; the rest stay unchanged
    strategy: str = "token"  # "token", "whole_word" or "span"
    span_mean: float = 3.0  # span masking: mean span length in words (geometric distribution)
    span_max: int = 10  # span masking: longest span in words


@dataclass
class TrainConfig:
    """The optimisation loop."""

    batch_size: int = 32  # sequences per micro-batch (per process)
    grad_accum: int = 1  # micro-batches per optimizer step
    lr: float = 5e-4  # peak learning rate
    weight_decay: float = 0.01  # AdamW decay on matrices (not on biases / norms)
    beta1: float = 0.9  # AdamW beta1
    beta2: float = 0.98  # AdamW beta2
    eps: float = 1e-6  # AdamW epsilon
    schedule: str = "linear"  # "linear", "cosine", "wsd" (warmup-stable-decay) or "constant"
    warmup: float = 0.06  # warmup length: a fraction of the budget if < 1, else a step count
    decay_fraction: float = 0.2  # wsd: share of the budget spent decaying at the end
    min_lr_ratio: float = 0.0  # the schedule ends at lr * min_lr_ratio
    clip_norm: float = 1.0  # gradient-norm clipping; 0 disables
    max_steps: int | None = None  # budget in optimizer steps
    max_tokens: int | None = None  # budget in training tokens
    max_minutes: float | None = None  # budget in wall-clock minutes (the schedule decays to its end)
    eval_every: int = 200  # steps between evaluations (0 = only at the end)
    eval_sequences: int = 512  # validation sequences per evaluation
    log_every: int = 10  # steps between metrics.jsonl lines
    checkpoint_every: int = 500  # steps between checkpoints (0 = only at the end)
    keep_last: int = 2  # checkpoints kept on disk
    seed: int = 0  # seeds initialisation, data order and masks
    precision: str = "auto"  # "fp32", "bf16", "fp16" or "auto" (bf16 autocast on GPUs and CPUs with native bf16, else fp32)
    compile: bool = False  # torch.compile the model
    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:1", ...
    threads: int | None = None  # torch intra-op threads on CPU (None = torch's default)
    nonfinite: str = "skip"  # non-finite loss or gradients: "skip" the step or "stop"


@dataclass
class DistConfig:
    """Several processes under torchrun (ignored when running as one process)."""

    strategy: str = "ddp"  # "ddp" (whole model per process) or "fsdp" (FSDP2: sharded weights and state)
    backend: str = "auto"  # "auto" (NCCL on GPUs, gloo on CPU), "gloo" or "nccl"


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    mask: MaskConfig = field(default_factory=MaskConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    dist: DistConfig = field(default_factory=DistConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self) -> Config:
        m, d, k, t = self.model, self.data, self.mask, self.train
        _require(m.hidden_size > 0 and m.num_hidden_layers > 0, "model sizes must be positive")
        _require(
            m.num_attention_heads > 0 and m.hidden_size % m.num_attention_heads == 0,
            f"model.hidden_size ({m.hidden_size}) must be divisible by model.num_attention_heads "
            f"({m.num_attention_heads})",
        )
        _require(m.intermediate_size > 0, "model.intermediate_size must be positive")
        _require(m.norm in ("post", "pre"), f"model.norm must be 'post' or 'pre', not {m.norm!r}")
        _require(
            m.position in ("absolute", "rotary"),
            f"model.position must be 'absolute' or 'rotary', not {m.position!r}",
        )
        _require(m.ffn in ("mlp", "geglu"), f"model.ffn must be 'mlp' or 'geglu', not {m.ffn!r}")
        _require(
            m.hidden_act in ("gelu", "gelu_tanh", "relu"),
            f"model.hidden_act must be gelu, gelu_tanh or relu, not {m.hidden_act!r}",
        )
        if m.position == "rotary":
            _require(
                (m.hidden_size // m.num_attention_heads) % 2 == 0, "rotary positions need an even head size"
            )
        _require(d.seq_len >= 8, f"data.seq_len must be at least 8, not {d.seq_len}")
        _require(
            d.seq_len <= m.max_position_embeddings or m.position == "rotary",
            f"data.seq_len ({d.seq_len}) is above model.max_position_embeddings ({m.max_position_embeddings}); "
            "lower --data.seq_len or raise --model.max_position_embeddings",
        )
        _require(d.vocab_size >= 100, f"data.vocab_size must be at least 100, not {d.vocab_size}")
        _require(0 <= d.val_fraction < 1, "data.val_fraction must be in [0, 1)")
        _require(0 < k.rate < 1, f"mask.rate must be between 0 and 1, not {k.rate}")
        _require(
            k.mask_prob >= 0 and k.random_prob >= 0 and k.mask_prob + k.random_prob <= 1,
            "mask.mask_prob and mask.random_prob must be >= 0 and add up to at most 1",
        )
        _require(
            k.strategy in ("token", "whole_word", "span"),
            f"mask.strategy must be token, whole_word or span, not {k.strategy!r}",
        )
        _require(k.span_mean >= 1 and k.span_max >= 1, "mask.span_mean and mask.span_max must be >= 1")
        _require(t.batch_size > 0, f"train.batch_size must be positive, not {t.batch_size}")
        _require(t.grad_accum > 0, f"train.grad_accum must be positive, not {t.grad_accum}")
        _require(t.lr > 0, f"train.lr must be positive, not {t.lr}")
        _require(
            t.schedule in ("linear", "cosine", "wsd", "constant"),
            f"train.schedule must be linear, cosine, wsd or constant, not {t.schedule!r}",
        )
        _require(t.warmup >= 0, "train.warmup must be >= 0")
        for name in ("max_steps", "max_tokens"):
            v = getattr(t, name)
            _require(v is None or v > 0, f"train.{name} must be positive, not {v}")
        _require(t.max_minutes is None or t.max_minutes > 0, "train.max_minutes must be positive")
        _require(
            t.precision in ("fp32", "bf16", "fp16", "auto"),
            f"train.precision must be fp32, bf16, fp16 or auto, not {t.precision!r}",
        )
        _require(t.nonfinite in ("skip", "stop"), "train.nonfinite must be 'skip' or 'stop'")
        _require(t.keep_last >= 1, "train.keep_last must be at least 1")
        _require(t.eval_every >= 0 and t.checkpoint_every >= 0, "eval_every/checkpoint_every must be >= 0")
        _require(t.eval_sequences > 0, "train.eval_sequences must be positive")
        _require(t.log_every > 0, "train.log_every must be positive")
        _require(
            self.dist.strategy in ("ddp", "fsdp"),
            f"dist.strategy must be ddp or fsdp, not {self.dist.strategy!r}",
        )
        _require(
            self.dist.backend in ("auto", "gloo", "nccl"),
            f"dist.backend must be auto, gloo or nccl, not {self.dist.backend!r}",
        )
        return self


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise UserError(message)


# ----------------------------------------------------------------------------------------------------------------
# Building a Config from presets, YAML files and overrides


def _coerce(value: Any, current: Any, annotation: str, key: str) -> Any:
    """Turn a YAML / command-line value into the type the field holds."""
    if isinstance(value, str):
        low = value.strip().lower()
        if low in ("none", "null", "~") and "None" in annotation:
            return None
    if value is None:
        if "None" in annotation:
            return None
        raise UserError(f"config key {key} cannot be empty")
    base = annotation.replace(" | None", "").strip()
    try:
        if base == "bool":
            if isinstance(value, bool):
                return value
            low = str(value).strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if base == "int":
            if isinstance(value, bool):
                raise ValueError(value)
            f = float(value)
            if f != int(f):
                raise ValueError(value)
            return int(f)
        if base == "float":
            return float(value)
        if base == "str":
            return str(value)
    except (TypeError, ValueError):
        raise UserError(f"config key {key} expects {base}, got {value!r}") from None
    return value


def apply_dict(cfg: Any, values: dict[str, Any], source: str) -> Any:
    """Set `values` ({"train": {"lr": 1e-3}} or {"train.lr": 1e-3}) on `cfg`, rejecting unknown keys.

    `cfg` is any dataclass whose fields are section dataclasses (Config here, the fine-tuning config elsewhere).
    """
    sections = [f.name for f in fields(cfg)]
    flat: dict[str, Any] = {}
    for k, v in values.items():
        if isinstance(v, dict):
            for kk, vv in v.items():
                flat[f"{k}.{kk}"] = vv
        else:
            flat[k] = v
    for key, value in flat.items():
        section_name, _, name = key.partition(".")
        section = getattr(cfg, section_name) if section_name in sections else None
        known = {f.name: f for f in fields(section)} if section is not None else {}
        if name not in known:
            raise UserError(
                f"unknown config key {key!r} in {source}; valid keys look like "
                f"{'|'.join(sections)}.<field>; see docs/configuration.md for the list"
            )
        f = known[name]
        setattr(section, name, _coerce(value, getattr(section, name), str(f.type), key))
    return cfg


def preset_values(name: str) -> dict[str, Any]:
    if name not in PRESETS:
        raise UserError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    text = resources.files("masklm").joinpath("presets", f"{name}.yaml").read_text()
    return yaml.safe_load(text) or {}


def read_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
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
