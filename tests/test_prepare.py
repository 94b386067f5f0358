"""prepare(): formats, packing round trip, word starts, splits, determinism, errors."""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import file_snapshot
from tokenizers import Tokenizer, pre_tokenizers, trainers
from tokenizers.models import BPE, WordPiece

from masklm.config import DataConfig
from masklm.data import prepare as prepare_module
from masklm.data.prepare import goes_to_val, prepare
from masklm.data.shards import PackedDataset
from masklm.data.tokenizer import SPECIAL_TOKENS, load_tokenizer, special_ids, tokenizer_hash, train_tokenizer
from masklm.errors import UserError

WORDS = [
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "a",
    "lazy",
    "dog",
    "résumé",
    "naïve",
    "café",
    "unbelievable",
    "tokenizers",
    "don't",
    "北京",
    "e-mail",
    "3.14",
    "hello",
    "world,",
    "(parenthesis)",
    "supercalifragilistic",
    "x",
    "y",
    "z",
]


def make_docs(n: int, seed: int = 0, max_words: int = 30) -> list[str]:
    """`n` distinct documents; a few are long enough to span several packed rows."""
    rng = random.Random(seed)
    docs: list[str] = []
    while len(docs) < n:
        k = rng.randint(1, 120 if rng.random() < 0.1 else max_words)
        doc = " ".join(rng.choice(WORDS) for _ in range(k))
        if doc not in docs:
            docs.append(doc)
    return docs


def cfg(**kwargs) -> DataConfig:
    values = {
        "seq_len": 12,
        "vocab_size": 150,
        "shard_sequences": 3,
        "val_fraction": 0.0,
        "one_doc_per_line": True,
    }
    values.update(kwargs)
    return DataConfig(**values)


def write_lines(path: Path, docs: list[str]) -> Path:
    path.write_text("".join(d + "\n" for d in docs), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return train_tokenizer(make_docs(60, seed=99), vocab_size=150)


def read_split(out: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """All rows of a split: ids (N, T) and unpacked word-start flags (N, T)."""
    meta = json.loads((out / "meta.json").read_text())
    T = meta["seq_len"]
    shards = meta["splits"][split]["shards"]
    if not shards:
        return np.zeros((0, T), np.int64), np.zeros((0, T), bool)
    ids = np.concatenate([np.load(out / s["ids"]) for s in shards])
    starts = np.concatenate(
        [np.unpackbits(np.load(out / s["word_starts"]), axis=1, count=T).astype(bool) for s in shards]
    )
    return ids, starts


def content_stream(ids: np.ndarray, starts: np.ndarray, sp) -> tuple[list[int], list[bool]]:
    """Undo the framing: check `[CLS] ... [SEP]` rows (only the last padded) and return the inner stream."""
    out_ids: list[int] = []
    out_starts: list[bool] = []
    for i, (row, flags) in enumerate(zip(ids.tolist(), starts.tolist())):
        assert row[0] == sp.cls and flags[0]
        n = len(row)
        while row[n - 1] == sp.pad:
            n -= 1
        if n < len(row):
            assert i == len(ids) - 1, "only the last row of a split may be padded"
            assert all(flags[n:])
        assert row[n - 1] == sp.sep and flags[n - 1]
        out_ids += row[1 : n - 1]
        out_starts += flags[1 : n - 1]
    return out_ids, out_starts


def truth(tok: Tokenizer, docs: list[str]) -> tuple[list[int], list[bool]]:
    """The stream prepare should store: each document's ids then [SEP]; word starts from word_ids."""
    sep = tok.token_to_id("[SEP]")
    ids: list[int] = []
    starts: list[bool] = []
    for doc in docs:
        enc = tok.encode(doc, add_special_tokens=False)
        previous = object()
        for token, word in zip(enc.ids, enc.word_ids):
            ids.append(token)
            starts.append(word is None or word != previous)
            previous = word
        if enc.ids:
            ids.append(sep)
            starts.append(True)
    return ids, starts


def split_documents(stream: list[int], sep: int) -> list[tuple[int, ...]]:
    docs, current = [], []
    for t in stream:
        if t == sep:
            docs.append(tuple(current))
            current = []
        else:
            current.append(t)
    assert not current, "the stream must end with [SEP]"
    return docs


def stored(out: Path, split: str = "train") -> tuple[list[int], list[bool]]:
    tok = load_tokenizer(out / "tokenizer.json")
    return content_stream(*read_split(out, split), special_ids(tok))


# ----------------------------------------------------------------------------------------------------------------
# Round trip


@pytest.mark.parametrize("seq_len, shard_sequences", [(8, 1), (12, 3), (33, 4)])
def test_round_trip_across_batch_chunk_and_shard_boundaries(tmp_path, monkeypatch, seq_len, shard_sequences):
    monkeypatch.setattr(prepare_module, "BATCH_DOCUMENTS", 7)
    docs = make_docs(50)
    write_lines(tmp_path / "corpus.txt", docs)
    meta = prepare(
        [tmp_path / "corpus.txt"],
        tmp_path / "out",
        cfg(seq_len=seq_len, shard_sequences=shard_sequences),
        progress=False,
    )
    out = tmp_path / "out"
    tok = load_tokenizer(out / "tokenizer.json")
    sp = special_ids(tok)
    ids, starts = read_split(out, "train")
    stream = content_stream(ids, starts, sp)
    assert stream == truth(tok, docs)
    assert split_documents(stream[0], sp.sep) == [
        tuple(tok.encode(d, add_special_tokens=False).ids) for d in docs
    ]
    # WordPiece: a token continues a word exactly when it is a "##" piece
    tokens = [tok.id_to_token(i) for i in stream[0]]
    assert stream[1] == [not t.startswith("##") for t in tokens]

    train = meta["splits"]["train"]
    assert ids.shape == (train["sequences"], seq_len) and ids.dtype == np.uint16
    assert [s["sequences"] for s in train["shards"][:-1]] == [shard_sequences] * (len(train["shards"]) - 1)
    assert 1 <= train["shards"][-1]["sequences"] <= shard_sequences
    assert train["tokens"] == int((ids != sp.pad).sum()) and train["documents"] == len(docs)
    assert meta["splits"]["val"]["sequences"] == 0 and meta["skipped_documents"] == 0
    assert meta["tokenizer_hash"] == tokenizer_hash(tok)
    assert meta["special_ids"] == {"pad": 0, "unk": 1, "cls": 2, "sep": 3, "mask": 4}
    assert (
        meta["vocab_size"] == tok.get_vocab_size() and meta["dtype"] == "uint16" and meta["lowercase"] is True
    )
    assert json.loads((out / "meta.json").read_text()) == meta
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.txt", "out"]  # no staging folder left


FORMATS = ["txt-files", "txt-lines", "jsonl", "csv"]


def write_in_format(folder: Path, fmt: str, docs: list[str], gz: bool) -> None:
    """Write `docs` in format `fmt` under `folder`, so that reading them back yields `docs` in order."""
    folder.mkdir()
    suffix = ".gz" if gz else ""

    def write(name: str, text: str) -> None:
        data = text.encode("utf-8")
        (folder / (name + suffix)).write_bytes(gzip.compress(data, mtime=0) if gz else data)

    if fmt == "txt-files":
        for i, doc in enumerate(docs):
            write(f"doc_{i:03d}.txt", doc)
    elif fmt == "txt-lines":
        write("a.txt", "".join(d + "\n" for d in docs[:10]))
        write("b.txt", "\n\n".join(docs[10:]))  # blank lines are not documents; no final newline
    elif fmt == "jsonl":
        write(
            "a.jsonl",
            "".join(
                json.dumps({"id": i, "text": d}, ensure_ascii=i % 2 == 0) + "\n" for i, d in enumerate(docs)
            ),
        )
    else:
        from io import StringIO

        buffer = StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["id", "text", "label"])
        for i, doc in enumerate(docs):
            writer.writerow([i, doc, "x,y"])
        write("a.csv", buffer.getvalue())


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format(tmp_path, tok, fmt, gz):
    docs = make_docs(25, seed=3)
    write_in_format(tmp_path / "in", fmt, docs, gz)
    meta = prepare(
        [tmp_path / "in"],
        tmp_path / "out",
        cfg(one_doc_per_line=fmt == "txt-lines"),
        tokenizer=tok,
        progress=False,
    )
    assert stored(tmp_path / "out") == truth(tok, docs)
    assert meta["documents"] == len(docs)
    for source in meta["sources"]:
        data = Path(source["path"]).read_bytes()
        assert source["bytes"] == len(data) and source["sha256"] == hashlib.sha256(data).hexdigest()


def test_csv_and_jsonl_details(tmp_path, tok):
    docs = ['a "quoted", comma\nand a second line', "naïve café", "plain words here"]
    with open(tmp_path / "a.csv", "w", newline="", encoding="utf-8-sig") as f:  # with a byte-order mark
        writer = csv.writer(f)
        writer.writerow(["title", "text"])
        for d in docs:
            writer.writerow(["t", d])
        writer.writerow(["short row"])  # missing the text cell: an empty document
    lines = [
        json.dumps({"text": "unicode \\u00e9scape \ud83d\ude00"}),
        "",
        json.dumps({"text": None}),
        json.dumps({"text": "   "}),
        json.dumps({"text": "lone \ud800 surrogate"}),
    ]
    (tmp_path / "b.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    meta = prepare(
        [tmp_path / "a.csv", tmp_path / "b.jsonl"], tmp_path / "out", cfg(), tokenizer=tok, progress=False
    )
    expected = docs + ["unicode \\u00e9scape 😀", "lone \ufffd surrogate"]
    assert stored(tmp_path / "out") == truth(tok, expected)
    assert meta["documents"] == 8 and meta["skipped_documents"] == 3


def test_folder_walk_rules(tmp_path, tok):
    root = tmp_path / "in"
    (root / "sub").mkdir(parents=True)
    (root / ".git").mkdir()
    (root / "b.txt").write_text("second file")
    (root / "a.txt").write_text("first file")
    (root / "notes.md").write_text("skipped in a folder")
    (root / ".hidden.txt").write_text("hidden")
    (root / ".git" / "x.txt").write_text("hidden folder")
    (root / "sub" / "c.jsonl").write_text(json.dumps({"text": "third"}) + "\n")
    (root / "sub" / "d.CSV.gz").write_bytes(gzip.compress(b"text\nfourth\n"))
    (tmp_path / "extra.md").write_text("named explicitly, read as text")
    meta = prepare(
        [root, tmp_path / "extra.md"],
        tmp_path / "out",
        cfg(one_doc_per_line=False),
        tokenizer=tok,
        progress=False,
    )
    names = [Path(s["path"]).relative_to(tmp_path).as_posix() for s in meta["sources"]]
    assert names == ["in/a.txt", "in/b.txt", "in/sub/c.jsonl", "in/sub/d.CSV.gz", "extra.md"]
    expected = ["first file", "second file", "third", "fourth", "named explicitly, read as text"]
    assert stored(tmp_path / "out") == truth(tok, expected)


@pytest.mark.parametrize("n_vocab, dtype", [(1 << 16, "uint16"), ((1 << 16) + 1, "uint32")])
def test_id_dtype_follows_vocabulary_size(tmp_path, n_vocab, dtype):
    vocab = {t: i for i, t in enumerate(SPECIAL_TOKENS)}
    vocab.update({f"w{i}": i for i in range(len(vocab), n_vocab)})
    big = Tokenizer(WordPiece(vocab, unk_token="[UNK]"))
    big.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    top = f"w{n_vocab - 1}"
    docs = [f"w5 {top} w70 unknown", f"{top} {top}", "w65535 w9"]
    write_lines(tmp_path / "c.txt", docs)
    meta = prepare([tmp_path / "c.txt"], tmp_path / "out", cfg(seq_len=8), tokenizer=big, progress=False)
    ids, _ = read_split(tmp_path / "out", "train")
    assert meta["dtype"] == dtype and ids.dtype == np.dtype(dtype) and meta["vocab_size"] == n_vocab
    assert ids.max() == n_vocab - 1
    assert stored(tmp_path / "out") == truth(big, docs)


def test_word_starts_for_a_non_wordpiece_tokenizer(tmp_path):
    docs = make_docs(30, seed=5)
    bpe = Tokenizer(BPE(unk_token="[UNK]"))
    bpe.pre_tokenizer = pre_tokenizers.Whitespace()
    bpe.train_from_iterator(
        docs, trainers.BpeTrainer(vocab_size=120, special_tokens=list(SPECIAL_TOKENS), show_progress=False)
    )
    write_lines(tmp_path / "c.txt", docs)
    prepare([tmp_path / "c.txt"], tmp_path / "out", cfg(), tokenizer=bpe, progress=False)
    ids, starts = stored(tmp_path / "out")
    assert (ids, starts) == truth(bpe, docs)
    assert 0 < starts.count(False) < starts.count(True)  # words split into several pieces, no "##" needed


def test_document_text_cannot_fake_special_tokens(tmp_path, tok):
    docs = ["hello [SEP] world [MASK]", "second [CLS] doc"]
    write_lines(tmp_path / "c.txt", docs)
    prepare([tmp_path / "c.txt"], tmp_path / "out", cfg(), tokenizer=tok, progress=False)
    ids, _ = stored(tmp_path / "out")
    sp = special_ids(tok)
    assert ids.count(sp.sep) == 2 and sp.mask not in ids and sp.cls not in ids


def test_caller_tokenizer_is_not_changed(tmp_path, tok):
    padded = Tokenizer.from_str(tok.to_str())
    padded.enable_padding(length=64)
    write_lines(tmp_path / "c.txt", ["a few words"])
    prepare([tmp_path / "c.txt"], tmp_path / "out", cfg(), tokenizer=padded, progress=False)
    assert padded.padding is not None and padded.padding["length"] == 64
    assert load_tokenizer(tmp_path / "out").padding is None
    assert stored(tmp_path / "out") == truth(tok, ["a few words"])


# ----------------------------------------------------------------------------------------------------------------
# Determinism and splits


def test_two_runs_give_identical_bytes(tmp_path):
    write_lines(tmp_path / "c.txt", make_docs(40, seed=8))
    config = cfg(val_fraction=0.2)
    meta1 = prepare([tmp_path / "c.txt"], tmp_path / "one", config, progress=False)
    meta2 = prepare([tmp_path / "c.txt"], tmp_path / "two", config, progress=False)
    files1 = sorted(p.relative_to(tmp_path / "one") for p in (tmp_path / "one").rglob("*") if p.is_file())
    files2 = sorted(p.relative_to(tmp_path / "two") for p in (tmp_path / "two").rglob("*") if p.is_file())
    assert files1 == files2 and len(files1) > 4
    for rel in files1:
        if rel.name != "meta.json":
            assert (tmp_path / "one" / rel).read_bytes() == (tmp_path / "two" / rel).read_bytes(), rel
    meta1.pop("created")
    meta2.pop("created")
    assert meta1 == meta2


def test_worker_count_does_not_change_the_bytes(tmp_path, monkeypatch, tok):
    monkeypatch.setattr(prepare_module, "BATCH_DOCUMENTS", 6)  # 9 batches: several per worker
    docs = make_docs(50, seed=5) + ["Ünïcödé wörds, “quotes” and 日本語", "tabs\tand\x0bcontrols"]
    write_lines(tmp_path / "c.txt", docs)
    outputs = {}
    for workers in (1, 2, 3):
        out = tmp_path / f"w{workers}"
        prepare(
            [tmp_path / "c.txt"], out, cfg(val_fraction=0.2, workers=workers), tokenizer=tok, progress=False
        )
        outputs[workers] = {p.relative_to(out): p.read_bytes() for p in out.rglob("*.npy")}
    assert outputs[1] == outputs[2] == outputs[3] and len(outputs[1]) > 2
    assert stored(tmp_path / "w2", "train")[0] + stored(tmp_path / "w2", "val")[0]  # something was stored


def test_bad_file_met_by_worker_run_is_one_clean_error(tmp_path, monkeypatch, tok, capfd):
    monkeypatch.setattr(prepare_module, "BATCH_DOCUMENTS", 4)
    d = tmp_path / "in"
    d.mkdir()
    write_lines(d / "a.txt", make_docs(40, seed=6))  # read first: the workers are busy when b.txt fails
    (d / "b.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00binary")
    with pytest.raises(UserError, match=r"b\.txt is not UTF-8 text"):
        prepare([d], tmp_path / "out", cfg(workers=2), tokenizer=tok, progress=False)
    assert not (tmp_path / "out").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["in"]
    time.sleep(0.5)  # the killed workers' last words, if any, would arrive now
    assert "Traceback" not in capfd.readouterr().err


def test_full_disk_while_writing_a_shard_is_one_line(tmp_path, tok):
    """A shard that does not fit (here: a file-size limit of 2 kB, which fails a write as a full disk does) is
    one error line naming the file, exit 2, and no folder left behind; numpy writing into the file itself gave a
    traceback ("N requested and M written", no error code)."""
    write_lines(tmp_path / "c.txt", make_docs(60, seed=2))
    tok.save(str(tmp_path / "tok.json"))
    argv = [sys.executable, "-m", "masklm", "prepare", "--input", str(tmp_path / "c.txt"), "--output",
            str(tmp_path / "out"), "--tokenizer", str(tmp_path / "tok.json"), "--seq-len", "32",
            "--data.workers", "1"]  # fmt: skip
    limit = (2000, resource.RLIM_INFINITY)
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=120,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, limit),
    )  # fmt: skip
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert lines[-1].startswith("error: File too large: ") and "ids_00000.npy" in lines[-1], lines[-1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.txt", "tok.json"]


def test_negative_workers_is_refused(tmp_path, tok):
    write_lines(tmp_path / "c.txt", ["one document"])
    with pytest.raises(UserError, match=r"data\.workers must be >= 0"):
        prepare([tmp_path / "c.txt"], tmp_path / "out", cfg(workers=-1), tokenizer=tok, progress=False)


def _split_docs(out: Path, tok: Tokenizer) -> dict[str, list[tuple[int, ...]]]:
    sep = tok.token_to_id("[SEP]")
    return {split: split_documents(stored(out, split)[0], sep) for split in ("train", "val")}


def test_validation_split_is_disjoint_complete_and_seeded(tmp_path, tok):
    docs = make_docs(80, seed=11)
    write_lines(tmp_path / "c.txt", docs)
    by_ids = {tuple(tok.encode(d, add_special_tokens=False).ids): d for d in docs}
    assert len(by_ids) == len(docs)
    order = list(by_ids)
    chosen = {}
    for seed in (0, 1):
        meta = prepare(
            [tmp_path / "c.txt"],
            tmp_path / f"out{seed}",
            cfg(val_fraction=0.3),
            tokenizer=tok,
            seed=seed,
            progress=False,
        )
        parts = _split_docs(tmp_path / f"out{seed}", tok)
        train, val = parts["train"], parts["val"]
        assert train and val and not set(train) & set(val)
        assert sorted(train + val, key=order.index) == order
        assert train == sorted(train, key=order.index) and val == sorted(val, key=order.index)  # order kept
        assert all(goes_to_val(by_ids[d], seed, 0.3) for d in val)
        assert not any(goes_to_val(by_ids[d], seed, 0.3) for d in train)
        assert meta["splits"]["val"]["documents"] == len(val)
        chosen[seed] = set(val)
    assert chosen[0] != chosen[1]


def prepare_capped(folder: Path, tok, docs: list[str]) -> tuple[dict, dict]:
    """`docs` prepared with half of them bound for validation and validation capped at 2 sequences: (meta, the
    documents of each split)."""
    write_lines(folder / "c.txt", docs)
    meta = prepare(
        [folder / "c.txt"],
        folder / "out",
        cfg(val_fraction=0.5, max_val_sequences=2),
        tokenizer=tok,
        progress=False,
    )
    return meta, _split_docs(folder / "out", tok)


def test_max_val_sequences_caps_validation(tmp_path, tok):
    docs = make_docs(80, seed=12)
    meta, parts = prepare_capped(tmp_path, tok, docs)
    assert 1 <= meta["splits"]["val"]["sequences"] <= 2
    assert sorted(parts["train"] + parts["val"]) == sorted(
        tuple(tok.encode(d, add_special_tokens=False).ids) for d in docs
    )


def test_a_text_in_the_capped_validation_split_stays_out_of_training(tmp_path, tok, capsys):
    """Identical texts land in one split even after max_val_sequences fills validation: the second copy of a
    validation document went to training (all 16 validation documents of a corpus given twice). White space does
    not move a document either (a final newline, a line wrapped otherwise)."""
    docs = make_docs(60, seed=13)
    meta, parts = prepare_capped(tmp_path, tok, docs + docs)
    assert parts["val"] and not set(parts["train"]) & set(parts["val"])
    assert meta["splits"]["val"]["documents"] == len(parts["val"])
    assert (
        f"note: {len(parts['val'])} document(s) came again after the validation split was full"
        in capsys.readouterr().err
    )
    assert (
        goes_to_val(docs[0], 0, 0.5)
        == goes_to_val(docs[0] + "\n", 0, 0.5)
        == goes_to_val(docs[0].replace(" ", "\n  "), 0, 0.5)
    )
    assert [goes_to_val(d, 0, 0.5) for d in docs] != [goes_to_val(d, 1, 0.5) for d in docs]


def test_identical_texts_share_a_split_across_segments_when_the_cap_binds(tmp_path, tok):
    """The cap counts per segment: validation-bound documents that went to training because validation was full
    in one segment keep going to training in the next, where validation has room again (two files, a segment
    each, the second the first in reverse order: its first validation-bound documents are those that found
    validation full in the first)."""
    docs = make_docs(60, seed=14)
    write_lines(tmp_path / "a.txt", docs)
    write_lines(tmp_path / "b.txt", docs[::-1])
    settings = cfg(val_fraction=0.5, max_val_sequences=2, segment_bytes=(tmp_path / "a.txt").stat().st_size)
    meta = prepare(
        [tmp_path / "a.txt", tmp_path / "b.txt"], tmp_path / "out", settings, tokenizer=tok, progress=False
    )
    sp = special_ids(tok)
    parts: dict[str, set[tuple[int, ...]]] = {}
    for split in ("train", "val"):
        shards = meta["splits"][split]["shards"]
        assert {tuple(s["segment"]) for s in shards} == {(0, 0), (1, 0)}
        parts[split] = set()
        for segment in ({"segment": [0, 0]}, {"segment": [1, 0]}):
            # each segment's stream ends in its own padded row
            rows = [s for s in shards if s["segment"] == segment["segment"]]
            ids = np.concatenate([np.load(tmp_path / "out" / s["ids"]) for s in rows])
            stream, _ = content_stream(ids, np.ones(ids.shape, bool), sp)
            parts[split] |= set(split_documents(stream, sp.sep))
    assert parts["val"] and parts["train"]
    assert not parts["train"] & parts["val"]


def test_tiny_corpus_still_gets_one_validation_sequence(tmp_path, tok):
    docs = ["one small document", "and another one", "a third document here to fill rows"]
    assert not any(goes_to_val(d, 0, 1e-9) for d in docs)
    write_lines(tmp_path / "c.txt", docs)
    meta = prepare(
        [tmp_path / "c.txt"], tmp_path / "out", cfg(val_fraction=1e-9), tokenizer=tok, progress=False
    )
    assert meta["splits"]["val"]["sequences"] == 1 and meta["splits"]["train"]["sequences"] >= 1
    # against the same corpus with no validation at all: one row moved, nothing lost or changed
    prepare([tmp_path / "c.txt"], tmp_path / "all", cfg(), tokenizer=tok, progress=False)
    alone = read_split(tmp_path / "all", "train")
    (train, train_starts), (val, val_starts) = (
        read_split(tmp_path / "out", "train"),
        read_split(tmp_path / "out", "val"),
    )
    rows = lambda ids, starts: sorted(map(tuple, np.concatenate([ids, starts], axis=1).tolist()))  # noqa: E731
    assert rows(np.concatenate([train, val]), np.concatenate([train_starts, val_starts])) == rows(*alone)
    # the moved row is a full one, not the stream's short tail
    pad = tok.token_to_id("[PAD]")
    filled = (alone[0] != pad).sum(axis=1)
    assert filled[-1] < filled.max() and (val[0] != pad).sum() == filled.max()


def test_a_tiny_corpus_keeps_its_only_text_for_training(tmp_path, tok):
    """A document that fills one row but for its [SEP] (which spills into a "[CLS] [SEP] [SEP]" row): the text row
    went to validation and pretraining skipped every step of a training split without a token to learn."""
    word = next(
        w for w in tok.get_vocab() if w.isalpha() and len(tok.encode(w, add_special_tokens=False).ids) == 1
    )
    words = [word] * 6  # 6 tokens: [CLS] + 6 = 7 of 8, the document's [SEP] goes on into the next row
    write_lines(tmp_path / "c.txt", [" ".join(words)])
    meta = prepare(
        [tmp_path / "c.txt"],
        tmp_path / "out",
        cfg(seq_len=8, val_fraction=1e-9),
        tokenizer=tok,
        progress=False,
    )
    assert meta["splits"]["val"]["sequences"] == 0 and meta["splits"]["train"]["sequences"] == 2
    train, _ = read_split(tmp_path / "out", "train")
    assert (train == tok.token_to_id(word)).sum() == 6


def test_max_documents_and_source_hashes(tmp_path, tok):
    write_lines(tmp_path / "a.txt", make_docs(4, seed=1))
    write_lines(tmp_path / "b.txt", make_docs(4, seed=2))
    meta = prepare(
        [tmp_path],
        tmp_path.parent / (tmp_path.name + "-out"),
        cfg(max_documents=5),
        tokenizer=tok,
        progress=False,
    )
    assert meta["documents"] == 5 and meta["splits"]["train"]["documents"] == 5
    assert [Path(s["path"]).name for s in meta["sources"]] == ["a.txt", "b.txt"]
    for s in meta["sources"]:
        assert s["sha256"] == hashlib.sha256(Path(s["path"]).read_bytes()).hexdigest()


def test_progress_bar_goes_to_stderr(tmp_path, tok, capsys):
    write_lines(tmp_path / "c.txt", make_docs(5))
    prepare([tmp_path / "c.txt"], tmp_path / "out", cfg(), tokenizer=tok, progress=True)
    captured = capsys.readouterr()
    assert "tokenizing" in captured.err and captured.out == ""


# ----------------------------------------------------------------------------------------------------------------
# Errors: one line, what and how to fix, and the user's files untouched


def _bad_inputs(tmp_path: Path, case: str) -> list[Path]:
    d = tmp_path / "in"
    d.mkdir()
    if case == "missing":
        return [d / "nope.txt"]
    if case == "no-files":
        (d / "image.bin").write_bytes(b"\x00\x01")
        (d / ".hidden.txt").write_text("hidden")
        return [d]
    if case in ("empty", "empty-given-tokenizer"):
        (d / "empty.txt").write_text("")
        (d / "blank.txt").write_text("  \n\t\n")
        return [d]
    if case == "binary":
        (d / "ok.txt").write_text("fine text")
        (d / "data.bin").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
        return [d / "ok.txt", d / "data.bin"]
    if case == "nul":
        (d / "nul.txt").write_bytes(b"valid utf-8 \x00 but with a NUL byte")
        return [d]
    if case == "latin1":
        (d / "latin.txt").write_bytes("café au lait".encode("latin-1"))
        return [d]
    if case == "utf16":
        (d / "win.txt").write_bytes("a Windows 'Unicode' text\n".encode("utf-16"))
        return [d]
    if case == "bad-gzip":
        (d / "x.txt.gz").write_text("not gzip at all")
        return [d]
    if case == "bad-json":
        (d / "bad.jsonl").write_text('{"text": "a"}\n{"text": "b"}\n{bad\n')
        return [d]
    if case == "json-field":
        (d / "f.jsonl").write_text('{"title": "t", "body": "b"}\n')
        return [d]
    if case == "json-type":
        (d / "f.jsonl").write_text('{"text": 3}\n')
        return [d]
    if case == "csv-column":
        (d / "f.csv").write_text("title,body\nt,b\n")
        return [d]
    raise AssertionError(case)


BAD_INPUTS = {
    "missing": r"nope\.txt does not exist",
    "no-files": r"no readable input files .*\.txt, \.jsonl, \.csv, \.tsv .*\.parquet or \.arrow",
    "empty": r"no text",
    "empty-given-tokenizer": r"no text",
    "binary": r"data\.bin is not UTF-8 text",
    "nul": r"nul\.txt is not UTF-8 text \(binary file\?\)",
    "latin1": r"latin\.txt is not UTF-8 text",
    "utf16": r"win\.txt is UTF-16 text; convert it to UTF-8 \(iconv -f UTF-16 -t UTF-8\)",
    "bad-gzip": r"cannot read .*x\.txt\.gz",
    "bad-json": r"bad\.jsonl:3: invalid JSON",
    "json-field": r"f\.jsonl:1: no field 'text' \(fields: title, body\); set --data\.text_field",
    "json-type": r"f\.jsonl:1: field 'text' holds int",
    "csv-column": r"f\.csv: no column 'text' \(columns: title, body\)",
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_raises_and_keeps_existing_output(tmp_path, tok, case):
    out = tmp_path / "out"
    write_lines(tmp_path / "old.txt", ["an older corpus"])
    prepare([tmp_path / "old.txt"], out, cfg(), tokenizer=tok, progress=False)
    before, siblings = file_snapshot(out), sorted(p.name for p in tmp_path.iterdir())
    inputs = _bad_inputs(tmp_path, case)
    kwargs = {"tokenizer": tok} if case == "empty-given-tokenizer" else {}
    with pytest.raises(UserError, match=BAD_INPUTS[case]) as e:
        prepare(inputs, out, cfg(), overwrite=True, progress=False, **kwargs)
    assert "\n" not in str(e.value)
    assert file_snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(siblings + ["in"])  # no staging folder left


def test_output_folder_rules(tmp_path, tok):
    write_lines(tmp_path / "c.txt", ["some text"])
    out = tmp_path / "out"
    prepare([tmp_path / "c.txt"], out, cfg(), tokenizer=tok, progress=False)
    before = file_snapshot(out)
    with pytest.raises(
        UserError, match="already exists; pass --overwrite to replace it or choose another folder"
    ):
        prepare([tmp_path / "c.txt"], out, cfg(), tokenizer=tok, progress=False)
    assert file_snapshot(out) == before

    with pytest.raises(UserError, match="outside the inputs"):  # output == an input folder
        prepare([tmp_path], tmp_path, cfg(), tokenizer=tok, overwrite=True, progress=False)
    (out / "more.txt").write_text("an input inside the output folder")
    with pytest.raises(UserError, match="outside the inputs"):  # output holds an input
        prepare([out / "more.txt"], out, cfg(), tokenizer=tok, overwrite=True, progress=False)

    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.tex").write_text("do not delete")
    with pytest.raises(UserError, match="not a prepared data folder"):
        prepare([tmp_path / "c.txt"], precious, cfg(), tokenizer=tok, overwrite=True, progress=False)
    assert (precious / "thesis.tex").read_text() == "do not delete"
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(UserError, match="not a folder"):
        prepare(
            [tmp_path / "c.txt"], tmp_path / "a-file", cfg(), tokenizer=tok, overwrite=True, progress=False
        )


def test_overwrite_replaces_a_prepared_folder(tmp_path, tok):
    write_lines(tmp_path / "a.txt", ["first version"])
    write_lines(tmp_path / "b.txt", ["second version of the text"])
    out = tmp_path / "out"
    prepare([tmp_path / "a.txt"], out, cfg(), tokenizer=tok, progress=False)
    meta = prepare([tmp_path / "b.txt"], out, cfg(), tokenizer=tok, overwrite=True, progress=False)
    assert stored(out) == truth(tok, ["second version of the text"])
    assert json.loads((out / "meta.json").read_text()) == meta
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.txt", "out"]


def test_where_keeps_only_matching_rows(tmp_path):
    rows = [("alpha beta gamma " * 5, "keep"), ("delta epsilon zeta " * 5, "drop")] * 10
    with open(tmp_path / "c.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "source"])
        w.writerows(rows)
    with open(tmp_path / "c.jsonl", "w") as f:
        for text, src in rows:
            f.write(json.dumps({"text": text, "source": src}) + "\n")
    for name in ("c.csv", "c.jsonl"):
        cfg = DataConfig(seq_len=16, vocab_size=100, where="source=keep", val_fraction=0.0)
        meta = prepare([tmp_path / name], tmp_path / f"out_{name}", cfg, progress=False)
        assert meta["splits"]["train"]["documents"] == 10
        ds = PackedDataset(tmp_path / f"out_{name}", "train")
        ids, _ = ds.get(np.arange(len(ds)))
        tok = load_tokenizer(tmp_path / f"out_{name}" / "tokenizer.json")
        text = tok.decode(ids.flatten().tolist())
        assert "alpha" in text and "delta" not in text
    bad = DataConfig(seq_len=16, vocab_size=100, where="nosuch=keep")
    with pytest.raises(UserError, match="nosuch"):
        prepare([tmp_path / "c.csv"], tmp_path / "out_bad", bad, progress=False)
    assert not (tmp_path / "out_bad").exists()


def test_a_folder_input_skips_the_folders_masklm_wrote(tmp_path, tok, capsys):
    """`--input .` beside an earlier run and its prepared data reads the text only (not metrics.jsonl, the
    run's command.txt or the shards), saying which folders it left out."""
    corpus = tmp_path / "corpus"
    docs = make_docs(6, seed=3)
    corpus.mkdir()
    write_lines(corpus / "texts.txt", docs)
    prepare([corpus / "texts.txt"], corpus / "data", cfg(), tokenizer=tok, progress=False)
    run = corpus / "run"
    run.mkdir()
    (run / "config.yaml").write_text("train: {lr: 0.001}\n")
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n')
    (run / "command.txt").write_text("masklm pretrain --input .\n")
    capsys.readouterr()
    meta = prepare([corpus], tmp_path / "out", cfg(), tokenizer=tok, progress=False)
    assert meta["documents"] == len(docs)
    err = capsys.readouterr().err
    assert f"{corpus / 'data'} is a folder masklm wrote" in err and f"{corpus / 'run'} is a folder" in err


def test_a_folder_input_follows_links_to_folders_and_reads_each_folder_once(tmp_path, tok):
    """A link to a folder inside an --input folder is read as the folder would be (links to files already were);
    a link back up the tree is not followed round in circles."""
    corpus, elsewhere = tmp_path / "corpus", tmp_path / "elsewhere"
    (corpus / "real").mkdir(parents=True)
    elsewhere.mkdir()
    write_lines(corpus / "real" / "a.txt", make_docs(4, seed=1))
    write_lines(elsewhere / "b.txt", make_docs(5, seed=2))
    (corpus / "linked").symlink_to(elsewhere, target_is_directory=True)
    (corpus / "real" / "up").symlink_to(corpus, target_is_directory=True)  # a loop
    meta = prepare([corpus], tmp_path / "out", cfg(), tokenizer=tok, progress=False)
    assert sorted(Path(s["path"]).name for s in meta["sources"]) == ["a.txt", "b.txt"]
    assert meta["documents"] == 9


def test_an_output_a_kill_left_half_replaced_is_put_back(tmp_path, tok, capsys):
    """A kill between the two renames of --overwrite (the old folder moved aside, the new one not yet in place)
    leaves no output, only `.OUT.old-PID`: the next prepare puts the old folder back first (and then refuses to
    replace it without --overwrite, as for any existing output)."""
    write_lines(tmp_path / "c.txt", make_docs(10))
    out = tmp_path / "out"
    meta = prepare([tmp_path / "c.txt"], out, cfg(), tokenizer=tok, progress=False)
    out.rename(tmp_path / ".out.old-4242")  # where the kill left it
    with pytest.raises(UserError, match="already exists"):
        prepare([tmp_path / "c.txt"], out, cfg(), tokenizer=tok, progress=False)
    assert json.loads((out / "meta.json").read_text())["created"] == meta["created"]
    assert not list(tmp_path.glob(".out.old-*")) and "is back in place" in capsys.readouterr().err
    prepare([tmp_path / "c.txt"], out, cfg(), tokenizer=tok, progress=False, overwrite=True)
    assert not list(tmp_path.glob(".out.*"))  # nothing left beside it


def test_an_output_that_appears_while_preparing_is_not_replaced(tmp_path, tok, monkeypatch):
    """Two prepares to one new folder at once: the one that finishes second finds the folder there and refuses
    (without --overwrite), leaving the first one's data as it was."""
    from masklm.data import prepare as prepare_module

    write_lines(tmp_path / "c.txt", make_docs(10))
    out, other = tmp_path / "out", tmp_path / "other"
    first = prepare([tmp_path / "c.txt"], other, cfg(), tokenizer=tok, progress=False)
    pack = prepare_module._pack

    def meanwhile(*args, **kwargs):  # the other command finishes while this one packs
        other.rename(out)
        return pack(*args, **kwargs)

    monkeypatch.setattr(prepare_module, "_pack", meanwhile)
    with pytest.raises(UserError, match="appeared while the data was prepared"):
        prepare([tmp_path / "c.txt"], out, cfg(), tokenizer=tok, progress=False)
    assert json.loads((out / "meta.json").read_text())["created"] == first["created"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.txt", "out"]


def test_prepare_takes_a_seq_len_above_the_default_models_positions(tmp_path):
    """prepare makes data: a 1024-token row is fine there (a rotary model reads it); pretrain checks positions."""
    from helpers import cli

    write_lines(tmp_path / "c.txt", make_docs(20))
    assert cli("prepare", "--input", tmp_path / "c.txt", "--output", tmp_path / "out", "--seq-len", 1024) == 0
    assert json.loads((tmp_path / "out" / "meta.json").read_text())["seq_len"] == 1024


def test_tsv_ndjson_and_json_arrays(tmp_path, tok, capsys):
    """.tsv (tab-separated, quotes ordinary characters), .ndjson (as .jsonl) and a named .json array (of
    objects or of strings) are read as records: before, each was one plain-text document of its raw bytes,
    --text-field ignored. In a folder a .json file is skipped (metadata, such as a datasets folder's
    state.json); a named file of an unknown kind is read as text with a note saying so."""
    docs = ['first "quoted" words', "second row", "third one", "fourth", "fifth, with a comma"]
    (tmp_path / "a.tsv").write_text("id\tbody\n" + "".join(f"{i}\t{d}\n" for i, d in enumerate(docs[:2])))
    (tmp_path / "b.ndjson").write_text(json.dumps({"body": docs[2]}) + "\n")
    (tmp_path / "c.json").write_text(json.dumps([{"body": docs[3]}, {"body": None}]))
    (tmp_path / "d.json").write_text(json.dumps([docs[4]]))
    names = ["a.tsv", "b.ndjson", "c.json", "d.json"]
    meta = prepare(
        [tmp_path / n for n in names], tmp_path / "out", cfg(text_field="body"), tokenizer=tok, progress=False
    )
    assert stored(tmp_path / "out") == truth(tok, docs)
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "state.json").write_text(json.dumps({"_fingerprint": "x"}))
    (folder / "a.txt").write_text("kept")
    (tmp_path / "notes.md").write_text("named, read as text")
    meta = prepare([folder, tmp_path / "notes.md"], tmp_path / "out2", cfg(), tokenizer=tok, progress=False)
    assert [Path(s["path"]).name for s in meta["sources"]] == ["a.txt", "notes.md"]
    assert "notes.md: not a known extension" in capsys.readouterr().err


def test_a_csv_row_with_more_fields_than_the_header_is_refused(tmp_path, tok):
    """An unquoted comma in the text made a row one field longer, and the text was cut at the comma without a
    word; a row with fewer fields (missing cells) is still an empty document."""
    (tmp_path / "a.csv").write_text("id,text\n1,first words\n2,cut here, and the rest\n")
    with pytest.raises(UserError, match=r"a.csv:3: has 3 fields, the header has 2; quote fields"):
        prepare([tmp_path / "a.csv"], tmp_path / "out", cfg(), tokenizer=tok, progress=False)
    (tmp_path / "b.tsv").write_text("id\ttext\n1\tfirst\twords\n")
    with pytest.raises(UserError, match=r"b.tsv:2: has 3 fields, the header has 2; remove tabs"):
        prepare([tmp_path / "b.tsv"], tmp_path / "out", cfg(), tokenizer=tok, progress=False)
    assert not (tmp_path / "out").exists()


def test_a_vocabulary_smaller_than_asked_is_noted(tmp_path, capsys):
    (tmp_path / "a.txt").write_text("alpha bravo charlie " * 50)
    prepare([tmp_path / "a.txt"], tmp_path / "out", cfg(vocab_size=500), progress=False)
    size = Tokenizer.from_file(str(tmp_path / "out" / "tokenizer.json")).get_vocab_size()
    assert size < 500
    assert f"only {size} distinct tokens for --vocab-size 500" in capsys.readouterr().err


def test_a_vocabulary_larger_than_asked_and_stripped_marks_are_noted(tmp_path, capsys):
    """Every distinct character is a token, so 600 CJK ideographs give more than --vocab-size 300; lowercasing
    strips the vowel signs of Devanagari and Thai (nonspacing marks), which a note points to --data.lowercase
    false for, while Latin accents (part of their letter in NFC) are no cause for it."""
    (tmp_path / "zh.txt").write_text("".join(chr(0x4E00 + i) for i in range(600)) + "\n")
    prepare([tmp_path / "zh.txt"], tmp_path / "zh", cfg(vocab_size=300), progress=False)
    size = Tokenizer.from_file(str(tmp_path / "zh" / "tokenizer.json")).get_vocab_size()
    assert size > 300 and f"has {size} tokens, more than --vocab-size 300" in capsys.readouterr().err
    (tmp_path / "hi.txt").write_text("राहुल गया दिल्ली नमस्ते ดีมาก ครับ ดู\n" * 50)
    prepare([tmp_path / "hi.txt"], tmp_path / "hi", cfg(vocab_size=100), progress=False)
    assert "pass --data.lowercase false to keep them" in capsys.readouterr().err
    prepare([tmp_path / "hi.txt"], tmp_path / "hi2", cfg(vocab_size=100, lowercase=False), progress=False)
    (tmp_path / "fr.txt").write_text("le café est très élégant à Paris, où je suis allé.\n" * 50)
    prepare([tmp_path / "fr.txt"], tmp_path / "fr", cfg(vocab_size=100), progress=False)
    assert "lowercasing strips" not in capsys.readouterr().err


def test_documents_of_only_dropped_characters_are_noted(tmp_path, capsys):
    """A document of zero-width spaces or a lone combining mark tokenizes to nothing: left out, counted in
    meta.json and noted; blank lines are no cause for the note."""
    write_lines(
        tmp_path / "a.txt", ["alpha bravo charlie", "\u200b\u200b", "", "\u0301", "delta echo foxtrot"]
    )
    out = tmp_path / "out"
    prepare([tmp_path / "a.txt"], out, cfg(one_doc_per_line=True), progress=False)
    assert json.loads((out / "meta.json").read_text())["skipped_documents"] >= 2
    err = capsys.readouterr().err
    assert "note: 2 document(s) held only characters the tokenizer drops" in err
    assert "lowercasing strips" not in err  # one stray mark


def test_a_folder_of_the_inputs_this_user_cannot_read_is_named(tmp_path, monkeypatch):
    """An unreadable folder under --input was "Permission denied: .../config.yaml; free disk space or fix
    permissions ... --resume" (from the check for folders masklm wrote); os.walk skipped one it could not list,
    its text missing unseen. Both are one line naming the folder. (Injected: root reads any folder.)"""
    import os

    from masklm.data import readers

    (tmp_path / "in" / "sub").mkdir(parents=True)
    write_lines(tmp_path / "in" / "a.txt", ["some text here"])
    real_is_file = Path.is_file

    def is_file(self):
        if self.parent.name == "sub":
            raise PermissionError(13, "Permission denied", str(self))
        return real_is_file(self)

    monkeypatch.setattr(Path, "is_file", is_file)
    with pytest.raises(UserError, match=r"cannot read .*in/sub \(permission denied\): give this user read"):
        list(readers._walk(tmp_path / "in"))
    monkeypatch.undo()
    with pytest.raises(UserError, match=r"cannot read /x/y \(permission denied\)"):
        readers._refuse_unreadable(PermissionError(13, "Permission denied", "/x/y"))
    readers._refuse_unreadable(FileNotFoundError(2, "gone", "/x/z"))  # vanished meanwhile: passed over
    assert os.path.isdir(tmp_path / "in" / "sub")
