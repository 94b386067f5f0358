"""Masking statistics over many draws, and its invariants."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from masklm.config import MaskConfig
from masklm.data.masking import mask_tokens

VOCAB, MASK_ID, PAD, CLS, SEP = 1000, 4, 0, 2, 3


def make_batch(B=64, T=128, seed=0, pad_tail=10):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(10, VOCAB, (B, T), generator=g)
    ids[:, 0] = CLS
    ids[:, T // 2] = SEP  # a document boundary inside the sequence
    ids[:, T - pad_tail - 1] = SEP
    if pad_tail:
        ids[:, T - pad_tail :] = PAD
    special = (ids == PAD) | (ids == CLS) | (ids == SEP)
    # words of 1-4 tokens
    starts = torch.rand((B, T), generator=g) < 0.4
    return ids, special, starts


def draw(cfg, ids, special, starts, seed):
    g = torch.Generator().manual_seed(seed)
    return mask_tokens(
        ids, special, cfg, mask_token_id=MASK_ID, vocab_size=VOCAB, generator=g, word_starts=starts
    )


def test_token_rate_and_80_10_10_split():
    ids, special, starts = make_batch()
    cfg = MaskConfig(rate=0.15)
    chosen = masked_as_mask = random = unchanged = 0
    eligible = 0
    for seed in range(40):
        out, labels = draw(cfg, ids, special, starts, seed)
        sel = labels != -100
        chosen += int(sel.sum())
        eligible += int((~special).sum())
        masked_as_mask += int((out[sel] == MASK_ID).sum())
        unchanged += int((out[sel] == ids[sel]).sum())
        random += int(((out[sel] != MASK_ID) & (out[sel] != ids[sel])).sum())
        assert torch.equal(labels[sel], ids[sel])
        assert torch.equal(out[~sel], ids[~sel]), "unchosen positions must be untouched"
    assert abs(chosen / eligible - 0.15) < 0.005
    assert abs(masked_as_mask / chosen - 0.8) < 0.01
    # a random draw can hit the original token (1/VOCAB), so random + unchanged ≈ 0.2 and each ≈ 0.1
    assert abs(random / chosen - 0.1) < 0.01
    assert abs(unchanged / chosen - 0.1) < 0.01


def test_custom_split_and_rate():
    ids, special, starts = make_batch()
    cfg = MaskConfig(rate=0.4, mask_prob=1.0, random_prob=0.0)
    out, labels = draw(cfg, ids, special, starts, 1)
    sel = labels != -100
    assert abs(sel.sum() / (~special).sum() - 0.4) < 0.02
    assert bool((out[sel] == MASK_ID).all())


def test_specials_never_masked_any_strategy():
    ids, special, starts = make_batch()
    for strategy in ("token", "whole_word", "span"):
        cfg = MaskConfig(rate=0.5, strategy=strategy)
        for seed in range(5):
            out, labels = draw(cfg, ids, special, starts, seed)
            assert bool((labels[special] == -100).all()), strategy
            assert torch.equal(out[special], ids[special]), strategy


def _words(starts_row, special_row):
    """List of token-index lists, one per word, specials excluded."""
    words, cur = [], []
    for t in range(len(starts_row)):
        if special_row[t]:
            if cur:
                words.append(cur)
            cur = []
            continue
        if starts_row[t] and cur:
            words.append(cur)
            cur = []
        cur.append(t)
    if cur:
        words.append(cur)
    return words


def test_whole_words_masked_whole_and_rate():
    ids, special, starts = make_batch(B=32)
    cfg = MaskConfig(rate=0.15, strategy="whole_word")
    total, eligible = 0, 0
    for seed in range(20):
        _, labels = draw(cfg, ids, special, starts, seed)
        sel = labels != -100
        total += int(sel.sum())
        eligible += int((~special).sum())
        for b in range(ids.shape[0]):
            for word in _words(starts[b].tolist(), special[b].tolist()):
                flags = {bool(sel[b, t]) for t in word}
                assert len(flags) == 1, f"word {word} partly masked"
    assert abs(total / eligible - 0.15) < 0.01


def test_span_lengths_and_rate():
    ids, special, _ = make_batch(B=32, pad_tail=0)
    starts = torch.ones_like(ids, dtype=torch.bool)  # every token is a word: spans are measured in tokens
    cfg = MaskConfig(rate=0.15, strategy="span", span_mean=3.0, span_max=10)
    lengths, total, eligible = [], 0, 0
    for seed in range(20):
        _, labels = draw(cfg, ids, special, starts, seed)
        sel = labels != -100
        total += int(sel.sum())
        eligible += int((~special).sum())
        for row in sel.tolist():
            run = 0
            for v in [*row, False]:
                if v:
                    run += 1
                elif run:
                    lengths.append(run)
                    run = 0
    rate = total / eligible
    assert abs(rate - 0.15) < 0.01
    mean = sum(lengths) / len(lengths)
    # adjacent spans merge into longer runs and the cap shortens them: the observed mean is near span_mean
    assert 2.0 < mean < 4.5, mean
    assert max(lengths) > 3, "spans must be longer than single tokens"


def test_a_span_stays_in_its_document():
    """A span is cut where its document ends: with one long span per row (a budget of one token, spans of about
    20 words), the masked tokens of a row all lie on one side of the [SEP] between its two documents (about 1% of
    spans covered words of both before)."""
    ids, special, _ = make_batch(B=64, T=42, pad_tail=0)  # [CLS] 20 tokens [SEP] 19 tokens [SEP]
    starts = torch.ones_like(ids, dtype=torch.bool)
    cfg = MaskConfig(rate=0.025, strategy="span", span_mean=20.0, span_max=20)
    both = 0
    for seed in range(10):
        _, labels = draw(cfg, ids, special, starts, seed)
        sel = labels != -100
        both += int((sel[:, :21].any(dim=1) & sel[:, 22:].any(dim=1)).sum())
    assert both == 0


def test_same_generator_same_mask_and_different_seed_differs():
    ids, special, starts = make_batch()
    cfg = MaskConfig(strategy="whole_word")
    a = draw(cfg, ids, special, starts, 7)
    b = draw(cfg, ids, special, starts, 7)
    c = draw(cfg, ids, special, starts, 8)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])


@settings(max_examples=60, deadline=None)
@given(
    rate=st.floats(0.05, 0.6),
    strategy=st.sampled_from(["token", "whole_word", "span"]),
    seed=st.integers(0, 2**31),
    T=st.integers(4, 40),
)
def test_property_specials_untouched_and_every_row_has_a_target(rate, strategy, seed, T):
    ids, special, starts = make_batch(B=4, T=T, seed=seed % 1000, pad_tail=min(2, T - 3))
    out, labels = draw(MaskConfig(rate=rate, strategy=strategy), ids, special, starts, seed)
    assert bool((labels[special] == -100).all())
    assert torch.equal(out[special], ids[special])
    has_real = (~special).any(dim=1)
    assert bool(((labels != -100).any(dim=1) | ~has_real).all())


def test_the_one_target_of_an_empty_row_is_a_whole_word():
    """At a rate so low that most rows choose nothing, the fallback target of whole-word (and span) masking is
    a whole word, never one piece of a longer word."""
    ids, special, starts = make_batch(B=64, T=32)
    for strategy in ("whole_word", "span"):
        cfg = MaskConfig(rate=0.001, strategy=strategy)
        for seed in range(5):
            _, labels = draw(cfg, ids, special, starts, seed)
            sel = labels != -100
            assert bool(sel.any(dim=1).all())
            for b in range(ids.shape[0]):
                for word in _words(starts[b].tolist(), special[b].tolist()):
                    assert len({bool(sel[b, t]) for t in word}) == 1, (strategy, seed, b, word)
