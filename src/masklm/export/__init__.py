"""Export a model as a Hugging Face BERT folder or as ONNX, with a model card.

    export_model("runs/demo", "exports/demo-hf")                 # BertForMaskedLM folder for transformers
    export_model("runs/demo", "exports/demo-onnx", fmt="onnx")   # model.onnx for ONNX Runtime
    export_model("runs/electra", "exports/gen", generator=True)  # an ELECTRA run's generator (ElectraForMaskedLM)

Both write into a temporary sibling folder and rename it to OUT only once everything is written and checked, so a
failed export leaves no OUT behind. An OUT that is a link to an export folder stays a link: the folder it links to
is the one replaced (the temporary folder is made beside it). Each format is one module: `hf` (the Hugging Face
folder and its check against masklm and transformers), `onnx` (model.onnx and its check in ONNX Runtime), `card`
(README.md). Every head-specific detail (HF class, outputs, inputs) comes from the model's head class
(`masklm.model.base.Head`).

With `check=True` an export is compared with the PyTorch model before it is declared done: the HF folder is
reloaded (by masklm, and by transformers when it is installed: no missing or unexpected weights, same logits,
same token ids), the ONNX file is run in ONNX Runtime on padded inputs of another shape (max abs diff <= TOLERANCE).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from masklm.errors import UserError
from masklm.export.card import EXPORT_MARK, RunRecord, model_card
from masklm.export.common import TOLERANCE, write_text
from masklm.export.hf import bert_tokenizer_settings, check_hf_export, tokenizer_files, write_hf_folder
from masklm.export.onnx import check_onnx_export, export_onnx, require_onnx, write_onnx_folder
from masklm.model.base import read_config_json
from masklm.model.electra import ElectraGenerator, ElectraPreTraining
from masklm.model.hf import refuse_modern
from masklm.model.io import load_model, resolve_model_dir
from masklm.tasks import all_tasks
from masklm.utils import (
    fsync_dir,
    refuse_path_through_file,
    remove_dead_staging,
    replace_folder,
    restore_replaced,
)

FORMATS = ("hf", "onnx")

__all__ = [
    "FORMATS",
    "TOLERANCE",
    "RunRecord",
    "bert_tokenizer_settings",
    "check_hf_export",
    "check_onnx_export",
    "export_model",
    "export_onnx",
    "model_card",
    "tokenizer_files",
]


def export_model(
    model_dir: str | Path,
    out: str | Path,
    fmt: str = "hf",
    *,
    overwrite: bool = False,
    check: bool = True,
    generator: bool = False,
) -> Path:
    """Export the model in `model_dir` (a model folder, a run folder or an HF BERT folder) to the folder `out`.

    An ELECTRA model exports its discriminator (ElectraForPreTraining); with `generator`, its generator
    (ElectraForMaskedLM) instead."""
    out = Path(out)
    # a link to an export stays a link: the folder it links to is the one replaced, with nothing left beside it
    target = out.resolve() if out.is_symlink() else out
    restore_replaced(target)  # an export a kill left half-replaced
    folder = _check_request(Path(model_dir), out, fmt, overwrite)
    all_tasks()  # task modules may define heads of their own: importing them registers those heads
    model, tokenizer, info = load_model(folder)
    if generator:
        if not isinstance(model, ElectraPreTraining):
            raise UserError(
                f"--generator exports an ELECTRA model's generator, but {model_dir} is a {info.architecture}"
            )
        model, tokenizer, info = load_model(folder, architecture=ElectraGenerator.architecture)
    # a bare encoder (a Hugging Face BertModel, such as all-MiniLM-L6-v2's) gets a random head
    if info.fresh_head:
        raise UserError(
            f"{model_dir} has no trained head to export ({info.fresh_head}); an export would carry random weights: "
            "export a model with its head (a pretrained or fine-tuned masklm run), or fine-tune this one first"
        )
    model = model.float().eval()  # exports are float32
    if fmt == "hf":
        refuse_modern(model.cfg, type(model).hf_model_type, type(model).hf_class)
        obstacle = model.hf_obstacle()
        if obstacle:
            raise UserError(obstacle)

    out.parent.mkdir(parents=True, exist_ok=True)
    remove_dead_staging(target, "tmp")  # the folder of an export that was killed
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        tmp.mkdir()
    except FileNotFoundError:
        # a folder such as /proc, where nothing can be made (a full or read-only disk says so itself)
        raise UserError(
            f"cannot make a folder in {target.parent}; choose an --output on a writable disk"
        ) from None
    try:
        if fmt == "hf":
            write_hf_folder(model, tokenizer, info, tmp)
            if check:
                check_hf_export(model, tokenizer, tmp, tolerance=TOLERANCE)
        else:
            write_onnx_folder(model, tokenizer, info, tmp)
            if check:
                check_onnx_export(model, tmp / "model.onnx", tolerance=TOLERANCE)
        record = RunRecord.read(Path(model_dir), folder)
        write_text(tmp / "README.md", model_card(model, tokenizer, info, fmt, out.name, record))
        fsync_dir(tmp)
        replace_folder(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def _is_export(folder: Path) -> bool:
    """Whether `folder` is an export masklm wrote (its model card says so): --overwrite replaces nothing else, not a
    Hugging Face or sentence-transformers folder of the user's that happens to hold a config.json."""
    try:
        with open(folder / "README.md", encoding="utf-8", errors="replace") as f:
            return EXPORT_MARK in f.read(1 << 16)
    except OSError:
        return False


def _check_request(model_dir: Path, out: Path, fmt: str, overwrite: bool) -> Path:
    """Everything that can be refused before anything is written; returns the model folder."""
    if fmt not in FORMATS:
        raise UserError(f"unknown export format {fmt!r}; choose hf or onnx")
    folder = resolve_model_dir(model_dir)
    if out.is_symlink() and not out.exists():
        raise UserError(f"{out} is a broken link (to {os.readlink(out)}); remove it or choose another folder")
    refuse_path_through_file(out)
    if out.exists() and not overwrite:
        raise UserError(f"{out} already exists; choose another folder or pass --overwrite to replace it")
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} is a file; the export is a folder, choose another name")
    if folder.resolve().is_relative_to(out.resolve()) or model_dir.resolve().is_relative_to(out.resolve()):
        raise UserError(f"{out} holds the model being exported; choose a folder outside it")
    if out.is_dir() and (out / "config.json").is_file() and read_config_json(out).get("format") == "masklm":
        raise UserError(
            f"--overwrite refuses to replace {out}: it is a masklm model folder (a trained model), not an export; "
            "choose another folder"
        )
    if out.is_dir() and any(out.iterdir()) and not _is_export(out):
        raise UserError(
            f"--overwrite refuses to replace {out}: it does not look like an export of masklm (no README.md that "
            f"says '{EXPORT_MARK}'); choose another folder"
        )
    if fmt == "onnx":
        require_onnx()
    return folder
