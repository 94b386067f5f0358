"""Model folders: save a model with its config and tokenizer; load any model folder with the head you ask for.

A masklm model folder holds
    config.json        {"format": "masklm", "architecture": ..., "model": ModelConfig fields, "labels": ...,
                        "head": the head's options (pooling, classifier_dropout; heads that have any), ...}
    model.safetensors  the weights under masklm's own parameter names
    tokenizer.json     the tokenizer the model was trained with

`load_model` also takes a run folder (it uses RUN/model) and a Hugging Face BERT folder (config.json with
"model_type": "bert"), read by `masklm.model.hf`. Both kinds of folder become a `Checkpoint` first, and one rule
turns a checkpoint into the model asked for (`_take_weights`).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import tokenizers
import torch
from torch import nn

from masklm.config import ModelConfig, model_from_dict
from masklm.data.tokenizer import tokenizer_hash
from masklm.errors import UserError
from masklm.model.base import (
    DEFAULT_ARCHITECTURE,
    Checkpoint,
    ModelInfo,
    build_model,
    head_class,
    read_config_json,
    read_safetensors,
    registered_heads,
    save_safetensors,
)
from masklm.model.hf import is_hf_config, read_hf_checkpoint
from masklm.utils import atomic_write_text, finite_json, fsync_dir, fsync_file

__all__ = ["ModelInfo", "load_model", "resolve_model_dir", "save_model", "save_safetensors"]


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
    info = info or ModelInfo(architecture=type(model).architecture)
    cfg: ModelConfig = model.cfg
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    tmp = folder / ".model.safetensors.tmp"
    try:
        # one metadata key: safetensors writes a map's keys in no fixed order, and the same model must give the
        # same bytes (a resumed run's model.safetensors equals an uninterrupted one's)
        save_safetensors(state, tmp, metadata={"format": "pt"})
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
        **({"head": model.head_options()} if getattr(model, "options", None) else {}),
        **(extra or {}),
    }
    atomic_write_text(folder / "config.json", json.dumps(finite_json(config), indent=2) + "\n")
    fsync_dir(folder)
    return folder


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
    if (p / "config.yaml").is_file() and (p / "checkpoints").is_dir():
        raise UserError(
            f"{p} is a run that stopped before its end: it has checkpoints but no model/ yet; finish it with "
            "the command that started it plus --resume (a smaller --max-steps or --max-minutes ends it sooner)"
        )
    raise UserError(
        f"{p} holds no config.json (nor model/config.json); pass a model folder, a finished run folder "
        "or a Hugging Face BERT folder"
    )


def model_hidden_size(path: str | Path) -> int:
    """The encoder's hidden size, read from the folder's config.json without loading the weights.

    A config.json that does not give it plainly (neither a masklm nor a Hugging Face BERT one) is loaded as
    `load_model` would, which raises the one-line error that folder deserves."""
    data = read_config_json(resolve_model_dir(path))
    section = data.get("model") if data.get("format") == "masklm" else data if is_hf_config(data) else None
    size = section.get("hidden_size") if isinstance(section, dict) else None
    if isinstance(size, int) and not isinstance(size, bool) and size > 0:
        return size
    return load_model(path)[0].cfg.hidden_size


def load_model(
    path: str | Path,
    architecture: str | None = None,
    labels: Sequence[str] | None = None,
    head: dict[str, Any] | None = None,
) -> tuple[nn.Module, tokenizers.Tokenizer, ModelInfo]:
    """Load a masklm or Hugging Face model folder (or a run folder).

    `architecture` asks for a particular head (default: the checkpoint's own, MaskedLM for a bare encoder);
    `labels` sizes a head that has one output per label; `head` sets the head's options (`Head.options`;
    default: the checkpoint's, when it has this head). Asking for another head (or other labels, or options
    that change the head's weights) than the checkpoint's keeps the encoder (and BERT's pooler, when both
    heads have one of the same shape), initialises the rest, and says so in `info.notes`. The model comes back
    in eval mode (no dropout), on the CPU.
    """
    if isinstance(labels, str):  # (it would be read as one label per character)
        raise UserError(f"labels must be a list of label names, not the string {labels!r}")
    folder = resolve_model_dir(path)
    data = read_config_json(folder)
    if data.get("format") == "masklm":
        checkpoint = _read_masklm_checkpoint(folder, data)
    elif is_hf_config(data):
        checkpoint = read_hf_checkpoint(folder)
    elif (folder / "model.onnx").is_file():
        raise UserError(
            f"{folder} is an ONNX export (model.onnx), which ONNX Runtime runs; give masklm the model it was "
            "exported from, or its --format hf export"
        )
    else:
        raise UserError(
            f"{folder / 'config.json'} is neither a masklm model nor a Hugging Face BERT config "
            f"(model_type={data.get('model_type')!r}); masklm reads its own models and BERT checkpoints "
            "(model_type 'bert')"
        )
    _refuse_nonfinite(checkpoint.state, folder)
    model, tokenizer, info = _model_from_checkpoint(checkpoint, architecture, labels, head)
    # in eval mode, as transformers' from_pretrained gives it: training turns dropout on itself
    return model.eval(), tokenizer, info


def _refuse_nonfinite(state: dict[str, torch.Tensor], folder: Path) -> None:
    """A UserError when a weight holds NaN or an infinity: every answer of the model would be NaN (fill-mask
    printed "(nan)" scores, an export failed its check as if the exporter were at fault)."""
    for name, value in state.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise UserError(
                f"{folder}: the weights hold NaN or infinite values ({name}); the model is damaged (a run that "
                "diverged?): use an earlier checkpoint, or train it again"
            )


def _read_masklm_checkpoint(folder: Path, data: dict[str, Any]) -> Checkpoint:
    where = folder / "config.json"
    try:
        cfg = model_from_dict(data.get("model"), str(where))
    except UserError as e:
        raise UserError(
            f"{where} has an invalid model section ({e}); the file was edited or comes from other code: put back "
            "the model's own config.json"
        ) from None
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
    architecture = data.get("architecture", DEFAULT_ARCHITECTURE)
    return Checkpoint(
        cfg=cfg,
        state=read_safetensors(folder / "model.safetensors"),
        tokenizer=tokenizer,
        folder=folder,
        architecture=architecture,
        labels=data.get("labels"),
        described=f"a {architecture}",
        complete=True,
        task=data.get("task") or {},
        head=data.get("head") or {},
    )


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


def _model_from_checkpoint(
    ckpt: Checkpoint,
    architecture: str | None,
    labels: Sequence[str] | None,
    options: dict[str, Any] | None = None,
) -> tuple[nn.Module, tokenizers.Tokenizer, ModelInfo]:
    """Build the model asked for and fill it from the checkpoint by the one rule (`_take_weights`).

    A head that carries another model (ELECTRA's generator) may first present the checkpoint as one of that
    model (`Head.view`): an ELECTRA run asked for a MaskedLM gives its generator."""
    want = architecture or ckpt.architecture or DEFAULT_ARCHITECTURE
    head = head_class(want)
    own = {h.architecture: h for h in registered_heads()}.get(ckpt.architecture or "")
    seen = own.view(ckpt, want) if own is not None and want != ckpt.architecture else None
    ckpt = seen or ckpt
    sized = head.label_layer is not None
    if labels is not None:
        want_labels: list[str] | None = list(labels)
    else:
        want_labels = ckpt.labels if want == ckpt.architecture else None
    unknown = [k for k in options or {} if k not in head.options]
    if unknown:
        takes = ", ".join(head.options) or "none"
        raise UserError(f"the {want} head has no option {unknown[0]!r} (its options: {takes})")
    saved = {k: v for k, v in ckpt.head.items() if k in head.options} if want == ckpt.architecture else {}
    want_options = {**head.options, **saved, **(options or {})}
    had_options = {**head.options, **saved}
    other_weights = [k for k in head.weight_options if want_options[k] != had_options[k]]
    same_labels = not sized or want_labels == ckpt.labels
    same_head = want == ckpt.architecture and same_labels and not other_weights
    saved_task = ckpt.task if want == ckpt.architecture else None
    try:
        model = build_model(want, ckpt.cfg, want_labels, want_options, saved_task)
    except ValueError as e:  # a head option's value it cannot take (pooling "max")
        raise UserError(f"the {want} head: {e}") from None
    fresh = _take_weights(model, ckpt, same_head)
    notes = list(ckpt.notes)
    fresh_head = None
    if fresh:
        if want == ckpt.architecture and not same_labels:
            reason = f"labels {want_labels} requested, the checkpoint was trained for {ckpt.labels}"
        elif want == ckpt.architecture and other_weights:
            reason = ", ".join(
                f"{k} {want_options[k]} requested, the checkpoint has {had_options[k]}" for k in other_weights
            )
        elif not same_head:
            reason = f"the checkpoint is {ckpt.described}"
        else:
            reason = "the checkpoint's head weights are missing or do not fit (different shapes)"
        modules = sorted({k.rsplit(".", 1)[0] for k in fresh})
        fresh_head = f"{head.title()} initialised from scratch: {reason} (new: {', '.join(modules)})"
        notes.append(fresh_head)
    info = ModelInfo(
        architecture=want,
        labels=want_labels,  # a head not sized by labels may still carry its task's (prompt-classification)
        task=ckpt.task,
        head=model.head_options(),
        source=ckpt.source,
        notes=notes,
        fresh_head=fresh_head,
    )
    return model, ckpt.tokenizer, info


def _take_weights(model: nn.Module, ckpt: Checkpoint, same_head: bool) -> list[str]:
    """Fill `model` from the checkpoint; returns the names of the weights left as initialised (a fresh head).

    The rule: the encoder always comes from the checkpoint and must fit. With the same head (and labels) every
    other weight the model has is taken too; with another head only BERT's pooler is, when both heads have one of
    the same shape. A checkpoint marked complete (a masklm folder) must hold exactly the weights of its head;
    anything missing, left over or of another shape means the folder does not belong to this model.
    """
    own = model.state_dict()

    def strict(key: str) -> bool:  # a weight whose absence or misfit is an error, not a fresh start
        return key.startswith("encoder.") or (same_head and ckpt.complete)

    def taken(key: str) -> bool:
        return key.startswith("encoder.") or same_head or key.startswith("pooler.")

    state = ckpt.state
    bad_shape = [k for k in state if k in own and state[k].shape != own[k].shape and strict(k)]
    missing = sorted(k for k in own if k not in state and strict(k))
    unexpected = sorted(k for k in state if k not in own and strict(k))
    if bad_shape or missing or unexpected:
        detail = (
            f"shape of {bad_shape[0]} is {tuple(state[bad_shape[0]].shape)}, expected {tuple(own[bad_shape[0]].shape)}"
            if bad_shape
            else f"missing {missing[:3]}"
            if missing
            else f"unexpected {unexpected[:3]}"
        )
        raise UserError(
            f"weights in {ckpt.folder} do not fit this model ({detail}); it was saved by a different model"
        )
    take = {k: v for k, v in state.items() if k in own and taken(k) and v.shape == own[k].shape}
    own.update({k: v.to(own[k].dtype) for k, v in take.items()})
    model.load_state_dict(own, strict=True)
    return sorted(k for k in own if k not in take)
