"""Several prepared corpora sampled by weight, as one deterministic, resumable stream.

    sources = [parse_source("data/web:0.7"), parse_source("data/books:0.3")]
    mix = Mixture([PackedDataset(s.path) for s in sources], [0.7, 0.3], seed=0)
    ids, word_starts = mix.draw(np.arange(64), seed=0)   # the rows at stream positions 0..63

Like a single corpus's stream (`masklm.data.shards.batch_indices`), the mixture is a pure function of the stream
position, so a resumed run continues it exactly. The stream is cut into blocks of BLOCK positions. Every block
holds each source the same number of times (the weights apportioned to BLOCK by largest remainders, so a weight
is honoured to within 1 / BLOCK), in an order shuffled per block; the k-th position given to a source takes that
source's k-th row of its own stream, epoch after epoch of its rows shuffled. Counting what each source has
supplied up to any position is therefore exact and cheap.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from masklm.data.shards import PackedDataset
from masklm.errors import UserError

BLOCK = 1 << 16
_WEIGHT = re.compile(r"^(.+):([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)$")


@dataclass(frozen=True)
class Source:
    """One `--data` argument: a prepared folder (or folder of parts) and its weight (None: by its size)."""

    path: Path
    weight: float | None = None

    @property
    def name(self) -> str:
        return self.path.name or str(self.path)


def parse_source(text: str) -> Source:
    """ "DIR" or "DIR:WEIGHT" → Source. A DIR that exists as written wins over reading ":..." as a weight."""
    if not text.strip():  # Path("") is the current folder
        raise UserError("--data is empty; name a folder made by masklm prepare")
    match = _WEIGHT.match(text)
    if match is None or Path(text).exists():
        folder, sep, weight_text = text.rpartition(":")
        if sep and not Path(text).exists() and Path(folder).exists():  # a weight that is not a number: d1:-1
            raise UserError(f"the weight in --data {text} must be a positive number, not {weight_text!r}")
        return Source(Path(text))
    weight = float(match.group(2))
    if not (math.isfinite(weight) and weight > 0):
        raise UserError(f"the weight in --data {text} must be a positive number")
    return Source(Path(match.group(1)), weight)


def source_weights(sources: list[Source], sizes: list[int]) -> list[float]:
    """The sampling weights, summing to 1: as given (all or none), or each source's share of the rows."""
    given = [s.weight for s in sources]
    if any(w is None for w in given) and any(w is not None for w in given):
        raise UserError("give every --data source a weight (DIR:WEIGHT) or none (then by size)")
    raw = [float(w) for w in given] if given[0] is not None else [float(n) for n in sizes]  # type: ignore[arg-type]
    return [w / sum(raw) for w in raw]


def apportion(weights: list[float], total: int) -> np.ndarray:
    """Integer counts summing to `total`, proportional to `weights` (largest remainders, ties to the first)."""
    exact = np.asarray(weights, dtype=np.float64) * total
    counts = np.floor(exact).astype(np.int64)
    order = sorted(range(len(weights)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in order[: total - int(counts.sum())]:
        counts[i] += 1
    return counts


class Mixture:
    """Datasets (one per source, sharing tokenizer and seq_len) drawn from by weight; see the module docstring."""

    def __init__(self, datasets: list[PackedDataset], weights: list[float], names: list[str]) -> None:
        self.datasets, self.names = datasets, names
        self.seq_len = datasets[0].seq_len
        self.tokenizer_path = datasets[0].tokenizer_path
        # the same for every source (`merged_meta` checks it)
        self.tokenizer_hash = datasets[0].tokenizer_hash
        self.counts = apportion(weights, BLOCK)  # positions per block, by source
        if (self.counts == 0).any():
            small = names[int(np.argmin(self.counts))]
            raise UserError(
                f"the weight of --data {small} is below 1/{BLOCK} of the total; raise it or drop it"
            )

    def __len__(self) -> int:
        return sum(len(d) for d in self.datasets)

    def locate(self, positions: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """(source, k) for each stream position: the position is source's k-th draw."""
        positions = np.asarray(positions, dtype=np.int64)
        blocks, offsets = np.divmod(positions, BLOCK)
        source = np.empty(len(positions), dtype=np.int64)
        k = np.empty(len(positions), dtype=np.int64)
        for block in np.unique(blocks):
            here = blocks == block
            order, rank = _block(seed, int(block), tuple(self.counts.tolist()))
            source[here] = order[offsets[here]]
            k[here] = block * self.counts[source[here]] + rank[offsets[here]]
        return source, k

    def draw(self, positions: np.ndarray, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The rows at stream `positions`, in order: ids LongTensor (n, T), word starts BoolTensor (n, T)."""
        source, k = self.locate(positions, seed)
        ids = torch.empty((len(source), self.seq_len), dtype=torch.long)
        starts = torch.empty((len(source), self.seq_len), dtype=torch.bool)
        for s in np.unique(source):
            here = source == s
            dataset = self.datasets[int(s)]
            epochs, offsets = np.divmod(k[here], len(dataset))
            rows = np.empty(len(offsets), dtype=np.int64)
            for epoch in np.unique(epochs):
                rows[epochs == epoch] = _source_order(seed, int(s), int(epoch), len(dataset))[
                    offsets[epochs == epoch]
                ]
            mask = torch.from_numpy(here)
            ids[mask], starts[mask] = dataset.get(rows)
        return ids, starts

    def sequences_by_source(self, positions: int, seed: int) -> dict[str, int]:
        """How many of the first `positions` stream positions each source supplied."""
        full, rest = divmod(positions, BLOCK)
        counts = self.counts * full
        if rest:
            counts = counts + np.bincount(
                _block(seed, full, tuple(self.counts.tolist()))[0][:rest], minlength=len(self.counts)
            )
        return {name: int(c) for name, c in zip(self.names, counts)}


@lru_cache(maxsize=4)
def _block(seed: int, block: int, counts: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(source at each offset of the block, how many earlier offsets of the block have the same source)."""
    order = np.random.default_rng([seed, 1 << 20, block]).permutation(
        np.repeat(np.arange(len(counts)), counts)
    )
    by_source = np.argsort(order, kind="stable")
    firsts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.empty(len(order), dtype=np.int64)
    rank[by_source] = np.arange(len(order)) - firsts[order[by_source]]
    order.flags.writeable = rank.flags.writeable = False
    return order, rank


@lru_cache(maxsize=16)
def _source_order(seed: int, source: int, epoch: int, n: int) -> np.ndarray:
    """Source `source`'s rows in epoch `epoch`: a permutation of range(n); read-only."""
    order = np.random.default_rng([seed, 1 << 21, source, epoch]).permutation(n)
    order.flags.writeable = False
    return order
