"""Sentence (pair) classification and regression: one label (or score) per text or text pair.

    .csv / .tsv / .jsonl with columns data.text_column [, data.text_pair_column], data.label_column
    example {"text", "text_pair", "label"} -> feature {"input_ids", "token_type_ids", "labels"}

Labels are read as strings and get ids in sorted order (integer-looking ones numerically); with
data.regression they are numbers, the head has one output and the loss is MSE.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from masklm.errors import UserError
from masklm.tasks.base import Example, Row, Task, TaskData
from masklm.tasks.batching import Batch, Feature
from masklm.tasks.encoding import (
    INTEGER_LABEL,
    build_label_map,
    label_number,
    match_label,
    special_token_ids,
    truncate_longest_first,
)
from masklm.tasks.files import (
    header_hint,
    label_field,
    read_records,
    request_object,
    request_text,
    text_field,
)
from masklm.train import metrics as M
from masklm.utils import finite_number, log

if TYPE_CHECKING:
    from masklm.config import FinetuneDataConfig


def read_classification(
    path: str | Path,
    text_column: str = "text",
    text_pair_column: str | None = None,
    label_column: str | None = "label",
    require_label: bool = False,
) -> list[Example]:
    """Read a sentence (pair) classification / regression file.

    Returns one dict per row: {"text": str, "text_pair": str | None, "label": str | None}. Labels are kept as
    stripped strings (convert with `encode_labels` or `encode_float_labels`); an empty cell or JSON null gives
    None. A file without the label column is fine (prediction) unless `require_label`; `label_column` None
    reads no labels at all (prediction: whatever is in the file is ignored). Columns are the CSV/TSV header or
    the keys of the first JSONL object. TSV is read without quote handling, like the GLUE files.
    """
    path = Path(path)
    columns, records = read_records(path, keep_blank_rows=label_column is None)
    for column, setting in ((text_column, "text_column"), (text_pair_column, "text_pair_column")):
        if column is not None and column not in columns:
            raise UserError(
                f"{path}: has no column '{column}' (columns: {', '.join(columns)}); "
                f"pass --data.{setting} with one of them{header_hint(columns)}"
            )
    has_label = label_column is not None and label_column in columns
    if require_label and not has_label:
        raise UserError(
            f"{path}: has no label column '{label_column}' (columns: {', '.join(columns)}); "
            f"pass --data.label_column with one of them{header_hint(columns)}"
        )
    return [
        {
            "text": text_field(rec, text_column, path, line),
            "text_pair": text_field(rec, text_pair_column, path, line) if text_pair_column else None,
            "label": label_field(rec, label_column, path, line) if label_column and has_label else None,
            "line": line,
            # prediction: every column goes to the output
            **({"record": rec} if label_column is None else {}),
        }
        for line, rec in records
    ]


def encode_labels(examples: Sequence[Example], label_list: Sequence[str], path: str | Path) -> list[Example]:
    """Copies of `examples` with "label" replaced by its index in `label_list` (classification).

    A label that is not in `label_list` but spells the same number as one label there is that label ("1" for
    "1.0"). `path` is the file the examples came from, for the error messages.
    """
    ids = {label: i for i, label in enumerate(label_list)}
    out = []
    for n, ex in enumerate(examples, 1):
        label = ex["label"]
        if label is None:
            raise UserError(f"{_where(path, ex, n)} has no label; fill in its label or drop the row")
        k = ids.get(label)
        if k is None:
            k = match_label(label, label_list)  # the same number spelled otherwise: "1" for "1.0"
        if k is None:
            scores = looks_like_scores([*label_list, label])
            shown = list(label_list) if len(label_list) <= 12 else [*label_list[:12], "..."]
            raise UserError(
                f"{_where(path, ex, n)}: label '{label}' is not one of the model's labels {shown} (those of its "
                "training data); fix the label or drop the row, or fine-tune with examples of it"
                + ("; if the labels are scores, pass --data.regression true" if scores else "")
            )
        out.append({**ex, "label": k})
    return out


def _where(path: str | Path, example: Example, n: int) -> str:
    """How a message names an example: FILE:LINE where its line is known, else "FILE: example N"."""
    return f"{path}:{example['line']}" if example.get("line") else f"{path}: example {n}"


# Scores whose squared error overflows float32 (above 1.8e19) cannot train; far smaller ones already train badly
# from a head that starts near 0 (`scale_note`).
_LARGEST_SCORE = 1e19


def encode_float_labels(examples: Sequence[Example], path: str | Path) -> list[Example]:
    """Copies of `examples` with "label" parsed as a float (regression, e.g. STS-B similarity scores)."""
    out = []
    for n, ex in enumerate(examples, 1):
        label = ex["label"]
        if label is None:
            raise UserError(f"{_where(path, ex, n)} has no label; fill in its score or drop the row")
        value = finite_number(label)
        if value is None:
            raise UserError(
                f"{_where(path, ex, n)}: label '{label}' is not a finite number; regression needs numeric labels"
            )
        if abs(value) >= _LARGEST_SCORE:
            raise UserError(
                f"{_where(path, ex, n)}: the score {label} is too large to train on (its squared error overflows "
                "float32); scale the scores (divide them by a power of ten)"
            )
        out.append({**ex, "label": value})
    return out


def scale_note(examples: Sequence[Example], path: str | Path) -> None:
    """A note when regression scores are far from the scale a head starting near 0 learns well (largest
    magnitude above 1,000): targets around 1e6 trained to a correlation of 0.13, every prediction near 0."""
    values = [
        v for v in (finite_number(ex["label"]) for ex in examples if ex["label"] is not None) if v is not None
    ]
    if values and max(map(abs, values)) > 1000:
        log(
            f"note: the scores of {path} reach {max(values, key=abs):g}; a regression head starts near 0 and "
            "learns scores of order 1 best: scaling them (e.g. standardising) before fine-tuning trains better"
        )


def encode_classification(tok: Any, examples: Sequence[Example], max_length: int) -> list[Feature]:
    """ "[CLS] text [SEP]" or "[CLS] text [SEP] text_pair [SEP]" per example, at most `max_length` tokens.

    Pairs are truncated longest-first. "labels" (int or float) is included when the example's "label" is a
    number, i.e. after `encode_labels` / `encode_float_labels`; examples with label None get no "labels".
    """
    cls, sep, _ = special_token_ids(tok)
    any_pair = any(ex.get("text_pair") is not None for ex in examples)
    if max_length < (5 if any_pair else 3):
        raise UserError(f"max_length {max_length} leaves no room for text after the special tokens; raise it")
    firsts = tok.encode_batch([ex["text"] for ex in examples], add_special_tokens=False) if examples else []
    pair_rows = [i for i, ex in enumerate(examples) if ex.get("text_pair") is not None]
    seconds = (
        tok.encode_batch([examples[i]["text_pair"] for i in pair_rows], add_special_tokens=False)
        if pair_rows
        else []
    )
    second_of = dict(zip(pair_rows, seconds))
    features = []
    for i, ex in enumerate(examples):
        a = firsts[i].ids
        if i in second_of:
            a, b = truncate_longest_first(a, second_of[i].ids, max_length - 3)
            input_ids = [cls, *a, sep, *b, sep]
            token_type_ids = [0] * (len(a) + 2) + [1] * (len(b) + 1)
        else:
            input_ids = [cls, *a[: max_length - 2], sep]
            token_type_ids = [0] * len(input_ids)
        feature: Feature = {"input_ids": input_ids, "token_type_ids": token_type_ids}
        label = ex.get("label")
        if isinstance(label, str):
            raise TypeError(
                "example labels are still strings; convert them with encode_labels / encode_float_labels"
            )
        if label is not None:
            feature["labels"] = label
        features.append(feature)
    return features


def class_labels(examples: Sequence[Example], path: str | Path, hint: str = "") -> list[str]:
    """The examples' labels in id order (`build_label_map`); a UserError, ending in `hint`, when there is only one."""
    labels = build_label_map(ex["label"] for ex in examples)
    if len(labels) < 2:
        raise UserError(
            f"{path}: every example has the label '{labels[0]}'; classification needs at least two labels{hint}"
        )
    if looks_like_scores(labels):
        shown = ", ".join(labels[:4]) + (", ..." if len(labels) > 4 else "")
        log(
            f"note: the {len(labels)} labels of {path} are numbers with fractions ({shown}), each trained as a "
            f"class; if they are scores, pass --data.regression true"
        )
    for label in labels:
        if label.lower() in MISSING_MARKS:
            count = sum(ex["label"] == label for ex in examples)
            log(
                f"note: {count} label(s) of {path} are '{label}', which spreadsheets and R write for a missing "
                "value; it is trained as a class of its own (leave the cell empty where there is no label)"
            )
    return labels


# How tools write a missing value in a text cell (NaN itself is no label: `label_field`).
MISSING_MARKS = ("na", "n/a", "#n/a", "null", "none", "nil", "<na>")


def looks_like_scores(labels: Sequence[str]) -> bool:
    """Whether classification labels look like a regression target: every one a number, one with a fraction."""
    numbers = [label_number(label) for label in labels]
    return all(n is not None for n in numbers) and any(
        not float(n).is_integer() for n in numbers if n is not None
    )


def label_value(label: str) -> int | str:
    """A label name as a predictions file writes it: an integer spelled as Python writes it ("1", "-2") as that
    number, any other label as its text ("01", "+1" and "1.0" keep their spelling: 1 would be another label)."""
    if INTEGER_LABEL.fullmatch(label) and str(int(label)) == label:
        return int(label)
    return label


def free_column(name: str, taken: set[str | None]) -> str:
    """`name`, or "name_1", "name_2", ...: the first that is not among the `taken` column names."""
    candidate, n = name, 0
    while candidate in taken:
        n += 1
        candidate = f"{name}_{n}"
    return candidate


class ClassificationTask(Task):
    """One label per text (pair): cross-entropy, accuracy / macro F1 / MCC; or a score: MSE, Pearson / Spearman."""

    name = "classification"
    architecture = "SequenceClassification"
    data_settings = ("text_column", "text_pair_column", "label_column", "regression")
    lower_is_better = frozenset({"loss", "mse"})

    def read(self, path: Path, settings: FinetuneDataConfig, labelled: bool) -> list[Example]:
        s = settings
        label_column = s.label_column if labelled else None  # predict ignores labels, even malformed ones
        return read_classification(
            path, s.text_column, s.text_pair_column, label_column, require_label=labelled
        )

    def label_set(
        self, examples: Sequence[Example], settings: FinetuneDataConfig, path: Path
    ) -> list[str] | None:
        if settings.prompt or settings.label_words:
            raise UserError(
                "--data.prompt and --data.label_words are settings of --task prompt-classification; use that task "
                "or leave them out"
            )
        if settings.regression:
            scale_note(examples, path)
            return None
        return class_labels(examples, path, " (or --data.regression true for numeric scores)")

    def encode(
        self,
        tok: Any,
        examples: list[Example],
        settings: FinetuneDataConfig,
        labels: Sequence[str] | None,
        path: Path,
        labelled: bool,
    ) -> list[Feature]:
        assert settings.max_length is not None
        if not labelled:
            examples = [{**ex, "label": None} for ex in examples]
        elif settings.regression:
            examples = encode_float_labels(examples, path)
        else:
            examples = encode_labels(examples, labels or [], path)
        return encode_classification(tok, examples, settings.max_length)

    def check_model(self, model: nn.Module, settings: FinetuneDataConfig, model_path: str | Path) -> None:
        if settings.regression and model.num_labels != 1:
            raise UserError(
                f"{model_path} has a classifier for {model.num_labels} labels; regression needs one output: "
                "start from the pretrained encoder instead"
            )

    def settings_from_model(
        self, model: nn.Module, labels: Sequence[str] | None, settings: FinetuneDataConfig
    ) -> None:
        # A one-output classifier scores (classification needs two labels or more), with or without a label
        # name: a Hugging Face regression folder (problem_type "regression") names its output "LABEL_0".
        settings.regression = model.num_labels == 1

    def check_fixed_settings(
        self, model: nn.Module, settings: FinetuneDataConfig, model_path: str | Path
    ) -> None:
        regressor = model.num_labels == 1
        if settings.regression != regressor:
            kind = "a regressor (one output)" if regressor else f"a classifier for {model.num_labels} labels"
            again = "without it for labels" if regressor else "with --data.regression true for scores"
            raise UserError(
                f"{model_path} is {kind}, so data.regression is {str(regressor).lower()} and cannot change after "
                f"fine-tuning; leave --data.regression out (fine-tune again {again})"
            )

    def loss(
        self, logits: torch.Tensor, batch: Batch, settings: FinetuneDataConfig, reduction: str = "mean"
    ) -> torch.Tensor:
        """Cross-entropy over the labels, or MSE on the single output for regression."""
        logits = logits.float()
        if settings.regression:
            return F.mse_loss(logits.squeeze(-1), batch["labels"].float(), reduction=reduction)
        return F.cross_entropy(logits, batch["labels"], reduction=reduction)

    def decode(
        self,
        data: TaskData,
        outputs: Sequence[torch.Tensor],
        labels: Sequence[str] | None,
        settings: FinetuneDataConfig,
    ) -> list[Any]:
        """(label id, probability) per example, or the score (a float) for regression."""
        if settings.regression:
            return [float(o.reshape(-1)[0]) for o in outputs]
        out = []
        for o in outputs:
            probs = torch.softmax(o, -1)
            k = int(probs.argmax())
            out.append((k, float(probs[k])))
        return out

    def metric_names(self, settings: FinetuneDataConfig, labels: Sequence[str] | None) -> list[str]:
        if settings.regression:
            return ["pearson", "spearman", "mse", "loss"]
        return ["accuracy", "macro_f1", "mcc", *(["f1"] if len(labels or ()) == 2 else []), "loss"]

    def metrics(
        self,
        data: TaskData,
        predictions: Sequence[Any],
        labels: Sequence[str] | None,
        settings: FinetuneDataConfig,
    ) -> dict[str, float]:
        gold = [f["labels"] for f in data.features]
        if settings.regression:
            return M.regression_metrics(predictions, gold)
        return M.classification_metrics([p[0] for p in predictions], gold, len(labels or []))

    def prediction_rows(
        self,
        data: TaskData,
        predictions: Sequence[Any],
        labels: Sequence[str] | None,
        settings: FinetuneDataConfig,
    ) -> list[Row]:
        """Every input column, the predicted label (or score) in the label column, and the label's probability in
        "score" (or, when the input has a column of that name, "score_1", "score_2", ...: none is overwritten)."""
        s = settings
        taken = {s.text_column, s.text_pair_column, s.label_column}
        taken |= {key for ex in data.examples for key in ex.get("record", ())}
        score = free_column("score", taken)
        rows = []
        for ex, p in zip(data.examples, predictions):
            row: Row = {**ex.get("record", {}), s.text_column: ex["text"]}
            if s.text_pair_column:
                row[s.text_pair_column] = ex["text_pair"]
            if s.regression:
                row[s.label_column] = p
            else:
                row[s.label_column] = label_value((labels or [])[p[0]])
                row[score] = round(p[1], 6)
            rows.append(row)
        return rows

    request_help = '"text" or {"text": ..., "text_pair": ...}'

    def request_example(self, item: Any, settings: FinetuneDataConfig) -> Example:
        """A string, or {"text", "text_pair"} for a model fine-tuned on pairs."""
        if isinstance(item, str):
            return {"text": request_text(item, "text"), "text_pair": None, "label": None}
        rec = request_object(item, ("text",), ("text_pair",), '"text" or {"text": ..., "text_pair": ...}')
        pair = rec.get("text_pair")
        return {
            "text": request_text(rec["text"], "text"),
            "text_pair": None if pair is None else request_text(pair, "text_pair"),
            "label": None,
        }

    def answers(
        self,
        data: TaskData,
        outputs: Sequence[torch.Tensor],
        labels: Sequence[str] | None,
        settings: FinetuneDataConfig,
    ) -> list[dict[str, Any]]:
        """{"label", "score", "scores": {label: probability}} per example, labels by falling probability;
        {"score": value} for regression."""
        if settings.regression:
            return [{"score": float(o.reshape(-1)[0])} for o in outputs]
        out = []
        for o in outputs:
            probs = torch.softmax(o.float(), -1).tolist()
            ranked = sorted(zip(labels or [], probs), key=lambda lp: -lp[1])
            out.append({"label": ranked[0][0], "score": ranked[0][1], "scores": dict(ranked)})
        return out
