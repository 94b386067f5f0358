"""Word embeddings from the training text's co-occurrence counts, for a model pretrained from scratch.

A fresh model's word embeddings are random, and in the first minutes of masked-LM training on a CPU they learn
slowly which words are used alike: after the README demo's 9 float32 minutes on a 2-core AVX2 CPU, the nearest
embeddings of "awful" were "amazing, great, excellent". `train.embedding_init: ppmi` starts them instead as the
word vectors of a classical count model (Levy, Goldberg & Dagan 2015), computed from the first rows of the
training stream in seconds to a minute:

1. count, for every pair of tokens within `WINDOW` positions of each other in a row, how often they co-occur,
   each pair weighted 1/distance (special tokens left out);
2. positive pointwise mutual information: max(0, log p(w, c) / (p(w) p_0.75(c))), where the context distribution
   is smoothed by the power 0.75 (word2vec's, which keeps rare contexts from dominating);
3. a truncated SVD of that (V, V) matrix: a token's vector is its row of U √S, scaled so that the vectors'
   entries have the standard deviation of the normal initialisation (`model.initializer_range`).

Tokens that never co-occur with another (and the special tokens) keep their normal initialisation. The counts
live in sparse form (one entry per distinct pair); the PPMI matrix is dense up to `DENSE_MAX_VOCAB` tokens, where
the SVD's products are many times faster, and sparse above, where V² floats would not fit.
The result is deterministic: the counts are exact and the SVD's random projection is seeded.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

if TYPE_CHECKING:
    from masklm.data.mixture import Mixture
    from masklm.data.shards import PackedDataset

WINDOW = 5  # tokens on each side
MAX_TOKENS = 10_000_000  # counted: the first rows of the training stream up to this many tokens (2.5 GB)
CONTEXT_POWER = 0.75
DENSE_MAX_VOCAB = 16_384  # up to this vocabulary the PPMI matrix is held dense (1 GiB of float32 at most)
_ROWS_PER_CHUNK = 8192


def cooccurrence(
    rows: Iterable[np.ndarray], vocab_size: int, skip: Sequence[int], window: int = WINDOW
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Symmetric co-occurrence weights of token pairs within `window` positions in each (n, T) block of `rows`:
    (first ids, second ids, weights), one entry per distinct pair, a pair at distance d adding 1/d. Pairs with
    an id in `skip` (special tokens, padding) are not counted."""
    keys: list[np.ndarray] = []
    weights: list[np.ndarray] = []
    skip_ids = np.asarray(list(skip), dtype=np.int64)
    for block in rows:
        block = np.asarray(block, dtype=np.int64)
        kept = ~np.isin(block, skip_ids)
        for d in range(1, min(window, block.shape[1] - 1) + 1):
            a, b = block[:, :-d], block[:, d:]
            both = kept[:, :-d] & kept[:, d:]
            a, b = a[both], b[both]
            pair_keys, counts = np.unique(
                np.concatenate([a * vocab_size + b, b * vocab_size + a]), return_counts=True
            )
            keys.append(pair_keys)
            weights.append(counts / d)
    if not keys:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, np.zeros(0)
    merged, where = np.unique(np.concatenate(keys), return_inverse=True)
    total = np.bincount(where, weights=np.concatenate(weights))
    return merged // vocab_size, merged % vocab_size, total


def ppmi_vectors(
    first: np.ndarray, second: np.ndarray, weights: np.ndarray, vocab_size: int, dim: int, seed: int
) -> torch.Tensor:
    """(vocab_size, dim) float32 word vectors U √S of the truncated SVD of the PPMI matrix of the co-occurrence
    weights; rows of tokens without a positive PMI entry are zero, and so are the columns past the matrix's rank."""
    out = torch.zeros(vocab_size, dim)
    if weights.size == 0:
        return out
    total = weights.sum()
    word = np.bincount(first, weights=weights, minlength=vocab_size)
    context = word**CONTEXT_POWER
    context /= context.sum()
    pmi = np.log(weights / total) - np.log(word[first] / total) - np.log(context[second])
    positive = pmi > 0
    index = torch.from_numpy(np.stack([first[positive], second[positive]]))
    values = torch.from_numpy(pmi[positive].astype(np.float32))
    if vocab_size <= DENSE_MAX_VOCAB:  # dense products: many times faster than sparse ones on a CPU
        matrix = torch.zeros(vocab_size, vocab_size)
        matrix[index[0], index[1]] = values  # one entry per pair: nothing to add up
    else:
        matrix = torch.sparse_coo_tensor(
            index, values, (vocab_size, vocab_size), check_invariants=True
        ).coalesce()
    rank = min(dim, vocab_size)
    with torch.random.fork_rng(devices=[]):  # svd_lowrank draws its projection from the global generator
        torch.manual_seed(seed)
        # a few directions more than kept, and 6 power iterations: the trailing kept singular values within 1-3%
        # of what 8 iterations and 64 more directions give (4.5 s for the demo's 8,192 tokens)
        u, s, _ = torch.svd_lowrank(matrix, q=min(rank + 16, vocab_size), niter=6)
    out[:, :rank] = u[:, :rank] * s[:rank].sqrt()
    has_row = np.zeros(vocab_size, dtype=bool)
    has_row[first[positive]] = True
    out[torch.from_numpy(~has_row)] = 0  # the projection leaves such rows at rounding noise, not zero
    return out


def init_word_embeddings(
    embedding: nn.Embedding,
    rows: Iterable[np.ndarray],
    skip: Sequence[int],
    vocab_size: int,
    std: float,
    seed: int,
) -> str:
    """Overwrite the rows of `embedding` (the first `vocab_size`) of tokens that co-occur in `rows` with PPMI-SVD
    vectors scaled to entries of standard deviation `std`; returns a note for the run's log."""
    start = time.perf_counter()
    first, second, weights = cooccurrence(rows, vocab_size, skip)
    vectors = ppmi_vectors(first, second, weights, vocab_size, embedding.embedding_dim, seed)
    seen = vectors.abs().sum(1) > 0  # tokens with a positive PMI entry (no vector: normal init kept)
    seen[list(skip)] = False
    trained = vectors[seen]
    if trained.numel() and trained.std() > 0:
        with torch.no_grad():
            embedding.weight[:vocab_size][seen] = (trained * (std / trained.std())).to(embedding.weight.dtype)
    else:
        seen[:] = False
    return (
        f"word embeddings of {int(seen.sum()):,} tokens from the training text's co-occurrences (PPMI + SVD over "
        f"{int(weights.sum()) // 2:,} weighted pairs) in {time.perf_counter() - start:.0f} s"
    )


def stream_blocks(
    dataset: PackedDataset | Mixture, seed: int, max_tokens: int = MAX_TOKENS
) -> Iterable[np.ndarray]:
    """The first rows of the training stream (`dataset.draw`: shuffled, or a mixture's by weight), up to
    `max_tokens` tokens, in (n, T) blocks."""
    seq_len = int(dataset.seq_len)
    count = min(len(dataset), max(1, max_tokens // seq_len))
    for begin in range(0, count, _ROWS_PER_CHUNK):
        ids, _ = dataset.draw(np.arange(begin, min(count, begin + _ROWS_PER_CHUNK)), seed)
        yield ids.numpy()
