"""The models a server answers with: loading them, and turning one request into a `Work` for the batcher.

    served = load_served("runs/demo")                  # or "NAME=PATH"; the name is the folder's otherwise
    work = served.fill_mask_work(["a [MASK] day ."], top_k=5, limits=ServeOptions())
    outputs = served.forward(work.keys[0], work.features)   # what the batcher runs, on its thread
    answer = work.finish(outputs)

Three kinds of model folder are served:
    fill-mask           a pretraining run or a masked-LM folder (FillMask: bf16 weights where the CPU has bf16)
    a task's name       a fine-tuned model (masklm.finetune.load_finetuned); the task object reads each input
                        (`Task.request_example`), encodes it as `masklm predict` does and answers
                        (`Task.answers`); bf16 weights where it trained in bf16 (TaskModel)
    feature-extraction  an encoder without a trained head (a bare Hugging Face BertModel folder): embed only
Every kind answers /v1/embed: the mean of the encoder's last hidden states over the real tokens.
Nothing here branches on a task's name: the task object is asked.
"""

from __future__ import annotations

from collections.abc import Hashable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from masklm.config import NO_LIMIT
from masklm.errors import UserError
from masklm.finetune import FinetunedModel, load_finetuned
from masklm.infer.fill_mask import FillMask, resolve_dtype
from masklm.model.heads import mean_pool
from masklm.model.io import load_model
from masklm.serve.batcher import Work
from masklm.serve.limits import ServeOptions
from masklm.tasks import all_tasks, task_of_architecture
from masklm.tasks.batching import Feature, pad_batch
from masklm.train.loop import resolve_precision

FILL, EMBED, PREDICT = "fill-mask", "embed", "predict"


class RequestError(Exception):
    """A request the server refuses with `status` (4xx) and a one-line `message`."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def parse_spec(spec: str) -> tuple[str, Path]:
    """(name, folder) of a MODEL argument: "NAME=PATH", or a path named after its folder (a run folder's
    model/ subfolder is named after the run)."""
    name, sep, path = spec.partition("=")
    if not sep or Path(spec).exists() or not name or "/" in name:
        name, path = "", spec
    folder = Path(path)
    if not name:
        resolved = folder.resolve()
        name = resolved.parent.name if resolved.name == "model" else resolved.name
    return name, folder


def _check_sizes(items: list[Any], limits: ServeOptions) -> None:
    """413 for more inputs or longer inputs than the limits allow."""
    if len(items) > limits.max_inputs:
        raise RequestError(
            413,
            f"{len(items)} inputs, above the server's limit of {limits.max_inputs}; send fewer per request",
        )
    for i, item in enumerate(items):
        size = _chars(item)
        if size > limits.max_chars:
            raise RequestError(
                413, f"inputs[{i}] is {size} characters long, above the server's limit of {limits.max_chars}"
            )


def _chars(item: Any) -> int:
    """The characters of all the strings in a JSON value."""
    if isinstance(item, str):
        return len(item)
    if isinstance(item, dict):
        return sum(_chars(v) for v in item.values())
    if isinstance(item, list):
        return sum(_chars(v) for v in item)
    return 0


def _each(items: list[Any], read: Any) -> list[Any]:
    """read(item) for every input, a UserError naming the input that is wrong."""
    out = []
    for i, item in enumerate(items):
        try:
            out.append(read(item))
        except UserError as e:
            raise UserError(f"inputs[{i}]: {e}") from None
    return out


class ServedModel:
    """One served model: its name, kind and labels, the encoder every kind can embed with, and the batcher's
    forward function. Subclasses add the requests of their kind."""

    kind: str
    labels: list[str] | None = None

    def __init__(self, name: str, path: Path, model: nn.Module, tokenizer: Any, pad_id: int) -> None:
        self.name, self.path, self.model, self.tokenizer, self.pad_id = name, path, model, tokenizer, pad_id
        cfg = model.cfg
        self.max_len = cfg.max_positions or NO_LIMIT

    def info(self) -> dict[str, Any]:
        """What /v1/models says about the model."""
        return {"name": self.name, "task": self.kind, "labels": self.labels, "path": str(self.path)}

    def embed_work(self, texts: list[str], normalize: bool, limits: ServeOptions) -> Work:
        """One vector per text: the mean of the last hidden states over its tokens (unit length with normalize)."""
        _check_sizes(texts, limits)
        features = []
        for i, text in enumerate(texts):
            if not text.strip():
                raise UserError(f"inputs[{i}]: the text is empty; give some text")
            enc = self.tokenizer.encode(text)
            # a text of no token (a zero-width space): the vector would be [CLS] and [SEP]'s alone
            if all(enc.special_tokens_mask):
                raise UserError(
                    f"inputs[{i}]: the text has no token once tokenized ({text!r}); give some text"
                )
            if len(enc.ids) > self.max_len:
                raise UserError(
                    f"inputs[{i}]: the text is {len(enc.ids)} tokens long, above the model's limit of "
                    f"{self.max_len}; shorten it"
                )
            features.append({"input_ids": enc.ids, "token_type_ids": enc.type_ids})

        def finish(outputs: list[torch.Tensor]) -> list[list[float]]:
            return [(F.normalize(v, dim=-1) if normalize else v).tolist() for v in outputs]

        return Work(features, [(EMBED,)] * len(features), [len(f["input_ids"]) for f in features], finish)

    def fill_mask_work(self, texts: list[str], top_k: int, limits: ServeOptions) -> Work:
        raise RequestError(
            400,
            f"model {self.name!r} is a {self.kind} model; fill-mask needs a masked-LM (a pretraining run)",
        )

    def predict_work(self, items: list[Any], limits: ServeOptions) -> Work:
        raise RequestError(
            400, f"model {self.name!r} is a {self.kind} model; /v1/predict needs a fine-tuned model"
        )

    @torch.inference_mode()
    def forward(self, key: Hashable, features: list[Feature]) -> list[Any]:
        """One output per feature of one batch (all of one key), on the batcher's thread."""
        return self._forward(key, features)

    def _forward(self, key: Hashable, features: list[Feature]) -> list[Any]:
        batch = pad_batch(features, self.pad_id)
        h = self.model.encoder(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        return list(mean_pool(h.float(), batch["attention_mask"]))  # (B, H) → B vectors


class EncoderModel(ServedModel):
    """A pretraining run or masked-LM folder (fill-mask and embed), or a bare encoder (embed only)."""

    def __init__(
        self, name: str, path: Path, fill: FillMask | None, model: nn.Module, tokenizer: Any
    ) -> None:
        pad = tokenizer.token_to_id("[PAD]")
        super().__init__(
            name, path, model, tokenizer, int(pad if pad is not None else model.cfg.pad_token_id)
        )
        self.fill = fill
        self.kind = FILL if fill is not None else "feature-extraction"

    def fill_mask_work(self, texts: list[str], top_k: int, limits: ServeOptions) -> Work:
        fill = self.fill
        if fill is None:
            return super().fill_mask_work(texts, top_k, limits)
        _check_sizes(texts, limits)
        features = _each(texts, fill.encode)
        masks = [f["input_ids"].count(fill.mask_id) for f in features]
        for i, count in enumerate(masks):
            if count > limits.max_masks:
                raise RequestError(
                    400,
                    f"inputs[{i}] has {count} [MASK] tokens, above the server's limit of {limits.max_masks}",
                )

        def finish(outputs: list[torch.Tensor]) -> list[list[list[dict]]]:
            ranked = [fill.candidates(logits, top_k) for logits in outputs]
            return [[[{"token": c["token"], "score": c["score"]} for c in m] for m in r] for r in ranked]

        return Work(features, [(FILL,)] * len(features), [len(f["input_ids"]) for f in features], finish)

    def _forward(self, key: Hashable, features: list[Feature]) -> list[Any]:
        if key != (FILL,) or self.fill is None:
            return super()._forward(key, features)
        batch = pad_batch(features, self.pad_id)
        ids = batch["input_ids"]
        logits = self.fill.masked_logits(ids, batch["attention_mask"], batch["token_type_ids"])  # (M, V)
        counts = (ids == self.fill.mask_id).sum(-1).tolist()
        return list(logits.float().split(counts))  # the rows of each feature's masks


class TaskModel(ServedModel):
    """A fine-tuned model: /v1/predict through its task object."""

    def __init__(self, name: str, path: Path, fm: FinetunedModel, dtype: str = "auto") -> None:
        """`dtype` "auto": bfloat16 weights when the model trained in bf16 here (its saved precision, "auto"
        meaning where the CPU has native bf16), else float32; "float32" / "bfloat16" for every model. Weights
        are held in that type rather than cast on every forward pass as autocast would."""
        if dtype == "auto":
            bf16 = resolve_precision(fm.cfg.train.precision, fm.device) == "bf16"
            weights = torch.bfloat16 if bf16 else torch.float32
        else:
            weights = resolve_dtype(dtype, fm.device)
        super().__init__(name, path, fm.model.to(weights), fm.tokenizer, fm.pad_id)
        self.fm, self.task, self.labels, self.kind = fm, fm.task, fm.labels, fm.task.name

    def predict_work(self, items: list[Any], limits: ServeOptions) -> Work:
        _check_sizes(items, limits)
        fm, task = self.fm, self.task
        examples = _each(items, lambda item: task.request_example(item, fm.cfg.data))
        self._check_pairs(examples)
        data = task.load(Path("request"), fm.tokenizer, fm.cfg.data, fm.labels, False, examples)
        keys = [(PREDICT, task.feature_group(f)) for f in data.features]

        def finish(outputs: list[torch.Tensor]) -> list[dict[str, Any]]:
            return task.answers(data, outputs, fm.labels, fm.cfg.data)

        return Work(data.features, keys, [task.feature_length(f) for f in data.features], finish)

    def _check_pairs(self, examples: list[Any]) -> None:
        """400 for a single text sent to a model fine-tuned on text pairs (its saved data.text_pair_column): it
        would answer, but not about what it learnt. (A model saved without that setting, such as a Hugging Face
        folder, takes either.)"""
        if self.fm.cfg.data.text_pair_column is None:
            return
        for i, ex in enumerate(examples):
            if "text_pair" in ex and ex["text_pair"] is None:
                raise RequestError(
                    400,
                    f'inputs[{i}]: model {self.name!r} was fine-tuned on text pairs; send {{"text": ..., '
                    '"text_pair": ...}',
                )

    def _forward(self, key: Hashable, features: list[Feature]) -> list[Any]:
        if key[0] != PREDICT:
            return super()._forward(key, features)
        batch = self.task.collate(features, self.pad_id)
        return self.task.split_outputs(self.task.forward(self.model, batch).float(), features)


def load_served(spec: str, dtype: str = "auto") -> ServedModel:
    """The model a MODEL argument names (see the module docstring for the kinds); a UserError when the folder
    is not a model masklm reads. `dtype`: the weights' type (auto, float32, bfloat16; see TaskModel)."""
    name, path = parse_spec(spec)
    all_tasks()  # a task module may define the head a model needs: import them all before loading
    model, tok, info = load_model(path)
    if (info.task or {}).get("name") or task_of_architecture(info.architecture):
        return TaskModel(name, path, load_finetuned(path), dtype)
    if info.architecture != "MaskedLM":
        model, tok, info = load_model(path, architecture="MaskedLM")
    model.eval()
    fill = None if info.fresh_head else FillMask(model, tok, dtype)  # no MLM head in the folder: no fill-mask
    return EncoderModel(name, path, fill, fill.model if fill else model, tok)
