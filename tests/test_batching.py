"""Training batches (train.batching): the epoch order is a pure function of (seed, epoch), token budgets balance
padded sizes, and with token-budget batches an item's loss weight does not depend on the batch it is in."""

from __future__ import annotations

import random

import pytest
import torch
from helpers import tiny_model_config

from masklm import finetune as ft
from masklm.config import FinetuneConfig
from masklm.errors import UserError
from masklm.model.base import build_model
from masklm.tasks import get_task
from masklm.tasks.batching import BATCHINGS, EpochBatches, epoch_order, pad_batch

LENGTHS = [3 + (7 * i) % 61 for i in range(640)]  # 3 to 63 tokens, every length about equally often


def features(lengths: list[int]) -> list[dict]:
    return [{"input_ids": [5] * n, "token_type_ids": [0] * n, "labels": 0} for n in lengths]


@pytest.mark.parametrize("batching", BATCHINGS)
def test_order_is_a_pure_function_of_seed_and_epoch(batching):
    def order(seed: int, epoch: int) -> list[list[int]]:  # a fresh object each time: nothing carried over
        return EpochBatches(features(LENGTHS), 16, 0, seed=seed, batching=batching).order(epoch)

    first = order(7, 2)
    assert order(7, 2) == first
    assert order(7, 3) != first and order(8, 2) != first
    assert sorted(i for b in first for i in b) == list(range(len(LENGTHS)))  # every example once
    assert len(first) == len(LENGTHS) // 16  # the same number of batches (steps) whatever the batching
    # the batch for a micro-step does not depend on which micro-steps were drawn before it (resume)
    batches = EpochBatches(features(LENGTHS), 16, 0, seed=7, batching=batching)
    later = batches(2 * batches.micro_per_epoch + 5)
    assert torch.equal(
        EpochBatches(features(LENGTHS), 16, 0, seed=7, batching=batching)(5)["input_ids"],
        batches(5)["input_ids"],
    )
    fresh = EpochBatches(features(LENGTHS), 16, 0, seed=7, batching=batching)
    assert torch.equal(fresh(2 * fresh.micro_per_epoch + 5)["input_ids"], later["input_ids"])


def test_token_budgets_put_many_short_or_few_long_examples_in_a_batch():
    tokens = epoch_order("tokens", LENGTHS, 16, seed=1, bucket_batches=40)
    bucketed = epoch_order("bucketed", LENGTHS, 16, seed=1, bucket_batches=40)

    def padded(batch: list[int]) -> int:
        return len(batch) * max(LENGTHS[i] for i in batch)

    sizes = [len(b) for b in tokens]
    assert max(sizes) > 3 * 16 and min(sizes) < 16  # short examples many to a batch, long ones few
    # the largest padded batch is what a step's memory and time follow: smaller, and padding stays low
    assert max(map(padded, tokens)) < 0.7 * max(map(padded, bucketed))
    assert sum(map(padded, tokens)) < 1.1 * sum(LENGTHS)
    # where all lengths are equal, token budgets are plain batches of batch_size
    assert {len(b) for b in epoch_order("tokens", [20] * 64, 16, seed=1)} == {16}


def test_unknown_batching_is_refused():
    with pytest.raises(UserError, match="train.batching"):
        ft.build_config({"train.batching": "sorted"})
    with pytest.raises(UserError, match="train.batching must be one of"):
        EpochBatches(features([4, 5]), 2, 0, seed=0, batching="sorted")


def _toy_token_data(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        length = rng.randint(3, 12)
        labels = [rng.choice([0, 1, 2, -100]) for _ in range(length)]
        labels[1] = 1  # at least one labelled token
        out.append({"input_ids": [rng.randint(5, 60) for _ in range(length)], "labels": labels})
    return out


@pytest.mark.parametrize(
    ("task_name", "architecture", "labels"),
    [
        ("classification", "SequenceClassification", None),
        ("token-classification", "TokenClassification", None),
    ],
)
def test_item_weight_does_not_depend_on_its_batch(task_name, architecture, labels):
    torch.manual_seed(0)
    task = get_task(task_name)
    model = build_model(architecture, tiny_model_config(64), ["a", "b", "c"]).eval()
    settings = FinetuneConfig().data
    feats = _toy_token_data(9, seed=1)
    if task_name == "classification":
        feats = [{**f, "labels": i % 3} for i, f in enumerate(feats)]

    def loss(rows: list[dict], per_batch: float | None) -> torch.Tensor:
        return ft.task_loss(task, settings, model, pad_batch(rows, 0), per_batch)

    # per item (token-budget batches): a batch's loss is the sum of its items' losses, whatever it is batched with
    with torch.no_grad():
        whole = loss(feats, 4.0)
        parts = loss(feats[:2], 4.0) + loss(feats[2:], 4.0)
        alone = sum(loss([f], 4.0) for f in feats)
        assert torch.allclose(whole, parts, atol=1e-6) and torch.allclose(whole, alone, atol=1e-6)
        # the batch mean (transformers' loss, the other batchings) weighs an item by its batch's size
        assert not torch.allclose(loss(feats, None), loss(feats[:2], None) + loss(feats[2:], None))


def test_items_per_batch_counts_what_the_loss_sums():
    task = get_task("token-classification")
    feats = _toy_token_data(40, seed=2)
    batches = EpochBatches(feats, 8, 0, seed=0, batching="tokens")
    labelled = sum(sum(label != -100 for label in f["labels"]) for f in feats)
    assert ft.items_per_batch(task, batches, 0) == pytest.approx(labelled / 5)
    # the loss fit() trains on: the sum over that constant for token budgets, the mean otherwise
    model = build_model("TokenClassification", tiny_model_config(64), ["a", "b", "c"]).eval()
    settings = FinetuneConfig().data
    batch = batches(0)
    with torch.no_grad():
        summed = task.loss(task.forward(model, batch), batch, settings, reduction="sum")
        tokens_loss = ft.training_loss(task, settings, batches, 0)(model, batch)
        assert torch.allclose(tokens_loss, summed / (labelled / 5))
        mean_batches = EpochBatches(feats, 8, 0, seed=0, batching="bucketed")
        mean_loss = ft.training_loss(task, settings, mean_batches, 0)(model, batch)
        assert torch.allclose(mean_loss, summed / task.loss_count(batch))
