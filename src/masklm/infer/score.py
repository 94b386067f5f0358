"""Pseudo-log-likelihood (Salazar et al. 2020): how likely a masked language model finds a sentence.

    from masklm.infer.score import Scorer
    scorer = Scorer.load("runs/demo")
    scorer.score(["the cats sleep .", "the cats sleeps ."])   # → [SentenceScore(pll=-9.1, tokens=5), ...]
    scorer.pairs([{"sentence_good": ..., "sentence_bad": ..., "group": ...}])   # minimal-pair accuracy

The PLL of a sentence is the sum, over its tokens (not [CLS] / [SEP]), of log P(token | the sentence with that
token masked). Each token needs one forward pass of its own masked copy, so a sentence of n tokens costs n rows.
Scoring one sentence at a time leaves those batches small and ragged; `Scorer` instead flattens the
(sentence, position) pairs of MANY sentences, sorts them by length and fills batches up to a token budget
(rows × padded length), so nearly every batch is full and little of it is padding. Each row reads one
position, so the model runs its last layer and the vocabulary projection there only (`MaskedLM.logits_at`), and a
batch whose rows all have one length goes without an attention mask.

The word-level variant (`word_level=True`, Kauf & Ivanova 2023, "PLL-word-l2r") also masks the later pieces of
the token's own word while scoring a piece: "sleep ##s" is scored as P(sleep | _ _) · P(##s | sleep _), so a
word split into many pieces is not scored as nearly certain from its own other pieces. Words are the
tokenizer's pre-tokenized words (`Encoding.word_ids`).

Minimal pairs (BLiMP's format): the share of pairs whose good sentence has the higher PLL (a tie counts as wrong),
per `group` and overall; a pair without a group counts in the overall accuracy only.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tokenizers
import torch
from torch import nn

from masklm.config import NO_LIMIT
from masklm.data.tokenizer import all_special_ids, special_ids
from masklm.errors import UserError
from masklm.tasks.files import read_text, split_lines

# (input_ids (B, T), attention_mask (B, T) or None without padding, positions (B,)) → logits (B, V) at one
# position per row
LogitsFn = Callable[[torch.Tensor, torch.Tensor | None, torch.Tensor], torch.Tensor]
# rows × padded length per forward pass. Measured on a 2-core CPU in float32 (docs/benchmarks.md, "masklm score:
# the token budget"): 2,048 was the fastest of 512 to 8,192 for MiniLM-L6-H384, the demo's small model and a
# BERT-base shape alike, 18-32% faster than 8,192, whose activations outgrow the caches.
DEFAULT_TOKEN_BUDGET = 2048


@dataclass(frozen=True)
class SentenceScore:
    pll: float  # natural log, summed over the scored tokens
    tokens: int  # tokens scored (specials excluded)


@dataclass(frozen=True)
class _Encoded:
    ids: list[int]
    words: list[int | None]  # the word each token belongs to; None for [CLS] / [SEP]


def masked_copies(enc: _Encoded, word_level: bool) -> list[tuple[int, list[int]]]:
    """(scored position, every position masked in its copy) for each token of one sentence."""
    out = []
    for p, word in enumerate(enc.words):
        if word is None:
            continue
        masked = [p]
        if word_level:
            masked += [q for q in range(p + 1, len(enc.ids)) if enc.words[q] == word]
        out.append((p, masked))
    return out


def pll_batches(
    encoded: Sequence[_Encoded], word_level: bool, token_budget: int
) -> list[list[tuple[int, int, list[int]]]]:
    """Every masked copy of every sentence as (sentence, scored position, masked positions), sorted by length
    and cut into batches of at most `token_budget` tokens (rows × the longest row; at least one row each)."""
    copies = [(i, p, m) for i, enc in enumerate(encoded) for p, m in masked_copies(enc, word_level)]
    copies.sort(key=lambda c: len(encoded[c[0]].ids))
    batches: list[list[tuple[int, int, list[int]]]] = []
    current: list[tuple[int, int, list[int]]] = []
    for copy in copies:
        length = len(encoded[copy[0]].ids)  # the longest so far: copies come sorted by length
        if current and (len(current) + 1) * length > token_budget:
            batches.append(current)
            current = []
        current.append(copy)
    if current:
        batches.append(current)
    return batches


def batch_tensors(
    encoded: Sequence[_Encoded], batch: Sequence[tuple[int, int, list[int]]], mask_id: int, pad_id: int
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """(input ids (B, T), attention mask (B, T) or None when no row is padded, scored positions (B,), their
    original tokens (B,)) of one batch of masked copies. Built as Python lists and converted once: per-row
    tensor writes cost more than the forward pass of a short batch."""
    width = max(len(encoded[i].ids) for i, _, _ in batch)
    rows, masks = [], []
    for i, _, masked in batch:
        row = encoded[i].ids + [pad_id] * (width - len(encoded[i].ids))
        for q in masked:
            row[q] = mask_id
        rows.append(row)
        masks.append([1] * len(encoded[i].ids) + [0] * (width - len(encoded[i].ids)))
    padded = any(len(encoded[i].ids) < width for i, _, _ in batch)
    positions = torch.tensor([p for _, p, _ in batch])
    targets = torch.tensor([encoded[i].ids[p] for i, p, _ in batch])
    return torch.tensor(rows), torch.tensor(masks) if padded else None, positions, targets


@torch.inference_mode()
def pseudo_log_likelihoods(
    logits_fn: LogitsFn,
    encoded: Sequence[_Encoded],
    mask_id: int,
    pad_id: int,
    word_level: bool = False,
    token_budget: int = DEFAULT_TOKEN_BUDGET,
    device: torch.device | None = None,
) -> list[SentenceScore]:
    """The PLL of each encoded sentence, computed in full batches of masked copies (see the module doc)."""
    sums = [0.0] * len(encoded)
    counts = [0] * len(encoded)
    for batch in pll_batches(encoded, word_level, token_budget):
        ids, attention, positions, targets = batch_tensors(encoded, batch, mask_id, pad_id)
        if device is not None:
            ids, positions, targets = ids.to(device), positions.to(device), targets.to(device)
            attention = None if attention is None else attention.to(device)
        logits = logits_fn(ids, attention, positions)  # (B, V): the scored position of each row
        logp = logits.float().log_softmax(-1).gather(1, targets[:, None]).squeeze(1).double().tolist()
        for (i, _, _), lp in zip(batch, logp):
            sums[i] += lp
            counts[i] += 1
    return [SentenceScore(pll=s, tokens=c) for s, c in zip(sums, counts)]


def encode_sentences(
    tokenizer: tokenizers.Tokenizer,
    sentences: Sequence[str],
    max_len: int,
    where: str = "input",
    names: Sequence[str] | None = None,
    word_level: bool = False,
) -> list[_Encoded]:
    """Tokenize with [CLS] / [SEP]; refused, naming the sentence (`names`: how messages call each sentence;
    default "sentence N"): one longer than the model's positions, one with no token to score (nothing but
    [CLS] / [SEP] once tokenized, such as a zero-width space), one whose text holds a special token ([MASK],
    [SEP], ...: it would be scored as a word, or stay masked in every copy; [UNK] is the text's); with
    `word_level`, a tokenizer whose words run across spaces (no pre-tokenizer, or a metaspace one that does not
    split: every later piece of the sentence would be masked)."""
    out = []
    # ([UNK] stands for text the vocabulary lacks: scored as any token)
    never = set(all_special_ids(tokenizer)) - {tokenizer.token_to_id("[UNK]")}
    for n, enc in enumerate(tokenizer.encode_batch(list(sentences)), 1):
        name = names[n - 1] if names is not None else f"sentence {n}"
        if len(enc.ids) > max_len:
            raise UserError(
                f"{where}: {name} is {len(enc.ids)} tokens long, above the model's limit of {max_len}; "
                "shorten or split it"
            )
        special = enc.special_tokens_mask
        if all(special):
            raise UserError(
                f"{where}: {name} has no token to score once tokenized ({sentences[n - 1]!r}); remove it"
            )
        typed = next((t for t, i, s in zip(enc.tokens, enc.ids, special) if i in never and not s), None)
        if typed is not None:
            raise UserError(
                f"{where}: {name} holds the special token {typed} in its text; PLL scores words, not special "
                "tokens: remove it"
            )
        words = [None if s else w for w, s in zip(enc.word_ids, special)]
        if word_level:
            _check_words(sentences[n - 1], enc.offsets, words, f"{where}: {name}")
        out.append(_Encoded(list(enc.ids), words))
    return out


def _check_words(
    text: str, offsets: Sequence[tuple[int, int]], words: Sequence[int | None], where: str
) -> None:
    """A UserError when one of the tokenizer's words spans white space in `text`: word-level scoring would mask
    several words as one."""
    spans: dict[int, tuple[int, int]] = {}
    for (start, end), word in zip(offsets, words):
        if word is not None:
            first, last = spans.get(word, (start, end))
            spans[word] = (min(first, start), max(last, end))
    crossing = next((text[a:b] for a, b in spans.values() if any(c.isspace() for c in text[a:b])), None)
    if crossing is not None:
        raise UserError(
            f"{where}: the tokenizer's words run across spaces ({crossing!r} is one word to it), so word-level "
            "scoring would mask whole phrases; score without --word-level, or use a tokenizer that splits words at "
            "spaces (masklm's own, BERT's)"
        )


def pair_accuracy(
    good: Sequence[SentenceScore], bad: Sequence[SentenceScore], groups: Sequence[str | None]
) -> dict[str, Any]:
    """{"accuracy", "pairs", "groups": {group: {"accuracy", "pairs"}}, "ungrouped_pairs"}: good scored strictly
    above bad. A pair without a group (None) counts in the overall accuracy only: "groups" holds the named
    groups alone, so no name (not "all", not "overall") can meet a row that is not a group."""
    per_group: dict[str, list[int]] = {}
    wins = [int(g.pll > b.pll) for g, b in zip(good, bad)]
    for win, group in zip(wins, groups):
        if group is not None:
            per_group.setdefault(group, []).append(win)
    return {
        "accuracy": sum(wins) / max(len(wins), 1),
        "pairs": len(wins),
        "groups": {g: {"accuracy": sum(w) / len(w), "pairs": len(w)} for g, w in sorted(per_group.items())},
        "ungrouped_pairs": sum(group is None for group in groups),
    }


class Scorer:
    """PLL scores and minimal-pair accuracy from a model with a masked-LM head."""

    def __init__(
        self,
        logits_fn: LogitsFn,
        tokenizer: tokenizers.Tokenizer,
        max_len: int,
        token_budget: int = DEFAULT_TOKEN_BUDGET,
        device: torch.device | None = None,
    ) -> None:
        if not isinstance(token_budget, int) or token_budget < 1:
            raise UserError(
                f"token_budget must be a whole number of tokens, at least 1, not {token_budget!r}"
            )
        sp = special_ids(tokenizer)
        self.logits_fn, self.tokenizer, self.max_len = logits_fn, tokenizer, max_len
        self.mask_id, self.pad_id = sp.mask, sp.pad
        self.token_budget, self.device = token_budget, device

    @classmethod
    def from_model(cls, model: nn.Module, tokenizer: tokenizers.Tokenizer, **kwargs: Any) -> Scorer:
        """A Scorer over a masked LM (`MaskedLM` or a subclass: its `logits_at`)."""
        cfg = model.cfg
        max_len = cfg.max_positions or NO_LIMIT
        device = next(model.parameters()).device
        return cls(model.logits_at, tokenizer, max_len, device=device, **kwargs)

    @classmethod
    def load(
        cls, path: str | Path, dtype: str = "float32", token_budget: int = DEFAULT_TOKEN_BUDGET
    ) -> Scorer:
        """A masklm run / model folder (an ELECTRA run scores with its generator) or a Hugging Face BERT folder
        with an MLM head; the same loading and refusals as fill-mask."""
        from masklm.infer.fill_mask import FillMask

        fm = FillMask.load(path, dtype=dtype)
        return cls.from_model(fm.model, fm.tokenizer, token_budget=token_budget)

    def score(
        self,
        sentences: Sequence[str],
        word_level: bool = False,
        where: str = "input",
        names: Sequence[str] | None = None,
    ) -> list[SentenceScore]:
        """The PLL of each sentence (`names`: how an error message calls each one; default "sentence N"); one
        sentence may be given as a string (a list of one score comes back)."""
        if isinstance(sentences, str):
            sentences = [sentences]
        bad = [s for s in sentences if not isinstance(s, str)]
        if bad:
            raise UserError(f"score takes sentences as strings, not {type(bad[0]).__name__}")
        encoded = encode_sentences(self.tokenizer, sentences, self.max_len, where, names, word_level)
        return pseudo_log_likelihoods(
            self.logits_fn, encoded, self.mask_id, self.pad_id, word_level, self.token_budget, self.device
        )

    def pairs(self, pairs: Sequence[dict[str, Any]], word_level: bool = False) -> dict[str, Any]:
        """Minimal-pair accuracy (`pair_accuracy`) of rows with "sentence_good", "sentence_bad", optional "group";
        both sentences of every pair are scored in the same batches."""
        if not pairs:
            raise UserError("no minimal pairs to score; give at least one")
        wrong = next(
            (p for p in pairs if not isinstance(p, dict) or not all(k in p for k in PAIR_KEYS)), None
        )
        if wrong is not None:
            raise UserError(f'a minimal pair needs "sentence_good" and "sentence_bad", not {wrong!r}')
        groups = [_group(p.get("group"), f"pair {i}") for i, p in enumerate(pairs, 1)]
        sentences, names = pair_sentences(pairs)
        scores = self.score(sentences, word_level, where="pairs", names=names)
        return pair_accuracy(scores[: len(pairs)], scores[len(pairs) :], groups)


def pair_sentences(pairs: Sequence[dict[str, Any]]) -> tuple[list[str], list[str]]:
    """(every good sentence, then every bad one; how messages name them: "pair 3 (sentence_bad)")."""
    sentences = [p["sentence_good"] for p in pairs] + [p["sentence_bad"] for p in pairs]
    names = [f"pair {i} ({key})" for key in PAIR_KEYS for i in range(1, len(pairs) + 1)]
    return sentences, names


# ----------------------------------------------------------------------------------------------------------------
# Input files


PAIR_KEYS = ("sentence_good", "sentence_bad")


def text_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, line) of the file's non-blank lines (`read_text`: UTF-8, a byte-order mark dropped; lines
    end at a line feed, CR LF or a lone CR, as `split_lines` cuts them); a binary file is refused."""
    text = read_text(path)
    if "\x00" in text:
        raise UserError(f"{path} is not text (it holds NUL bytes: a binary file?); give a UTF-8 text file")
    return [(n, line) for n, line in enumerate(split_lines(text), 1) if line.strip()]


def read_pairs(path: str | Path) -> list[dict[str, Any]]:
    """A JSONL file of minimal pairs: one {"sentence_good", "sentence_bad"[, "group"]} object a line."""
    path = Path(path)
    return _pairs(path, text_lines(path))


def _pairs(path: Path, lines: list[tuple[int, str]]) -> list[dict[str, Any]]:
    """The minimal pairs of a file's numbered lines (`read_pairs`)."""
    rows = []
    for n, line in lines:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise UserError(
                f"{path}:{n}: not a JSON object; a pairs file has one JSON object a line"
            ) from None
        if not isinstance(row, dict):
            raise UserError(
                f'{path}:{n}: not a JSON object; write {{"sentence_good": ..., "sentence_bad": ...}}'
            )
        wrong = [k for k in PAIR_KEYS if not (isinstance(row.get(k), str) and row[k].strip())]
        if wrong:
            what = "missing" if wrong[0] not in row else "not a non-empty string"
            raise UserError(
                f'{path}:{n}: "{wrong[0]}" is {what}; a pairs line needs non-empty "sentence_good" and '
                f'"sentence_bad" strings (keys here: {", ".join(row) or "none"})'
            )
        row["group"] = _group(row.get("group"), f"{path}:{n}")
        rows.append(row)
    return rows  # not empty: read_text refused a file without a non-blank line


def _group(value: Any, where: str) -> str | None:
    """A pairs line's "group" as a name: a non-blank string, or a number written as JSON writes it (3, 1.5); None
    (the pair is in no group) when it is missing or null. Anything else is refused."""
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return json.dumps(value)
    if not isinstance(value, str):
        raise UserError(
            f'{where}: "group" is {json.dumps(value)}, not a name; give a string (or leave it out, or null, for a '
            "pair in no group)"
        )
    if not value.strip():
        raise UserError(
            f'{where}: "group" is blank; name the group, or leave it out (or null) for a pair in no group'
        )
    return value


def read_score_input(path: str | Path) -> tuple[str, list[Any], list[str]]:
    """("pairs", rows, []) for JSONL minimal pairs (a .jsonl file, or one whose first line is a JSON object),
    else ("sentences", the non-blank lines, how messages name them: "line N")."""
    path = Path(path)
    lines = text_lines(path)  # read_text refuses a file with nothing in it
    try:
        head = json.loads(lines[0][1])
    except json.JSONDecodeError:
        head = None
    if path.suffix.lower() == ".jsonl" or isinstance(head, dict):
        return "pairs", _pairs(path, lines), []
    pair = next((n for n, line in lines if _is_pair(line)), None)
    if pair is not None:  # (it would be scored as a sentence of JSON)
        raise UserError(
            f"{path}:{pair} is a JSON minimal pair, but line {lines[0][0]} is a plain sentence; a file holds one "
            "kind: sentences one a line, or JSONL pairs (every line a JSON object)"
        )
    return "sentences", [line.strip() for _, line in lines], [f"line {n}" for n, _ in lines]


def _is_pair(line: str) -> bool:
    """Whether a line is a JSON object with sentence_good (a minimal pair)."""
    if not line.lstrip().startswith("{"):
        return False
    try:
        value = json.loads(line)
    except json.JSONDecodeError:
        return False
    return isinstance(value, dict) and "sentence_good" in value
