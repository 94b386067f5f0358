"""The model card (README.md) of an export: what the model is, how it was made, how it scored, how to use it.

How it was made comes from a `RunRecord`, read once from the run folder (summary.json, config.yaml, command.txt)
and the model folder's config.json (a masklm model folder keeps tokens_seen / eval / command there). A card shows
the sections it has something for.
"""

from __future__ import annotations

import contextlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tokenizers
import yaml

import masklm
from masklm.config import ModelConfig
from masklm.data.tokenizer import vocab_size
from masklm.model.base import Head, ModelInfo

# The training settings a card shows (of the run's `train` section)
EXPORT_MARK = "exported by masklm"  # every card says so: `export --overwrite` replaces only such folders

CARD_TRAIN_KEYS = (
    "lr",
    "batch_size",
    "grad_accum",
    "schedule",
    "warmup",
    "max_steps",
    "max_tokens",
    "precision",
)


@dataclass
class RunRecord:
    """How a model was made, as far as its run folder and model folder tell; None where they do not."""

    data_path: str | None = None  # the prepared data folder
    data_config: dict[str, Any] | None = None  # the run's `data` settings
    mask_config: dict[str, Any] | None = None  # the run's `mask` settings
    train_config: dict[str, Any] | None = None  # the run's `train` settings, CARD_TRAIN_KEYS only
    tokens: int | None = None  # tokens seen in training
    steps: int | None = None
    train_time_s: float | None = None
    tokens_per_s: float | None = None
    global_batch: int | None = None  # sequences per optimizer step
    seq_len: int | None = None
    skipped_steps: int | None = None
    eval: dict[str, Any] | None = None  # held-out metrics at the end of training
    frequency_baseline_accuracy: float | None = None
    command: str | None = None  # the command line that made the run
    notes: list[str] = field(default_factory=list)  # the run's notes (summary.json)

    @classmethod
    def read(cls, model_dir: Path, folder: Path) -> RunRecord:
        """The record of the model in `folder` (resolved from `model_dir`, a model or run folder)."""
        run = _run_folder(model_dir, folder)
        summary = _read_json_quiet(run / "summary.json") if run else {}
        saved = _read_json_quiet(folder / "config.json")
        settings = _read_yaml_quiet(run / "config.yaml") if run else {}
        train = settings.get("train")
        eval_ = _first(summary, "eval") or saved.get("eval")
        data_path = _text(_first(summary, "data") or saved.get("data"))
        data_config = _mapping(settings.get("data"))
        if run and data_path and not (run / "data" / "meta.json").is_file():
            # a --data run: its config's data settings were not used (the text was prepared before); how it was
            # prepared is in the data folder's meta.json, when that folder is at hand
            data_config = _mapping(_read_json_quiet(Path(data_path) / "meta.json").get("data_config"))
        return cls(
            data_path=data_path,
            data_config=data_config,
            mask_config=_mapping(settings.get("mask")),
            train_config={k: train[k] for k in CARD_TRAIN_KEYS if k in train}
            if isinstance(train, dict)
            else None,
            tokens=_number(_first(summary, "tokens", "tokens_seen") or saved.get("tokens_seen")),
            steps=_number(summary.get("steps")),
            train_time_s=_number(_first(summary, "train_time_s", "wall_time_s", "wall_time_s_this_session")),
            tokens_per_s=_number(summary.get("tokens_per_s")),
            global_batch=_number(summary.get("global_batch")),
            seq_len=_number(summary.get("seq_len")),
            skipped_steps=_number(summary.get("skipped_steps")),
            eval=_mapping(eval_),
            frequency_baseline_accuracy=_number(summary.get("frequency_baseline_accuracy")),
            command=_read_command(run) or _text(saved.get("command")),
            notes=[str(n) for n in (summary.get("notes") or []) if n],
        )


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


def _read_yaml_quiet(path: Path) -> dict[str, Any]:
    data: Any = None
    with contextlib.suppress(OSError, UnicodeDecodeError, yaml.YAMLError):
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    return data if isinstance(data, dict) else {}


def _read_command(run: Path | None) -> str | None:
    if run is None or not (run / "command.txt").is_file():
        return None
    return (run / "command.txt").read_text(encoding="utf-8", errors="replace").strip() or None


def _first(data: dict[str, Any], *keys: str) -> Any:
    for key in keys:
        if data.get(key) is not None:
            return data[key]
    return None


def _number(value: Any) -> Any:
    return value if isinstance(value, int | float) and not isinstance(value, bool) else None


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _mapping(value: Any) -> dict[str, Any] | None:
    return value if isinstance(value, dict) and value else None


# ----------------------------------------------------------------------------------------------------------------
# The card


def model_card(
    model: Head, tok: tokenizers.Tokenizer, info: ModelInfo, fmt: str, name: str, record: RunRecord
) -> str:
    """README.md for an exported folder: size, data, training, evaluation, the command that made it, usage."""
    head = type(model)
    sections = [
        _header(head, info, fmt, name),
        _model_section(model, tok, info),
        _data_section(record),
        _training_section(record),
        _evaluation_section(record),
        _command_section(record),
        _notes_section(info, record),
        ["## Usage", "", *_usage(head, fmt)],
    ]
    return "\n\n".join("\n".join(lines) for lines in sections if lines) + "\n"


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    return str(value)


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _table(rows: list[tuple[str, Any]]) -> list[str]:
    out = ["| property | value |", "| --- | --- |"]
    return out + [f"| {k} | {_fmt(v)} |" for k, v in rows if v is not None]


def _yaml_block(section: str, values: dict[str, Any]) -> list[str]:
    return ["```yaml", yaml.safe_dump({section: values}, sort_keys=False).strip(), "```"]


def _header(head: type[Head], info: ModelInfo, fmt: str, name: str) -> list[str]:
    origin = (
        "converted from a Hugging Face checkpoint" if info.source == "huggingface" else "trained with masklm"
    )
    target = f"a Hugging Face {head.hf_class} folder" if fmt == "hf" else "ONNX"
    return [
        "---",
        f"library_name: {'transformers' if fmt == 'hf' else 'onnx'}",
        f"pipeline_tag: {head.pipeline_tag}",
        f"tags: [masklm, {head.hf_model_type}]",
        "---",
        "",
        f"# {name}",
        "",
        f"A BERT-style encoder ({info.architecture}) {origin}, {EXPORT_MARK} {masklm.__version__} as {target}.",
    ]


def _model_section(model: Head, tok: tokenizers.Tokenizer, info: ModelInfo) -> list[str]:
    cfg: ModelConfig = model.cfg
    rows = [
        (
            "parameters",
            sum(p.numel() for k, p in model.named_parameters() if not k.startswith(model.hf_skip)),
        ),
        ("layers", cfg.num_hidden_layers),
        ("hidden size", cfg.hidden_size),
        ("attention heads", cfg.num_attention_heads),
        ("intermediate size", cfg.intermediate_size),
        ("vocabulary", vocab_size(tok)),
        ("max positions", cfg.max_positions),
        ("activation", cfg.hidden_act),
        ("variant", ", ".join(cfg.modern_options()) or "BERT (post-LayerNorm, learned positions)"),
        ("labels", ", ".join(info.labels) if info.labels else None),
    ]
    return ["## Model", "", *_table(rows)]


def _data_section(record: RunRecord) -> list[str]:
    if not (record.data_config or record.data_path):
        return []
    lines = ["## Data", ""]
    if record.data_path:
        lines += [f"Prepared data: `{record.data_path}`", ""]
    if record.data_config:
        lines += _yaml_block("data", record.data_config)
    if record.mask_config:
        lines += ["", *_yaml_block("mask", record.mask_config)]
    return lines


def _training_section(record: RunRecord) -> list[str]:
    rows = [
        ("tokens seen", record.tokens),
        ("optimizer steps", record.steps),
        ("training time", _duration(record.train_time_s) if record.train_time_s is not None else None),
        ("tokens / s", record.tokens_per_s),
        ("global batch (sequences)", record.global_batch),
        ("sequence length", record.seq_len),
        ("skipped steps", record.skipped_steps),
    ]
    table = _table(rows) if any(v is not None for _, v in rows) else []
    settings = _yaml_block("train", record.train_config) if record.train_config is not None else []
    if not (table or settings):
        return []
    return ["## Training", "", *table, *([""] if table and settings else []), *settings]


def _evaluation_section(record: RunRecord) -> list[str]:
    if record.eval is None and record.frequency_baseline_accuracy is None:
        return []
    rows = [(k, v) for k, v in (record.eval or {}).items() if isinstance(v, int | float | str)]
    if record.frequency_baseline_accuracy is not None:
        rows.append(
            ("accuracy of always predicting the most frequent token", record.frequency_baseline_accuracy)
        )
    return ["## Evaluation (held-out data, end of training)", "", *_table(rows)]


def _command_section(record: RunRecord) -> list[str]:
    return ["## How it was made", "", "```bash", record.command, "```"] if record.command else []


def _notes_section(info: ModelInfo, record: RunRecord) -> list[str]:
    notes = [*info.notes, *record.notes]
    return ["## Notes", "", *(f"- {n}" for n in notes)] if notes else []


def _usage(head: type[Head], fmt: str) -> list[str]:
    if fmt == "hf":
        return head.hf_usage()
    return [
        *head.onnx_usage(),
        "",
        "Inputs: int64 `input_ids`, `attention_mask`, `token_type_ids` (when the model has token types), shape "
        f"({', '.join(head.input_axes)}); every axis is dynamic. See config.json for the input and output names.",
    ]
