"""The Hugging Face export: a BERT (or ELECTRA) folder that transformers loads as is, and the check that it does.

The folder holds config.json, model.safetensors (HF key names, vocabulary rows trimmed to the tokenizer),
tokenizer.json, tokenizer_config.json, special_tokens_map.json and vocab.txt. The check reloads it with masklm,
and with transformers when it is installed (the head's Auto class: no missing or unexpected weights, the same
logits, the same token ids).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import tokenizers
import torch

from masklm.config import ModelConfig
from masklm.data.tokenizer import SPECIAL_TOKENS, special_ids, vocab_size
from masklm.errors import UserError
from masklm.export.common import TOLERANCE, compare, model_logits, write_json, write_text
from masklm.model.base import Head, ModelInfo, save_safetensors
from masklm.model.heads import SequenceClassification
from masklm.model.hf import HF_TASK_KEY, config_to_hf, to_hf_state_dict
from masklm.model.io import load_model
from masklm.utils import fsync_file

# ----------------------------------------------------------------------------------------------------------------
# Tokenizer files


def bert_tokenizer_settings(tok: tokenizers.Tokenizer) -> dict[str, Any]:
    """do_lower_case / strip_accents / tokenize_chinese_chars for transformers' BertTokenizer.

    transformers 5 rebuilds a BertTokenizer's normalizer and pre-tokenizer from these settings (it takes only the
    vocabulary and post-processor from tokenizer.json), so a tokenizer they cannot describe would give other ids:
    such a tokenizer is refused here.
    """
    spec = json.loads(tok.to_str())
    model, norm, pre = spec.get("model") or {}, spec.get("normalizer") or {}, spec.get("pre_tokenizer") or {}
    problems = []
    if model.get("type") != "WordPiece":
        problems.append(f"a {model.get('type')} model instead of WordPiece")
    elif model.get("continuing_subword_prefix") != "##" or model.get("max_input_chars_per_word") != 100:
        problems.append("WordPiece settings other than BERT's ('##' prefix, 100 characters per word)")
    if norm.get("type") != "BertNormalizer" or not norm.get("clean_text", True):
        problems.append(f"a {norm.get('type')} normalizer instead of BertNormalizer")
    if pre.get("type") != "BertPreTokenizer":
        problems.append(f"a {pre.get('type')} pre-tokenizer instead of BertPreTokenizer")
    if problems:
        raise UserError(
            f"the model's tokenizer has {'; '.join(problems)}, which transformers' BertTokenizer cannot reproduce; "
            "export needs a BERT WordPiece tokenizer (as `masklm prepare` trains)"
        )
    return {
        "do_lower_case": bool(norm.get("lowercase", True)),
        "strip_accents": norm.get("strip_accents"),
        "tokenize_chinese_chars": bool(norm.get("handle_chinese_chars", True)),
    }


def clean_tokenizer_json(tok: tokenizers.Tokenizer) -> str:
    """tokenizer.json without the padding or truncation a run may have switched on."""
    clean = tokenizers.Tokenizer.from_str(tok.to_str())
    clean.no_padding()
    clean.no_truncation()
    return clean.to_str(pretty=True)


def tokenizer_files(tok: tokenizers.Tokenizer, model_max_length: int) -> dict[str, str]:
    """File name → content for tokenizer.json, vocab.txt, tokenizer_config.json and special_tokens_map.json."""
    settings = bert_tokenizer_settings(tok)
    special_ids(tok)  # UserError when one of the five BERT special tokens is missing
    vocab = tok.get_vocab(with_added_tokens=True)
    by_id = sorted(vocab.items(), key=lambda kv: kv[1])
    if [i for _, i in by_id] != list(range(len(by_id))):
        raise UserError(
            "the tokenizer's ids have gaps, which vocab.txt cannot express; retrain the tokenizer"
        )
    if any("\n" in t or "\r" in t for t, _ in by_id):
        raise UserError("a token of the tokenizer contains a line break, which vocab.txt cannot express")
    names = ("pad_token", "unk_token", "cls_token", "sep_token", "mask_token")
    special = dict(zip(names, SPECIAL_TOKENS, strict=True))
    config = {
        "tokenizer_class": "BertTokenizer",
        **settings,
        **special,
        "model_max_length": model_max_length,
        "clean_up_tokenization_spaces": False,
    }
    return {
        "tokenizer.json": clean_tokenizer_json(tok),
        "vocab.txt": "".join(t + "\n" for t, _ in by_id),
        "tokenizer_config.json": json.dumps(config, indent=2, ensure_ascii=False) + "\n",
        "special_tokens_map.json": json.dumps(special, indent=2) + "\n",
    }


# ----------------------------------------------------------------------------------------------------------------
# The folder


def write_hf_folder(model: Head, tok: tokenizers.Tokenizer, info: ModelInfo, folder: Path) -> None:
    """Weights, config.json and tokenizer files of `model` as a Hugging Face BERT folder."""
    cfg: ModelConfig = model.cfg
    rows = vocab_size(tok)
    if rows > cfg.vocab_size:
        raise UserError(
            f"the tokenizer has {rows} tokens but the model only {cfg.vocab_size}; the folder is damaged"
        )
    files = tokenizer_files(tok, cfg.max_position_embeddings)
    state = to_hf_state_dict(model, vocab_size=rows)
    dtype = next(iter(state.values())).dtype
    hf_config = config_to_hf(cfg, info.architecture, info.labels, vocab_size=rows, dtype=dtype)
    hf_config.update(model.hf_config())
    hf_config.update(label_entries(model, info.labels))
    if info.task:
        # a fine-tuned model's task settings (QA's max_length, doc_stride, ...), which `evaluate` and `predict` use
        # on the exported folder as on the model; transformers keeps an unknown key and ignores it
        hf_config[HF_TASK_KEY] = info.task
    save_safetensors(state, folder / "model.safetensors", metadata={"format": "pt"})
    fsync_file(folder / "model.safetensors")
    write_json(folder / "config.json", hf_config)
    for name, text in files.items():
        write_text(folder / name, text)


def label_entries(model: Head, labels: list[str] | None) -> dict[str, Any]:
    """config.json entries that size the head where id2label cannot: `num_labels` for a head sized by labels
    whose model has no label names, and `problem_type: "regression"` for a one-output sequence classifier (a
    regression model: masklm scores with it, and transformers' BertForSequenceClassification then uses MSE).

    Without them transformers builds its default two outputs and refuses the one-row classifier."""
    count = getattr(model, "num_labels", None)
    if type(model).label_layer is None or not isinstance(count, int):
        return {}
    entries: dict[str, Any] = {} if labels else {"num_labels": count}
    if isinstance(model, SequenceClassification) and count == 1:  # also when named (an imported regressor)
        entries["problem_type"] = "regression"
    return entries


def check_hf_export(
    model: Head, tok: tokenizers.Tokenizer, folder: Path, tolerance: float = TOLERANCE
) -> None:
    """Reload `folder` with masklm (and transformers, when installed) and compare with `model`; UserError if off."""
    head = type(model)
    inputs = head.example_inputs(model.cfg)
    want = model_logits(model, inputs)
    if head.hf_model_type == "bert":  # masklm reads BERT folders only; transformers checks ELECTRA ones
        again, _, _ = load_model(folder)
        compare("the exported folder reloaded by masklm", model_logits(again.eval(), inputs), want, tolerance)
    if importlib.util.find_spec("transformers") is not None:
        _check_with_transformers(head, tok, folder, inputs, want, tolerance)


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def _check_with_transformers(
    head: type[Head],
    tok: tokenizers.Tokenizer,
    folder: Path,
    inputs: dict[str, torch.Tensor],
    want: torch.Tensor,
    tolerance: float,
) -> None:
    """transformers loads the folder with the head's Auto class cleanly, computes `want` and tokenizes alike."""
    import transformers

    auto = getattr(transformers, head.hf_auto_class)
    with _quiet_transformers():
        hf_model, loading = auto.from_pretrained(str(folder), output_loading_info=True)
        hf_tok = transformers.AutoTokenizer.from_pretrained(str(folder))
    problems = {k: v for k, v in loading.items() if v}
    if problems:
        raise UserError(f"export check failed: transformers reports {problems} loading {folder.name}")
    if type(hf_model).__name__ != head.hf_class:
        raise UserError(
            f"export check failed: transformers loads a {type(hf_model).__name__}, not {head.hf_class}"
        )
    hf_model.eval()
    with torch.no_grad():
        result = hf_model(**inputs)
    got = head.join_outputs([getattr(result, name) for name in head.output_names])
    compare("transformers' model", got, want, tolerance)
    texts = ["Hello, world! Ünïcödé façade 東京 …", "a" * 120, ""]
    for text in texts:
        ours = tok.encode(text).ids
        theirs = hf_tok(text)["input_ids"]
        if ours != theirs:
            raise UserError(f"export check failed: transformers' tokenizer gives other ids for {text[:30]!r}")
