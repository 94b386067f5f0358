"""Property-based tests (hypothesis) of the data invariants: prepare round trips, NER alignment."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from helpers import minilm_dir
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer

from masklm.config import DataConfig
from masklm.data.prepare import prepare
from masklm.data.shards import PackedDataset
from masklm.data.tokenizer import load_tokenizer, special_ids
from masklm.tasks.token_classification import align_predictions, encode_token_classification

VOCAB = minilm_dir() / "vocab.txt"

# Text from every part of Unicode except surrogates (not encodable) — accents, CJK, emoji, controls, RTL ...
UNICODE_TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=0, max_size=60)


@pytest.fixture(scope="module")
def bert_tok():
    return load_tokenizer(VOCAB)


def _stream(folder: Path, split: str) -> list[int]:
    """The split's tokens in order with [CLS]/[PAD] removed and the per-sequence [SEP] that closes each chunk
    dropped: what is left is doc1 [SEP] doc2 [SEP] ... as prepare packed it."""
    ds = PackedDataset(folder, split)
    meta = json.loads((folder / "meta.json").read_text())
    sp = meta["special_ids"]
    ids = ds.get(np.arange(len(ds)))[0] if len(ds) else None
    out: list[int] = []
    if ids is None:
        return out
    for row in ids.tolist():
        assert row[0] == sp["cls"]
        body = [t for t in row[1:] if t != sp["pad"]]
        assert body[-1] == sp["sep"]
        out.extend(body[:-1])
    return out


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(docs=st.lists(UNICODE_TEXT, min_size=1, max_size=6), seq_len=st.integers(8, 24))
def test_prepare_round_trips_arbitrary_unicode(bert_tok, docs, seq_len):
    tmp = Path(tempfile.mkdtemp())
    try:
        with open(tmp / "in.jsonl", "w", encoding="utf-8") as f:
            for d in docs:
                f.write(json.dumps({"text": d}) + "\n")
        # prepare reads a special token's text in a document ("[MASK]") as text, never as the token itself
        as_text = Tokenizer.from_str(bert_tok.to_str())
        as_text.encode_special_tokens = True
        expected_docs = [as_text.encode(d, add_special_tokens=False).ids for d in docs]
        expected_docs = [d for d in expected_docs if d]  # documents with no tokens are skipped
        if not expected_docs:
            return  # prepare refuses a corpus with no tokens; covered by the bad-input tests
        cfg = DataConfig(seq_len=seq_len, val_fraction=0.0, shard_sequences=3)
        prepare([tmp / "in.jsonl"], tmp / "out", cfg, tokenizer=bert_tok, progress=False)
        sep = special_ids(bert_tok).sep
        expected: list[int] = []
        for d in expected_docs:
            expected += [*d, sep]
        got = _stream(tmp / "out", "train")
        # the final [SEP] after the last document closes the last chunk, so it may have been dropped above
        assert got == expected or got == expected[:-1]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


WORD = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Zs", "Cc", "Zl", "Zp")), min_size=1, max_size=25
)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(words=st.lists(WORD, min_size=1, max_size=40), max_length=st.integers(8, 64), all_sub=st.booleans())
def test_ner_alignment_keeps_one_label_per_word(bert_tok, words, max_length, all_sub):
    labels = ["O", "B-X", "I-X"]
    tags = [labels[i % 3] for i in range(len(words))]
    (feat,) = encode_token_classification(
        bert_tok, [{"tokens": words, "tags": tags}], labels, max_length, label_all_subwords=all_sub
    )
    assert len(feat["input_ids"]) <= max_length
    assert feat["num_words"] == len(words)
    # the first token of every encoded word carries that word's tag; predictions come back one per word
    first_label = {}
    for wid, lab in zip(feat["word_ids"], feat["labels"]):
        if wid is not None and wid not in first_label:
            first_label[wid] = lab
    for wid, lab in first_label.items():
        assert lab == labels.index(tags[wid])
    per_word = align_predictions(feat["word_ids"], feat["labels"], feat["num_words"])
    assert len(per_word) == len(words)
    encoded = sorted(first_label)
    assert encoded == list(range(len(encoded))), "words are kept from the start, in order"
    for i, p in enumerate(per_word):
        assert p == (labels.index(tags[i]) if i in first_label else -100)
