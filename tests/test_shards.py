"""PackedDataset (memory-mapped reads across shards) and the resumable, rank-aware batch_indices."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from masklm.config import DataConfig
from masklm.data.prepare import prepare
from masklm.data.shards import PackedDataset, batch_indices, iterate_eval
from masklm.data.tokenizer import train_tokenizer
from masklm.errors import UserError

TEXT = [
    f"document {i} talks about {' '.join(['alpha', 'beta', 'gamma', 'delta'][: 1 + i % 4])} and unbelievable things"
    for i in range(40)
]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("shards")
    (root / "c.txt").write_text("\n".join(TEXT) + "\n")
    config = DataConfig(
        seq_len=10, vocab_size=120, shard_sequences=4, val_fraction=0.2, one_doc_per_line=True
    )
    prepare([root / "c.txt"], root / "data", config, tokenizer=train_tokenizer(TEXT, 120), progress=False)
    return root / "data"


def _all_rows(data_dir: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    meta = json.loads((data_dir / "meta.json").read_text())
    shards = meta["splits"][split]["shards"]
    ids = np.concatenate([np.load(data_dir / s["ids"]) for s in shards]).astype(np.int64)
    packed = np.concatenate([np.load(data_dir / s["word_starts"]) for s in shards])
    return ids, np.unpackbits(packed, axis=1, count=meta["seq_len"]).astype(bool)


def test_get_reads_any_rows_across_shards(data_dir):
    data = PackedDataset(data_dir)
    ids, starts = _all_rows(data_dir, "train")
    assert len(data) == len(ids) > 8 and len(data.meta["splits"]["train"]["shards"]) >= 3
    assert data.seq_len == 10 and data.vocab_size == data.meta["vocab_size"]
    picks = np.array([len(data) - 1, 3, 4, 0, 7, 8, 3, 5])  # shard edges, repeats, reverse order
    got_ids, got_starts = data.get(picks)
    assert got_ids.dtype == torch.long and got_starts.dtype == torch.bool
    assert got_ids.shape == got_starts.shape == (len(picks), 10)
    assert np.array_equal(got_ids.numpy(), ids[picks]) and np.array_equal(got_starts.numpy(), starts[picks])
    everything = data.get(np.random.default_rng(0).permutation(len(data)))
    assert sorted(map(tuple, everything[0].tolist())) == sorted(map(tuple, ids.tolist()))
    empty_ids, empty_starts = data.get(np.array([], dtype=np.int64))
    assert empty_ids.shape == (0, 10) and empty_starts.shape == (0, 10)
    with pytest.raises(IndexError):
        data.get(np.array([len(data)]))


def test_pickles_without_copying_the_data(data_dir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(data_dir, copy)
    data = PackedDataset(copy)
    blob = pickle.dumps(data)
    first = np.load(copy / "train" / "ids_00000.npy")
    np.save(copy / "train" / "ids_00000.npy", first[::-1].copy())  # same shape, rows reversed
    again = pickle.loads(blob)  # maps the files anew: the pickle carried no rows
    assert np.array_equal(again.get(np.arange(len(first)))[0].numpy(), first[::-1])
    assert len(blob) < len(pickle.dumps(data.meta)) + 1000


def test_val_split_and_iterate_eval(data_dir):
    val = PackedDataset(data_dir, "val")
    ids, starts = _all_rows(data_dir, "val")
    assert len(val) == len(ids) == val.meta["splits"]["val"]["sequences"] > 0
    batches = list(iterate_eval(val, batch_size=2, limit=3))
    assert [len(b[0]) for b in batches] == [2, 1]
    assert np.array_equal(torch.cat([b[0] for b in batches]).numpy(), ids[:3])
    assert np.array_equal(torch.cat([b[1] for b in batches]).numpy(), starts[:3])
    assert sum(len(b[0]) for b in iterate_eval(val, batch_size=4, limit=10_000)) == len(val)
    assert sum(len(b[0]) for b in iterate_eval(val, batch_size=4)) == len(val)


def test_not_a_prepared_folder(tmp_path, data_dir):
    with pytest.raises(UserError, match="not a prepared data folder; run masklm prepare"):
        PackedDataset(tmp_path)
    (tmp_path / "meta.json").write_text("{ truncated")
    with pytest.raises(UserError, match="not a prepared data folder; run masklm prepare"):
        PackedDataset(tmp_path)
    (tmp_path / "meta.json").write_text('{"some": "other json"}')
    with pytest.raises(UserError, match="not a prepared data folder"):
        PackedDataset(tmp_path)
    with pytest.raises(UserError, match="no split 'test'"):
        PackedDataset(data_dir, "test")


def test_missing_shard_file(tmp_path, data_dir):
    copy = tmp_path / "copy"
    shutil.copytree(data_dir, copy)
    (copy / "train" / "ids_00001.npy").unlink()
    with pytest.raises(UserError, match="ids_00001.npy.*run masklm prepare again"):
        PackedDataset(copy)


# ----------------------------------------------------------------------------------------------------------------
# batch_indices


def _stream(steps: int, batch_size: int, n: int, seed: int) -> np.ndarray:
    return np.concatenate([batch_indices(s, batch_size, n, seed) for s in range(steps)])


def test_each_epoch_is_a_permutation_from_the_seeded_generator():
    n, b = 10, 3
    stream = _stream(20, b, n, seed=7)  # 60 positions: six epochs, batches crossing epoch boundaries
    for epoch in range(6):
        block = stream[epoch * n : (epoch + 1) * n]
        assert sorted(block.tolist()) == list(range(n))
        assert np.array_equal(block, np.random.default_rng([7, epoch]).permutation(n))
    assert not np.array_equal(stream[:n], stream[n : 2 * n])  # epochs are shuffled differently


def test_dataset_smaller_than_a_batch():
    got = batch_indices(0, 8, 3, seed=1)
    expected = np.concatenate([np.random.default_rng([1, e]).permutation(3) for e in range(3)])[:8]
    assert np.array_equal(got, expected)
    assert np.array_equal(
        batch_indices(1, 8, 3, seed=1),
        np.concatenate([np.random.default_rng([1, e]).permutation(3) for e in range(2, 6)])[2:10],
    )


@pytest.mark.parametrize("world_size", [2, 3])
def test_ranks_are_disjoint_slices_of_the_single_process_stream(world_size):
    n, b = 17, 4
    for step in range(12):
        parts = [batch_indices(step, b, n, seed=3, rank=r, world_size=world_size) for r in range(world_size)]
        assert np.array_equal(np.concatenate(parts), batch_indices(step, b * world_size, n, seed=3))
    # within one epoch no two ranks ever see the same sequence
    first = [
        np.concatenate([batch_indices(s, 1, 12, 0, r, world_size) for s in range(12 // world_size)])
        for r in range(world_size)
    ]
    assert len(set(np.concatenate(first).tolist())) == 12


def test_deterministic_pure_function_and_resume():
    a = [batch_indices(s, 5, 23, seed=11, rank=1, world_size=2) for s in range(10)]
    b = [batch_indices(s, 5, 23, seed=11, rank=1, world_size=2) for s in reversed(range(10))][::-1]
    assert all(np.array_equal(x, y) for x, y in zip(a, b))  # any call order: resuming needs only the step
    assert not np.array_equal(batch_indices(0, 5, 23, seed=11), batch_indices(0, 5, 23, seed=12))
    far = batch_indices(10**9, 4, 1000, seed=0)
    assert far.shape == (4,) and far.min() >= 0 and far.max() < 1000


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 40),
    b=st.integers(1, 9),
    w=st.integers(1, 4),
    step=st.integers(0, 30),
    seed=st.integers(0, 2**32 - 1),
)
def test_ranks_property(n, b, w, step, seed):
    parts = [batch_indices(step, b, n, seed, rank=r, world_size=w) for r in range(w)]
    whole = batch_indices(step, b * w, n, seed)
    assert np.array_equal(np.concatenate(parts), whole)
    assert whole.dtype == np.int64 and ((whole >= 0) & (whole < n)).all()


def test_bad_arguments():
    with pytest.raises(ValueError):
        batch_indices(0, 4, 0, seed=0)
    with pytest.raises(ValueError):
        batch_indices(0, 4, 10, seed=0, rank=2, world_size=2)
    with pytest.raises(ValueError):
        batch_indices(-1, 4, 10, seed=0)
