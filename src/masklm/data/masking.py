"""Dynamic masking for masked-language-model training: one pure function per batch.

`mask_tokens` picks positions to predict, then replaces them with [MASK], a random token or leaves them alone
(80/10/10 for the MLM objective, 85/0/15 for ELECTRA's generator: `MaskConfig.for_objective`). Three ways to
pick:

- "token": every non-special token independently with probability `rate` (BERT).
- "whole_word": every word independently with probability `rate`; all of its tokens together. Words come from the
  tokenizer's own word boundaries (the `word_starts` flags written by `prepare`), so this works for any
  pre-tokenizer, not only WordPiece's "##" continuation pieces.
- "span": contiguous runs of whole words with geometric lengths (SpanBERT) until `rate` of the tokens are chosen.

All randomness comes from the `torch.Generator` passed in: the same generator state gives the same mask.
Special tokens ([CLS], [SEP], [PAD], ...) are never chosen.
"""

from __future__ import annotations

import hashlib
import math

import torch

from masklm.config import MaskConfig

IGNORE_INDEX = -100


def mask_seed(seed: int, *key: int) -> int:
    """A generator seed from the run's seed and a key (a stream position in training): masks are pure functions."""
    digest = hashlib.blake2b(":".join(map(str, ("mask", seed, *key))).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def mask_tokens(
    input_ids: torch.Tensor,
    special_mask: torch.Tensor,
    cfg: MaskConfig,
    *,
    mask_token_id: int,
    vocab_size: int,
    generator: torch.Generator,
    word_starts: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask a batch.

    input_ids:    (B, T) token ids.
    special_mask: (B, T) True where the token must never be masked (special tokens and padding).
    word_starts:  (B, T) True where a token begins a new word; needed for "whole_word" and "span".
    Returns (masked_ids, labels): labels hold the original id at chosen positions and -100 elsewhere.
    """
    word_ids = None
    if cfg.strategy == "token":
        chosen = _choose_tokens(special_mask, cfg.rate, generator)
    else:
        if word_starts is None:
            raise ValueError(f"mask strategy {cfg.strategy!r} needs word_starts")
        word_ids = _word_ids(word_starts, special_mask)
        if cfg.strategy == "whole_word":
            chosen = _choose_words(word_ids, special_mask, cfg.rate, generator)
        elif cfg.strategy == "span":
            chosen = _choose_spans(word_ids, special_mask, cfg, generator)
        else:
            raise ValueError(f"unknown mask strategy {cfg.strategy!r}")
    chosen = _at_least_one(chosen, special_mask, generator, word_ids)

    labels = torch.where(chosen, input_ids, torch.full_like(input_ids, IGNORE_INDEX))

    # The replacement split: [MASK] with mask_prob, a random token with random_prob, else unchanged (a config
    # not yet validated against its objective: BERT's split).
    split = cfg.for_objective("mlm")
    roll = torch.rand(input_ids.shape, generator=generator)
    to_mask = chosen & (roll < split.mask_prob)
    to_random = chosen & (roll >= split.mask_prob) & (roll < split.mask_prob + split.random_prob)
    random_ids = torch.randint(vocab_size, input_ids.shape, generator=generator, dtype=input_ids.dtype)
    masked = torch.where(to_mask, torch.full_like(input_ids, mask_token_id), input_ids)
    masked = torch.where(to_random, random_ids, masked)
    return masked, labels


def _choose_tokens(special_mask: torch.Tensor, rate: float, generator: torch.Generator) -> torch.Tensor:
    return (torch.rand(special_mask.shape, generator=generator) < rate) & ~special_mask


def _word_ids(word_starts: torch.Tensor, special_mask: torch.Tensor) -> torch.Tensor:
    """(B, T) index of the word each token belongs to, counted from 0 in each row.

    Special tokens always start a word of their own, so a word never spans [SEP] between documents.
    """
    starts = word_starts.bool() | special_mask
    starts[:, 0] = True
    return torch.cumsum(starts.long(), dim=1) - 1


def _choose_words(
    word_ids: torch.Tensor, special_mask: torch.Tensor, rate: float, generator: torch.Generator
) -> torch.Tensor:
    B, T = word_ids.shape
    # Each possible word index gets one coin per row; a token is chosen when its word's coin says so.
    word_coin = torch.rand((B, T), generator=generator) < rate
    return torch.gather(word_coin, 1, word_ids) & ~special_mask


def _choose_spans(
    word_ids: torch.Tensor, special_mask: torch.Tensor, cfg: MaskConfig, generator: torch.Generator
) -> torch.Tensor:
    """SpanBERT-style: spans of whole words, lengths ~ Geometric(1 / span_mean) capped at span_max, each cut
    where its document (or the row) ends. A span that would overshoot the rate's budget is drawn again and spans
    may overlap, so the spans masked are shorter on average than the lengths drawn."""
    B, T = word_ids.shape
    chosen = torch.zeros((B, T), dtype=torch.bool)
    p = min(1.0, 1.0 / cfg.span_mean)
    for b in range(B):
        eligible = ~special_mask[b]
        n_tokens = int(eligible.sum())
        if n_tokens == 0:
            continue
        words = torch.unique(word_ids[b][eligible])  # sorted word indices holding real tokens
        # each word's document in the row, counted by the specials ([CLS], [SEP]) up to its first token (word ids
        # never decrease along a row): a span stays in one document
        first_token = torch.searchsorted(word_ids[b].contiguous(), words)
        documents = torch.cumsum(special_mask[b].long(), 0)[first_token]
        budget = max(1, round(cfg.rate * n_tokens))
        row_words = word_ids[b]
        picked_words = torch.zeros(int(row_words.max()) + 1, dtype=torch.bool)
        covered = 0
        for _ in range(4 * n_tokens):  # a bound; the budget is normally met after ~budget/span_mean spans
            if covered >= budget:
                break
            u = float(torch.rand((), generator=generator))
            length = 1 if p >= 1.0 else int(math.ceil(math.log(1.0 - u) / math.log(1.0 - p)))
            length = max(1, min(length, cfg.span_max))
            start = int(torch.randint(len(words), (), generator=generator))
            span = words[start : start + length]
            span = span[
                documents[start : start + length] == documents[start]
            ]  # cut where the next one begins
            new = picked_words.clone()
            new[span] = True
            tokens = int((new[row_words] & eligible).sum())
            if tokens > budget and covered > 0:
                continue  # this span would overshoot: draw another (SpanBERT does the same)
            picked_words, covered = new, tokens
        chosen[b] = picked_words[row_words] & eligible
    return chosen


def _at_least_one(
    chosen: torch.Tensor,
    special_mask: torch.Tensor,
    generator: torch.Generator,
    word_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """Rows with real tokens but nothing chosen get one random real token, so every row has a target; with
    `word_ids` (whole-word and span masking) the whole word of that token, never a lone piece of one."""
    empty = ~chosen.any(dim=1) & (~special_mask).any(dim=1)
    if not bool(empty.any()):
        return chosen
    scores = torch.rand(chosen.shape, generator=generator).masked_fill(special_mask, -1.0)
    pick = scores.argmax(dim=1)  # (B,)
    if word_ids is None:
        extra = torch.zeros_like(chosen)
        extra[torch.arange(chosen.shape[0]), pick] = True
    else:
        picked_word = word_ids.gather(1, pick[:, None])  # (B, 1)
        extra = (word_ids == picked_word) & ~special_mask
    return chosen | (extra & empty[:, None])
