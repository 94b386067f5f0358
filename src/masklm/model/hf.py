"""Hugging Face BERT ↔ masklm: configs, weight names, and reading Hugging Face folders.

masklm's encoder is BERT with three cosmetic differences, all undone here:

- query, key and value are one fused linear layer (`attn.qkv`, rows ordered q | k | v) instead of three;
- the word-embedding matrix (and so the tied decoder and its bias) has extra zero rows up to a multiple of
  `ModelConfig.pad_vocab_multiple`: padded on load, trimmed on export;
- module names are shorter (`encoder.layers.3.ffn.up` for `bert.encoder.layer.3.intermediate.dense`).

    read_hf_checkpoint(folder)   HF folder (config.json + weights + tokenizer) → Checkpoint under masklm names
                                 (`masklm.model.io.load_model` builds the model from it)
    to_hf_state_dict(model)      masklm model → HF state dict (BertForMaskedLM / ...ForSequenceClassification / ...)
    config_from_hf(dict)         HF config.json → ModelConfig
    config_to_hf(cfg, ...)       ModelConfig → HF config.json

The encoder's name map, one BERT layer (masklm ← HF, "bert." prefix optional on the HF side):

    encoder.embeddings.{word,position,token_type}  ← embeddings.{word,position,token_type}_embeddings
    encoder.embeddings.norm                        ← embeddings.LayerNorm
    encoder.layers.i.attn.qkv                      ← encoder.layer.i.attention.self.{query,key,value} (concatenated)
    encoder.layers.i.attn.out / attn_norm          ← encoder.layer.i.attention.output.dense / .LayerNorm
    encoder.layers.i.ffn.up / ffn.down / ffn_norm  ← encoder.layer.i.intermediate.dense / output.dense / .LayerNorm

Heads map their own modules (`Head.hf_modules`, e.g. pooler / classifier ← bert.pooler.dense / classifier).

ELECTRA's heads (masklm.model.electra, `Head.hf_model_type == "electra"`) export through the same map with the
prefix "electra." instead of "bert.", plus `encoder.embed_proj` ← `electra.embeddings_project` when the
embeddings are narrower than the encoder. Only BERT folders are read back.
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path
from typing import Any

import tokenizers
import torch
from torch import nn

from masklm.config import ModelConfig
from masklm.data.tokenizer import load_tokenizer
from masklm.errors import UserError
from masklm.model.base import (
    Checkpoint,
    Head,
    head_class,
    read_config_json,
    read_safetensors,
    registered_heads,
)

_BARE_ENCODER = "BertModel"  # the HF class of an encoder without a head

# HF hidden_act → masklm hidden_act. gelu_new / gelu_fast are the tanh approximation written out by hand.
_ACT_FROM_HF = {
    "gelu": "gelu",
    "gelu_python": "gelu",
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_fast": "gelu_tanh",
    "relu": "relu",
}
# masklm hidden_act → HF: "gelu_pytorch_tanh" is F.gelu(approximate="tanh"), bit for bit what masklm computes
_ACT_TO_HF = {"gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh", "relu": "relu"}

# Per-layer modules: masklm name → HF name (under encoder.layer.{i}.)
_LAYER = {
    "attn.out": "attention.output.dense",
    "attn_norm": "attention.output.LayerNorm",
    "ffn.up": "intermediate.dense",
    "ffn.down": "output.dense",
    "ffn_norm": "output.LayerNorm",
}
_QKV = ("query", "key", "value")
_EMBEDDINGS = {  # under the model type's prefix ("bert.")
    "encoder.embeddings.word": "embeddings.word_embeddings",
    "encoder.embeddings.position": "embeddings.position_embeddings",
    "encoder.embeddings.token_type": "embeddings.token_type_embeddings",
    "encoder.embeddings.norm": "embeddings.LayerNorm",
    "encoder.embed_proj": "embeddings_project",  # ELECTRA only: BERT has no embedding_size
}
_WORD = "encoder.embeddings.word.weight"
_LAYER_KEY = re.compile(r"encoder\.layers\.(\d+)\.(.+)\.(weight|bias)")
# HF weights that carry nothing masklm needs: buffers, the next-sentence head, the tied decoder copies
_IGNORED = re.compile(
    r"(bert\.)?embeddings\.(position_ids|token_type_ids)|cls\.seq_relationship\.(weight|bias)"
    r"|cls\.predictions\.decoder\.(weight|bias)"
)
# Older checkpoints keep the MLM decoder's bias only under its tied copy's name
_ALIASES = {"cls.predictions.bias": "cls.predictions.decoder.bias"}


def hf_keys(key: str, head: type[Head] | None = None, prefix: str | None = None) -> list[str]:
    """The HF name(s) of one masklm parameter; `attn.qkv` maps to three (query, key, value).

    Head parameters are looked up in `head.hf_modules`, or in every registered head's when `head` is None. The
    encoder's names start with `prefix` (default: the head's model type and a dot, "bert.").
    """
    base = prefix if prefix is not None else f"{head.hf_model_type if head is not None else 'bert'}."
    m = _LAYER_KEY.fullmatch(key)
    if m:
        i, module, param = m.groups()
        prefix = f"{base}encoder.layer.{i}."
        if module == "attn.qkv":
            return [f"{prefix}attention.self.{name}.{param}" for name in _QKV]
        if module in _LAYER:
            return [f"{prefix}{_LAYER[module]}.{param}"]
        raise KeyError(f"masklm parameter {key!r} has no Hugging Face BERT counterpart")
    module, _, param = key.rpartition(".")
    if module in _EMBEDDINGS:
        return [f"{base}{_EMBEDDINGS[module]}.{param}"]
    for h in (head,) if head is not None else registered_heads():
        if key in h.hf_modules:
            return [h.hf_modules[key]]
        if module in h.hf_modules:
            return [f"{h.hf_modules[module]}.{param}"]
    raise KeyError(f"masklm parameter {key!r} has no Hugging Face BERT counterpart")


# ----------------------------------------------------------------------------------------------------------------
# Configs


def config_from_hf(data: dict[str, Any], source: str = "config.json") -> ModelConfig:
    """A Hugging Face BERT config.json (as a dict) → ModelConfig; what BERT-in-masklm cannot express is refused."""
    model_type = data.get("model_type")
    claimed = data.get("architectures")
    if (
        model_type is None
        and isinstance(claimed, list)
        and claimed
        and all(str(c).startswith("Bert") for c in claimed)
    ):
        model_type = (
            "bert"  # an older config.json that names only its BERT class, which transformers loads too
        )
    if model_type != "bert":
        why = {"roberta": "RoBERTa uses other position ids and weight names", None: "it names no model_type"}
        raise UserError(
            f"{source} describes a {model_type!r} model; masklm loads BERT checkpoints only (model_type 'bert')"
            + (f": {why[model_type]}" if model_type in why else "")
        )
    position = data.get("position_embedding_type", "absolute") or "absolute"
    if position != "absolute":
        raise UserError(f"{source}: position_embedding_type {position!r} is not supported (only 'absolute')")
    if data.get("is_decoder") or data.get("add_cross_attention"):
        raise UserError(
            f"{source} is a BERT decoder (is_decoder/add_cross_attention); masklm has encoders only"
        )
    act = data.get("hidden_act", "gelu")
    if not isinstance(act, str) or act not in _ACT_FROM_HF:
        raise UserError(
            f"{source}: hidden_act {act!r} is not supported; masklm has {', '.join(sorted(_ACT_FROM_HF))}"
        )
    if data.get("tie_word_embeddings") is False:
        raise UserError(f"{source}: tie_word_embeddings=false (an untied MLM decoder) is not supported")
    defaults = ModelConfig()
    values: dict[str, Any] = {"hidden_act": _ACT_FROM_HF[act]}
    for name in (
        "vocab_size",
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "intermediate_size",
        "max_position_embeddings",
        "type_vocab_size",
    ):
        values[name] = _field(data, name, int, getattr(defaults, name), source)
    for name in (
        "hidden_dropout_prob",
        "attention_probs_dropout_prob",
        "layer_norm_eps",
        "initializer_range",
    ):
        values[name] = _field(data, name, float, getattr(defaults, name), source)
    pad = data.get("pad_token_id", 0)
    values["pad_token_id"] = _field(
        {"pad_token_id": 0 if pad is None else pad}, "pad_token_id", int, 0, source
    )
    cfg = ModelConfig(**values)
    positive = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
    bad = [n for n in positive if getattr(cfg, n) <= 0]
    if bad or cfg.hidden_size % cfg.num_attention_heads or cfg.max_position_embeddings <= 0:
        raise UserError(
            f"{source} has impossible sizes ({', '.join(bad) or 'hidden_size / num_attention_heads'})"
        )
    if not 0 <= cfg.pad_token_id < cfg.vocab_size:
        raise UserError(
            f"{source}: pad_token_id {cfg.pad_token_id} is outside the vocabulary ({cfg.vocab_size})"
        )
    return cfg


def _field(data: dict[str, Any], name: str, kind: type, default: Any, source: str) -> Any:
    value = data.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or (kind is int and value != int(value)):
        raise UserError(
            f"{source}: {name} must be a number ({'integer' if kind is int else 'float'}), not {value!r}"
        )
    return kind(value)


HF_TASK_KEY = "masklm_task"
"""The config.json key under which `masklm export --format hf` keeps a fine-tuned model's task settings."""


def config_to_hf(
    cfg: ModelConfig,
    architecture: str = "MaskedLM",
    labels: list[str] | None = None,
    vocab_size: int | None = None,
    dtype: torch.dtype = torch.float32,
) -> dict[str, Any]:
    """ModelConfig → a Hugging Face BERT (or, for an ELECTRA head, ElectraConfig) config.json dict
    (`vocab_size` overrides the row count written)."""
    head = head_class(architecture)
    refuse_modern(cfg, head.hf_model_type, head.hf_class)
    out: dict[str, Any] = {
        "architectures": [head.hf_class],
        "model_type": head.hf_model_type,
        "vocab_size": vocab_size or cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "num_hidden_layers": cfg.num_hidden_layers,
        "num_attention_heads": cfg.num_attention_heads,
        "intermediate_size": cfg.intermediate_size,
        "hidden_act": _ACT_TO_HF[cfg.hidden_act],
        "hidden_dropout_prob": cfg.hidden_dropout_prob,
        "attention_probs_dropout_prob": cfg.attention_probs_dropout_prob,
        "max_position_embeddings": cfg.max_position_embeddings,
        # HF always has token-type embeddings, and its tokenizer gives a pair's second text type 1: a masklm model
        # without them (or with one row, which every segment reads) exports two rows, all-zero (or both that row)
        "type_vocab_size": max(2, cfg.type_vocab_size),
        "initializer_range": cfg.initializer_range,
        "layer_norm_eps": cfg.layer_norm_eps,
        "pad_token_id": cfg.pad_token_id,
        "position_embedding_type": "absolute",
        "classifier_dropout": None,
        "tie_word_embeddings": True,
        "is_decoder": False,
        "use_cache": False,
        "dtype": str(dtype).removeprefix("torch."),
    }
    if head.hf_model_type == "electra":
        out["embedding_size"] = cfg.embedding_width
    if labels:
        out["id2label"] = {str(i): name for i, name in enumerate(labels)}
        out["label2id"] = {name: i for i, name in enumerate(labels)}
    return out


def refuse_modern(cfg: ModelConfig, model_type: str = "bert", hf_class: str | None = None) -> None:
    """Raise a UserError naming the settings Hugging Face's BERT (or ELECTRA) cannot express (`hf_class`: the
    class exported, when it matters: ElectraForMaskedLM's prediction head is always gelu, the discriminator's
    follows config.hidden_act)."""
    options = cfg.modern_options(model_type)
    if hf_class == "ElectraForMaskedLM" and cfg.hidden_act != "gelu":  # ElectraGeneratorPredictions: gelu
        options.append(f"model.hidden_act={cfg.hidden_act}")
    if options:
        name = hf_class or ("ElectraModel" if model_type == "electra" else "BertModel")
        gelu = " --model.hidden_act gelu" if any(o.startswith("model.hidden_act") for o in options) else ""
        raise UserError(
            f"this model uses {', '.join(options)}, which Hugging Face's {name} cannot express; "
            "only models trained with the BERT defaults (--model.norm post --model.position absolute "
            f"--model.ffn mlp --model.bias true{gelu}) export to Hugging Face (ONNX export works for any model)"
        )


def is_hf_config(data: dict[str, Any]) -> bool:
    """Whether a config.json (as a dict) is a Hugging Face BERT one (or claims a BERT class)."""
    known = {_BARE_ENCODER}
    for head in registered_heads():
        known.update((head.hf_class, *head.hf_also_reads))
    claimed = data.get("architectures")
    return data.get("model_type") == "bert" or (
        isinstance(claimed, list) and any(name in known for name in claimed if isinstance(name, str))
    )


# ----------------------------------------------------------------------------------------------------------------
# Weights: masklm → HF


def to_hf_state_dict(model: nn.Module, vocab_size: int | None = None) -> dict[str, torch.Tensor]:
    """The model's weights under Hugging Face BERT names, vocabulary rows trimmed to `vocab_size`.

    `vocab_size` defaults to the model's own (unpadded) vocabulary size. The tied decoder weight is left out,
    as `save_pretrained` does; `cls.predictions.bias` carries the decoder bias.
    """
    cfg: ModelConfig = model.cfg
    head = head_class(type(model).architecture)
    refuse_modern(cfg, head.hf_model_type, head.hf_class)
    prefix = f"{head.hf_model_type}."
    rows = vocab_size or cfg.vocab_size
    if rows > cfg.vocab_size:
        raise UserError(f"cannot export {rows} vocabulary rows from a model with {cfg.vocab_size}")
    out: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        if key.startswith(head.hf_skip):
            continue
        value = value.detach().cpu()
        if key == _WORD or key in head.vocab_sized:
            value = value[:rows]
        names = hf_keys(key, head)
        parts = value.chunk(len(names), dim=0) if len(names) > 1 else (value,)
        for name, part in zip(names, parts, strict=True):
            out[name] = part.clone().contiguous()
    if cfg.type_vocab_size < 2:  # (see hf_config's type_vocab_size)
        types = f"{prefix}embeddings.token_type_embeddings.weight"
        dtype = out[f"{prefix}embeddings.word_embeddings.weight"].dtype
        row = out[types] if cfg.type_vocab_size == 1 else torch.zeros(1, cfg.embedding_width, dtype=dtype)
        out[types] = row.expand(2, -1).clone()
    return out


# ----------------------------------------------------------------------------------------------------------------
# Weights: HF → masklm


def _normalise_hf_keys(state: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """Put every key into the BertFor* layout: `bert.` prefix on the encoder, LayerNorm.weight/bias (not gamma/beta)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise UserError(f"{source}: entry {key!r} is not a tensor; the file is not a model checkpoint")
        name = key
        if name.startswith(("embeddings.", "encoder.", "pooler.")):
            name = "bert." + name
        if ".LayerNorm." in name or name.endswith(("LayerNorm.gamma", "LayerNorm.beta")):
            name = re.sub(r"LayerNorm\.gamma$", "LayerNorm.weight", name)
            name = re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", name)
        out[name] = value
    for name, alias in _ALIASES.items():
        if name not in out and alias in out:
            out[name] = out[alias]
    return out


def _masklm_params(cfg: ModelConfig) -> dict[str, tuple[list[str], tuple[int, ...], bool]]:
    """masklm name → (HF names, shape, one row per token?) for every parameter of any registered head for `cfg`.

    The models are built on the meta device: names and shapes without memory or time. Heads sized by labels are
    built with one label; only the encoder's shapes are checked against a checkpoint.
    """
    out: dict[str, tuple[list[str], tuple[int, ...], bool]] = {}
    for head in registered_heads():
        if head.hf_model_type != "bert":  # only BERT checkpoints are read
            continue
        with torch.device("meta"):
            model = head.create(cfg, ["label"])
        for key, value in model.state_dict().items():
            vocab = key == _WORD or key in head.vocab_sized
            out.setdefault(key, (hf_keys(key, head), tuple(value.shape), vocab))
    return out


def _fit_rows(t: torch.Tensor, rows: int) -> torch.Tensor:
    """Pad with zero rows or trim to `rows` rows (vocabulary-sized weights)."""
    if t.shape[0] >= rows:
        return t[:rows]
    pad = torch.zeros((rows - t.shape[0], *t.shape[1:]), dtype=t.dtype)
    return torch.cat([t, pad], dim=0)


def from_hf_state_dict(
    state: dict[str, torch.Tensor], cfg: ModelConfig, source: str, config_rows: int | None = None
) -> dict[str, torch.Tensor]:
    """HF weights (any BERT layout) under masklm names, vocabulary rows padded to `cfg`.

    `config_rows` is config.json's vocab_size when `cfg.vocab_size` was cut down to the tokenizer's: rows up to
    that many are trimmed, not refused.

    Encoder weights must all be there with the shapes `cfg` gives (else UserError). Head weights are converted
    wherever the checkpoint has them; which of them a model takes is `masklm.model.io.load_model`'s rule. HF keys
    that map to nothing in any registered head are refused, so a checkpoint of another model type does not load
    silently.
    """
    state = _normalise_hf_keys(state, source)
    params = _masklm_params(cfg)
    known = {n for names, _, _ in params.values() for n in names}
    unknown = sorted(k for k in state if k not in known and not _IGNORED.fullmatch(k))
    if unknown:
        raise UserError(
            f"{source} holds weights that are not BERT's ({len(unknown)} unknown, e.g. {', '.join(unknown[:3])}); "
            "it is a checkpoint of another model type or a different layer count"
        )
    _refuse_untied_decoder(state, source)
    if cfg.type_vocab_size == 0:
        state.pop("bert.embeddings.token_type_embeddings.weight", None)
    out: dict[str, torch.Tensor] = {}
    for key, (names, shape, vocab) in params.items():
        encoder = key.startswith("encoder.")
        missing = [n for n in names if n not in state]
        if missing:
            if encoder:
                raise UserError(
                    f"{source} lacks {missing[0]}; the checkpoint is incomplete or its config.json does not match it"
                )
            continue
        parts = [state[n] for n in names]
        value = torch.cat(parts, dim=0) if len(parts) > 1 else parts[0]
        if vocab and value.shape[0] <= max(shape[0], config_rows or 0):
            value = _fit_rows(value, shape[0])
        if encoder and tuple(value.shape) != shape:
            raise UserError(
                f"{source}: {names[0]} has shape {tuple(parts[0].shape)}, which does not fit config.json "
                f"(expected {shape if len(names) == 1 else 'a third of ' + str(shape)})"
            )
        out[key] = value
    return out


def _refuse_untied_decoder(state: dict[str, torch.Tensor], source: str) -> None:
    """A UserError when the checkpoint stores an MLM decoder weight other than its word embeddings: transformers
    then keeps the two apart (it does not tie them), and masklm's tied head would answer otherwise."""
    decoder = state.get("cls.predictions.decoder.weight")
    word = state.get("bert.embeddings.word_embeddings.weight")
    if decoder is None or word is None:
        return
    rows = min(len(decoder), len(word))
    if decoder.shape[1:] != word.shape[1:] or not torch.equal(decoder[:rows].float(), word[:rows].float()):
        raise UserError(
            f"{source}: cls.predictions.decoder.weight differs from the word embeddings (an untied MLM decoder, "
            "which transformers keeps apart); masklm's masked-LM head is tied to the embeddings and cannot hold it"
        )


def _checkpoint_head(data: dict[str, Any], state: dict[str, torch.Tensor]) -> tuple[type[Head] | None, str]:
    """Which registered head the checkpoint carries (None: a bare encoder), and how a note names the checkpoint.

    config.json's "architectures" decides; without it, the head with the most HF modules (the first registered
    among equals) whose modules all have weights in the checkpoint.
    """
    from masklm.tasks import all_tasks

    all_tasks()  # a task module may define a head (multiple choice's): register them all before matching
    bare = None, f"a bare encoder ({_BARE_ENCODER}) without head weights"
    bert_heads = [h for h in registered_heads() if h.hf_model_type == "bert"]
    for name in data.get("architectures") or []:
        if name == _BARE_ENCODER:
            return bare
        for head in bert_heads:
            if name == head.hf_class or name in head.hf_also_reads:
                return head, f"a {head.hf_class}"
    carried = [
        h for h in bert_heads if all(m in state or f"{m}.weight" in state for m in h.hf_modules.values())
    ]
    if not carried:
        return bare
    head = max(carried, key=lambda h: len(h.hf_modules))  # max keeps the first of equals
    return head, f"a {head.hf_class}"


def _checkpoint_labels(
    head: type[Head] | None, data: dict[str, Any], state: dict[str, torch.Tensor]
) -> list[str] | None:
    """Label names of a head sized by labels: one per row of its label layer, named by config.json's id2label."""
    if head is None or head.label_layer is None:
        return None
    weight = hf_keys(f"{head.label_layer}.weight", head)[0]
    if weight not in state:
        return None
    return _label_names(data, state[weight].shape[0])


def _label_names(data: dict[str, Any], n: int) -> list[str]:
    """`n` label names from config.json's id2label, LABEL_i where it names none."""
    id2label = data.get("id2label") or {}
    try:
        return [str(id2label.get(str(i), id2label.get(i, f"LABEL_{i}"))) for i in range(n)]
    except AttributeError:
        return [f"LABEL_{i}" for i in range(n)]


# ----------------------------------------------------------------------------------------------------------------
# Files


def read_hf_weights(folder: Path) -> dict[str, torch.Tensor]:
    """model.safetensors (or its sharded index), else pytorch_model.bin loaded with weights_only=True."""
    single = folder / "model.safetensors"
    index = folder / "model.safetensors.index.json"
    legacy = folder / "pytorch_model.bin"
    if single.is_file():
        return read_safetensors(single)
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError):
            raise UserError(f"{index} is not a valid safetensors index") from None
        outside = [s for s in shards if not isinstance(s, str) or Path(s).name != s]
        if outside:  # a shard is a file of this folder, named without a path
            raise UserError(
                f"{index} is not a valid safetensors index: shard {outside[0]!r} is not a file name"
            )
        state: dict[str, torch.Tensor] = {}
        for shard in shards:
            state.update(read_safetensors(folder / shard))
        return state
    if legacy.is_file():
        try:
            # torch's notes on a pickle it then refuses: the line below says it
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                state = torch.load(legacy, map_location="cpu", weights_only=True)
        except Exception as e:  # unpickling errors come in many types
            raise UserError(
                f"{legacy} could not be read safely ({type(e).__name__}); convert it to model.safetensors"
            ) from None
        if not isinstance(state, dict):
            raise UserError(f"{legacy} does not hold a state dict")
        return state
    if (folder / "pytorch_model.bin.index.json").is_file():
        raise UserError(
            f"{folder} holds its weights as sharded pytorch_model-*.bin files, which masklm does not read; save the "
            "model with safetensors (transformers: model.save_pretrained(folder, safe_serialization=True))"
        )
    raise UserError(
        f"{folder} has no model.safetensors (nor pytorch_model.bin); copy the checkpoint's weights there"
    )


def load_hf_tokenizer(folder: str | Path) -> tokenizers.Tokenizer:
    """tokenizer.json if present, else BERT's WordPiece around vocab.txt (do_lower_case from tokenizer_config.json).

    Padding and truncation baked into tokenizer.json are switched off: masklm pads its own batches.
    """
    folder = Path(folder)
    if not (folder / "tokenizer.json").is_file() and not (folder / "vocab.txt").is_file():
        raise UserError(
            f"{folder} has neither tokenizer.json nor vocab.txt; copy the checkpoint's tokenizer files there"
        )
    return load_tokenizer(folder)


def read_hf_checkpoint(folder: Path) -> Checkpoint:
    """A Hugging Face BERT folder as a Checkpoint: its config, tokenizer and weights under masklm names.

    A vocabulary larger than the tokenizer's is trimmed to it (and said so in the notes).
    """
    source = str(folder)
    data = read_config_json(folder)
    cfg = config_from_hf(data, str(folder / "config.json"))
    if data.get("problem_type") == "multi_label_classification":  # a sigmoid per label, read as a softmax
        raise UserError(
            f"{folder} is a multi-label classifier (problem_type multi_label_classification), and masklm's "
            "classification is single-label: its scores would be read wrongly; use it with transformers (to fine-tune "
            "its encoder with masklm, delete problem_type from a copy of its config.json)"
        )
    raw = _normalise_hf_keys(read_hf_weights(folder), source)
    tokenizer = load_hf_tokenizer(folder)
    notes: list[str] = []
    config_rows = cfg.vocab_size
    n_tok = tokenizer.get_vocab_size()
    if n_tok > cfg.vocab_size:
        raise UserError(
            f"{folder}: the tokenizer has {n_tok} tokens but config.json's vocab_size is {cfg.vocab_size}; "
            "the folder mixes files from different models"
        )
    if n_tok < cfg.vocab_size:
        notes.append(
            f"vocabulary trimmed from {cfg.vocab_size} embedding rows to the tokenizer's {n_tok} tokens"
        )
        cfg.vocab_size = n_tok
    head, described = _checkpoint_head(data, raw)
    task = data[HF_TASK_KEY] if isinstance(data.get(HF_TASK_KEY), dict) else {}
    labels = _checkpoint_labels(head, data, raw)
    id2label = data.get("id2label")
    if (
        labels is None
        and task
        and head is not None
        and head.label_layer is None
        and isinstance(id2label, dict)
    ):
        # a prompt classifier, exported as a masked LM, names its labels there
        labels = _label_names(data, len(id2label))
    dropout = data.get("classifier_dropout")
    valid_dropout = isinstance(dropout, int | float) and not isinstance(dropout, bool) and 0 <= dropout < 1
    return Checkpoint(
        cfg=cfg,
        state=from_hf_state_dict(raw, cfg, source, config_rows),
        tokenizer=tokenizer,
        folder=folder,
        architecture=head.architecture if head else None,
        labels=labels,
        described=described,
        complete=False,
        source="huggingface",
        head={"classifier_dropout": float(dropout)} if valid_dropout else {},
        task=task,
        notes=notes,
    )
