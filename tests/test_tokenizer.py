"""Tokenizer training and loading: special ids, BERT compatibility, hashing, errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from helpers import minilm_dir

from masklm.data.tokenizer import (
    SPECIAL_TOKENS,
    SpecialIds,
    is_lowercase,
    load_tokenizer,
    special_ids,
    tokenizer_hash,
    train_tokenizer,
    vocab_size,
)
from masklm.errors import UserError

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Résumé of a naïve café owner, don't you think?",
    "Tokenizers split words into word pieces: unbelievable, unbreakable, undeniable.",
    "北京 is a city; 東京 is another.",
] * 5

TRICKY = [
    "Héllo Wörld! naïve café Ångström",
    "北京欢迎你 and 東京タワー",
    'don\'t... (a,b) -- "quoted" [x] {y} 3.14 $5 e-mail@example.com',
    "a" * 150 + " supercalifragilisticexpialidocious " + "x" * 99,
    "",
    "   ",
    "🙂 emoji 👍🏽 and ❤️ ok",
    "tab\there\u00a0nbsp\u200bzero-width\u0007bell",
    "ＦＵＬＬ width ｔｅｘｔ and MiXeD CaSe",
    "[MASK] in text and [CLS]",
]


@pytest.fixture(scope="module")
def bert_dir() -> Path:
    return minilm_dir()


@pytest.fixture(scope="module")
def trained():
    return train_tokenizer(iter(TEXTS), vocab_size=200)


def test_trained_tokenizer_has_special_ids_first(trained):
    assert [trained.id_to_token(i) for i in range(5)] == list(SPECIAL_TOKENS)
    assert special_ids(trained) == SpecialIds(pad=0, unk=1, cls=2, sep=3, mask=4)
    assert 5 < trained.get_vocab_size() <= 200
    assert vocab_size(trained) == trained.get_vocab_size()


def test_trained_tokenizer_bert_pipeline(trained):
    single = trained.encode("Quick fox")
    assert single.tokens[0] == "[CLS]" and single.tokens[-1] == "[SEP]"
    pair = trained.encode("quick fox", "lazy dog")
    assert pair.ids.count(3) == 2
    first_sep = pair.ids.index(3)
    assert set(pair.type_ids[: first_sep + 1]) == {0} and set(pair.type_ids[first_sep + 1 :]) == {1}
    # lowercase + accents stripped, pieces glued back together by the decoder
    assert (
        trained.encode("CAFÉ", add_special_tokens=False).ids
        == trained.encode("cafe", add_special_tokens=False).ids
    )
    assert trained.decode(trained.encode("unbelievable tokenizers").ids) == "unbelievable tokenizers"
    assert any(t.startswith("##") for t in trained.get_vocab())
    assert is_lowercase(trained)
    assert trained.padding is None and trained.truncation is None


def test_cased_training_keeps_case_and_accents():
    tok = train_tokenizer(TEXTS, vocab_size=200, lowercase=False)
    assert not is_lowercase(tok)
    lower = tok.encode("the", add_special_tokens=False).ids
    upper = tok.encode("The", add_special_tokens=False).ids
    assert lower != upper
    assert (
        tok.encode("café", add_special_tokens=False).tokens
        != tok.encode("cafe", add_special_tokens=False).tokens
    )


def test_training_is_deterministic():
    # `tokenizers` alone numbers "##x" pieces in hash-map order, which changes tied merges (this corpus has many)
    runs = {train_tokenizer(TEXTS, vocab_size=150).to_str() for _ in range(8)}
    assert len(runs) == 1
    tok = train_tokenizer(TEXTS, vocab_size=150)
    assert [t for t, _ in tok.get_added_tokens_decoder().items()] == list(range(5))  # only the real specials


def test_one_shot_iterator_is_read_once():
    consumed = []

    def texts():
        for t in TEXTS:
            consumed.append(t)
            yield t

    tok = train_tokenizer(texts(), vocab_size=150)
    assert len(consumed) == len(TEXTS)
    assert tok.token_to_id("[MASK]") == 4


def test_hash_stable_across_save_and_load(trained, tmp_path):
    trained.save(str(tmp_path / "tokenizer.json"))
    loaded = load_tokenizer(tmp_path / "tokenizer.json")
    assert tokenizer_hash(loaded) == tokenizer_hash(trained)
    assert load_tokenizer(tmp_path).encode("fox").ids == trained.encode("fox").ids  # folder form
    other = train_tokenizer(TEXTS[:2], vocab_size=120)
    assert tokenizer_hash(other) != tokenizer_hash(trained)


def _reference(bert_dir: Path, **kwargs):
    transformers = pytest.importorskip("transformers")
    # transformers 5 ignores vocab_file=; vocab= takes the path
    ref = transformers.BertTokenizerFast(vocab=str(bert_dir / "vocab.txt"), **kwargs)
    assert len(ref.get_vocab()) == 30522
    return ref


@pytest.mark.parametrize("name", ["vocab.txt", "tokenizer.json"])
def test_bert_files_match_transformers(bert_dir, name):
    tok = load_tokenizer(bert_dir / name)
    ref = _reference(bert_dir)
    for text in TRICKY:
        assert tok.encode(text).ids == ref(text)["input_ids"], text
        assert (
            tok.encode(text, add_special_tokens=False).ids == ref(text, add_special_tokens=False)["input_ids"]
        )
    assert special_ids(tok) == SpecialIds(pad=0, unk=100, cls=101, sep=102, mask=103)
    assert vocab_size(tok) == 30522
    assert is_lowercase(tok)


def test_shipped_padding_and_truncation_are_disabled(bert_dir):
    raw = json.loads((bert_dir / "tokenizer.json").read_text())
    assert raw["padding"] is not None  # the trap this test guards against
    tok = load_tokenizer(bert_dir / "tokenizer.json")
    assert len(tok.encode("hello").ids) == 3
    assert len(tok.encode("word " * 300).ids) == 302


def test_vocab_txt_respects_do_lower_case_false(bert_dir, tmp_path):
    shutil.copy(bert_dir / "vocab.txt", tmp_path / "vocab.txt")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": False}))
    tok = load_tokenizer(tmp_path)  # folder with only vocab.txt
    ref = _reference(bert_dir, do_lower_case=False)
    assert not is_lowercase(tok)
    for text in TRICKY:
        assert tok.encode(text).ids == ref(text)["input_ids"], text
    assert tok.encode("Hello").ids != load_tokenizer(bert_dir / "vocab.txt").encode("Hello").ids


def test_folder_prefers_tokenizer_json(bert_dir, trained, tmp_path):
    shutil.copy(bert_dir / "vocab.txt", tmp_path / "vocab.txt")
    trained.save(str(tmp_path / "tokenizer.json"))
    assert tokenizer_hash(load_tokenizer(tmp_path)) == tokenizer_hash(trained)


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda d: d / "nope.json", "does not exist"),
        (lambda d: d, "neither tokenizer.json nor vocab.txt"),
        (
            lambda d: _write(d / "tokenizer.json", b'{"not": "a tokenizer"}'),
            "not a Hugging Face tokenizer.json",
        ),
        (lambda d: _write(d / "tok.json", b"\x89PNG\x00\x01"), "not a Hugging Face tokenizer.json"),
        (lambda d: _write(d / "vocab.txt", b"\x89PNG\r\n\x00\x00\xff"), "vocab"),
        (lambda d: _write(d / "vocab.txt", b"\xff\xfe\xfa"), "UTF-8"),
        (lambda d: _write(d / "vocab.txt", b"hello\nworld\n"), "no [UNK]"),
    ],
)
def test_bad_tokenizer_paths(tmp_path, setup, message):
    with pytest.raises(UserError, match=message.replace("[", r"\[")) as e:
        load_tokenizer(setup(tmp_path))
    assert "\n" not in str(e.value)


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_special_ids_names_missing_tokens(tmp_path):
    (tmp_path / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\nhello\n")
    tok = load_tokenizer(tmp_path / "vocab.txt")
    with pytest.raises(UserError, match=r"\[MASK\]"):
        special_ids(tok)
