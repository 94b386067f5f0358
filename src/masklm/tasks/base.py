"""The Task interface: everything that differs between fine-tuning tasks, asked of one object per task.

`masklm.finetune` (fine-tuning, evaluate, predict) runs the same steps for every task and asks the task at each
one: read a file into examples, the label set, encode examples into features, collate features into a batch,
run the model, the loss, split the logits back into per-feature outputs, decode predictions, score them, and
write them out. A task module subclasses `Task`, implements the abstract methods and overrides a default where
its task differs; `masklm.tasks` finds it by name.

Words used throughout:
    example   one item of the user's file as a plain dict (a sentence, a tagged sentence, a question)
    feature   one model input built from an example as plain Python lists (QA: one per context window)
    batch     features collated into tensors on their way to the model
    settings  the run's FinetuneDataConfig (columns, lengths, regression, QA thresholds ...)
    labels    the label names in id order, from the training data (None where a task has no label set)
"""

from __future__ import annotations

import abc
import csv
import importlib.util
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from masklm.errors import UserError
from masklm.tasks.batching import Batch, Feature, pad_batch

if TYPE_CHECKING:
    from masklm.config import FinetuneDataConfig

Example = dict[str, Any]
Row = dict[str, Any]


@dataclass(frozen=True)
class Requirement:
    """An optional package a task needs for some settings or labels (e.g. seqeval for entity F1)."""

    module: str  # what is imported ("seqeval")
    purpose: str  # what needs it, as a message says it ("entity F1 of B-/I- tags")
    extra: str  # the masklm extra that installs it ("finetune")


def check_requirements(requirements: Sequence[Requirement]) -> None:
    """A one-line UserError naming the first requirement whose package is missing (nothing is imported)."""
    for req in requirements:
        try:
            found = importlib.util.find_spec(req.module) is not None
        except (ImportError, ValueError):  # a parent package missing, or a module set to None in sys.modules
            found = False
        if not found:
            raise UserError(
                f"{req.purpose} needs {req.module}, which is not installed; install it with: "
                f"pip install 'masklm[{req.extra}]'"
            )


@dataclass
class TaskData:
    """One file's examples and the model inputs built from them; `labelled` when they carry the targets."""

    path: Path
    examples: list[Example]
    features: list[Feature]
    labelled: bool


def _csv_cell(value: Any) -> Any:
    """A predictions value as a CSV cell: a list of tokens joined by spaces, another list or an object (a JSON
    line's field carried through) as JSON, anything else as it is."""
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return " ".join(value)
    if isinstance(value, list | dict):
        return json.dumps(value, ensure_ascii=False)
    return value


class Task(abc.ABC):
    """One fine-tuning task. Instances hold no run state: every method gets what it needs as arguments."""

    name: ClassVar[str]
    """What `masklm finetune --task` takes, and what a fine-tuned model records as its task."""
    architecture: ClassVar[str]
    """The masklm head the task trains (a `masklm.model.io.load_model` architecture name)."""
    claims_architecture: ClassVar[bool] = True
    """Whether a model saved with this head and no task name is this task's (False where the head is shared,
    as prompt-classification's MaskedLM is with pretraining)."""
    default_max_length: ClassVar[int] = 128
    """data.max_length when it is not set (tokens per feature, special tokens included)."""
    data_settings: ClassVar[tuple[str, ...]] = ()
    """The `data` settings the task reads besides max_length (`masklm finetune` refuses the others)."""
    output_formats: ClassVar[tuple[str, ...]] = (".jsonl", ".csv")
    """The file types `masklm predict --output` can write for this task."""
    lower_is_better: ClassVar[frozenset[str]] = frozenset({"loss"})
    """The metrics (of `metric_names`) where a lower value is better."""
    points_metrics: ClassVar[frozenset[str]] = frozenset()
    """The metrics already on a 0-100 scale (SQuAD's exact match and F1); the others are fractions."""

    # ------------------------------------------------------------------------------------------------
    # Reading and encoding

    @abc.abstractmethod
    def read(self, path: Path, settings: FinetuneDataConfig, labelled: bool) -> list[Example]:
        """The file's examples; with `labelled`, a UserError when the targets (labels, tags, answers) are missing."""

    def resolve_settings(self, settings: FinetuneDataConfig, examples: Sequence[Example]) -> None:
        """Fill in settings the data decides when they are unset (e.g. QA's version_2), in place."""
        return None  # nothing by default

    def check_training_data(
        self, settings: FinetuneDataConfig, examples: Sequence[Example], path: Path
    ) -> None:
        """A UserError when the training examples contradict a setting given explicitly (QA: unanswerable
        questions with data.version_2 false). Evaluation may still score other data."""
        return None  # nothing by default

    def label_set(
        self, examples: Sequence[Example], settings: FinetuneDataConfig, path: Path
    ) -> list[str] | None:
        """The head's labels in id order, from the training examples; None where the task has no label set."""
        return None

    @abc.abstractmethod
    def encode(
        self,
        tok: Any,
        examples: list[Example],
        settings: FinetuneDataConfig,
        labels: Sequence[str] | None,
        path: Path,
        labelled: bool,
    ) -> list[Feature]:
        """Model inputs for `examples`; with `labelled`, also the targets the loss needs."""

    def load(
        self,
        path: str | Path,
        tok: Any,
        settings: FinetuneDataConfig,
        labels: Sequence[str] | None,
        labelled: bool,
        examples: list[Example] | None = None,
    ) -> TaskData:
        """Read (unless `examples` were read already) and encode one file."""
        path = Path(path)
        if examples is None:
            examples = self.read(path, settings, labelled)
        return TaskData(
            path, examples, self.encode(tok, examples, settings, labels, path, labelled), labelled
        )

    def requirements(self, settings: FinetuneDataConfig, labels: Sequence[str] | None) -> list[Requirement]:
        """The optional packages that scoring these labels needs: finetune and evaluate check them
        (`check_requirements`) right after reading the labels, before any work."""
        return []

    # ------------------------------------------------------------------------------------------------
    # The model

    def check_model(self, model: nn.Module, settings: FinetuneDataConfig, model_path: str | Path) -> None:
        """Refuse a starting model whose head cannot be trained for these settings."""
        return None  # nothing by default

    def settings_from_model(
        self, model: nn.Module, labels: Sequence[str] | None, settings: FinetuneDataConfig
    ) -> None:
        """Settings a loaded fine-tuned model implies, in place (before the command line's overrides)."""
        return None  # nothing by default

    def check_fixed_settings(
        self, model: nn.Module, settings: FinetuneDataConfig, model_path: str | Path
    ) -> None:
        """After the command line's overrides (evaluate, predict): a UserError for a setting that the fine-tuned
        model fixes and the command line changed (a regressor's data.regression)."""
        return None  # nothing by default

    def describe(self, data: TaskData) -> str:
        """Extra text for the line that starts a run, after the example counts (e.g. QA's window count)."""
        return ""

    # ------------------------------------------------------------------------------------------------
    # Batches, forward and loss

    def feature_length(self, feature: Feature) -> int:
        """The length batches are bucketed by (and per-token outputs are cut to)."""
        return len(feature["input_ids"])

    def feature_tokens(self, feature: Feature) -> int:
        """The tokens the model reads for one feature (for tokens/s); its length unless it has several rows."""
        return self.feature_length(feature)

    def collate(self, features: Sequence[Feature], pad_id: int) -> Batch:
        """Features → a padded batch of CPU tensors."""
        return pad_batch(features, pad_id)

    def forward(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        """The head's logits for a batch."""
        return model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])

    @abc.abstractmethod
    def loss(
        self, logits: torch.Tensor, batch: Batch, settings: FinetuneDataConfig, reduction: str = "mean"
    ) -> torch.Tensor:
        """The loss of a batch with targets: its mean, or with reduction="sum" its sum over `loss_count` items."""

    def loss_count(self, batch: Batch) -> int:
        """How many items `loss(..., reduction="sum")` adds up (an evaluation loss is the mean over them)."""
        return int(batch["input_ids"].shape[0])

    def split_outputs(self, logits: torch.Tensor, features: Sequence[Feature]) -> list[torch.Tensor]:
        """A batch's logits back as one tensor per feature; per-token logits cut to the feature's length."""
        if logits.dim() == 3:
            return [logits[row, : self.feature_length(f)] for row, f in enumerate(features)]
        return [logits[row] for row in range(len(features))]

    # ------------------------------------------------------------------------------------------------
    # Predictions and metrics

    @abc.abstractmethod
    def decode(
        self,
        data: TaskData,
        outputs: Sequence[torch.Tensor],
        labels: Sequence[str] | None,
        settings: FinetuneDataConfig,
    ) -> list[Any]:
        """One prediction per example from the per-feature outputs (in feature order)."""

    @abc.abstractmethod
    def metric_names(self, settings: FinetuneDataConfig, labels: Sequence[str] | None) -> list[str]:
        """The validation metrics a run reports (what train.metric_for_best may name); the main one first."""

    def reported_metrics(
        self, settings: FinetuneDataConfig, labels: Sequence[str] | None, examples: Sequence[Example]
    ) -> list[str]:
        """`metric_names` as far as the validation `examples` report them (a metric of a kind of example the file
        does not hold is not computed); all of them by default."""
        return self.metric_names(settings, labels)

    @abc.abstractmethod
    def metrics(
        self,
        data: TaskData,
        predictions: Sequence[Any],
        labels: Sequence[str] | None,
        settings: FinetuneDataConfig,
    ) -> dict[str, float]:
        """The task's metrics (all of `metric_names` but "loss") for `predictions` against the gold in `data`."""

    @abc.abstractmethod
    def prediction_rows(
        self,
        data: TaskData,
        predictions: Sequence[Any],
        labels: Sequence[str] | None,
        settings: FinetuneDataConfig,
    ) -> list[Row]:
        """One output row per example, as `masklm predict` writes it."""

    # ------------------------------------------------------------------------------------------------
    # Serving (masklm serve: one HTTP request's inputs in, JSON answers out)

    request_help: ClassVar[str] = ""
    """What one input of a /v1/predict request looks like, as an error message says it."""

    def request_example(self, item: Any, settings: FinetuneDataConfig) -> Example:
        """The example one JSON input of a request stands for; a UserError (answered 400) when its shape is
        wrong or its text empty."""
        raise UserError(f"{self.name} models cannot answer requests")

    def answers(
        self,
        data: TaskData,
        outputs: Sequence[torch.Tensor],
        labels: Sequence[str] | None,
        settings: FinetuneDataConfig,
    ) -> list[dict[str, Any]]:
        """One JSON-able answer per example from the per-feature outputs (in feature order), with scores."""
        raise UserError(f"{self.name} models cannot answer requests")

    def feature_group(self, feature: Feature) -> Any:
        """Features of different groups are never collated into one batch (multiple choice: the number of
        choices); None for tasks whose features all collate together."""
        return None

    def check_output(self, output: Path) -> None:
        """A UserError when `output`'s file type is not one of `output_formats`."""
        if output.suffix.lower() not in self.output_formats:
            *first, last = self.output_formats
            kinds = f"{', '.join(first)} or {last}" if first else last
            raise UserError(f"--output {output}: write predictions as {kinds}")

    def check_writable(self, data: TaskData, labels: Sequence[str] | None, output: Path) -> None:
        """A UserError when `output`'s file type cannot hold the predictions for `data` as they are (a token with
        a tab in a CoNLL column file); `predict` asks before the model runs. Every type can by default."""
        return None

    def render(self, rows: list[Row], suffix: str) -> str:
        """The text of a predictions file of type `suffix` (one of `output_formats`): JSON lines or CSV."""
        if suffix == ".jsonl":
            return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        if suffix == ".csv":
            buf = io.StringIO(newline="")
            columns = list(dict.fromkeys(k for r in rows for k in r))  # JSON lines may differ in their keys
            writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n", restval="")
            writer.writeheader()
            for r in rows:
                writer.writerow({k: _csv_cell(v) for k, v in r.items()})
            return buf.getvalue()
        raise ValueError(f"{type(self).__name__} cannot write {suffix} files")
