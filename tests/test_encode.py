"""DocumentEncoder's word-cache fast path must give exactly what `Tokenizer.encode_batch` gives."""

from __future__ import annotations

import random
import string
import time

import numpy as np
import pytest
from helpers import minilm_dir
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import AddedToken, Tokenizer, normalizers, pre_tokenizers

from masklm.data import encode as E
from masklm.data.tokenizer import load_tokenizer, train_tokenizer

CORPUS = [
    "The quick brown fox jumps over the lazy dog; it's 1999 & prices are $4.50 (or 3/4 off)!",
    "Unaffable colleagues re-evaluated the co-operative's pre-war policies... twice.",
    "Tokenizers split words like hyper-parameterisation into many sub-words: ##pieces.",
    "A café in Zürich served crème brûlée to naïve tourists — “quoted” ‘text’ too.",
    "日本語のテキスト and 中文 mixed with English, plus emoji 😀 and ﬁ ligatures.",
] * 3
WEIRD = [
    "",
    " \t\n\r ",
    "[MASK] [SEP] [CLS] [UNK] [PAD] ##s ##",
    "a_b a-b a.b a,b a'b a\"b a`b a~b a|b a\\b a^b",
    "x" * 101 + " " + "y" * 100,  # longer than BERT's 100-character word limit, and exactly at it
    "ctrl\x00chars\x07here\x0bvertical\x0cfeed\x1fend\x7fdel",
    "ÀÉÎÕÜ àéîõü Ǆ ǅ ǆ İstanbul ıi ß ẞ Σίσυφος ΣΑΣ",
    "\u00a0no-break\u3000ideographic\u2009thin\u200bzero-width\ufeffbom",
    "e\u0301 combining a\u0300\u0301 marks \u0301alone",
    "ＦＵＬＬ ｗｉｄｔｈ and ①②③ and ½ ¼ and ™ © ®",
    "\ufffdreplacement\ufffd and \U0001f600\U0001f680 astral",
]


def _reference(tok: Tokenizer, docs: list[str]) -> list[tuple[list[int], list[bool]]]:
    ref = Tokenizer.from_str(tok.to_str())
    ref.no_padding()
    ref.no_truncation()
    ref.encode_special_tokens = True
    out = []
    for enc in ref.encode_batch(docs, add_special_tokens=False):
        starts = [w is None or i == 0 or w != enc.word_ids[i - 1] for i, w in enumerate(enc.word_ids)]
        out.append((enc.ids, starts))
    return out


def _assert_same(encoder: E.DocumentEncoder, tok: Tokenizer, docs: list[str]) -> None:
    got = encoder.encode_batch(docs)
    want = _reference(tok, docs)
    assert len(got) == len(docs)
    for doc, (ids, starts), (ref_ids, ref_starts) in zip(docs, got, want):
        assert ids.tolist() == ref_ids, doc
        assert starts.tolist() == ref_starts, doc
        assert ids.dtype == encoder.dtype and starts.dtype == bool


def _tokenizers() -> dict[str, Tokenizer]:
    accents = train_tokenizer(CORPUS, vocab_size=300, lowercase=False)
    accents.normalizer = normalizers.BertNormalizer(lowercase=False, strip_accents=True)
    no_normalizer = train_tokenizer(CORPUS, vocab_size=300, lowercase=False)
    no_normalizer.normalizer = None
    return {
        "bert-uncased": load_tokenizer(minilm_dir() / "vocab.txt"),
        "trained-lower": train_tokenizer(CORPUS, vocab_size=300),
        "trained-cased": train_tokenizer(CORPUS, vocab_size=300, lowercase=False),
        "cased-strip-accents": accents,
        "no-normalizer": no_normalizer,
    }


@pytest.fixture(scope="module")
def tokenizers() -> dict[str, Tokenizer]:
    return _tokenizers()


@pytest.fixture(scope="module")
def bert_encoder(tokenizers) -> E.DocumentEncoder:
    return E.DocumentEncoder(tokenizers["bert-uncased"], np.uint16)


@pytest.mark.parametrize(
    "name", ["bert-uncased", "trained-lower", "trained-cased", "cased-strip-accents", "no-normalizer"]
)
def test_fast_path_matches_encode_batch(tokenizers, name):
    tok = tokenizers[name]
    encoder = E.DocumentEncoder(tok, np.uint32)
    assert encoder.fast
    rng = random.Random(0)
    printable = string.ascii_letters + string.digits + string.punctuation + " \t\n\r"
    randoms = ["".join(rng.choice(printable) for _ in range(rng.randint(0, 200))) for _ in range(300)]
    _assert_same(encoder, tok, CORPUS + WEIRD + randoms)
    _assert_same(encoder, tok, list(reversed(CORPUS + WEIRD + randoms)))  # again, from a warm cache


def test_documents_take_the_expected_path(tokenizers):
    encoder = E.DocumentEncoder(tokenizers["bert-uncased"], np.uint16)
    assert encoder._plain_text("Plain ASCII, with punctuation!\n") == "Plain ASCII, with punctuation!\n"
    assert encoder._plain_text("crème brûlée") == "creme brulee"  # normalizing strips the accents
    assert encoder._plain_text("“quoted”") is None  # curly quotes stay non-ASCII
    assert encoder._plain_text("日本") is None
    assert (
        encoder._plain_text("tab\x0bvertical") == "tabvertical"
    )  # the normalizer deletes control characters
    cased = E.DocumentEncoder(tokenizers["trained-cased"], np.uint16)
    assert cased._plain_text("crème") is None  # no accent stripping: stays non-ASCII


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    docs=st.lists(
        st.text(
            alphabet=st.one_of(
                st.sampled_from(string.printable + "\x00\x7fàéßİΣσς—“”…½ﬁ日本\u0301\u00a0\u3000😀"),
                st.characters(codec="utf-8"),
            ),
            max_size=60,
        ),
        max_size=8,
    )
)
def test_random_text_matches_encode_batch(tokenizers, bert_encoder, docs):
    _assert_same(bert_encoder, tokenizers["bert-uncased"], docs)


def test_cache_restarts_without_changing_the_output(tokenizers):
    tok = tokenizers["trained-lower"]
    encoder = E.DocumentEncoder(tok, np.uint16, max_words=5)
    for _ in range(3):
        _assert_same(encoder, tok, CORPUS)
    assert len(encoder._index) <= 5 + len(set(" ".join(CORPUS).split())) * 3  # restarted, not grown


def test_other_tokenizers_take_the_reference_path(tokenizers):
    whitespace = train_tokenizer(CORPUS, vocab_size=300)
    whitespace.pre_tokenizer = pre_tokenizers.Whitespace()
    added = train_tokenizer(CORPUS, vocab_size=300)
    added.add_tokens([AddedToken("quick brown", normalized=True)])
    for tok in (whitespace, added):
        encoder = E.DocumentEncoder(tok, np.uint16)
        assert not encoder.fast
        _assert_same(encoder, tok, CORPUS + WEIRD)
    special = train_tokenizer(CORPUS, vocab_size=300)
    special.add_special_tokens(["<extra>"])  # special tokens are text in documents: the fast path still holds
    assert E.DocumentEncoder(special, np.uint16).fast
    _assert_same(E.DocumentEncoder(special, np.uint16), special, CORPUS + ["<extra> here"])


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_encode_batches_in_worker_processes_keeps_order_and_output(tokenizers, workers):
    tok = tokenizers["bert-uncased"]
    rng = random.Random(1)
    docs = CORPUS + WEIRD
    batches = [rng.sample(docs, rng.randint(0, len(docs))) for _ in range(9)]
    got = list(E.encode_batches(iter(batches), tok, np.uint16, workers))
    assert [batch for batch, _ in got] == batches
    for batch, encoded in got:
        want = _reference(tok, batch)
        assert [(i.tolist(), s.tolist()) for i, s in encoded] == want
        assert all(i.dtype == np.uint16 for i, _ in encoded)
    assert list(E.encode_batches(iter([]), tok, np.uint16, workers)) == []


def test_a_worker_that_dies_is_reported(tokenizers):
    tok = tokenizers["trained-lower"]
    worker = E._Worker(tok.to_str(), np.dtype(np.uint16))
    try:
        worker.process.kill()
        worker.process.wait()
        with pytest.raises(RuntimeError, match="tokenizing worker process stopped"):
            worker.submit(CORPUS)
            worker.result()
    finally:
        worker.close()


def test_a_consumer_that_stops_early_leaves_no_worker_noise(tokenizers, capfd):
    tok = tokenizers["bert-uncased"]
    big = [CORPUS * 300] * 6  # each reply is far bigger than a pipe's buffer: a worker blocks writing it
    batches = E.encode_batches(iter(big), tok, np.uint16, 2)
    next(batches)  # encoded here
    next(batches)  # from worker 1; worker 2 is busy, worker 1 has the next batch
    batches.close()  # what a bad file later in the corpus does to prepare
    time.sleep(1.0)  # a worker's traceback, if any, would be printed by now
    assert "Traceback" not in capfd.readouterr().err


def test_default_workers_is_bounded():
    assert 1 <= E.default_workers() <= 8


@pytest.mark.parametrize("lowercase", [True, False])
def test_a_long_document_is_encoded_in_pieces_with_the_same_tokens(monkeypatch, lowercase):
    """A document above PIECE_CHARS is encoded a piece at a time, cut at white space (a 34 MB line took 7.8 GB
    encoded whole): the ids and word starts equal those of the whole document, for ASCII and other text."""
    tok = train_tokenizer(CORPUS, vocab_size=300, lowercase=lowercase)
    encoder = E.DocumentEncoder(tok)
    assert encoder.splits_at_white_space
    pieces = []
    real = encoder._encode_long

    def spy(document):
        pieces.append(len(document))
        return real(document)

    monkeypatch.setattr(E, "PIECE_CHARS", 60)
    monkeypatch.setattr(encoder, "_encode_long", spy)
    docs = [" ".join(CORPUS), "short one", "\n".join(CORPUS[:4]), " ".join(WEIRD[2:])]
    _assert_same(encoder, tok, docs)
    assert len(pieces) == 3  # the long ones went piece by piece
