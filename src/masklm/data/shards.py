"""Read packed shards (memory-mapped) and decide which sequences each process trains on at each step.

    data = PackedDataset("data/wiki", "train")
    idx = batch_indices(step, batch_size=32, num_sequences=len(data), seed=0, rank=rank, world_size=world)
    ids, word_starts = data.get(idx)       # LongTensor (B, T), BoolTensor (B, T)

`batch_indices` is a pure function of its arguments: resuming at step s needs only s, never a replay of the stream.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from masklm.errors import UserError


class PackedDataset:
    """One split of a folder written by `masklm prepare`: rows of `seq_len` token ids plus word-start flags.

    `data_dir` may also be a folder of parts (OUTPUT/part-IIIII-of-NNNNN from `prepare --num-shards`), or a list
    of such folders: their rows are read as one dataset, folder after folder, and the parts of one folder in
    segment order, which is the order one `prepare` of the whole corpus would have written them in. Shards are memory-mapped only when a row of
    theirs is first read, so opening a corpus of a thousand shards costs no more than opening one.
    """

    def __init__(self, data_dir: str | Path | Sequence[str | Path], split: str = "train") -> None:
        dirs = [Path(data_dir)] if isinstance(data_dir, str | Path) else [Path(d) for d in data_dir]
        self.data_dir = dirs[0]
        self.split = split
        self.meta: dict[str, Any] = merged_meta([find_parts(d) for d in dirs], split)
        self.tokenizer_path: Path = self.meta["tokenizer_path"]
        # the hash of the tokenizer that wrote the ids
        self.tokenizer_hash: str | None = self.meta.get("tokenizer_hash")
        self.seq_len: int = int(self.meta["seq_len"])
        self.starts_width = (self.seq_len + 7) // 8  # bytes of a row's packed word-start flags
        self._index_shards()

    def _index_shards(self) -> None:
        """Note each shard's files and where it starts in the global numbering; open none of them yet."""
        self._shards: list[tuple[Path, Path, int]] = [
            (Path(s["ids"]), Path(s["word_starts"]), int(s["sequences"]))
            for s in self.meta["splits"][self.split]["shards"]
        ]
        # a missing or cut shard: an error now, not mid-training
        for ids_path, starts_path, rows in self._shards:
            _check_header(ids_path, (rows, self.seq_len))
            _check_header(starts_path, (rows, self.starts_width))
        self._ids: list[np.ndarray | None] = [None] * len(self._shards)
        self._starts: list[np.ndarray | None] = [None] * len(self._shards)
        sizes = [rows for _, _, rows in self._shards]
        self._offsets = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])  # shard s: [off[s], off[s+1])

    @property
    def opened_shards(self) -> int:
        """How many shards are memory-mapped so far."""
        return sum(a is not None for a in self._ids)

    def _shard(self, s: int) -> tuple[np.ndarray, np.ndarray]:
        """Shard `s`'s (ids, packed word starts), memory-mapped on first use and checked against meta.json."""
        ids, starts = self._ids[s], self._starts[s]
        if ids is None or starts is None:
            ids_path, starts_path, rows = self._shards[s]
            ids, starts = _open(ids_path), _open(starts_path)
            for path, array, width in (
                (ids_path, ids, self.seq_len),
                (starts_path, starts, self.starts_width),
            ):
                if array.shape != (rows, width):
                    raise UserError(f"{path} does not match meta.json; run masklm prepare again")
            self._ids[s], self._starts[s] = ids, starts
        return ids, starts

    def __getstate__(self) -> dict[str, Any]:
        """Pickle (e.g. for DataLoader workers) without the mapped arrays, which would be copied in full."""
        state = self.__dict__.copy()
        for derived in ("_ids", "_starts", "_shards", "_offsets"):  # rebuilt from meta by _index_shards
            del state[derived]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._index_shards()

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
        packed = np.empty((len(indices), self.starts_width), dtype=np.uint8)
        shard_of = np.searchsorted(self._offsets, indices, side="right") - 1
        for shard in np.unique(shard_of):
            here = shard_of == shard
            rows = indices[here] - self._offsets[shard]
            shard_ids, shard_starts = self._shard(int(shard))
            ids[here] = shard_ids[rows]
            packed[here] = shard_starts[rows]
        starts = np.unpackbits(packed, axis=1, count=self.seq_len).astype(bool)
        return torch.from_numpy(ids), torch.from_numpy(starts)

    def draw(self, positions: np.ndarray, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The rows at global stream `positions` (see `batch_indices`): epoch after epoch of shuffled rows."""
        return self.get(stream_rows(positions, len(self), seed))


def _check_header(path: Path, shape: tuple[int, int]) -> None:
    """A shard file is there, its .npy header says `shape` and the file is long enough to hold it: a missing,
    cut short or foreign shard is refused when the data is opened (before a run folder is touched), not when
    training reaches it. Reads the header only."""
    readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    try:
        with open(path, "rb") as f:
            got, _, dtype = readers[np.lib.format.read_magic(f)](f)
            need, size = f.tell() + int(np.prod(got)) * dtype.itemsize, os.fstat(f.fileno()).st_size
    except FileNotFoundError:
        raise UserError(f"cannot read {path} (missing); run masklm prepare again") from None
    except (OSError, ValueError, KeyError) as e:
        raise UserError(f"cannot read {path} ({type(e).__name__}); run masklm prepare again") from None
    # token ids and packed flags: integers (written unsigned)
    if tuple(got) != shape or dtype.kind not in "ui":
        raise UserError(f"{path} does not match meta.json; run masklm prepare again")
    if size < need:
        raise UserError(f"{path} is cut short ({size} of {need} bytes); run masklm prepare again")


def _open(path: Path) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r")
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read {path} ({type(e).__name__}); run masklm prepare again") from None


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


def is_prepared(data_dir: Path) -> bool:
    """Whether `data_dir` holds masklm's prepared data (a meta.json `_read_meta` accepts)."""
    try:
        _read_meta(data_dir)
    except UserError:
        return False
    return True


def find_parts(data_dir: Path) -> list[tuple[Path, dict[str, Any]]]:
    """[(folder, meta)]: the prepared folder itself, or the parts in it (part-IIIII-of-NNNNN), all present."""
    if (data_dir / "meta.json").is_file() or not data_dir.is_dir():
        return [(data_dir, _read_meta(data_dir))]
    folders = sorted(p for p in data_dir.glob("part-*-of-*") if (p / "meta.json").is_file())
    if not folders:
        return [(data_dir, _read_meta(data_dir))]  # the usual "not a prepared data folder" error
    parts = [(folder, _read_meta(folder)) for folder in folders]
    counts = {int(meta.get("part", {}).get("count", 1)) for _, meta in parts}
    have = sorted(int(meta.get("part", {}).get("index", 0)) for _, meta in parts)
    if len(counts) != 1 or have != list(range(counts.pop())):
        names = ", ".join(folder.name for folder, _ in parts)
        raise UserError(
            f"{data_dir} holds the parts {names}, not all parts of one corpus; run the missing masklm prepare "
            "--shard-index jobs (or remove stray parts)"
        )
    return parts


def merged_meta(corpora: list[list[tuple[Path, dict[str, Any]]]], split: str) -> dict[str, Any]:
    """The first part's meta.json, with `split`'s shards of every part of every corpus (absolute paths; corpus
    after corpus, each corpus's in segment order) and their counts summed; UserError when the parts differ in
    tokenizer, sequence length or segment size, when one lacks the split, or when they hold no training rows."""
    parts = [part for corpus in corpora for part in corpus]
    first_dir, first = parts[0]
    for folder, meta in parts:
        if split not in meta["splits"]:
            raise UserError(f"{folder} has no split {split!r} (it has {', '.join(meta['splits'])})")
        for key, what in (("tokenizer_hash", "tokenizer"), ("seq_len", "sequence length")):
            if meta.get(key) != first.get(key):
                raise UserError(
                    f"{folder} and {first_dir} were prepared with a different {what}; data read together must "
                    "share one tokenizer and seq_len (prepare them with the same --tokenizer and --seq-len)"
                )
    shards = [shard for corpus in corpora for shard in _corpus_shards(corpus, split)]
    totals = {
        key: sum(int(meta["splits"][split].get(key, 0)) for _, meta in parts)
        for key in ("sequences", "tokens", "documents")
    }
    if split == "train" and totals["sequences"] == 0:
        raise UserError(
            f"{first_dir.parent if 'part' in first else first_dir} holds no training sequences; "
            "check the inputs it was prepared from"
        )
    return {
        **first,
        "splits": {split: {**totals, "shards": shards}},
        "tokenizer_path": first_dir / first.get("tokenizer", "tokenizer.json"),
    }


def _corpus_shards(parts: list[tuple[Path, dict[str, Any]]], split: str) -> list[dict[str, Any]]:
    """The shards of one corpus's parts (absolute paths), sorted by segment: the rows of one `prepare` of the
    whole corpus, in its order. Parts cut with another segment size would not fit together, and are refused."""
    sizes = {meta.get("data_config", {}).get("segment_bytes") for _, meta in parts}
    if len(sizes) > 1:
        raise UserError(
            f"the parts in {parts[0][0].parent} were prepared with different data.segment_bytes "
            f"({', '.join(map(str, sorted(sizes, key=str)))}); prepare all parts with one value"
        )
    shards = [
        {**s, "ids": folder / s["ids"], "word_starts": folder / s["word_starts"]}
        for folder, meta in parts
        for s in meta["splits"][split]["shards"]
    ]
    if all("segment" in s for s in shards):  # older folders: in part order
        shards.sort(key=lambda s: tuple(s["segment"]))
    return shards


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
    return stream_rows(np.arange(start, start + batch_size, dtype=np.int64), num_sequences, seed)


def stream_rows(positions: np.ndarray, num_sequences: int, seed: int) -> np.ndarray:
    """The row at each global stream position: epoch e's permutation (seed, e) of range(num_sequences), e = 0, 1..."""
    positions = np.asarray(positions, dtype=np.int64)
    epochs, offsets = np.divmod(positions, num_sequences)
    out = np.empty(len(positions), dtype=np.int64)
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
