"""Extractive question answering (SQuAD v1.1 / v2.0): the answer is a span of the context.

    SQuAD .json (nested) or .jsonl {"id", "question", "context", "answers": {"text", "answer_start"}}
    example -> one feature per context window {"input_ids", "token_type_ids", "example_index", "offsets",
               "start_positions", "end_positions"}

Long contexts are cut into overlapping windows (data.doc_stride); the head gives a start and an end logit per
token; the best span over all of a question's windows is the answer ("" for no answer with SQuAD v2).
"""

from __future__ import annotations

import bisect
import json
import math
import unicodedata
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from masklm.errors import UserError
from masklm.tasks.base import Example, Row, Task, TaskData
from masklm.tasks.batching import Batch, Feature
from masklm.tasks.encoding import special_token_ids
from masklm.tasks.files import read_records, read_text, request_object, request_text
from masklm.train import metrics as M

if TYPE_CHECKING:
    from masklm.config import FinetuneDataConfig


# ----------------------------------------------------------------------------------------------------
# Reading


def read_squad(path: str | Path, answers: bool = True) -> list[Example]:
    """Read SQuAD v1.1 / v2.0 question answering data.

    .json: the official nested layout {"data": [{"paragraphs": [{"context", "qas": [...]}]}]}.
    .jsonl: one flat object per line {"id", "question", "context", "answers": {"text": [...],
    "answer_start": [...]}} (the Hugging Face datasets layout; a list of {"text", "answer_start"} works too).

    Returns {"id", "question", "context", "answers": {"text": [...], "answer_start": [...]}, "is_impossible"}.
    "is_impossible" is the file's flag where given, else true when an "answers" list is present and empty.
    Question ids must be unique, and every answer must be found in the context at its answer_start.
    `answers` False (prediction): the file's answers and is_impossible flags are not read, so not checked either.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        _, records = read_records(path)
        raw = [(rec, f"{path}:{line}") for line, rec in records]
    elif suffix == ".json":
        raw = _squad_nested(path)
    else:
        raise UserError(f"{path}: unsupported file type '{suffix}'; SQuAD data must be .json or .jsonl")
    examples = []
    seen: set[str] = set()
    for qa, where in raw:
        examples.append(_squad_example(qa, where, seen, answers))
    if not examples:
        raise UserError(f"{path}: has no questions; check that it is SQuAD data")
    return examples


def _nfc(text: str) -> str:
    return unicodedata.normalize("NFC", text)


def _squad_example(qa: dict[str, Any], where: str, seen: set[str], answers: bool = True) -> Example:
    """One question of a SQuAD file, checked: a new id (added to `seen`), question and context text, answers
    found in the context (without `answers`: none read)."""
    qid = qa.get("id")
    if not isinstance(qid, str | int) or isinstance(qid, bool) or str(qid) == "":
        raise UserError(f"{where}: a question has no 'id'; give every question a unique id")
    qid = str(qid)
    question, context = qa.get("question"), qa.get("context")
    if not isinstance(question, str) or not isinstance(context, str):
        raise UserError(
            f"{where}: question id {qid} has no 'question' or 'context' text; give both as strings"
        )
    if qid in seen:
        raise UserError(f"{where}: question id {qid} appears twice; question ids must be unique")
    seen.add(qid)
    if not answers:
        none: dict[str, list] = {"text": [], "answer_start": []}
        return {"id": qid, "question": question, "context": context, "answers": none, "is_impossible": False}
    texts, starts = _squad_answers(qa.get("answers"), qid, where)
    for text, start in zip(texts, starts):
        if context[start : start + len(text)] != text:
            if _nfc(text) in _nfc(context) and text not in context:
                raise UserError(
                    f"{where}: answer {text!r} of question id {qid} and its context are in different Unicode "
                    "forms (one writes an accent as part of its letter, NFC, the other as a character of its own, "
                    "NFD); write both in one form, e.g. unicodedata.normalize('NFC', ...), and answer_start with it"
                )
            raise UserError(
                f"{where}: answer {text!r} of question id {qid} is not at answer_start {start} in its context "
                f"(found {context[start : start + len(text)]!r}); fix answer_start"
            )
    impossible = qa.get("is_impossible")
    if impossible is None:
        impossible = "answers" in qa and not texts
    elif not isinstance(impossible, bool):  # the string "False" would read as true
        raise UserError(
            f"{where}: question id {qid} has is_impossible {impossible!r}; write it as a JSON boolean, "
            "true or false (no quotes)"
        )
    if impossible and texts:
        raise UserError(
            f"{where}: question id {qid} is marked is_impossible but has answers; "
            "move them to 'plausible_answers' or set is_impossible to false"
        )
    return {
        "id": qid,
        "question": question,
        "context": context,
        "answers": {"text": texts, "answer_start": starts},
        "is_impossible": bool(impossible),
    }


def _squad_nested(path: Path) -> list[tuple[dict[str, Any], str]]:
    try:
        doc = json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise UserError(f"{path}:{e.lineno}: not valid JSON ({e.msg}); fix the file or use .jsonl") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
        raise UserError(f"{path}: no top-level 'data' list; SQuAD .json files look like {{\"data\": [...]}}")
    out = []
    for a, article in enumerate(doc["data"]):
        paragraphs = article.get("paragraphs") if isinstance(article, dict) else None
        if not isinstance(paragraphs, list):
            raise UserError(f"{path}: data[{a}] has no 'paragraphs' list; check the SQuAD layout")
        for p, para in enumerate(paragraphs):
            where = f"{path} (data[{a}].paragraphs[{p}])"
            if not isinstance(para, dict) or not isinstance(para.get("qas"), list):
                raise UserError(f"{where}: has no 'qas' list; check the SQuAD layout")
            for qa in para["qas"]:
                if not isinstance(qa, dict):
                    raise UserError(f"{where}: an entry of 'qas' is not an object; check the SQuAD layout")
                out.append(({**qa, "context": para.get("context")}, where))
    return out


def _squad_answers(answers: Any, qid: str, where: str) -> tuple[list[str], list[int]]:
    if answers is None:
        return [], []
    if isinstance(answers, dict):
        texts, starts = answers.get("text"), answers.get("answer_start")
    elif isinstance(answers, list) and all(isinstance(a, dict) for a in answers):
        texts = [a.get("text") for a in answers]
        starts = [a.get("answer_start") for a in answers]
    else:
        texts = starts = None
    if isinstance(starts, list):  # 23.0, as pandas writes an integer column: the offset 23
        starts = [int(s) if isinstance(s, float) and s.is_integer() else s for s in starts]
    ok = (
        isinstance(texts, list)
        and isinstance(starts, list)
        and len(texts) == len(starts)
        and all(isinstance(t, str) for t in texts)
        and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in starts)
    )
    if not ok:
        raise UserError(
            f"{where}: question id {qid} has malformed 'answers'; "
            'use [{"text": str, "answer_start": int}, ...] or {"text": [...], "answer_start": [...]}'
        )
    return list(texts), list(starts)


# ----------------------------------------------------------------------------------------------------
# Encoding


def encode_qa(
    tok: Any,
    examples: Sequence[Example],
    max_length: int = 384,
    doc_stride: int = 128,
    train: bool = True,
    max_question_length: int = 64,
) -> list[Feature]:
    """ "[CLS] question [SEP] context-window [SEP]" features, several per example when the context is long.

    The question keeps its first `max_question_length` tokens. The context is cut into windows of
    `room = max_length - len(question) - 3` tokens; consecutive windows overlap by `doc_stride` tokens (the
    Hugging Face convention), so window k starts at context token k * (room - doc_stride).

    Each feature: {"input_ids", "token_type_ids", "example_index", "offsets"}, where offsets[i] is the
    (start, end) character span in the context of token i, or None for question and special tokens. With
    `train`, also "start_positions"/"end_positions": the first answer's first and last token in this window,
    or 0/0 ([CLS]) when the window does not hold the whole answer or the question is unanswerable.
    """
    cls, sep, _ = special_token_ids(tok)
    if doc_stride < 0:
        raise UserError(f"doc_stride must be >= 0, got {doc_stride}")
    if not examples:
        return []
    questions = tok.encode_batch([ex["question"] for ex in examples], add_special_tokens=False)
    contexts = tok.encode_batch([ex["context"] for ex in examples], add_special_tokens=False)
    features: list[Feature] = []
    for index, (ex, q_enc, c_enc) in enumerate(zip(examples, questions, contexts)):
        q_ids = q_enc.ids[:max_question_length]
        c_ids, c_offsets = c_enc.ids, [tuple(o) for o in c_enc.offsets]
        room = max_length - len(q_ids) - 3
        if room < 1 or (len(c_ids) > room and room <= doc_stride):
            raise UserError(
                f"max_length {max_length} leaves {room} context tokens per window after question id {ex['id']} "
                f"({len(q_ids)} tokens) and 3 special tokens, not more than doc_stride {doc_stride}; "
                "raise max_length or lower doc_stride / max_question_length"
            )
        span = _answer_token_span(ex, c_offsets) if train else None
        head = len(q_ids) + 2  # [CLS] question [SEP]
        start = 0
        while True:
            end = min(start + room, len(c_ids))
            feature: Feature = {
                "input_ids": [cls, *q_ids, sep, *c_ids[start:end], sep],
                "token_type_ids": [0] * head + [1] * (end - start + 1),
                "example_index": index,
                "offsets": [None] * head + c_offsets[start:end] + [None],
            }
            if train:
                if span is not None and start <= span[0] and span[1] < end:
                    feature["start_positions"] = span[0] - start + head
                    feature["end_positions"] = span[1] - start + head
                else:
                    feature["start_positions"] = feature["end_positions"] = 0
            features.append(feature)
            if end >= len(c_ids):
                break
            start += room - doc_stride
    return features


def _answer_token_span(ex: Example, offsets: list[tuple[int, int]]) -> tuple[int, int] | None:
    """(first, last) context-token index of the first gold answer, or None for an unanswerable question."""
    if ex.get("is_impossible"):
        return None
    texts, starts = ex["answers"]["text"], ex["answers"]["answer_start"]
    if not texts:
        raise UserError(
            f"question id {ex['id']} has no answer; training needs one (or is_impossible: true for SQuAD v2)"
        )
    first_char, end_char = starts[0], starts[0] + len(texts[0])
    # offsets are sorted: the first token that ends after the answer starts, the last that starts before it ends
    first = bisect.bisect_right([o[1] for o in offsets], first_char)
    last = bisect.bisect_left([o[0] for o in offsets], end_char) - 1
    if first > last:
        raise UserError(
            f"the answer {texts[0]!r} of question id {ex['id']} covers no tokens; fix the answer text"
        )
    return first, last


# ----------------------------------------------------------------------------------------------------
# Decoding


def _as_numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def postprocess_qa(
    examples: Sequence[Example],
    features: Sequence[Feature],
    start_logits: Any,
    end_logits: Any,
    n_best: int = 20,
    max_answer_length: int = 30,
    null_threshold: float = 0.0,
    version_2: bool = False,
) -> dict[str, str]:
    """Answer text per question id from per-feature start/end logits (see `best_answers` for the rule)."""
    answers = best_answers(
        examples, features, start_logits, end_logits, n_best, max_answer_length, null_threshold, version_2
    )
    return {ex["id"]: answer["text"] for ex, answer in zip(examples, answers)}


def _answers_from_outputs(
    data: TaskData, outputs: Sequence[torch.Tensor], settings: FinetuneDataConfig
) -> list[dict[str, Any]]:
    """`best_answers` on the model's per-feature (start, end) logits, with the data settings' rules."""
    return best_answers(
        data.examples,
        data.features,
        [o[:, 0] for o in outputs],
        [o[:, 1] for o in outputs],
        n_best=settings.n_best,
        max_answer_length=settings.max_answer_length,
        null_threshold=settings.null_threshold,
        version_2=bool(settings.version_2),
    )


def best_answers(
    examples: Sequence[Example],
    features: Sequence[Feature],
    start_logits: Any,
    end_logits: Any,
    n_best: int = 20,
    max_answer_length: int = 30,
    null_threshold: float = 0.0,
    version_2: bool = False,
) -> list[dict[str, Any]]:
    """The answer to each example: {"text", "start", "end" (character offsets in the context), "score"}.

    `start_logits[f]` / `end_logits[f]` hold feature f's logits (a 2-D padded array/tensor or a list of 1-D
    ones). Over all windows of a question, candidates are pairs of a window's `n_best` highest start and end
    logits (over all its tokens; only context tokens count) with start <= end and at most `max_answer_length`
    tokens; the best start + end score wins, the earlier window on a tie. The score is the probability of that
    start times that of that end in its window.
    With `version_2`, the answer is "" (start and end None) when the null score (start[0] + end[0], the lowest
    over the question's windows) minus the best span score is above `null_threshold`, or when there is no valid
    span; its score is then the probability of the null span in the window that has the lowest null score.
    """
    by_example: list[list[int]] = [[] for _ in examples]
    for f, feature in enumerate(features):
        by_example[feature["example_index"]].append(f)
    answers = []
    for ex, feature_indexes in zip(examples, by_example):
        best: dict[str, Any] = {"text": "", "start": None, "end": None, "score": 0.0}
        best_score, null_score, null_prob = -math.inf, math.inf, 0.0
        for f in feature_indexes:
            offsets = features[f]["offsets"]
            s = _as_numpy(start_logits[f])[: len(offsets)]
            e = _as_numpy(end_logits[f])[: len(offsets)]
            if len(s) < len(offsets) or len(e) < len(offsets):
                raise ValueError(f"feature {f} has {len(offsets)} tokens but fewer logits")
            log_norm = _logsumexp(s) + _logsumexp(e)
            if s[0] + e[0] < null_score:
                null_score, null_prob = s[0] + e[0], math.exp(s[0] + e[0] - log_norm)
            score, span = _best_span(s, e, offsets, n_best, max_answer_length)
            if score > best_score:
                best_score = score
                end = _past_combining_marks(ex["context"], span[1])
                text = ex["context"][span[0] : end]
                best = {"text": text, "start": span[0], "end": end, "score": math.exp(score - log_norm)}
        if version_2 and (best_score == -math.inf or null_score - best_score > null_threshold):
            best = {"text": "", "start": None, "end": None, "score": null_prob}
        answers.append(best)
    return answers


def _past_combining_marks(context: str, end: int) -> int:
    """`end` moved past the marks right after it (Unicode category M: accents written as characters of their own,
    as in NFD text "e\u0301", and the vowel signs of Thai and Indic scripts): a tokenizer that strips accents ends
    a word's last token before them, which would cut "Zoë" to "Zoe" and "नमस्ते" to "नमस्त". (Not
    `unicodedata.combining`: most vowel signs have combining class 0.)"""
    while end < len(context) and unicodedata.category(context[end]).startswith("M"):
        end += 1
    return end


def _logsumexp(x: np.ndarray) -> float:
    top = float(x.max())
    return top + math.log(float(np.exp(x - top).sum()))


def _best_span(
    s: np.ndarray,
    e: np.ndarray,
    offsets: Sequence[tuple[int, int] | None],
    n_best: int,
    max_answer_length: int,
) -> tuple[float, tuple[int, int]]:
    """(score, (first char, end char)) of one window's best answer span; -inf when it has none.

    The candidates are the `n_best` highest start and end logits over all of the window's tokens, of which only
    context tokens count: a [CLS], question or [SEP] token among them takes a place and yields nothing. This is
    the rule of transformers' question-answering example (utils_qa.postprocess_qa_predictions), kept so that
    the same logits give the same answer. On equal logits the earlier token ranks first.
    """
    in_context = np.array([o is not None for o in offsets])
    top_s = np.argsort(-s, kind="stable")[:n_best]
    top_e = np.argsort(-e, kind="stable")[:n_best]
    top_s, top_e = top_s[in_context[top_s]], top_e[in_context[top_e]]
    if not len(top_s) or not len(top_e):
        return -math.inf, (0, 0)
    scores = s[top_s][:, None] + e[top_e][None, :]
    length = top_e[None, :] - top_s[:, None] + 1
    scores[(length < 1) | (length > max_answer_length)] = -math.inf
    i, j = np.unravel_index(int(np.argmax(scores)), scores.shape)
    first, last = offsets[top_s[i]], offsets[top_e[j]]
    assert first is not None and last is not None
    return float(scores[i, j]), (first[0], last[1])


# ----------------------------------------------------------------------------------------------------
# The task


class QuestionAnsweringTask(Task):
    """Answer spans: mean of start and end cross-entropy, SQuAD exact match and F1."""

    name = "qa"
    architecture = "QuestionAnswering"
    data_settings = (
        "doc_stride",
        "max_question_length",
        "n_best",
        "max_answer_length",
        "null_threshold",
        "version_2",
    )
    default_max_length = 384
    output_formats = (".jsonl", ".csv", ".json")
    points_metrics = frozenset({"f1", "exact_match", "HasAns_exact", "HasAns_f1", "NoAns_exact", "NoAns_f1"})

    def read(self, path: Path, settings: FinetuneDataConfig, labelled: bool) -> list[Example]:
        examples = read_squad(path, answers=labelled)
        if labelled:
            for ex in examples:
                if not ex["answers"]["text"] and not ex["is_impossible"]:
                    raise UserError(
                        f"{path}: question id {ex['id']} has no 'answers'; labelled SQuAD data needs them "
                        "(an empty list marks an unanswerable question), or use masklm predict"
                    )
        return examples

    def resolve_settings(self, settings: FinetuneDataConfig, examples: Sequence[Example]) -> None:
        """data.version_2 (unanswerable questions allowed), when unset: whether the data has any."""
        if settings.version_2 is None:
            settings.version_2 = any(ex["is_impossible"] for ex in examples)

    def check_training_data(
        self, settings: FinetuneDataConfig, examples: Sequence[Example], path: Path
    ) -> None:
        impossible = sum(1 for ex in examples if ex["is_impossible"])
        if settings.version_2 is False and impossible:
            raise UserError(
                f"{path} has {impossible} unanswerable question(s), but --data.version_2 is false (SQuAD 1.1: every "
                "question has an answer); set it true, or leave it unset to follow the data"
            )

    def encode(
        self,
        tok: Any,
        examples: list[Example],
        settings: FinetuneDataConfig,
        labels: Sequence[str] | None,
        path: Path,
        labelled: bool,
    ) -> list[Feature]:
        s = settings
        assert s.max_length is not None and s.doc_stride is not None
        return encode_qa(
            tok,
            examples,
            s.max_length,
            s.doc_stride,
            train=labelled,
            max_question_length=s.max_question_length,
        )

    def describe(self, data: TaskData) -> str:
        return f" ({len(data.features):,} windows)"

    def loss(
        self, logits: torch.Tensor, batch: Batch, settings: FinetuneDataConfig, reduction: str = "mean"
    ) -> torch.Tensor:
        """The mean of the start and the end positions' cross-entropy, each a softmax over the window's own tokens:
        the padding of a batch is masked out, so a window's loss does not depend on the batch it is in."""
        padding = (batch["attention_mask"] == 0).unsqueeze(-1)
        logits = logits.float().masked_fill(padding, torch.finfo(torch.float32).min)
        start = F.cross_entropy(logits[..., 0], batch["start_positions"], reduction=reduction)
        end = F.cross_entropy(logits[..., 1], batch["end_positions"], reduction=reduction)
        return (start + end) / 2

    def decode(
        self,
        data: TaskData,
        outputs: Sequence[torch.Tensor],
        labels: Sequence[str] | None,
        settings: FinetuneDataConfig,
    ) -> list[Any]:
        """The answer text per question ("" = no answer)."""
        return [answer["text"] for answer in _answers_from_outputs(data, outputs, settings)]

    def metric_names(self, settings: FinetuneDataConfig, labels: Sequence[str] | None) -> list[str]:
        names = ["f1", "exact_match", "loss"]
        if settings.version_2:
            names += ["HasAns_exact", "HasAns_f1", "NoAns_exact", "NoAns_f1"]
        return names

    def reported_metrics(
        self, settings: FinetuneDataConfig, labels: Sequence[str] | None, examples: Sequence[Example]
    ) -> list[str]:
        """HasAns_* and NoAns_* only where the validation file has unanswerable questions (and, for HasAns_*,
        answerable ones too), as the official v2.0 script reports them (`squad_metrics`)."""
        no_answer = any(not ex["answers"]["text"] for ex in examples)
        answered = any(ex["answers"]["text"] for ex in examples)
        kinds = {"NoAns": no_answer, "HasAns": no_answer and answered}
        return [n for n in self.metric_names(settings, labels) if kinds.get(n.split("_")[0], True)]

    def metrics(
        self,
        data: TaskData,
        predictions: Sequence[Any],
        labels: Sequence[str] | None,
        settings: FinetuneDataConfig,
    ) -> dict[str, float]:
        answers = {ex["id"]: p for ex, p in zip(data.examples, predictions)}
        return M.squad_metrics(answers, data.examples)

    def prediction_rows(
        self,
        data: TaskData,
        predictions: Sequence[Any],
        labels: Sequence[str] | None,
        settings: FinetuneDataConfig,
    ) -> list[Row]:
        return [
            {"id": ex["id"], "question": ex["question"], "answer": answer}
            for ex, answer in zip(data.examples, predictions)
        ]

    def render(self, rows: list[Row], suffix: str) -> str:
        """Also the official SQuAD predictions file (.json): {"question id": "answer"}."""
        if suffix == ".json":
            return json.dumps({r["id"]: r["answer"] for r in rows}, ensure_ascii=False, indent=1) + "\n"
        return super().render(rows, suffix)

    request_help = '{"question": ..., "context": ...}'

    def request_example(self, item: Any, settings: FinetuneDataConfig) -> Example:
        """{"question", "context"}, both non-empty text."""
        rec = request_object(item, ("question", "context"), (), self.request_help)
        return {
            "id": "request",
            "question": request_text(rec["question"], "question"),
            "context": request_text(rec["context"], "context"),
            "answers": {"text": [], "answer_start": []},
            "is_impossible": False,
        }

    def answers(
        self,
        data: TaskData,
        outputs: Sequence[torch.Tensor],
        labels: Sequence[str] | None,
        settings: FinetuneDataConfig,
    ) -> list[dict[str, Any]]:
        """{"answer", "start", "end", "score"} per question; start and end are character offsets in the context
        ("" and None for no answer, with data.version_2)."""
        found = _answers_from_outputs(data, outputs, settings)
        return [
            {"answer": a["text"], "start": a["start"], "end": a["end"], "score": a["score"]} for a in found
        ]
