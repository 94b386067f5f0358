"""Text files → token ids → packed shards + meta.json.

    meta = prepare(["corpus/"], "data/wiki", DataConfig(seq_len=128))

Reads .txt, .jsonl and .csv files (each optionally .gz) as a stream, tokenizes them in batches on all cores, and
packs each split's token stream `doc1 [SEP] doc2 [SEP] ...` into rows `[CLS] <seq_len - 2 tokens> [SEP]`. Only the
last row of a split is padded. Next to every row goes a bit per token saying "this token starts a word", for
whole-word masking. The output folder is written under a temporary name and renamed when complete. See
docs/prepare.md for the layout and meta.json fields.
"""

from __future__ import annotations

import csv
import dataclasses
import gzip
import hashlib
import io
import json
import os
import re
import secrets
import shutil
import sys
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer
from tqdm import tqdm

from masklm import __version__
from masklm.config import DataConfig
from masklm.data.encode import default_workers, encode_batches
from masklm.data.tokenizer import (
    SpecialIds,
    is_lowercase,
    load_tokenizer,
    special_ids,
    tokenizer_hash,
    train_tokenizer,
    vocab_size,
)
from masklm.errors import UserError

FORMAT = "masklm-packed"
FORMAT_VERSION = 1
EXTENSIONS = {".txt": "txt", ".jsonl": "jsonl", ".csv": "csv"}  # each may also end in .gz
BATCH_DOCUMENTS = 1000  # documents per encode_batch call ...
BATCH_CHARS = 4_000_000  # ... or fewer, when they hold this many characters
SPLITS = ("train", "val")
_SURROGATE = re.compile("[\ud800-\udfff]")

csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # one CSV cell may hold a whole book


# ----------------------------------------------------------------------------------------------------------------
# Finding and reading the input files


@dataclass(frozen=True)
class InputFile:
    path: Path
    kind: str  # "txt", "jsonl" or "csv"
    gz: bool


def _kind(path: Path) -> tuple[str | None, bool]:
    """("txt" | "jsonl" | "csv" | None, gzipped) from the file name."""
    name = path.name.lower()
    gz = name.endswith(".gz")
    base = name[:-3] if gz else name
    return EXTENSIONS.get(os.path.splitext(base)[1]), gz


def _walk(folder: Path) -> Iterator[Path]:
    """Files under `folder`, recursively, in sorted order, skipping hidden files and folders."""
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            path = Path(root) / name
            if not name.startswith(".") and path.is_file():
                yield path


def find_input_files(inputs: Sequence[str | Path]) -> list[InputFile]:
    """Expand files and folders into the list of files to read (folders keep only known extensions)."""
    if not inputs:
        raise UserError("no inputs given; pass one or more text files or folders")
    files: list[InputFile] = []
    seen: set[Path] = set()
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            candidates = [(p, *_kind(p)) for p in _walk(path)]
            found = [(p, kind, gz) for p, kind, gz in candidates if kind is not None]
        elif path.is_file():
            kind, gz = _kind(path)
            found = [(path, kind or "txt", gz)]  # a file named explicitly is read as text whatever its name
        else:
            raise UserError(f"input {path} does not exist; check the path")
        for p, kind, gz in found:
            if p.resolve() not in seen:
                seen.add(p.resolve())
                files.append(InputFile(p, kind, gz))
    if not files:
        names = ", ".join(str(i) for i in inputs)
        raise UserError(
            f"no readable input files in {names}; expected .txt, .jsonl or .csv files (optionally .gz)"
        )
    return files


class _CountingReader(io.RawIOBase):
    """A raw binary stream that counts and hashes (sha256) the bytes read through it."""

    def __init__(self, raw: io.RawIOBase) -> None:
        self._raw = raw
        self.bytes_read = 0
        self.sha256 = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = self._raw.readinto(buffer) or 0
        if n:
            self.sha256.update(memoryview(buffer)[:n])
            self.bytes_read += n
        return n

    def drain(self) -> None:
        """Read (and hash) whatever is left, so `sha256` covers the whole file."""
        while chunk := self._raw.read(1 << 20):
            self.sha256.update(chunk)
            self.bytes_read += len(chunk)

    def close(self) -> None:
        self._raw.close()
        super().close()


def _lines(text: io.TextIOBase, path: Path) -> Iterator[str]:
    """Lines of a text stream, refusing binary content (NUL bytes)."""
    for line in text:
        if "\x00" in line:
            raise _binary(path)
        yield line


def _binary(path: Path) -> UserError:
    return UserError(
        f"{path} is not UTF-8 text (binary file?); convert it to UTF-8 or leave it out of the inputs"
    )


def _txt_documents(text: io.TextIOBase, path: Path, cfg: DataConfig) -> Iterator[str]:
    if cfg.one_doc_per_line:
        for line in _lines(text, path):
            if line.strip():
                yield line.rstrip("\n")
        return
    document = text.read()
    if "\x00" in document:
        raise _binary(path)
    yield document


def _clean(value: str) -> str:
    """Replace lone surrogates (possible in JSON escapes like "\\ud800") with U+FFFD so the text is valid UTF-8."""
    return value if value.isascii() else _SURROGATE.sub("\ufffd", value)


def _jsonl_documents(text: io.TextIOBase, path: Path, cfg: DataConfig) -> Iterator[str]:
    field = cfg.text_field
    where = parse_where(cfg.where)
    for lineno, line in enumerate(_lines(text, path), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(
                f"{path}:{lineno}: invalid JSON ({e.msg}); each line of a .jsonl file must be one JSON object"
            ) from None
        if not isinstance(record, dict):
            raise UserError(f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}")
        if where is not None:
            if where[0] not in record:
                raise UserError(f"{path}:{lineno}: no field {where[0]!r} for --data.where; fix the filter")
            if str(record[where[0]]) != where[1]:
                continue
        if field not in record:
            fields = ", ".join(list(record)[:20]) or "none"
            raise UserError(
                f"{path}:{lineno}: no field {field!r} (fields: {fields}); set --data.text_field to the text field"
            )
        value = record[field]
        if value is None:
            value = ""
        if not isinstance(value, str):
            raise UserError(
                f"{path}:{lineno}: field {field!r} holds {type(value).__name__}, not text; "
                "set --data.text_field to a text field"
            )
        yield _clean(value)


def _csv_documents(text: io.TextIOBase, path: Path, cfg: DataConfig) -> Iterator[str]:
    reader = csv.reader(_lines(text, path))
    try:
        header = next(reader, None)
        if header is None:
            return  # an empty file holds no documents
        if cfg.text_field not in header:
            columns = ", ".join(header[:20]) or "none"
            raise UserError(
                f"{path}: no column {cfg.text_field!r} (columns: {columns}); set --data.text_field to the text column"
            )
        column = header.index(cfg.text_field)
        where = parse_where(cfg.where)
        if where is not None and where[0] not in header:
            raise UserError(
                f"{path}: no column {where[0]!r} for --data.where (columns: {', '.join(header[:20])})"
            )
        keep_col = header.index(where[0]) if where is not None else -1
        for row in reader:
            if not row or (where is not None and (row[keep_col] if keep_col < len(row) else "") != where[1]):
                continue
            yield row[column] if column < len(row) else ""
    except csv.Error as e:
        raise UserError(f"{path}:{reader.line_num}: malformed CSV ({e}); fix the file") from None


def parse_where(where: str | None) -> tuple[str, str] | None:
    """ "source=imdb" → ("source", "imdb"): keep only .csv / .jsonl rows whose column holds that value."""
    if where is None:
        return None
    column, sep, value = where.partition("=")
    if not sep or not column.strip():
        raise UserError(f"data.where must look like COLUMN=VALUE (e.g. source=imdb), not {where!r}")
    return column.strip(), value


_READERS: dict[str, Callable[[io.TextIOBase, Path, DataConfig], Iterator[str]]] = {
    "txt": _txt_documents,
    "jsonl": _jsonl_documents,
    "csv": _csv_documents,
}


class _Corpus:
    """The documents of all input files, streamed; tracks bytes read and each file's size and sha256."""

    def __init__(self, files: list[InputFile], cfg: DataConfig) -> None:
        self.files = files
        self.cfg = cfg
        self.total_bytes = sum(f.path.stat().st_size for f in files)
        self.documents = 0
        self.sources: list[dict[str, Any]] = []
        self._bytes_before = 0  # bytes of the files already finished
        self._current: _CountingReader | None = None

    @property
    def bytes_read(self) -> int:
        return self._bytes_before + (self._current.bytes_read if self._current else 0)

    def __iter__(self) -> Iterator[str]:
        for f in self.files:
            try:
                with open(f.path, "rb", buffering=0) as raw:
                    self._current = _CountingReader(raw)
                    with self._text_stream(f, self._current) as text:
                        if not self._done():
                            yield from self._read(f, text)
                        self._current.drain()  # the sha256 covers the whole file even when we stop early
            except UnicodeDecodeError:
                raise _binary(f.path) from None
            except (OSError, EOFError, zlib.error) as e:
                raise UserError(
                    f"cannot read {f.path} ({e}); fix the file or leave it out of the inputs"
                ) from None
            size, digest = self._current.bytes_read, self._current.sha256.hexdigest()
            self.sources.append({"path": str(f.path), "bytes": size, "sha256": digest})
            self._bytes_before += size
            self._current = None

    def _done(self) -> bool:
        return self.cfg.max_documents is not None and self.documents >= self.cfg.max_documents

    def _read(self, f: InputFile, text: io.TextIOBase) -> Iterator[str]:
        for document in _READERS[f.kind](text, f.path, self.cfg):
            if self._done():
                return
            self.documents += 1
            yield document

    @staticmethod
    def _text_stream(f: InputFile, raw: _CountingReader) -> io.TextIOWrapper:
        binary: io.BufferedIOBase = io.BufferedReader(raw, 1 << 20)
        if f.gz:
            binary = gzip.GzipFile(fileobj=binary, mode="rb")
        newline = "" if f.kind == "csv" else None  # the csv module handles line ends itself
        return io.TextIOWrapper(binary, encoding="utf-8-sig", newline=newline)


def _progress_bar(corpus: _Corpus, desc: str, enabled: bool) -> tqdm:
    return tqdm(
        total=corpus.total_bytes,
        desc=desc,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        disable=not enabled,
        file=sys.stderr,
        dynamic_ncols=True,
    )


def _update(bar: tqdm, corpus: _Corpus) -> None:
    bar.set_postfix(documents=corpus.documents, refresh=False)
    bar.update(corpus.bytes_read - bar.n)


def _batches(documents: Iterable[str]) -> Iterator[list[str]]:
    """Group documents into lists of at most BATCH_DOCUMENTS documents / about BATCH_CHARS characters."""
    batch: list[str] = []
    chars = 0
    for document in documents:
        batch.append(document)
        chars += len(document)
        if len(batch) >= BATCH_DOCUMENTS or chars >= BATCH_CHARS:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


# ----------------------------------------------------------------------------------------------------------------
# Tokenizer and splitting


def _get_tokenizer(
    files: list[InputFile], cfg: DataConfig, tokenizer: Tokenizer | None, progress: bool
) -> Tokenizer:
    """cfg.tokenizer if set, else the given tokenizer (copied), else one trained on the corpus."""
    if cfg.tokenizer:
        return load_tokenizer(cfg.tokenizer)
    if tokenizer is not None:
        tok = Tokenizer.from_str(tokenizer.to_str())  # a copy: the caller's object stays as it was
        tok.no_padding()
        tok.no_truncation()
        return tok
    documents = _Passes(files, cfg, progress)
    tok = train_tokenizer(documents, vocab_size=cfg.vocab_size, lowercase=cfg.lowercase)
    if not documents.has_text:
        raise UserError(_empty_corpus_message(files))
    return tok


class _Passes:
    """The corpus as a re-iterable: each `iter()` is a fresh pass over the files, with its own progress bar."""

    def __init__(self, files: list[InputFile], cfg: DataConfig, progress: bool) -> None:
        self.files, self.cfg, self.progress = files, cfg, progress
        self.has_text = False
        self.passes = 0

    def __iter__(self) -> Iterator[str]:
        self.passes += 1
        corpus = _Corpus(self.files, self.cfg)
        with _progress_bar(corpus, f"tokenizer pass {self.passes}", self.progress) as bar:
            for batch in _batches(corpus):
                self.has_text = self.has_text or any(d and not d.isspace() for d in batch)
                yield from batch
                _update(bar, corpus)


def _empty_corpus_message(files: list[InputFile]) -> str:
    return (
        f"the inputs hold no text ({len(files)} file(s), no non-empty document); check the files "
        "(and --data.text_field for .jsonl / .csv)"
    )


def goes_to_val(text: str, seed: int, fraction: float) -> bool:
    """Stable split: True when blake2b(text, key=seed), read as a number in [0, 1), is below `fraction`."""
    if fraction <= 0:
        return False
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8, key=str(seed).encode()).digest()
    return int.from_bytes(digest, "big") < fraction * 2**64


# ----------------------------------------------------------------------------------------------------------------
# Packing and writing shards


def _save(path: Path, write: Callable[[io.BufferedWriter], Any]) -> None:
    """Write a file and fsync it."""
    with open(path, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())


class _ShardWriter:
    """Writes rows to <split>/ids_NNNNN.npy and word_starts_NNNNN.npy, `shard_sequences` rows per file.

    Rows are written lazily: at least the last row stays in memory until `close()`, so `pop_last()` can take it.
    """

    def __init__(self, root: Path, split: str, shard_sequences: int, pad_id: int) -> None:
        self.root, self.split = root, split
        self.shard_sequences = shard_sequences
        self.pad_id = pad_id
        (root / split).mkdir()
        self.shards: list[dict[str, Any]] = []
        self.written = 0
        self.tokens = 0
        self._ids: list[np.ndarray] = []
        self._starts: list[np.ndarray] = []
        self._buffered = 0

    @property
    def sequences(self) -> int:
        return self.written + self._buffered

    def add(self, ids: np.ndarray, starts: np.ndarray) -> None:
        """Append rows: ids (n, T) and word-start flags (n, T)."""
        self._ids.append(ids)
        self._starts.append(starts)
        self._buffered += len(ids)
        if self._buffered > self.shard_sequences:
            ids, starts = np.concatenate(self._ids), np.concatenate(self._starts)
            full = (len(ids) - 1) // self.shard_sequences  # keep at least one row buffered
            for i in range(full):
                rows = slice(i * self.shard_sequences, (i + 1) * self.shard_sequences)
                self._write(ids[rows], starts[rows])
            rest = full * self.shard_sequences
            self._ids, self._starts = [ids[rest:].copy()], [starts[rest:].copy()]
            self._buffered = len(ids) - rest

    def pop_last(self) -> tuple[np.ndarray, np.ndarray]:
        """Remove the last row (always still in memory) and return it as (1, T) arrays."""
        ids, starts = self._ids[-1], self._starts[-1]
        self._ids[-1], self._starts[-1] = ids[:-1], starts[:-1]
        self._buffered -= 1
        return ids[-1:], starts[-1:]

    def close(self) -> None:
        if self._buffered:
            self._write(np.concatenate(self._ids), np.concatenate(self._starts))
        self._ids, self._starts, self._buffered = [], [], 0

    def _write(self, ids: np.ndarray, starts: np.ndarray) -> None:
        index = len(self.shards)
        ids_name = f"{self.split}/ids_{index:05d}.npy"
        starts_name = f"{self.split}/word_starts_{index:05d}.npy"
        packed = np.packbits(starts, axis=1)
        _save(self.root / ids_name, lambda f: np.save(f, ids))
        _save(self.root / starts_name, lambda f: np.save(f, packed))
        self.shards.append({"ids": ids_name, "word_starts": starts_name, "sequences": len(ids)})
        self.written += len(ids)
        self.tokens += int(np.count_nonzero(ids != self.pad_id))


class _Packer:
    """Cuts one split's stream `doc [SEP] doc [SEP] ...` into rows `[CLS] chunk [SEP]` of seq_len tokens."""

    def __init__(self, writer: _ShardWriter, seq_len: int, special: SpecialIds, dtype: np.dtype) -> None:
        self.writer = writer
        self.seq_len = seq_len
        self.chunk = seq_len - 2
        self.special = special
        self.dtype = dtype
        self.documents = 0
        self.stream_tokens = 0  # documents plus their [SEP]s, all added so far
        self._ids: list[np.ndarray] = []
        self._starts: list[np.ndarray] = []
        self._pending = 0
        self._sep = np.array([special.sep], dtype=dtype)
        self._true = np.ones(1, dtype=bool)

    def add(self, ids: np.ndarray, starts: np.ndarray) -> None:
        """Append one document's tokens (already of `dtype`) and word-start flags, followed by [SEP]."""
        self._ids += [ids, self._sep]
        self._starts += [starts, self._true]
        self._pending += len(ids) + 1
        self.stream_tokens += len(ids) + 1
        self.documents += 1
        if self._pending >= self.chunk:
            ids, starts = np.concatenate(self._ids), np.concatenate(self._starts)
            rows = len(ids) // self.chunk
            cut = rows * self.chunk
            self._emit(ids[:cut].reshape(rows, self.chunk), starts[:cut].reshape(rows, self.chunk))
            self._ids, self._starts = [ids[cut:]], [starts[cut:]]
            self._pending = len(ids) - cut

    def finish(self) -> None:
        """Emit what is left as one last row, padded with [PAD]."""
        if not self._pending:
            return
        ids, starts = np.concatenate(self._ids), np.concatenate(self._starts)
        padded_ids = np.full((1, self.chunk), self.special.pad, dtype=self.dtype)
        padded_starts = np.ones((1, self.chunk), dtype=bool)
        padded_ids[0, : len(ids)] = ids
        padded_starts[0, : len(ids)] = starts
        self._emit(padded_ids, padded_starts, content=len(ids))
        self._ids, self._starts, self._pending = [], [], 0

    def _emit(self, chunks: np.ndarray, chunk_starts: np.ndarray, content: int | None = None) -> None:
        """Frame (n, seq_len - 2) chunks as [CLS] chunk [SEP]; with `content`, [SEP] follows that many tokens."""
        n = len(chunks)
        ids = np.full((n, self.seq_len), self.special.pad, dtype=self.dtype)
        starts = np.ones((n, self.seq_len), dtype=bool)
        ids[:, 0] = self.special.cls
        ids[:, 1 : 1 + self.chunk] = chunks
        starts[:, 1 : 1 + self.chunk] = chunk_starts
        end = 1 + (self.chunk if content is None else content)
        ids[:, end] = self.special.sep
        starts[:, end] = True
        self.writer.add(ids, starts)


# ----------------------------------------------------------------------------------------------------------------
# Output folder handling


def _check_config(cfg: DataConfig) -> None:
    if cfg.seq_len < 3:
        raise UserError(f"data.seq_len must be at least 3 ([CLS], a token, [SEP]), not {cfg.seq_len}")
    if cfg.shard_sequences < 1:
        raise UserError(f"data.shard_sequences must be at least 1, not {cfg.shard_sequences}")
    if not 0 <= cfg.val_fraction < 1:
        raise UserError(f"data.val_fraction must be in [0, 1), not {cfg.val_fraction}")
    if cfg.max_val_sequences < 0:
        raise UserError(f"data.max_val_sequences must be >= 0, not {cfg.max_val_sequences}")
    if cfg.workers < 0:
        raise UserError(f"data.workers must be >= 0 (0 = one per CPU core), not {cfg.workers}")


def _check_output(output: Path, inputs: Sequence[str | Path], overwrite: bool) -> None:
    """Refuse outputs that are, or hold, an input; and existing outputs unless `overwrite`."""
    out = output.resolve()
    for item in inputs:
        path = Path(item).resolve()
        if path == out or out in path.parents:
            raise UserError(
                f"the output folder {output} is or holds the input {item}; choose an output folder outside the inputs"
            )
    if not (output.exists() or output.is_symlink()):
        return
    if not output.is_dir():
        raise UserError(f"the output {output} exists and is not a folder; choose another output folder")
    if not overwrite:
        raise UserError(
            f"the output folder {output} already exists; pass --overwrite to replace it or choose another folder"
        )
    if any(output.iterdir()) and not (output / "meta.json").is_file():
        raise UserError(
            f"refusing to overwrite {output}: it is not empty and not a prepared data folder (no meta.json); "
            "choose another output folder"
        )


def _sibling(output: Path, tag: str) -> Path:
    return output.parent / f".{output.name}.{tag}-{os.getpid()}-{secrets.token_hex(4)}"


def _publish(staging: Path, output: Path) -> None:
    """Move the finished staging folder to `output`, replacing an old one only now that the new one is whole."""
    if output.exists():
        old = _sibling(output, "old")
        os.replace(output, old)
        os.replace(staging, output)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, output)


# ----------------------------------------------------------------------------------------------------------------
# The command


def prepare(
    inputs: Sequence[str | Path],
    output: str | Path,
    cfg: DataConfig,
    *,
    overwrite: bool = False,
    tokenizer: Tokenizer | None = None,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Tokenize and pack `inputs` (files or folders) into `output`; return the meta.json contents."""
    _check_config(cfg)
    output = Path(output)
    files = find_input_files(inputs)
    _check_output(output, inputs, overwrite)
    tok = _get_tokenizer(files, cfg, tokenizer, progress)
    special = special_ids(tok)

    output.parent.mkdir(parents=True, exist_ok=True)
    staging = _sibling(output, "tmp")
    staging.mkdir()
    try:
        meta = _pack(files, staging, tok, special, cfg, seed, progress)
        _publish(staging, output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return meta


def _pack(
    files: list[InputFile],
    root: Path,
    tok: Tokenizer,
    special: SpecialIds,
    cfg: DataConfig,
    seed: int,
    progress: bool,
) -> dict[str, Any]:
    """Tokenize every document, route it to train or val, pack both splits and write meta.json into `root`."""
    n_vocab = vocab_size(tok)
    dtype = np.dtype(np.uint16 if n_vocab <= 1 << 16 else np.uint32)

    packers = {
        split: _Packer(
            _ShardWriter(root, split, cfg.shard_sequences, special.pad), cfg.seq_len, special, dtype
        )
        for split in SPLITS
    }
    train, val = packers["train"], packers["val"]
    val_capacity = cfg.max_val_sequences * (cfg.seq_len - 2)  # stream tokens that fit in the cap
    skipped = 0

    corpus = _Corpus(files, cfg)
    workers = cfg.workers or default_workers()
    with _progress_bar(corpus, "tokenizing", progress) as bar:
        for batch, encoded in encode_batches(_batches(corpus), tok, dtype, workers):
            for text, (ids, starts) in zip(batch, encoded):
                if not len(ids):
                    skipped += 1
                    continue
                fits_val = val.stream_tokens + len(ids) + 1 <= val_capacity
                packer = val if fits_val and goes_to_val(text, seed, cfg.val_fraction) else train
                packer.add(ids, starts)
            _update(bar, corpus)
    for packer in packers.values():
        packer.finish()
    if train.writer.sequences + val.writer.sequences == 0:
        raise UserError(_empty_corpus_message(files))
    if (
        val.writer.sequences == 0
        and cfg.val_fraction > 0
        and cfg.max_val_sequences > 0
        and train.writer.sequences >= 2
    ):
        val.writer.add(*train.writer.pop_last())  # a tiny corpus still gets a validation sequence
    for packer in packers.values():
        packer.writer.close()

    _save(root / "tokenizer.json", lambda f: f.write(tok.to_str(pretty=True).encode("utf-8")))
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "seq_len": cfg.seq_len,
        "dtype": dtype.name,
        "vocab_size": n_vocab,
        "tokenizer": "tokenizer.json",
        "tokenizer_hash": tokenizer_hash(tok),
        "lowercase": is_lowercase(tok),
        "special_ids": dataclasses.asdict(special),
        "word_starts": "np.packbits(flags, axis=1), big-endian bit order",
        "splits": {
            split: {
                "sequences": p.writer.sequences,
                "tokens": p.writer.tokens,
                "documents": p.documents,
                "shards": p.writer.shards,
            }
            for split, p in packers.items()
        },
        "documents": corpus.documents,
        "skipped_documents": skipped,
        "seed": seed,
        "data_config": dataclasses.asdict(cfg),
        "sources": corpus.sources,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "masklm_version": __version__,
    }
    _save(root / "meta.json", lambda f: f.write((json.dumps(meta, indent=2) + "\n").encode("utf-8")))
    return meta
