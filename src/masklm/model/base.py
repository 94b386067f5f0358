"""What every model module shares, and nothing that depends on a file format.

    Head, register_head, head_class   the head interface and the registry (architecture name → head class)
    build_model(architecture, cfg)    a freshly initialised model with that head
    ModelInfo, Checkpoint             what a model folder says about itself; a folder read but not yet loaded
    read_config_json, read_safetensors, save_safetensors

`masklm.model.io` (masklm folders, `load_model`) and `masklm.model.hf` (Hugging Face BERT folders) both build on this
module; it imports neither, so the two never import each other through it.

A head describes itself with class attributes and a few class methods (see `Head`): its Hugging Face class and
module names, its pipeline tag, its outputs, the inputs that exercise it. Loading, conversion and export ask the
head class, so a new head is one class decorated with `@register_head`, wherever it is defined.
"""

from __future__ import annotations

import errno
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import tokenizers
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from masklm.config import ModelConfig
from masklm.errors import UserError

DEFAULT_ARCHITECTURE = "MaskedLM"  # what a checkpoint without a head (a bare encoder) is loaded as


class Head(nn.Module):
    """A task head on masklm's encoder: `forward(input_ids, attention_mask, token_type_ids)` returns logits.

    Subclasses set the class attributes below and are registered with `@register_head`. Everything outside the
    head (loading, Hugging Face conversion, export, model cards) asks these and never names a particular head.
    """

    architecture: ClassVar[str]  # masklm's name, saved in config.json ("MaskedLM")
    hf_class: ClassVar[str]  # the Hugging Face class of the same model ("BertForMaskedLM")
    hf_auto_class: ClassVar[str]  # the transformers Auto class that loads it ("AutoModelForMaskedLM")
    pipeline_tag: ClassVar[str]  # Hugging Face pipeline tag for the model card ("fill-mask")
    # The head's own modules (or single parameters) → their Hugging Face names, e.g. {"classifier": "classifier"}.
    # The encoder (and its `encoder.` prefix) is mapped by masklm.model.hf for every head alike.
    hf_modules: ClassVar[dict[str, str]]
    hf_also_reads: ClassVar[tuple[str, ...]] = ()  # other HF classes whose checkpoints carry this head
    # The HF model type the head exports to ("bert", "electra"): config.json's model_type and the encoder's key
    # prefix ("bert.", "electra."). Only "bert" heads are read back from Hugging Face folders.
    hf_model_type: ClassVar[str] = "bert"
    # Prefixes of weights the HF class does not have (ELECTRA's generator, beside its discriminator)
    hf_skip: ClassVar[tuple[str, ...]] = ()
    # The module with one output per label ("classifier"); None for a head not sized by labels
    label_layer: ClassVar[str | None] = None
    # Parameters with one row per token besides the word embeddings (padded here, trimmed in HF)
    vocab_sized: ClassVar[tuple[str, ...]] = ()
    output_names: ClassVar[tuple[str, ...]] = ("logits",)  # HF output fields; the ONNX outputs
    # The axes of every input (the last one the tokens); all of them dynamic in ONNX. A head that takes other shapes
    # (multiple choice: ("batch", "choices", "sequence")) overrides example_inputs to match.
    input_axes: ClassVar[tuple[str, ...]] = ("batch", "sequence")
    head_title: ClassVar[str] = ""  # how notes name the head (default "<architecture> head")
    # The head's own settings (its constructor's keywords) with their defaults, e.g. {"pooling": "cls"}: saved
    # in config.json's "head" and passed back when the model is loaded; `head_options()`: a model's values.
    options: ClassVar[dict[str, Any]] = {}
    # The options that change which weights the head has (a mean-pooled classifier has no pooler): a
    # checkpoint whose values differ is another head, whose weights are not taken.
    weight_options: ClassVar[tuple[str, ...]] = ()

    cfg: ModelConfig

    @classmethod
    def create(
        cls,
        cfg: ModelConfig,
        labels: Sequence[str] | None = None,
        options: dict[str, Any] | None = None,
        task: dict[str, Any] | None = None,
    ) -> Head:
        """A freshly initialised model; heads sized by labels get one output per label (at least one).

        `options` are head settings (`options`); those this head does not take are a TypeError. `task` is what a
        model folder saved with the head (`ModelInfo.task`); a head whose shape depends on more than `cfg`
        (ELECTRA's generator width) reads it."""
        unknown = sorted(set(options or {}) - set(cls.options))
        if unknown:
            raise TypeError(f"the {cls.architecture} head takes no option {', '.join(unknown)}")
        kwargs = {**cls.options, **(options or {})}
        if cls.label_layer is not None:
            return cls(cfg, num_labels=len(labels or []) or 1, **kwargs)
        return cls(cfg, **kwargs)

    def head_options(self) -> dict[str, Any]:
        """This model's values of the head's `options` (what config.json's "head" records)."""
        return {name: getattr(self, name) for name in self.options}

    def hf_obstacle(self) -> str | None:
        """Why this model cannot be written as its `hf_class` (None: it can); ONNX has no such limit."""
        return None

    def hf_config(self) -> dict[str, Any]:
        """Entries of the Hugging Face config.json that this head's options set (e.g. classifier_dropout)."""
        return {}

    @classmethod
    def view(cls, checkpoint: Checkpoint, architecture: str) -> Checkpoint | None:
        """A checkpoint of this head seen as a checkpoint of `architecture`, for a head that carries another model
        inside (ELECTRA's generator is a MaskedLM); None: load by the usual rule (keep the encoder)."""
        return None

    @classmethod
    def title(cls) -> str:
        return cls.head_title or f"{cls.architecture} head"

    @classmethod
    def example_inputs(
        cls, cfg: ModelConfig, batch: int = 3, length: int = 13, seed: int = 0
    ) -> dict[str, torch.Tensor]:
        """Inputs that exercise the model (export checks, ONNX tracing): random ids of shape `input_axes`.

        Rows 1.. end early (padding) and, when the model has token types, the second half is type 1. Heads with
        other input shapes override this (a multiple-choice head reshapes rows into (batch, choices, sequence)).
        """
        length = min(length, cfg.max_positions or length)
        g = torch.Generator().manual_seed(seed)
        ids = torch.randint(0, cfg.vocab_size, (batch, length), generator=g)
        mask = torch.ones_like(ids)
        for row in range(1, batch):
            mask[row, max(1, length - 3 * row) :] = 0
        types = torch.zeros_like(ids)
        if cfg.type_vocab_size > 1:
            types[:, length // 2 :] = 1
        ids = ids.masked_fill(mask == 0, cfg.pad_token_id)
        return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}

    @classmethod
    def split_logits(cls, logits: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The logits as the outputs named by `output_names`: one is the logits; several split the last axis."""
        if len(cls.output_names) == 1:
            return (logits,)
        return tuple(logits[..., i] for i in range(len(cls.output_names)))

    @classmethod
    def join_outputs(cls, outputs: Sequence[torch.Tensor]) -> torch.Tensor:
        """The inverse of `split_logits`: HF or ONNX outputs (in `output_names` order) → masklm's logits."""
        if len(cls.output_names) == 1:
            return outputs[0]
        return torch.stack(list(outputs), dim=-1)

    @classmethod
    def hf_usage(cls) -> list[str]:
        """Lines of Python for the model card that load the exported folder in transformers."""
        return [
            "```python",
            f"from transformers import AutoTokenizer, {cls.hf_auto_class}",
            'tok = AutoTokenizer.from_pretrained("PATH/TO/THIS/FOLDER")',
            f'model = {cls.hf_auto_class}.from_pretrained("PATH/TO/THIS/FOLDER")',
            "```",
        ]

    @classmethod
    def onnx_usage(cls) -> list[str]:
        """Lines of Python for the model card that run the exported model.onnx in ONNX Runtime."""
        return [
            "```python",
            "import numpy as np, onnxruntime, tokenizers",
            'tok = tokenizers.Tokenizer.from_file("tokenizer.json")',
            'session = onnxruntime.InferenceSession("model.onnx")',
            'enc = tok.encode("the capital of france is [MASK] .")',
            'feed = {"input_ids": [enc.ids], "attention_mask": [enc.attention_mask], "token_type_ids": [enc.type_ids]}',
            "outputs = session.run(None, {k: np.array(v, dtype=np.int64) for k, v in feed.items()})",
            "```",
        ]


_HEADS: dict[str, type[Head]] = {}
HeadType = TypeVar("HeadType", bound=type[Head])
_REQUIRED = ("architecture", "hf_class", "hf_auto_class", "pipeline_tag", "hf_modules")


def register_head(cls: HeadType) -> HeadType:
    """Class decorator: make `cls` loadable, convertible and exportable under `cls.architecture`."""
    missing = [name for name in _REQUIRED if not hasattr(cls, name)]
    if missing:
        raise TypeError(f"head {cls.__name__} lacks {', '.join(missing)}")
    if _HEADS.get(cls.architecture, cls) is not cls:
        raise TypeError(
            f"architecture {cls.architecture!r} is already registered by {_HEADS[cls.architecture]}"
        )
    _HEADS[cls.architecture] = cls
    return cls


def registered_heads() -> tuple[type[Head], ...]:
    """Every registered head class, in registration order (the built-in ones first)."""
    return tuple(_HEADS.values())


def head_class(architecture: str) -> type[Head]:
    if architecture not in _HEADS:
        from masklm.tasks import all_tasks

        all_tasks()  # a task module may define a head (multiple choice's): imported, it is registered
    if architecture not in _HEADS:
        raise UserError(f"unknown architecture {architecture!r}; expected one of {', '.join(_HEADS)}")
    return _HEADS[architecture]


def build_model(
    architecture: str,
    cfg: ModelConfig,
    labels: Sequence[str] | None = None,
    options: dict[str, Any] | None = None,
    task: dict[str, Any] | None = None,
) -> Head:
    """A freshly initialised model with the head registered as `architecture` (`options`, `task`: see
    `Head.create`)."""
    return head_class(architecture).create(cfg, labels, options, task)


@dataclass
class ModelInfo:
    """What a model folder says about itself besides the weights."""

    architecture: str = DEFAULT_ARCHITECTURE
    labels: list[str] | None = None  # label names of a head sized by labels, in id order
    task: dict[str, Any] = field(default_factory=dict)  # task settings saved with a fine-tuned model
    head: dict[str, Any] = field(default_factory=dict)  # the head's options (Head.options), as loaded
    source: str = "masklm"  # "masklm" or "huggingface"
    notes: list[str] = field(default_factory=list)  # things the user should know (e.g. a fresh head)
    fresh_head: str | None = None  # the note, when the head was initialised from scratch on loading


@dataclass
class Checkpoint:
    """A model folder read but not yet loaded: weights under masklm's names and what the folder says they are."""

    cfg: ModelConfig
    state: dict[str, torch.Tensor]
    tokenizer: tokenizers.Tokenizer
    folder: Path  # where it was read from
    architecture: str | None  # the head the weights carry; None for a bare encoder
    labels: list[str] | None
    described: str  # how a note names what the checkpoint is: "a MaskedLM", "a BertForSequenceClassification"
    # True for masklm folders: the weights must be exactly those of the head the folder names (anything else is
    # damage). Hugging Face checkpoints may lack head weights or carry others; those start fresh or are dropped.
    complete: bool
    source: str = "masklm"
    task: dict[str, Any] = field(default_factory=dict)
    head: dict[str, Any] = field(default_factory=dict)  # the head's options as saved (config.json's "head")
    notes: list[str] = field(default_factory=list)


def read_config_json(folder: Path) -> dict[str, Any]:
    try:
        data = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UserError(f"{folder / 'config.json'} is not valid JSON; the model folder is damaged") from None
    if not isinstance(data, dict):
        raise UserError(f"{folder / 'config.json'} is not a model config")
    return data


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file; a missing or damaged file is a UserError."""
    if not path.is_file():
        raise UserError(f"{path} is missing; the model folder is incomplete")
    if not os.access(path, os.R_OK):  # (safetensors would say "No such file or directory": a damaged folder)
        raise UserError(f"cannot read {path} (permission denied): give this user read access (chmod / chown)")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        first = (str(e).splitlines() or [""])[0][:80]
        raise UserError(
            f"{path} is not a valid safetensors file ({first}); the model folder is damaged: copy the model again"
        ) from None


def save_safetensors(
    state: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None
) -> None:
    """safetensors' save_file, whose I/O failures (disk full, permissions) are raised as OSError like any write's,
    and whose file gets the permissions any other file gets (the process's umask applied to 0o666).

    safetensors reports failures as SafetensorError("... (os error 28)"), which no `except OSError` would catch,
    and creates its file readable by its owner alone (0o600): a shared model or export others could not read.
    """
    try:
        save_file(state, str(path), metadata=metadata)
    except SafetensorError as e:
        found = re.search(r"os error (\d+)", str(e))
        code = int(found.group(1)) if found else errno.EIO
        raise OSError(code, os.strerror(code), str(path)) from None
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)
