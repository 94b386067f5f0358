"""Crash-safe checkpoints and exact resume.

A checkpoint is a folder `checkpoints/step_000123/` with
    model.safetensors   the weights
    optimizer.pt        the optimizer state (tensors and numbers only: loads with weights_only=True)
    trainer.pt          step, tokens seen, elapsed time, RNG states, global batch (weights_only-safe as well)
    manifest.json       written last: the SHA-256 of each file above

or, when the model is sharded with FSDP, a sharded checkpoint that every process writes its part of with
`torch.distributed.checkpoint` (DCP), without ever gathering the whole model in one place:
    .metadata, __0_0.distcp, __1_0.distcp, ...   model and optimizer state, one file per writing process
    trainer.pt, manifest.json                    as above; the manifest says "format": "dcp"
Either kind resumes with any number of processes and either strategy (`load_checkpoint` converts).

The folder is assembled under a temporary name and renamed into place, and a checkpoint whose manifest is missing
or whose files do not match it does not exist as far as `latest_checkpoint` is concerned, so a kill at any moment
(even in the middle of a write) leaves the previous checkpoint as the one to resume from.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from masklm import dist
from masklm.errors import UserError
from masklm.model.io import save_safetensors
from masklm.utils import atomic_write_text, fsync_dir, fsync_file, log

CHECKPOINT_FILES = ("model.safetensors", "optimizer.pt", "trainer.pt")
SHARDED_FILES = (".metadata", "trainer.pt")  # plus the .distcp files the manifest lists


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _torch_save(obj: Any, path: Path) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    with open(path, "wb") as f:
        f.write(buf.getvalue())
        f.flush()
        os.fsync(f.fileno())


def save_checkpoint(
    root: Path,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    trainer_state: dict[str, Any],
    keep_last: int,
) -> Path:
    """Write checkpoint `step` under `root` atomically; prune to the newest `keep_last` valid ones."""
    root.mkdir(parents=True, exist_ok=True)  # (a file in its place: the generic "move it away" line)
    final = root / f"step_{step:08d}"
    tmp = root / f".tmp_step_{step:08d}"
    try:  # from the temporary folder on, any failure is this checkpoint's (read-only folder, full disk)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        save_safetensors(state, tmp / "model.safetensors")
        fsync_file(tmp / "model.safetensors")
        _torch_save(optimizer.state_dict(), tmp / "optimizer.pt")
        _torch_save(trainer_state, tmp / "trainer.pt")
        manifest = {"step": step, "files": {name: _sha256(tmp / name) for name in CHECKPOINT_FILES}}
        atomic_write_text(tmp / "manifest.json", json.dumps(manifest, indent=2) + "\n")
        fsync_dir(tmp)
        _move_into_place(tmp, final)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise UserError(
            f"could not write checkpoint {final} ({e.strerror or e}); free disk space or fix permissions, "
            f"{_what_is_left(root, step)}"
        ) from None
    prune(root, final, keep_last)
    return final


def _move_into_place(tmp: Path, final: Path) -> None:
    """Rename the finished `tmp` to `final`. A checkpoint of the same step already there is renamed aside first and
    deleted after, so that a valid `final` is missing only between two renames, not while a large folder is
    deleted (where a kill left no checkpoint to resume from when it was the only one)."""
    old = final.with_name(f".old_{final.name}")
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
    tmp.rename(final)
    fsync_dir(final.parent)
    shutil.rmtree(old, ignore_errors=True)


def _what_is_left(root: Path, step: int) -> str:
    """What a failed checkpoint write leaves to resume from: the previous checkpoint, or (the first) nothing."""
    earlier = root.is_dir() and any(
        -1 < step_of(p) < step for p in root.iterdir() if p.is_dir() and p.name.startswith("step_")
    )
    if earlier:
        return "the previous checkpoint is intact (--resume continues from it)"
    return "no checkpoint was written before this one (a rerun starts from the beginning)"


def prune(root: Path, newest: Path, keep_last: int) -> None:
    """Keep `newest` (just written) and the `keep_last - 1` complete checkpoints before it; delete every other
    folder of an earlier step, complete or not: older checkpoints, half-written ones (`.tmp_step_*`, a kill during
    a write) and half-deleted ones (a kill during an earlier prune), which would otherwise stay forever.

    Folders of later steps are left alone: they were skipped on resume as damaged, and counting them would delete
    the checkpoint just written.
    """
    step = step_of(newest)
    earlier = sorted((p for p in root.iterdir() if p.is_dir() and -1 < step_of(p) < step), key=step_of)
    complete = [p for p in earlier if p.name.startswith("step_") and is_valid(p, verify=False)]
    keep = set(complete[max(0, len(complete) - (keep_last - 1)) :])
    for p in earlier:
        if p not in keep:
            shutil.rmtree(p, ignore_errors=True)


def step_of(folder: Path) -> int:
    """The step of a checkpoint folder `step_N`, `.tmp_step_N` (being written) or `.old_step_N` (being replaced);
    -1 for any other name."""
    found = re.fullmatch(r"(?:\.tmp_|\.old_)?step_(\d+)", folder.name)
    return int(found.group(1)) if found else -1


def save(
    root: Path,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    trainer_state: dict[str, Any],
    keep_last: int,
) -> None:
    """Every process calls this. FSDP: a sharded checkpoint, written by all; otherwise rank 0 writes one."""
    if dist.is_fsdp(model):
        save_sharded_checkpoint(root, step, model, optimizer, trainer_state, keep_last)
    elif dist.rank() == 0:
        save_checkpoint(root, step, model, optimizer, trainer_state, keep_last)


def save_sharded_checkpoint(
    root: Path,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    trainer_state: dict[str, Any],
    keep_last: int,
) -> Path:
    """Collective: each process writes its shards into the temporary folder, then rank 0 adds trainer.pt and the
    manifest and renames the folder into place. `root` must be on a file system that every process sees."""
    final = root / f"step_{step:08d}"
    tmp = root / f".tmp_step_{step:08d}"
    if dist.rank() == 0:
        root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
    dist.barrier()
    try:
        dist.save_sharded(tmp, model, optimizer)
    except Exception as e:  # DCP raises the same error on every process
        raise UserError(
            f"could not write checkpoint {final} ({type(e).__name__}: {str(e).splitlines()[0][:120]}); free disk "
            f"space or fix permissions, {_what_is_left(root, step)}"
        ) from None

    def finish() -> None:
        _torch_save(trainer_state, tmp / "trainer.pt")
        names = sorted(p.name for p in tmp.iterdir() if p.is_file())
        manifest = {
            "step": step,
            "format": "dcp",
            "world_size": dist.world_size(),
            "files": {name: _sha256(tmp / name) for name in names},
        }
        atomic_write_text(tmp / "manifest.json", json.dumps(manifest, indent=2) + "\n")
        fsync_dir(tmp)
        _move_into_place(tmp, final)
        prune(root, final, keep_last)

    dist.on_rank0(finish, f"writing checkpoint {final}")
    return final


def is_valid(ckpt: Path, verify: bool = True) -> bool:
    """Whether `ckpt` holds every file its manifest names, with the hashes it records. A file this user may not
    read is no damage: a UserError says so (taking it for damage would skip the checkpoint, and a resume would
    start over and drop the run's history)."""
    try:
        return _matches_manifest(ckpt, verify)
    except PermissionError as e:
        raise _no_access(Path(e.filename or ckpt)) from None


def _matches_manifest(ckpt: Path, verify: bool) -> bool:
    manifest_path = ckpt / "manifest.json"
    try:
        manifest = json.loads(manifest_path.read_text())
        files = manifest["files"]
    except PermissionError:
        raise
    except (OSError, ValueError, KeyError, TypeError):
        return False
    if not isinstance(files, dict):  # not a manifest masklm wrote (name → SHA-256)
        return False
    required = SHARDED_FILES if manifest.get("format") == "dcp" else CHECKPOINT_FILES
    for name in sorted(set(required) | set(files)):
        p = ckpt / name
        if not p.is_file() or name not in files:
            return False
        if verify and _sha256(p) != files[name]:
            return False
    return True


def _no_access(path: Path) -> UserError:
    return UserError(
        f"cannot read {path} (permission denied): give this user read access to the run folder (chmod / chown) "
        "and run the command again; nothing was changed"
    )


def _step_folders(root: Path) -> list[Path]:
    """The step_* folders of a checkpoints folder, in step order; none when there is no such folder. A file in
    its place, or a folder this user may not read, is a UserError: a resume must not start over past them."""
    if not root.exists():
        return []
    if not root.is_dir():
        raise UserError(
            f"{root} is a file, not a folder: move it away and run the command again (a run's checkpoints "
            "go in that folder)"
        )
    try:
        return sorted((p for p in root.iterdir() if p.name.startswith("step_") and p.is_dir()), key=step_of)
    except PermissionError:
        raise _no_access(root) from None


def valid_checkpoints(root: Path, verify: bool = True) -> list[Path]:
    """Complete checkpoints under `root`, oldest first."""
    return [p for p in _step_folders(root) if is_valid(p, verify=verify)]


def latest_checkpoint(root: Path) -> Path | None:
    """The newest checkpoint whose manifest matches its files; says so when newer ones were skipped."""
    candidates = _step_folders(root)[::-1]
    for i, p in enumerate(candidates):
        if is_valid(p):
            if i:
                log(f"skipped {i} incomplete or damaged checkpoint(s); resuming from {p.name}")
            return p
    if candidates:
        log(f"skipped {len(candidates)} incomplete or damaged checkpoint(s); none is complete")
    return None


def is_sharded(ckpt: Path) -> bool:
    try:
        return json.loads((ckpt / "manifest.json").read_text()).get("format") == "dcp"
    except (OSError, ValueError, AttributeError):
        return False


def read_trainer_state(ckpt: Path) -> dict[str, Any]:
    """trainer.pt alone: step, tokens, RNG states and what the run recorded (e.g. its global batch)."""
    try:
        return torch.load(ckpt / "trainer.pt", weights_only=True, map_location="cpu")
    except Exception as e:
        raise UserError(
            f"checkpoint {ckpt} cannot be read ({type(e).__name__}); delete it to use an older one"
        ) from None


def load_checkpoint(ckpt: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None) -> dict[str, Any]:
    """Restore model (and optimizer) from `ckpt`; returns the trainer state.

    `model` is the plain module, or an FSDP-sharded one; the checkpoint may be of either kind and may come from
    another number of processes. Every process calls this.
    """
    if is_sharded(ckpt):
        trainer_state = read_trainer_state(ckpt)
        try:
            dist.load_sharded(ckpt, model, optimizer)
        except Exception as e:
            raise UserError(
                f"checkpoint {ckpt} cannot be loaded into this model ({type(e).__name__}: "
                f"{str(e).splitlines()[0][:120]}); resume with the config it was saved with"
            ) from None
        return trainer_state
    try:
        state = load_file(str(ckpt / "model.safetensors"))
        trainer_state = torch.load(ckpt / "trainer.pt", weights_only=True, map_location="cpu")
        opt_state = (
            torch.load(ckpt / "optimizer.pt", weights_only=True, map_location="cpu") if optimizer else None
        )
    except Exception as e:  # a damaged file that still matched its manifest is very unlikely, but be clear
        raise UserError(
            f"checkpoint {ckpt} cannot be read ({type(e).__name__}); delete it to use an older one"
        ) from None
    own = model.state_dict()
    differ = sorted(set(state) ^ set(own)) or [k for k in own if tuple(state[k].shape) != tuple(own[k].shape)]
    if differ:
        k = differ[0]
        detail = (
            f"{k}: {tuple(state[k].shape)} in the checkpoint, {tuple(own[k].shape)} in the model"
            if k in state and k in own
            else f"{k} only in the {'checkpoint' if k in state else 'model'}"
        )
        raise UserError(
            f"checkpoint {ckpt} was written by a model of another architecture ({detail}); "
            "resume with the config it was saved with"
        )
    if dist.is_fsdp(model):
        dist.load_full_into_sharded(model, optimizer, state, opt_state)
        return trainer_state
    model.load_state_dict(state)
    if optimizer is not None and opt_state is not None:
        optimizer.load_state_dict(opt_state)
    return trainer_state
