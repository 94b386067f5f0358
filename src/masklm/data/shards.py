"""Read packed shards (memory-mapped) and decide which sequences each process trains on at each step.

    data = PackedDataset("data/wiki", "train")
    idx = batch_indices(step, batch_size=32, num_sequences=len(data), seed=0, rank=rank, world_size=world)
    ids, word_starts = data.get(idx)       # LongTensor (B, T), BoolTensor (B, T)

`batch_indices` is a pure function of its arguments: resuming at step s needs only s, never a replay of the stream.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from masklm.errors import UserError


class PackedDataset:
    """One split of a folder written by `masklm prepare`: rows of `seq_len` token ids plus word-start flags."""

    def __init__(self, data_dir: str | Path, split: str = "train") -> None:
        self.data_dir = Path(data_dir)
        self.split = split
        self.meta: dict[str, Any] = _read_meta(self.data_dir)
        splits = self.meta["splits"]
        if split not in splits:
            raise UserError(f"{self.data_dir} has no split {split!r} (it has {', '.join(splits)})")
        self.seq_len: int = int(self.meta["seq_len"])
        self._open_shards()

    def _open_shards(self) -> None:
        """Memory-map every shard of the split and note where each starts in the global numbering."""
        self._ids: list[np.ndarray] = []
        self._starts: list[np.ndarray] = []
        for shard in self.meta["splits"][self.split]["shards"]:
            ids = self._open(shard["ids"])
            starts = self._open(shard["word_starts"])
            rows = int(shard["sequences"])
            if ids.shape != (rows, self.seq_len) or starts.shape != (rows, (self.seq_len + 7) // 8):
                raise UserError(
                    f"{self.data_dir / shard['ids']} does not match meta.json; run masklm prepare again"
                )
            self._ids.append(ids)
            self._starts.append(starts)
        sizes = [len(a) for a in self._ids]
        self._offsets = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])  # shard s: [off[s], off[s+1])

    def __getstate__(self) -> dict[str, Any]:
        """Pickle (e.g. for DataLoader workers) without the mapped arrays, which would be copied in full."""
        state = self.__dict__.copy()
        del state["_ids"], state["_starts"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._open_shards()

    def _open(self, name: str) -> np.ndarray:
        path = self.data_dir / name
        try:
            return np.load(path, mmap_mode="r")
        except (OSError, ValueError) as e:
            raise UserError(f"cannot read {path} ({type(e).__name__}); run masklm prepare again") from None

    def __len__(self) -> int:
        return int(self._offsets[-1])

    @property
    def vocab_size(self) -> int:
        return int(self.meta["vocab_size"])

    def get(self, indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows at global `indices` (any order, any shards): ids LongTensor (n, T), word starts BoolTensor (n, T)."""
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        if len(indices) and (indices.min() < 0 or indices.max() >= len(self)):
            raise IndexError(f"indices must be in [0, {len(self)}), got {indices.min()}..{indices.max()}")
        ids = np.empty((len(indices), self.seq_len), dtype=np.int64)
        packed = np.empty((len(indices), (self.seq_len + 7) // 8), dtype=np.uint8)
        shard_of = np.searchsorted(self._offsets, indices, side="right") - 1
        for shard in np.unique(shard_of):
            here = shard_of == shard
            rows = indices[here] - self._offsets[shard]
            ids[here] = self._ids[shard][rows]
            packed[here] = self._starts[shard][rows]
        starts = np.unpackbits(packed, axis=1, count=self.seq_len).astype(bool)
        return torch.from_numpy(ids), torch.from_numpy(starts)


def _read_meta(data_dir: Path) -> dict[str, Any]:
    hint = f"{data_dir} is not a prepared data folder; run masklm prepare"
    try:
        meta = json.loads((data_dir / "meta.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{hint} (no meta.json)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{hint} (meta.json is unreadable: {type(e).__name__})") from None
    if not isinstance(meta, dict) or meta.get("format") != "masklm-packed" or "splits" not in meta:
        raise UserError(f"{hint} (meta.json is not masklm's)")
    return meta


@lru_cache(maxsize=4)
def _permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    """The order of epoch `epoch`: a permutation of range(n) from default_rng([seed, epoch]); read-only."""
    order = np.random.default_rng([seed, epoch]).permutation(n)
    order.flags.writeable = False
    return order


def batch_indices(
    step: int, batch_size: int, num_sequences: int, seed: int, rank: int = 0, world_size: int = 1
) -> np.ndarray:
    """Indices of the sequences that process `rank` uses at micro-step `step`.

    The global stream is epoch 0's permutation, then epoch 1's, and so on. Global micro-batch `step` is stream
    positions [step * B * W, (step + 1) * B * W); rank r takes the r-th block of B = batch_size of them.
    """
    if num_sequences <= 0:
        raise ValueError("num_sequences must be positive")
    if batch_size <= 0 or step < 0 or seed < 0:
        raise ValueError("batch_size must be positive and step, seed must be >= 0")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
    start = (step * world_size + rank) * batch_size
    positions = np.arange(start, start + batch_size, dtype=np.int64)
    epochs, offsets = np.divmod(positions, num_sequences)
    out = np.empty(batch_size, dtype=np.int64)
    for epoch in np.unique(epochs):  # usually one epoch, two when the batch crosses an epoch boundary
        here = epochs == epoch
        out[here] = _permutation(seed, int(epoch), num_sequences)[offsets[here]]
    return out


def iterate_eval(
    dataset: PackedDataset, batch_size: int, limit: int | None = None
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The first `limit` sequences (all when None), in order, in batches of at most `batch_size`."""
    end = len(dataset) if limit is None else min(limit, len(dataset))
    for start in range(0, end, batch_size):
        yield dataset.get(np.arange(start, min(start + batch_size, end)))
