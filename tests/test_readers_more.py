"""Corpus readers (masklm.data.readers): strict CSV quoting, zstd reading in bounded memory, exact --data.where on
large integers, data.max_documents leaving the remaining files unread, glob matches of unknown extension, Arrow
string_view columns and empty compressed files."""

from __future__ import annotations

import bz2
import csv
import gzip
import hashlib
import io
import json
import lzma
import tracemalloc
from pathlib import Path

import pytest
from helpers import cli

from masklm.cli import check_same_input
from masklm.config import DataConfig
from masklm.data import readers
from masklm.data.prepare import prepare
from masklm.data.readers import Corpus, find_input_files
from masklm.data.tokenizer import train_tokenizer
from masklm.errors import UserError

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
zstandard = pytest.importorskip("zstandard")


def cfg(**kwargs) -> DataConfig:
    values = {"seq_len": 16, "shard_sequences": 8, "val_fraction": 0.1, "workers": 1}
    return DataConfig(**{**values, **kwargs})


def documents(inputs: list, **kwargs) -> list[str]:
    return list(Corpus(find_input_files(inputs), cfg(**kwargs)))


@pytest.fixture(scope="module")
def tokenizer_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    path.write_text(
        train_tokenizer(["alpha bravo charlie delta echo row number"] * 20, vocab_size=60).to_str()
    )
    return path


# ----------------------------------------------------------------------------------------------------------------
# CSV: strict quoting


def test_a_stray_quote_in_a_csv_is_a_one_line_error_naming_the_line(tmp_path):
    """Python's csv module reads a field that opens with a quote to the end of the file when the quote is never
    closed: the rest of the file was one document, silently."""
    rows = [f"row number {i},{i}\n" for i in range(10)]
    rows[4] = '"unterminated text,4\n'
    path = tmp_path / "stray.csv"
    path.write_text("text,id\n" + "".join(rows))
    with pytest.raises(
        UserError, match=r"stray\.csv:6: malformed CSV .*a quote inside it is written twice"
    ) as e:
        documents([path])
    assert "\n" not in str(e.value)
    (tmp_path / "after.csv").write_text('text,id\n"closed"then more,1\n')
    with pytest.raises(UserError, match=r"after\.csv:2: malformed CSV"):
        documents([tmp_path / "after.csv"])


def test_a_stray_quote_stops_the_command_with_exit_code_2(tmp_path, tokenizer_file, capsys):
    (tmp_path / "c.csv").write_text('text\nalpha bravo\n"charlie delta\necho\n')
    code = cli(
        "prepare", "--input", tmp_path / "c.csv", "--output", tmp_path / "out", "--tokenizer", tokenizer_file
    )
    err = capsys.readouterr().err
    assert code == 2 and "c.csv:3: malformed CSV" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("gz", [False, True])
def test_legitimate_csv_quoting_still_reads(tmp_path, gz):
    """Quoted fields with line breaks (LF and CRLF), doubled quotes, commas, CRLF line ends, a byte-order mark and a
    quote inside an unquoted field all read as before under the strict reader."""
    texts = [
        'a "quoted", comma\nand a second line',
        "crlf inside\r\nthe field",
        'he said "hi" twice',
        "plain",
    ]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(["id", "text"])
    writer.writerows([[i, t] for i, t in enumerate(texts[:2])])
    body = out.getvalue() + '2,he said "hi" twice\r\n3,plain\r\n'
    data = "\ufeff".encode() + body.encode()
    path = tmp_path / ("c.csv.gz" if gz else "c.csv")
    path.write_bytes(gzip.compress(data) if gz else data)
    assert documents([path]) == texts


def test_a_tsv_keeps_quotes_as_ordinary_characters(tmp_path):
    (tmp_path / "c.tsv").write_text('text\tlabel\n"opened and never closed\t1\nnext\t0\n')
    assert documents([tmp_path / "c.tsv"]) == ['"opened and never closed', "next"]


# ----------------------------------------------------------------------------------------------------------------
# zstd


def test_a_highly_compressible_zst_reads_in_bounded_memory(tmp_path):
    """A 73 KB .zst of 8.6 MB: the whole output of a small file was held at once, and sliced at every read
    (quadratic in it); now 2 KiB of input at a time is decompressed. What stays is the two 1 MiB read buffers."""
    lines = [
        json.dumps({"text": f"document {i}: " + "the cat sat on the mat. " * 6}) + "\n" for i in range(50000)
    ]
    data = "".join(lines).encode()
    packed = zstandard.ZstdCompressor().compress(data)
    assert len(packed) * 50 < len(data)
    digest = hashlib.sha256()
    tracemalloc.start()
    try:
        stream = readers._decompressed(io.BufferedReader(io.BytesIO(packed)), "zst")
        while piece := stream.read(1 << 16):
            digest.update(piece)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert digest.digest() == hashlib.sha256(data).digest()
    assert peak < len(data) / 3, (peak, len(data))
    _write(tmp_path / "c.jsonl.zst", packed)
    got = documents([tmp_path / "c.jsonl.zst"])
    assert len(got) == 50000 and got[-1] == json.loads(lines[-1])["text"]


def test_a_zst_written_with_a_2_gib_window_reads(tmp_path):
    """`zstd --long=31` writes frames that need a 2 GiB window; zstandard refuses more than 128 MiB by default,
    which was reported as "not a valid zstd stream"."""
    params = zstandard.ZstdCompressionParameters(window_log=31, enable_ldm=True)
    compressor = zstandard.ZstdCompressor(compression_params=params).compressobj()
    text = "".join(json.dumps({"text": f"line {i}"}) + "\n" for i in range(1000)).encode()
    packed = compressor.compress(text) + compressor.flush()
    assert zstandard.get_frame_parameters(packed).window_size == 2**31
    _write(tmp_path / "c.jsonl.zst", packed)
    assert documents([tmp_path / "c.jsonl.zst"]) == [f"line {i}" for i in range(1000)]


@pytest.mark.parametrize(
    "damage, message",
    [("truncated", r"ends in the middle of a frame"), ("garbage", r"not a valid zstd stream")],
)
def test_a_damaged_zst_is_still_refused(tmp_path, damage, message):
    packed = zstandard.ZstdCompressor().compress(b'{"text": "a b c"}\n' * 5000)
    bad = packed[: len(packed) // 2] if damage == "truncated" else b"not zstd at all\n" * 20
    _write(tmp_path / "c.jsonl.zst", bad)
    with pytest.raises(UserError, match=r"cannot read .*c\.jsonl\.zst \(.*" + message):
        documents([tmp_path / "c.jsonl.zst"])


def test_zst_frames_and_skippable_frames_read(tmp_path):
    skippable = b"\x50\x2a\x4d\x18" + (4).to_bytes(4, "little") + b"skip"
    frames = [zstandard.ZstdCompressor().compress(json.dumps({"text": t}).encode() + b"\n") for t in "ab"]
    _write(tmp_path / "c.jsonl.zst", skippable + frames[0] + skippable + frames[1] + skippable)
    assert documents([tmp_path / "c.jsonl.zst"]) == ["a", "b"]


# ----------------------------------------------------------------------------------------------------------------
# --data.where on large integers


@pytest.mark.parametrize("name", ["c.jsonl", "c.csv", "c.parquet"])
def test_where_compares_large_integers_exactly(tmp_path, name):
    """As floats, 9007199254740993 equals 9007199254740992 (2**53 + 1 has no float of its own)."""
    ids = [2**53 + 1, 2**53, 10**30 + 1, 10**30]
    texts = ["A", "B", "C", "D"]
    path = tmp_path / name
    if name == "c.jsonl":
        path.write_text("".join(json.dumps({"text": t, "id": i}) + "\n" for t, i in zip(texts, ids)))
    elif name == "c.csv":
        path.write_text("text,id\n" + "".join(f"{t},{i}\n" for t, i in zip(texts, ids)))
    else:
        pq.write_table(pa.table({"text": texts[:2], "id": pa.array(ids[:2], pa.int64())}), path)
    assert documents([path], where="id=9007199254740993") == ["A"]
    assert documents([path], where="id=9007199254740992") == ["B"]
    if name != "c.parquet":
        assert documents([path], where=f"id={10**30 + 1}") == ["C"]


def test_where_still_matches_numbers_written_differently(tmp_path):
    (tmp_path / "c.csv").write_text("text,score\nA,1.0\nB,1\nC,+1\nD,2.5\nE, 1 \n")
    assert documents([tmp_path / "c.csv"], where="score=1") == ["A", "B", "C", "E"]
    assert documents([tmp_path / "c.csv"], where="score=2.50") == ["D"]
    assert (
        readers.where_matches(1.0, "1")
        and readers.where_matches(3, "3.0")
        and not readers.where_matches(3, "3.5")
    )


# ----------------------------------------------------------------------------------------------------------------
# data.max_documents


def test_max_documents_leaves_the_remaining_files_unread(tmp_path, tokenizer_file):
    """The files after the one the limit is reached in are not opened (a damaged or huge one was read and hashed
    whole before); meta.json's sources list them with "read": false and no sha256."""
    first = _write(
        tmp_path / "in" / "a.jsonl", b"".join(b'{"text": "alpha bravo %d"}\n' % i for i in range(6))
    )
    bad = _write(tmp_path / "in" / "b.jsonl.gz", b"this is not gzip data\n" * 100)
    corpus = Corpus(find_input_files([tmp_path / "in"]), cfg(max_documents=4))
    assert list(corpus) == [f"alpha bravo {i}" for i in range(4)]
    data = first.read_bytes()
    assert corpus.sources == [
        {"path": str(first), "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()},
        {"path": str(bad), "bytes": bad.stat().st_size, "read": False},
    ]
    assert corpus.bytes_read == len(data)
    out = tmp_path / "out"
    meta = prepare(
        [tmp_path / "in"], out, cfg(max_documents=4, tokenizer=str(tokenizer_file)), progress=False
    )
    assert meta["documents"] == 4 and meta["sources"][1]["read"] is False
    assert json.loads((out / "meta.json").read_text())["sources"] == meta["sources"]
    # what reads the sources back: pretrain --resume --input compares their names and sizes with the inputs
    check_same_input([str(tmp_path / "in")], out)


# ----------------------------------------------------------------------------------------------------------------
# Globs


def test_glob_matches_of_unknown_extension_are_read_as_text(tmp_path, monkeypatch, capsys):
    """A quoted pattern reads what the shell's expansion of it reads: each match as if named."""
    monkeypatch.chdir(tmp_path)
    for name, text in [("c/a.text", "alpha"), ("c/b.text", "bravo"), ("c/one.md", "charlie")]:
        _write(tmp_path / name, text.encode())
    _write(tmp_path / "x.jsonl", b'{"text": "delta"}\n')
    files = find_input_files(["c/*.text", "x.jsonl"])
    assert [(f.path.as_posix(), f.kind) for f in files] == [
        ("c/a.text", "txt"),
        ("c/b.text", "txt"),
        ("x.jsonl", "jsonl"),
    ]
    err = capsys.readouterr().err
    assert "note: 2 files matching c/*.text (such as c/a.text) have no known extension" in err
    assert documents(["c/*.md"]) == documents(["c/one.md"]) == ["charlie"]
    assert "note: c/one.md: not a known extension" in capsys.readouterr().err
    # a folder's files of unknown extension are still passed over
    assert [f.path.name for f in find_input_files(["c", "x.jsonl"])] == ["x.jsonl"]


# ----------------------------------------------------------------------------------------------------------------
# Arrow string_view


@pytest.mark.parametrize("kind", ["arrow", "parquet"])
def test_string_view_columns_are_text(tmp_path, kind):
    if not hasattr(pa, "string_view"):
        pytest.skip("pyarrow before 16 has no string_view")
    table = pa.table(
        {
            "text": pa.array(["a b", None, "c d"], pa.string_view()),
            "source": pa.array(["x", "y", "y"], pa.string_view()),
        }
    )
    path = tmp_path / f"c.{kind}"
    if kind == "parquet":
        pq.write_table(table, path)
    else:
        with pa.ipc.new_stream(path, table.schema) as writer:
            writer.write_table(table)
    assert documents([path]) == ["a b", "", "c d"]
    assert documents([path], where="source=y") == ["", "c d"]


# ----------------------------------------------------------------------------------------------------------------
# Empty compressed files


@pytest.mark.parametrize("ext", ["gz", "zst", "bz2", "xz"])
def test_an_empty_compressed_file_holds_no_documents(tmp_path, ext):
    """A 0-byte .gz or .zst was empty, a 0-byte .bz2 or .xz "cannot read" (truncated)."""
    _write(tmp_path / f"empty.jsonl.{ext}", b"")
    compress = {"gz": gzip.compress, "zst": zstandard.compress, "bz2": bz2.compress, "xz": lzma.compress}[ext]
    _write(tmp_path / f"full.jsonl.{ext}", compress(b'{"text": "a b"}\n'))
    corpus = Corpus(find_input_files([tmp_path]), cfg())
    assert list(corpus) == ["a b"]
    assert corpus.sources[0]["bytes"] == 0 and corpus.sources[0]["sha256"] == hashlib.sha256(b"").hexdigest()


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path
