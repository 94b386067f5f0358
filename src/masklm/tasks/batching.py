"""Batches of encoded features: dynamic padding, length bucketing, and the seeded epoch order of fine-tuning.

The batch for micro-step m is a pure function of (seed, m): epoch e's order comes from length_bucketed_batches
with a seed derived from (seed, e), so a resumed run draws exactly the batches the uninterrupted run would have.
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


def epoch_seed(seed: int, epoch: int) -> int:
    """The shuffling seed of one epoch: a pure function of (seed, epoch)."""
    digest = hashlib.blake2b(f"finetune:{seed}:{epoch}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


class EpochBatches:
    """micro_step → padded batch: length-bucketed, reshuffled every epoch, a pure function of the step.

    An epoch is `micro_per_epoch` micro-steps per process. Process r takes batches r, r + W, r + 2W, ... of the
    epoch's order; where the last optimizer step of an epoch needs more batches than the epoch has, it takes
    the epoch's first batches again. `lengths` (default: each feature's number of input_ids) is what the
    bucketing sorts by; `collate` (default: pad_batch) turns a list of features into the batch.
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
    ) -> None:
        self.features, self.batch_size, self.pad_id, self.seed = features, batch_size, pad_id, seed
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
            batches = length_bucketed_batches(
                self.lengths, self.batch_size, epoch_seed(self.seed, epoch), chunk_batches=self.bucket_batches
            )
            self._cached = (epoch, batches)
        return self._cached[1]

    def __call__(self, micro_step: int) -> Batch:
        epoch, i = divmod(micro_step, self.micro_per_epoch)
        batches = self.order(epoch)
        indexes = batches[(i * self.world_size + self.rank) % len(batches)]
        return self.collate([self.features[k] for k in indexes], self.pad_id)
