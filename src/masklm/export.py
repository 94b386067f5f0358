"""Export a model as a Hugging Face BERT folder or as ONNX, with a model card.

    export_model("runs/demo", "exports/demo-hf")                 # BertForMaskedLM folder for transformers
    export_model("runs/demo", "exports/demo-onnx", fmt="onnx")   # model.onnx for ONNX Runtime

Both write into a temporary sibling folder and rename it to OUT only once everything is written and checked, so a
failed export leaves no OUT behind. The Hugging Face folder holds config.json, model.safetensors (HF key names,
vocabulary rows trimmed to the tokenizer), tokenizer.json, tokenizer_config.json, special_tokens_map.json,
vocab.txt and README.md. The ONNX folder holds model.onnx (inputs input_ids, attention_mask, token_type_ids with
dynamic batch and sequence axes), the same tokenizer files, a config.json and README.md.

With `check=True` an export is compared with the PyTorch model before it is declared done: the HF folder is
reloaded (by masklm, and by transformers when it is installed: no missing or unexpected weights, same logits,
same token ids), the ONNX file is run in ONNX Runtime on padded inputs of another shape (max abs diff <= 1e-4).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import importlib.util
import io
import json
import logging
import math
import os
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import tokenizers
import torch
import yaml
from torch import nn

import masklm
from masklm.config import ModelConfig
from masklm.data.tokenizer import SPECIAL_TOKENS, special_ids, vocab_size
from masklm.errors import UserError
from masklm.model.hf import HF_CLASSES, config_to_hf, load_hf_model, refuse_modern, to_hf_state_dict
from masklm.model.io import ModelInfo, load_model, resolve_model_dir, save_safetensors
from masklm.utils import fsync_dir, fsync_file

FORMATS = ("hf", "onnx")
TOLERANCE = 1e-4  # max abs difference of logits allowed between the export and the PyTorch model
ONNX_INSTALL = "pip install 'masklm[onnx]'"
_PIPELINE_TAGS = {
    "MaskedLM": "fill-mask",
    "SequenceClassification": "text-classification",
    "TokenClassification": "token-classification",
    "QuestionAnswering": "question-answering",
}


def export_model(
    model_dir: str | Path,
    out: str | Path,
    fmt: str = "hf",
    *,
    overwrite: bool = False,
    check: bool = True,
) -> Path:
    """Export the model in `model_dir` (a model folder, a run folder or an HF BERT folder) to the folder `out`."""
    if fmt not in FORMATS:
        raise UserError(f"unknown export format {fmt!r}; choose hf or onnx")
    out = Path(out)
    folder = resolve_model_dir(model_dir)
    if out.exists() and not overwrite:
        raise UserError(f"{out} already exists; choose another folder or pass --overwrite to replace it")
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} is a file; the export is a folder, choose another name")
    if folder.resolve().is_relative_to(out.resolve()) or Path(model_dir).resolve().is_relative_to(
        out.resolve()
    ):
        raise UserError(f"{out} holds the model being exported; choose a folder outside it")
    if out.is_dir() and any(out.iterdir()) and not (out / "config.json").is_file():
        raise UserError(
            f"--overwrite refuses to replace {out}: it does not look like an export (no config.json); "
            "choose another folder"
        )
    if fmt == "onnx":
        _require_onnx()

    model, tokenizer, info = load_model(folder)
    model = model.float().eval()  # exports are float32
    cfg: ModelConfig = model.cfg
    if fmt == "hf":
        refuse_modern(cfg)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        if fmt == "hf":
            _write_hf(model, tokenizer, info, tmp)
            if check:
                check_hf_export(model, tokenizer, tmp)
        else:
            _write_onnx(model, tokenizer, info, tmp)
            if check:
                check_onnx_export(model, tmp / "model.onnx")
        _write_text(tmp / "README.md", model_card(model_dir, folder, model, tokenizer, info, fmt, out.name))
        fsync_dir(tmp)
        _replace_folder(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def _replace_folder(tmp: Path, out: Path) -> None:
    """Rename `tmp` to `out`; an existing `out` is moved aside first and removed only after the rename."""
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    if out.exists():
        out.rename(old)
    try:
        tmp.rename(out)
    except OSError:
        if old.exists():
            old.rename(out)
        raise
    fsync_dir(out.parent)
    if old.exists():
        shutil.rmtree(old, ignore_errors=True)


def _write_text(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")
    fsync_file(path)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    _write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


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
    clean = tokenizers.Tokenizer.from_str(tok.to_str())
    clean.no_padding()
    clean.no_truncation()
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
        "tokenizer.json": clean.to_str(pretty=True),
        "vocab.txt": "".join(t + "\n" for t, _ in by_id),
        "tokenizer_config.json": json.dumps(config, indent=2, ensure_ascii=False) + "\n",
        "special_tokens_map.json": json.dumps(special, indent=2) + "\n",
    }


# ----------------------------------------------------------------------------------------------------------------
# Hugging Face format


def _write_hf(model: nn.Module, tok: tokenizers.Tokenizer, info: ModelInfo, folder: Path) -> None:
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
    save_safetensors(state, folder / "model.safetensors", metadata={"format": "pt"})
    fsync_file(folder / "model.safetensors")
    _write_json(folder / "config.json", hf_config)
    for name, text in files.items():
        _write_text(folder / name, text)


def sample_inputs(
    cfg: ModelConfig, batch: int = 3, length: int = 13, seed: int = 0
) -> dict[str, torch.Tensor]:
    """Random ids with padding (rows 1.. end early) and, when the model has them, two token types."""
    length = min(length, cfg.max_position_embeddings) if cfg.position == "absolute" else length
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, cfg.vocab_size, (batch, length), generator=g)
    mask = torch.ones_like(ids)
    for row in range(1, batch):
        mask[row, max(1, length - 3 * row) :] = 0
    types_ = torch.zeros_like(ids)
    if cfg.type_vocab_size > 1:
        types_[:, length // 2 :] = 1
    ids = ids.masked_fill(mask == 0, cfg.pad_token_id)
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types_}


def _logits(model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model(inputs["input_ids"], inputs["attention_mask"], inputs["token_type_ids"]).float()


def _compare(name: str, got: torch.Tensor, want: torch.Tensor) -> None:
    if tuple(got.shape) != tuple(want.shape):
        raise UserError(
            f"export check failed: {name} gives shape {tuple(got.shape)}, PyTorch {tuple(want.shape)}"
        )
    diff = (got.float() - want.float()).abs().max().item()
    if not diff <= TOLERANCE:  # also catches NaN
        raise UserError(
            f"export check failed: {name} differs from PyTorch by {diff:.2e} (allowed {TOLERANCE:.0e})"
        )


def check_hf_export(model: nn.Module, tok: tokenizers.Tokenizer, folder: Path) -> None:
    """Reload `folder` with masklm (and transformers, when installed) and compare with `model`; UserError if off."""
    inputs = sample_inputs(model.cfg)
    want = _logits(model, inputs)
    again, _, _ = load_hf_model(folder)
    _compare("the exported folder reloaded by masklm", _logits(again.eval(), inputs), want)
    if importlib.util.find_spec("transformers") is not None:
        _check_with_transformers(type(model).__name__, tok, folder, inputs, want)


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
    architecture: str,
    tok: tokenizers.Tokenizer,
    folder: Path,
    inputs: dict[str, torch.Tensor],
    want: torch.Tensor,
) -> None:
    import transformers

    auto = {
        "MaskedLM": transformers.AutoModelForMaskedLM,
        "SequenceClassification": transformers.AutoModelForSequenceClassification,
        "TokenClassification": transformers.AutoModelForTokenClassification,
        "QuestionAnswering": transformers.AutoModelForQuestionAnswering,
    }[architecture]
    with _quiet_transformers():
        hf_model, loading = auto.from_pretrained(str(folder), output_loading_info=True)
        hf_tok = transformers.AutoTokenizer.from_pretrained(str(folder))
    problems = {k: v for k, v in loading.items() if v}
    if problems:
        raise UserError(f"export check failed: transformers reports {problems} loading {folder.name}")
    hf_model.eval()
    with torch.no_grad():
        result = hf_model(**inputs)
    if architecture == "QuestionAnswering":
        got = torch.stack([result.start_logits, result.end_logits], dim=-1)
    else:
        got = result.logits
    _compare("transformers' model", got, want)
    texts = ["Hello, world! Ünïcödé façade 東京 …", "a" * 120, ""]
    for text in texts:
        ours = tok.encode(text).ids
        theirs = hf_tok(text)["input_ids"]
        if ours != theirs:
            raise UserError(f"export check failed: transformers' tokenizer gives other ids for {text[:30]!r}")


# ----------------------------------------------------------------------------------------------------------------
# ONNX


def _require_onnx() -> None:
    missing = [m for m in ("onnx", "onnxruntime", "onnxscript") if importlib.util.find_spec(m) is None]
    if missing:
        raise UserError(f"ONNX export needs {', '.join(missing)}: {ONNX_INSTALL}")


class _OnnxModule(nn.Module):
    """The model with the ONNX interface: ids, mask (and token types) in, logits out (QA: start and end)."""

    def __init__(self, model: nn.Module, token_types: bool) -> None:
        super().__init__()
        self.model = copy.deepcopy(model).float().eval()
        self.qa = type(model).__name__ == "QuestionAnswering"
        self.token_types = token_types

    def forward(self, *args: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        input_ids, attention_mask = args[0], args[1]
        token_type_ids = args[2] if self.token_types else None
        logits = self.model(input_ids, attention_mask, token_type_ids)
        if self.qa:
            return logits[..., 0], logits[..., 1]
        return logits


def onnx_io_names(model: nn.Module) -> tuple[list[str], list[str]]:
    inputs = ["input_ids", "attention_mask"]
    if model.cfg.type_vocab_size > 0:
        inputs.append("token_type_ids")
    outputs = ["start_logits", "end_logits"] if type(model).__name__ == "QuestionAnswering" else ["logits"]
    return inputs, outputs


def export_onnx(model: nn.Module, path: Path) -> None:
    """Write `model` with its head to `path` (torch.export-based exporter; dynamic batch and sequence axes)."""
    _require_onnx()
    cfg: ModelConfig = model.cfg
    inputs, outputs = onnx_io_names(model)
    module = _OnnxModule(model, "token_type_ids" in inputs)
    sample = sample_inputs(cfg, batch=2, length=min(8, cfg.max_position_embeddings))
    args = tuple(sample[name] for name in inputs)
    batch = torch.export.Dim("batch")
    seq = (
        torch.export.Dim("sequence", max=cfg.max_position_embeddings)
        if cfg.position == "absolute"
        else torch.export.Dim("sequence")
    )
    dynamic = ({0: batch, 1: seq},) * len(inputs)
    big = sum(p.numel() for p in model.parameters()) * 4 > 1_800_000_000  # protobuf's 2 GB limit
    chatter = io.StringIO()
    torch_onnx_log = logging.getLogger("torch.onnx")
    old_level = torch_onnx_log.level
    torch_onnx_log.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(chatter), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module,
                args,
                str(path),
                input_names=inputs,
                output_names=outputs,
                dynamic_shapes=(dynamic,),
                dynamo=True,
                external_data=big,
            )
    except Exception as e:
        lines = [line for line in str(e).splitlines() if line.strip()]
        raise UserError(f"ONNX export failed ({type(e).__name__}: {(lines or [''])[0][:160]})") from None
    finally:
        torch_onnx_log.setLevel(old_level)


def check_onnx_export(model: nn.Module, path: Path) -> float:
    """Run `path` in ONNX Runtime on padded inputs of a shape other than the export's; UserError if off by > 1e-4."""
    import numpy as np
    import onnxruntime

    inputs, outputs = onnx_io_names(model)
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    try:
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as e:
        raise UserError(
            f"export check failed: ONNX Runtime cannot load {path.name} ({str(e)[:160]})"
        ) from None
    worst = 0.0
    for batch, length in ((3, 13), (1, 5)):
        sample = sample_inputs(model.cfg, batch=batch, length=length, seed=batch)
        want = _logits(model, sample)
        feed = {name: sample[name].numpy().astype(np.int64) for name in inputs}
        got = session.run(outputs, feed)
        got_t = torch.from_numpy(np.stack(got, axis=-1) if len(got) == 2 else got[0])
        _compare("ONNX Runtime", got_t, want)
        worst = max(worst, (got_t - want).abs().max().item())
    return worst


def _write_onnx(model: nn.Module, tok: tokenizers.Tokenizer, info: ModelInfo, folder: Path) -> None:
    cfg: ModelConfig = model.cfg
    export_onnx(model, folder / "model.onnx")
    inputs, outputs = onnx_io_names(model)
    _write_json(
        folder / "config.json",
        {
            "format": "masklm-onnx",
            "architecture": info.architecture,
            "model": dataclasses.asdict(cfg),
            "labels": info.labels,
            "inputs": inputs,
            "outputs": outputs,
            "dynamic_axes": {"0": "batch", "1": "sequence"},
        },
    )
    try:
        files = tokenizer_files(tok, cfg.max_position_embeddings)
    except UserError:  # ONNX users run the tokenizer through `tokenizers`; tokenizer.json is enough
        clean = tokenizers.Tokenizer.from_str(tok.to_str())
        clean.no_padding()
        clean.no_truncation()
        files = {"tokenizer.json": clean.to_str(pretty=True)}
    for name, text in files.items():
        _write_text(folder / name, text)


# ----------------------------------------------------------------------------------------------------------------
# Model card


def _run_folder(model_dir: Path, folder: Path) -> Path | None:
    for candidate in (model_dir, folder.parent):
        if (candidate / "summary.json").is_file() or (candidate / "config.yaml").is_file():
            return candidate
    return None


def _read_json_quiet(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _first(data: dict[str, Any], *keys: str) -> Any:
    for key in keys:
        if data.get(key) is not None:
            return data[key]
    return None


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    return str(value)


def _duration(seconds: Any) -> str:
    if not isinstance(seconds, int | float):
        return str(seconds)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _table(rows: list[tuple[str, Any]]) -> list[str]:
    out = ["| property | value |", "| --- | --- |"]
    out += [f"| {k} | {_fmt(v)} |" for k, v in rows if v is not None]
    return out


def model_card(
    model_dir: str | Path,
    folder: Path,
    model: nn.Module,
    tok: tokenizers.Tokenizer,
    info: ModelInfo,
    fmt: str,
    name: str,
) -> str:
    """README.md for an exported folder: size, data, training, evaluation, the command that made it, usage."""
    cfg: ModelConfig = model.cfg
    run = _run_folder(Path(model_dir), folder)
    summary = _read_json_quiet(run / "summary.json") if run else {}
    saved = _read_json_quiet(folder / "config.json")  # a masklm model folder keeps tokens_seen / eval here
    run_config: dict[str, Any] = {}
    if run and (run / "config.yaml").is_file():
        with contextlib.suppress(OSError, UnicodeDecodeError, yaml.YAMLError):
            run_config = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8")) or {}
    command = None
    if run and (run / "command.txt").is_file():
        command = (run / "command.txt").read_text(encoding="utf-8", errors="replace").strip() or None
    command = command or saved.get("command")

    arch = info.architecture
    origin = (
        "converted from a Hugging Face checkpoint" if info.source == "huggingface" else "trained with masklm"
    )
    target = f"a Hugging Face {HF_CLASSES[arch]} folder" if fmt == "hf" else "ONNX"
    library = "transformers" if fmt == "hf" else "onnx"
    lines = [
        "---",
        f"library_name: {library}",
        f"pipeline_tag: {_PIPELINE_TAGS.get(arch, 'fill-mask')}",
        "tags: [masklm, bert]",
        "---",
        "",
        f"# {name}",
        "",
        f"A BERT-style encoder ({arch}) {origin}, exported by masklm {masklm.__version__} as {target}.",
        "",
        "## Model",
        "",
    ]
    n_params = sum(p.numel() for p in model.parameters())
    lines += _table(
        [
            ("parameters", n_params),
            ("layers", cfg.num_hidden_layers),
            ("hidden size", cfg.hidden_size),
            ("attention heads", cfg.num_attention_heads),
            ("intermediate size", cfg.intermediate_size),
            ("vocabulary", vocab_size(tok)),
            ("max positions", cfg.max_position_embeddings if cfg.position == "absolute" else None),
            ("activation", cfg.hidden_act),
            ("variant", ", ".join(cfg.modern_options()) or "BERT (post-LayerNorm, learned positions)"),
            ("labels", ", ".join(info.labels) if info.labels else None),
        ]
    )
    data_cfg = run_config.get("data") if isinstance(run_config.get("data"), dict) else None
    data_path = _first(summary, "data") or saved.get("data")
    if data_cfg or data_path:
        lines += ["", "## Data", ""]
        if data_path:
            lines += [f"Prepared data: `{data_path}`", ""]
        if data_cfg:
            lines += ["```yaml", yaml.safe_dump({"data": data_cfg}, sort_keys=False).strip(), "```"]
        mask_cfg = run_config.get("mask")
        if isinstance(mask_cfg, dict):
            lines += ["", "```yaml", yaml.safe_dump({"mask": mask_cfg}, sort_keys=False).strip(), "```"]

    tokens = _first(summary, "tokens", "tokens_seen") or saved.get("tokens_seen")
    train_s = _first(summary, "train_time_s", "wall_time_s", "wall_time_s_this_session")
    training = [
        ("tokens seen", tokens),
        ("optimizer steps", _first(summary, "steps")),
        ("training time", _duration(train_s) if train_s is not None else None),
        ("tokens / s", _first(summary, "tokens_per_s")),
        ("global batch (sequences)", _first(summary, "global_batch")),
        ("sequence length", _first(summary, "seq_len")),
        ("skipped steps", _first(summary, "skipped_steps")),
    ]
    if any(v is not None for _, v in training):
        lines += ["", "## Training", ""] + _table(training)
    train_cfg = run_config.get("train")
    if isinstance(train_cfg, dict):
        keep = (
            "lr",
            "batch_size",
            "grad_accum",
            "schedule",
            "warmup",
            "max_steps",
            "max_tokens",
            "precision",
        )
        lines += [
            "",
            "```yaml",
            yaml.safe_dump(
                {"train": {k: train_cfg[k] for k in keep if k in train_cfg}}, sort_keys=False
            ).strip(),
            "```",
        ]

    metrics = _first(summary, "eval") or saved.get("eval")
    baseline = _first(summary, "frequency_baseline_accuracy")
    if isinstance(metrics, dict) and metrics or baseline is not None:
        rows = [(k, v) for k, v in (metrics or {}).items() if isinstance(v, int | float | str)]
        if baseline is not None:
            rows.append(("accuracy of always predicting the most frequent token", baseline))
        lines += ["", "## Evaluation (held-out data, end of training)", ""] + _table(rows)
    if command:
        lines += ["", "## How it was made", "", "```bash", command, "```"]
    notes = list(info.notes) + [str(n) for n in (summary.get("notes") or []) if n]
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    lines += ["", "## Usage", ""] + _usage(arch, fmt)
    return "\n".join(lines) + "\n"


def _usage(arch: str, fmt: str) -> list[str]:
    if fmt == "hf":
        if arch == "MaskedLM":
            return [
                "```python",
                "from transformers import pipeline",
                'fill = pipeline("fill-mask", model="PATH/TO/THIS/FOLDER")',
                'fill("the capital of france is [MASK] .")',
                "```",
            ]
        return [
            "```python",
            f"from transformers import AutoTokenizer, {HF_CLASSES[arch].replace('Bert', 'AutoModel', 1)}",
            'tok = AutoTokenizer.from_pretrained("PATH/TO/THIS/FOLDER")',
            f'model = {HF_CLASSES[arch].replace("Bert", "AutoModel", 1)}.from_pretrained("PATH/TO/THIS/FOLDER")',
            "```",
        ]
    return [
        "```python",
        "import numpy as np, onnxruntime, tokenizers",
        'tok = tokenizers.Tokenizer.from_file("tokenizer.json")',
        'session = onnxruntime.InferenceSession("model.onnx")',
        'enc = tok.encode("the capital of france is [MASK] .")',
        'feed = {"input_ids": [enc.ids], "attention_mask": [enc.attention_mask], "token_type_ids": [enc.type_ids]}',
        "outputs = session.run(None, {k: np.array(v, dtype=np.int64) for k, v in feed.items()})",
        "```",
        "",
        "Inputs: int64 `input_ids`, `attention_mask`, `token_type_ids` (when the model has token types), shape "
        "(batch, sequence); both axes are dynamic. See config.json for the input and output names.",
    ]


__all__ = [
    "FORMATS",
    "bert_tokenizer_settings",
    "check_hf_export",
    "check_onnx_export",
    "export_model",
    "export_onnx",
    "model_card",
    "tokenizer_files",
]
