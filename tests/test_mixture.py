"""Reading prepared data at scale: parts of one corpus as one dataset, mixtures of corpora by weight (exact and
resumable), and start-up that does not grow with the number of shards."""

from __future__ import annotations

import functools
import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import WALK_WORDS, cli, final_weights, read_metrics, write_walk_corpus

from masklm.config import DataConfig
from masklm.data.mixture import BLOCK, Mixture, apportion, parse_source
from masklm.data.prepare import Part, prepare
from masklm.data.shards import PackedDataset, batch_indices
from masklm.data.tokenizer import train_tokenizer
from masklm.errors import UserError

TINY = ["--preset", "tiny", "--train.eval_every", "0", "--train.threads", "1", "--data.workers", "1"]


@pytest.fixture(scope="module")
def corpora(tmp_path_factory) -> dict[str, Path]:
    """Two corpora prepared with one tokenizer (a and b), the first also as 3 parts, and one with another tokenizer."""
    root = tmp_path_factory.mktemp("mix")
    tok = train_tokenizer([" ".join(WALK_WORDS)] * 3, vocab_size=120)
    cfg = DataConfig(seq_len=32, val_fraction=0.2, workers=1, shard_sequences=4, segment_bytes=2000)
    out = {}
    for name, n, seed in (("a", 40, 0), ("b", 25, 1)):
        corpus = write_walk_corpus(root / f"text_{name}", n_docs=n, seed=seed)
        prepare([corpus], root / name, cfg, tokenizer=tok, progress=False)
        out[name] = root / name
    for i in range(3):
        prepare([root / "text_a"], root / "parts", cfg, tokenizer=tok, progress=False, part=Part(i, 3))
    out["parts"] = root / "parts"
    prepare(
        [root / "text_b"], root / "other", DataConfig(seq_len=32, vocab_size=60, workers=1), progress=False
    )
    out["other"] = root / "other"
    return out


def test_parts_read_as_one_dataset(corpora):
    parts = sorted(corpora["parts"].iterdir())
    whole, one = PackedDataset(corpora["parts"], "train"), PackedDataset(corpora["a"], "train")
    assert len(whole) == sum(len(PackedDataset(p, "train")) for p in parts) == len(one)
    assert all(len(PackedDataset(p, "train")) for p in parts)
    assert torch.equal(whole.get(np.arange(len(whole)))[0], one.get(np.arange(len(one)))[0])  # same order
    assert whole.tokenizer_path == parts[0] / "tokenizer.json"


def test_missing_part_and_other_tokenizer_are_refused(corpora, tmp_path):
    import shutil

    broken = tmp_path / "parts"
    shutil.copytree(corpora["parts"], broken)
    shutil.rmtree(broken / "part-00001-of-00003")
    with pytest.raises(UserError, match="not all parts of one corpus"):
        PackedDataset(broken)
    with pytest.raises(UserError, match="different tokenizer"):
        PackedDataset([corpora["a"], corpora["other"]])


def test_single_source_stream_is_the_same_as_before(corpora):
    data = PackedDataset(corpora["a"], "train")
    for step in (0, 3, 11):
        idx = batch_indices(step, 8, len(data), 5)
        ids, starts = data.draw(np.arange(step * 8, step * 8 + 8), seed=5)
        assert torch.equal(ids, data.get(idx)[0]) and torch.equal(starts, data.get(idx)[1])


def test_mixture_follows_the_weights_exactly_per_block(corpora):
    a, b = PackedDataset(corpora["a"]), PackedDataset(corpora["b"])
    mix = Mixture([a, b], [0.7, 0.3], ["a", "b"])
    assert list(mix.counts) == list(apportion([0.7, 0.3], BLOCK)) and mix.counts.sum() == BLOCK
    source, k = mix.locate(np.arange(2 * BLOCK + 500), seed=3)
    assert np.bincount(source[:BLOCK]).tolist() == mix.counts.tolist()
    assert abs(np.mean(source[:2000] == 0) - 0.7) < 0.04  # close to the weight early on, too
    for s in (0, 1):  # each source is drawn in its own order, k = 0, 1, 2, ... without gaps
        assert np.array_equal(k[source == s], np.arange(np.sum(source == s)))
    n = 2 * BLOCK + 123
    assert mix.sequences_by_source(n, seed=3) == {
        "a": int(np.sum(source[:n] == 0)),
        "b": int(np.sum(source[:n] == 1)),
    }
    # rows: every row of a source once per epoch of that source
    ids, _ = mix.draw(np.arange(3000), seed=3)
    first_a = mix.draw(np.flatnonzero(source[:3000] == 0)[: len(a)], seed=3)[0]
    assert sorted(map(tuple, first_a.tolist())) == sorted(map(tuple, a.get(np.arange(len(a)))[0].tolist()))
    assert ids.shape == (3000, a.seq_len)


def test_parse_source():
    assert parse_source("data/web:0.7").weight == 0.7 and parse_source("data/web:0.7").path == Path(
        "data/web"
    )
    assert parse_source("data/web").weight is None
    with pytest.raises(UserError, match="must be a positive number"):
        parse_source("data/web:0")
    with pytest.raises(UserError, match="--data is empty"):  # not "." (the current folder)
        parse_source(" ")


@pytest.mark.parametrize("weight", ["-1", "abc", "inf", "nan"])
def test_a_weight_that_is_no_positive_number_is_named(corpora, weight):
    with pytest.raises(UserError, match=f"weight in --data .*:{weight} must be a positive number"):
        parse_source(f"{corpora['a']}:{weight}")


def test_the_same_source_twice_is_refused(corpora, tmp_path, capsys):
    a = corpora["a"]
    assert cli("pretrain", *TINY, "--data", f"{a}:1", f"{a}/:1", "--output", tmp_path / "run") == 2
    assert "names" in capsys.readouterr().err and not (tmp_path / "run").exists()


def run(*args: object) -> int:
    return cli("pretrain", *TINY, *args)


def test_mixture_run_resumes_bit_identically_and_logs_tokens_by_source(corpora, tmp_path):
    common = ["--data", f"{corpora['a']}:3", f"{corpora['b']}:1", "--train.log_every", "2"]
    common += ["--train.checkpoint_every", "3", "--train.batch_size", "8", "--train.schedule", "constant"]
    assert run(*common, "--output", tmp_path / "full", "--max-steps", "6") == 0
    assert run(*common, "--output", tmp_path / "half", "--max-steps", "3") == 0
    assert run(*common, "--output", tmp_path / "half", "--max-steps", "6", "--resume") == 0
    a, b = final_weights(tmp_path / "full"), final_weights(tmp_path / "half")
    assert all(torch.equal(a[k], b[k]) for k in a)
    rows = [r for r in read_metrics(tmp_path / "full") if r["split"] == "train"]
    last = rows[-1]
    assert sum(last["tokens_by_source"].values()) == last["tokens"] == 6 * 8 * 32
    assert last["tokens_by_source"]["a"] > last["tokens_by_source"]["b"] > 0
    other = ["--data", f"{corpora['a']}:1", f"{corpora['b']}:1", *common[3:]]
    with pytest.raises(UserError, match=r"other --data sources or weights \(a 75%, b 25%\)"):
        from masklm.cli import run as cli_run

        cli_run(
            ["pretrain", *TINY, *other, "--output", str(tmp_path / "half"), "--max-steps", "8", "--resume"]
        )


def test_mixture_of_other_tokenizers_is_one_line_error(corpora, tmp_path):
    with pytest.raises(UserError, match="different tokenizer"):
        from masklm.cli import run as cli_run

        cli_run(
            [
                "pretrain",
                *TINY,
                "--data",
                str(corpora["a"]),
                str(corpora["other"]),
                "--output",
                str(tmp_path / "r"),
            ]
        )


def test_opening_a_thousand_shards_is_lazy_and_fast(corpora, tmp_path):
    """1000 shards of one row each: opening maps none of them, reading a row maps only its shard."""
    folder = tmp_path / "many"
    meta = json.loads((corpora["a"] / "meta.json").read_text())
    rows = PackedDataset(corpora["a"]).get(np.arange(1))
    (folder / "train").mkdir(parents=True)
    shards = []
    for i in range(1000):
        ids, starts = f"train/ids_{i:05d}.npy", f"train/word_starts_{i:05d}.npy"
        np.save(folder / ids, (rows[0].numpy() + i % 3).astype(np.uint16))
        np.save(folder / starts, np.packbits(rows[1].numpy(), axis=1))
        shards.append({"ids": ids, "word_starts": starts, "sequences": 1})
    meta["splits"] = {"train": {"sequences": 1000, "tokens": 0, "documents": 0, "shards": shards}}
    (folder / "meta.json").write_text(json.dumps(meta))
    (folder / "tokenizer.json").write_text((corpora["a"] / "tokenizer.json").read_text())
    data = PackedDataset(folder)
    assert len(data) == 1000 and data.opened_shards == 0
    ids, _ = data.get(np.array([5, 999]))
    assert data.opened_shards == 2 and ids[1, 1] == rows[0][0, 1] + 999 % 3
    data.get(np.arange(1000))  # maps the other 998 shards
    assert data.opened_shards == 1000

    def seconds(work) -> float:
        start = time.perf_counter()
        work()
        return time.perf_counter() - start

    # opening (a header read per file) costs less than mapping them all; the best of 3 of each, so that a moment of
    # other load on the machine does not decide it
    opened = min(seconds(lambda: PackedDataset(folder)) for _ in range(3))
    mapped = [seconds(functools.partial(PackedDataset(folder).get, np.arange(1000))) for _ in range(3)]
    assert opened < min(mapped)
