"""Turn documents into token ids and word-start flags, exactly as `Tokenizer.encode_batch` would, but faster.

    encoder = DocumentEncoder(tokenizer, dtype=np.uint16)
    for ids, starts in encoder.encode_batch(["A first document.", "A second one."]):
        ...  # ids: token ids (no [CLS]/[SEP]); starts: True where a token begins a word
    for batch, encoded in encode_batches(batches, tokenizer, np.uint16, workers=4):
        ...  # the same, batch after batch, in 4 processes, in order

Tokenizing is most of `masklm prepare`'s time, and for BERT's pipeline (BertNormalizer, BertPreTokenizer,
WordPiece) most of that work repeats itself. In a document that is plain printable ASCII, normalising is at most
lower-casing, and pre-tokenising is cutting the text into runs of letters and digits and single punctuation
characters: one regular expression. Natural text uses the same words over and over, so each distinct word goes
through WordPiece once (in Rust, via `encode_batch`) and its pieces are remembered; a document then costs one
regular-expression pass and a dictionary look-up per word. On IMDB this tokenizes about twice as fast on one core
as `encode_batch` does on two.

Everything else goes through `encode_batch` unchanged: documents with other characters (accents, CJK, emoji,
Unicode punctuation and spaces) or control characters, and every tokenizer that is not that pipeline (other
normalizers or pre-tokenizers, BPE or Unigram models, added tokens that are not special). tests/test_encode.py
checks that both paths give identical ids and word starts, on random and on real text.

The fast path is Python and holds one core, where `encode_batch` used them all, so `encode_batches` spreads
batches over worker processes (`python -m masklm.data.encode`). Each worker keeps its own word cache; the
output does not depend on how many there are.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import re
import signal
import subprocess
import sys
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from itertools import repeat
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

# Characters the BERT normalizer deletes or maps to spaces in ASCII text (control characters other than \t \n \r):
# a document holding any of them takes the reference path.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
# BertPreTokenizer on clean ASCII: words are runs of letters and digits, every other non-space character
# (all of ASCII's punctuation and symbols) is a word of its own, whitespace separates and is dropped.
_WORDS_CASED = re.compile(r"[A-Za-z0-9]+|[^A-Za-z0-9 \t\n\r]")
_WORDS_LOWER = re.compile(r"[a-z0-9]+|[^a-z0-9 \t\n\r]")
_SENTINEL = "\x00"  # joins a batch's documents; never in a clean text, and a word of its own to the regex
LEARN_GROUP = 4096  # new words per string handed to the Rust tokenizer


def word_starts(word_ids: Sequence[int | None]) -> np.ndarray:
    """True where a token starts a word: its word id differs from the previous token's (or it has none)."""
    words = np.fromiter((-1 if w is None else w for w in word_ids), dtype=np.int64, count=len(word_ids))
    starts = np.ones(len(words), dtype=bool)
    np.not_equal(words[1:], words[:-1], out=starts[1:])
    starts |= words < 0
    return starts


def plain_ascii_lowercase(tok: Tokenizer | str) -> bool | None:
    """If `tok` (a Tokenizer or its JSON) is BERT's pipeline, whether it lower-cases; None for any other tokenizer
    (no fast path)."""
    spec = json.loads(tok if isinstance(tok, str) else tok.to_str())
    normalizer = spec.get("normalizer") or {"type": None}
    if normalizer.get("type") not in ("BertNormalizer", None):
        return None
    if (spec.get("pre_tokenizer") or {}).get("type") != "BertPreTokenizer":
        return None
    if spec["model"].get("type") != "WordPiece":
        return None
    if any(not added.get("special", False) for added in spec.get("added_tokens") or []):
        return None  # a non-special added token is matched in the raw text, before pre-tokenizing
    return bool(normalizer.get("lowercase", False))


class _Growing:
    """A 1-D numpy array that appends in amortised O(1)."""

    def __init__(self, dtype: np.dtype) -> None:
        self.data = np.zeros(1024, dtype=dtype)
        self.size = 0

    def extend(self, values: np.ndarray) -> None:
        need = self.size + len(values)
        if need > len(self.data):
            self.data = np.resize(self.data, max(need, 2 * len(self.data)))
        self.data[self.size : need] = values
        self.size = need


# a document longer than this is encoded a piece at a time (`DocumentEncoder.encode_batch`)
PIECE_CHARS = 1 << 20


class DocumentEncoder:
    """Encodes documents without special tokens, as `tokenizer.encode_batch(docs, add_special_tokens=False)`.

    Special tokens typed in a document ("[SEP]") are encoded as text. `max_words` bounds the word cache: when it
    holds more distinct words than that, it starts over (the output never depends on the cache).
    """

    def __init__(
        self, tokenizer: Tokenizer, dtype: np.dtype | type = np.int64, max_words: int = 1_000_000
    ) -> None:
        spec = tokenizer.to_str()
        self.tokenizer = Tokenizer.from_str(spec)
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()
        self.tokenizer.encode_special_tokens = True
        self.dtype = np.dtype(dtype)
        self.max_words = max_words
        lowercase = plain_ascii_lowercase(spec)
        self.fast = lowercase is not None
        self.lowercase = bool(lowercase)
        self._split = (_WORDS_LOWER if self.lowercase else _WORDS_CASED).findall
        self._normalize = self.tokenizer.normalizer.normalize_str if self.tokenizer.normalizer else None
        pre = json.loads(spec).get("pre_tokenizer") or {}
        # BERT's pre-tokenizer (or plain white space) splits words at every space: a cut there changes no token
        self.splits_at_white_space = pre.get("type") in ("BertPreTokenizer", "Whitespace", "WhitespaceSplit")
        self._reset_cache()

    def _reset_cache(self) -> None:
        self._index: dict[str, int] = {_SENTINEL: 0}  # word -> its number in the arrays below
        self._pieces = _Growing(self.dtype)  # every known word's token ids, one after the other
        self._offsets = _Growing(np.dtype(np.int64))  # where word i's ids begin in _pieces
        self._lengths = _Growing(np.dtype(np.int64))  # how many ids word i has
        self._offsets.extend(np.zeros(1, dtype=np.int64))  # word 0, the separator between documents:
        self._lengths.extend(np.zeros(1, dtype=np.int64))  # no tokens

    def encode_batch(self, documents: Sequence[str]) -> list[tuple[np.ndarray, np.ndarray]]:
        """(ids, word starts) for each document, in order.

        A document longer than PIECE_CHARS is encoded a piece at a time, cut at white space (where BERT's
        pre-tokenizer splits anyway, so the tokens are the same): encoded whole, a 34 MB line took 7.8 GB."""
        if self.splits_at_white_space and any(len(d) > PIECE_CHARS for d in documents):
            return [self._encode_long(d) if len(d) > PIECE_CHARS else self._encode([d])[0] for d in documents]
        return self._encode(documents)

    def _encode(self, documents: Sequence[str]) -> list[tuple[np.ndarray, np.ndarray]]:
        """`encode_batch` of documents of any length, each encoded whole."""
        if not self.fast:
            return self._encode_reference(documents)
        texts = [self._plain_text(d) for d in documents]
        fast = iter(self._encode_plain([t for t in texts if t is not None]))
        other = iter(self._encode_reference([d for d, t in zip(documents, texts) if t is None]))
        return [next(other) if t is None else next(fast) for t in texts]

    def _encode_long(self, document: str) -> tuple[np.ndarray, np.ndarray]:
        """`encode_batch` of one long document, piece by piece (see there); a word longer than a piece (no white
        space to cut at) stays whole in its piece."""
        ids, starts, begin = [], [], 0
        while begin < len(document):
            end = len(document)
            if end - begin > PIECE_CHARS:
                limit = begin + PIECE_CHARS
                cut = max(document.rfind(" ", begin, limit), document.rfind("\n", begin, limit))
                if cut <= begin:
                    cut = min(
                        i for i in (document.find(" ", limit), document.find("\n", limit), end) if i >= 0
                    )
                end = cut
            piece_ids, piece_starts = self._encode([document[begin:end]])[0]
            ids.append(piece_ids)
            starts.append(piece_starts)
            begin = end
        return np.concatenate(ids), np.concatenate(starts)

    def _plain_text(self, document: str) -> str | None:
        """The document as BertPreTokenizer would see it, if that is clean ASCII (up to lower-casing); else None.

        Most documents are clean ASCII already. Others often become so once normalized ("café" -> "cafe" when
        accents are stripped); the rest (CJK, emoji, curly quotes, ...) take the reference path.
        """
        if document.isascii() and not _CONTROL.search(document):
            return document  # lower-cased with the rest of the batch, when the tokenizer lower-cases
        if self._normalize is None:
            return None
        text = self._normalize(document)
        return text if text.isascii() and not _CONTROL.search(text) else None

    def _encode_reference(self, documents: Sequence[str]) -> list[tuple[np.ndarray, np.ndarray]]:
        if not documents:
            return []
        encodings = self.tokenizer.encode_batch(list(documents), add_special_tokens=False)
        return [(np.asarray(e.ids, dtype=self.dtype), word_starts(e.word_ids)) for e in encodings]

    def _learn(self, words: list[str]) -> None:
        """Run new words through WordPiece (Rust, all cores) and remember their pieces.

        Words are encoded LEARN_GROUP at a time, joined by spaces: each is exactly one pre-token, so word id k
        of a group's encoding is its k-th word. One encoding per group instead of one per word is ~4x faster.
        """
        groups = [" ".join(words[i : i + LEARN_GROUP]) for i in range(0, len(words), LEARN_GROUP)]
        encodings = self.tokenizer.encode_batch(groups, add_special_tokens=False)
        ids = np.concatenate([np.asarray(e.ids, dtype=self.dtype) for e in encodings])
        owner = np.concatenate(
            [np.asarray(e.word_ids, dtype=np.int64) + k * LEARN_GROUP for k, e in enumerate(encodings)]
        )
        lengths = np.bincount(owner, minlength=len(words))
        if len(lengths) != len(words) or lengths.min() < 1 or (np.diff(owner) < 0).any():
            raise RuntimeError("DocumentEncoder: a cached word did not come back as exactly one word")
        first = len(self._index)
        self._index.update(zip(words, range(first, first + len(words))))
        self._offsets.extend(self._pieces.size + np.cumsum(lengths) - lengths)
        self._lengths.extend(lengths)
        self._pieces.extend(ids)

    def _encode_plain(self, texts: list[str]) -> list[tuple[np.ndarray, np.ndarray]]:
        """The fast path, for clean ASCII texts: one regular-expression pass and a look-up per word."""
        if not texts:
            return []
        if len(self._index) > self.max_words:
            self._reset_cache()
        # One pass over the whole batch: the separator is a word of its own, cached with no tokens.
        joined = _SENTINEL.join(texts)
        words = self._split(joined.lower() if self.lowercase else joined)
        index = np.fromiter(map(self._index.get, words, repeat(-1)), dtype=np.int64, count=len(words))
        unknown = np.flatnonzero(index < 0)
        if len(unknown):
            new = [words[i] for i in unknown.tolist()]
            self._learn(list(dict.fromkeys(new)))
            index[unknown] = np.fromiter(map(self._index.__getitem__, new), dtype=np.int64, count=len(new))

        lengths = self._lengths.data[index]
        ends = np.cumsum(lengths)
        firsts = ends - lengths  # where each word's first token lands in the batch's token stream
        total = int(ends[-1]) if len(ends) else 0
        # Token t of the stream belongs to some word w; its id sits at _offsets[w] + (t - firsts[w]).
        ids = self._pieces.data[np.arange(total) + np.repeat(self._offsets.data[index] - firsts, lengths)]
        starts = np.zeros(total, dtype=bool)
        starts[firsts[lengths > 0]] = True
        token_bounds = np.concatenate(([0], ends[index == 0], [total]))
        return [(ids[a:b], starts[a:b]) for a, b in zip(token_bounds[:-1], token_bounds[1:])]


# ----------------------------------------------------------------------------------------------------------------
# Several processes


def default_workers() -> int:
    """One worker per CPU core this process may use, at most 8 (beyond that, packing is the bottleneck)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cores = os.cpu_count() or 1
    return max(1, min(cores, 8))


class _Worker:
    """A `python -m masklm.data.encode` process, fed batches over a pipe, one batch in flight at a time.

    Plain subprocesses rather than `multiprocessing`: "fork" would copy a parent that may hold threads (torch,
    the Rust tokenizer) half-alive, and "spawn" re-runs the caller's main script, which breaks every script that
    calls prepare() without an `if __name__ == "__main__":` guard.
    """

    def __init__(self, tokenizer_json: str, dtype: np.dtype) -> None:
        package_root = str(Path(__file__).resolve().parents[2])  # so the child imports this very masklm
        path = os.environ.get("PYTHONPATH")
        env = dict(os.environ, PYTHONPATH=package_root + (os.pathsep + path if path else ""))
        env["TOKENIZERS_PARALLELISM"] = "false"  # one core per worker: the workers are the parallelism
        self.process = subprocess.Popen(
            [sys.executable, "-m", "masklm.data.encode"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )
        self._send((tokenizer_json, dtype.str))

    def _send(self, message: object) -> None:
        assert self.process.stdin is not None
        pickle.dump(message, self.process.stdin, protocol=pickle.HIGHEST_PROTOCOL)
        self.process.stdin.flush()

    def _died(self) -> RuntimeError:
        code = self.process.wait()
        return RuntimeError(f"a tokenizing worker process stopped (exit code {code}); see its message above")

    def submit(self, documents: list[str]) -> None:
        try:
            self._send(documents)
        except BrokenPipeError:
            raise self._died() from None

    def result(self) -> list[tuple[np.ndarray, np.ndarray]]:
        assert self.process.stdout is not None
        try:
            ids, starts, lengths = pickle.load(self.process.stdout)
        except EOFError:
            raise self._died() from None
        bounds = np.concatenate(([0], np.cumsum(lengths)))
        return [(ids[a:b], starts[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]

    def close(self) -> None:
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                with contextlib.suppress(BrokenPipeError):  # unflushed bytes for a worker that is gone
                    stream.close()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _serve() -> None:
    """The worker's side: read (tokenizer json, dtype), then batches, and answer each with its encodings."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it closes our stdin
    requests = sys.stdin.buffer
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # a stray print must not corrupt the replies
    try:
        tokenizer_json, dtype = pickle.load(requests)
        encoder = DocumentEncoder(Tokenizer.from_str(tokenizer_json), np.dtype(dtype))
        while True:
            documents = pickle.load(requests)
            encoded = encoder.encode_batch(documents)
            ids = np.concatenate([i for i, _ in encoded]) if encoded else np.zeros(0, dtype=encoder.dtype)
            starts = np.concatenate([s for _, s in encoded]) if encoded else np.zeros(0, dtype=bool)
            lengths = np.array([len(i) for i, _ in encoded], dtype=np.int64)
            pickle.dump((ids, starts, lengths), replies, protocol=pickle.HIGHEST_PROTOCOL)
            replies.flush()
    except (EOFError, BrokenPipeError):
        # The parent is done, or stopped early (bad input, Ctrl-C) and closed the pipes: leave quietly,
        # without the interpreter's exit-time flush of a broken pipe.
        os._exit(0)


def encode_batches(
    batches: Iterable[list[str]], tokenizer: Tokenizer, dtype: np.dtype | type, workers: int
) -> Iterator[tuple[list[str], list[tuple[np.ndarray, np.ndarray]]]]:
    """Yield (batch, its (ids, word starts) per document) for each batch, in order.

    With workers > 1 the batches go round-robin to that many processes, one batch each in flight, so memory
    stays bounded on any corpus. The first batch is always encoded here: a corpus that fits in one batch never
    pays for starting processes. The output is the same for any number of workers.
    """
    dtype = np.dtype(dtype)
    encoder = DocumentEncoder(tokenizer, dtype)
    iterator = iter(batches)
    first = next(iterator, None)
    if first is None:
        return
    if workers <= 1:
        yield first, encoder.encode_batch(first)
        for batch in iterator:
            yield batch, encoder.encode_batch(batch)
        return
    pool: list[_Worker] = []
    finished = False
    try:
        pool = [_Worker(tokenizer.to_str(), dtype) for _ in range(workers)]  # they start while we encode
        yield first, encoder.encode_batch(first)
        pending: deque[tuple[list[str], _Worker]] = deque()
        for worker in pool:
            batch = next(iterator, None)
            if batch is None:
                break
            worker.submit(batch)
            pending.append((batch, worker))
        while pending:
            batch, worker = pending.popleft()
            encoded = worker.result()
            following = next(iterator, None)
            if following is not None:
                worker.submit(following)
                pending.append((following, worker))
            yield batch, encoded
        finished = True
    finally:
        for worker in pool:
            if not finished:  # an error here or in the consumer: their current batches are not wanted
                worker.process.kill()
            worker.close()


if __name__ == "__main__":
    _serve()
