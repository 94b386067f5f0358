"""Train or load a BERT-style WordPiece tokenizer (Hugging Face `tokenizers`).

    tok = train_tokenizer(texts, vocab_size=8192)        # streams `texts`; ids 0..4 are the special tokens
    tok = load_tokenizer("bert-base-uncased/vocab.txt")  # or a tokenizer.json, or a folder holding either
    ids = special_ids(tok)                                # SpecialIds(pad=0, unk=100, cls=101, sep=102, mask=103)

Every tokenizer returned here has padding and truncation switched off: packing decides sequence lengths.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors, trainers
from tokenizers.models import WordPiece

from masklm.errors import UserError

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
PAD, UNK, CLS, SEP, MASK = SPECIAL_TOKENS
WORDPIECE_PREFIX = "##"
MAX_WORD_CHARS = 100  # longer words become [UNK], as in BERT


@dataclass(frozen=True)
class SpecialIds:
    """Ids of the five BERT special tokens in one tokenizer."""

    pad: int
    unk: int
    cls: int
    sep: int
    mask: int


def _bert_pipeline(tok: Tokenizer, lowercase: bool, strip_accents: bool | None, chinese_chars: bool) -> None:
    """Give `tok` BERT's normalizer, pre-tokenizer, decoder and (when [CLS]/[SEP] exist) post-processor."""
    tok.normalizer = normalizers.BertNormalizer(
        clean_text=True,
        handle_chinese_chars=chinese_chars,
        strip_accents=lowercase if strip_accents is None else strip_accents,
        lowercase=lowercase,
    )
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix=WORDPIECE_PREFIX)
    cls_id, sep_id = tok.token_to_id(CLS), tok.token_to_id(SEP)
    if cls_id is not None and sep_id is not None:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{CLS} $A {SEP}",
            pair=f"{CLS} $A {SEP} $B:1 {SEP}:1",
            special_tokens=[(CLS, cls_id), (SEP, sep_id)],
        )


def train_tokenizer(
    texts: Iterable[str],
    vocab_size: int,
    lowercase: bool = True,
    special_tokens: Sequence[str] = SPECIAL_TOKENS,
    show_progress: bool = False,
) -> Tokenizer:
    """Train a WordPiece vocabulary on `texts`, streamed: memory holds word counts, not the corpus.

    Give something that can be iterated twice (a list, or an object whose `__iter__` starts over) and training
    is deterministic: a first, cheap pass finds the characters that continue words ("##e", "##s", ...) so
    that they get fixed ids. Otherwise `tokenizers` numbers them in hash-map order, and since ties between
    equally frequent merges go to the lower ids, the vocabulary could differ from run to run. A one-shot
    iterator is read once, without that guarantee.
    """
    specials = list(special_tokens)
    if iter(texts) is not texts:
        scan = _untrained(lowercase)
        scan.train_from_iterator(texts, trainer=_trainer(0, specials, show_progress))
        specials += sorted(
            t for t in scan.get_vocab(with_added_tokens=False) if t.startswith(WORDPIECE_PREFIX)
        )
    trained = _untrained(lowercase)
    trained.train_from_iterator(texts, trainer=_trainer(vocab_size, specials, show_progress))

    # Rebuild around the learned vocabulary so that only the real special tokens are "added" tokens.
    vocab = trained.get_vocab(with_added_tokens=False)
    tok = Tokenizer(WordPiece(vocab, unk_token=UNK, max_input_chars_per_word=MAX_WORD_CHARS))
    tok.add_special_tokens([t for t in special_tokens if t in vocab])
    _bert_pipeline(tok, lowercase=lowercase, strip_accents=None, chinese_chars=True)
    return tok


def _untrained(lowercase: bool) -> Tokenizer:
    tok = Tokenizer(WordPiece(unk_token=UNK, max_input_chars_per_word=MAX_WORD_CHARS))
    _bert_pipeline(tok, lowercase=lowercase, strip_accents=None, chinese_chars=True)
    return tok


def _trainer(vocab_size: int, specials: list[str], show_progress: bool) -> trainers.WordPieceTrainer:
    return trainers.WordPieceTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        continuing_subword_prefix=WORDPIECE_PREFIX,
        show_progress=show_progress,
    )


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Load a `tokenizer.json`, a BERT `vocab.txt`, or a folder holding either (tokenizer.json preferred)."""
    p = Path(path)
    if p.is_dir():
        if (p / "tokenizer.json").is_file():
            p = p / "tokenizer.json"
        elif (p / "vocab.txt").is_file():
            p = p / "vocab.txt"
        else:
            raise UserError(
                f"tokenizer folder {p} holds neither tokenizer.json nor vocab.txt; point --data.tokenizer at one"
            )
    elif not p.is_file():
        raise UserError(
            f"tokenizer {p} does not exist; give a tokenizer.json, a vocab.txt or a folder with one"
        )
    tok = _load_json(p) if p.suffix.lower() == ".json" else _load_vocab_txt(p)
    tok.no_padding()
    tok.no_truncation()
    return tok


def _load_json(path: Path) -> Tokenizer:
    try:
        return Tokenizer.from_file(str(path))
    except Exception as e:  # the Rust side raises plain Exception for every kind of problem
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(
            f"{path} is not a Hugging Face tokenizer.json ({reason}); give a tokenizer.json saved by "
            "`tokenizers` or a BERT vocab.txt"
        ) from None


def _load_vocab_txt(path: Path) -> Tokenizer:
    """Build BERT's WordPiece tokenizer around a vocab.txt (one token per line, id = line number)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(
            f"cannot read vocabulary {path} ({type(e).__name__}); give a UTF-8 BERT vocab.txt"
        ) from None
    if "\x00" in text:
        raise UserError(
            f"{path} is a binary file, not a vocab.txt; give a BERT vocab.txt or a tokenizer.json"
        )
    vocab: dict[str, int] = {}
    for index, line in enumerate(text.split("\n")):  # id = line number, as in BERT's load_vocab
        token = line.rstrip("\r")
        if token:
            vocab[token] = index
    if UNK not in vocab:
        raise UserError(f"{path} has no {UNK} line, so it is not a BERT vocab.txt; give a BERT vocab.txt")
    settings = _read_tokenizer_config(path.parent / "tokenizer_config.json")
    tok = Tokenizer(WordPiece(vocab, unk_token=UNK, max_input_chars_per_word=MAX_WORD_CHARS))
    tok.add_special_tokens([t for t in SPECIAL_TOKENS if t in vocab])
    _bert_pipeline(
        tok,
        lowercase=bool(settings.get("do_lower_case", True)),
        strip_accents=settings.get("strip_accents"),
        chinese_chars=bool(settings.get("tokenize_chinese_chars", True)),
    )
    return tok


def _read_tokenizer_config(path: Path) -> dict[str, Any]:
    """The settings of a Hugging Face tokenizer_config.json, or {} when there is none or it is unreadable."""
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return values if isinstance(values, dict) else {}


def special_ids(tok: Tokenizer) -> SpecialIds:
    """Look up [PAD], [UNK], [CLS], [SEP] and [MASK]; UserError naming any that are missing."""
    ids = {name: tok.token_to_id(name) for name in SPECIAL_TOKENS}
    missing = [name for name, i in ids.items() if i is None]
    if missing:
        raise UserError(
            f"the tokenizer has no {', '.join(missing)} token; use a BERT-style tokenizer that has "
            f"{', '.join(SPECIAL_TOKENS)} (or let masklm prepare train one)"
        )
    return SpecialIds(pad=ids[PAD], unk=ids[UNK], cls=ids[CLS], sep=ids[SEP], mask=ids[MASK])


def all_special_ids(tok: Tokenizer) -> list[int]:
    """Every special token's id: BERT's five where the tokenizer has them, and any other added token marked
    special (a Hugging Face tokenizer.json's extra specials)."""
    ids = {i for i in (tok.token_to_id(name) for name in SPECIAL_TOKENS) if i is not None}
    ids |= {i for i, added in tok.get_added_tokens_decoder().items() if added.special}
    return sorted(ids)


def vocab_size(tok: Tokenizer) -> int:
    """Rows an embedding needs for this tokenizer: the largest id plus one (added tokens included)."""
    return max(tok.get_vocab(with_added_tokens=True).values()) + 1


def tokenizer_hash(tok: Tokenizer) -> str:
    """sha256 of the tokenizer's canonical JSON; equal for a tokenizer and its saved-and-loaded copy."""
    canonical = json.dumps(
        json.loads(tok.to_str()), sort_keys=True, ensure_ascii=False, separators=(",", ":")
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def is_lowercase(tok: Tokenizer) -> bool:
    """Best effort: does the tokenizer's normalizer lowercase its input?"""
    return _lowercases(json.loads(tok.to_str()).get("normalizer"))


def _lowercases(normalizer: Any) -> bool:
    if not isinstance(normalizer, dict):
        return False
    kind = normalizer.get("type")
    if kind == "Lowercase":
        return True
    if kind == "BertNormalizer":
        return bool(normalizer.get("lowercase", False))
    if kind == "Sequence":
        return any(_lowercases(n) for n in normalizer.get("normalizers", []))
    return False
