"""Encoding helpers shared by the task modules: BERT special tokens, pair truncation, label ids.

Encoders build "[CLS] A [SEP]" and "[CLS] A [SEP] B [SEP]" themselves from the tokenizer's special ids (the same
layout as the BERT post-processor: type ids 0 up to and including the first [SEP], 1 after it), so truncation
is in our hands.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence
from typing import Any

from masklm.errors import UserError

INTEGER_LABEL = re.compile(r"[+-]?[0-9]+")
"""Labels that look like integers ("0", "-1") sort numerically and are written back as numbers."""
NUMBER_LABEL = re.compile(r"[+-]?[0-9]+(\.[0-9]*)?")
"""Labels that spell a decimal number ("1", "1.0", "-2.50"): one matches a label of another file that spells the
same number (`match_label`). ASCII digits only: "١" (Arabic-Indic one) is a label of its own, not 1."""


def special_token_ids(tok: Any) -> tuple[int, int, int]:
    """([CLS], [SEP], [UNK]) ids of a BERT-style tokenizer."""
    ids = []
    for token in ("[CLS]", "[SEP]", "[UNK]"):
        i = tok.token_to_id(token)
        if i is None:
            raise UserError(f"the tokenizer has no {token} token; use a BERT-style WordPiece tokenizer")
        ids.append(i)
    return ids[0], ids[1], ids[2]


def truncate_longest_first(a: list[int], b: list[int], budget: int) -> tuple[list[int], list[int]]:
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


def build_label_map(labels: Iterable[str | None]) -> list[str]:
    """The sorted list of distinct labels; a label's id is its index.

    Integer-looking labels ("0", "1", "-1") sort numerically, anything else sorts as strings, so the ids are
    the same whichever order the training file lists its rows in. None (no label) is skipped. Spellings of one
    number ("1", "1.0") are one label, and so are the Unicode forms of one word (NFC "é", NFD "e\u0301"), kept
    in NFC.
    """
    distinct = {unicodedata.normalize("NFC", label) for label in labels if label is not None}
    if not distinct:
        raise UserError(
            "the training data has no labels; check its label column (--data.label_column) and the values in it"
        )
    # one number spelled two ways in one file ("1" and "1.0": two exports concatenated) is one label, kept in its
    # shortest spelling; `match_label` gives the other spellings its id
    spellings: dict[float, set[str]] = {}
    for label in distinct:
        number = label_number(label)
        if number is not None:
            spellings.setdefault(number, set()).add(label)
    for same in spellings.values():
        distinct -= same - {min(same, key=lambda label: (len(label), label))}
    if all(INTEGER_LABEL.fullmatch(label) for label in distinct):
        return sorted(distinct, key=lambda label: (int(label), label))
    return sorted(distinct)


def label_number(label: str) -> float | None:
    """The number a label spells ("1", "1.0" and "+1.00" all 1.0); None for a label that is not a number."""
    return float(label) if NUMBER_LABEL.fullmatch(label) else None


def match_label(label: str, label_list: Sequence[str]) -> int | None:
    """The id of `label` in `label_list`: the label itself (in any Unicode normalisation form), else the one
    label there that spells the same number (a model trained on "1.0" reads a file that writes 1, and the other
    way round); None when there is none."""
    nfc = unicodedata.normalize("NFC", label)
    for i, known in enumerate(label_list):
        if known == label or unicodedata.normalize("NFC", known) == nfc:
            return i
    number = label_number(label)
    if number is None:
        return None
    same = [i for i, known in enumerate(label_list) if label_number(known) == number]
    return same[0] if len(same) == 1 else None
