"""Fine-tuning, evaluation and prediction for classification, token classification and question answering.

    masklm finetune --task classification --model runs/demo --train train.csv --validation dev.csv
    masklm evaluate --model runs/finetune-train --data test.csv --json
    masklm predict  --model runs/finetune-train --data unlabelled.csv --output predictions.jsonl

One path for every task: read the files (masklm.data.tasks) → encode them with the model's tokenizer → fit()
(masklm.train.loop) with an evaluation at the end of every epoch → the best model by `train.metric_for_best`
in RUN/model. The run folder has pretraining's layout:

    config.yaml    the resolved FinetuneConfig (+ the task, model and files)   command.txt  the command
    metrics.jsonl  one JSON line per log / evaluation                         checkpoints/ resumable state
    model/         the best model so far (weights, tokenizer, labels, task settings)
    curves.png     training / validation loss and the main metric              summary.json best validation metrics

Batches are length-bucketed and padded to the longest feature in the batch. The batch for micro-step m is a pure
function of (seed, m): epoch e's order comes from length_bucketed_batches with a seed derived from (seed, e), so
a resumed run draws exactly the batches the uninterrupted run would have drawn.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import hashlib
import io
import json
import math
import shlex
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import yaml
from torch import nn

from masklm import dist
from masklm.config import TASKS, Config, TrainConfig, apply_dict, read_yaml
from masklm.data import tasks as T
from masklm.errors import UserError
from masklm.model.io import ModelInfo, load_model, save_model
from masklm.train import checkpoint as ckpt
from masklm.train import metrics as M
from masklm.train.loop import (
    Budget,
    FitResult,
    _unwrap,
    autocast_context,
    fit,
    resolve_precision,
    write_run_results,
)
from masklm.train.optim import make_optimizer
from masklm.train.pretrain import prepare_run_dir
from masklm.utils import atomic_write_text, log, pick_device
from masklm.utils import rank as env_rank

ARCHITECTURE = {
    "classification": "SequenceClassification",
    "token-classification": "TokenClassification",
    "qa": "QuestionAnswering",
}
TASK_OF_ARCHITECTURE = {v: k for k, v in ARCHITECTURE.items()}
LOWER_IS_BETTER = ("loss", "mse")


# ----------------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------------


@dataclass
class FinetuneTrainConfig(TrainConfig):
    """TrainConfig with fine-tuning defaults (BERT paper / Hugging Face Trainer), plus epochs and model selection."""

    batch_size: int = 32  # examples (QA: context windows) per micro-batch, per process
    lr: float = (
        5e-5  # peak learning rate; 5e-5 suits a pretrained encoder, raise it for a model trained from scratch
    )
    beta2: float = 0.999
    eps: float = 1e-8
    warmup: float = 0.1  # a fraction of all steps if < 1, else a step count
    schedule: str = "linear"
    epochs: float = 3.0  # passes over the training data (fractions allowed); train.max_steps replaces it
    metric_for_best: str = (
        "auto"  # keep the model with the best value of this validation metric; "auto": the task's main one
    )
    eval_every: int = (
        0  # extra evaluations every N steps (the validation set is evaluated after every epoch anyway)
    )
    eval_batch_size: int | None = None  # batch size for evaluation and prediction (None: train.batch_size)
    bucket_batches: int = 50  # length bucketing: batches' worth of shuffled examples sorted by length together (1: random batches)
    checkpoint_every: int | None = (
        None  # steps between checkpoints (None: at the end of every epoch; 0: only at the end)
    )
    keep_last: int = 1  # checkpoints kept on disk (the best model is kept separately in model/)


@dataclass
class FinetuneDataConfig:
    """How task files are read and encoded."""

    max_length: int | None = (
        None  # tokens per example / QA window, specials included (None: 128, QA 384, at most the model's positions)
    )
    doc_stride: int | None = (
        None  # QA: tokens shared by consecutive windows of a long context (None: max_length // 3, 128 at 384)
    )
    max_question_length: int = 64  # QA: questions keep their first N tokens
    text_column: str = "text"  # classification: the column / JSONL key with the text
    text_pair_column: str | None = None  # classification: the second text of a pair (None: single texts)
    label_column: str = "label"  # classification: the column with the label (or score)
    regression: bool = False  # classification: labels are numbers; one output, MSE loss, Pearson / Spearman
    label_all_subwords: bool = False  # token classification: label every sub-word, not only a word's first
    n_best: int = 20  # QA: start / end candidates considered per window
    max_answer_length: int = 30  # QA: longest answer in tokens
    null_threshold: float = 0.0  # QA v2: answer "" when null score - best span score > this
    version_2: bool | None = None  # QA: unanswerable questions allowed (None: detect from the training data)


@dataclass
class FinetuneConfig:
    train: FinetuneTrainConfig = field(default_factory=FinetuneTrainConfig)
    data: FinetuneDataConfig = field(default_factory=FinetuneDataConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self) -> FinetuneConfig:
        t, d = self.train, self.data
        # the shared TrainConfig checks (batch size, lr, schedule, precision, ...)
        Config(train=dataclasses.replace(t, checkpoint_every=t.checkpoint_every or 0)).validate()
        _require(t.epochs > 0, f"train.epochs must be positive, not {t.epochs}")
        _require(
            t.max_tokens is None,
            "train.max_tokens is a pretraining budget; fine-tuning stops after train.epochs, train.max_steps "
            "or train.max_minutes",
        )
        _require(t.eval_batch_size is None or t.eval_batch_size > 0, "train.eval_batch_size must be positive")
        _require(t.bucket_batches >= 1, f"train.bucket_batches must be at least 1, not {t.bucket_batches}")
        _require(t.checkpoint_every is None or t.checkpoint_every >= 0, "train.checkpoint_every must be >= 0")
        _require(
            d.max_length is None or d.max_length >= 8,
            f"data.max_length must be at least 8, not {d.max_length}",
        )
        _require(d.doc_stride is None or d.doc_stride >= 0, "data.doc_stride must be >= 0")
        _require(d.max_question_length >= 1, "data.max_question_length must be at least 1")
        _require(d.n_best >= 1, "data.n_best must be at least 1")
        _require(d.max_answer_length >= 1, "data.max_answer_length must be at least 1")
        return self


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise UserError(message)


def build_config(
    overrides: dict[str, Any] | None = None, config_file: str | Path | None = None
) -> FinetuneConfig:
    """Defaults, then a YAML file (sections train / data), then dotted overrides; validated."""
    cfg = FinetuneConfig()
    if config_file:
        apply_dict(cfg, read_yaml(config_file), str(config_file))
    if overrides:
        apply_dict(cfg, overrides, "the command line")
    return cfg.validate()


def default_max_length(task: str) -> int:
    return 384 if task == "qa" else 128


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise UserError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")


def metric_names(task: str, data: FinetuneDataConfig, labels: Sequence[str] | None) -> list[str]:
    """The validation metrics a run reports (what train.metric_for_best may name); the main one first."""
    if task == "classification":
        if data.regression:
            return ["pearson", "spearman", "mse", "loss"]
        return ["accuracy", "macro_f1", "mcc", *(["f1"] if len(labels or ()) == 2 else []), "loss"]
    if task == "token-classification":
        if any(M._PREFIXED.match(tag) for tag in labels or ()):
            return ["f1", "precision", "recall", "accuracy", "loss"]
        return ["accuracy", "loss"]
    names = ["f1", "exact_match", "loss"]
    if data.version_2:
        names += ["HasAns_exact", "HasAns_f1", "NoAns_exact", "NoAns_f1"]
    return names


def _is_better(metrics: dict[str, float], best: dict[str, Any] | None, metric: str) -> bool:
    """Is `metrics` better than the best evaluation so far? Ties on `metric` go to the lower validation loss."""
    value = metrics.get(metric, math.nan)
    if not math.isfinite(value):
        return False
    if best is None:
        return True
    sign = -1.0 if metric in LOWER_IS_BETTER else 1.0
    if value != best["value"]:
        return sign * value > sign * best["value"]
    loss, best_loss = metrics.get("loss", math.nan), best.get("eval", {}).get("loss", math.nan)
    return metric != "loss" and math.isfinite(loss) and math.isfinite(best_loss) and loss < best_loss


# ----------------------------------------------------------------------------------------------------
# Reading and encoding task data
# ----------------------------------------------------------------------------------------------------


@dataclass
class TaskData:
    """One file's examples and the model inputs built from them (QA: several windows per example)."""

    path: Path
    examples: list[dict[str, Any]]
    features: list[dict[str, Any]]


def read_examples(
    task: str, path: str | Path, data: FinetuneDataConfig, labelled: bool
) -> list[dict[str, Any]]:
    """The file's examples; with `labelled`, a UserError when the labels (tags, answers) are missing."""
    path = Path(path)
    if task == "classification":
        return T.read_classification(
            path, data.text_column, data.text_pair_column, data.label_column, require_label=labelled
        )
    if task == "token-classification":
        sentences = T.read_conll(path)
        if labelled and sentences[0]["tags"] is None:
            raise UserError(
                f"{path}: has no tags (one column only); give 'token<TAB>tag' lines, or use masklm predict "
                "for unlabelled text"
            )
        return sentences
    examples = T.read_squad(path)
    if labelled:
        for ex in examples:
            if not ex["answers"]["text"] and not ex["is_impossible"]:
                raise UserError(
                    f"{path}: question id {ex['id']} has no 'answers'; labelled SQuAD data needs them "
                    "(an empty list marks an unanswerable question), or use masklm predict"
                )
    return examples


def label_set(
    task: str, examples: Sequence[dict[str, Any]], data: FinetuneDataConfig, path: Path
) -> list[str] | None:
    """Labels in id order from the training examples (None for regression and QA)."""
    if task == "classification":
        if data.regression:
            return None
        labels = T.build_label_map(ex["label"] for ex in examples)
        if len(labels) < 2:
            raise UserError(
                f"{path}: every example has the label '{labels[0]}'; classification needs at least two labels "
                "(or --data.regression true for numeric scores)"
            )
        return labels
    if task == "token-classification":
        return T.build_label_map(tag for ex in examples for tag in ex["tags"])
    return None


def encode_examples(
    task: str,
    tok: Any,
    examples: list[dict[str, Any]],
    data: FinetuneDataConfig,
    labels: Sequence[str] | None,
    path: Path,
    labelled: bool,
) -> list[dict[str, Any]]:
    """Model inputs for `examples`; with `labelled`, also the targets the loss needs."""
    assert data.max_length is not None and data.doc_stride is not None
    if task == "classification":
        if labelled:
            examples = (
                T.encode_float_labels(examples, path)
                if data.regression
                else T.encode_labels(examples, labels or [], path)
            )
        else:
            examples = [{**ex, "label": None} for ex in examples]
        return T.encode_classification(tok, examples, data.max_length)
    if task == "token-classification":
        if not labelled:
            examples = [{**ex, "tags": None} for ex in examples]
        return T.encode_token_classification(
            tok, examples, labels or [], data.max_length, data.label_all_subwords, path
        )
    return T.encode_qa(
        tok,
        examples,
        data.max_length,
        data.doc_stride,
        train=labelled,
        max_question_length=data.max_question_length,
    )


def load_task_data(
    task: str,
    path: str | Path,
    tok: Any,
    data: FinetuneDataConfig,
    labels: Sequence[str] | None,
    labelled: bool,
    examples: list[dict[str, Any]] | None = None,
) -> TaskData:
    path = Path(path)
    if examples is None:
        examples = read_examples(task, path, data, labelled)
    return TaskData(path, examples, encode_examples(task, tok, examples, data, labels, path, labelled))


# ----------------------------------------------------------------------------------------------------
# Batches and losses
# ----------------------------------------------------------------------------------------------------


def epoch_seed(seed: int, epoch: int) -> int:
    """The shuffling seed of one epoch: a pure function of (seed, epoch)."""
    digest = hashlib.blake2b(f"finetune:{seed}:{epoch}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


class EpochBatches:
    """micro_step → padded batch: length-bucketed, reshuffled every epoch, a pure function of the step.

    An epoch is `micro_per_epoch` micro-steps per process. Process r takes batches r, r + W, r + 2W, ... of the
    epoch's order; where the last optimizer step of an epoch needs more batches than the epoch has, it takes
    the epoch's first batches again.
    """

    def __init__(
        self,
        features: list[dict[str, Any]],
        batch_size: int,
        pad_id: int,
        seed: int,
        grad_accum: int = 1,
        rank: int = 0,
        world_size: int = 1,
        bucket_batches: int = 50,
    ) -> None:
        self.features, self.batch_size, self.pad_id, self.seed = features, batch_size, pad_id, seed
        self.bucket_batches = bucket_batches
        self.rank, self.world_size = rank, world_size
        self.lengths = [len(f["input_ids"]) for f in features]
        self.batches_per_epoch = -(-len(features) // batch_size)
        self.steps_per_epoch = max(1, -(-self.batches_per_epoch // (world_size * grad_accum)))
        self.micro_per_epoch = self.steps_per_epoch * grad_accum
        self._cached: tuple[int, list[list[int]]] | None = None

    def order(self, epoch: int) -> list[list[int]]:
        if self._cached is None or self._cached[0] != epoch:
            batches = T.length_bucketed_batches(
                self.lengths, self.batch_size, epoch_seed(self.seed, epoch), chunk_batches=self.bucket_batches
            )
            self._cached = (epoch, batches)
        return self._cached[1]

    def __call__(self, micro_step: int) -> dict[str, torch.Tensor]:
        epoch, i = divmod(micro_step, self.micro_per_epoch)
        batches = self.order(epoch)
        indexes = batches[(i * self.world_size + self.rank) % len(batches)]
        return T.pad_batch([self.features[k] for k in indexes], self.pad_id)


def _forward(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])


def loss_from_logits(
    task: str, logits: torch.Tensor, batch: dict[str, torch.Tensor], regression: bool, reduction: str = "mean"
) -> torch.Tensor:
    """Cross-entropy (ignore index -100), MSE for regression, mean of start and end cross-entropy for QA."""
    logits = logits.float()
    if task == "qa":
        start = F.cross_entropy(logits[..., 0], batch["start_positions"], reduction=reduction)
        end = F.cross_entropy(logits[..., 1], batch["end_positions"], reduction=reduction)
        return (start + end) / 2
    labels = batch["labels"]
    if regression:
        return F.mse_loss(logits.squeeze(-1), labels.float(), reduction=reduction)
    return F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]),
        labels.reshape(-1),
        ignore_index=T.IGNORE_INDEX,
        reduction=reduction,
    )


def task_loss(task: str, regression: bool, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The mean loss of one training micro-batch."""
    return loss_from_logits(task, _forward(model, batch), batch, regression)


def _loss_fn(task: str, regression: bool):
    return lambda model, batch: task_loss(task, regression, model, batch)


# ----------------------------------------------------------------------------------------------------
# Inference, decoding, metrics
# ----------------------------------------------------------------------------------------------------


@torch.no_grad()
def run_model(
    model: nn.Module,
    task: str,
    features: Sequence[dict[str, Any]],
    batch_size: int,
    pad_id: int,
    device: torch.device,
    regression: bool = False,
) -> tuple[list[torch.Tensor], float | None]:
    """Logits per feature in feature order (CPU float32; per-token ones cut to the feature's length), and the
    mean loss when the features carry targets. Batches are sorted by length, so padding is minimal."""
    outputs: list[torch.Tensor | None] = [None] * len(features)
    lengths = [len(f["input_ids"]) for f in features]
    loss_sum, count = 0.0, 0
    for indexes in T.length_bucketed_batches(lengths, batch_size, seed=0, shuffle=False):
        batch = {k: v.to(device) for k, v in T.pad_batch([features[i] for i in indexes], pad_id).items()}
        logits = _forward(model, batch).float()
        if "labels" in batch or "start_positions" in batch:
            loss_sum += float(loss_from_logits(task, logits, batch, regression, reduction="sum"))
            if task == "token-classification":
                count += int((batch["labels"] != T.IGNORE_INDEX).sum())
            else:
                count += len(indexes)
        logits = logits.cpu()
        for row, i in enumerate(indexes):
            outputs[i] = logits[row, : lengths[i]] if logits.dim() == 3 else logits[row]
    loss = loss_sum / count if count else None
    return [o for o in outputs if o is not None], loss


def decode(
    task: str,
    data: TaskData,
    outputs: Sequence[torch.Tensor],
    labels: Sequence[str] | None,
    cfg: FinetuneDataConfig,
) -> list[Any]:
    """Per-example predictions from per-feature logits.

    classification: (label id, probability) or a float (regression); token classification: one tag per word
    (words cut off by max_length get "O"); QA: the answer text ("" = no answer).
    """
    if task == "classification":
        if cfg.regression:
            return [float(o.reshape(-1)[0]) for o in outputs]
        out = []
        for o in outputs:
            probs = torch.softmax(o, -1)
            k = int(probs.argmax())
            out.append((k, float(probs[k])))
        return out
    if task == "token-classification":
        tags = list(labels or [])
        out = []
        for f, o in zip(data.features, outputs):
            ids = T.align_predictions(f["word_ids"], o.argmax(-1), f["num_words"])
            out.append([tags[i] if i >= 0 else "O" for i in ids])
        return out
    answers = T.postprocess_qa(
        data.examples,
        data.features,
        [o[:, 0] for o in outputs],
        [o[:, 1] for o in outputs],
        n_best=cfg.n_best,
        max_answer_length=cfg.max_answer_length,
        null_threshold=cfg.null_threshold,
        version_2=bool(cfg.version_2),
    )
    return [answers[ex["id"]] for ex in data.examples]


def score(
    task: str,
    data: TaskData,
    predictions: Sequence[Any],
    labels: Sequence[str] | None,
    cfg: FinetuneDataConfig,
) -> dict[str, float]:
    """The task's metrics for `predictions` against the gold labels in `data`."""
    if task == "classification":
        gold = [f["labels"] for f in data.features]
        if cfg.regression:
            return M.regression_metrics(predictions, gold)
        return M.classification_metrics([p[0] for p in predictions], gold, len(labels or []))
    if task == "token-classification":
        return M.entity_metrics([ex["tags"] for ex in data.examples], predictions)
    answers = {ex["id"]: p for ex, p in zip(data.examples, predictions)}
    return M.squad_metrics(answers, data.examples)


def evaluate_data(
    model: nn.Module,
    task: str,
    data: TaskData,
    labels: Sequence[str] | None,
    cfg: FinetuneConfig,
    pad_id: int,
    device: torch.device,
) -> dict[str, float]:
    """Metrics (and the mean loss as "loss") of `model` on labelled `data`; the model is not switched to eval."""
    batch_size = cfg.train.eval_batch_size or cfg.train.batch_size
    outputs, loss = run_model(model, task, data.features, batch_size, pad_id, device, cfg.data.regression)
    metrics = score(task, data, decode(task, data, outputs, labels, cfg.data), labels, cfg.data)
    if loss is not None:
        metrics["loss"] = loss
    return {k: float(v) for k, v in metrics.items()}


# ----------------------------------------------------------------------------------------------------
# finetune()
# ----------------------------------------------------------------------------------------------------


def _pad_id(tok: Any, model: nn.Module) -> int:
    pad = tok.token_to_id("[PAD]")
    return int(pad) if pad is not None else int(model.cfg.pad_token_id)


def _resolve_length(cfg: FinetuneConfig, task: str, model: nn.Module) -> None:
    """data.max_length: the task default (capped at the model's positions) when unset; refused when too long."""
    mcfg = model.cfg
    limit = mcfg.max_position_embeddings if mcfg.position == "absolute" else None
    if cfg.data.max_length is None:
        cfg.data.max_length = min(default_max_length(task), limit or 1 << 30)
    if limit is not None and cfg.data.max_length > limit:
        raise UserError(
            f"data.max_length ({cfg.data.max_length}) is above the model's max_position_embeddings "
            f"({mcfg.max_position_embeddings}); lower --data.max_length"
        )
    if cfg.data.doc_stride is None:
        cfg.data.doc_stride = cfg.data.max_length // 3


def _saved_run(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "config.yaml"
    if not path.is_file():
        return {}
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError):
        raise UserError(f"{path} is not valid YAML; the run folder is damaged") from None
    return values if isinstance(values, dict) else {}


def resume_settings(run_dir: str | Path) -> dict[str, Any]:
    """The task, model and files a run folder was started with (config.yaml's `run` section)."""
    return dict(_saved_run(Path(run_dir)).get("run") or {})


BUDGET_KEYS = ("train.epochs", "train.max_steps", "train.max_minutes")


def resume_config(
    run_dir: str | Path, overrides: dict[str, Any] | None = None, config_file: str | Path | None = None
) -> FinetuneConfig:
    """The config a run was started with (config.yaml); of `overrides` only the budget (epochs, max_steps,
    max_minutes) applies. A folder without config.yaml gets the config built from the overrides."""
    saved = _saved_run(Path(run_dir))
    if not saved:
        return build_config(overrides, config_file)
    cfg = apply_dict(FinetuneConfig(), {k: saved[k] for k in ("train", "data") if k in saved}, "saved config")
    budget = {k: v for k, v in (overrides or {}).items() if k in BUDGET_KEYS}
    ignored = sorted(set(overrides or {}) - set(budget))
    if ignored or config_file:
        log(
            f"note: --resume keeps the run's saved settings; ignored: {', '.join(ignored or [str(config_file)])}"
        )
    return apply_dict(cfg, budget, "the command line").validate()


def _best_so_far(run_dir: Path) -> dict[str, Any] | None:
    """The best evaluation recorded with RUN/model (a resumed run keeps comparing against it)."""
    path = run_dir / "model" / "config.json"
    try:
        best = json.loads(path.read_text(encoding="utf-8")).get("best")
    except (OSError, ValueError):
        return None
    return best if isinstance(best, dict) and "value" in best else None


def _save_best(model: nn.Module, run_dir: Path, tok: Any, info: ModelInfo, best: dict[str, Any]) -> None:
    """Replace RUN/model with the current weights: built under a temporary name, then renamed into place."""
    final, tmp, old = run_dir / "model", run_dir / ".model.tmp", run_dir / ".model.old"
    for p in (tmp, old):
        if p.exists():
            shutil.rmtree(p)
    save_model(model, tmp, tok, info, extra={"best": best})
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def _check_output(run_dir: Path, resume: bool, overwrite: bool) -> None:
    """Refuse an existing output folder early, before any data is read (prepare_run_dir checks again)."""
    if run_dir.exists() and not resume and not overwrite and (run_dir.is_file() or any(run_dir.iterdir())):
        raise UserError(
            f"output folder {run_dir} already exists; pass --resume to continue it, --overwrite to replace it, "
            "or choose another --output"
        )


def finetune(
    cfg: FinetuneConfig,
    task: str,
    model_path: str | Path,
    train_path: str | Path,
    validation_path: str | Path,
    output: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    command: str | None = None,
) -> dict[str, Any]:
    """Fine-tune `model_path` (masklm run / model folder or Hugging Face BERT folder) on a task; returns
    summary.json's content ({"stopped": True, ...} when a signal stopped the run; resume it with resume=True).

    A resumed run must be given the config it was started with (`resume_config` rebuilds it from the run folder).
    """
    _check_task(task)
    run_dir = Path(output)
    _check_output(run_dir, resume, overwrite)
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train), data=dataclasses.replace(cfg.data))
    d = cfg.data

    # Everything that can be wrong with the inputs is found before anything is written.
    train_examples = read_examples(task, train_path, d, labelled=True)
    val_examples = read_examples(task, validation_path, d, labelled=True)
    if task == "qa" and d.version_2 is None:
        d.version_2 = any(ex["is_impossible"] for ex in train_examples)
    labels = label_set(task, train_examples, d, Path(train_path))
    metric = cfg.train.metric_for_best
    names = metric_names(task, d, labels)
    if metric == "auto":
        metric = names[0]
    elif metric not in names:
        raise UserError(
            f"train.metric_for_best {metric!r} is not reported for this task; choose one of {', '.join(names)}"
        )

    info_dist = dist.init(device=cfg.train.device)
    device = info_dist.device or pick_device(cfg.train.device)
    if cfg.train.threads and device.type == "cpu":
        torch.set_num_threads(cfg.train.threads)
    torch.manual_seed(cfg.train.seed)
    model, tok, minfo = load_model(model_path, architecture=ARCHITECTURE[task], labels=labels)
    if task == "classification" and d.regression and model.num_labels != 1:
        raise UserError(
            f"{model_path} has a classifier for {model.num_labels} labels; regression needs one output: "
            "start from the pretrained encoder instead"
        )
    _resolve_length(cfg, task, model)
    train = load_task_data(task, train_path, tok, d, labels, True, train_examples)
    val = load_task_data(task, validation_path, tok, d, labels, True, val_examples)
    if not train.features:
        raise UserError(f"{train_path}: no training examples; give a file with data in it")

    prepare_run_dir(run_dir, resume, overwrite)
    resume_from = ckpt.latest_checkpoint(run_dir / "checkpoints") if resume else None
    if resume and resume_from is None:
        log(f"--resume: no complete checkpoint in {run_dir}/checkpoints; starting from the beginning")
    run_info = {
        "task": task,
        "model": str(model_path),
        "train": str(train_path),
        "validation": str(validation_path),
    }
    if dist.rank() == 0:
        atomic_write_text(
            run_dir / "config.yaml", yaml.safe_dump({"run": run_info, **cfg.to_dict()}, sort_keys=False)
        )
        if command and not resume:
            atomic_write_text(run_dir / "command.txt", command + "\n")
    for note in minfo.notes:
        log(f"note: {note}")

    model.to(device)
    train_model = dist.wrap(model, cfg, device)  # DDP under torchrun (a config without a dist section)
    optimizer = make_optimizer(model, cfg.train, device)  # after wrap, as masklm.dist asks
    if cfg.train.compile:
        train_model = torch.compile(train_model)
    world = dist.world_size()
    pad_id = _pad_id(tok, model)
    batches = EpochBatches(
        train.features,
        cfg.train.batch_size,
        pad_id,
        cfg.train.seed,
        cfg.train.grad_accum,
        dist.rank(),
        world,
        cfg.train.bucket_batches,
    )
    steps_per_epoch = batches.steps_per_epoch
    total = cfg.train.max_steps or max(1, math.ceil(cfg.train.epochs * steps_per_epoch))
    budget = Budget(steps=total, minutes=cfg.train.max_minutes)
    global_batch = cfg.train.batch_size * cfg.train.grad_accum * world
    mean_len = sum(batches.lengths) / len(batches.lengths)
    fit_cfg = dataclasses.replace(
        cfg.train,
        checkpoint_every=steps_per_epoch
        if cfg.train.checkpoint_every is None
        else cfg.train.checkpoint_every,
    )
    log(
        f"fine-tuning {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters for {task} on {device} "
        f"({resolve_precision(cfg.train.precision, device)}) | "
        f"{len(train.examples):,} training and {len(val.examples):,} validation examples"
        + (f" ({len(train.features):,} windows)" if task == "qa" else "")
        + (f" | {len(labels)} labels" if labels else "")
        + f" | batch {global_batch} | {steps_per_epoch} steps per epoch, {total} steps | best model by {metric}"
    )

    task_info = {
        "name": task,
        "data": dataclasses.asdict(d),
        "eval_batch_size": cfg.train.eval_batch_size or cfg.train.batch_size,
        # evaluate / predict compute as training did, so `masklm evaluate` on the validation file reproduces
        # summary.json (as set, e.g. "auto": resolved again on the machine that evaluates)
        "precision": cfg.train.precision,
    }
    model_info = ModelInfo(architecture=ARCHITECTURE[task], labels=labels, task=task_info)
    best: dict[str, Any] | None = _best_so_far(run_dir) if resume else None
    if best is not None and best.get("metric") != metric:
        best = None

    def evaluate(m: nn.Module) -> dict[str, float]:
        return evaluate_data(_unwrap(m), task, val, labels, cfg, pad_id, device)

    def on_eval(metrics: dict[str, float], step: int) -> None:
        nonlocal best
        if not _is_better(metrics, best, metric):
            return
        value = metrics[metric]
        best = {
            "metric": metric,
            "value": value,
            "step": step,
            "epoch": round(step / steps_per_epoch, 3),
            "eval": metrics,
        }
        if dist.rank() == 0:
            _save_best(model, run_dir, tok, model_info, best)
        log(f"  new best {metric} {value:.4f} at step {step}: model saved to {run_dir / 'model'}")

    wall_start = time.perf_counter()
    result: FitResult = fit(
        train_model,
        optimizer,
        fit_cfg,
        run_dir=run_dir,
        budget=budget,
        make_batch=batches,
        loss_fn=_loss_fn(task, d.regression),
        evaluate=evaluate,
        tokens_per_step=max(1, round(mean_len * global_batch)),
        device=device,
        resume_from=resume_from,
        eval_every_epoch=steps_per_epoch,
        on_eval=on_eval,
        reduce=dist.all_reduce_mean,
        no_sync=dist.no_sync(train_model),
    )
    wall = time.perf_counter() - wall_start
    if result.stopped_by_signal:
        dist.shutdown()
        return {"stopped": True, "step": result.step}
    if best is None:  # no evaluation gave a finite value: keep the final weights
        best = {
            "metric": metric,
            "value": math.nan,
            "step": result.step,
            "epoch": result.step / steps_per_epoch,
            "eval": result.last_eval,
        }
        if dist.rank() == 0:
            _save_best(model, run_dir, tok, model_info, best)

    summary: dict[str, Any] = {
        **best["eval"],
        "task": task,
        "best": {k: best[k] for k in ("metric", "value", "step", "epoch")},
        "last_eval": result.last_eval,
        "steps": result.step,
        "epochs": round(result.step / steps_per_epoch, 3),
        "steps_per_epoch": steps_per_epoch,
        "train_examples": len(train.examples),
        "validation_examples": len(val.examples),
        "train_features": len(train.features),
        "global_batch": global_batch,
        "train_time_s": round(result.elapsed_s, 2),
        "wall_time_s_this_session": round(wall, 2),
        "examples_per_s": round(result.step * global_batch / max(result.elapsed_s, 1e-9), 1),
        "skipped_steps": result.skipped_steps,
        "labels": labels,
        "parameters": sum(p.numel() for p in model.parameters()),
        "model": str(model_path),
        "notes": minfo.notes,
    }
    if dist.rank() == 0:
        write_run_results(run_dir, summary)
    dist.shutdown()
    return summary


# ----------------------------------------------------------------------------------------------------
# evaluate_model() and predict()
# ----------------------------------------------------------------------------------------------------


@dataclass
class FinetunedModel:
    model: nn.Module
    tokenizer: Any
    task: str
    labels: list[str] | None
    cfg: FinetuneConfig
    device: torch.device
    pad_id: int


def load_finetuned(path: str | Path, overrides: dict[str, Any] | None = None) -> FinetunedModel:
    """A fine-tuned model with the task settings saved next to it (then `overrides`, e.g. data.text_column)."""
    model, tok, info = load_model(path)
    task = (info.task or {}).get("name") or TASK_OF_ARCHITECTURE.get(info.architecture)
    if task is None:
        raise UserError(
            f"{path} is a {info.architecture} model, not a fine-tuned one; fine-tune it first with masklm finetune"
        )
    cfg = FinetuneConfig()
    saved = (info.task or {}).get("data")
    if isinstance(saved, dict):
        apply_dict(cfg, {"data": saved}, f"{path} (saved task settings)")
    if (info.task or {}).get("eval_batch_size"):
        cfg.train.eval_batch_size = int(info.task["eval_batch_size"])
    if (info.task or {}).get("precision"):
        cfg.train.precision = str(info.task["precision"])
    if task == "classification" and not info.labels and model.num_labels == 1:
        cfg.data.regression = True
    if overrides:
        apply_dict(cfg, overrides, "the command line")
    cfg.validate()
    _resolve_length(cfg, task, model)
    device = pick_device(cfg.train.device)
    if cfg.train.threads and device.type == "cpu":
        torch.set_num_threads(cfg.train.threads)
    model.to(device).eval()
    return FinetunedModel(model, tok, task, info.labels, cfg, device, _pad_id(tok, model))


def _infer(fm: FinetunedModel, data: TaskData) -> tuple[list[Any], float | None]:
    precision = resolve_precision(fm.cfg.train.precision, fm.device)
    batch_size = fm.cfg.train.eval_batch_size or fm.cfg.train.batch_size
    with autocast_context(fm.device, precision):
        outputs, loss = run_model(
            fm.model, fm.task, data.features, batch_size, fm.pad_id, fm.device, fm.cfg.data.regression
        )
    return decode(fm.task, data, outputs, fm.labels, fm.cfg.data), loss


def evaluate_model(
    model_path: str | Path, data_path: str | Path, overrides: dict[str, Any] | None = None
) -> dict[str, float]:
    """Metrics of a fine-tuned model on a labelled file: the same dict as summary.json's validation metrics."""
    fm = load_finetuned(model_path, overrides)
    examples = read_examples(fm.task, data_path, fm.cfg.data, labelled=True)
    if fm.task == "qa" and fm.cfg.data.version_2 is None:
        fm.cfg.data.version_2 = any(ex["is_impossible"] for ex in examples)
    data = load_task_data(fm.task, data_path, fm.tokenizer, fm.cfg.data, fm.labels, True, examples)
    predictions, loss = _infer(fm, data)
    metrics = score(fm.task, data, predictions, fm.labels, fm.cfg.data)
    if loss is not None:
        metrics["loss"] = loss
    return {k: float(v) for k, v in metrics.items()}


def _label_value(label: str) -> Any:
    return int(label) if T._INT_RE.fullmatch(label) else label


def _prediction_rows(fm: FinetunedModel, data: TaskData, predictions: list[Any]) -> list[dict[str, Any]]:
    d = fm.cfg.data
    rows: list[dict[str, Any]] = []
    if fm.task == "classification":
        for ex, p in zip(data.examples, predictions):
            row: dict[str, Any] = {d.text_column: ex["text"]}
            if d.text_pair_column:
                row[d.text_pair_column] = ex["text_pair"]
            if d.regression:
                row[d.label_column] = p
            else:
                row[d.label_column] = _label_value((fm.labels or [])[p[0]])
                row["score"] = round(p[1], 6)
            rows.append(row)
    elif fm.task == "token-classification":
        rows = [{"tokens": ex["tokens"], "tags": tags} for ex, tags in zip(data.examples, predictions)]
    else:
        rows = [
            {"id": ex["id"], "question": ex["question"], "answer": answer}
            for ex, answer in zip(data.examples, predictions)
        ]
    return rows


OUTPUT_FORMATS = (".jsonl", ".csv", ".json", ".conll", ".txt")


def _render(rows: list[dict[str, Any]], task: str, suffix: str, output: Path) -> str:
    if suffix == ".jsonl":
        return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    if suffix == ".csv":
        buf = io.StringIO(newline="")
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: " ".join(v) if isinstance(v, list) else v for k, v in r.items()})
        return buf.getvalue()
    if suffix == ".json" and task == "qa":  # the official SQuAD predictions file: {"id": "answer"}
        return json.dumps({r["id"]: r["answer"] for r in rows}, ensure_ascii=False, indent=1) + "\n"
    if suffix in (".conll", ".txt") and task == "token-classification":
        return "\n".join("".join(f"{t}\t{g}\n" for t, g in zip(r["tokens"], r["tags"])) for r in rows)
    kinds = {"qa": ".jsonl, .csv or .json", "token-classification": ".jsonl, .csv, .conll or .txt"}
    raise UserError(f"--output {output}: write predictions as {kinds.get(task, '.jsonl or .csv')}")


def predict(
    model_path: str | Path,
    data_path: str | Path,
    output: str | Path,
    overrides: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> int:
    """Write predictions for a (possibly unlabelled) file to `output` (.jsonl / .csv, QA also .json, token
    classification also .conll / .txt); returns the number of predictions."""
    output = Path(output)
    suffix = output.suffix.lower()
    if suffix not in OUTPUT_FORMATS:
        raise UserError(f"--output {output}: unsupported file type '{suffix}'; use .jsonl or .csv")
    if output.exists() and not overwrite:
        raise UserError(f"{output} already exists; pass --overwrite to replace it or choose another --output")
    if output.is_dir():
        raise UserError(f"--output {output} is a folder; give a file name ending in .jsonl or .csv")
    fm = load_finetuned(model_path, overrides)
    data = load_task_data(fm.task, data_path, fm.tokenizer, fm.cfg.data, fm.labels, labelled=False)
    predictions, _ = _infer(fm, data)
    rows = _prediction_rows(fm, data, predictions)
    text = _render(rows, fm.task, suffix, output)
    if not output.parent.exists():
        output.parent.mkdir(parents=True)
    atomic_write_text(output, text)
    return len(rows)


# ----------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------


def _command(args: argparse.Namespace, overrides: dict[str, Any]) -> str:
    parts = ["masklm", args.command]
    for flag in ("task", "model", "train", "validation", "data", "output", "config"):
        value = getattr(args, flag, None)
        if value is not None:
            parts += [f"--{flag}", str(value)]
    for flag in ("resume", "overwrite", "json"):
        if getattr(args, flag, False):
            parts.append(f"--{flag}")
    for key, value in overrides.items():
        parts += [f"--{key}", str(value)]
    return " ".join(shlex.quote(p) for p in parts)


def cmd_finetune(args: argparse.Namespace, overrides: dict[str, Any]) -> int:
    if args.resume and args.output:  # the saved run fills in what the command leaves out
        for key, value in resume_settings(args.output).items():
            given = getattr(args, key, None)
            if given is None:
                setattr(args, key, value)
            elif given != value and (key == "task" or Path(given).resolve() != Path(value).resolve()):
                raise UserError(
                    f"--resume continues {args.output} with --{key} {value}, not {given}; leave --{key} out, "
                    "or start a new run with another --output"
                )
    missing = [f"--{k}" for k in ("task", "model", "train", "validation") if getattr(args, k) is None]
    if missing:
        raise UserError(f"masklm finetune needs {', '.join(missing)} (see `masklm finetune --help`)")
    _check_task(args.task)
    output = args.output or f"runs/finetune-{Path(args.train).stem}"
    if args.resume:
        cfg = resume_config(output, overrides, args.config)
    else:
        cfg = build_config(overrides, args.config)
    summary = finetune(
        cfg,
        args.task,
        args.model,
        args.train,
        args.validation,
        output,
        resume=args.resume,
        overwrite=args.overwrite,
        command=_command(args, overrides),
    )
    if summary.get("stopped") or env_rank() != 0:  # one line per run, not per process
        return 0
    best = summary["best"]
    shown = ", ".join(f"{k} {summary[k]:.4f}" for k in summary["last_eval"] if k in summary)
    print(
        f"best validation {best['metric']} {best['value']:.4f} (epoch {best['epoch']:g}, step {best['step']}): "
        f"{shown}; model in {Path(output) / 'model'}"
    )
    return 0


def cmd_evaluate(args: argparse.Namespace, overrides: dict[str, Any]) -> int:
    metrics = evaluate_model(args.model, args.data, overrides)
    if args.json:
        print(json.dumps(metrics))
    else:
        for k, v in metrics.items():
            print(f"{k:>14} {v:.4f}")
    return 0


def cmd_predict(args: argparse.Namespace, overrides: dict[str, Any]) -> int:
    n = predict(args.model, args.data, args.output, overrides, overwrite=args.overwrite)
    print(f"wrote {n} predictions to {args.output}")
    return 0
