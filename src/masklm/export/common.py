"""What the export formats share: durable writes, running a model on example inputs, comparing outputs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from masklm.errors import UserError
from masklm.utils import fsync_file

TOLERANCE = 1e-4  # max abs difference of logits allowed between an export and the PyTorch model


def write_text(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")
    fsync_file(path)


def write_json(path: Path, data: dict[str, Any]) -> None:
    write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def model_logits(model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model(inputs["input_ids"], inputs["attention_mask"], inputs["token_type_ids"]).float()


def compare(name: str, got: torch.Tensor, want: torch.Tensor, tolerance: float = TOLERANCE) -> float:
    """The max abs difference of `got` from `want`; UserError when shapes differ or it exceeds `tolerance`."""
    if tuple(got.shape) != tuple(want.shape):
        raise UserError(
            f"export check failed: {name} gives shape {tuple(got.shape)}, PyTorch {tuple(want.shape)}"
        )
    diff = (got.float() - want.float()).abs().max().item()
    if not diff <= tolerance:  # also catches NaN
        raise UserError(
            f"export check failed: {name} differs from PyTorch by {diff:.2e} (allowed {tolerance:.0e})"
        )
    return diff
