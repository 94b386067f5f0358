"""pretrain(): prepared shards → masked batches → fit() → a run folder.

The run folder:
    config.yaml     the full resolved config          command.txt   the command that made the run
    tokenizer.json  the tokenizer                     metrics.jsonl one JSON line per log / eval
    checkpoints/    step_*/ (see train/checkpoint.py) model/        final weights + config + tokenizer
    curves.png      loss and accuracy against tokens  summary.json  final eval metrics, tokens, time, tokens/s
"""

from __future__ import annotations

import copy
import hashlib
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from masklm import dist
from masklm.config import Config, apply_dict, config_from_dict
from masklm.data.masking import mask_tokens
from masklm.data.shards import PackedDataset, batch_indices
from masklm.data.tokenizer import load_tokenizer, special_ids, tokenizer_hash
from masklm.errors import UserError
from masklm.model.heads import MaskedLM
from masklm.model.io import ModelInfo, load_model, save_model
from masklm.train import checkpoint as ckpt
from masklm.train.loop import Budget, FitResult, fit, perplexity, resolve_precision, write_run_results
from masklm.train.optim import make_optimizer
from masklm.utils import atomic_write_text, log, pick_device


def mask_seed(seed: int, *key: int) -> int:
    """A generator seed from the run's seed and a key (a stream position in training): masks are pure functions."""
    digest = hashlib.blake2b(":".join(map(str, ("mask", seed, *key))).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


class MaskedBatches:
    """micro_step → {"input_ids", "labels"[, "attention_mask"]}: this process's share of that micro-step.

    The sequence at position p of the global stream (see `batch_indices`) is always masked with the generator
    seeded by mask_seed(seed, p). Which sequences a step trains on and how each one is masked therefore depend
    only on the step and the global batch, not on how it is split into processes × micro-batch × accumulation.
    """

    def __init__(
        self,
        dataset: PackedDataset,
        cfg: Config,
        specials: list[int],
        mask_id: int,
        vocab_size: int,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.dataset, self.cfg = dataset, cfg
        self.rank, self.world_size = rank, world_size
        self.mask_id, self.vocab_size = mask_id, vocab_size
        table = torch.zeros(max(vocab_size, max(specials) + 1), dtype=torch.bool)
        table[specials] = True
        self.special_table = table
        self.pad_id = specials[0]

    def masked(
        self, ids: torch.Tensor, word_starts: torch.Tensor, seed: int | list[int]
    ) -> dict[str, torch.Tensor]:
        """Mask a batch with one generator (an int seed) or each row with its own (a list of seeds, one per row)."""
        special = self.special_table[ids]

        def mask(rows: slice, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
            return mask_tokens(
                ids[rows],
                special[rows],
                self.cfg.mask,
                mask_token_id=self.mask_id,
                vocab_size=self.vocab_size,
                generator=g,
                word_starts=word_starts[rows],
            )

        if isinstance(seed, int):
            inputs, labels = mask(slice(None), torch.Generator().manual_seed(seed))
        else:
            rows = [mask(slice(i, i + 1), torch.Generator().manual_seed(s)) for i, s in enumerate(seed)]
            inputs, labels = (torch.cat(parts) for parts in zip(*rows))
        batch = {"input_ids": inputs, "labels": labels}
        pad = ids == self.pad_id
        if bool(pad.any()):
            batch["attention_mask"] = ~pad
        return batch

    def __call__(self, micro_step: int) -> dict[str, torch.Tensor]:
        t = self.cfg.train
        idx = batch_indices(micro_step, t.batch_size, len(self.dataset), t.seed, self.rank, self.world_size)
        ids, ws = self.dataset.get(idx)
        first = (micro_step * self.world_size + self.rank) * t.batch_size  # stream position of row 0
        return self.masked(ids, ws, [mask_seed(t.seed, p) for p in range(first, first + t.batch_size)])


def masked_tokens(batch: dict[str, torch.Tensor]) -> int:
    """What mlm_loss averages over: fit weights micro-batches by it (see fit's loss_items)."""
    return int((batch["labels"] != -100).sum())


def mlm_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    labels = batch["labels"]
    logits = model(
        batch["input_ids"], batch.get("attention_mask"), None, labels
    )  # (M, V) at masked positions
    return F.cross_entropy(logits.float(), labels[labels != -100])


@torch.no_grad()
def evaluate_mlm(
    model: nn.Module, batches: MaskedBatches, limit: int, batch_size: int, device: torch.device
) -> dict[str, float]:
    """Held-out MLM loss, masked-token accuracy and perplexity, with the same masks at every evaluation (and for
    any batch size or number of processes: each sequence's mask is seeded by its index).

    Each process evaluates a disjoint share of the batches and the sums are all-reduced. Every process runs the
    same number of forward passes (FSDP gathers parameters collectively in each one): a process with no batch
    left in the last round runs a stand-in batch and ignores it.
    """
    ds = batches.dataset
    n = min(limit, len(ds))
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.float64, device=device)
    count = torch.zeros((), dtype=torch.float64, device=device)
    r, w = dist.rank(), dist.world_size()
    starts = range(0, n, batch_size)
    for round_ in range(-(-len(starts) // w)):
        j = round_ * w + r  # this process's batch in this round
        start = starts[j] if j < len(starts) else 0
        idx = np.arange(start, min(n, start + batch_size))
        ids, ws = ds.get(idx)
        masked = batches.masked(ids, ws, [mask_seed(12345, int(i)) for i in idx])  # one per sequence
        batch = {k: v.to(device) for k, v in masked.items()}
        labels = batch["labels"]
        logits = model(batch["input_ids"], batch.get("attention_mask"), None, labels).float()
        if j >= len(starts):
            continue
        target = labels[labels != -100]
        loss_sum += F.cross_entropy(logits, target, reduction="sum").double()
        correct += (logits.argmax(-1) == target).sum().double()
        count += target.numel()
    loss_sum, correct, count = (dist.all_reduce_sum(x) for x in (loss_sum, correct, count))
    loss = float(loss_sum / count.clamp(min=1))
    return {"loss": loss, "accuracy": float(correct / count.clamp(min=1)), "perplexity": perplexity(loss)}


def frequency_baseline(dataset: PackedDataset, specials: list[int], limit: int = 2000) -> float:
    """Accuracy of always guessing the most frequent non-special token, on held-out tokens."""
    ids, _ = dataset.get(np.arange(min(limit, len(dataset))))
    flat = ids.flatten()
    flat = flat[~torch.isin(flat, torch.tensor(specials))]
    if flat.numel() == 0:
        return 0.0
    counts = torch.bincount(flat)
    return float(counts.max() / flat.numel())


def check_run_dir(run_dir: Path, resume: bool, overwrite: bool) -> None:
    """The refusals of `prepare_run_dir`, without touching anything: call it before any other work."""
    run_dir = Path(run_dir)
    if run_dir.exists() and any(p.name != "data" for p in run_dir.iterdir()):
        if resume:
            return
        if not overwrite:
            raise UserError(
                f"run folder {run_dir} already exists; pass --resume to continue it, --overwrite to replace it, "
                "or choose another --output"
            )
        if not (run_dir / "config.yaml").is_file() and not (run_dir / "metrics.jsonl").is_file():
            raise UserError(
                f"--overwrite refuses to delete {run_dir}: it does not look like a masklm run folder; "
                "choose another --output"
            )
    elif resume and not run_dir.exists():
        raise UserError(f"--resume: run folder {run_dir} does not exist; start the run without --resume")


def prepare_run_dir(run_dir: Path, resume: bool, overwrite: bool) -> None:
    """Refuse an existing run folder unless resuming or overwriting. A folder holding only the prepared `data/`
    of this run (pretrain --input) counts as new."""
    run_dir = Path(run_dir)
    check_run_dir(run_dir, resume, overwrite)
    if overwrite and not resume and run_dir.exists() and any(p.name != "data" for p in run_dir.iterdir()):
        dist.barrier()  # every process has looked before rank 0 deletes
        if dist.rank() == 0:
            shutil.rmtree(run_dir)
    dist.barrier()
    run_dir.mkdir(parents=True, exist_ok=True)


# What a resumed run may change: the budget, how it runs (dist.* as well) and settings that act from the next step
# on without changing the data stream or the model (a lower learning rate after a non-finite stop, say). Changing
# any of the latter gives up bit-exactness with an uninterrupted run, knowingly.
RESUME_FREE = (
    "train.max_steps", "train.max_tokens", "train.max_minutes", "train.threads", "train.device",
    "train.lr", "train.clip_norm", "train.nonfinite", "train.precision", "train.compile",
    "train.eval_every", "train.eval_sequences", "train.log_every", "train.checkpoint_every", "train.keep_last",
)  # fmt: skip


def check_resume_settings(run_dir: Path, settings: dict[str, Any]) -> None:
    """--resume continues a run with its saved config.yaml: refuse command-line settings that differ from it.

    Only the RESUME_FREE settings and dist.* may change.
    """
    saved_path = Path(run_dir) / "config.yaml"
    if not saved_path.is_file():
        return
    saved = config_from_dict(yaml.safe_load(saved_path.read_text(encoding="utf-8")))
    for key, value in settings.items():
        if key in RESUME_FREE or key.startswith("dist."):
            continue
        section, _, name = key.partition(".")
        given = copy.deepcopy(saved)
        apply_dict(given, {key: value}, "the command line")
        old, new = getattr(getattr(saved, section), name), getattr(getattr(given, section), name)
        if old != new:
            raise UserError(
                f"--resume continues {run_dir} with its saved settings, but {key}={new} differs from the run's "
                f"{old}; drop it (only the budget, train.lr, how often to log / evaluate / checkpoint, threads, device and "
                "dist.* can change) or start a new run with another --output"
            )


def split_global_batch(global_batch: int, world: int, max_micro: int) -> tuple[int, int]:
    """(micro-batch, accumulation) giving `global_batch` sequences per step over `world` processes, with the
    largest micro-batch not above `max_micro` (the run's own, known to fit in memory).

    How a run resumes with another number of processes: 2 processes × 16 → 1 process × 16 × accumulation 2.
    """
    if global_batch % world:
        raise UserError(
            f"the run's global batch ({global_batch} sequences) does not divide among {world} processes; "
            "resume with a number of processes that divides it"
        )
    share = global_batch // world
    accum = next(a for a in range(1, share + 1) if share % a == 0 and share // a <= max_micro)
    return share // accum, accum


def compute_budget(cfg: Config, n_train: int, tokens_per_step: int, steps_per_epoch: int) -> Budget:
    t = cfg.train
    steps = None
    if t.max_steps is not None:
        steps = t.max_steps
    if t.max_tokens is not None:
        by_tokens = max(1, -(-t.max_tokens // tokens_per_step))
        steps = by_tokens if steps is None else min(steps, by_tokens)
    if steps is None and t.max_minutes is None:
        steps = steps_per_epoch  # no budget given: one pass over the data
    return Budget(steps=steps, minutes=t.max_minutes)


def pretrain(
    cfg: Config,
    data_dir: str | Path,
    run_dir: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    init_from: str | Path | None = None,
    command: str | None = None,
    resume_changes: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Pretrain a masked language model on a prepared data folder; returns summary.json's content.

    With `resume`, the run's saved config.yaml is used; `resume_changes` (dotted keys set on the command line)
    may change the settings in RESUME_FREE, such as the budget.
    """
    data_dir, run_dir = Path(data_dir), Path(run_dir)
    info = dist.init(cfg.dist.backend, cfg.train.device)
    device = pick_device(cfg.train.device) if not info.device else info.device
    if cfg.train.threads and device.type == "cpu":
        torch.set_num_threads(cfg.train.threads)

    train_ds = PackedDataset(data_dir, "train")
    val_ds = PackedDataset(data_dir, "val") if (data_dir / "val").exists() else None
    if len(train_ds) == 0:
        raise UserError(f"{data_dir} holds no training sequences; add more text and run masklm prepare again")

    # Everything that can be wrong is checked before the run folder is touched.
    check_run_dir(run_dir, resume, overwrite)
    if resume and (run_dir / "config.yaml").is_file():
        # The saved config, with only what this command set explicitly (and check_resume_settings allows).
        old = config_from_dict(yaml.safe_load((run_dir / "config.yaml").read_text()))
        changes = {k: v for k, v in (resume_changes or {}).items() if k in RESUME_FREE}
        apply_dict(old, changes, "the command line")
        old.dist = cfg.dist  # how to run (not what to train) comes from this command
        cfg = old.validate()

    tokenizer = load_tokenizer(data_dir / "tokenizer.json")
    run_tokenizer = run_dir / "tokenizer.json"
    if (
        resume
        and run_tokenizer.is_file()
        and tokenizer_hash(load_tokenizer(run_tokenizer)) != tokenizer_hash(tokenizer)
    ):
        raise UserError(
            f"--resume: {data_dir} was prepared with another tokenizer than the run in {run_dir} was trained "
            "with; pass the --data the run was started with"
        )
    sp = special_ids(tokenizer)
    seq_len = int(train_ds.seq_len)
    if cfg.data.seq_len != seq_len:
        cfg.data.seq_len = seq_len  # the prepared data decides the sequence length
    cfg.model.vocab_size = tokenizer.get_vocab_size()
    cfg.model.pad_token_id = sp.pad
    cfg.validate()

    torch.manual_seed(cfg.train.seed)
    notes: list[str] = []
    if init_from is not None:
        model, init_tok, minfo = load_model(init_from, architecture="MaskedLM")
        if tokenizer_hash(init_tok) != tokenizer_hash(tokenizer):
            raise UserError(
                f"--init-from {init_from} uses a different tokenizer than {data_dir}; prepare the data with "
                f"--tokenizer {init_from} so token ids match"
            )
        cfg.model = model.cfg
        notes += minfo.notes
        for n in minfo.notes:
            log(f"note: {n}")
    else:
        model = MaskedLM(cfg.model)
    if seq_len > cfg.model.max_position_embeddings and cfg.model.position == "absolute":
        raise UserError(
            f"the data's seq_len ({seq_len}) is above the model's max_position_embeddings "
            f"({cfg.model.max_position_embeddings}); prepare with a smaller --seq-len"
        )

    resume_from = ckpt.latest_checkpoint(run_dir / "checkpoints") if resume else None
    if resume and resume_from is None:
        log(f"--resume: no complete checkpoint in {run_dir}/checkpoints; starting from the beginning")
    elif resume_from is not None:
        # Same global batch with any number of processes: the data stream and schedule continue unchanged.
        saved_batch = ckpt.read_trainer_state(resume_from).get("global_batch")
        t = cfg.train
        if saved_batch is not None:
            split = split_global_batch(int(saved_batch), dist.world_size(), t.batch_size)
            if split != (t.batch_size, t.grad_accum):
                log(
                    f"resuming with {dist.world_size()} process(es): micro-batch {split[0]} x accumulation "
                    f"{split[1]} keeps the global batch of {saved_batch}"
                )
                t.batch_size, t.grad_accum = split
    prepare_run_dir(run_dir, resume, overwrite)

    model.to(device)
    train_model = dist.wrap(model, cfg, device)
    optimizer = make_optimizer(model, cfg.train, device)  # after wrap: FSDP replaces the parameters
    if cfg.train.compile:
        train_model = torch.compile(train_model)

    if dist.rank() == 0:
        atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        atomic_write_text(run_dir / "tokenizer.json", tokenizer.to_str())
        if command and not resume:
            atomic_write_text(run_dir / "command.txt", command + "\n")

    world = dist.world_size()
    specials = [sp.pad, sp.cls, sp.sep, sp.mask, sp.unk]
    batches = MaskedBatches(train_ds, cfg, specials, sp.mask, tokenizer.get_vocab_size(), dist.rank(), world)
    global_batch = cfg.train.batch_size * cfg.train.grad_accum * world
    tokens_per_step = global_batch * seq_len
    steps_per_epoch = max(1, -(-len(train_ds) // global_batch))
    budget = compute_budget(cfg, len(train_ds), tokens_per_step, steps_per_epoch)
    log(
        f"pretraining {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters on {device} "
        f"({resolve_precision(cfg.train.precision, device)}) | {len(train_ds):,} train sequences of {seq_len} tokens | global batch {global_batch} "
        f"({cfg.train.batch_size} x {cfg.train.grad_accum} accumulation x {world} processes) | budget "
        + (f"{budget.steps} steps" if budget.steps else f"{budget.minutes} minutes")
    )

    evaluate = None
    if val_ds is not None and len(val_ds) > 0:
        val_batches = MaskedBatches(val_ds, cfg, specials, sp.mask, tokenizer.get_vocab_size())

        def evaluate(m: nn.Module) -> dict[str, float]:
            return evaluate_mlm(m, val_batches, cfg.train.eval_sequences, cfg.train.batch_size, device)

    wall_start = time.perf_counter()
    result: FitResult = fit(
        train_model,
        optimizer,
        cfg.train,
        run_dir=run_dir,
        budget=budget,
        make_batch=batches,
        loss_fn=mlm_loss,
        evaluate=evaluate,
        tokens_per_step=tokens_per_step,
        device=device,
        resume_from=resume_from,
        reduce=dist.all_reduce_mean,
        no_sync=dist.no_sync(train_model),
        loss_items=masked_tokens,
        extra_state={"global_batch": global_batch, "world_size": world},
    )
    wall = time.perf_counter() - wall_start
    if result.stopped_by_signal:
        dist.shutdown()
        return {"stopped": True, "step": result.step}

    summary: dict[str, Any] = {
        "steps": result.step,
        "tokens": result.tokens,
        "train_time_s": round(result.elapsed_s, 2),
        "wall_time_s_this_session": round(wall, 2),
        "tokens_per_s": round(result.tokens / max(result.elapsed_s, 1e-9), 1),
        "skipped_steps": result.skipped_steps,
        "eval": result.last_eval,
        "parameters": sum(p.numel() for p in model.parameters()),
        "global_batch": global_batch,
        "processes": world,
        "seq_len": seq_len,
        "data": str(data_dir),
        "notes": notes,
    }
    if val_ds is not None and len(val_ds) > 0:
        summary["frequency_baseline_accuracy"] = frequency_baseline(val_ds, specials)
    final = model
    if dist.is_fsdp(model):  # gather the shards: model/ is always one plain file
        state = dist.full_state_dict(model)
        if dist.rank() == 0:
            final = MaskedLM(cfg.model)
            final.load_state_dict(state)
    if dist.rank() == 0:
        save_model(
            final,
            run_dir / "model",
            tokenizer,
            ModelInfo(architecture="MaskedLM"),
            extra={"tokens_seen": result.tokens, "eval": result.last_eval},
        )
        write_run_results(run_dir, summary)
    dist.shutdown()
    return summary
