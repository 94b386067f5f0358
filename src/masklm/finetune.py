"""Fine-tuning, evaluation and prediction, the same steps for every task.

    masklm finetune --task classification --model runs/demo --train train.csv --validation dev.csv
    masklm evaluate --model runs/finetune-train --data test.csv --json
    masklm predict  --model runs/finetune-train --data unlabelled.csv --output predictions.jsonl

What differs between tasks (file formats, labels, encoding, loss, decoding, metrics, output files) is asked of
the task object (masklm.tasks); this module never branches on a task's name. One path: read the files → encode
them with the model's tokenizer → fit() (masklm.train.loop) with an evaluation every train.eval_epochs epochs →
the best model by `train.metric_for_best` in RUN/model. The run folder has pretraining's layout:

    config.yaml    the resolved FinetuneConfig (+ the task, model and files)   command.txt  the command
    metrics.jsonl  one JSON line per log / evaluation                         checkpoints/ resumable state
    model/         the best model so far (weights, tokenizer, labels, task settings)
    curves.png     training / validation loss and the main metric              summary.json best validation metrics

Batches are formed as train.batching says (length-bucketed, random, or by token budget) and padded to the
longest feature in the batch; the batch for micro-step m is a pure function of (seed, m) (masklm.tasks.batching.EpochBatches), so a resumed run draws exactly the batches the
uninterrupted run would have drawn.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import hashlib
import json
import math
import os
import shutil
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from masklm import dist
from masklm.config import (
    FinetuneConfig,
    FinetuneDataConfig,
    FinetuneTrainConfig,
    HeadConfig,
    apply_dict,
    build_config,
    check_device,
    file_settings,
)
from masklm.errors import UserError
from masklm.model.base import build_model, head_class
from masklm.model.electra import is_electra_model
from masklm.model.encoder import set_attention_dropout
from masklm.model.heads import MaskedLM
from masklm.model.io import ModelInfo, load_model, resolve_model_dir, save_model
from masklm.tasks import all_tasks, get_task, output_formats, task_of_architecture
from masklm.tasks.base import Example, Task, TaskData, check_requirements
from masklm.tasks.batching import Batch, EpochBatches, length_bucketed_batches
from masklm.tasks.encoding import match_label
from masklm.train.checkpoint import step_of
from masklm.train.logger import check_log_kind
from masklm.train.loop import Budget, FitResult, autocast_context, resolve_precision
from masklm.train.pretrain import split_global_batch
from masklm.train.run import (
    Run,
    check_budget_ahead,
    check_run_dir,
    check_saved_command,
    command_line,
    read_saved_config,
)
from masklm.utils import atomic_write_text, finite_json, log, pick_device, plural, refuse_path_through_file
from masklm.utils import rank as env_rank

# ----------------------------------------------------------------------------------------------------
# Running a model over task data
# ----------------------------------------------------------------------------------------------------


def task_loss(
    task: Task, settings: FinetuneDataConfig, model: nn.Module, batch: Batch, per_batch: float | None = None
) -> torch.Tensor:
    """The training loss of one micro-batch: its mean, or with `per_batch` its sum divided by that constant.

    `per_batch` (the mean number of loss items, e.g. labelled tokens, per training batch; see `items_per_batch`)
    gives every item the same weight whichever batch it is in. Token-budget batches (train.batching tokens)
    hold many short examples or few long ones, and a per-batch mean would give each item of a small batch
    more weight. Over an epoch both average to the mean loss."""
    logits = task.forward(model, batch)
    if per_batch is None:
        return task.loss(logits, batch, settings)
    return task.loss(logits, batch, settings, reduction="sum") / per_batch


def items_per_batch(task: Task, batches: EpochBatches, pad_id: int) -> float:
    """The loss items of all training features (as `task.loss_count` counts them) over the batches per epoch."""
    items = sum(task.loss_count(task.collate([f], pad_id)) for f in batches.features)
    return max(1.0, items / batches.batches_per_epoch)


def training_loss(
    task: Task, settings: FinetuneDataConfig, batches: EpochBatches, pad_id: int
) -> Callable[[nn.Module, Batch], torch.Tensor]:
    """The loss fit() trains on: the batch mean (as transformers), or per item for token-budget batches."""
    per_batch = items_per_batch(task, batches, pad_id) if batches.batching == "tokens" else None
    return lambda m, batch: task_loss(task, settings, m, batch, per_batch)


def micro_batch_items(task: Task, batches: EpochBatches) -> Callable[[Batch], int] | None:
    """fit's `loss_items`: each micro-batch's mean loss weighted by its share of the step's items, so a short last
    batch of an epoch among full ones counts for its few examples, not 1 / grad_accum. Token budgets (a sum over a
    constant, `training_loss`) weigh every item the same already."""
    return None if batches.batching == "tokens" else task.loss_count


@torch.no_grad()
def run_model(
    model: nn.Module,
    task: Task,
    data: TaskData,
    settings: FinetuneDataConfig,
    batch_size: int,
    pad_id: int,
    device: torch.device,
) -> tuple[list[torch.Tensor], float | None]:
    """Outputs per feature in feature order (CPU float32, as the task splits them), and the mean loss when the
    data is labelled. Batches are sorted by length, so padding is minimal."""
    features = data.features
    outputs: list[torch.Tensor | None] = [None] * len(features)
    lengths = [task.feature_length(f) for f in features]
    loss_sum, count = 0.0, 0
    for indexes in length_bucketed_batches(lengths, batch_size, seed=0, shuffle=False):
        chosen = [features[i] for i in indexes]
        batch = {k: v.to(device) for k, v in task.collate(chosen, pad_id).items()}
        logits = task.forward(model, batch).float()
        if data.labelled:
            loss_sum += float(task.loss(logits, batch, settings, reduction="sum"))
            count += task.loss_count(batch)
        for i, output in zip(indexes, task.split_outputs(logits.cpu(), chosen)):
            outputs[i] = output
    loss = loss_sum / count if count else None
    return [o for o in outputs if o is not None], loss


def evaluate_data(
    model: nn.Module,
    task: Task,
    data: TaskData,
    labels: Sequence[str] | None,
    cfg: FinetuneConfig,
    pad_id: int,
    device: torch.device,
) -> dict[str, float]:
    """Metrics (and the mean loss as "loss") of `model` on labelled `data`; the model is not switched to eval."""
    batch_size = cfg.train.eval_batch_size or cfg.train.batch_size
    outputs, loss = run_model(model, task, data, cfg.data, batch_size, pad_id, device)
    predictions = task.decode(data, outputs, labels, cfg.data)
    metrics = task.metrics(data, predictions, labels, cfg.data)
    if loss is not None:
        metrics["loss"] = loss
    return {k: float(v) for k, v in metrics.items()}


# ----------------------------------------------------------------------------------------------------
# Set-up: inputs, metric, device, starting model
# ----------------------------------------------------------------------------------------------------


def _read_training_files(
    task: Task, train_path: str | Path, validation_path: str | Path, settings: FinetuneDataConfig
) -> tuple[list[Example], list[Example], list[str] | None]:
    """(training examples, validation examples, labels); settings the training data decides are filled in."""
    train_examples = task.read(Path(train_path), settings, labelled=True)
    val_examples = task.read(Path(validation_path), settings, labelled=True)
    task.check_training_data(settings, train_examples, Path(train_path))
    task.resolve_settings(settings, train_examples)
    return train_examples, val_examples, task.label_set(train_examples, settings, Path(train_path))


def select_metric(
    task: Task,
    requested: str,
    settings: FinetuneDataConfig,
    labels: Sequence[str] | None,
    validation: Sequence[Example] | None = None,
) -> str:
    """The validation metric the best model is chosen by: train.metric_for_best, "auto" being the task's main one;
    one the `validation` examples would not report (QA's NoAns_f1 without unanswerable questions) is refused."""
    names = task.metric_names(settings, labels)
    if requested == "auto":
        return names[0]
    reported = names if validation is None else task.reported_metrics(settings, labels, validation)
    if requested not in reported:
        why = "for this task" if requested not in names else "by this validation file"
        raise UserError(
            f"train.metric_for_best {requested!r} is not reported {why}; choose one of {', '.join(reported)}"
        )
    return requested


def _pad_id(tok: Any, model: nn.Module) -> int:
    pad = tok.token_to_id("[PAD]")
    return int(pad) if pad is not None else int(model.cfg.pad_token_id)


def _resolve_length(cfg: FinetuneConfig, task: Task, model: nn.Module) -> None:
    """data.max_length: the task default (capped at the model's positions) when unset; refused when too long."""
    mcfg = model.cfg
    limit = mcfg.max_positions
    if cfg.data.max_length is None:
        cfg.data.max_length = min(task.default_max_length, limit or task.default_max_length)
    if limit is not None and cfg.data.max_length > limit:
        raise UserError(
            f"data.max_length ({cfg.data.max_length}) is above the model's max_position_embeddings "
            f"({mcfg.max_position_embeddings}); lower --data.max_length"
        )
    if cfg.data.doc_stride is None:
        cfg.data.doc_stride = cfg.data.max_length // 3


INITS = ("pretrained", "random")


def check_data_settings(task: Task, given: Iterable[str]) -> None:
    """A `data` setting `given` to `masklm finetune` (command line or config file) that the task does not read is
    refused: it would be saved with the model and do nothing (data.doc_stride for classification)."""
    for key in given:
        section, _, name = key.partition(".")
        if section == "data" and name != "max_length" and name not in task.data_settings:
            users = [t.name for t in all_tasks() if name in t.data_settings]
            raise UserError(
                f"data.{name} is a setting of {' and '.join(users)}, not of {task.name}; leave --data.{name} out"
                + (f" (or use --task {users[0]})" if len(users) == 1 else "")
            )


def head_options(task: Task, head: HeadConfig, given: Iterable[str] = ()) -> dict[str, Any]:
    """The task head's options the `head` section asks for: those `given` (dotted keys of the command line or
    config file, even at their default) or set to another value than the default. The others are left to the
    model: a checkpoint that already has this head keeps its own (a model fine-tuned with mean pooling, fine-tuned
    again, stays mean-pooled with its trained classifier), any other gets the defaults. A setting the head does
    not take is refused when it is asked for."""
    cls = head_class(task.architecture)
    values, defaults = dataclasses.asdict(head), dataclasses.asdict(HeadConfig())
    asked = {k: v for k, v in values.items() if v != defaults[k] or f"head.{k}" in given}
    for name in asked:
        if name not in cls.options:
            takes = ", ".join(f"head.{k}" for k in cls.options) or "no head settings"
            raise UserError(
                f"head.{name} does not apply to {task.name} (its head takes {takes}); leave --head.{name} out"
            )
    return asked


def _load_start_model(
    task: Task,
    model_path: str | Path,
    labels: list[str] | None,
    cfg: FinetuneConfig,
    init: str = "pretrained",
    given: Iterable[str] = (),
) -> tuple[nn.Module, Any, list[str]]:
    """(model with the task's head, tokenizer, notes) to fine-tune; data.max_length resolved against it, and
    cfg.head set to the head's options as loaded (`head_options`; `given`: the dotted keys the user set).

    init="random": the same architecture, head options and tokenizer with every weight initialised afresh, as
    a new model of that config is, after seeding torch with train.seed (the same seed, the same weights)."""
    asked = head_options(task, cfg.head, given)
    model, tok, info = load_model(model_path, architecture=task.architecture, labels=labels, head=asked)
    notes = info.notes
    # the head's options as loaded (asked for, else the checkpoint's own, else the defaults): what config.yaml
    # records and a resumed run asks for again
    options = model.head_options()
    apply_dict(cfg, {"head": {k: v for k, v in options.items() if hasattr(cfg.head, k)}}, "the model's head")
    if isinstance(model, MaskedLM) and is_electra_model(model_path):
        notes = [
            *notes,
            f"{model_path} is an ELECTRA model, whose masked LM is its generator: that (hidden size "
            f"{model.cfg.hidden_size}) is the model fine-tuned here, not the discriminator, which has no masked-LM head",
        ]
    if init == "random":
        torch.manual_seed(cfg.train.seed)
        model = build_model(task.architecture, model.cfg, labels, options)
        notes = [
            *(n for n in notes if "initialised from scratch" not in n),
            f"--init random: every weight initialised from scratch (seed {cfg.train.seed}); only the model's "
            f"config and tokenizer come from {model_path}",
        ]
    if cfg.train.attention_dropout is not None:
        set_attention_dropout(model, cfg.train.attention_dropout)
    task.check_model(model, cfg.data, model_path)
    _resolve_length(cfg, task, model)
    if cfg.train.lr is None:
        width = model.cfg.hidden_size
        cfg.train.lr = default_lr(width)
        notes = [
            *notes,
            f"train.lr {cfg.train.lr:g}, the default for hidden size {width} (--train.lr to change)",
        ]
    return model, tok, notes


DEFAULT_EPOCHS, MIN_STEPS = 3, 150


def default_epochs(steps_per_epoch: int, epochs: int = DEFAULT_EPOCHS, min_steps: int = MIN_STEPS) -> float:
    """train.epochs when none is given: `epochs` (3), or as many more as make `min_steps` (150) optimizer steps.

    Measured (docs/benchmarks.md, "Few labels: 3 epochs against 150 steps"): with 100 and 300 Rotten Tomatoes
    labels, 3 epochs (12 and 30 steps) left an hour-pretrained small model at 49.6 and 60.2 and random init at
    one class, 150 steps gave 57.0 and 65.3; the demo's check and benchmarks/pretraining_value.py count their
    epochs with it too (masklm.demo.fine_tuning_epochs)."""
    return float(max(epochs, math.ceil(min_steps / steps_per_epoch)))


def default_lr(hidden_size: int) -> float:
    """train.lr when none is given: 3e-4 for encoders up to hidden size 256, 5e-5 (BERT's) above.

    Measured on Rotten Tomatoes with 1,000 labels (docs/benchmarks.md, "Fine-tuning a small encoder with the
    defaults"): masklm's small preset after an hour of pretraining gave 61.4 at 5e-5 and 69.1 at 3e-4, and its
    random-init twin 48.9 (every sentence one class) and 66.2: 5e-5 is too slow for a small encoder's fresh head.
    ELECTRA-Small fine-tunes at 3e-4 too (Clark et al. 2020); BERT-base and wider keep BERT's 5e-5."""
    return 3e-4 if hidden_size <= 256 else 5e-5


# ----------------------------------------------------------------------------------------------------
# The run folder and resuming
# ----------------------------------------------------------------------------------------------------


def saved_config(values: dict[str, Any]) -> FinetuneConfig:
    """The FinetuneConfig a run folder's config.yaml (as a dict) holds: its train / data sections."""
    sections = {k: values[k] for k in ("train", "data", "head") if k in values}
    return apply_dict(FinetuneConfig(), sections, "saved config")


RUN_ARGUMENTS = ("task", "model", "train", "validation", "init")
"""The command-line arguments config.yaml's `run` section records (--resume fills them in); it also records the
run's labels, notes and number of training examples."""


def resume_settings(run_dir: str | Path) -> dict[str, Any]:
    """The task, model and files a run folder was started with, its labels and notes (config.yaml's `run`
    section)."""
    return dict((read_saved_config(Path(run_dir)) or {}).get("run") or {})


def run_main_metric(run_dir: str | Path) -> str | None:
    """The validation metric a fine-tuning run folder chooses its best model by (train.metric_for_best, "auto"
    being its task's main one for its labels), read from its config.yaml; None when the folder does not say (not
    a fine-tuning run, or an unknown task)."""
    try:
        values = read_saved_config(Path(run_dir)) or {}
        cfg = saved_config(values)
        task = get_task(str((values.get("run") or {}).get("task")))
    except (UserError, AttributeError, TypeError):
        return None
    if cfg.train.metric_for_best != "auto":
        return cfg.train.metric_for_best
    return task.metric_names(cfg.data, _started_labels(Path(run_dir)))[0]


def _started_labels(run_dir: Path) -> list[str] | None:
    """The labels a run folder's run started with: config.yaml's, or (a run that did not record them there) its
    best model's so far; None when the task has no labels or the folder has none yet."""
    run = resume_settings(run_dir)
    if "labels" in run:
        labels = run["labels"]
    else:
        try:
            labels = json.loads((run_dir / "model" / "config.json").read_text(encoding="utf-8")).get("labels")
        except (OSError, ValueError, AttributeError):
            return None
    return [str(label) for label in labels] if isinstance(labels, list) else None


def resumed_labels(run_dir: Path, labels: list[str] | None, train_path: str | Path) -> list[str] | None:
    """--resume: the labels the run started with, when the training file has the same label set (a label may
    spell the same number as a started one: "1" for "1.0"); a UserError saying which labels were added or
    removed when the set changed, since the run's head and checkpoints have one output per started label."""
    started = _started_labels(run_dir)
    if started is None or labels is None:
        return labels
    matches = [match_label(label, started) for label in labels]
    added = [label for label, i in zip(labels, matches) if i is None]
    removed = [label for i, label in enumerate(started) if i not in matches]
    if not added and not removed and len(labels) == len(started):
        return started
    changes = [
        f"{what} {', '.join(names)}" for what, names in (("added", added), ("removed", removed)) if names
    ]
    change = "; ".join(changes) or f"{len(labels)} labels instead of {len(started)}"
    raise UserError(
        f"the labels of {train_path} changed since {run_dir} started ({change}; the run has {started}); a run "
        "continues with the labels it started with: restore the training file, or start a new run with another "
        "--output"
    )


def check_resumed_examples(run_dir: Path, examples: Sequence[Example], train_path: str | Path) -> None:
    """--resume: refuse a training file that holds other examples than when the run started (its `run` section
    records their number and `examples_fingerprint`): the batches of every step, and the steps of an epoch,
    follow from them, so the run would go on with other data than the one it stopped in. What a run did not
    record is not checked."""
    saved = resume_settings(run_dir)
    started, fingerprint = saved.get("train_examples"), saved.get("train_fingerprint")
    if started is not None and int(started) != len(examples):
        raise UserError(
            f"{train_path} holds {len(examples):,} examples, but {run_dir} started with {int(started):,}; a run "
            "continues with the training data it started with: restore the training file, or start a new run with "
            "another --output"
        )
    if fingerprint is not None and fingerprint != examples_fingerprint(examples):
        raise UserError(
            f"the examples of {train_path} changed since {run_dir} started (same number, other texts or labels); a "
            "run continues with the training data it started with: restore the training file, or start a new run "
            "with another --output"
        )


def examples_fingerprint(examples: Sequence[Example]) -> str:
    """A SHA-256 of what the examples hold (texts, labels, answers ...; not the line they were read from), so that a
    file saved again in another layout keeps its fingerprint and an edited one does not."""
    digest = hashlib.sha256()
    for ex in examples:
        content = {k: v for k, v in ex.items() if k not in ("line", "record")}
        digest.update(json.dumps(content, sort_keys=True, default=str, ensure_ascii=False).encode() + b"\n")
    return digest.hexdigest()


def resumed_notes(run_dir: Path, notes: list[str]) -> list[str]:
    """--resume: the notes of the run's start (settings that were defaults then, such as train.lr, are saved
    as set, so they are not noted again) and after them this session's new ones."""
    started = [str(n) for n in resume_settings(run_dir).get("notes") or []]
    return [*started, *(n for n in notes if n not in started)]


def _best_so_far(run_dir: Path) -> dict[str, Any] | None:
    """The best evaluation recorded with RUN/model (a resumed run keeps comparing against it)."""
    path = run_dir / "model" / "config.json"
    try:
        best = json.loads(path.read_text(encoding="utf-8")).get("best")
    except (OSError, ValueError):
        return None
    if not isinstance(best, dict) or "value" not in best:
        return None
    # no evaluation gave a finite value (the final weights were kept): written as null, compared as NaN
    return best if isinstance(best["value"], int | float) else None


def _refuse_lost_best(run_dir: Path, metric: str, step: int) -> None:
    """A UserError when metrics.jsonl shows an evaluation up to checkpoint `step` with a finite `metric` but RUN/model
    (the best model it saved) is gone: resumed, the run would take a later evaluation, or its final weights, for
    the best."""
    try:
        lines = (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        value = record.get(metric) if isinstance(record, dict) and record.get("split") == "val" else None
        if isinstance(value, int | float) and math.isfinite(value) and record.get("step", step + 1) <= step:
            raise UserError(
                f"--resume: {run_dir / 'model'} (the best model of its evaluations by {metric}) is missing; put it "
                "back, or fine-tune again with --overwrite"
            )


def _best_paths(run_dir: Path) -> tuple[Path, Path, Path]:
    """RUN/model, and the names `_save_best` writes the next best model to and moves the previous one to."""
    return run_dir / "model", run_dir / ".model.tmp", run_dir / ".model.old"


def finish_best_swap(run_dir: Path) -> None:
    """Complete a `_save_best` that a kill cut between its two renames: RUN/model missing, the previous best in
    .model.old and the new one, complete (written before the first rename), in .model.tmp. With RUN/model in
    place, what a kill left of the other two (a save cut while writing, or before its last deletion) goes."""
    final, tmp, old = _best_paths(run_dir)
    if not final.exists() and old.is_dir():
        (tmp if tmp.is_dir() else old).rename(final)
    if final.exists():
        for leftover in (tmp, old):
            shutil.rmtree(leftover, ignore_errors=True)


def _save_best(model: nn.Module, run_dir: Path, tok: Any, info: ModelInfo, best: dict[str, Any]) -> None:
    """Replace RUN/model with the current weights: built under a temporary name, then renamed into place."""
    final, tmp, old = _best_paths(run_dir)
    for p in (tmp, old):
        if p.exists():
            shutil.rmtree(p)
    save_model(model, tmp, tok, info, extra={"best": best})
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def _model_info(task: Task, labels: list[str] | None, cfg: FinetuneConfig) -> ModelInfo:
    """What RUN/model records besides the weights: the head, its labels and the task settings."""
    task_info = {
        "name": task.name,
        "data": dataclasses.asdict(cfg.data),
        "eval_batch_size": cfg.train.eval_batch_size or cfg.train.batch_size,
        # evaluate / predict compute as training did, so `masklm evaluate` on the validation file reproduces
        # summary.json (as set, e.g. "auto": resolved again on the machine that evaluates)
        "precision": cfg.train.precision,
    }
    return ModelInfo(architecture=task.architecture, labels=labels, task=task_info)


class BestModel:
    """Keeps RUN/model at the best evaluation so far by one metric (ties go to the lower validation loss)."""

    def __init__(
        self,
        run_dir: Path,
        model: nn.Module,
        tok: Any,
        info: ModelInfo,
        metric: str,
        lower_is_better: bool,
        steps_per_epoch: int,
        resume: bool,
    ) -> None:
        self.run_dir, self.model, self.tok, self.info = run_dir, model, tok, info
        self.metric, self.sign, self.steps_per_epoch = (
            metric,
            -1.0 if lower_is_better else 1.0,
            steps_per_epoch,
        )
        if resume and dist.rank() == 0:
            finish_best_swap(run_dir)
        best = _best_so_far(run_dir) if resume else None
        self.best: dict[str, Any] | None = best if best is not None and best.get("metric") == metric else None

    def is_better(self, metrics: dict[str, float]) -> bool:
        """Is `metrics` better than the best evaluation so far?"""
        value = metrics.get(self.metric, math.nan)
        if not math.isfinite(value):
            return False
        if self.best is None:
            return True
        if value != self.best["value"]:
            return self.sign * value > self.sign * self.best["value"]
        loss, best_loss = metrics.get("loss", math.nan), self.best.get("eval", {}).get("loss", math.nan)
        return self.metric != "loss" and math.isfinite(loss) and math.isfinite(best_loss) and loss < best_loss

    def on_eval(self, metrics: dict[str, float], step: int) -> None:
        """fit()'s evaluation hook: save the model when this evaluation is the best so far."""
        if not self.is_better(metrics):
            return
        self._save(metrics[self.metric], step, metrics)
        log(
            f"  new best {self.metric} {metrics[self.metric]:.4f} at step {step}: model saved to {self.run_dir / 'model'}"
        )

    def ensure_saved(self, result: FitResult) -> dict[str, Any]:
        """The best evaluation; when none gave a finite value, the final weights are kept instead."""
        if self.best is None:
            self._save(math.nan, result.step, result.last_eval, epoch=result.step / self.steps_per_epoch)
        assert self.best is not None
        return self.best

    def _save(self, value: float, step: int, metrics: dict[str, float], epoch: float | None = None) -> None:
        epoch = round(step / self.steps_per_epoch, 3) if epoch is None else epoch
        self.best = {"metric": self.metric, "value": value, "step": step, "epoch": epoch, "eval": metrics}
        if dist.rank() == 0:
            _save_best(self.model, self.run_dir, self.tok, self.info, self.best)


# ----------------------------------------------------------------------------------------------------
# finetune()
# ----------------------------------------------------------------------------------------------------


def _epoch_batches(task: Task, train: TaskData, cfg: FinetuneTrainConfig, pad_id: int) -> EpochBatches:
    """The training batches: micro-step → this process's padded batch."""
    return EpochBatches(
        train.features,
        cfg.batch_size,
        pad_id,
        cfg.seed,
        cfg.grad_accum,
        dist.rank(),
        dist.world_size(),
        cfg.bucket_batches,
        lengths=[task.feature_length(f) for f in train.features],
        collate=task.collate,
        batching=cfg.batching,
    )


@dataclass
class _Plan:
    """How many steps a run takes and how big they are."""

    steps_per_epoch: int
    total_steps: int
    global_batch: int
    tokens_per_step: int
    eval_steps: int  # steps between evaluations of the validation set: a whole number of epochs

    @classmethod
    def of(
        cls, batches: EpochBatches, train: FinetuneTrainConfig, tokens: Sequence[int], val_features: int
    ) -> _Plan:
        """`tokens`: the tokens of each training feature (what one step reads, on average, times the batch);
        `val_features`: the size of the validation set."""
        steps_per_epoch = batches.steps_per_epoch
        total = train.max_steps or max(1, math.ceil(train.epochs * steps_per_epoch))
        global_batch = train.batch_size * train.grad_accum * dist.world_size()
        mean_tokens = sum(tokens) / len(tokens)
        every = steps_per_epoch * eval_epochs(train, len(tokens), val_features)
        return cls(steps_per_epoch, total, global_batch, max(1, round(mean_tokens * global_batch)), every)


@dataclass
class _Inputs:
    """The encoded training and validation files and the label set from the training file."""

    train: TaskData
    val: TaskData
    labels: list[str] | None

    @classmethod
    def encode(
        cls,
        task: Task,
        tok: Any,
        settings: FinetuneDataConfig,
        labels: list[str] | None,
        train: tuple[str | Path, list[Example]],
        val: tuple[str | Path, list[Example]],
    ) -> _Inputs:
        """Encode the examples read from the training and the validation file, each given as (path, examples)."""
        train_data = task.load(train[0], tok, settings, labels, True, train[1])
        val_data = task.load(val[0], tok, settings, labels, True, val[1])
        if not train_data.features:
            raise UserError(f"{train[0]}: no training examples; give a file with data in it")
        return cls(train_data, val_data, labels)


def _start_details(task: Task, inputs: _Inputs, plan: _Plan, metric: str, init: str, seed: int) -> list[str]:
    """What the start-of-run line says after the model's size and device."""
    train, labels = inputs.train, inputs.labels
    examples = f"{len(train.examples):,} training and {len(inputs.val.examples):,} validation examples"
    return [
        "pretrained weights" if init == "pretrained" else f"random init (seed {seed})",
        examples + task.describe(train),
        *([f"{len(labels)} labels"] if labels else []),
        f"batch {plan.global_batch}",
        f"{plural(plan.steps_per_epoch, 'step')} per epoch, {plural(plan.total_steps, 'step')}",
        *(
            [f"validation every {plan.eval_steps // plan.steps_per_epoch} epochs"]
            if plan.eval_steps > plan.steps_per_epoch
            else []
        ),
        f"best model by {metric}",
    ]


def _summary(
    task: Task,
    inputs: _Inputs,
    best: dict[str, Any],
    result: FitResult,
    plan: _Plan,
    model: nn.Module,
    model_path: str | Path,
    notes: list[str],
    wall_s: float,
    init: str,
) -> dict[str, Any]:
    """summary.json: the best validation metrics at the top level, then how the run went."""
    train, val = inputs.train, inputs.val
    return {
        **best["eval"],
        "task": task.name,
        "init": init,
        "best": {k: best[k] for k in ("metric", "value", "step", "epoch")},
        "last_eval": result.last_eval,
        "steps": result.step,
        "epochs": round(result.step / plan.steps_per_epoch, 3),
        "steps_per_epoch": plan.steps_per_epoch,
        "eval_epochs": plan.eval_steps // plan.steps_per_epoch,
        "train_examples": len(train.examples),
        "validation_examples": len(val.examples),
        "train_features": len(train.features),
        "global_batch": plan.global_batch,
        "train_time_s": round(result.elapsed_s, 2),
        "wall_time_s_this_session": round(wall_s, 2),
        "examples_per_s": round(result.step * plan.global_batch / max(result.elapsed_s, 1e-9), 1),
        "skipped_steps": result.skipped_steps,
        "labels": inputs.labels,
        "parameters": sum(p.numel() for p in model.parameters()),
        "model": str(model_path),
        "notes": notes,
    }


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
    resume_changes: dict[str, Any] | None = None,
    init: str = "pretrained",
) -> dict[str, Any]:
    """Fine-tune `model_path` (masklm run / model folder or Hugging Face BERT folder) on a task; returns
    summary.json's content ({"stopped": True, ...} when a signal stopped the run; resume it with resume=True).

    `init`: "pretrained" starts from the model's weights; "random" from fresh weights of the same architecture
    (seeded by train.seed), with the same tokenizer: the control that shows what pretraining is worth.
    With `resume`, the run's saved config.yaml is used, not `cfg`; `resume_changes` (dotted keys, as the command
    line sets them) may change the settings in RESUME_FREE, such as the budget (the one resume rule,
    masklm.train.run).
    """
    if init not in INITS:
        raise UserError(f"--init must be pretrained or random, not {init!r}")
    t = get_task(task)
    inputs = [("--model", model_path), ("--train", train_path), ("--validation", validation_path)]
    run = Run(
        output, resume=resume, overwrite=overwrite, what="output folder", inputs=inputs, command="finetune"
    )
    saved_init = resume_settings(output).get("init", "pretrained") if resume else init
    if saved_init != init:
        raise UserError(f"--resume continues {output} with --init {saved_init}, not {init}; leave --init out")
    if not isinstance(cfg, FinetuneConfig):
        raise UserError(
            f"finetune takes a FinetuneConfig, not a {type(cfg).__name__} (pretraining's is Config)"
        )
    cfg = copy.deepcopy(cfg).validate()  # (the caller's config stays as it was)
    cfg = run.resume_config(cfg, resume_changes, load=saved_config)
    check_log_kind(cfg.train.log)
    # Everything that can be wrong with the inputs is found before anything is written.
    train_examples, val_examples, labels = _read_training_files(t, train_path, validation_path, cfg.data)
    if resume:
        labels = resumed_labels(Path(output), labels, train_path)
        check_resumed_examples(Path(output), train_examples, train_path)
    check_requirements(t.requirements(cfg.data, labels))
    metric = select_metric(t, cfg.train.metric_for_best, cfg.data, labels, val_examples)
    head_options(t, cfg.head, given=resume_changes or {})  # refused before the model is read
    device = run.setup(cfg)
    model, tok, notes = _load_start_model(t, model_path, labels, cfg, init, given=resume_changes or {})
    files = (train_path, train_examples), (validation_path, val_examples)
    inputs = _Inputs.encode(t, tok, cfg.data, labels, *files)
    pad_id = _pad_id(tok, model)
    keep_global_batch(cfg.train, Path(output), resume)
    batches = _epoch_batches(t, inputs.train, cfg.train, pad_id)
    notes = _set_default_epochs(cfg.train, batches.steps_per_epoch, notes)
    notes = _file_notes(train_path, validation_path, notes)
    if resume:
        notes = resumed_notes(Path(output), notes)
    plan = _Plan.of(
        batches, cfg.train, [t.feature_tokens(f) for f in inputs.train.features], len(inputs.val.features)
    )

    resume_from = run.open()
    check_budget_ahead(resume_from, plan.total_steps)
    paths = {"model": model_path, "train": train_path, "validation": validation_path}
    run_info = _run_info(t, paths, init, labels, notes, train_examples)
    run.write_files({"run": run_info, **cfg.to_dict()}, command)
    for note in notes:
        log(f"note: {note}")
    trainable = run.build(model, cfg, device)
    details = _start_details(t, inputs, plan, metric, init, cfg.train.seed)
    purpose = "regression" if cfg.data.regression else t.name
    run.announce("fine-tuning", model, cfg.train, details, purpose=purpose)
    info = _model_info(t, labels, cfg)
    lower_is_better = metric in t.lower_is_better
    best = BestModel(run.run_dir, model, tok, info, metric, lower_is_better, plan.steps_per_epoch, resume)
    if resume_from is not None and best.best is None:
        _refuse_lost_best(run.run_dir, metric, step_of(resume_from))

    result = run.fit(
        trainable,
        dataclasses.replace(cfg.train, checkpoint_every=_checkpoint_every(cfg.train, plan)),
        budget=Budget(steps=plan.total_steps, minutes=cfg.train.max_minutes),
        make_batch=batches,
        loss_fn=training_loss(t, cfg.data, batches, pad_id),
        loss_items=micro_batch_items(t, batches),
        # the plain module (fit passes the DDP / compiled one): no gradient sync while evaluating
        evaluate=lambda _: evaluate_data(model, t, inputs.val, labels, cfg, pad_id, device),
        tokens_per_step=plan.tokens_per_step,
        eval_epoch_steps=plan.eval_steps,
        on_eval=best.on_eval,
    )
    if result.stopped_by_signal:
        return run.stopped(result)
    best_eval = best.ensure_saved(result)
    return run.finish(
        _summary(t, inputs, best_eval, result, plan, model, model_path, notes, run.wall_s, init)
    )


def _run_info(
    task: Task,
    paths: dict[str, str | Path],
    init: str,
    labels: list[str] | None,
    notes: list[str],
    train_examples: Sequence[Example],
) -> dict[str, Any]:
    """config.yaml's `run` section, which --resume reads: the RUN_ARGUMENTS (absolute: a resume may run in another
    folder), the labels, the notes, what the training file held and the number of processes."""
    return {
        "task": task.name,
        **{k: str(Path(v).absolute()) for k, v in paths.items()},
        "init": init,
        "labels": labels,
        "notes": notes,
        "train_examples": len(train_examples),
        "train_fingerprint": examples_fingerprint(train_examples),
        "processes": dist.world_size(),
    }


def _file_notes(train_path: str | Path, validation_path: str | Path, notes: list[str]) -> list[str]:
    """`notes`, and one when the validation file is the training file."""
    if not _same_file(Path(train_path), Path(validation_path)):
        return notes
    return [
        *notes,
        f"the validation file is the training file ({validation_path}): its scores measure how well the model fits "
        "the examples it trains on, not how it does on new ones, and choose the best model by that",
    ]


def _set_default_epochs(train: FinetuneTrainConfig, steps_per_epoch: int, notes: list[str]) -> list[str]:
    """Unset train.epochs: the default for `steps_per_epoch` (`default_epochs`), with a note when that is more
    than DEFAULT_EPOCHS; returns the notes. With train.max_steps it stays unset: the steps are the budget, and
    config.yaml should not record epochs that never ran."""
    if train.epochs is not None or train.max_steps:
        return notes
    train.epochs = default_epochs(steps_per_epoch)
    if train.epochs > DEFAULT_EPOCHS:
        more = f"train.epochs {train.epochs:g}, the default for {steps_per_epoch} steps an epoch"
        notes = [*notes, f"{more}: at least {MIN_STEPS} steps in all (--train.epochs to change)"]
    return notes


def keep_global_batch(train: FinetuneTrainConfig, run_dir: Path, resume: bool) -> None:
    """A fine-tuning resumed with another number of processes keeps its global batch (as pretraining does), so
    its steps, epochs and schedule continue unchanged: the same micro-batch with the accumulation split again
    where it divides (then each step reads the same batches as before), else a smaller micro-batch."""
    saved = resume_settings(run_dir).get("processes") if resume else None
    if not saved or saved == dist.world_size():
        return
    global_batch = train.batch_size * train.grad_accum * int(saved)
    split = split_global_batch(global_batch, dist.world_size(), train.batch_size)
    log(
        f"resuming with {dist.world_size()} process(es), not {saved}: micro-batch {split[0]} x accumulation "
        f"{split[1]} keeps the global batch of {global_batch}"
    )
    train.batch_size, train.grad_accum = split


def eval_epochs(train: FinetuneTrainConfig, train_features: int, val_features: int) -> int:
    """Epochs between evaluations: train.eval_epochs, or (unset) every epoch unless the validation set is the
    larger: a forward pass over it costs about a third of training on as many examples, so evaluating every
    ceil(val / train) epochs keeps validation to at most about a quarter of the run."""
    if train.eval_epochs is not None:
        return train.eval_epochs
    return max(1, math.ceil(val_features / max(1, train_features)))


def _checkpoint_every(train: FinetuneTrainConfig, plan: _Plan) -> int:
    """train.checkpoint_every for fit(): unset means at every evaluation (see eval_epochs)."""
    return plan.eval_steps if train.checkpoint_every is None else train.checkpoint_every


# ----------------------------------------------------------------------------------------------------
# evaluate_model() and predict()
# ----------------------------------------------------------------------------------------------------


@dataclass
class FinetunedModel:
    """A fine-tuned model ready for inference, with everything its task needs."""

    model: nn.Module
    tokenizer: Any
    task: Task
    labels: list[str] | None
    cfg: FinetuneConfig
    device: torch.device
    pad_id: int


def load_finetuned(path: str | Path, overrides: dict[str, Any] | None = None) -> FinetunedModel:
    """A fine-tuned model with the task settings saved next to it (then `overrides`, e.g. data.text_column)."""
    all_tasks()  # a task module may define the head the model needs: import them all before loading
    head_keys = [k for k in overrides or {} if k == "head" or k.startswith("head.")]
    if head_keys:
        raise UserError(
            f"{head_keys[0]} is saved with the model and cannot change after fine-tuning; leave it out "
            "(fine-tune again to change the head)"
        )
    model, tok, info = load_model(path)
    saved = info.task or {}
    task = get_task(saved["name"]) if saved.get("name") else task_of_architecture(info.architecture)
    if task is None:
        raise UserError(
            f"{path} is a {info.architecture} model, not a fine-tuned one; fine-tune it first with masklm finetune"
        )
    if info.fresh_head:  # config.json names a head its weights do not hold: it would answer at random
        raise UserError(
            f"{path} has no trained head ({info.fresh_head}); its answers would come from random weights: "
            "fine-tune it first with masklm finetune"
        )
    cfg = FinetuneConfig()
    if isinstance(saved.get("data"), dict):
        apply_dict(cfg, {"data": saved["data"]}, f"{path} (saved task settings)")
    if saved.get("eval_batch_size"):
        cfg.train.eval_batch_size = int(saved["eval_batch_size"])
    if saved.get("precision"):
        cfg.train.precision = str(saved["precision"])
    apply_dict(cfg, {"head": {k: v for k, v in info.head.items() if hasattr(cfg.head, k)}}, f"{path} (head)")
    task.settings_from_model(model, info.labels, cfg.data)
    if overrides:
        apply_dict(cfg, overrides, "the command line")
    task.check_fixed_settings(model, cfg.data, path)
    cfg.validate()
    _resolve_length(cfg, task, model)
    # the device only: the saved precision is resolved where it is used (evaluate / predict refuse fp16 on a
    # CPU then; masklm serve may hold the weights in a dtype of its own)
    check_device(cfg.train.device, "auto")
    device = pick_device(cfg.train.device)
    if cfg.train.threads and device.type == "cpu":
        torch.set_num_threads(cfg.train.threads)
    model.to(device).eval()
    return FinetunedModel(model, tok, task, info.labels, cfg, device, _pad_id(tok, model))


def _infer(fm: FinetunedModel, data: TaskData) -> tuple[list[Any], float | None]:
    """(one prediction per example, the mean loss when `data` is labelled), computed as training did."""
    precision = resolve_precision(fm.cfg.train.precision, fm.device)
    batch_size = fm.cfg.train.eval_batch_size or fm.cfg.train.batch_size
    with autocast_context(fm.device, precision):
        outputs, loss = run_model(fm.model, fm.task, data, fm.cfg.data, batch_size, fm.pad_id, fm.device)
    return fm.task.decode(data, outputs, fm.labels, fm.cfg.data), loss


def evaluate_model(
    model_path: str | Path, data_path: str | Path, overrides: dict[str, Any] | None = None
) -> dict[str, float]:
    """Metrics of a fine-tuned model on a labelled file: the same dict as summary.json's validation metrics."""
    fm = load_finetuned(model_path, overrides)
    task = fm.task
    check_requirements(task.requirements(fm.cfg.data, fm.labels))
    examples = task.read(Path(data_path), fm.cfg.data, labelled=True)
    task.resolve_settings(fm.cfg.data, examples)
    data = task.load(data_path, fm.tokenizer, fm.cfg.data, fm.labels, True, examples)
    predictions, loss = _infer(fm, data)
    metrics = task.metrics(data, predictions, fm.labels, fm.cfg.data)
    if loss is not None:
        metrics["loss"] = loss
    return {k: float(v) for k, v in metrics.items()}


def _same_file(a: Path, b: Path) -> bool:
    """Whether `a` and `b` name one file: the same path once resolved (relative paths, symbolic links), or
    one file under two names (hard links)."""
    if a.resolve() == b.resolve():
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        return False


def predict(
    model_path: str | Path,
    data_path: str | Path,
    output: str | Path,
    overrides: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> int:
    """Write predictions for a (possibly unlabelled) file to `output` (.jsonl / .csv, and what the task adds:
    QA .json, token classification .conll / .txt); returns the number of predictions."""
    output = Path(output)
    suffix = output.suffix.lower()
    if suffix not in output_formats():
        raise UserError(f"--output {output}: unsupported file type '{suffix}'; use .jsonl or .csv")
    if _same_file(output, Path(data_path)):
        raise UserError(
            f"--output {output} is the --data file {data_path}; predictions would replace it (even with "
            "--overwrite): choose another --output"
        )
    model_dir = resolve_model_dir(model_path)
    if output.resolve().is_relative_to(model_dir.resolve()):
        raise UserError(
            f"--output {output} lies inside the model folder {model_dir}; predictions there could replace the "
            "model's own files (even with --overwrite): choose another --output"
        )
    refuse_path_through_file(output)
    if output.exists() and not overwrite:
        raise UserError(f"{output} already exists; pass --overwrite to replace it or choose another --output")
    if output.is_dir():
        raise UserError(f"--output {output} is a folder; give a file name ending in .jsonl or .csv")
    fm = load_finetuned(model_path, overrides)
    fm.task.check_output(output)
    data = fm.task.load(data_path, fm.tokenizer, fm.cfg.data, fm.labels, labelled=False)
    fm.task.check_writable(data, fm.labels, output)
    predictions, _ = _infer(fm, data)
    rows = fm.task.prediction_rows(data, predictions, fm.labels, fm.cfg.data)
    text = fm.task.render(rows, suffix)
    if not output.parent.exists():
        output.parent.mkdir(parents=True)
    atomic_write_text(output, text)
    return len(rows)


# ----------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------


def _fill_from_saved_run(args: argparse.Namespace) -> None:
    """--resume: the saved run fills in the task, model and files the command leaves out (and refuses others).
    A missing folder (or a link to one) or one that holds no run is refused first, as such."""
    check_run_dir(Path(args.output), resume=True, overwrite=args.overwrite, what="output folder")
    check_saved_command(Path(args.output), "finetune")
    for key, value in resume_settings(args.output).items():
        if key not in RUN_ARGUMENTS:
            continue
        given = getattr(args, key, None)
        if given is None:
            setattr(args, key, value)
        elif given != value and (key in ("task", "init") or not _same_input(given, value)):
            raise UserError(
                f"--resume continues {args.output} with --{key} {value}, not {given}; leave --{key} out, "
                "or start a new run with another --output"
            )


def _same_input(given: str, saved: str) -> bool:
    """Whether a --model / --train / --validation path given to --resume is the one the run recorded: the same
    file or folder, or the recorded path leads nowhere from here (the data moved, or an older run recorded it
    relative to another working folder; the training file is then checked by its examples)."""
    return not Path(saved).exists() or Path(given).resolve() == Path(saved).resolve()


def cmd_finetune(args: argparse.Namespace, overrides: dict[str, Any]) -> int:
    if args.resume and args.output:
        _fill_from_saved_run(args)
    missing = [f"--{k}" for k in ("task", "model", "train", "validation") if getattr(args, k) is None]
    if missing:
        raise UserError(f"masklm finetune needs {', '.join(missing)} (see `masklm finetune --help`)")
    # what the config file sets is checked (another task's data setting) and, on --resume, applied by the resume
    # rule, as the command line's settings are
    given = {**(file_settings(args.config) if args.config else {}), **overrides}
    check_data_settings(get_task(args.task), given)  # (an unknown task first): before any file is read
    output = args.output or f"runs/finetune-{Path(args.train).stem}"
    summary = finetune(
        build_config(overrides, args.config),
        args.task,
        args.model,
        args.train,
        args.validation,
        output,
        resume=args.resume,
        overwrite=args.overwrite,
        command=command_line(args.argv),
        resume_changes=given,
        init=args.init or "pretrained",
    )
    if summary.get("stopped") or env_rank() != 0:  # one line per run, not per process
        return 0
    best = summary["best"]
    shown = ", ".join(f"{k} {summary[k]:.4f}" for k in summary["last_eval"] if k in summary)
    skipped = summary.get("skipped_steps") or 0
    print(
        f"best validation {best['metric']} {best['value']:.4f} (epoch {best['epoch']:g}, step {best['step']}): "
        f"{shown}; model in {Path(output) / 'model'}"
        + (f" ({plural(skipped, 'step')} skipped: non-finite loss or gradients)" if skipped else "")
    )
    return 0


def cmd_evaluate(args: argparse.Namespace, overrides: dict[str, Any]) -> int:
    metrics = evaluate_model(args.model, args.data, overrides)
    if args.json:
        # strict JSON: a value that is not finite (an MSE that overflows, a correlation of constant predictions)
        # is null, not the NaN / Infinity that JSON parsers refuse
        print(json.dumps(finite_json(metrics)))
    else:
        for k, v in metrics.items():
            print(f"{k:>14} {v:.4f}")
    return 0


def cmd_predict(args: argparse.Namespace, overrides: dict[str, Any]) -> int:
    n = predict(args.model, args.data, args.output, overrides, overwrite=args.overwrite)
    print(f"wrote {plural(n, 'prediction')} to {args.output}")
    return 0
