"""Token classification (NER, POS, chunking): one tag per word of a pre-split sentence.

    CoNLL columns (token first, tag last) or .jsonl {"tokens": [...], "tags": [...]}
    example {"tokens", "tags"} -> feature {"input_ids", "token_type_ids", "word_ids", "num_words", "labels"}

A word's first sub-word carries its tag (the others -100, or the tag again with data.label_all_subwords); a
prediction per word is read back at its first sub-word. Tag sets with B-/I-/E-/S-/L-/U- prefixes are scored as
entities (seqeval), others by token accuracy.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from masklm.errors import UserError
from masklm.tasks.base import Example, Requirement, Row, Task, TaskData
from masklm.tasks.batching import IGNORE_INDEX, Batch, Feature
from masklm.tasks.encoding import build_label_map, match_label, special_token_ids
from masklm.tasks.files import read_records, read_text, request_object, request_text, split_lines
from masklm.train import metrics as M
from masklm.utils import log

if TYPE_CHECKING:
    from masklm.config import FinetuneDataConfig


# ----------------------------------------------------------------------------------------------------
# Reading


ASCII_SPACE = " \t\r\n\f\v"
COLUMNS = re.compile(f"[{re.escape(ASCII_SPACE)}]+")


def read_conll(path: str | Path, with_tags: bool = True) -> list[Example]:
    """Read a token-classification file: one {"tokens": [...], "tags": [...] | None} per sentence.

    Column format (any extension but .jsonl): one token per line, token in the first column, tag in the
    last, columns split on tabs if the first token line has a tab, else on whitespace; a blank line ends a
    sentence; `-DOCSTART-` lines are skipped. Every token line must have as many fields as the first one. A
    file with a single column has no tags (prediction).

    .jsonl: one {"tokens": [str, ...], "tags": [str, ...]} object per line; "tags" may be left out
    (prediction) but must then be left out everywhere.

    With `with_tags=False` (prediction) any tags are ignored, unchecked, and every sentence has "tags" None.
    """
    path = Path(path)
    if path.suffix.lower() in (".jsonl", ".csv"):
        return _read_token_records(path, with_tags)
    sentences: list[Example] = []
    tokens: list[str] = []
    tags: list[str] = []
    expected = first_line = 0
    use_tabs = False

    def flush() -> None:
        if tokens:
            sentences.append({"tokens": tokens.copy(), "tags": tags.copy() if expected > 1 else None})
            tokens.clear()
            tags.clear()

    lines = split_lines(read_text(path))
    _refuse_json_lines(path, lines)
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            flush()
            continue
        # columns are split at ASCII white space only: a no-break space (10\u00a0000) or an ideographic space is
        # part of its token
        stripped = line.strip(ASCII_SPACE)
        if not expected:
            use_tabs = "\t" in stripped
        fields = [f.strip(ASCII_SPACE) for f in stripped.split("\t")] if use_tabs else COLUMNS.split(stripped)
        if fields[0] == "-DOCSTART-":
            flush()
            continue
        if not expected:
            expected, first_line = len(fields), lineno
        if len(fields) != expected and with_tags:  # (prediction reads the tokens: tags may be on some lines)
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
    if not with_tags:
        return [{**sentence, "tags": None} for sentence in sentences]
    return sentences


def _refuse_json_lines(path: Path, lines: list[str]) -> None:
    """A UserError when a file read as CoNLL columns is JSON lines under another name (its first non-blank line
    is a JSON object): read as columns it would give a confusing field count. A "{" token ("{<TAB>O") is not."""
    first = next((line.strip() for line in lines if line.strip()), "")
    if not first.startswith("{"):
        return
    try:
        is_object = isinstance(json.loads(first), dict)
    except ValueError:
        is_object = False
    if is_object:
        raise UserError(
            f"{path}: looks like JSON lines (it starts with '{{'), but only .jsonl files are read as JSON; "
            f"rename it to {path.with_suffix('.jsonl').name}"
        )


def _read_token_records(path: Path, with_tags: bool = True) -> list[Example]:
    """The sentences of a .jsonl file, or of a .csv file as `predict` writes it (columns "tokens" and "tags",
    each the sentence's tokens or tags joined by single spaces); `with_tags=False` ignores the tags (prediction)."""
    _, records = read_records(path)
    spaced = path.suffix.lower() == ".csv"
    has_tags = with_tags and "tags" in records[0][1]
    sentences = []
    for line, rec in records:
        tokens, tags = rec.get("tokens"), rec.get("tags")
        if spaced:
            tokens = tokens.split(" ") if isinstance(tokens, str) else tokens
            tags = tags.split(" ") if isinstance(tags, str) else tags
        if not isinstance(tokens, list) or not tokens or not all(isinstance(t, str) and t for t in tokens):
            what = "its tokens joined by single spaces" if spaced else "a non-empty list of non-empty strings"
            raise UserError(f"{path}:{line}: 'tokens' must be {what}; fix that line")
        if with_tags and has_tags != ("tags" in rec):
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


def _conll_problem(token: str) -> str | None:
    """Why `token` would not be read back from a "token<TAB>tag" line as it is (None: it would)."""
    if "\t" in token or "\n" in token or "\r" in token:
        return "contains a tab or a line break"
    if token != token.strip():
        return "starts or ends with white space"
    if token == "-DOCSTART-":
        return "is a document separator (-DOCSTART-)"
    return None


def _csv_problem(token: str) -> str | None:
    """Why `token` would not survive a CSV column of space-separated tokens (None: it would)."""
    return "contains white space" if any(c.isspace() for c in token) else None


# ----------------------------------------------------------------------------------------------------
# Encoding and alignment


def encode_token_classification(
    tok: Any,
    examples: Sequence[Example],
    label_list: Sequence[str],
    max_length: int,
    label_all_subwords: bool = False,
    path: str | Path | None = None,
) -> list[Feature]:
    """Encode pre-split words with one label slot per word.

    Returns per sentence {"input_ids", "token_type_ids", "word_ids", "num_words", "labels" (when the sentence
    has tags)}. `word_ids[i]` is the word index of token i (None for [CLS]/[SEP]).

    - The first sub-word of a word carries its tag's id; the other sub-words carry -100, or with
      `label_all_subwords` the tag again (a B-X tag becomes I-X on continuation sub-words when I-X is a
      known label). Special tokens carry -100.
    - A word the tokenizer drops entirely (e.g. a zero-width space) becomes one [UNK] token, so every word
      that fits keeps exactly one prediction slot.
    - Sentences longer than `max_length` keep whole words from the start; the words after the cut are not
      encoded (`num_words` still counts them) and `align_predictions` fills them in (`fill_tag`). Only when even
      the first word does not fit is that word cut inside, keeping its first sub-words.

    `path` (the file the examples came from) only improves error messages.
    """
    cls, sep, unk = special_token_ids(tok)
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
        pieces = _kept_word_pieces(enc, len(ex["tokens"]), unk, budget)
        tag_ids = _tag_ids(ex, label_ids, n, where)
        continued = [continuation[i] for i in tag_ids] if tag_ids is not None and label_all_subwords else None
        features.append(_sentence_feature(pieces, tag_ids, continued, len(ex["tokens"]), cls, sep))
    return features


def _sentence_feature(
    pieces: list[list[int]],
    tag_ids: list[int] | None,
    continued: list[int] | None,
    num_words: int,
    cls: int,
    sep: int,
) -> Feature:
    """ "[CLS] word pieces [SEP]" with the word index of every token and, given the tag ids, the labels: a
    word's tag on its first sub-word, `continued` (or -100 without it) on the others, -100 on specials."""
    input_ids, word_ids, labels = [cls], [None], [IGNORE_INDEX]
    for w, word_pieces in enumerate(pieces):
        input_ids += word_pieces
        word_ids += [w] * len(word_pieces)
        if tag_ids is not None:
            rest = continued[w] if continued is not None else IGNORE_INDEX
            labels += [tag_ids[w]] + [rest] * (len(word_pieces) - 1)
    input_ids.append(sep)
    word_ids.append(None)
    labels.append(IGNORE_INDEX)
    feature: Feature = {
        "input_ids": input_ids,
        "token_type_ids": [0] * len(input_ids),
        "word_ids": word_ids,
        "num_words": num_words,
    }
    if tag_ids is not None:
        feature["labels"] = labels
    return feature


def _kept_word_pieces(enc: Any, num_words: int, unk: int, budget: int) -> list[list[int]]:
    """The sub-word ids of the words that fit in `budget` tokens, whole words from the start ([UNK] for a word
    the tokenizer dropped); when not even the first word fits, its first `budget` sub-words."""
    pieces: list[list[int]] = [[] for _ in range(num_words)]
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
        return [pieces[0][:budget]]
    return pieces[:kept]


def _tag_ids(ex: Example, label_ids: dict[str, int], n: int, where: str) -> list[int] | None:
    """The sentence's tag ids (None without tags); a UserError for a count mismatch or an unknown tag."""
    tags = ex.get("tags")
    if tags is None:
        return None
    if len(tags) != len(ex["tokens"]):
        raise UserError(
            f"{where}sentence {n + 1} has {len(ex['tokens'])} tokens but {len(tags)} tags; give one tag per token"
        )
    ids = []
    for tag in tags:
        # a number spelled otherwise ("1.0" for "1") is that tag, as in classification
        k = label_ids.get(tag)
        k = match_label(tag, list(label_ids)) if k is None else k
        if k is None:
            raise UserError(
                f"{where}tag '{tag}' in sentence {n + 1} is not in the training labels {list(label_ids)}; "
                "fix the tag or add examples of it to the training data"
            )
        ids.append(k)
    return ids


_NOTED: set[str] = set()


def fill_tag(labels: Sequence[str], predicted: Sequence[int]) -> str:
    """The tag of a word cut off by max_length (never read): the tag set's outside tag, "O" (or "o"); a tag set
    without one (parts of speech) gets the sentence's most often predicted tag, so that the file still holds
    only the model's tags (and `evaluate` reads it back)."""
    outside = next((t for t in labels if t == "O"), None) or next(
        (t for t in labels if t.upper() == "O"), None
    )
    if outside is not None or not labels:
        return outside or "O"
    if not predicted:
        return labels[0]
    counts = Counter(predicted)
    return labels[max(counts, key=lambda i: (counts[i], -i))]


def align_predictions(
    word_ids: Sequence[int | None],
    token_predictions: Sequence[int] | np.ndarray | torch.Tensor,
    num_words: int | None = None,
    fill: int = IGNORE_INDEX,
) -> list[int]:
    """One prediction per word: the prediction at the word's first sub-word.

    `token_predictions` lines up with the feature's input_ids (padding after them is ignored). Words that were
    truncated away (index >= the last encoded word, up to `num_words`) get `fill`; write them as `fill_tag` says.
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


# ----------------------------------------------------------------------------------------------------
# Serving: raw text in, entities with character offsets out

# The CJK ideograph blocks BERT's pre-tokenizer splits into one word a character (its _is_chinese_char ranges)
_CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002ceaf\U0002f800-\U0002fa1f"
WORD = re.compile(rf"[{_CJK}]|(?:(?![{_CJK}])\w)+|[^\w\s]")
"""A piece of a request's text: one CJK ideograph, a run of letters and digits, or one other visible character;
`split_words` joins the pieces that belong to one word."""
_ZWJ = "\u200d"


def _continues(previous: str, piece: str) -> bool:
    """Whether `piece`, written right after `previous`, belongs to the same word: a mark (category M: accents in
    NFD text, the vowel signs of Indic and Thai scripts, which `\\w` does not match) and the letters after one,
    and the parts of an emoji sequence (zero-width joiners, skin tones)."""
    first, last = piece[0], previous[-1]
    if unicodedata.category(first).startswith("M") or first == _ZWJ or last == _ZWJ:
        return True
    if "\U0001f3fb" <= first <= "\U0001f3ff":
        return True  # a skin-tone modifier
    return unicodedata.category(last).startswith("M") and (first.isalnum() and previous[0].isalnum())


def split_words(text: str) -> tuple[list[str], list[tuple[int, int]]]:
    """The words of `text` and their (start, end) character offsets: runs of letters and digits with their marks,
    one CJK ideograph each (as BERT's pre-tokenizer splits them), and punctuation marks, one each (as CoNLL files
    split)."""
    words: list[str] = []
    spans: list[tuple[int, int]] = []
    for m in WORD.finditer(text):
        start, end = m.span()
        if spans and spans[-1][1] == start and _continues(words[-1], m.group()):
            words[-1] += m.group()
            spans[-1] = (spans[-1][0], end)
        else:
            words.append(m.group())
            spans.append((start, end))
    return words, spans


def word_scores(feature: Feature, output: torch.Tensor) -> tuple[list[int], list[float]]:
    """(tag id, probability) of every encoded word, read at its first sub-word."""
    probs = torch.softmax(output.float(), -1)
    best, ids = probs.max(-1)
    tags, scores, seen = [], [], set()
    for position, w in enumerate(feature["word_ids"]):
        if w is not None and w not in seen:
            seen.add(w)
            tags.append(int(ids[position]))
            scores.append(float(best[position]))
    return tags, scores


def group_entities(
    tags: Sequence[str], scores: Sequence[float], spans: Sequence[tuple[int, int]], text: str, prefixed: bool
) -> list[dict[str, Any]]:
    """Entities {"text", "label", "start", "end", "score"} from per-word tags: with `prefixed` tags, a B-/S-/U-
    tag (or an I- tag of another type) starts an entity and I-/E-/L- tags of its type extend it (E-, S-, L- and
    U- end it); otherwise every word not tagged "O" is one. The score is the mean of its words' probabilities."""
    entities: list[dict[str, Any]] = []
    open_entity: dict[str, Any] | None = None
    for tag, score, (start, end) in zip(tags, scores, spans):
        prefix, kind = (tag[0], tag[2:]) if prefixed and tag[1:2] == "-" else ("", tag)
        if tag == "O":
            open_entity = None
            continue
        if open_entity is not None and prefix in ("I", "E", "L") and kind == open_entity["label"]:
            open_entity["end"] = end
            open_entity["scores"].append(score)
        else:
            open_entity = {"label": kind, "start": start, "end": end, "scores": [score]}
            entities.append(open_entity)
        if not prefixed or prefix in ("E", "S", "L", "U"):
            open_entity = None
    for e in entities:
        word_probs = e.pop("scores")
        e["text"], e["score"] = text[e["start"] : e["end"]], sum(word_probs) / len(word_probs)
    return entities


# ----------------------------------------------------------------------------------------------------
# The task


class TokenClassificationTask(Task):
    """A tag per word: cross-entropy on first sub-words, entity precision / recall / F1 or token accuracy."""

    name = "token-classification"
    architecture = "TokenClassification"
    data_settings = ("label_all_subwords",)
    output_formats = (".jsonl", ".csv", ".conll", ".txt")

    def read(self, path: Path, settings: FinetuneDataConfig, labelled: bool) -> list[Example]:
        sentences = read_conll(path, with_tags=labelled)  # predict ignores tags: any, on some lines or none
        if labelled and sentences[0]["tags"] is None:
            if path.suffix.lower() == ".jsonl":
                fields = ", ".join(read_records(path)[0])
                raise UserError(
                    f"{path}: has no 'tags' field (fields: {fields}); give each line \"tags\": a list of tag "
                    'strings such as "B-PER", or use masklm predict for unlabelled text'
                )
            raise UserError(
                f"{path}: has no tags (one column only); give 'token<TAB>tag' lines, or use masklm predict "
                "for unlabelled text"
            )
        return sentences

    def label_set(
        self, examples: Sequence[Example], settings: FinetuneDataConfig, path: Path
    ) -> list[str] | None:
        labels = build_label_map(tag for ex in examples for tag in ex["tags"])
        if len(labels) < 2:
            found = f"every token has the tag '{labels[0]}'" if labels else "no token has a tag"
            raise UserError(
                f"{path}: {found}; token classification needs at least two tags (for NER: the entities' B-/I- "
                "tags besides O)"
            )
        return labels

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
            examples = [{**ex, "tags": None} for ex in examples]
        return encode_token_classification(
            tok, examples, labels or [], settings.max_length, settings.label_all_subwords, path
        )

    def loss(
        self, logits: torch.Tensor, batch: Batch, settings: FinetuneDataConfig, reduction: str = "mean"
    ) -> torch.Tensor:
        """Cross-entropy over the positions with a label (-100 elsewhere)."""
        logits = logits.float()
        return F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]),
            batch["labels"].reshape(-1),
            ignore_index=IGNORE_INDEX,
            reduction=reduction,
        )

    def loss_count(self, batch: Batch) -> int:
        return int((batch["labels"] != IGNORE_INDEX).sum())

    def decode(
        self,
        data: TaskData,
        outputs: Sequence[torch.Tensor],
        labels: Sequence[str] | None,
        settings: FinetuneDataConfig,
    ) -> list[Any]:
        """One tag per word; words cut off by max_length get the outside tag (`fill_tag`), and a note says how
        many there were."""
        tags = list(labels or [])
        out, cut, sentences = [], 0, 0
        for f, o in zip(data.features, outputs):
            ids = align_predictions(f["word_ids"], o.argmax(-1), f["num_words"])
            missing = sum(i < 0 for i in ids)
            fill = fill_tag(tags, [i for i in ids if i >= 0]) if missing else ""
            out.append([tags[i] if i >= 0 else fill for i in ids])
            cut, sentences = cut + missing, sentences + bool(missing)
        note = (
            f"note: {cut} word(s) of {sentences} sentence(s) lay beyond --data.max_length {settings.max_length} "
            "tokens and were tagged without being read (as outside an entity where the tags have an O); raise "
            "--data.max_length (up to the model's positions) or split long sentences"
        )
        if cut and note not in _NOTED:  # (once: a fine-tuning run evaluates the same sentences every epoch)
            _NOTED.add(note)
            log(note)
        return out

    def requirements(self, settings: FinetuneDataConfig, labels: Sequence[str] | None) -> list[Requirement]:
        """seqeval for tag sets with B-/I-/E-/S- prefixes (entity F1); none for POS-like tags."""
        if M.has_entity_tags(labels or ()):
            return [Requirement("seqeval", "entity F1 of B-/I- tags (token classification)", "finetune")]
        return []

    def metric_names(self, settings: FinetuneDataConfig, labels: Sequence[str] | None) -> list[str]:
        if M.has_entity_tags(labels or ()):
            return ["f1", "precision", "recall", "accuracy", "loss"]
        return ["accuracy", "loss"]

    def metrics(
        self,
        data: TaskData,
        predictions: Sequence[Any],
        labels: Sequence[str] | None,
        settings: FinetuneDataConfig,
    ) -> dict[str, float]:
        return M.entity_metrics([ex["tags"] for ex in data.examples], predictions, labels)

    def prediction_rows(
        self,
        data: TaskData,
        predictions: Sequence[Any],
        labels: Sequence[str] | None,
        settings: FinetuneDataConfig,
    ) -> list[Row]:
        return [{"tokens": ex["tokens"], "tags": tags} for ex, tags in zip(data.examples, predictions)]

    def check_writable(self, data: TaskData, labels: Sequence[str] | None, output: Path) -> None:
        """Refuse a .conll / .txt file for tokens (or tags) a CoNLL reader would not read back as they are, and a
        .csv file (tokens joined by spaces) for tokens with white space in them; .jsonl holds any token."""
        suffix = output.suffix.lower()
        if suffix not in (".conll", ".txt", ".csv"):
            return
        problem = _conll_problem if suffix != ".csv" else _csv_problem
        for tag in labels or ():
            why = problem(tag)
            if why:
                raise UserError(
                    f"--output {output}: the model's tag {tag!r} {why}, which a {suffix} file cannot hold; "
                    "write the predictions as .jsonl"
                )
        for n, ex in enumerate(data.examples, 1):
            for token in ex["tokens"]:
                why = problem(token)
                if why:
                    raise UserError(
                        f"{data.path}: sentence {n} has the token {token!r}, which {why}: a {suffix} file cannot "
                        f"hold it; write the predictions as .jsonl (--output {output.with_suffix('.jsonl')})"
                    )

    def render(self, rows: list[Row], suffix: str) -> str:
        """Also CoNLL columns (.conll / .txt): "token<TAB>tag" lines, a blank line after each sentence."""
        if suffix in (".conll", ".txt"):
            return "\n".join("".join(f"{t}\t{g}\n" for t, g in zip(r["tokens"], r["tags"])) for r in rows)
        return super().render(rows, suffix)

    request_help = '"text" or {"text": ...}'

    def request_example(self, item: Any, settings: FinetuneDataConfig) -> Example:
        """Raw text (or {"text": ...}), split into words and punctuation marks with their offsets."""
        if not isinstance(item, str):
            item = request_object(item, ("text",), (), self.request_help)["text"]
        text = request_text(item, "text")
        words, spans = split_words(text)
        if not words:
            raise UserError("'text' has no words; give some text")
        return {"tokens": words, "tags": None, "text": text, "spans": spans}

    def answers(
        self,
        data: TaskData,
        outputs: Sequence[torch.Tensor],
        labels: Sequence[str] | None,
        settings: FinetuneDataConfig,
    ) -> list[dict[str, Any]]:
        """{"entities": [...], "tokens", "tags"} per example; words cut off by max_length are tagged "O"."""
        names = list(labels or [])
        prefixed = M.has_entity_tags(names)
        out = []
        for ex, f, o in zip(data.examples, data.features, outputs):
            ids, scores = word_scores(f, o)
            missing = len(ex["tokens"]) - len(ids)
            tags = [names[i] for i in ids] + ([fill_tag(names, ids)] * missing if missing else [])
            entities = group_entities(tags, scores + [1.0] * missing, ex["spans"], ex["text"], prefixed)
            out.append({"entities": entities, "tokens": ex["tokens"], "tags": tags})
        return out
