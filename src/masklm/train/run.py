"""The run skeleton: what every training command (pretrain, finetune) does around fit(), in one place.

A command keeps what is its own (reading its data, building its model, batches, loss, evaluation, summary and
final model) and lets a `Run` do the rest, in this order:

    run = Run(run_dir, resume=resume, overwrite=overwrite)    # 1. refuse a bad --output, before any work
    cfg = run.resume_config(cfg, changes, load)               # 2. --resume: the saved config + allowed changes
    device = run.setup(cfg)                                   # 3. torchrun, device, threads, seed, train.log
    ... read the data and build the model: every refusal before the run folder is touched ...
    resume_from = run.open()                                  # 4. make (or replace) the folder; newest checkpoint
    run.write_files(cfg.to_dict(), command_line(argv), files)  # 5. rank 0: config.yaml, command.txt, files
    trainable = run.build(model, cfg, device)                 # 6. wrap (DDP / FSDP), optimizer, torch.compile
    run.announce("pretraining", model, cfg.train, [details])  # 7. the start-of-run line
    result = run.fit(trainable, cfg.train, budget=..., make_batch=..., loss_fn=..., evaluate=...,
                     tokens_per_step=...)                     # 8. fit(), resumed from `resume_from`
    if result.stopped_by_signal:
        return run.stopped(result)                            # 9a. a signal: the checkpoint is written
    ... the summary dict; the final model (rank 0; `full_model` gathers FSDP shards) ...
    return run.finish(summary)                                # 9b. summary.json, curves.png, shut down

`cfg` is any config dataclass with a `train` section (TrainConfig or a subclass), optionally a `dist` section, a
`to_dict()` and a `validate()`; `load` rebuilds one from config.yaml's dict (default: the pretraining Config).

The resume rule, for every command: a resumed run continues with its saved config.yaml. Settings given again on
the command line must equal the saved ones, except those in RESUME_FREE and dist.*; `check_resume_settings`
refuses any other difference and `resume_config` applies the allowed ones (docs/pretraining.md, "Resume").
"""

from __future__ import annotations

import copy
import os
import shlex
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
import yaml
from torch import nn

from masklm import dist
from masklm.config import apply_dict, check_device, config_from_dict
from masklm.errors import UserError
from masklm.train import checkpoint as ckpt
from masklm.train.logger import check_log_kind, write_run_results
from masklm.train.loop import FitResult, fit, resolve_precision
from masklm.train.optim import make_optimizer
from masklm.utils import atomic_write_text, log, pick_device, refuse_path_through_file

C = TypeVar("C")

# What a resumed run may change (besides dist.*): the budget, how the run runs, and settings that act from the
# next step on without changing the data stream or the model (a lower learning rate after a non-finite stop, say).
# Changing any of them gives up bit-exactness with an uninterrupted run, knowingly.
RESUME_FREE = (
    "train.max_steps", "train.max_tokens", "train.max_minutes", "train.epochs",  # the budget
    "train.threads", "train.device", "train.precision", "train.compile", "train.log",  # how it runs
    "train.eval_every", "train.eval_epochs", "train.eval_sequences", "train.eval_batch_size", "train.log_every",  # how often
    "train.eval_pairs",
    "train.checkpoint_every", "train.keep_last",
    "train.lr", "train.clip_norm", "train.nonfinite",  # from the next step on
)  # fmt: skip


# ----------------------------------------------------------------------------------------------------------------
# The run folder


Inputs = Sequence[tuple[str, "str | Path"]]  # what a run reads, by the option that names it: ("--data", path)


def check_run_dir(
    run_dir: Path, resume: bool, overwrite: bool, what: str = "run folder", inputs: Inputs = ()
) -> None:
    """The refusals of `prepare_run_dir`, without touching anything: call it before any other work.

    A folder holding only the prepared `data/` of this run (pretrain --input) counts as new. `what` names the
    folder in messages ("output folder" for fine-tuning). `inputs`: the files and folders the run reads; an
    --overwrite that would delete one of them (it lies inside the run folder) is refused.
    """
    run_dir = Path(run_dir)
    if resume and overwrite:
        raise UserError(
            "--resume continues the run and --overwrite replaces it; pass one of them (the same command plus --resume "
            "to continue)"
        )
    refuse_path_through_file(run_dir)
    if run_dir.is_symlink() and not run_dir.exists():
        raise UserError(
            f"{what} {run_dir} is a symbolic link to {os.path.realpath(run_dir)}, which does not exist; fix the link "
            "or choose another --output"
        )
    if run_dir.exists() and not run_dir.is_dir():
        # (said first: --resume or --overwrite, which "already exists" would suggest, cannot help a file)
        raise UserError(f"{what} {run_dir} is a file, not a folder; choose another --output")
    if run_dir.exists() and holds_more_than_its_data(run_dir):
        if not (resume or overwrite):
            raise UserError(
                f"{what} {run_dir} already exists; pass --resume to continue it, --overwrite to replace it, "
                "or choose another --output"
            )
        looks_like_run = any(
            (run_dir / name).exists() for name in ("config.yaml", "metrics.jsonl", "checkpoints")
        )
        if resume and not looks_like_run:  # a run killed before it wrote anything is empty (or holds data/)
            raise UserError(
                f"--resume: {run_dir} is not a masklm run folder (no config.yaml, metrics.jsonl or checkpoints), "
                "so there is no run to continue in it; pass the run's own --output, or start a new run with "
                "another --output"
            )
        if resume:
            return
        if not (run_dir / "config.yaml").is_file() and not (run_dir / "metrics.jsonl").is_file():
            raise UserError(
                f"--overwrite refuses to delete {run_dir}: it does not look like a masklm run folder; "
                "choose another --output"
            )
        if run_dir.is_symlink():  # rmtree deletes no folder through a link: name the one it would replace
            raise UserError(
                f"--overwrite: {run_dir} is a symbolic link to {run_dir.resolve()}, and --overwrite replaces a run "
                f"folder by deleting it; pass --output {run_dir.resolve()} --overwrite to replace that folder, or "
                "choose another --output"
            )
        for option, path in inputs:
            if Path(path).resolve() == run_dir.resolve():
                raise UserError(
                    f"--overwrite would delete {run_dir}, the {option} itself; choose another --output"
                )
            if Path(path).resolve().is_relative_to(run_dir.resolve()):
                raise UserError(
                    f"--overwrite would delete {run_dir}, which holds {option} {path}; choose another --output "
                    f"or move {Path(path).name} out of {run_dir} first"
                )
    elif resume and not run_dir.exists():
        raise UserError(f"--resume: {what} {run_dir} does not exist; start the run without --resume")


def holds_more_than_its_data(run_dir: Path) -> bool:
    """Whether a run folder holds anything but the data `pretrain --input` prepares into it: `data/`, and the
    hidden `.data.tmp-*` folder a kill during that preparation leaves behind (a folder that holds only them
    counts as new)."""
    return any(p.name != "data" and not p.name.startswith(".data.tmp-") for p in run_dir.iterdir())


def prepare_run_dir(run_dir: Path, resume: bool, overwrite: bool, inputs: Inputs = ()) -> None:
    """Refuse an existing run folder unless resuming or overwriting (`check_run_dir`), then, on rank 0 once every
    process has looked: make it and hold it (`hold_run_dir`), look again under the hold, and replace it when
    overwriting."""
    run_dir = Path(run_dir)
    check_run_dir(run_dir, resume, overwrite, inputs=inputs)
    dist.barrier()  # every process has looked before rank 0 deletes

    def claim() -> None:
        run_dir.mkdir(parents=True, exist_ok=True)
        hold_run_dir(run_dir)
        # what another process did between the first look and the hold (made the folder and trained in it)
        check_run_dir(run_dir, resume, overwrite, inputs=inputs)
        if overwrite and not resume and holds_more_than_its_data(run_dir):
            shutil.rmtree(run_dir)
            run_dir.mkdir()
            hold_run_dir(run_dir)

    dist.on_rank0(claim, "making the run folder")
    run_dir.mkdir(parents=True, exist_ok=True)


# The run folders this process holds: resolved path -> (open descriptor of the folder, its inode). The kernel
# drops a hold when the descriptor closes, which it does when the process ends, however it ends (kill -9 too).
_HELD: dict[str, tuple[int, int]] = {}


def hold_run_dir(run_dir: Path) -> None:
    """Hold `run_dir` (an exclusive flock on the folder itself) for the rest of this process, so that a second
    masklm process training into it (a second --resume, two new runs started at once, an --overwrite of a run
    still training) is refused instead of writing over it. Idempotent; where the file system has no flock (some
    network mounts), runs go on unheld."""
    try:
        import fcntl
    except ImportError:  # not on POSIX: no holds
        return
    key = str(run_dir.resolve())
    inode = run_dir.stat().st_ino
    if key in _HELD:
        fd, held_inode = _HELD[key]
        if held_inode == inode:
            return
        os.close(fd)  # the folder was replaced (--overwrite): the hold moves to the new one
        del _HELD[key]
    fd = os.open(run_dir, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise UserError(
            f"{run_dir} is in use: another masklm process is training in it; wait for that run to end (or stop "
            "it; --resume continues it later), or choose another --output"
        ) from None
    except OSError:  # no flock on this file system
        os.close(fd)
        return
    _HELD[key] = (fd, inode)


def release_run_dir(run_dir: Path) -> None:
    """Drop this process's hold on `run_dir` (a run that ended; others may resume it now)."""
    held = _HELD.pop(str(Path(run_dir).resolve()), None)
    if held is not None:
        os.close(held[0])


def check_budget_ahead(resume_from: Path | None, steps: int | None) -> None:
    """A resumed run's budget in steps may not be below the step its checkpoint reached: such a run would train
    nothing and record a budget it had passed (refused before config.yaml is rewritten). Equal is a finished run
    resumed as it was: nothing to train, its last evaluation stands (`fit`)."""
    reached = ckpt.step_of(resume_from) if resume_from is not None else -1
    if steps is not None and steps < reached:
        raise UserError(
            f"--resume: the run is at step {reached} already, past a budget of {steps} steps; give a larger "
            "budget to train on (or none, to keep the run's own)"
        )


def new_data_dir(run_dir: Path) -> Path:
    """Where `pretrain --input --overwrite` prepares the new text, beside the run it replaces."""
    return run_dir.parent / f".{run_dir.name}.new-data"


# ----------------------------------------------------------------------------------------------------------------
# The resume rule


def resume_allows(key: str) -> bool:
    """Whether a resumed run may change the dotted setting `key`."""
    return key in RESUME_FREE or key.startswith("dist.")


def read_saved_config(run_dir: Path) -> dict[str, Any] | None:
    """config.yaml of a run folder as a dict; None when there is none (a run killed before writing it)."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        return None
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError):
        raise UserError(
            f"{path} is not valid YAML; the run folder is damaged: put its config.yaml back, or start a new run "
            "with another --output"
        ) from None
    # an empty or non-mapping file read as the defaults gave "a model of another architecture" at the checkpoint
    if not isinstance(values, dict) or not values:
        raise UserError(
            f"{path} holds no settings (masklm writes a mapping of sections); the run folder is damaged: put its "
            "config.yaml back, or start a new run with another --output"
        )
    return values


COMMANDS = {"pretrain": "pretraining", "finetune": "fine-tuning"}  # the training commands, by what they do


def saved_command(values: dict[str, Any]) -> str | None:
    """Which training command wrote a saved config.yaml (as a dict): "finetune" (its `run` and `head`
    sections), "pretrain" (`model` and `mask`), or None when it shows neither."""
    if "run" in values or "head" in values:
        return "finetune"
    if "mask" in values or "model" in values:
        return "pretrain"
    return None


def check_saved_command(run_dir: Path, command: str) -> None:
    """--resume: refuse the run folder of the other training command (a fine-tuning run given to pretrain,
    or a pretraining run to finetune), whose config.yaml would be read as settings of unknown names."""
    values = read_saved_config(run_dir)
    saved = saved_command(values) if values else None
    if saved is None or saved == command:
        return
    hint = (
        f"; to fine-tune its model, pass --model {run_dir} and another --output"
        if saved == "pretrain"
        else ""
    )
    raise UserError(
        f"--resume: {run_dir} is a {COMMANDS[saved]} run, not a {COMMANDS[command]} one; continue it with "
        f"masklm {saved} --output {run_dir} --resume{hint}"
    )


def check_resume_settings(
    run_dir: Path, settings: dict[str, Any], load: Callable[[dict[str, Any]], Any] = config_from_dict
) -> None:
    """Refuse command-line `settings` (dotted keys) that differ from the run's saved config, except the
    RESUME_FREE ones and dist.*. `load` rebuilds the config from config.yaml's dict."""
    values = read_saved_config(run_dir)
    if values is None:
        return
    saved = load(values)
    for key, value in settings.items():
        if resume_allows(key):
            continue
        section, _, name = key.partition(".")
        given = copy.deepcopy(saved)
        apply_dict(given, {key: value}, "the command line")
        old, new = getattr(getattr(saved, section), name), getattr(getattr(given, section), name)
        if old != new:
            raise UserError(
                f"--resume continues {run_dir} with its saved settings, but {key}={new} differs from the run's "
                f"{old}; drop it (a resumed run may change only {', '.join(RESUME_FREE)} and dist.*) or start a "
                "new run with another --output"
            )


def resume_config(
    run_dir: Path,
    cfg: C,
    settings: dict[str, Any],
    load: Callable[[dict[str, Any]], C] = config_from_dict,  # type: ignore[assignment]
) -> C:
    """The config a resumed run continues with: the saved one, with the RESUME_FREE settings of `settings` (what
    this command set explicitly) applied and the `dist` section (how to run, not what to train) of `cfg`.
    Refuses a setting that may not change. A folder without config.yaml keeps `cfg`."""
    values = read_saved_config(run_dir)
    if values is None:
        checkpoints = Path(run_dir) / "checkpoints"
        if checkpoints.is_dir() and any(checkpoints.iterdir()):
            # config.yaml is written before the first step: a run with checkpoints lost it afterwards, and the
            # command's settings (the defaults where it gives none) would continue it as another run
            raise UserError(
                f"--resume: {run_dir} has checkpoints but no config.yaml (its settings); the run folder is damaged: "
                "put its config.yaml back, or start a new run with another --output"
            )
        return cfg
    check_resume_settings(run_dir, settings, load)
    saved = load(values)
    apply_dict(saved, {k: v for k, v in settings.items() if k in RESUME_FREE}, "the command line")
    if hasattr(saved, "dist") and hasattr(cfg, "dist"):
        saved.dist = cfg.dist
    return saved.validate()


# ----------------------------------------------------------------------------------------------------------------
# The skeleton


def command_line(argv: Sequence[str]) -> str:
    """What RUN/command.txt holds: `masklm` and the arguments as typed (the CLI's `args.argv`), shell-quoted."""
    return " ".join(shlex.quote(a) for a in ["masklm", *map(str, argv)])


@dataclass
class Trainable:
    """The model as trained: the plain module (to save), the one fit drives (DDP / FSDP / compiled) and its
    optimizer."""

    model: nn.Module
    train_model: nn.Module
    optimizer: torch.optim.Optimizer


class Run:
    """One training run in one folder; see the module's docstring for the order of the calls."""

    def __init__(
        self,
        run_dir: str | Path,
        *,
        resume: bool,
        overwrite: bool,
        what: str = "run folder",
        inputs: Inputs = (),
        command: str = "pretrain",
    ) -> None:
        """`inputs`: what the run reads (`check_run_dir`), so --overwrite never deletes it. `command`: the
        command that trains it ("pretrain" or "finetune"), whose run folders alone --resume continues."""
        self.run_dir, self.resume, self.overwrite = Path(run_dir), resume, overwrite
        self.command = command
        self.inputs = list(inputs)
        self.resume_from: Path | None = None
        self.device = torch.device("cpu")
        self.wall_s = 0.0  # fit's wall-clock time in this session
        check_run_dir(self.run_dir, resume, overwrite, what, self.inputs)

    def resume_config(
        self,
        cfg: C,
        settings: dict[str, Any] | None,
        load: Callable[[dict[str, Any]], C] = config_from_dict,  # type: ignore[assignment]
    ) -> C:
        """With --resume, the saved config plus the allowed changes (`resume_config`); otherwise `cfg`."""
        if not self.resume:
            return cfg
        check_saved_command(self.run_dir, self.command)
        return resume_config(self.run_dir, cfg, settings or {}, load)

    def setup(self, cfg: Any) -> torch.device:
        """Join torchrun's process group, pick the device, set CPU threads and seed torch; refuse
        train.log=tensorboard without the package. Returns the device."""
        t = cfg.train
        check_log_kind(getattr(t, "log", "jsonl"))
        check_device(t.device, t.precision)
        backend = getattr(getattr(cfg, "dist", None), "backend", "auto")
        info = dist.init(backend, t.device)
        self.device = info.device or pick_device(t.device)
        if t.threads and self.device.type == "cpu":
            torch.set_num_threads(t.threads)
        torch.manual_seed(t.seed)
        return self.device

    def open(self) -> Path | None:
        """Make the run folder (replacing it with --overwrite); with --resume, the newest complete checkpoint.
        What a killed `pretrain --input --overwrite` staged beside the folder goes: no process holding the run
        still writes it (a live --overwrite moved its staged text in before this call)."""
        prepare_run_dir(self.run_dir, self.resume, self.overwrite, self.inputs)
        if dist.rank() == 0:
            shutil.rmtree(new_data_dir(self.run_dir), ignore_errors=True)
        if self.resume:
            self.resume_from = ckpt.latest_checkpoint(self.run_dir / "checkpoints")
            if self.resume_from is None:
                log(
                    f"--resume: no complete checkpoint in {self.run_dir}/checkpoints; starting from the beginning"
                )
        return self.resume_from

    def write_files(
        self, config: dict[str, Any], command: str | None, files: dict[str, str] | None = None
    ) -> None:
        """Rank 0: config.yaml, then `files` (name → text), then command.txt (a new run's command only)."""
        if dist.rank() != 0:
            return
        atomic_write_text(self.run_dir / "config.yaml", yaml.safe_dump(config, sort_keys=False))
        for name, text in (files or {}).items():
            atomic_write_text(self.run_dir / name, text)
        # (a resume that starts over, no checkpoint having been written, keeps the first session's command)
        if command and (not self.resume or not (self.run_dir / "command.txt").is_file()):
            atomic_write_text(self.run_dir / "command.txt", command + "\n")

    def build(self, model: nn.Module, cfg: Any, device: torch.device) -> Trainable:
        """The model on its device, wrapped for the process group, its optimizer (after wrapping: FSDP replaces
        the parameters), and torch.compile when train.compile."""
        model.to(device)
        train_model = dist.wrap(model, cfg, device)
        optimizer = make_optimizer(model, cfg.train, device)
        if cfg.train.compile:
            train_model = compiled(train_model, device)
        return Trainable(model, train_model, optimizer)

    def announce(
        self, action: str, model: nn.Module, train: Any, details: Sequence[str], purpose: str | None = None
    ) -> None:
        """The start-of-run line: `action` (e.g. "pretraining"), size, `purpose`, device, precision, details."""
        size = sum(p.numel() for p in model.parameters()) / 1e6
        precision = resolve_precision(train.precision, self.device)
        head = f"{action} {size:.2f}M parameters" + (f" for {purpose}" if purpose else "")
        log(" | ".join([f"{head} on {self.device} ({precision})", *details]))

    def fit(self, trainable: Trainable, train: Any, **fit_args: Any) -> FitResult:
        """fit() on the trainable, in this folder, from the checkpoint `open` found, averaging across processes;
        `fit_args` are fit's other keywords (budget, make_batch, loss_fn, evaluate, tokens_per_step, ...).

        A resumed run's summary.json (an earlier session's end) goes first: until this session ends and writes its
        own, the run is unfinished (`masklm compare` showed a run stopped again as finished, at the old step)."""
        if self.resume and dist.rank() == 0:
            (self.run_dir / "summary.json").unlink(missing_ok=True)
        start = time.perf_counter()
        result = fit(
            trainable.train_model,
            trainable.optimizer,
            train,
            run_dir=self.run_dir,
            device=self.device,
            resume_from=self.resume_from,
            reduce=dist.all_reduce_mean,
            no_sync=dist.no_sync(trainable.train_model),
            **fit_args,
        )
        self.wall_s = time.perf_counter() - start
        return result

    def stopped(self, result: FitResult) -> dict[str, Any]:
        """A run stopped by a signal (its checkpoint written): shut down; what the command returns."""
        release_run_dir(self.run_dir)
        dist.shutdown()
        return {"stopped": True, "step": result.step}

    def finish(self, summary: dict[str, Any]) -> dict[str, Any]:
        """Rank 0: summary.json and curves.png; then leave the process group. Returns `summary`."""
        if dist.rank() == 0:
            write_run_results(self.run_dir, summary)
        release_run_dir(self.run_dir)
        dist.shutdown()
        return summary


def compiled(model: nn.Module, device: torch.device) -> nn.Module:
    """torch.compile(model), with deterministic algorithms on; on a CPU without a C++ compiler (inductor writes C++
    for the CPU and would fail at the first step), the model itself, after one line saying so.

    Deterministic algorithms: without them, inductor's CPU kernels gave a compiled run resumed from its checkpoint
    weights that differed in the last bits from the uninterrupted run's (the embeddings' gradients first); with
    them the two are equal bit for bit (tests/test_compile.py). warn_only: an operator without a deterministic
    version warns rather than stopping the run."""
    if device.type == "cpu" and not cpp_compiler():
        log(
            "train.compile: no C++ compiler found (inductor needs g++ or clang++ on CPU); training without compile"
        )
        return model
    torch.use_deterministic_algorithms(True, warn_only=True)
    return torch.compile(model)


def cpp_compiler() -> str | None:
    """The C++ compiler inductor would use on CPU, or None."""
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler

        return get_cpp_compiler()
    except Exception:  # a private API: any failure means "none we can use"
        return None


def full_model(model: nn.Module, rebuild: Callable[[], nn.Module]) -> nn.Module:
    """The trained model as one plain module on rank 0: under FSDP its shards gathered (collective) into
    `rebuild()`, a fresh module of the same architecture; otherwise `model` itself."""
    if not dist.is_fsdp(model):
        return model
    state = dist.full_state_dict(model)
    if dist.rank() != 0:
        return model
    final = rebuild()
    final.load_state_dict(state)
    return final
