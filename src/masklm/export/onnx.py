"""The ONNX export: model.onnx for ONNX Runtime (any model, modern variants too), and the check that it runs.

Inputs are int64 input_ids, attention_mask and (when the model has token types) token_type_ids, with the head's
input axes (`Head.input_axes`, (batch, sequence) unless the head says otherwise), all dynamic. Outputs are named by
the head (`Head.output_names`: logits, or start_logits and end_logits). The check runs the file in ONNX Runtime
on padded inputs of other shapes than the traced ones and compares with PyTorch.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import importlib.util
import io
import logging
import warnings
from pathlib import Path

import tokenizers
import torch
from torch import nn

from masklm.config import ModelConfig
from masklm.errors import ENVIRONMENT_ERRORS, UserError
from masklm.export.common import TOLERANCE, compare, model_logits, write_json, write_text
from masklm.export.hf import clean_tokenizer_json, tokenizer_files
from masklm.model.base import Head, ModelInfo
from masklm.tasks.prompt_classification import prompt_readout

ONNX_INSTALL = "pip install 'masklm[onnx]'"


def require_onnx() -> None:
    missing = [m for m in ("onnx", "onnxruntime", "onnxscript") if importlib.util.find_spec(m) is None]
    if missing:
        raise UserError(f"ONNX export needs {', '.join(missing)}: {ONNX_INSTALL}")


def onnx_io_names(model: Head) -> tuple[list[str], list[str]]:
    """Input and output names of the ONNX graph; token_type_ids only for a model with token types."""
    inputs = ["input_ids", "attention_mask"]
    if model.cfg.type_vocab_size > 0:
        inputs.append("token_type_ids")
    return inputs, list(type(model).output_names)


class _OnnxModule(nn.Module):
    """The model with the ONNX interface: ids, mask (and token types) in, the head's outputs out."""

    def __init__(self, model: Head, token_types: bool) -> None:
        super().__init__()
        self.model = copy.deepcopy(model).float().eval()
        self.head = type(model)
        self.token_types = token_types

    def forward(self, *args: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        input_ids, attention_mask = args[0], args[1]
        token_type_ids = args[2] if self.token_types else None
        outputs = self.head.split_logits(self.model(input_ids, attention_mask, token_type_ids))
        return outputs[0] if len(outputs) == 1 else outputs


def _dynamic_shapes(model: Head, n_inputs: int) -> tuple[dict[int, torch.export.Dim], ...]:
    """Every input axis dynamic; the last (the tokens) bounded by the learned positions, when there are any."""
    cfg: ModelConfig = model.cfg
    axes = type(model).input_axes
    dims = [torch.export.Dim(name) for name in axes[:-1]]
    limit = cfg.max_positions
    dims.append(torch.export.Dim(axes[-1], max=limit) if limit else torch.export.Dim(axes[-1]))
    return (dict(enumerate(dims)),) * n_inputs


def export_onnx(model: Head, path: Path) -> None:
    """Write `model` with its head to `path` (torch.export-based exporter; every input axis dynamic)."""
    require_onnx()
    cfg: ModelConfig = model.cfg
    inputs, outputs = onnx_io_names(model)
    module = _OnnxModule(model, "token_type_ids" in inputs)
    sample = type(model).example_inputs(cfg, batch=2, length=min(8, cfg.max_position_embeddings))
    args = tuple(sample[name] for name in inputs)
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
                dynamic_shapes=(_dynamic_shapes(model, len(inputs)),),
                dynamo=True,
                external_data=big,
            )
    except Exception as e:
        disk = _disk_error(e)
        if disk is not None:
            raise disk from None  # the machine's problem (full disk, no permission): the command line's one line
        lines = [line for line in str(e).splitlines() if line.strip()]
        raise UserError(f"ONNX export failed ({type(e).__name__}: {(lines or [''])[0][:160]})") from None
    finally:
        torch_onnx_log.setLevel(old_level)


def check_onnx_export(model: Head, path: Path, tolerance: float = TOLERANCE) -> float:
    """Run `path` in ONNX Runtime on padded inputs of shapes other than the export's; UserError if off.

    Returns the largest difference from PyTorch seen.
    """
    import numpy as np
    import onnxruntime

    head = type(model)
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
        sample = head.example_inputs(model.cfg, batch=batch, length=length, seed=batch)
        want = model_logits(model, sample)
        feed = {name: sample[name].numpy().astype(np.int64) for name in inputs}
        got = head.join_outputs([torch.from_numpy(o) for o in session.run(outputs, feed)])
        worst = max(worst, compare("ONNX Runtime", got, want, tolerance))
    return worst


def write_onnx_folder(model: Head, tok: tokenizers.Tokenizer, info: ModelInfo, folder: Path) -> None:
    """model.onnx, a config.json that names its inputs and outputs, and the tokenizer files."""
    cfg: ModelConfig = model.cfg
    export_onnx(model, folder / "model.onnx")
    inputs, outputs = onnx_io_names(model)
    config = {
        "format": "masklm-onnx",
        "architecture": info.architecture,
        "model": dataclasses.asdict(cfg),
        "labels": info.labels,
        "inputs": inputs,
        "outputs": outputs,
        "dynamic_axes": {str(i): name for i, name in enumerate(type(model).input_axes)},
    }
    prompt = prompt_readout(info, tok)
    if prompt is not None:  # a prompt classifier outputs vocabulary logits: label i is label_token_ids[i]
        config["prompt"] = prompt  # at the template's [MASK]
    write_json(folder / "config.json", config)
    try:
        files = tokenizer_files(tok, cfg.max_position_embeddings)
    except UserError:  # ONNX users run the tokenizer through `tokenizers`; tokenizer.json is enough
        files = {"tokenizer.json": clean_tokenizer_json(tok)}
    for name, text in files.items():
        write_text(folder / name, text)


def _disk_error(e: BaseException | None) -> OSError | None:
    """The full-disk or permission OSError behind an exporter error (itself, or what it wraps), if any."""
    while e is not None:
        if isinstance(e, OSError) and e.errno in ENVIRONMENT_ERRORS:
            return e
        e = e.__cause__ or e.__context__
    return None
