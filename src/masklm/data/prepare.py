"""Text files → token ids → packed shards + meta.json.

    meta = prepare(["corpus/"], "data/wiki", DataConfig(seq_len=128))

Reads .txt, .jsonl and .csv files (each optionally .gz) as a stream, tokenizes them in batches on all cores, and
packs each split's token stream `doc1 [SEP] doc2 [SEP] ...` into rows `[CLS] <seq_len - 2 tokens> [SEP]`. Only the
last row of a split is padded. Next to every row goes a bit per token saying "this token starts a word", for
whole-word masking. The output folder is written under a temporary name and renamed when complete. See
docs/prepare.md for the layout and meta.json fields.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import secrets
import shutil
import sys
import unicodedata
from collections import deque
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
from masklm.data.readers import Corpus, InputFile, find_input_files
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
from masklm.utils import log, refuse_path_through_file, remove_dead_staging, replace_folder, restore_replaced

FORMAT = "masklm-packed"
FORMAT_VERSION = 1
BATCH_DOCUMENTS = 1000  # documents per encode_batch call ...
BATCH_CHARS = 4_000_000  # ... or fewer, when they hold this many characters
SPLITS = ("train", "val")


# ----------------------------------------------------------------------------------------------------------------
# Finding and reading the input files


def _progress_bar(corpus: Corpus, desc: str, enabled: bool) -> tqdm:
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


def _update(bar: tqdm, corpus: Corpus) -> None:
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
    documents = _Passes(files, cfg, progress, sample_limits(files, cfg.tokenizer_sample_bytes))
    tok = train_tokenizer(documents, vocab_size=cfg.vocab_size, lowercase=cfg.lowercase)
    if not documents.has_text:
        raise UserError(_empty_corpus_message(files, cfg))
    if tok.get_vocab_size() < cfg.vocab_size:
        log(
            f"note: the text holds only {tok.get_vocab_size()} distinct tokens for --vocab-size {cfg.vocab_size}: the "
            "tokenizer has that many (more text, or a smaller --vocab-size, makes the two agree)"
        )
    elif tok.get_vocab_size() > cfg.vocab_size:
        log(
            f"note: the tokenizer has {tok.get_vocab_size()} tokens, more than --vocab-size {cfg.vocab_size}: "
            "WordPiece keeps every character the text uses (each CJK ideograph, say) as a token of its own"
        )
    if cfg.lowercase:
        _note_stripped_marks(documents.head)
    return tok


def _note_stripped_marks(texts: list[str]) -> None:
    """A note when lowercasing (which, as in uncased BERT, also strips accents: every nonspacing mark) would take
    a large share of the text's characters away: the vowel signs of Devanagari, Thai, Arabic or Hebrew are such
    marks, so "ดี" (good) and "ดู" (look) would be one token. Counted in NFC, where Latin accents are part of their
    letter and are not counted (for Latin text, stripping them is what an uncased vocabulary means)."""
    marks = letters = 0
    for text in texts:
        for c in unicodedata.normalize("NFC", text):
            category = unicodedata.category(c)
            marks += category == "Mn"
            letters += category[0] in "LM"
    # (at least 50: not for a stray accent in a few lines)
    if marks >= 50 and marks / letters > 0.02:
        log(
            f"note: {marks / letters:.0%} of the text's letters are marks (vowel signs of scripts such as "
            "Devanagari, Thai or Arabic, or accents written apart) that lowercasing strips, as uncased BERT does: "
            "words that differ only in them become one token; pass --data.lowercase false to keep them"
        )


class _Passes:
    """The corpus as a re-iterable: each `iter()` is a fresh pass over the files, with its own progress bar."""

    def __init__(
        self, files: list[InputFile], cfg: DataConfig, progress: bool, limits: list[int] | None = None
    ) -> None:
        self.files, self.cfg, self.progress, self.limits = files, cfg, progress, limits
        self.has_text = False
        self.passes = 0
        self.head: list[str] = []  # the first documents, up to HEAD_CHARS characters: a sample to look at

    HEAD_CHARS = 1_000_000

    def __iter__(self) -> Iterator[str]:
        self.passes += 1
        corpus = Corpus(self.files, self.cfg, self.limits, hash_files=self.limits is None)
        held = 0
        with _progress_bar(corpus, f"tokenizer pass {self.passes}", self.progress) as bar:
            for batch in _batches(corpus):
                self.has_text = self.has_text or any(d and not d.isspace() for d in batch)
                for d in batch if self.passes == 1 else ():
                    if held >= self.HEAD_CHARS:
                        break
                    self.head.append(d[: self.HEAD_CHARS - held])
                    held += len(self.head[-1])
                yield from batch
                _update(bar, corpus)


def sample_limits(files: list[InputFile], sample_bytes: int) -> list[int] | None:
    """Characters of text to take from each file for tokenizer training: `sample_bytes` shared among the files in
    proportion to their size on disk (at least one character each), or None (everything) when the corpus is no
    larger than that. Each file's share is taken from its start, so the sample costs what it holds to read."""
    if sample_bytes < 1:
        raise UserError(f"data.tokenizer_sample_bytes must be at least 1, not {sample_bytes}")
    sizes = [f.path.stat().st_size for f in files]
    total = sum(sizes)
    if total <= sample_bytes:
        return None
    return [max(1, sample_bytes * size // total) for size in sizes]


def _empty_corpus_message(files: list[InputFile], cfg: DataConfig) -> str:
    if cfg.where is not None:
        return (
            f"no document of the inputs ({len(files)} file(s)) has --data.where {cfg.where}; check the value "
            "(numbers compare as numbers, true / false in any case, text exactly) or leave the filter out"
        )
    return (
        f"the inputs hold no text ({len(files)} file(s), no non-empty document); check the files "
        "(and --data.text_field for .jsonl / .csv)"
    )


def split_key(text: str, seed: int) -> int:
    """A document's place in [0, 2^64) for the split: blake2b of its text with white space normalised (as --dedup
    compares documents: a file's final newline, or a line wrapped otherwise, moves no document), keyed by `seed`."""
    normal = " ".join(text.split())
    return int.from_bytes(
        hashlib.blake2b(normal.encode("utf-8"), digest_size=8, key=str(seed).encode()).digest(), "big"
    )


def goes_to_val(text: str, seed: int, fraction: float) -> bool:
    """Stable split: True when `split_key(text, seed)`, read as a number in [0, 1), is below `fraction`."""
    return fraction > 0 and split_key(text, seed) < fraction * 2**64


# ----------------------------------------------------------------------------------------------------------------
# Packing and writing shards


def _save(path: Path, write: Callable[[io.BytesIO], Any]) -> None:
    """Write a file and fsync it.

    The content is built in memory and written in one call, so a full disk raises the system's error, naming
    `path`: numpy writing into a file itself reports it as "N requested and M written", with no error code, which
    came out as a traceback.
    """
    buffer = io.BytesIO()
    write(buffer)
    try:
        with open(path, "wb") as f:
            f.write(buffer.getbuffer())
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise OSError(e.errno, e.strerror, str(path)) from None


class _ShardWriter:
    """Writes rows to <split>/ids_NNNNN.npy and word_starts_NNNNN.npy, `shard_sequences` rows per file.

    Rows are written lazily: at least the last row stays in memory until `close()`, so `pop_fullest()` can take
    one.
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
        self.segment: list[int] = [0, 0]  # the segment the rows now added belong to

    @property
    def sequences(self) -> int:
        return self.written + self._buffered

    def start_segment(self, key: list[int]) -> None:
        """Write the rows of the segment so far (a shard holds rows of one segment only), then take `key`."""
        if self._buffered:
            self._write(np.concatenate(self._ids), np.concatenate(self._starts))
            self._ids, self._starts, self._buffered = [], [], 0
        self.segment = key

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

    def text_after_pop(self, specials: Sequence[int]) -> bool:
        """Whether a row with text (a token that is not one of `specials`) stays after `pop_fullest`: one written
        already, or another one still in memory. A 6-token document at seq_len 8 fills one row and leaves
        "[CLS] [SEP] [SEP]" in the next: moving the first to validation left training nothing to learn from."""
        if self.written:
            return True
        ids = np.concatenate(self._ids)
        texts = (~np.isin(ids, [self.pad_id, *specials])).sum(axis=1)
        return int((texts > 0).sum()) >= 2

    def pop_fullest(self) -> tuple[np.ndarray, np.ndarray]:
        """Remove the row still in memory that holds the most tokens (the latest of those) and return it as (1, T)
        arrays. The last row is the stream's tail, often a few tokens and padding: as a validation split it
        would score a handful of positions, or none."""
        ids, starts = np.concatenate(self._ids), np.concatenate(self._starts)
        filled = (ids != self.pad_id).sum(axis=1)
        i = len(ids) - 1 - int(np.argmax(filled[::-1]))
        self._ids, self._starts = [np.delete(ids, i, axis=0)], [np.delete(starts, i, axis=0)]
        self._buffered -= 1
        return ids[i : i + 1], starts[i : i + 1]

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
        self.shards.append(
            {"ids": ids_name, "word_starts": starts_name, "sequences": len(ids), "segment": self.segment}
        )
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
        self.stream_tokens = 0  # documents plus their [SEP]s, added in the current segment
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

    def start_segment(self, key: list[int]) -> None:
        """End the segment so far (its last row padded) and start segment `key` with an empty stream."""
        self.finish()
        self.stream_tokens = 0
        self.writer.start_segment(key)

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
    # (pretraining refuses shorter rows: the command line checked this before, Python did not)
    if cfg.seq_len < 8:
        raise UserError(f"data.seq_len must be at least 8, not {cfg.seq_len}")
    if cfg.shard_sequences < 1:
        raise UserError(f"data.shard_sequences must be at least 1, not {cfg.shard_sequences}")
    if not 0 <= cfg.val_fraction < 1:
        raise UserError(f"data.val_fraction must be in [0, 1), not {cfg.val_fraction}")
    if cfg.max_val_sequences < 0:
        raise UserError(f"data.max_val_sequences must be >= 0, not {cfg.max_val_sequences}")
    if cfg.workers < 0:
        raise UserError(f"data.workers must be >= 0 (0 = one per CPU core), not {cfg.workers}")


def _check_output(output: Path, inputs: Sequence[str | Path], overwrite: bool) -> None:
    """Refuse outputs that are, or hold, an input; and existing outputs unless `overwrite`. An output that a kill
    left half-replaced (`restore_replaced`) is first put back as it was."""
    refuse_path_through_file(output)
    restore_replaced(output)
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


def _publish(staging: Path, output: Path, overwrite: bool) -> None:
    """Move the finished staging folder to `output`, replacing an old one only now that the new one is whole; an
    output that appeared while this one was prepared (another command writing the same folder) is refused
    unless `overwrite`, as it would have been at the start."""
    if not overwrite and (output.exists() or output.is_symlink()):
        raise UserError(
            f"the output folder {output} appeared while the data was prepared (another command writing to it?); "
            "nothing was replaced: pass --overwrite to replace it or choose another folder"
        )
    replace_folder(staging, output)


# ----------------------------------------------------------------------------------------------------------------
# The command


@dataclass(frozen=True)
class Part:
    """Part `index` of `count`: which share of the corpus one of several independent `prepare` jobs handles."""

    index: int = 0
    count: int = 1

    def folder(self, output: Path) -> Path:
        """Where this part goes: OUTPUT itself for a whole corpus, else OUTPUT/part-IIIII-of-NNNNN."""
        return output if self.count == 1 else output / f"part-{self.index:05d}-of-{self.count:05d}"

    def plan(self, files: list[InputFile], segment_bytes: int) -> tuple[list[InputFile], list[int], bool]:
        """(the files this part reads, their file groups, whether it keeps only some segments of them).

        With at least `count` file groups, the part reads the groups g with g % count == index, all of their
        segments; with fewer, it reads every file and keeps the segments s with s % count == index."""
        groups = file_groups(files, segment_bytes)
        if self.count == 1:
            return files, groups, False
        if groups[-1] + 1 >= self.count:
            mine = [i for i, g in enumerate(groups) if g % self.count == self.index]
            return [files[i] for i in mine], [groups[i] for i in mine], False
        return files, groups, True


def file_groups(files: list[InputFile], segment_bytes: int) -> list[int]:
    """The group of each file: runs of consecutive files, a run ending once it holds `segment_bytes` on disk."""
    if segment_bytes < 1:
        raise UserError(f"data.segment_bytes must be at least 1, not {segment_bytes}")
    groups, group, size = [], 0, 0
    for f in files:
        groups.append(group)
        size += f.path.stat().st_size
        if size >= segment_bytes:
            group, size = group + 1, 0
    return groups


class _Selection:
    """Cuts the document stream into segments and keeps the documents of this part's segments.

    A segment is a run of documents of one file group (see `file_groups`), a new one starting once the current
    one holds `segment_bytes` characters; it is named [group, n-th segment of the group]. Segments depend on the
    files alone, never on the number of parts, and packing restarts at each, so the parts of a corpus hold the
    same rows as one `prepare` of it, and reading the parts' shards in segment order gives them in the same
    order. With dedup only the first of documents equal once whitespace is normalised is kept (a 128-bit blake2b
    of the words joined by spaces); `starts` lists (index among the documents yielded, segment) where a kept
    segment begins."""

    def __init__(
        self, corpus: Corpus, groups: list[int], part: Part, by_segments: bool, cfg: DataConfig
    ) -> None:
        self.corpus, self.groups, self.part, self.by_segments = corpus, groups, part, by_segments
        self.segment_chars, self.dedup = cfg.segment_bytes, cfg.dedup
        self.taken = 0  # documents of this part, duplicates included
        self.dropped = 0
        self.segments = 0  # segments met in the stream read (all of the corpus's, unless reading by files)
        self.starts: deque[tuple[int, list[int]]] = deque()
        self._seen: set[bytes] = set()

    def __iter__(self) -> Iterator[str]:
        key, chars, mine, yielded, first = [-1, -1], 0, False, 0, False
        for document in self.corpus:
            group = self.groups[self.corpus.file_index]
            if group != key[0] or chars >= self.segment_chars:
                key = [group, key[1] + 1 if group == key[0] else 0]
                chars, first = 0, True
                mine = not self.by_segments or self.segments % self.part.count == self.part.index
                self.segments += 1
            chars += len(document)
            if not mine or not self._keep(document):
                continue
            if first:
                self.starts.append((yielded, key))
                first = False
            yielded += 1
            yield document

    @property
    def one_segment(self) -> bool:
        """Whether the whole corpus is one segment (a part reading by files has at least two file groups)."""
        return self.segments == 1 and (self.by_segments or self.part.count == 1)

    def _keep(self, document: str) -> bool:
        self.taken += 1
        # (a blank document is not a duplicate: it is skipped as empty, and counted so)
        if self.dedup and document.strip():
            digest = hashlib.blake2b(" ".join(document.split()).encode("utf-8"), digest_size=16).digest()
            if digest in self._seen:
                self.dropped += 1
                return False
            self._seen.add(digest)
        return True


def prepare(
    inputs: Sequence[str | Path] | str | Path,
    output: str | Path,
    cfg: DataConfig,
    *,
    overwrite: bool = False,
    tokenizer: Tokenizer | None = None,
    seed: int = 0,
    progress: bool = True,
    part: Part | None = None,
) -> dict[str, Any]:
    """Tokenize and pack `inputs` (files or folders) into `output`; return the meta.json contents.

    With `part` (one of several jobs preparing one corpus together), the part's share goes to
    OUTPUT/part-IIIII-of-NNNNN; all parts need the same tokenizer, so one must be given. One input may be given
    as a single path."""
    if isinstance(inputs, str | Path):
        inputs = [inputs]
    _check_config(cfg)
    part = part or Part()
    _check_part(part, cfg, tokenizer)
    output = part.folder(Path(output))
    files, groups, by_segments = part.plan(find_input_files(inputs), cfg.segment_bytes)
    _check_output(output, inputs, overwrite)
    tok = _get_tokenizer(files, cfg, tokenizer, progress)
    special = special_ids(tok)

    output.parent.mkdir(parents=True, exist_ok=True)
    remove_dead_staging(output, "tmp")  # the staging folder of a prepare that was killed
    staging = _sibling(output, "tmp")
    staging.mkdir()
    try:
        selection = _Selection(Corpus(files, cfg), groups, part, by_segments, cfg)
        meta = _pack(staging, tok, special, cfg, seed, progress, selection)
        if part.count > 1:
            meta["part"] = {
                "index": part.index,
                "count": part.count,
                "by": "segments" if by_segments else "files",
            }
        _save_meta(staging, meta)
        _publish(staging, output, overwrite)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return meta


def _check_part(part: Part, cfg: DataConfig, tokenizer: Tokenizer | None) -> None:
    if part.count < 1 or not 0 <= part.index < part.count:
        raise UserError(
            f"--shard-index must be in [0, --num-shards) and --num-shards at least 1, not {part.index} of {part.count}"
        )
    if part.count > 1 and not cfg.tokenizer and tokenizer is None:
        raise UserError(
            "--num-shards needs --tokenizer FILE, one tokenizer for all parts: train it once first (see "
            "docs/corpora.md), then run every part with it"
        )


def _save_meta(root: Path, meta: dict[str, Any]) -> None:
    _save(root / "meta.json", lambda f: f.write((json.dumps(meta, indent=2) + "\n").encode("utf-8")))


def _pack(
    root: Path,
    tok: Tokenizer,
    special: SpecialIds,
    cfg: DataConfig,
    seed: int,
    progress: bool,
    selection: _Selection,
) -> dict[str, Any]:
    """Tokenize the selected documents, route each to train or val, pack both splits into `root`, restarting
    at each segment; return the meta.json contents (written by the caller)."""
    n_vocab = vocab_size(tok)
    dtype = np.dtype(np.uint16 if n_vocab <= 1 << 16 else np.uint32)

    packers = {
        split: _Packer(
            _ShardWriter(root, split, cfg.shard_sequences, special.pad), cfg.seq_len, special, dtype
        )
        for split in SPLITS
    }
    train, val = packers["train"], packers["val"]
    val_capacity = cfg.max_val_sequences * (cfg.seq_len - 2)  # stream tokens per segment that fit in the cap
    skipped = unreadable = n = val_copies = 0
    # Split keys of the validation-bound texts, by where they went: `in_val` (validation) and `to_train` (validation
    # was full: the cap counts per segment). A later copy follows its first, so identical texts share a split
    # across segments too. Both grow with the validation-bound documents (val_fraction of them).
    in_val: set[int] = set()
    to_train: set[int] = set()

    corpus = selection.corpus
    workers = cfg.workers or default_workers()
    with _progress_bar(corpus, "tokenizing", progress) as bar:
        for batch, encoded in encode_batches(_batches(selection), tok, dtype, workers):
            for text, (ids, starts) in zip(batch, encoded):
                if selection.starts and selection.starts[0][0] == n:
                    key = selection.starts.popleft()[1]
                    for packer in packers.values():
                        packer.start_segment(key)
                n += 1
                if not len(ids):
                    skipped += 1
                    unreadable += not text.isspace() and bool(text)
                    continue
                key = split_key(text, seed) if cfg.val_fraction > 0 else None
                if key is not None and key < cfg.val_fraction * 2**64:
                    if key in to_train:  # its first copy went to train, when validation was full
                        train.add(ids, starts)
                    elif val.stream_tokens + len(ids) + 1 <= val_capacity:
                        val.add(ids, starts)
                        in_val.add(key)
                    elif key in in_val:  # (validation is full) it holds the text: not in train too
                        val_copies += 1
                    else:  # (validation is full)
                        train.add(ids, starts)
                        to_train.add(key)
                else:
                    train.add(ids, starts)
            _update(bar, corpus)
    for packer in packers.values():
        packer.finish()
    _check_not_empty(packers, selection)
    no_val = val.writer.sequences == 0 and cfg.val_fraction > 0 and cfg.max_val_sequences > 0
    specials = [special.cls, special.sep]
    if (
        no_val
        and selection.one_segment
        and train.writer.sequences >= 2
        and train.writer.text_after_pop(specials)
    ):
        val.writer.add(*train.writer.pop_fullest())  # a tiny corpus still gets a validation sequence
    for packer in packers.values():
        packer.writer.close()

    if val_copies:
        log(
            f"note: {val_copies} document(s) came again after the validation split was full (max_val_sequences) "
            "and were left out of training: validation holds them"
        )
    if unreadable:
        log(
            f"note: {unreadable} document(s) held only characters the tokenizer drops (zero-width or control "
            "characters, marks on their own) and were left out"
        )
    _save(root / "tokenizer.json", lambda f: f.write(tok.to_str(pretty=True).encode("utf-8")))
    counts = {
        "documents": selection.taken,
        "skipped_documents": skipped,
        "duplicates_dropped": selection.dropped,
    }
    return _meta(tok, special, dtype, packers, cfg, seed, counts, corpus.sources)


def _check_not_empty(packers: dict[str, _Packer], selection: _Selection) -> None:
    """UserError when a whole corpus gives no rows. A part may be empty (a corpus of fewer segments than parts):
    it is written so, and reading the parts checks that they hold rows between them."""
    if selection.part.count == 1 and not any(p.writer.sequences for p in packers.values()):
        raise UserError(_empty_corpus_message(selection.corpus.files, selection.corpus.cfg))


def _meta(
    tok: Tokenizer,
    special: SpecialIds,
    dtype: np.dtype,
    packers: dict[str, _Packer],
    cfg: DataConfig,
    seed: int,
    counts: dict[str, int],
    sources: list[dict[str, Any]],
) -> dict[str, Any]:
    """meta.json: the format, the tokenizer, each split's shards and counts, and where the text came from."""
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "seq_len": cfg.seq_len,
        "dtype": dtype.name,
        "vocab_size": vocab_size(tok),
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
        **counts,
        "seed": seed,
        "data_config": dataclasses.asdict(cfg),
        "sources": sources,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "masklm_version": __version__,
    }
