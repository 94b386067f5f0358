"""Real corpora for `masklm prepare`: Parquet, `datasets` folders, compressed text, globs, bad files, the bounded
tokenizer sample, exact deduplication and preparing one corpus as several parts."""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import cli, file_snapshot, final_weights

from masklm.config import DataConfig
from masklm.data import readers
from masklm.data.prepare import Part, prepare, sample_limits
from masklm.data.readers import find_input_files
from masklm.data.shards import PackedDataset
from masklm.data.tokenizer import train_tokenizer
from masklm.errors import UserError

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
zstandard = pytest.importorskip("zstandard")

WORDS = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november".split()


def make_docs(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 25))) for _ in range(n)]


DOCS = make_docs(120)


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(make_docs(300, seed=1), vocab_size=60)


def cfg(**kwargs) -> DataConfig:
    values = {"seq_len": 16, "shard_sequences": 8, "val_fraction": 0.1, "workers": 1}
    return DataConfig(**{**values, **kwargs})


def all_ids(folder: Path) -> dict[str, np.ndarray]:
    """Every split's rows, concatenated in order."""
    out = {}
    for split in ("train", "val"):
        ds = PackedDataset(folder, split)
        out[split] = ds.get(np.arange(len(ds)))[0].numpy()
    return out


def jsonl_bytes(docs: list[str], field: str = "text") -> bytes:
    return "".join(json.dumps({"id": i, field: d}) + "\n" for i, d in enumerate(docs)).encode()


COMPRESS = {
    "gz": gzip.compress,
    "zst": lambda b: zstandard.ZstdCompressor().compress(b),
    "bz2": bz2.compress,
    "xz": lzma.compress,
}


def write_format(folder: Path, kind: str, docs: list[str]) -> Path:
    """`docs` stored as `kind`; returns the path to give prepare."""
    folder.mkdir(parents=True, exist_ok=True)
    if kind == "jsonl":
        return _write(folder / "c.jsonl", jsonl_bytes(docs))
    if kind.startswith("jsonl."):
        ext = kind.split(".")[1]
        return _write(folder / f"c.jsonl.{ext}", COMPRESS[ext](jsonl_bytes(docs)))
    if kind == "txt.zst":  # several zstd frames in one file, one document per line
        half = len(docs) // 2
        frames = [
            zstandard.ZstdCompressor().compress(("\n".join(part) + "\n").encode())
            for part in (docs[:half], docs[half:])
        ]
        return _write(folder / "c.txt.zst", b"".join(frames))
    if kind == "csv.bz2":
        rows = "text,n\n" + "".join(f"{d},{i}\n" for i, d in enumerate(docs))
        return _write(folder / "c.csv.bz2", bz2.compress(rows.encode()))
    table = pa.table({"id": list(range(len(docs))), "text": docs})
    if kind == "parquet":
        pq.write_table(table, folder / "c.parquet", row_group_size=17)  # several row groups
        return folder / "c.parquet"
    if kind == "parquet.categorical":  # the text column dictionary-encoded (a pandas categorical, say)
        coded = pa.table({"text": pa.array(docs).dictionary_encode()})
        pq.write_table(coded, folder / "c.parquet", row_group_size=17)
        return folder / "c.parquet"
    datasets = pytest.importorskip("datasets")
    datasets.disable_progress_bars()
    ds = datasets.Dataset(table)
    ds.save_to_disk(str(folder / "saved"), max_shard_size=2000)  # several .arrow files
    return folder / "saved"


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


FORMATS = [
    *("jsonl.gz", "jsonl.zst", "jsonl.bz2", "jsonl.xz", "txt.zst", "csv.bz2"),
    *("parquet", "parquet.categorical", "datasets"),
]


@pytest.mark.parametrize("kind", FORMATS)
def test_every_format_gives_the_same_shards_as_plain_jsonl(tmp_path, tokenizer, kind):
    plain = prepare(
        [write_format(tmp_path / "a", "jsonl", DOCS)],
        tmp_path / "plain",
        cfg(),
        tokenizer=tokenizer,
        progress=False,
    )
    source = write_format(tmp_path / "b", kind, DOCS)
    meta = prepare(
        [source], tmp_path / "out", cfg(one_doc_per_line=True), tokenizer=tokenizer, progress=False
    )
    assert meta["documents"] == plain["documents"] == len(DOCS)
    for split, ids in all_ids(tmp_path / "plain").items():
        np.testing.assert_array_equal(all_ids(tmp_path / "out")[split], ids)


def test_datasets_folder_is_read_in_record_batches_without_loading_the_table(
    tmp_path, tokenizer, monkeypatch
):
    folder = write_format(tmp_path, "datasets", DOCS)
    files = find_input_files([folder])
    assert [f.kind for f in files] == ["arrow"] * len(files) and len(files) > 1
    monkeypatch.setattr(
        pa.ipc.RecordBatchStreamReader, "read_all", lambda self: pytest.fail("whole table read")
    )
    seen = list(readers.Corpus(files, cfg()))
    assert seen == DOCS


def test_parquet_memory_is_one_row_group_not_the_file(tmp_path):
    """pyarrow's pool holds about one row group while a Parquet file is read, however many row groups it has
    (a single `iter_batches` over the whole file kept them all until its end)."""
    docs = make_docs(8000, seed=3)
    pq.write_table(pa.table({"text": docs}), tmp_path / "c.parquet", row_group_size=250, compression="none")
    files = find_input_files([tmp_path / "c.parquet"])
    before, peak = pa.total_allocated_bytes(), 0
    for i, document in enumerate(readers.Corpus(files, cfg())):
        assert document == docs[i]
        peak = max(peak, pa.total_allocated_bytes() - before)
    file_bytes = sum(len(d) for d in docs)  # 32 row groups of about 1/32 of this each
    assert 0 < peak < file_bytes / 4, (peak, file_bytes)


@pytest.mark.parametrize("ext", ["gz", "zst", "bz2", "xz"])
@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_bad_compressed_file_is_one_line_error_and_writes_nothing(tmp_path, tokenizer, ext, damage):
    data = COMPRESS[ext](jsonl_bytes(DOCS * 20))
    bad = data[: len(data) // 2] if damage == "truncated" else b"this is not compressed data at all\n" * 10
    source = _write(tmp_path / "in" / f"c.jsonl.{ext}", bad)
    with pytest.raises(UserError, match=r"cannot read .*c\.jsonl\." + ext) as e:
        prepare([source], tmp_path / "out", cfg(), tokenizer=tokenizer, progress=False)
    assert "\n" not in str(e.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]  # no output, no temporary folder


def test_bad_parquet_is_one_line_error(tmp_path, tokenizer):
    good = write_format(tmp_path / "in", "parquet", DOCS)
    good.write_bytes(good.read_bytes()[:100])
    with pytest.raises(UserError, match=r"cannot read .*c\.parquet") as e:
        prepare([good], tmp_path / "out", cfg(), tokenizer=tokenizer, progress=False)
    assert "\n" not in str(e.value) and not (tmp_path / "out").exists()


@pytest.mark.parametrize("kind", ["parquet", "datasets", "jsonl.zst"])
def test_missing_text_field_names_the_fields_that_exist(tmp_path, tokenizer, kind):
    source = write_format(tmp_path, kind, DOCS)
    with pytest.raises(UserError, match=r"no (field|column) 'body' \((fields|columns): id, text\)"):
        prepare([source], tmp_path / "out", cfg(text_field="body"), tokenizer=tokenizer, progress=False)


def test_text_field_of_numbers_is_refused(tmp_path, tokenizer):
    source = write_format(tmp_path, "parquet", DOCS)
    with pytest.raises(UserError, match=r"column 'id' holds int64, not text"):
        prepare([source], tmp_path / "out", cfg(text_field="id"), tokenizer=tokenizer, progress=False)


def test_where_filters_parquet_rows(tmp_path, tokenizer):
    table = pa.table({"text": DOCS, "source": ["a" if i % 3 else "b" for i in range(len(DOCS))]})
    pq.write_table(table, tmp_path / "c.parquet", row_group_size=10)
    meta = prepare(
        [tmp_path / "c.parquet"], tmp_path / "out", cfg(where="source=b"), tokenizer=tokenizer, progress=False
    )
    assert meta["documents"] == len(DOCS[::3])


@pytest.mark.parametrize("where", ["flag=true", "flag=True", "score=1", "score=1.0", "note=", "kind=b"])
def test_where_means_the_same_in_every_format(tmp_path, tokenizer, where):
    """The same rows as JSONL, CSV and Parquet keep the same documents for one --data.where: a Parquet file's
    booleans and numbers were compared as Arrow writes them (true, 1), JSON's as Python does (True, 1.0), a CSV's as
    written, so an input of mixed formats lost a whole file silently."""
    n = len(DOCS)
    rows = {
        "text": DOCS,
        "flag": [i % 2 == 0 for i in range(n)],
        "score": [1.0 if i % 3 == 0 else 2.5 for i in range(n)],
        "note": [None if i % 4 == 0 else "x" for i in range(n)],
        "kind": ["b" if i % 5 == 0 else "a" for i in range(n)],
    }
    records = [dict(zip(rows, values)) for values in zip(*rows.values())]
    (tmp_path / "r.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    pq.write_table(pa.table(rows), tmp_path / "r.parquet")
    import csv

    with open(tmp_path / "r.csv", "w", newline="") as f:  # as pandas writes it: True, 1.0, an empty cell
        writer = csv.DictWriter(f, fieldnames=list(rows))
        writer.writeheader()
        writer.writerows({k: "" if v is None else v for k, v in r.items()} for r in records)
    every = {"flag": 2, "score": 3, "note": 4, "kind": 5}[
        where.split("=")[0]
    ]  # the rows that match: i % every == 0
    expected = len(range(0, n, every))
    assert 0 < expected < n
    for name in ("r.jsonl", "r.parquet", "r.csv"):
        out = tmp_path / f"out-{name}"
        meta = prepare([tmp_path / name], out, cfg(where=where), tokenizer=tokenizer, progress=False)
        assert meta["documents"] == expected, name


def test_glob_patterns_and_folders(tmp_path):
    for name in ["a/x.jsonl.zst", "a/b/y.jsonl.zst", "a/z.jsonl", "a/notes.md", "c/w.jsonl.zst"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    files = find_input_files([str(tmp_path / "a" / "**" / "*.jsonl.zst")])
    assert [f.path.relative_to(tmp_path).as_posix() for f in files] == ["a/b/y.jsonl.zst", "a/x.jsonl.zst"]
    assert {f.compression for f in files} == {"zst"}
    folder = find_input_files([tmp_path / "a"])
    assert [f.path.name for f in folder] == ["x.jsonl.zst", "z.jsonl", "y.jsonl.zst"]  # notes.md is skipped
    with pytest.raises(UserError, match=r"no file matches .*\*\.parquet"):
        find_input_files([str(tmp_path / "*.parquet")])


def test_missing_optional_package_is_named_before_any_work(tmp_path, monkeypatch):
    (tmp_path / "c.parquet").write_bytes(b"")
    real = readers.importlib.util.find_spec
    monkeypatch.setattr(
        readers.importlib.util, "find_spec", lambda name: None if name == "pyarrow" else real(name)
    )
    with pytest.raises(
        UserError, match=r"needs pyarrow, which is not installed: pip install 'masklm\[corpora\]'"
    ):
        find_input_files([tmp_path])


def test_tokenizer_trains_on_a_bounded_sample_spread_over_the_files(tmp_path):
    inputs = tmp_path / "in"
    _write(inputs / "a.txt", b"alpha bravo\n" * 400 + b"zulu\n" * 400)  # zulu only in the tail
    _write(inputs / "b.txt", b"charlie delta\n" * 400)
    files = find_input_files([inputs])
    limits = sample_limits(files, 3000)
    assert limits == [3000 * 6800 // 12400, 3000 * 5600 // 12400]
    assert sample_limits(files, 10**6) is None  # a small corpus is read whole
    settings = {"one_doc_per_line": True, "vocab_size": 80, "val_fraction": 0.0}
    sampled = prepare(
        [inputs], tmp_path / "sampled", cfg(**settings, tokenizer_sample_bytes=3000), progress=False
    )
    whole = prepare([inputs], tmp_path / "whole", cfg(**settings), progress=False)
    vocab = lambda out: json.loads((out / "tokenizer.json").read_text())["model"]["vocab"]  # noqa: E731
    assert "zulu" in vocab(tmp_path / "whole") and "zulu" not in vocab(tmp_path / "sampled")
    assert "charlie" in vocab(tmp_path / "sampled")  # the second file is sampled too
    assert sampled["documents"] == whole["documents"] == 1200  # the sample is for the tokenizer only


def test_dedup_keeps_the_first_copy_and_counts_the_rest(tmp_path, tokenizer):
    docs = DOCS[:50] + [" " + DOCS[3].replace(" ", "  \t") + "\n", DOCS[7], DOCS[7].upper()]
    source = _write(tmp_path / "c.jsonl", jsonl_bytes(docs))
    kept = prepare([source], tmp_path / "dedup", cfg(dedup=True), tokenizer=tokenizer, progress=False)
    assert kept["duplicates_dropped"] == 2 and kept["documents"] == 53  # upper case is another document
    assert kept["splits"]["train"]["documents"] + kept["splits"]["val"]["documents"] == 51
    reference = prepare(
        [_write(tmp_path / "r.jsonl", jsonl_bytes(DOCS[:50] + [DOCS[7].upper()]))],
        tmp_path / "ref",
        cfg(),
        tokenizer=tokenizer,
        progress=False,
    )
    for split, ids in all_ids(tmp_path / "ref").items():
        np.testing.assert_array_equal(all_ids(tmp_path / "dedup")[split], ids)
    assert reference["duplicates_dropped"] == 0
    # blank documents are skipped as empty, not counted as copies of one another
    blanks = prepare(
        [_write(tmp_path / "b.jsonl", jsonl_bytes(DOCS[:50] + ["", " ", "\n\t", ""]))],
        tmp_path / "blanks",
        cfg(dedup=True),
        tokenizer=tokenizer,
        progress=False,
    )
    assert blanks["duplicates_dropped"] == 0 and blanks["skipped_documents"] == 4


PRETRAIN = ["--preset", "tiny", "--train.eval_every", "0", "--train.threads", "1", "--data.workers", "1"]
PRETRAIN += ["--train.batch_size", "8", "--train.schedule", "constant", "--max-steps", "3"]


@pytest.mark.parametrize("n_files", [8, 2])  # by files; by segments (fewer file groups than parts)
def test_four_parts_are_the_rows_of_one_prepare_and_pretrain_bit_identically(tmp_path, tokenizer, n_files):
    for i in range(n_files):
        _write(tmp_path / "in" / f"f{i}.jsonl", jsonl_bytes(DOCS[i::n_files]))
    tok_file = tmp_path / "tokenizer.json"
    tok_file.write_text(tokenizer.to_str())
    settings = ["--tokenizer", tok_file, "--seq-len", "16", "--data.workers", "1"]
    settings += ["--data.max_val_sequences", "1", "--data.val_fraction", "0.2", "--data.segment_bytes", "400"]
    assert cli("prepare", "--input", tmp_path / "in", "--output", tmp_path / "one", *settings) == 0
    for i in range(4):
        argv = ["--num-shards", 4, "--shard-index", i]
        assert (
            cli("prepare", "--input", tmp_path / "in", "--output", tmp_path / "parts", *argv, *settings) == 0
        )
    parts = sorted((tmp_path / "parts").iterdir())
    assert [p.name for p in parts] == [f"part-{i:05d}-of-00004" for i in range(4)]
    metas = [json.loads((p / "meta.json").read_text()) for p in parts]
    assert [m["part"]["by"] for m in metas] == ["files" if n_files >= 4 else "segments"] * 4
    assert sum(m["documents"] for m in metas) == len(DOCS)
    assert min(m["documents"] for m in metas) > 0
    one, together = all_ids(tmp_path / "one"), all_ids(tmp_path / "parts")
    assert len(one["val"]) > 1 and len(one["train"]) > 100  # several segments, each with its own val cap
    for split in ("train", "val"):
        np.testing.assert_array_equal(together[split], one[split])
    if n_files == 2:
        return  # pretraining once is enough: the rows are the same, and so is everything a run reads
    for data in ("one", "parts"):
        assert (
            cli("pretrain", *PRETRAIN, "--data", tmp_path / data, "--output", tmp_path / f"run_{data}") == 0
        )
    a, b = final_weights(tmp_path / "run_one"), final_weights(tmp_path / "run_parts")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_segments_do_not_depend_on_the_number_of_parts(tmp_path, tokenizer):
    """Packing restarts at each segment (its last row padded), and a part keeps whole segments."""
    _write(tmp_path / "in" / "c.jsonl", jsonl_bytes(DOCS))
    settings = cfg(segment_bytes=1000)
    whole = prepare([tmp_path / "in"], tmp_path / "one", settings, tokenizer=tokenizer, progress=False)
    keys = [s["segment"] for s in whole["splits"]["train"]["shards"]]
    text = sum(len(d) for d in DOCS)
    assert keys == sorted(keys) and keys[0] == [0, 0] and keys[-1][1] >= text // 1000 - 1
    for i in range(3):
        prepare(
            [tmp_path / "in"], tmp_path / "p", settings, tokenizer=tokenizer, progress=False, part=Part(i, 3)
        )
    mine = [{tuple(s["segment"]) for s in m["splits"]["train"]["shards"]} for m in _metas(tmp_path / "p")]
    assert all(key[1] % 3 == i for i, keys_i in enumerate(mine) for key in keys_i)
    assert set().union(*mine) == {tuple(k) for k in keys}


def test_parts_cut_with_other_segment_sizes_are_refused(tmp_path, tokenizer):
    _write(tmp_path / "in" / "c.jsonl", jsonl_bytes(DOCS))
    for i, size in enumerate((400, 800)):
        settings = cfg(segment_bytes=size)
        prepare(
            [tmp_path / "in"], tmp_path / "p", settings, tokenizer=tokenizer, progress=False, part=Part(i, 2)
        )
    with pytest.raises(UserError, match=r"different data\.segment_bytes \(400, 800\)"):
        PackedDataset(tmp_path / "p")


def _metas(folder: Path) -> list[dict]:
    return [json.loads((p / "meta.json").read_text()) for p in sorted(folder.iterdir())]


def test_parts_need_a_tokenizer_and_a_valid_index(tmp_path):
    _write(tmp_path / "c.jsonl", jsonl_bytes(DOCS))
    with pytest.raises(UserError, match="--num-shards needs --tokenizer FILE"):
        prepare([tmp_path / "c.jsonl"], tmp_path / "out", cfg(), part=Part(0, 2), progress=False)
    with pytest.raises(UserError, match=r"--shard-index must be in \[0, --num-shards\)"):
        prepare([tmp_path / "c.jsonl"], tmp_path / "out", cfg(), part=Part(2, 2), progress=False)
    assert file_snapshot(tmp_path / "out") is None
    # the command line: N parts and no index would quietly prepare part 0
    assert (
        cli("prepare", "--input", tmp_path / "c.jsonl", "--output", tmp_path / "out", "--num-shards", 2) == 2
    )
    assert file_snapshot(tmp_path / "out") is None
