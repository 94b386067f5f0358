"""Multiple choice (SWAG): pick the right ending of a context among a fixed number of candidates.

    .jsonl {"context": str, "endings": [str, ...], "label": int}
    .csv / .tsv / .jsonl in the SWAG layout: sent1, sent2, ending0, ending1, ..., label
    example {"context", "endings", "label"} -> feature {"input_ids": [[...] per choice], "token_type_ids", "labels"}

Each choice is encoded as "[CLS] context [SEP] ending [SEP]"; the model scores every choice with one number
(`MultipleChoice`: BERT's pooler and a linear layer to 1, as transformers' BertForMultipleChoice) and the loss is
cross-entropy over the choices. In the SWAG layout the context is sent1 and each choice is sent2 + " " + ending,
as in transformers' run_swag example. A label is the index of the right ending.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from masklm.config import ModelConfig
from masklm.errors import UserError
from masklm.model.base import Head, register_head
from masklm.model.encoder import Encoder, init_weights
from masklm.tasks.base import Example, Row, Task, TaskData
from masklm.tasks.batching import Batch, Feature, pad_batch
from masklm.tasks.encoding import INTEGER_LABEL, special_token_ids, truncate_longest_first
from masklm.tasks.files import Record, label_field, read_records, request_object, request_text, text_field
from masklm.train import metrics as M

if TYPE_CHECKING:
    from masklm.config import FinetuneDataConfig

# ----------------------------------------------------------------------------------------------------
# The head


@register_head
class MultipleChoice(Head):
    """BERT's multiple-choice head: (batch, choices, tokens) inputs → one score per choice, (batch, choices).

    The choices are run through the encoder as batch * choices rows; each row's [CLS] goes through BERT's pooler
    (dense + tanh), dropout and a linear layer to one score.
    """

    architecture = "MultipleChoice"
    hf_class = "BertForMultipleChoice"
    hf_auto_class = "AutoModelForMultipleChoice"
    pipeline_tag = "multiple-choice"
    hf_modules = {"pooler": "bert.pooler.dense", "classifier": "classifier"}
    input_axes = ("batch", "choices", "sequence")

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.pooler = nn.Linear(cfg.hidden_size, cfg.hidden_size, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)
        self.classifier = nn.Linear(cfg.hidden_size, 1)
        init_weights(self, cfg.initializer_range)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        B, C, T = input_ids.shape
        rows = [x if x is None else x.reshape(B * C, T) for x in (input_ids, attention_mask, token_type_ids)]
        h = self.encoder(*rows)  # (B*C, T, H)
        pooled = torch.tanh(self.pooler(h[:, 0]))  # (B*C, H) from each choice's [CLS]
        return self.classifier(self.dropout(pooled)).view(B, C)

    @classmethod
    def example_inputs(
        cls, cfg: ModelConfig, batch: int = 3, length: int = 13, seed: int = 0
    ) -> dict[str, torch.Tensor]:
        """The base class's rows regrouped as (batch, choices, length), with 3 or 4 choices by `seed`.

        Never 2 choices: the ONNX trace uses a batch of 2, and equal sizes would tie the two axes together.
        """
        choices = 3 + seed % 2
        rows = super().example_inputs(cfg, batch * choices, length, seed)
        return {k: v.view(batch, choices, -1) for k, v in rows.items()}

    @classmethod
    def hf_usage(cls) -> list[str]:
        return [
            "```python",
            "from transformers import AutoTokenizer, AutoModelForMultipleChoice",
            'tok = AutoTokenizer.from_pretrained("PATH/TO/THIS/FOLDER")',
            'model = AutoModelForMultipleChoice.from_pretrained("PATH/TO/THIS/FOLDER")',
            'context, endings = "she opened the door", ["and walked in .", "and the sky ate it ."]',
            'enc = tok([context] * len(endings), endings, padding=True, return_tensors="pt")',
            "scores = model(**{k: v.unsqueeze(0) for k, v in enc.items()}).logits.softmax(-1)  # (1, choices)",
            "```",
        ]

    @classmethod
    def onnx_usage(cls) -> list[str]:
        return [
            "```python",
            "import numpy as np, onnxruntime, tokenizers",
            'tok = tokenizers.Tokenizer.from_file("tokenizer.json")',
            "tok.enable_padding()  # the choices of one example share a length",
            'session = onnxruntime.InferenceSession("model.onnx")',
            'context, endings = "she opened the door", ["and walked in .", "and the sky ate it ."]',
            "enc = tok.encode_batch([(context, e) for e in endings])",
            'feed = {"input_ids": [[e.ids for e in enc]], "attention_mask": [[e.attention_mask for e in enc]],',
            '        "token_type_ids": [[e.type_ids for e in enc]]}',
            "scores = session.run(None, {k: np.array(v, dtype=np.int64) for k, v in feed.items()})[0]  # (1, choices)",
            "```",
        ]


# ----------------------------------------------------------------------------------------------------
# Reading


def read_multiple_choice(path: str | Path, labelled: bool = False) -> list[Example]:
    """Read a multiple-choice file: one {"context": str, "endings": [str, ...], "label": int | None} per row.

    The layout is found from the columns (the CSV/TSV header or the first JSON object's keys): "endings" for
    {"context", "endings", "label"} records, "ending0" for SWAG's sent1, sent2 (optional), ending0..endingN, label.
    Every example of a file has the same number of endings (at least two). Labels are ending indexes; with
    `labelled` every example needs one, otherwise any labels there are ignored (prediction).
    """
    path = Path(path)
    columns, records = read_records(path)
    if "endings" in columns:
        parse = _context_endings
    elif "ending0" in columns:
        if "sent1" not in columns:
            raise UserError(
                f"{path}: has no column 'sent1' (columns: {', '.join(columns)}); the SWAG layout is "
                "sent1, sent2, ending0, ending1, ..., label"
            )
        _check_ending_columns(columns, path)
        parse = _swag
    else:
        raise UserError(
            f"{path}: has neither an 'endings' nor an 'ending0' column (columns: {', '.join(columns)}); write "
            '{"context", "endings", "label"} objects or the SWAG columns sent1, sent2, ending0, ending1, ..., label'
        )
    examples: list[Example] = []
    first_line = 0
    for line, rec in records:
        context, endings = parse(rec, path, line)
        if not examples:
            first_line = line
            if len(endings) < 2:
                raise UserError(
                    f"{path}:{line}: has {len(endings)} ending(s); multiple choice needs at least two per example"
                )
        elif len(endings) != len(examples[0]["endings"]):
            raise UserError(
                f"{path}:{line}: has {len(endings)} endings, line {first_line} has {len(examples[0]['endings'])}; "
                "give every example of a file the same number of endings"
            )
        label = _label(rec, path, line, len(endings)) if labelled else None
        examples.append({"context": context, "endings": endings, "label": label})
    return examples


def _context_endings(rec: Record, path: Path, line: int) -> tuple[str, list[str]]:
    """(context, endings) of a {"context", "endings"} record."""
    endings = rec.get("endings")
    if not isinstance(endings, list) or not all(isinstance(e, str) for e in endings):
        raise UserError(
            f"{path}:{line}: 'endings' is {type(endings).__name__}, expected a list of strings; "
            'write "endings": ["...", "..."]'
        )
    blank = next((i for i, e in enumerate(endings) if not e.strip()), None)
    if blank is not None:  # (as in the SWAG layout: a CSV of the predictions could not hold it)
        raise UserError(f"{path}:{line}: ending {blank} is blank; give every ending some text")
    return text_field(rec, "context", path, line), endings


def _check_ending_columns(columns: Sequence[str], path: Path) -> None:
    """Refuse SWAG ending columns with a gap (ending0, ending1, ending3): the endings are read from ending0 up to
    the first missing number, so the columns after the gap would be left out without a word."""
    count = 0
    while f"ending{count}" in columns:
        count += 1
    read = {f"ending{i}" for i in range(count)}
    beyond = [c for c in columns if re.fullmatch(r"ending[0-9]+", c) and c not in read]
    if beyond:
        raise UserError(
            f"{path}: has column {beyond[0]} but no ending{count}; number the ending columns ending0, ending1, ... "
            f"without a gap (rename {beyond[0]} to ending{count}, or drop it)"
        )


def _swag(rec: Record, path: Path, line: int) -> tuple[str, list[str]]:
    """(context, endings) of a SWAG record: sent1, and sent2 + " " + ending_i for ending0, ending1, ...

    A blank ending is refused: in a CSV it is how a row with fewer endings than the header reads, and it would
    be scored as one more choice (sent2 alone)."""
    start = text_field(rec, "sent2", path, line) if "sent2" in rec else ""
    count = 0
    while f"ending{count}" in rec:
        count += 1
    endings = [text_field(rec, f"ending{i}", path, line) for i in range(count)]
    blank = next((i for i, e in enumerate(endings) if not e.strip()), None)
    if blank is not None:
        raise UserError(
            f"{path}:{line}: ending{blank} is blank; give every example of a file the same number of endings, "
            "each with text (drop the column if no example has that ending)"
        )
    return text_field(rec, "sent1", path, line), [f"{start} {e}" if start else e for e in endings]


def _label(rec: Record, path: Path, line: int, choices: int) -> int:
    """The index of the right ending; a UserError when it is missing, not an integer or out of range."""
    label = label_field(rec, "label", path, line)
    fix = f"write the index of the right ending, 0 to {choices - 1}"
    if label is None:
        raise UserError(f"{path}:{line}: has no label; {fix}")
    if not INTEGER_LABEL.fullmatch(label):
        raise UserError(f"{path}:{line}: label '{label}' is not an ending index; {fix}")
    if not 0 <= int(label) < choices:
        raise UserError(f"{path}:{line}: label {label} is out of range for {choices} endings; {fix}")
    return int(label)


# ----------------------------------------------------------------------------------------------------
# Encoding and batches


def encode_multiple_choice(tok: Any, examples: Sequence[Example], max_length: int) -> list[Feature]:
    """ "[CLS] context [SEP] ending [SEP]" per choice, each at most `max_length` tokens (longest-first).

    "labels" is included when the example's "label" is not None.
    """
    cls, sep, _ = special_token_ids(tok)
    contexts = tok.encode_batch([ex["context"] for ex in examples], add_special_tokens=False)
    flat = [e for ex in examples for e in ex["endings"]]
    endings = iter(tok.encode_batch(flat, add_special_tokens=False) if flat else [])
    features = []
    for ex, context in zip(examples, contexts):
        input_ids, token_type_ids = [], []
        for _ in ex["endings"]:
            a, b = truncate_longest_first(context.ids, next(endings).ids, max_length - 3)
            input_ids.append([cls, *a, sep, *b, sep])
            token_type_ids.append([0] * (len(a) + 2) + [1] * (len(b) + 1))
        feature: Feature = {"input_ids": input_ids, "token_type_ids": token_type_ids}
        if ex["label"] is not None:
            feature["labels"] = ex["label"]
        features.append(feature)
    return features


def collate_choices(features: Sequence[Feature], pad_id: int) -> Batch:
    """Features → input_ids / token_type_ids / attention_mask of shape (B, C, T), padded to the longest choice;
    "labels" (B,) when the features have them."""
    choices = len(features[0]["input_ids"])
    if any(len(f["input_ids"]) != choices for f in features):
        raise ValueError("every feature of a batch must have the same number of choices")
    rows = [
        {"input_ids": ids, "token_type_ids": types}
        for f in features
        for ids, types in zip(f["input_ids"], f["token_type_ids"])
    ]
    batch = {k: v.view(len(features), choices, -1) for k, v in pad_batch(rows, pad_id).items()}
    if "labels" in features[0]:
        batch["labels"] = torch.tensor([f["labels"] for f in features], dtype=torch.long)
    return batch


# ----------------------------------------------------------------------------------------------------
# The task


class MultipleChoiceTask(Task):
    """One right ending per context among C candidates: cross-entropy over the choices, accuracy."""

    name = "multiple-choice"
    architecture = MultipleChoice.architecture

    def read(self, path: Path, settings: FinetuneDataConfig, labelled: bool) -> list[Example]:
        return read_multiple_choice(path, labelled)

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
        return encode_multiple_choice(tok, examples, settings.max_length)

    def describe(self, data: TaskData) -> str:
        return f" | {len(data.examples[0]['endings'])} choices" if data.examples else ""

    def feature_length(self, feature: Feature) -> int:
        """The longest choice: what the batch is padded to."""
        return max(len(ids) for ids in feature["input_ids"])

    def feature_tokens(self, feature: Feature) -> int:
        """Every choice is a row of its own: the tokens of all of them."""
        return sum(len(ids) for ids in feature["input_ids"])

    def collate(self, features: Sequence[Feature], pad_id: int) -> Batch:
        return collate_choices(features, pad_id)

    def loss(
        self, logits: torch.Tensor, batch: Batch, settings: FinetuneDataConfig, reduction: str = "mean"
    ) -> torch.Tensor:
        """Cross-entropy over the choices' scores (B, C) against the right ending's index."""
        return F.cross_entropy(logits.float(), batch["labels"], reduction=reduction)

    def decode(
        self,
        data: TaskData,
        outputs: Sequence[torch.Tensor],
        labels: Sequence[str] | None,
        settings: FinetuneDataConfig,
    ) -> list[Any]:
        """(chosen index, softmax probability of every choice) per example."""
        out = []
        for o in outputs:
            probs = torch.softmax(o.float(), -1)
            out.append((int(probs.argmax()), [float(p) for p in probs]))
        return out

    def metric_names(self, settings: FinetuneDataConfig, labels: Sequence[str] | None) -> list[str]:
        return ["accuracy", "loss"]

    def metrics(
        self,
        data: TaskData,
        predictions: Sequence[Any],
        labels: Sequence[str] | None,
        settings: FinetuneDataConfig,
    ) -> dict[str, float]:
        return {"accuracy": M.accuracy([p[0] for p in predictions], [f["labels"] for f in data.features])}

    def prediction_rows(
        self,
        data: TaskData,
        predictions: Sequence[Any],
        labels: Sequence[str] | None,
        settings: FinetuneDataConfig,
    ) -> list[Row]:
        """The context and endings, the chosen ending's index as "label" and every choice's probability."""
        return [
            {
                "context": ex["context"],
                "endings": ex["endings"],
                "label": index,
                "scores": [round(p, 6) for p in probs],
            }
            for ex, (index, probs) in zip(data.examples, predictions)
        ]

    def render(self, rows: list[Row], suffix: str) -> str:
        """JSON lines as the rows are; CSV in the SWAG layout (sent1, sent2, ending0.., label) plus score0..,
        so that `masklm evaluate` reads either back."""
        if suffix != ".csv":
            return super().render(rows, suffix)
        flat = []
        for r in rows:
            row: Row = {"sent1": r["context"], "sent2": ""}
            row.update({f"ending{i}": e for i, e in enumerate(r["endings"])})
            row["label"] = r["label"]
            row.update({f"score{i}": s for i, s in enumerate(r["scores"])})
            flat.append(row)
        return super().render(flat, suffix)

    request_help = '{"context": ..., "endings": [..., ...]}'

    def request_example(self, item: Any, settings: FinetuneDataConfig) -> Example:
        """{"context", "endings"}: text and a list of at least two texts."""
        rec = request_object(item, ("context", "endings"), (), self.request_help)
        endings = rec["endings"]
        if not isinstance(endings, list) or len(endings) < 2:
            raise UserError(f"'endings' must be a list of at least two strings; expected {self.request_help}")
        return {
            "context": request_text(rec["context"], "context"),
            "endings": [request_text(e, f"endings[{i}]") for i, e in enumerate(endings)],
            "label": None,
        }

    def answers(
        self,
        data: TaskData,
        outputs: Sequence[torch.Tensor],
        labels: Sequence[str] | None,
        settings: FinetuneDataConfig,
    ) -> list[dict[str, Any]]:
        """{"choice": the chosen ending's index, "scores": every ending's probability} per example."""
        return [
            {"choice": index, "scores": probs}
            for index, probs in self.decode(data, outputs, labels, settings)
        ]

    def feature_group(self, feature: Feature) -> Any:
        """The number of choices: a batch holds examples with as many endings each."""
        return len(feature["input_ids"])
