"""Model folders: save and load a model with its config and tokenizer.

A masklm model folder holds
    config.json        {"format": "masklm", "architecture": ..., "model": ModelConfig fields, "labels": ..., ...}
    model.safetensors  the weights under masklm's own parameter names
    tokenizer.json     the tokenizer the model was trained with

`load_model` also takes a run folder (it uses RUN/model) and a Hugging Face BERT folder (config.json with "model_type": "bert"), converted by `masklm.model.hf`.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tokenizers
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from masklm.config import ModelConfig
from masklm.data.tokenizer import tokenizer_hash
from masklm.errors import UserError
from masklm.model.heads import MaskedLM, QuestionAnswering, SequenceClassification, TokenClassification
from masklm.utils import atomic_write_text, fsync_dir, fsync_file

ARCHITECTURES = {
    "MaskedLM": MaskedLM,
    "SequenceClassification": SequenceClassification,
    "TokenClassification": TokenClassification,
    "QuestionAnswering": QuestionAnswering,
}


@dataclass
class ModelInfo:
    """What a model folder says about itself besides the weights."""

    architecture: str = "MaskedLM"
    labels: list[str] | None = None  # classification / token classification label names, in id order
    task: dict[str, Any] = field(default_factory=dict)  # task settings saved with a fine-tuned model
    source: str = "masklm"  # "masklm" or "huggingface"
    notes: list[str] = field(default_factory=list)  # things the user should know (e.g. a fresh head)


def build_model(architecture: str, cfg: ModelConfig, labels: list[str] | None = None) -> nn.Module:
    if architecture not in ARCHITECTURES:
        raise UserError(f"unknown architecture {architecture!r}; expected one of {', '.join(ARCHITECTURES)}")
    cls = ARCHITECTURES[architecture]
    if cls in (SequenceClassification, TokenClassification):
        return cls(cfg, num_labels=len(labels or []) or 1)
    return cls(cfg)


def save_model(
    model: nn.Module,
    folder: str | Path,
    tokenizer: tokenizers.Tokenizer,
    info: ModelInfo | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write config.json, model.safetensors and tokenizer.json into `folder` (created), each atomically."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    info = info or ModelInfo(architecture=type(model).__name__)
    cfg: ModelConfig = model.cfg
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    tmp = folder / ".model.safetensors.tmp"
    try:
        save_safetensors(state, tmp, metadata={"format": "pt", "masklm": "1"})
        fsync_file(tmp)
        tmp.replace(folder / "model.safetensors")
    finally:
        tmp.unlink(missing_ok=True)
    atomic_write_text(folder / "tokenizer.json", tokenizer.to_str())
    config = {
        "format": "masklm",
        "architecture": info.architecture,
        "model": dataclasses.asdict(cfg),
        "labels": info.labels,
        "task": info.task,
        "tokenizer_hash": tokenizer_hash(tokenizer),
        **(extra or {}),
    }
    atomic_write_text(folder / "config.json", json.dumps(config, indent=2) + "\n")
    fsync_dir(folder)
    return folder


def save_safetensors(
    state: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None
) -> None:
    """safetensors' save_file, whose I/O failures (disk full, permissions) are raised as OSError like any write's.

    safetensors reports them as SafetensorError("... (os error 28)"), which no `except OSError` would catch.
    """
    try:
        save_file(state, str(path), metadata=metadata)
    except SafetensorError as e:
        found = re.search(r"os error (\d+)", str(e))
        code = int(found.group(1)) if found else errno.EIO
        raise OSError(code, os.strerror(code), str(path)) from None


def resolve_model_dir(path: str | Path) -> Path:
    """A model folder from a model folder or a run folder."""
    p = Path(path)
    if not p.exists():
        raise UserError(
            f"model {p} does not exist; pass a model folder, a run folder or a Hugging Face BERT folder"
        )
    if p.is_file():
        raise UserError(f"model {p} is a file; pass the folder that holds config.json and the weights")
    if (p / "config.json").is_file():
        return p
    if (p / "model" / "config.json").is_file():
        return p / "model"
    raise UserError(
        f"{p} holds no config.json (nor model/config.json); pass a model folder, a finished run folder "
        "or a Hugging Face BERT folder"
    )


def read_config_json(folder: Path) -> dict[str, Any]:
    try:
        data = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UserError(f"{folder / 'config.json'} is not valid JSON; the model folder is damaged") from None
    if not isinstance(data, dict):
        raise UserError(f"{folder / 'config.json'} is not a model config")
    return data


def load_model(
    path: str | Path, architecture: str | None = None, labels: list[str] | None = None
) -> tuple[nn.Module, tokenizers.Tokenizer, ModelInfo]:
    """Load a masklm or Hugging Face model folder (or a run folder).

    `architecture` asks for a particular head: loading a MaskedLM for classification keeps the encoder and
    initialises the new head (and says so in info.notes). `labels` sizes a new classification head.
    """
    folder = resolve_model_dir(path)
    data = read_config_json(folder)
    if data.get("format") != "masklm":
        if data.get("model_type") == "bert" or "BertForMaskedLM" in str(data.get("architectures")):
            from masklm.model.hf import load_hf_model

            return load_hf_model(folder, architecture=architecture, labels=labels)
        raise UserError(
            f"{folder / 'config.json'} is neither a masklm model nor a Hugging Face BERT config "
            f"(model_type={data.get('model_type')!r})"
        )
    try:
        cfg = ModelConfig(**data["model"])
    except (KeyError, TypeError) as e:
        raise UserError(f"{folder / 'config.json'} has an invalid model section ({e})") from None
    saved_arch = data.get("architecture", "MaskedLM")
    info = ModelInfo(architecture=saved_arch, labels=data.get("labels"), task=data.get("task") or {})
    tokenizer = _load_tokenizer_file(folder / "tokenizer.json")
    saved_hash = data.get("tokenizer_hash")
    if tokenizer.get_vocab_size() != cfg.vocab_size or (
        saved_hash and saved_hash != tokenizer_hash(tokenizer)
    ):
        raise UserError(
            f"{folder}: tokenizer.json ({tokenizer.get_vocab_size()} tokens) is not the tokenizer the model was "
            f"saved with ({cfg.vocab_size} tokens); the folder mixes files from different models: put back the "
            "model's own tokenizer.json"
        )
    state = load_weights(folder / "model.safetensors")
    want = architecture or saved_arch
    want_labels = labels if labels is not None else info.labels
    model = build_model(want, cfg, want_labels)
    if want == saved_arch and (labels is None or labels == info.labels):
        load_state(model, state, str(folder))
    else:
        # A different head: keep the encoder (and BERT's pooler when both heads have one), initialise the rest.
        own = model.state_dict()
        keep = {
            k: v
            for k, v in state.items()
            if k.startswith("encoder.") or (k.startswith("pooler.") and k in own and own[k].shape == v.shape)
        }
        load_state(model, keep, str(folder), strict_missing_prefix="encoder.")
        info.notes.append(f"{want} head initialised from scratch (the checkpoint is a {saved_arch})")
        info.architecture = want
        info.labels = want_labels
    return model, tokenizer, info


def _load_tokenizer_file(path: Path) -> tokenizers.Tokenizer:
    if not path.is_file():
        raise UserError(f"{path} is missing; a model folder needs the tokenizer it was trained with")
    try:
        tok = tokenizers.Tokenizer.from_file(str(path))
    except Exception:
        raise UserError(f"{path} is not a valid tokenizer.json") from None
    tok.no_padding()
    tok.no_truncation()
    return tok


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise UserError(f"{path} is missing; the model folder is incomplete")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(
            f"{path} is not a valid safetensors file ({str(e).splitlines()[0][:80]}); the model folder is damaged: "
            "copy the model again"
        ) from None


def load_state(
    model: nn.Module, state: dict[str, torch.Tensor], source: str, strict_missing_prefix: str | None = None
) -> None:
    """Copy `state` into `model`, refusing mismatched names or shapes with one clear line."""
    own = model.state_dict()
    unexpected = sorted(set(state) - set(own))
    missing = sorted(
        k
        for k in set(own) - set(state)
        if strict_missing_prefix is None or k.startswith(strict_missing_prefix)
    )
    bad_shape = [k for k in state if k in own and tuple(state[k].shape) != tuple(own[k].shape)]
    if unexpected or missing or bad_shape:
        detail = (
            f"shape of {bad_shape[0]} is {tuple(state[bad_shape[0]].shape)}, expected {tuple(own[bad_shape[0]].shape)}"
            if bad_shape
            else f"missing {missing[:3]}"
            if missing
            else f"unexpected {unexpected[:3]}"
        )
        raise UserError(
            f"weights in {source} do not fit this model ({detail}); it was saved by a different model"
        )
    model.load_state_dict(state, strict=strict_missing_prefix is None)
