"""Task data for fine-tuning: read files, encode examples, pad batches, turn QA logits back into text.

Three task families, each as `read_*` (file -> list of plain dicts) and `encode_*` (dicts -> token ids as
plain Python lists, one dict per model input); `pad_batch` turns a list of encoded features into tensors.

    classification     .csv / .tsv / .jsonl  {"text", "text_pair", "label"}      -> {"input_ids", "token_type_ids", "labels"}
    token classif.     CoNLL columns / .jsonl {"tokens", "tags"}                 -> {..., "labels", "word_ids", "num_words"}
    question answering SQuAD .json / .jsonl   {"id", "question", "context", ...} -> one feature per context window

Encoders build "[CLS] A [SEP]" and "[CLS] A [SEP] B [SEP]" themselves from the tokenizer's special ids (the
same layout as the BERT post-processor: type ids 0 up to and including the first [SEP], 1 after it), so
truncation is in our hands. `-100` marks label positions the loss ignores.

Every problem with a user's file raises `UserError` with one line naming the file (and line, where there
is one), what is wrong and how to fix it.
"""

from __future__ import annotations

import bisect
import csv
import io
import json
import math
import random
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from masklm.errors import UserError

IGNORE_INDEX = -100
"""Label value the loss ignores (special tokens, continuation sub-words, padding)."""

csv.field_size_limit(2**31 - 1)  # long documents in one cell are fine; the default limit is 128 KiB


# ----------------------------------------------------------------------------------------------------
# Reading files
# ----------------------------------------------------------------------------------------------------


def _read_text(path: Path) -> str:
    """The whole file as text (UTF-8, optional BOM), or a UserError that says why not."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{path}: file not found; check the path") from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a folder, not a file; give the path of the data file") from None
    except OSError as e:
        raise UserError(
            f"{path}: cannot be read ({e.strerror}); check the path and its permissions"
        ) from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise UserError(
            f"{path}:{line}: is not UTF-8 text (byte {e.start}); re-save the file as UTF-8"
        ) from None
    if not text.strip():
        raise UserError(f"{path}: the file is empty; give a file with data in it")
    return text


def _lines(text: str) -> list[str]:
    # split on "\n" only: str.splitlines() would also split on characters such as U+2028 inside a token
    return [line.rstrip("\r") for line in text.split("\n")]


def _read_records(path: Path) -> tuple[list[str], list[tuple[int, dict[str, Any]]]]:
    """(column names, [(line number, record)]) for a .csv, .tsv or .jsonl file."""
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".tsv", ".jsonl"):
        raise UserError(f"{path}: unsupported file type '{suffix}'; use .csv, .tsv or .jsonl")
    text = _read_text(path)
    records: list[tuple[int, dict[str, Any]]] = []
    if suffix == ".jsonl":
        for lineno, line in enumerate(_lines(text), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(
                    f"{path}:{lineno}: not valid JSON ({e.msg}); write one JSON object per line"
                ) from None
            if not isinstance(rec, dict):
                raise UserError(
                    f"{path}:{lineno}: expected a JSON object, got {type(rec).__name__}; write one object per line"
                )
            records.append((lineno, rec))
        return list(records[0][1]), records
    # .csv (RFC 4180 quoting) / .tsv (no quoting, like the GLUE files: quotes are ordinary characters)
    if suffix == ".tsv":
        reader = csv.reader(io.StringIO(text, newline=""), delimiter="\t", quoting=csv.QUOTE_NONE)
    else:
        reader = csv.reader(io.StringIO(text, newline=""))
    header: list[str] | None = None
    header_line = 0
    try:
        for row in reader:
            if not row or all(not cell.strip() for cell in row):
                continue
            if header is None:
                header = [cell.strip() for cell in row]
                header_line = reader.line_num
                continue
            if len(row) != len(header):
                raise UserError(
                    f"{path}:{reader.line_num}: has {len(row)} fields, the header (line {header_line}) has {len(header)}; "
                    + (
                        "quote fields that contain commas"
                        if suffix == ".csv"
                        else "remove stray tabs inside fields"
                    )
                )
            records.append((reader.line_num, dict(zip(header, row))))
    except csv.Error as e:
        raise UserError(
            f"{path}:{reader.line_num}: malformed {suffix[1:].upper()} ({e}); fix the quoting on that line"
        ) from None
    assert header is not None  # _read_text rejected a blank file
    if not records:
        raise UserError(f"{path}: has a header but no rows; add examples below the header line")
    return header, records


def _text_field(rec: dict[str, Any], column: str, path: Path, line: int) -> str:
    if column not in rec:
        raise UserError(
            f"{path}:{line}: has no '{column}' field (fields: {', '.join(rec)}); add it to that line"
        )
    value = rec[column]
    if not isinstance(value, str):
        raise UserError(
            f"{path}:{line}: '{column}' is {type(value).__name__}, expected text; quote it as a string"
        )
    return value


def _label_field(rec: dict[str, Any], column: str, path: Path, line: int) -> str | None:
    if column not in rec:
        raise UserError(
            f"{path}:{line}: has no '{column}' field (fields: {', '.join(rec)}); add it to that line"
        )
    value = rec[column]
    if value is None:
        return None
    if isinstance(value, bool | int | float | str):
        value = str(value).strip()
        return value or None
    raise UserError(
        f"{path}:{line}: '{column}' is a {type(value).__name__}; a label must be one string or number"
    )


def read_classification(
    path: str | Path,
    text_column: str = "text",
    text_pair_column: str | None = None,
    label_column: str = "label",
    require_label: bool = False,
) -> list[dict[str, Any]]:
    """Read a sentence (pair) classification / regression file.

    Returns one dict per row: {"text": str, "text_pair": str | None, "label": str | None}. Labels are kept as
    stripped strings (convert with `encode_labels` or `encode_float_labels`); an empty cell or JSON null gives
    None. A file without the label column is fine (prediction) unless `require_label`. Columns are the CSV/TSV
    header or the keys of the first JSONL object. TSV is read without quote handling, like the GLUE files.
    """
    path = Path(path)
    columns, records = _read_records(path)
    for column, setting in ((text_column, "text_column"), (text_pair_column, "text_pair_column")):
        if column is not None and column not in columns:
            raise UserError(
                f"{path}: has no column '{column}' (columns: {', '.join(columns)}); pass --data.{setting} with one of them"
            )
    has_label = label_column in columns
    if require_label and not has_label:
        raise UserError(
            f"{path}: has no label column '{label_column}' (columns: {', '.join(columns)}); "
            "pass --data.label_column with one of them"
        )
    examples = []
    for line, rec in records:
        examples.append(
            {
                "text": _text_field(rec, text_column, path, line),
                "text_pair": _text_field(rec, text_pair_column, path, line) if text_pair_column else None,
                "label": _label_field(rec, label_column, path, line) if has_label else None,
            }
        )
    return examples


_INT_RE = re.compile(r"[+-]?\d+")


def build_label_map(labels: Iterable[str | None]) -> list[str]:
    """The sorted list of distinct labels; a label's id is its index.

    Integer-looking labels ("0", "1", "-1") sort numerically, anything else sorts as strings, so the ids are
    the same whichever order the training file lists its rows in. None (no label) is skipped.
    """
    distinct = {label for label in labels if label is not None}
    if not distinct:
        raise UserError(
            "the training data has no labels; check its label column (--data.label_column) and the values in it"
        )
    if all(_INT_RE.fullmatch(label) for label in distinct):
        return sorted(distinct, key=lambda label: (int(label), label))
    return sorted(distinct)


def encode_labels(
    examples: Sequence[dict[str, Any]], label_list: Sequence[str], path: str | Path
) -> list[dict[str, Any]]:
    """Copies of `examples` with "label" replaced by its index in `label_list` (classification).

    `path` is the file the examples came from, for the error messages.
    """
    ids = {label: i for i, label in enumerate(label_list)}
    out = []
    for n, ex in enumerate(examples, 1):
        label = ex["label"]
        if label is None:
            raise UserError(f"{path}: example {n} has no label; fill in its label or drop the row")
        if label not in ids:
            raise UserError(
                f"label '{label}' in {path} (example {n}) was not in the training labels {list(label_list)}; "
                "fix the label or add examples of it to the training data"
            )
        out.append({**ex, "label": ids[label]})
    return out


def encode_float_labels(examples: Sequence[dict[str, Any]], path: str | Path) -> list[dict[str, Any]]:
    """Copies of `examples` with "label" parsed as a float (regression, e.g. STS-B similarity scores)."""
    out = []
    for n, ex in enumerate(examples, 1):
        label = ex["label"]
        if label is None:
            raise UserError(f"{path}: example {n} has no label; fill in its score or drop the row")
        try:
            value = float(label)
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise UserError(
                f"label '{label}' in {path} (example {n}) is not a finite number; regression needs numeric labels"
            )
        out.append({**ex, "label": value})
    return out


def read_conll(path: str | Path) -> list[dict[str, Any]]:
    """Read a token-classification file: one {"tokens": [...], "tags": [...] | None} per sentence.

    Column format (any extension but .jsonl): one token per line, token in the first column, tag in the
    last, columns split on tabs if the first token line has a tab, else on whitespace; a blank line ends a
    sentence; `-DOCSTART-` lines are skipped. Every token line must have as many fields as the first one. A
    file with a single column has no tags (prediction).

    .jsonl: one {"tokens": [str, ...], "tags": [str, ...]} object per line; "tags" may be left out
    (prediction) but must then be left out everywhere.
    """
    path = Path(path)
    if path.suffix.lower() == ".jsonl":
        return _read_token_jsonl(path)
    text = _read_text(path)
    sentences: list[dict[str, Any]] = []
    tokens: list[str] = []
    tags: list[str] = []
    expected = 0
    first_line = 0
    use_tabs = False

    def flush() -> None:
        if tokens:
            sentences.append({"tokens": tokens.copy(), "tags": tags.copy() if expected > 1 else None})
            tokens.clear()
            tags.clear()

    for lineno, line in enumerate(_lines(text), 1):
        stripped = line.strip()
        if not stripped:
            flush()
            continue
        if not expected:
            use_tabs = "\t" in stripped
        fields = [f.strip() for f in stripped.split("\t")] if use_tabs else stripped.split()
        if fields[0] == "-DOCSTART-":
            flush()
            continue
        if not expected:
            expected, first_line = len(fields), lineno
        if len(fields) != expected:
            raise UserError(
                f"{path}:{lineno} has {len(fields)} fields, expected {expected} (like line {first_line}); "
                "write one token per line with the same columns, token first and tag last"
            )
        if not fields[0]:
            raise UserError(f"{path}:{lineno} has an empty token; remove the line or fill in the token")
        tokens.append(fields[0])
        tags.append(fields[-1])
    flush()
    if not sentences:
        raise UserError(f"{path}: has no sentences (only -DOCSTART- lines); give a file with tokens in it")
    return sentences


def _read_token_jsonl(path: Path) -> list[dict[str, Any]]:
    _, records = _read_records(path)
    has_tags = "tags" in records[0][1]
    sentences = []
    for line, rec in records:
        tokens = rec.get("tokens")
        if not isinstance(tokens, list) or not tokens or not all(isinstance(t, str) and t for t in tokens):
            raise UserError(
                f"{path}:{line}: 'tokens' must be a non-empty list of non-empty strings; fix that line"
            )
        tags = rec.get("tags")
        if has_tags != ("tags" in rec):
            raise UserError(
                f"{path}:{line}: {'has no' if has_tags else 'has a'} 'tags' field unlike line {records[0][0]}; "
                "give tags on every line or on none"
            )
        if has_tags:
            if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
                raise UserError(
                    f"{path}:{line}: 'tags' must be a list of strings such as \"B-PER\"; fix that line"
                )
            if len(tags) != len(tokens):
                raise UserError(
                    f"{path}:{line}: has {len(tokens)} tokens but {len(tags)} tags; give one tag per token"
                )
        sentences.append({"tokens": tokens, "tags": tags if has_tags else None})
    return sentences


def read_squad(path: str | Path) -> list[dict[str, Any]]:
    """Read SQuAD v1.1 / v2.0 question answering data.

    .json: the official nested layout {"data": [{"paragraphs": [{"context", "qas": [...]}]}]}.
    .jsonl: one flat object per line {"id", "question", "context", "answers": {"text": [...],
    "answer_start": [...]}} (the Hugging Face datasets layout; a list of {"text", "answer_start"} works too).

    Returns {"id", "question", "context", "answers": {"text": [...], "answer_start": [...]}, "is_impossible"}.
    "is_impossible" is the file's flag where given, else true when an "answers" list is present and empty.
    Question ids must be unique, and every answer must be found in the context at its answer_start.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        _, records = _read_records(path)
        raw = [(rec, f"{path}:{line}") for line, rec in records]
    elif suffix == ".json":
        raw = _squad_nested(path)
    else:
        raise UserError(f"{path}: unsupported file type '{suffix}'; SQuAD data must be .json or .jsonl")

    examples = []
    seen: set[str] = set()
    for qa, where in raw:
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
        texts, starts = _squad_answers(qa.get("answers"), qid, where)
        for text, start in zip(texts, starts):
            if context[start : start + len(text)] != text:
                raise UserError(
                    f"{where}: answer {text!r} of question id {qid} is not at answer_start {start} in its context "
                    f"(found {context[start : start + len(text)]!r}); fix answer_start"
                )
        impossible = qa.get("is_impossible")
        if impossible is None:
            impossible = "answers" in qa and not texts
        if impossible and texts:
            raise UserError(
                f"{where}: question id {qid} is marked is_impossible but has answers; "
                "move them to 'plausible_answers' or set is_impossible to false"
            )
        examples.append(
            {
                "id": qid,
                "question": question,
                "context": context,
                "answers": {"text": texts, "answer_start": starts},
                "is_impossible": bool(impossible),
            }
        )
    if not examples:
        raise UserError(f"{path}: has no questions; check that it is SQuAD data")
    return examples


def _squad_nested(path: Path) -> list[tuple[dict[str, Any], str]]:
    try:
        doc = json.loads(_read_text(path))
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
# ----------------------------------------------------------------------------------------------------


def _special_ids(tok: Any) -> tuple[int, int, int]:
    """([CLS], [SEP], [UNK]) ids of a BERT-style tokenizer."""
    ids = []
    for token in ("[CLS]", "[SEP]", "[UNK]"):
        i = tok.token_to_id(token)
        if i is None:
            raise UserError(f"the tokenizer has no {token} token; use a BERT-style WordPiece tokenizer")
        ids.append(i)
    return ids[0], ids[1], ids[2]


def _truncate_longest_first(a: list[int], b: list[int], budget: int) -> tuple[list[int], list[int]]:
    """Cut tokens from the end of the longer sequence until len(a) + len(b) <= budget.

    Same result as removing one token at a time from the longer one (from `b` on a tie): when both must be
    cut, `a` keeps ceil(budget / 2) tokens and `b` floor(budget / 2).
    """
    if len(a) + len(b) <= budget:
        return a, b
    half_b = budget // 2
    half_a = budget - half_b
    if len(a) <= half_a:
        return a, b[: budget - len(a)]
    if len(b) <= half_b:
        return a[: budget - len(b)], b
    return a[:half_a], b[:half_b]


def encode_classification(
    tok: Any, examples: Sequence[dict[str, Any]], max_length: int
) -> list[dict[str, Any]]:
    """ "[CLS] text [SEP]" or "[CLS] text [SEP] text_pair [SEP]" per example, at most `max_length` tokens.

    Pairs are truncated longest-first. "labels" (int or float) is included when the example's "label" is a
    number, i.e. after `encode_labels` / `encode_float_labels`; examples with label None get no "labels".
    """
    cls, sep, _ = _special_ids(tok)
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
            a, b = _truncate_longest_first(a, second_of[i].ids, max_length - 3)
            input_ids = [cls, *a, sep, *b, sep]
            token_type_ids = [0] * (len(a) + 2) + [1] * (len(b) + 1)
        else:
            input_ids = [cls, *a[: max_length - 2], sep]
            token_type_ids = [0] * len(input_ids)
        feature: dict[str, Any] = {"input_ids": input_ids, "token_type_ids": token_type_ids}
        label = ex.get("label")
        if isinstance(label, str):
            raise TypeError(
                "example labels are still strings; convert them with encode_labels / encode_float_labels"
            )
        if label is not None:
            feature["labels"] = label
        features.append(feature)
    return features


def encode_token_classification(
    tok: Any,
    examples: Sequence[dict[str, Any]],
    label_list: Sequence[str],
    max_length: int,
    label_all_subwords: bool = False,
    path: str | Path | None = None,
) -> list[dict[str, Any]]:
    """Encode pre-split words with one label slot per word.

    Returns per sentence {"input_ids", "token_type_ids", "word_ids", "num_words", "labels" (when the sentence
    has tags)}. `word_ids[i]` is the word index of token i (None for [CLS]/[SEP]).

    - The first sub-word of a word carries its tag's id; the other sub-words carry -100, or with
      `label_all_subwords` the tag again (a B-X tag becomes I-X on continuation sub-words when I-X is a
      known label). Special tokens carry -100.
    - A word the tokenizer drops entirely (e.g. a zero-width space) becomes one [UNK] token, so every word
      that fits keeps exactly one prediction slot.
    - Sentences longer than `max_length` keep whole words from the start; the words after the cut are not
      encoded (`num_words` still counts them) and `align_predictions` fills them in (use "O"). Only when even
      the first word does not fit is that word cut inside, keeping its first sub-words.

    `path` (the file the examples came from) only improves error messages.
    """
    cls, sep, unk = _special_ids(tok)
    budget = max_length - 2
    if budget < 1:
        raise UserError(f"max_length {max_length} leaves no room for words after [CLS] and [SEP]; raise it")
    label_ids = {label: i for i, label in enumerate(label_list)}
    continuation = {
        i: label_ids.get("I-" + label[2:], i) if label.startswith("B-") else i
        for label, i in label_ids.items()
    }
    where = f"{path}: " if path else ""
    encodings = (
        tok.encode_batch([ex["tokens"] for ex in examples], is_pretokenized=True, add_special_tokens=False)
        if examples
        else []
    )
    features = []
    for n, (ex, enc) in enumerate(zip(examples, encodings)):
        words = ex["tokens"]
        pieces: list[list[int]] = [[] for _ in words]
        for token_id, w in zip(enc.ids, enc.word_ids):
            if w is not None:
                pieces[w].append(token_id)
        for p in pieces:
            if not p:
                p.append(unk)
        kept, used = 0, 0
        while kept < len(pieces) and used + len(pieces[kept]) <= budget:
            used += len(pieces[kept])
            kept += 1
        if kept == 0 and pieces:
            pieces[0] = pieces[0][:budget]
            kept = 1

        tags = ex.get("tags")
        tag_ids: list[int] | None = None
        if tags is not None:
            if len(tags) != len(words):
                raise UserError(
                    f"{where}sentence {n + 1} has {len(words)} tokens but {len(tags)} tags; give one tag per token"
                )
            try:
                tag_ids = [label_ids[t] for t in tags]
            except KeyError as e:
                raise UserError(
                    f"{where}tag '{e.args[0]}' in sentence {n + 1} is not in the training labels {list(label_list)}; "
                    "fix the tag or add examples of it to the training data"
                ) from None

        input_ids, word_ids, labels = [cls], [None], [IGNORE_INDEX]
        for w in range(kept):
            for k, token_id in enumerate(pieces[w]):
                input_ids.append(token_id)
                word_ids.append(w)
                if tag_ids is None:
                    continue
                if k == 0:
                    labels.append(tag_ids[w])
                else:
                    labels.append(continuation[tag_ids[w]] if label_all_subwords else IGNORE_INDEX)
        input_ids.append(sep)
        word_ids.append(None)
        labels.append(IGNORE_INDEX)
        feature: dict[str, Any] = {
            "input_ids": input_ids,
            "token_type_ids": [0] * len(input_ids),
            "word_ids": word_ids,
            "num_words": len(words),
        }
        if tag_ids is not None:
            feature["labels"] = labels
        features.append(feature)
    return features


def align_predictions(
    word_ids: Sequence[int | None],
    token_predictions: Sequence[int] | np.ndarray | torch.Tensor,
    num_words: int | None = None,
    fill: int = IGNORE_INDEX,
) -> list[int]:
    """One prediction per word: the prediction at the word's first sub-word.

    `token_predictions` lines up with the feature's input_ids (padding after them is ignored). Words that were
    truncated away (index >= the last encoded word, up to `num_words`) get `fill`; write them as "O".
    """
    preds = token_predictions.tolist() if hasattr(token_predictions, "tolist") else list(token_predictions)
    if len(preds) < len(word_ids):
        raise ValueError(f"{len(preds)} token predictions for {len(word_ids)} tokens")
    encoded = max((w for w in word_ids if w is not None), default=-1) + 1
    out = [fill] * (encoded if num_words is None else max(num_words, encoded))
    seen = [False] * encoded
    for w, p in zip(word_ids, preds):
        if w is not None and not seen[w]:
            seen[w] = True
            out[w] = int(p)
    return out


def encode_qa(
    tok: Any,
    examples: Sequence[dict[str, Any]],
    max_length: int = 384,
    doc_stride: int = 128,
    train: bool = True,
    max_question_length: int = 64,
) -> list[dict[str, Any]]:
    """ "[CLS] question [SEP] context-window [SEP]" features, several per example when the context is long.

    The question keeps its first `max_question_length` tokens. The context is cut into windows of
    `room = max_length - len(question) - 3` tokens; consecutive windows overlap by `doc_stride` tokens (the
    Hugging Face convention), so window k starts at context token k * (room - doc_stride).

    Each feature: {"input_ids", "token_type_ids", "example_index", "offsets"}, where offsets[i] is the
    (start, end) character span in the context of token i, or None for question and special tokens. With
    `train`, also "start_positions"/"end_positions": the first answer's first and last token in this window,
    or 0/0 ([CLS]) when the window does not hold the whole answer or the question is unanswerable.
    """
    cls, sep, _ = _special_ids(tok)
    if doc_stride < 0:
        raise UserError(f"doc_stride must be >= 0, got {doc_stride}")
    if not examples:
        return []
    questions = tok.encode_batch([ex["question"] for ex in examples], add_special_tokens=False)
    contexts = tok.encode_batch([ex["context"] for ex in examples], add_special_tokens=False)
    features: list[dict[str, Any]] = []
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
            feature: dict[str, Any] = {
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


def _answer_token_span(ex: dict[str, Any], offsets: list[tuple[int, int]]) -> tuple[int, int] | None:
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


def _as_numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def postprocess_qa(
    examples: Sequence[dict[str, Any]],
    features: Sequence[dict[str, Any]],
    start_logits: Any,
    end_logits: Any,
    n_best: int = 20,
    max_answer_length: int = 30,
    null_threshold: float = 0.0,
    version_2: bool = False,
) -> dict[str, str]:
    """Answer text per question id from per-feature start/end logits.

    `start_logits[f]` / `end_logits[f]` hold feature f's logits (a 2-D padded array/tensor or a list of 1-D
    ones). Over all windows of a question, candidates are the `n_best` highest start and end logits among
    context tokens with start <= end and at most `max_answer_length` tokens; the best start + end score wins.
    With `version_2`, the answer is "" when the null score (start[0] + end[0], the lowest over the question's
    windows) minus the best span score is above `null_threshold`, or when there is no valid span.
    """
    by_example: list[list[int]] = [[] for _ in examples]
    for f, feature in enumerate(features):
        by_example[feature["example_index"]].append(f)
    predictions: dict[str, str] = {}
    for ex, feature_indexes in zip(examples, by_example):
        best_score, best_text, null_score = -math.inf, "", math.inf
        for f in feature_indexes:
            offsets = features[f]["offsets"]
            s = _as_numpy(start_logits[f])[: len(offsets)]
            e = _as_numpy(end_logits[f])[: len(offsets)]
            if len(s) < len(offsets) or len(e) < len(offsets):
                raise ValueError(f"feature {f} has {len(offsets)} tokens but fewer logits")
            null_score = min(null_score, s[0] + e[0])
            context = np.array([i for i, o in enumerate(offsets) if o is not None], dtype=np.int64)
            if not len(context):
                continue
            k = min(n_best, len(context))
            top_s = context[np.argsort(-s[context], kind="stable")[:k]]
            top_e = context[np.argsort(-e[context], kind="stable")[:k]]
            scores = s[top_s][:, None] + e[top_e][None, :]
            length = top_e[None, :] - top_s[:, None] + 1
            scores[(length < 1) | (length > max_answer_length)] = -math.inf
            i, j = np.unravel_index(int(np.argmax(scores)), scores.shape)
            if scores[i, j] > best_score:
                best_score = float(scores[i, j])
                best_text = ex["context"][offsets[top_s[i]][0] : offsets[top_e[j]][1]]
        if version_2 and (best_score == -math.inf or null_score - best_score > null_threshold):
            best_text = ""
        predictions[ex["id"]] = best_text
    return predictions


# ----------------------------------------------------------------------------------------------------
# Batching
# ----------------------------------------------------------------------------------------------------

_PADDED = {"input_ids", "token_type_ids", "labels"}
_SCALARS = ("start_positions", "end_positions")


def pad_batch(
    features: Sequence[dict[str, Any]], pad_id: int, pad_to_multiple_of: int | None = None
) -> dict[str, torch.Tensor]:
    """Stack encoded features into tensors, padded to the longest in the batch (dynamic padding).

    input_ids are padded with `pad_id`, token_type_ids with 0, per-token labels with -100; attention_mask is
    1 on real tokens. Per-example labels (int -> long, float -> float32) and start/end positions are stacked.
    Bookkeeping keys (offsets, word_ids, example_index, num_words) are left out. `pad_to_multiple_of` rounds
    the length up (e.g. 8 for tensor cores).
    """
    if not features:
        raise ValueError("pad_batch needs at least one feature")
    for key in (*_PADDED, *_SCALARS):
        present = sum(key in f for f in features)
        if present not in (0, len(features)):
            raise ValueError(
                f"'{key}' is in {present} of {len(features)} features; it must be in all or none"
            )
    length = max(len(f["input_ids"]) for f in features)
    if pad_to_multiple_of:
        length = -(-length // pad_to_multiple_of) * pad_to_multiple_of
    batch_size = len(features)
    input_ids = torch.full((batch_size, length), pad_id, dtype=torch.long)
    token_type_ids = torch.zeros((batch_size, length), dtype=torch.long)
    attention_mask = torch.zeros((batch_size, length), dtype=torch.long)
    for row, f in enumerate(features):
        n = len(f["input_ids"])
        input_ids[row, :n] = torch.tensor(f["input_ids"], dtype=torch.long)
        attention_mask[row, :n] = 1
        if "token_type_ids" in f:
            token_type_ids[row, :n] = torch.tensor(f["token_type_ids"], dtype=torch.long)
    batch = {"input_ids": input_ids, "token_type_ids": token_type_ids, "attention_mask": attention_mask}
    if "labels" in features[0]:
        if isinstance(features[0]["labels"], list | tuple):
            labels = torch.full((batch_size, length), IGNORE_INDEX, dtype=torch.long)
            for row, f in enumerate(features):
                labels[row, : len(f["labels"])] = torch.tensor(f["labels"], dtype=torch.long)
        elif any(isinstance(f["labels"], float) for f in features):
            labels = torch.tensor([float(f["labels"]) for f in features], dtype=torch.float32)
        else:
            labels = torch.tensor([f["labels"] for f in features], dtype=torch.long)
        batch["labels"] = labels
    for key in _SCALARS:
        if key in features[0]:
            batch[key] = torch.tensor([f[key] for f in features], dtype=torch.long)
    return batch


def length_bucketed_batches(
    lengths: Sequence[int], batch_size: int, seed: int, shuffle: bool = True, chunk_batches: int = 50
) -> list[list[int]]:
    """Batches of example indexes with similar lengths, so dynamic padding wastes little.

    With `shuffle`: shuffle all indexes (seeded), cut them into chunks of `batch_size * chunk_batches`, sort
    each chunk by length, cut it into batches, then shuffle the order of all batches. Without: sort everything
    by length, longest first (evaluation; the first batch shows the peak memory). Every index appears once;
    put predictions back in file order by these indexes.
    """
    if batch_size < 1:
        raise UserError(f"batch_size must be at least 1, got {batch_size}")
    order = list(range(len(lengths)))
    if not shuffle:
        order.sort(key=lambda i: -lengths[i])
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    rng = random.Random(seed)
    rng.shuffle(order)
    chunk = batch_size * max(1, chunk_batches)
    batches = []
    for c in range(0, len(order), chunk):
        part = sorted(order[c : c + chunk], key=lambda i: lengths[i])
        batches.extend(part[i : i + batch_size] for i in range(0, len(part), batch_size))
    rng.shuffle(batches)
    return batches
