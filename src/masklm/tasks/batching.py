"""Batches of encoded features: dynamic padding, length bucketing, and the seeded epoch order of fine-tuning.

The batch for micro-step m is a pure function of (seed, m): epoch e's order comes from `epoch_order` with a seed
derived from (seed, e), so a resumed run draws exactly the batches the uninterrupted run would have.

Three batchings (`train.batching`), each with the same number of batches per epoch, ceil(examples / batch_size):
    bucketed  batch_size examples of similar length (sorted within windows of bucket_batches batches)
    random    batch_size examples drawn at random, as transformers' Trainer does by default
    tokens    about batch_size x the mean length in padded tokens per batch, examples of similar length (sorted
              within the same windows): many short examples or few long ones; the loss is then a sum divided by
              a constant (`ItemWeightedLoss` in masklm.finetune), so no example weighs more for being in a small
              batch
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Sequence
from typing import Any

import torch

from masklm.errors import UserError

IGNORE_INDEX = -100
"""Label value the loss ignores (special tokens, continuation sub-words, padding)."""

Feature = dict[str, Any]
Batch = dict[str, torch.Tensor]
Collate = Callable[[Sequence[Feature], int], Batch]

_PADDED = {"input_ids", "token_type_ids", "labels"}
_SCALARS = ("start_positions", "end_positions")


def pad_batch(features: Sequence[Feature], pad_id: int, pad_to_multiple_of: int | None = None) -> Batch:
    """Stack encoded features into tensors, padded to the longest in the batch (dynamic padding).

    input_ids are padded with `pad_id`, token_type_ids with 0, per-token labels with -100; attention_mask is
    1 on real tokens. Per-example labels (int -> long, float -> float32) and start/end positions are stacked.
    Bookkeeping keys (offsets, word_ids, example_index, num_words) are left out. `pad_to_multiple_of` rounds
    the length up (e.g. 8 for tensor cores).
    """
    if not features:
        raise ValueError("pad_batch needs at least one feature")
    for key in (*_PADDED, *_SCALARS):
        present = sum(key in f for f in features)
        if present not in (0, len(features)):
            raise ValueError(
                f"'{key}' is in {present} of {len(features)} features; it must be in all or none"
            )
    length = max(len(f["input_ids"]) for f in features)
    if pad_to_multiple_of:
        length = -(-length // pad_to_multiple_of) * pad_to_multiple_of
    batch_size = len(features)
    input_ids = torch.full((batch_size, length), pad_id, dtype=torch.long)
    token_type_ids = torch.zeros((batch_size, length), dtype=torch.long)
    attention_mask = torch.zeros((batch_size, length), dtype=torch.long)
    for row, f in enumerate(features):
        n = len(f["input_ids"])
        input_ids[row, :n] = torch.tensor(f["input_ids"], dtype=torch.long)
        attention_mask[row, :n] = 1
        if "token_type_ids" in f:
            token_type_ids[row, :n] = torch.tensor(f["token_type_ids"], dtype=torch.long)
    batch = {"input_ids": input_ids, "token_type_ids": token_type_ids, "attention_mask": attention_mask}
    if "labels" in features[0]:
        batch["labels"] = _stack_labels(features, length)
    for key in _SCALARS:
        if key in features[0]:
            batch[key] = torch.tensor([f[key] for f in features], dtype=torch.long)
    return batch


def _stack_labels(features: Sequence[Feature], length: int) -> torch.Tensor:
    """Per-token labels padded with -100 to (B, length); per-example ones as (B,) long or float32."""
    if isinstance(features[0]["labels"], list | tuple):
        labels = torch.full((len(features), length), IGNORE_INDEX, dtype=torch.long)
        for row, f in enumerate(features):
            labels[row, : len(f["labels"])] = torch.tensor(f["labels"], dtype=torch.long)
        return labels
    if any(isinstance(f["labels"], float) for f in features):
        return torch.tensor([float(f["labels"]) for f in features], dtype=torch.float32)
    return torch.tensor([f["labels"] for f in features], dtype=torch.long)


def length_bucketed_batches(
    lengths: Sequence[int], batch_size: int, seed: int, shuffle: bool = True, chunk_batches: int = 50
) -> list[list[int]]:
    """Batches of example indexes with similar lengths, so dynamic padding wastes little.

    With `shuffle`: shuffle all indexes (seeded), cut them into chunks of `batch_size * chunk_batches`, sort
    each chunk by length, cut it into batches, then shuffle the order of all batches. Without: sort everything
    by length, longest first (evaluation; the first batch shows the peak memory). Every index appears once;
    put predictions back in file order by these indexes.
    """
    if batch_size < 1:
        raise UserError(f"batch_size must be at least 1, got {batch_size}")
    order = list(range(len(lengths)))
    if not shuffle:
        order.sort(key=lambda i: -lengths[i])
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    rng = random.Random(seed)
    rng.shuffle(order)
    chunk = batch_size * max(1, chunk_batches)
    batches = []
    for c in range(0, len(order), chunk):
        part = sorted(order[c : c + chunk], key=lambda i: lengths[i])
        batches.extend(part[i : i + batch_size] for i in range(0, len(part), batch_size))
    rng.shuffle(batches)
    return batches


def token_budget_batches(
    lengths: Sequence[int], batch_size: int, seed: int, chunk_batches: int = 50
) -> list[list[int]]:
    """Batches of similar-length examples with about the same padded tokens each, in a seeded order.

    Shuffle all indexes (seeded), cut them into chunks of `batch_size * chunk_batches`, sort each chunk by
    length and split it into ceil(chunk / batch_size) runs of consecutive examples whose largest padded size
    (examples x longest length) is as small as it can be: short examples go many to a batch, long ones few.
    Then shuffle the order of all batches. As many batches as length_bucketed_batches gives, so an epoch has
    the same number of steps; every index appears once.
    """
    if batch_size < 1:
        raise UserError(f"batch_size must be at least 1, got {batch_size}")
    order = list(range(len(lengths)))
    rng = random.Random(seed)
    rng.shuffle(order)
    chunk = batch_size * max(1, chunk_batches)
    batches: list[list[int]] = []
    for c in range(0, len(order), chunk):
        part = sorted(order[c : c + chunk], key=lambda i: lengths[i])
        sizes = [max(1, lengths[i]) for i in part]
        batches.extend(_split_evenly(part, sizes, -(-len(part) // batch_size)))
    rng.shuffle(batches)
    return batches


def _split_evenly(part: list[int], sizes: list[int], k: int) -> list[list[int]]:
    """`part` (ascending `sizes`) as exactly k runs whose largest padded size (count x last size) is smallest."""

    def runs(cap: int) -> list[list[int]]:  # greedy: each run as long as its padded size stays within cap
        out: list[list[int]] = []
        for item, size in zip(part, sizes):
            if out and (len(out[-1]) + 1) * size <= cap:
                out[-1].append(item)
            else:
                out.append([item])
        return out

    lo, hi = max(sizes), max(sizes) * len(part)  # the fewest runs need no more than hi; lo is a floor
    while lo < hi:  # the smallest cap that needs at most k runs (runs(cap) shrinks as cap grows)
        mid = (lo + hi) // 2
        if len(runs(mid)) <= k:
            hi = mid
        else:
            lo = mid + 1
    out = runs(lo)
    while len(out) < k:  # fewer runs than batches: halve the one with the most examples (its cost only drops)
        j = max(range(len(out)), key=lambda r: len(out[r]))
        half = len(out[j]) // 2
        out[j : j + 1] = [out[j][:half], out[j][half:]]
    return out


BATCHINGS = ("bucketed", "random", "tokens")
"""train.batching's choices (the module docstring says what each does)."""


def epoch_order(
    batching: str, lengths: Sequence[int], batch_size: int, seed: int, bucket_batches: int = 50
) -> list[list[int]]:
    """One epoch's training batches (lists of indexes into `lengths`) for `batching`, a pure function of its
    arguments."""
    if batching == "bucketed":
        return length_bucketed_batches(lengths, batch_size, seed, chunk_batches=bucket_batches)
    if batching == "random":
        return length_bucketed_batches(lengths, batch_size, seed, chunk_batches=1)
    if batching == "tokens":
        return token_budget_batches(lengths, batch_size, seed, chunk_batches=bucket_batches)
    raise UserError(f"train.batching must be one of {', '.join(BATCHINGS)}, not {batching!r}")


def epoch_seed(seed: int, epoch: int) -> int:
    """The shuffling seed of one epoch: a pure function of (seed, epoch)."""
    digest = hashlib.blake2b(f"finetune:{seed}:{epoch}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


class EpochBatches:
    """micro_step → padded batch: batched by `batching`, reshuffled every epoch, a pure function of the step.

    An epoch is `micro_per_epoch` micro-steps per process. Process r takes batches r, r + W, r + 2W, ... of the
    epoch's order; where the last optimizer step of an epoch needs more batches than the epoch has, it takes
    the epoch's first batches again. `lengths` (default: each feature's number of input_ids) is what the
    bucketing sorts by (and token budgets count); `collate` (default: pad_batch) turns a list of features into
    the batch.
    """

    def __init__(
        self,
        features: list[Feature],
        batch_size: int,
        pad_id: int,
        seed: int,
        grad_accum: int = 1,
        rank: int = 0,
        world_size: int = 1,
        bucket_batches: int = 50,
        *,
        lengths: Sequence[int] | None = None,
        collate: Collate = pad_batch,
        batching: str = "bucketed",
    ) -> None:
        if batching not in BATCHINGS:
            raise UserError(f"train.batching must be one of {', '.join(BATCHINGS)}, not {batching!r}")
        self.features, self.batch_size, self.pad_id, self.seed = features, batch_size, pad_id, seed
        self.batching = batching
        self.bucket_batches, self.collate = bucket_batches, collate
        self.rank, self.world_size = rank, world_size
        self.lengths = list(lengths) if lengths is not None else [len(f["input_ids"]) for f in features]
        self.batches_per_epoch = -(-len(features) // batch_size)
        self.steps_per_epoch = max(1, -(-self.batches_per_epoch // (world_size * grad_accum)))
        self.micro_per_epoch = self.steps_per_epoch * grad_accum
        self._cached: tuple[int, list[list[int]]] | None = None

    def order(self, epoch: int) -> list[list[int]]:
        """The batches (lists of feature indexes) of one epoch, in the order they are drawn."""
        if self._cached is None or self._cached[0] != epoch:
            seed = epoch_seed(self.seed, epoch)
            batches = epoch_order(self.batching, self.lengths, self.batch_size, seed, self.bucket_batches)
            self._cached = (epoch, batches)
        return self._cached[1]

    def __call__(self, micro_step: int) -> Batch:
        epoch, i = divmod(micro_step, self.micro_per_epoch)
        batches = self.order(epoch)
        indexes = batches[(i * self.world_size + self.rank) % len(batches)]
        return self.collate([self.features[k] for k in indexes], self.pad_id)
