"""Prompt-based classification: classify a text by filling in a blank with the pretrained masked-LM head.

    masklm finetune --task prompt-classification --model RUN --train train.csv --validation val.csv \\
        --data.prompt '{text} it was [MASK] .' --data.label_words '0=bad,1=good'

Each text is put into the template, and a label's score is the MLM head's logit, at the template's [MASK], for
that label's word; the loss is cross-entropy over those scores (PET, Schick and Schütze 2021; LM-BFF, Gao et al.
2021). A new classifier layer starts from nothing and needs labels to learn what the encoder's features mean; here
the starting classifier is what pretraining already learnt ("... it was [MASK] ." → good, bad, great ...), which
is where few labels pay off (docs/finetuning.md, "Prompt-based classification").

The model stays a MaskedLM: RUN/model fill-masks, exports and fine-tunes further like any masked LM, and records
the template and the label words with its task, so evaluate, predict and serve use them. Files and labels are
read as for `classification` (its columns and its label order); regression is not supported.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from masklm.data.tokenizer import SPECIAL_TOKENS
from masklm.errors import UserError
from masklm.tasks.base import Example
from masklm.tasks.batching import Batch, Feature, pad_batch
from masklm.tasks.classification import ClassificationTask, class_labels, encode_labels
from masklm.tasks.encoding import special_token_ids, truncate_longest_first

if TYPE_CHECKING:
    from masklm.config import FinetuneDataConfig

_SLOT = re.compile(r"(\{text\}|\{text_pair\})")
EXAMPLE = "--data.prompt '{text} it was [MASK] .' --data.label_words '0=bad,1=good'"


def template_parts(prompt: str | None, pairs: bool) -> list[str]:
    """The template split into literal text and the slots "{text}" / "{text_pair}" (kept as items), checked:
    {text} once, {text_pair} once exactly when the data has pairs."""
    if not prompt:
        raise UserError(f"prompt-classification needs a template with {{text}} and one [MASK]: {EXAMPLE}")
    parts = [p for p in _SLOT.split(prompt) if p]
    for slot, want in (("{text}", 1), ("{text_pair}", 1 if pairs else 0)):
        if parts.count(slot) != want:
            where = "once" if want else "not at all (set --data.text_pair_column for pairs)"
            raise UserError(f"--data.prompt {prompt!r} must contain {slot} {where}")
    return parts


def parse_label_words(spec: str | None) -> dict[str, str]:
    """'0=bad,1=good' → {"0": "bad", "1": "good"}; a UserError for a malformed list or a word used twice. A JSON
    object ('{"a, b": "good"}') names labels that contain a comma."""
    if not spec:
        raise UserError(f"prompt-classification needs a word for each label: {EXAMPLE}")
    if spec.lstrip().startswith("{"):
        return _check_words_apart(_json_label_words(spec))
    words: dict[str, str] = {}
    for item in spec.split(","):
        label, eq, word = (s.strip() for s in item.rpartition("="))
        if not eq or not label or not word:
            raise UserError(
                f"--data.label_words: {item.strip()!r} is not LABEL=WORD (e.g. '0=bad,1=good'; labels with a "
                """comma: a JSON object, '{"a, b": "good"}')"""
            )
        if label in words:
            raise UserError(f"--data.label_words gives label {label!r} twice")
        words[label] = word
    return _check_words_apart(words)


def _json_label_words(spec: str) -> dict[str, str]:
    """The JSON-object form of --data.label_words: {"LABEL": "WORD", ...}."""
    try:
        pairs = json.loads(spec, object_pairs_hook=list)
    except json.JSONDecodeError as e:
        raise UserError(
            f"--data.label_words is not a valid JSON object ({e.msg}, character {e.pos})"
        ) from None
    if not isinstance(pairs, list) or not all(
        isinstance(pair, tuple) and isinstance(pair[1], str) and pair[1].strip() for pair in pairs
    ):
        raise UserError(
            """--data.label_words as JSON maps each label to one word: '{"neg": "bad", "pos": "good"}'"""
        )
    words: dict[str, str] = {}
    for label, word in pairs:
        if label in words:
            raise UserError(f"--data.label_words gives label {label!r} twice")
        words[label] = word.strip()
    return words


def _check_words_apart(words: dict[str, str]) -> dict[str, str]:
    """Each label its own word."""
    repeated = sorted({w for w in words.values() if list(words.values()).count(w) > 1})
    if repeated:
        raise UserError(
            f"--data.label_words gives the word {repeated[0]!r} to several labels; each needs its own"
        )
    return words


def check_label_words(words: dict[str, str], labels: Sequence[str], path: Path) -> None:
    """Every label has a word, and every word belongs to a label of the data."""
    missing = [label for label in labels if label not in words]
    if missing:
        raise UserError(
            f"label {missing[0]!r} of {path} has no word in --data.label_words; add {missing[0]}=WORD"
        )
    unknown = [label for label in words if label not in labels]
    if unknown:
        raise UserError(
            f"--data.label_words names label {unknown[0]!r}, which {path} does not have (labels: "
            f"{', '.join(labels)}); fix the label or drop it"
        )


def label_word_ids(tok: Any, words: dict[str, str], labels: Sequence[str]) -> list[int]:
    """The vocabulary id of each label's word, in label order; each word must be one token."""
    ids = []
    unk = tok.token_to_id("[UNK]")
    for label in labels:
        encoding = tok.encode(words[label], add_special_tokens=False)
        pieces = encoding.tokens
        special = len(pieces) == 1 and pieces[0] in SPECIAL_TOKENS  # [UNK], [MASK], [CLS], [SEP], [PAD]
        if len(pieces) != 1 or encoding.ids[0] == unk or special:
            what = f"{len(pieces)} tokens ({' '.join(pieces) or 'none'})" if len(pieces) != 1 else pieces[0]
            what += ", a special token," if special and pieces[0] != "[UNK]" else ""
            raise UserError(
                f"label word {words[label]!r} is {what} in this model's vocabulary; choose a word that is one "
                "token (masklm fill-mask on the template shows candidates)"
            )
        if encoding.ids[0] in ids:
            other = labels[ids.index(encoding.ids[0])]
            raise UserError(
                f"label words {words[other]!r} and {words[label]!r} are the same token ({pieces[0]}) in this "
                "model's vocabulary (its tokenizer normalises case, accents or Unicode form), so the labels could not be "
                "told apart; choose words that differ as tokens"
            )
        ids.append(encoding.ids[0])
    return ids


def prompt_readout(info: Any, tok: Any) -> dict[str, Any] | None:
    """For a model fine-tuned by this task (its saved ModelInfo): how its vocabulary logits become label scores
    ({"template", "label_words", "label_token_ids"}, in label order), for exports whose outputs are those
    logits; None for any other model."""
    task = info.task or {}
    if task.get("name") != PromptClassificationTask.name or not info.labels:
        return None
    data = task.get("data") or {}
    words = parse_label_words(data.get("label_words"))
    return {
        "template": data.get("prompt"),
        "label_words": [words[label] for label in info.labels],
        "label_token_ids": label_word_ids(tok, words, info.labels),
    }


def encode_prompts(
    tok: Any, examples: Sequence[Example], prompt: str | None, word_ids: list[int], max_length: int
) -> list[Feature]:
    """ "[CLS] template-with-texts [SEP]" per example, at most `max_length` tokens: the texts are cut (pairs
    longest-first), never the template. Each feature records where its [MASK] is ("prompt_position") and the
    label words' ids; "labels" when the examples' labels are ids already."""
    cls, sep, _ = special_token_ids(tok)
    mask = tok.token_to_id("[MASK]")
    if mask is None:
        raise UserError("the model's tokenizer has no [MASK] token; prompt-classification needs one")
    pairs = any(ex.get("text_pair") is not None for ex in examples)
    parts = template_parts(prompt, pairs)
    literal = {
        p: tok.encode(p, add_special_tokens=False).ids for p in parts if p not in ("{text}", "{text_pair}")
    }
    template = [literal[p] for p in parts if p in literal]  # the literal pieces, each as often as it appears
    masks = sum(ids.count(mask) for ids in template)
    if masks != 1:
        raise UserError(f"--data.prompt {prompt!r} must contain [MASK] exactly once, not {masks} times")
    budget = max_length - 2 - sum(map(len, template))
    if budget < (2 if pairs else 1):
        raise UserError(
            f"--data.prompt {prompt!r} leaves no room for the text in {max_length} tokens; raise --data.max_length"
        )
    texts = tok.encode_batch([ex["text"] for ex in examples], add_special_tokens=False) if examples else []
    seconds = (
        tok.encode_batch([ex["text_pair"] or "" for ex in examples], add_special_tokens=False)
        if pairs
        else []
    )
    features = []
    for i, ex in enumerate(examples):
        a, b = texts[i].ids, (seconds[i].ids if pairs else [])
        a, b = truncate_longest_first(a, b, budget) if pairs else (a[:budget], b)
        input_ids, position = [cls], -1
        for p in parts:
            piece = a if p == "{text}" else b if p == "{text_pair}" else literal[p]
            if p in literal and mask in piece:
                position = len(input_ids) + piece.index(mask)
            input_ids.extend(piece)
        input_ids.append(sep)
        feature: Feature = {
            "input_ids": input_ids,
            "token_type_ids": [0] * len(input_ids),
            "prompt_position": position,
            "label_word_ids": word_ids,
        }
        if ex.get("label") is not None:
            feature["labels"] = ex["label"]
        features.append(feature)
    return features


class PromptClassificationTask(ClassificationTask):
    """Classification read off the MLM head at a template's [MASK]: one word per label, cross-entropy."""

    name = "prompt-classification"
    architecture = "MaskedLM"
    data_settings = (*ClassificationTask.data_settings, "prompt", "label_words")
    claims_architecture = False  # a MaskedLM saved without a task name is a pretraining run, not this task's

    def label_set(
        self, examples: Sequence[Example], settings: FinetuneDataConfig, path: Path
    ) -> list[str] | None:
        if settings.regression:
            raise UserError("prompt-classification predicts labels, not scores; use --task classification")
        template_parts(settings.prompt, settings.text_pair_column is not None)
        labels = class_labels(examples, path)
        check_label_words(parse_label_words(settings.label_words), labels, path)
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
        assert settings.max_length is not None and labels is not None
        words = parse_label_words(settings.label_words)
        check_label_words(words, labels, path)
        examples = (
            encode_labels(examples, labels, path) if labelled else [{**ex, "label": None} for ex in examples]
        )
        return encode_prompts(
            tok, examples, settings.prompt, label_word_ids(tok, words, labels), settings.max_length
        )

    def check_model(self, model: nn.Module, settings: FinetuneDataConfig, model_path: str | Path) -> None:
        return None  # any masked LM; a checkpoint without a trained MLM head gets a fresh one (and a note)

    def settings_from_model(
        self, model: nn.Module, labels: Sequence[str] | None, settings: FinetuneDataConfig
    ) -> None:
        return None  # the template and label words come back with the saved data settings

    def check_fixed_settings(
        self, model: nn.Module, settings: FinetuneDataConfig, model_path: str | Path
    ) -> None:
        if settings.regression:
            raise UserError(
                f"{model_path} is a prompt-classification model, which predicts labels, not scores; leave "
                "--data.regression out"
            )

    def collate(self, features: Sequence[Feature], pad_id: int) -> Batch:
        """The padded batch, "prompt_targets" (B, T): -100 everywhere but each row's [MASK] (which the MLM head
        reads), and "label_word_ids" (L,)."""
        batch = pad_batch(features, pad_id)
        targets = torch.full_like(batch["input_ids"], -100)
        rows = torch.arange(len(features))
        targets[rows, torch.tensor([f["prompt_position"] for f in features])] = 0
        batch["prompt_targets"] = targets
        batch["label_word_ids"] = torch.tensor(features[0]["label_word_ids"], dtype=torch.long)
        return batch

    def forward(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        """(B, L): the MLM head's logits at each row's [MASK] for the L label words. Through the model's own
        forward (its `labels` pick one position per row), so DDP and torch.compile wrappers see the call."""
        logits = model(
            batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], batch["prompt_targets"]
        )
        return logits.index_select(-1, batch["label_word_ids"])
