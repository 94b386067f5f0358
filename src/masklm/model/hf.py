"""Key maps to and from Hugging Face BERT checkpoints.

masklm's encoder is BERT with three cosmetic differences, all undone here:

- query, key and value are one fused linear layer (`attn.qkv`, rows ordered q | k | v) instead of three;
- the word-embedding matrix (and so the tied decoder and its bias) has extra zero rows up to a multiple of
  `ModelConfig.pad_vocab_multiple`: padded on load, trimmed on export;
- module names are shorter (`encoder.layers.3.ffn.up` for `bert.encoder.layer.3.intermediate.dense`).

    load_hf_model(folder)        HF folder (config.json + weights + tokenizer) → (model, tokenizer, ModelInfo)
    to_hf_state_dict(model)      masklm model → HF state dict (BertForMaskedLM / ...ForSequenceClassification / ...)
    config_from_hf(dict)         HF config.json → ModelConfig
    config_to_hf(cfg, ...)       ModelConfig → HF config.json

The name map, one BERT layer (masklm ← HF, "bert." prefix optional on the HF side):

    encoder.embeddings.{word,position,token_type}  ← embeddings.{word,position,token_type}_embeddings
    encoder.embeddings.norm                        ← embeddings.LayerNorm
    encoder.layers.i.attn.qkv                      ← encoder.layer.i.attention.self.{query,key,value} (concatenated)
    encoder.layers.i.attn.out / attn_norm          ← encoder.layer.i.attention.output.dense / .LayerNorm
    encoder.layers.i.ffn.up / ffn.down / ffn_norm  ← encoder.layer.i.intermediate.dense / output.dense / .LayerNorm
    transform / transform_norm / decoder_bias      ← cls.predictions.transform.dense / .LayerNorm / cls.predictions.bias
    pooler / classifier / qa                       ← pooler.dense / classifier / qa_outputs
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import tokenizers
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from masklm.config import ModelConfig
from masklm.data.tokenizer import load_tokenizer
from masklm.errors import UserError
from masklm.model.io import ModelInfo, build_model, read_config_json

# masklm architecture ↔ Hugging Face class name
HF_CLASSES = {
    "MaskedLM": "BertForMaskedLM",
    "SequenceClassification": "BertForSequenceClassification",
    "TokenClassification": "BertForTokenClassification",
    "QuestionAnswering": "BertForQuestionAnswering",
}
# HF classes whose checkpoints we read, and the masklm head they carry (None: encoder only)
_HF_TO_ARCH: dict[str, str | None] = {
    **{v: k for k, v in HF_CLASSES.items()},
    "BertForPreTraining": "MaskedLM",
    "BertModel": None,
}

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
# Everything else: masklm module → HF module (full HF names, BertFor* layout)
_OTHER = {
    "encoder.embeddings.word": "bert.embeddings.word_embeddings",
    "encoder.embeddings.position": "bert.embeddings.position_embeddings",
    "encoder.embeddings.token_type": "bert.embeddings.token_type_embeddings",
    "encoder.embeddings.norm": "bert.embeddings.LayerNorm",
    "transform": "cls.predictions.transform.dense",
    "transform_norm": "cls.predictions.transform.LayerNorm",
    "pooler": "bert.pooler.dense",
    "classifier": "classifier",
    "qa": "qa_outputs",
}
_WORD = "encoder.embeddings.word.weight"
_DECODER_BIAS = "decoder_bias"
_HF_DECODER_BIAS = "cls.predictions.bias"
_LAYER_KEY = re.compile(r"encoder\.layers\.(\d+)\.(.+)\.(weight|bias)")
# HF weights that carry nothing masklm needs: buffers, the next-sentence head, the tied decoder copies
_IGNORED = re.compile(
    r"(bert\.)?embeddings\.(position_ids|token_type_ids)|cls\.seq_relationship\.(weight|bias)"
    r"|cls\.predictions\.decoder\.(weight|bias)"
)


def hf_keys(key: str) -> list[str]:
    """The HF name(s) of one masklm parameter; `attn.qkv` maps to three (query, key, value)."""
    if key == _DECODER_BIAS:
        return [_HF_DECODER_BIAS]
    m = _LAYER_KEY.fullmatch(key)
    if m:
        i, module, param = m.groups()
        prefix = f"bert.encoder.layer.{i}."
        if module == "attn.qkv":
            return [f"{prefix}attention.self.{name}.{param}" for name in _QKV]
        if module in _LAYER:
            return [f"{prefix}{_LAYER[module]}.{param}"]
    else:
        module, _, param = key.rpartition(".")
        if module in _OTHER:
            return [f"{_OTHER[module]}.{param}"]
    raise KeyError(f"masklm parameter {key!r} has no Hugging Face BERT counterpart")


# ----------------------------------------------------------------------------------------------------------------
# Configs


def config_from_hf(data: dict[str, Any], source: str = "config.json") -> ModelConfig:
    """A Hugging Face BERT config.json (as a dict) → ModelConfig; what BERT-in-masklm cannot express is refused."""
    model_type = data.get("model_type")
    if model_type != "bert":
        raise UserError(
            f"{source} describes a {model_type!r} model; masklm loads BERT checkpoints only (model_type 'bert'); "
            "RoBERTa-style models use other position ids and weight names"
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


def config_to_hf(
    cfg: ModelConfig,
    architecture: str = "MaskedLM",
    labels: list[str] | None = None,
    vocab_size: int | None = None,
    dtype: torch.dtype = torch.float32,
) -> dict[str, Any]:
    """ModelConfig → a Hugging Face BERT config.json dict (`vocab_size` overrides the row count written)."""
    refuse_modern(cfg)
    if architecture not in HF_CLASSES:
        raise UserError(f"architecture {architecture!r} has no Hugging Face BERT class")
    out: dict[str, Any] = {
        "architectures": [HF_CLASSES[architecture]],
        "model_type": "bert",
        "vocab_size": vocab_size or cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "num_hidden_layers": cfg.num_hidden_layers,
        "num_attention_heads": cfg.num_attention_heads,
        "intermediate_size": cfg.intermediate_size,
        "hidden_act": _ACT_TO_HF[cfg.hidden_act],
        "hidden_dropout_prob": cfg.hidden_dropout_prob,
        "attention_probs_dropout_prob": cfg.attention_probs_dropout_prob,
        "max_position_embeddings": cfg.max_position_embeddings,
        # HF always has token-type embeddings; a masklm model without them exports one all-zero row.
        "type_vocab_size": max(1, cfg.type_vocab_size),
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
    if labels:
        out["id2label"] = {str(i): name for i, name in enumerate(labels)}
        out["label2id"] = {name: i for i, name in enumerate(labels)}
    return out


def refuse_modern(cfg: ModelConfig) -> None:
    """Raise a UserError naming the settings Hugging Face's BERT cannot express."""
    options = cfg.modern_options()
    if options:
        raise UserError(
            f"this model uses {', '.join(options)}, which Hugging Face's BertForMaskedLM cannot express; "
            "only models trained with the BERT defaults export to BERT (ONNX export works for any model)"
        )


# ----------------------------------------------------------------------------------------------------------------
# Weights: masklm → HF


def to_hf_state_dict(model: nn.Module, vocab_size: int | None = None) -> dict[str, torch.Tensor]:
    """The model's weights under Hugging Face BERT names, vocabulary rows trimmed to `vocab_size`.

    `vocab_size` defaults to the model's own (unpadded) vocabulary size. The tied decoder weight is left out,
    as `save_pretrained` does; `cls.predictions.bias` carries the decoder bias.
    """
    cfg: ModelConfig = model.cfg
    refuse_modern(cfg)
    rows = vocab_size or cfg.vocab_size
    if rows > cfg.vocab_size:
        raise UserError(f"cannot export {rows} vocabulary rows from a model with {cfg.vocab_size}")
    out: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        value = value.detach().cpu()
        if key in (_WORD, _DECODER_BIAS):
            value = value[:rows]
        names = hf_keys(key)
        parts = value.chunk(len(names), dim=0) if len(names) > 1 else (value,)
        for name, part in zip(names, parts, strict=True):
            out[name] = part.clone().contiguous()
    if cfg.type_vocab_size == 0:
        word = out["bert.embeddings.word_embeddings.weight"]
        out["bert.embeddings.token_type_embeddings.weight"] = torch.zeros(
            1, cfg.hidden_size, dtype=word.dtype
        )
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
    return out


def _checkpoint_architecture(data: dict[str, Any], state: dict[str, torch.Tensor]) -> str | None:
    """Which masklm head the checkpoint carries (None: a bare encoder)."""
    for name in data.get("architectures") or []:
        if name in _HF_TO_ARCH:
            return _HF_TO_ARCH[name]
    if "qa_outputs.weight" in state:
        return "QuestionAnswering"
    if "classifier.weight" in state:
        return "SequenceClassification" if "bert.pooler.dense.weight" in state else "TokenClassification"
    if "cls.predictions.transform.dense.weight" in state:
        return "MaskedLM"
    return None


def _checkpoint_labels(data: dict[str, Any], state: dict[str, torch.Tensor]) -> list[str] | None:
    if "classifier.weight" not in state:
        return None
    n = state["classifier.weight"].shape[0]
    id2label = data.get("id2label") or {}
    try:
        return [str(id2label.get(str(i), id2label.get(i, f"LABEL_{i}"))) for i in range(n)]
    except AttributeError:
        return [f"LABEL_{i}" for i in range(n)]


def _pad_rows(t: torch.Tensor, rows: int) -> torch.Tensor:
    if t.shape[0] >= rows:
        return t[:rows]
    pad = torch.zeros((rows - t.shape[0], *t.shape[1:]), dtype=t.dtype)
    return torch.cat([t, pad], dim=0)


def from_hf_state_dict(
    model: nn.Module, state: dict[str, torch.Tensor], source: str, skip: tuple[str, ...] = ()
) -> list[str]:
    """Copy HF weights (any BERT layout) into `model`; returns the masklm parameters left as initialised.

    Encoder weights must all be there with the right shapes (else UserError). Head weights are taken when
    present with the right shapes and not under a module named in `skip`; the names of the others are returned.
    HF keys that map to nothing in any masklm BERT model are refused, so a checkpoint of another model type
    does not load silently.
    """
    cfg: ModelConfig = model.cfg
    state = _normalise_hf_keys(state, source)
    own = model.state_dict()
    known: set[str] = set()
    for arch in HF_CLASSES:  # every HF name any masklm BERT head could use
        known.update(n for k in _all_param_names(cfg, arch) for n in hf_keys(k))
    unknown = sorted(k for k in state if k not in known and not _IGNORED.fullmatch(k))
    if unknown:
        raise UserError(
            f"{source} holds weights that are not BERT's ({len(unknown)} unknown, e.g. {', '.join(unknown[:3])}); "
            "it is a checkpoint of another model type or a different layer count"
        )
    decoder_bias = state.get(_HF_DECODER_BIAS, state.get("cls.predictions.decoder.bias"))
    if decoder_bias is not None:
        state[_HF_DECODER_BIAS] = decoder_bias
    if cfg.type_vocab_size == 0:
        state.pop("bert.embeddings.token_type_embeddings.weight", None)

    new: dict[str, torch.Tensor] = {}
    fresh: list[str] = []
    for key, target in own.items():
        names = hf_keys(key)
        encoder = key.startswith("encoder.")
        missing = [n for n in names if n not in state]
        if missing:
            if encoder:
                raise UserError(
                    f"{source} lacks {missing[0]}; the checkpoint is incomplete or its config.json does not match it"
                )
            fresh.append(key)
            continue
        parts = [state[n] for n in names]
        value = torch.cat(parts, dim=0) if len(parts) > 1 else parts[0]
        if key in (_WORD, _DECODER_BIAS) and value.shape[0] <= target.shape[0]:
            value = _pad_rows(value, target.shape[0])
        if tuple(value.shape) != tuple(target.shape):
            if encoder:
                raise UserError(
                    f"{source}: {names[0]} has shape {tuple(parts[0].shape)}, which does not fit config.json "
                    f"(expected {tuple(target.shape) if len(names) == 1 else 'a third of ' + str(tuple(target.shape))})"
                )
            fresh.append(key)
            continue
        if not encoder and key.split(".")[0] in skip:
            fresh.append(key)
            continue
        new[key] = value.to(target.dtype)
    for key in fresh:
        new[key] = own[key]
    model.load_state_dict(new, strict=True)
    return fresh


def _all_param_names(cfg: ModelConfig, architecture: str) -> list[str]:
    """masklm parameter names of `architecture` for `cfg`, without building the model."""
    names = [f"encoder.embeddings.{m}.{p}" for m in ("word", "position", "token_type") for p in ("weight",)]
    names += ["encoder.embeddings.norm.weight", "encoder.embeddings.norm.bias"]
    for i in range(cfg.num_hidden_layers):
        for module in ("attn.qkv", *_LAYER):
            names += [f"encoder.layers.{i}.{module}.weight", f"encoder.layers.{i}.{module}.bias"]
    heads = {
        "MaskedLM": ["transform", "transform_norm"],
        "SequenceClassification": ["pooler", "classifier"],
        "TokenClassification": ["classifier"],
        "QuestionAnswering": ["qa"],
    }[architecture]
    names += [f"{m}.{p}" for m in heads for p in ("weight", "bias")]
    if architecture == "MaskedLM":
        names.append(_DECODER_BIAS)
    return names


# ----------------------------------------------------------------------------------------------------------------
# Files


def read_hf_weights(folder: Path) -> dict[str, torch.Tensor]:
    """model.safetensors (or its sharded index), else pytorch_model.bin loaded with weights_only=True."""
    single = folder / "model.safetensors"
    index = folder / "model.safetensors.index.json"
    legacy = folder / "pytorch_model.bin"
    if single.is_file():
        return _read_safetensors(single)
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError):
            raise UserError(f"{index} is not a valid safetensors index") from None
        state: dict[str, torch.Tensor] = {}
        for shard in shards:
            state.update(_read_safetensors(folder / shard))
        return state
    if legacy.is_file():
        try:
            state = torch.load(legacy, map_location="cpu", weights_only=True)
        except Exception as e:  # unpickling errors come in many types
            raise UserError(
                f"{legacy} could not be read safely ({type(e).__name__}); convert it to model.safetensors"
            ) from None
        if not isinstance(state, dict):
            raise UserError(f"{legacy} does not hold a state dict")
        return state
    raise UserError(
        f"{folder} has no model.safetensors (nor pytorch_model.bin); copy the checkpoint's weights there"
    )


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise UserError(f"{path} is missing; the checkpoint is incomplete")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        first = (str(e).splitlines() or [""])[0][:80]
        raise UserError(f"{path} is not a valid safetensors file ({first})") from None


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


def load_hf_model(
    folder: str | Path, architecture: str | None = None, labels: list[str] | None = None
) -> tuple[nn.Module, tokenizers.Tokenizer, ModelInfo]:
    """Load a Hugging Face BERT folder as a masklm model (the same call `masklm.model.io.load_model` makes).

    `architecture` picks the masklm head (default: the checkpoint's own, MaskedLM for a bare BertModel);
    heads the checkpoint lacks are initialised from scratch and said so in `ModelInfo.notes`.
    """
    folder = Path(folder)
    source = str(folder)
    data = read_config_json(folder)
    cfg = config_from_hf(data, str(folder / "config.json"))
    raw = read_hf_weights(folder)
    state = _normalise_hf_keys(raw, source)
    tokenizer = load_hf_tokenizer(folder)

    notes: list[str] = []
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

    saved = _checkpoint_architecture(data, state)
    saved_labels = _checkpoint_labels(data, state)
    want = architecture or saved or "MaskedLM"
    if want not in HF_CLASSES:
        raise UserError(f"unknown architecture {want!r}; expected one of {', '.join(HF_CLASSES)}")
    classifies = want in ("SequenceClassification", "TokenClassification")
    want_labels = list(labels) if labels is not None else saved_labels if want == saved else None
    # A classifier trained for other labels is not reused (as for masklm folders); the pooler is.
    relabel = classifies and want == saved and want_labels != saved_labels
    model = build_model(want, cfg, want_labels)
    fresh = from_hf_state_dict(model, state, source, skip=("classifier",) if relabel else ())
    if fresh:
        what = "MLM head" if want == "MaskedLM" else f"{want} head"
        if relabel:
            reason = f"labels {want_labels} requested, the checkpoint was trained for {saved_labels}"
        elif saved is None:
            reason = "the checkpoint is a bare encoder (BertModel) without head weights"
        elif saved != want:
            reason = f"the checkpoint is a {HF_CLASSES[saved]}"
        else:
            reason = "the checkpoint's head weights do not fit (different shapes)"
        modules = sorted({k.rsplit(".", 1)[0] for k in fresh})
        notes.append(f"{what} initialised from scratch: {reason} (new: {', '.join(modules)})")
    info = ModelInfo(
        architecture=want, labels=want_labels if classifies else None, source="huggingface", notes=notes
    )
    return model, tokenizer, info
