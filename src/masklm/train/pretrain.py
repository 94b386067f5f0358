"""pretrain(): prepared shards → masked batches → fit() → a run folder.

The run folder:
    config.yaml     the full resolved config          command.txt   the command that made the run
    tokenizer.json  the tokenizer                     metrics.jsonl one JSON line per log / eval
    checkpoints/    step_*/ (see train/checkpoint.py) model/        final weights + config + tokenizer
    curves.png      loss and accuracy against tokens  summary.json  final eval metrics, tokens, time, tokens/s
"""

from __future__ import annotations

import hashlib
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from torch import nn

from masklm import dist
from masklm.config import Config
from masklm.data.masking import mask_tokens
from masklm.data.shards import PackedDataset, batch_indices
from masklm.data.tokenizer import load_tokenizer, special_ids, tokenizer_hash
from masklm.errors import UserError
from masklm.model.heads import MaskedLM
from masklm.model.io import ModelInfo, load_model, save_model
from masklm.train import checkpoint as ckpt
from masklm.train.loop import Budget, perplexity
from masklm.train.run import Run, full_model
from masklm.utils import log


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


def load_splits(data_dir: Path) -> tuple[PackedDataset, PackedDataset | None]:
    """The prepared train split and the validation split (None when there is none or it is empty)."""
    train_ds = PackedDataset(data_dir, "train")
    if len(train_ds) == 0:
        raise UserError(f"{data_dir} holds no training sequences; add more text and run masklm prepare again")
    val_ds = PackedDataset(data_dir, "val") if (data_dir / "val").exists() else None
    return train_ds, (val_ds if val_ds is not None and len(val_ds) > 0 else None)


def load_data_tokenizer(data_dir: Path, run: Run) -> Tokenizer:
    """The data's tokenizer; a resumed run refuses data prepared with another one than it was trained with."""
    tokenizer = load_tokenizer(data_dir / "tokenizer.json")
    saved = run.run_dir / "tokenizer.json"
    if run.resume and saved.is_file() and tokenizer_hash(load_tokenizer(saved)) != tokenizer_hash(tokenizer):
        raise UserError(
            f"--resume: {data_dir} was prepared with another tokenizer than the run in {run.run_dir} was trained "
            "with; pass the --data the run was started with"
        )
    return tokenizer


def fit_config_to_data(cfg: Config, tokenizer: Tokenizer, seq_len: int) -> None:
    """The prepared data decides the sequence length, the tokenizer the vocabulary and the padding id."""
    cfg.data.seq_len = seq_len
    cfg.model.vocab_size = tokenizer.get_vocab_size()
    cfg.model.pad_token_id = special_ids(tokenizer).pad
    cfg.validate()


def build_model(
    cfg: Config, tokenizer: Tokenizer, init_from: str | Path | None, data_dir: Path
) -> tuple[MaskedLM, list[str]]:
    """A new MaskedLM from cfg.model, or the one in `init_from` (which then sets cfg.model); and its notes."""
    notes: list[str] = []
    if init_from is None:
        model = MaskedLM(cfg.model)
    else:
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
    seq_len, m = cfg.data.seq_len, cfg.model
    if seq_len > m.max_position_embeddings and m.position == "absolute":
        raise UserError(
            f"the data's seq_len ({seq_len}) is above the model's max_position_embeddings "
            f"({m.max_position_embeddings}); prepare with a smaller --seq-len"
        )
    return model, notes  # type: ignore[return-value]


def keep_global_batch(cfg: Config, resume_from: Path | None) -> None:
    """A resumed run keeps its global batch with any number of processes, so the data stream and the schedule
    continue unchanged: the micro-batch and the accumulation are split again (`split_global_batch`)."""
    saved_batch = ckpt.read_trainer_state(resume_from).get("global_batch") if resume_from else None
    if saved_batch is None:
        return
    t = cfg.train
    split = split_global_batch(int(saved_batch), dist.world_size(), t.batch_size)
    if split != (t.batch_size, t.grad_accum):
        log(
            f"resuming with {dist.world_size()} process(es): micro-batch {split[0]} x accumulation "
            f"{split[1]} keeps the global batch of {saved_batch}"
        )
        t.batch_size, t.grad_accum = split


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
    may change the settings in RESUME_FREE, such as the budget (masklm.train.run).
    """
    data_dir = Path(data_dir)
    run = Run(run_dir, resume=resume, overwrite=overwrite)
    train_ds, val_ds = load_splits(data_dir)
    cfg = run.resume_config(cfg, resume_changes)
    device = run.setup(cfg)
    tokenizer = load_data_tokenizer(data_dir, run)
    fit_config_to_data(cfg, tokenizer, int(train_ds.seq_len))
    model, notes = build_model(cfg, tokenizer, init_from, data_dir)
    keep_global_batch(cfg, run.open())
    trainable = run.build(model, cfg, device)
    run.write_files(cfg.to_dict(), command, {"tokenizer.json": tokenizer.to_str()})

    t, world, sp = cfg.train, dist.world_size(), special_ids(tokenizer)
    specials, vocab = [sp.pad, sp.cls, sp.sep, sp.mask, sp.unk], tokenizer.get_vocab_size()
    global_batch = t.batch_size * t.grad_accum * world
    tokens_per_step = global_batch * cfg.data.seq_len
    budget = compute_budget(cfg, len(train_ds), tokens_per_step, max(1, -(-len(train_ds) // global_batch)))
    run.announce("pretraining", model, t, [
        f"{len(train_ds):,} train sequences of {cfg.data.seq_len} tokens",
        f"global batch {global_batch} ({t.batch_size} x {t.grad_accum} accumulation x {world} processes)",
        "budget " + (f"{budget.steps} steps" if budget.steps else f"{budget.minutes} minutes"),
    ])  # fmt: skip
    evaluate = None
    if val_ds is not None:
        val_batches = MaskedBatches(val_ds, cfg, specials, sp.mask, vocab)
        evaluate = partial(
            evaluate_mlm, batches=val_batches, limit=t.eval_sequences, batch_size=t.batch_size, device=device
        )
    result = run.fit(
        trainable,
        t,
        budget=budget,
        make_batch=MaskedBatches(train_ds, cfg, specials, sp.mask, vocab, dist.rank(), world),
        loss_fn=mlm_loss,
        evaluate=evaluate,
        tokens_per_step=tokens_per_step,
        loss_items=masked_tokens,
        extra_state={"global_batch": global_batch, "world_size": world},
    )
    if result.stopped_by_signal:
        return run.stopped(result)

    summary: dict[str, Any] = {
        "steps": result.step,
        "tokens": result.tokens,
        "train_time_s": round(result.elapsed_s, 2),
        "wall_time_s_this_session": round(run.wall_s, 2),
        "tokens_per_s": round(result.tokens / max(result.elapsed_s, 1e-9), 1),
        "skipped_steps": result.skipped_steps,
        "eval": result.last_eval,
        "parameters": sum(p.numel() for p in model.parameters()),
        "global_batch": global_batch,
        "processes": world,
        "seq_len": cfg.data.seq_len,
        "data": str(data_dir),
        "notes": notes,
    }
    if val_ds is not None:
        summary["frequency_baseline_accuracy"] = frequency_baseline(val_ds, specials)
    final = full_model(model, lambda: MaskedLM(cfg.model))
    if dist.rank() == 0:
        extra = {"tokens_seen": result.tokens, "eval": result.last_eval}
        save_model(final, run.run_dir / "model", tokenizer, ModelInfo(architecture="MaskedLM"), extra=extra)
    return run.finish(summary)
