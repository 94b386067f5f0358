"""pretrain(): prepared shards → masked batches → fit() → a run folder.

The run folder:
    config.yaml     the full resolved config          command.txt   the command that made the run
    tokenizer.json  the tokenizer                     metrics.jsonl one JSON line per log / eval
    checkpoints/    step_*/ (see train/checkpoint.py) model/        final weights + config + tokenizer
    curves.png      loss and accuracy against tokens  summary.json  final eval metrics, tokens, time, tokens/s
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tokenizers import Tokenizer
from torch import nn

from masklm import dist
from masklm.config import NO_LIMIT, Config, ModelConfig
from masklm.data.masking import mask_seed, mask_tokens
from masklm.data.mixture import Mixture, Source, parse_source, source_weights
from masklm.data.shards import PackedDataset, find_parts
from masklm.data.tokenizer import load_tokenizer, special_ids, tokenizer_hash
from masklm.errors import UserError
from masklm.infer.score import Scorer, encode_sentences, pair_sentences, read_pairs
from masklm.model.electra import ElectraPreTraining, is_electra_model
from masklm.model.io import ModelInfo, load_model, save_model
from masklm.objectives import Objective, eval_rows, evaluate, objective_for
from masklm.train import checkpoint as ckpt
from masklm.train.loop import Budget, FitResult
from masklm.train.run import Run, check_budget_ahead, full_model
from masklm.train.word_vectors import init_word_embeddings, stream_blocks
from masklm.utils import keep_large_blocks, log


class MaskedBatches:
    """micro_step → {"input_ids", "labels"[, "attention_mask"]}: this process's share of that micro-step.

    `dataset` is one corpus or a Mixture of several: either draws the rows at given stream positions.
    The sequence at position p of the global stream (see `batch_indices`) is always masked with the generator
    seeded by mask_seed(seed, p). Which sequences a step trains on and how each one is masked therefore depend
    only on the step and the global batch, not on how it is split into processes × micro-batch × accumulation.

    With `extras` (the ELECTRA objective) a batch also holds "sample_u" (B, T): one uniform number per token,
    drawn from the same generator after the mask, at which the ELECTRA generator's softmax is sampled; and
    "real" (B, T): the tokens that are neither padding nor special.
    """

    def __init__(
        self,
        dataset: PackedDataset | Mixture,
        cfg: Config,
        specials: list[int],
        mask_id: int,
        vocab_size: int,
        rank: int = 0,
        world_size: int = 1,
        extras: bool = False,
    ) -> None:
        self.dataset, self.cfg, self.extras = dataset, cfg, extras
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

        def mask(rows: slice, g: torch.Generator) -> tuple[torch.Tensor, ...]:
            masked = mask_tokens(
                ids[rows],
                special[rows],
                self.cfg.mask,
                mask_token_id=self.mask_id,
                vocab_size=self.vocab_size,
                generator=g,
                word_starts=word_starts[rows],
            )
            if not self.extras:
                return masked
            return (*masked, torch.rand(ids[rows].shape, generator=g))  # after the mask: it stays the same

        if isinstance(seed, int):
            parts = mask(slice(None), torch.Generator().manual_seed(seed))
        else:
            rows = [mask(slice(i, i + 1), torch.Generator().manual_seed(s)) for i, s in enumerate(seed)]
            parts = tuple(torch.cat(part) for part in zip(*rows))
        batch = {"input_ids": parts[0], "labels": parts[1]}
        if self.extras:
            batch["sample_u"], batch["real"] = parts[2], ~special
        pad = ids == self.pad_id
        if bool(pad.any()):
            batch["attention_mask"] = ~pad
        return batch

    def __call__(self, micro_step: int) -> dict[str, torch.Tensor]:
        t = self.cfg.train
        first = (micro_step * self.world_size + self.rank) * t.batch_size  # stream position of row 0
        ids, ws = self.dataset.draw(np.arange(first, first + t.batch_size, dtype=np.int64), t.seed)
        return self.masked(ids, ws, [mask_seed(t.seed, p) for p in range(first, first + t.batch_size)])


def frequency_baseline(dataset: PackedDataset, specials: list[int], limit: int = 2000) -> float:
    """Accuracy of always guessing the most frequent non-special token, on held-out tokens (of `limit` rows spread
    over the validation split, as evaluations read theirs)."""
    ids, _ = dataset.get(eval_rows(len(dataset), limit))
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


def compute_budget(cfg: Config, tokens_per_step: int, steps_per_epoch: int) -> Budget:
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


DataArg = str | Path | Source | list[str | Path | Source]


def data_sources(data: DataArg) -> list[Source]:
    """The --data arguments as Sources: one folder (or folder of parts), or several DIR[:WEIGHT] for a mixture."""
    items = data if isinstance(data, list) else [data]
    return [item if isinstance(item, Source) else parse_source(str(item)) for item in items]


def data_seq_len(data: DataArg) -> int:
    """The rows' length in prepared data, from its first source's meta.json without opening any shard
    (`load_splits` checks that every source and part has the same)."""
    _, meta = find_parts(data_sources(data)[0].path)[0]
    return int(meta["seq_len"])


def load_splits(data: DataArg) -> tuple[PackedDataset | Mixture, PackedDataset | None]:
    """The prepared train split (several sources: a Mixture) and the validation split (None when there is none
    or it is empty; for a mixture, the sources' validation splits one after another)."""
    sources = data_sources(data)
    paths = [s.path for s in sources]
    resolved = [p.resolve() for p in paths]
    twice = next((p for i, p in enumerate(paths) if resolved[i] in resolved[:i]), None)
    if twice is not None:
        raise UserError(f"--data names {twice} twice; give each source once (a weight sets its share)")
    checked = PackedDataset(paths, "train")  # one tokenizer and seq_len for all sources and parts
    if len(sources) == 1:
        train_ds: PackedDataset | Mixture = checked
        if sources[0].weight is not None:
            log(f"note: a single --data source is used alone; its weight {sources[0].weight} does not matter")
    else:
        parts = [PackedDataset(p, "train") for p in paths]
        names = [s.name for s in sources]
        if len(set(names)) < len(names):
            names = [str(p) for p in paths]
        train_ds = Mixture(parts, source_weights(sources, [len(d) for d in parts]), names)
    if any(len(d) == 0 for d in getattr(train_ds, "datasets", [train_ds])):
        raise UserError(
            f"{' '.join(map(str, paths))} holds no training sequences; add more text and run masklm prepare again"
        )
    # meta.json says whether there is a validation split: a listed shard that is missing is an error, not a run
    # without evaluation
    has_val = all("val" in meta["splits"] for p in paths for _, meta in find_parts(p))
    val_ds = PackedDataset(paths, "val") if has_val else None
    return train_ds, (val_ds if val_ds is not None and len(val_ds) > 0 else None)


def source_tokens(
    data: PackedDataset | Mixture, seed: int, global_batch: int, seq_len: int
) -> Callable[[int], dict[str, Any]] | None:
    """For a mixture, step → {"tokens_by_source": {source: tokens trained on so far}} (positions x seq_len, as
    the run's `tokens` counts them); None for a single source."""
    if not isinstance(data, Mixture):
        return None

    def tokens(step: int) -> dict[str, Any]:
        counts = data.sequences_by_source(step * global_batch, seed)
        return {"tokens_by_source": {name: n * seq_len for name, n in counts.items()}}

    return tokens


FINGERPRINT_ROWS = 64


def data_fingerprint(data: PackedDataset | Mixture, seed: int) -> str:
    """A short hash of the token ids at `FINGERPRINT_ROWS` evenly spaced positions of the training stream (as
    the run draws it with `seed`): other rows, or the same rows in another order, give another hash."""
    positions = np.unique(np.linspace(0, len(data) - 1, min(FINGERPRINT_ROWS, len(data))).astype(np.int64))
    ids, _ = data.draw(positions, seed)
    return hashlib.sha256(ids.numpy().astype(np.int64).tobytes()).hexdigest()[:16]


def _mixture_shares(mixture: list[list[Any]] | None) -> str:
    """A recorded mixture ([[source, rows per block], ...]) as the user writes it: "web 70%, books 30%"."""
    if not mixture:
        return ""
    total = sum(int(count) for _, count in mixture) or 1
    return ", ".join(f"{name} {int(count) / total:.0%}" for name, count in mixture)


def data_state(data: PackedDataset | Mixture, resume_from: Path | None, seed: int) -> dict[str, Any]:
    """What a checkpoint records of the training data, checked on resume: a mixture's sources and positions per
    block (the same stream needs the same sources and weights), the number of sequences and a fingerprint of the
    stream (other data prepared with the run's tokenizer passes the tokenizer check, and would silently change
    the stream the run continues with). What a checkpoint did not record is not checked."""
    state: dict[str, Any] = (
        {"mixture": [[n, int(c)] for n, c in zip(data.names, data.counts)]}
        if isinstance(data, Mixture)
        else {}
    )
    state |= {"train_sequences": len(data), "train_fingerprint": data_fingerprint(data, seed)}
    if resume_from is None:
        return state
    saved = ckpt.read_trainer_state(resume_from)
    if saved.get("mixture") != state.get("mixture"):
        was = _mixture_shares(saved.get("mixture")) or "one source"
        raise UserError(
            f"--resume: the run was trained on other --data sources or weights ({was}); pass the --data it was "
            "started with"
        )
    count, fingerprint = saved.get("train_sequences"), saved.get("train_fingerprint")
    if count is not None and int(count) != len(data):
        raise UserError(
            f"--resume: the run was trained on {int(count):,} sequences, but the --data given holds {len(data):,}; "
            "pass the --data it was started with"
        )
    if fingerprint is not None and fingerprint != state["train_fingerprint"]:
        raise UserError(
            f"--resume: the --data given holds {len(data):,} sequences, as the run's did, but other ones (or in "
            "another order) than the run was trained on; pass the --data it was started with"
        )
    return state


def load_data_tokenizer(data: PackedDataset | Mixture, run: Run) -> Tokenizer:
    """The data's tokenizer, which must be the one that wrote its ids (meta.json's hash: a tokenizer.json copied
    in from elsewhere would index past the vocabulary); a resumed run refuses data prepared with another one than
    it was trained with."""
    tokenizer_path = data.tokenizer_path
    tokenizer = load_tokenizer(tokenizer_path)
    if data.tokenizer_hash and data.tokenizer_hash != tokenizer_hash(tokenizer):
        raise UserError(
            f"{tokenizer_path} is not the tokenizer {tokenizer_path.parent} was prepared with (meta.json records "
            "another); put back the folder's own tokenizer.json, or run masklm prepare again"
        )
    saved = run.run_dir / "tokenizer.json"
    if run.resume and saved.is_file() and tokenizer_hash(load_tokenizer(saved)) != tokenizer_hash(tokenizer):
        raise UserError(
            f"--resume: {tokenizer_path.parent} was prepared with another tokenizer than the run in {run.run_dir} "
            "was trained with; pass the --data the run was started with"
        )
    return tokenizer


def fit_config_to_data(cfg: Config, tokenizer: Tokenizer, seq_len: int) -> None:
    """The prepared data decides the sequence length, the tokenizer the vocabulary and the padding id."""
    cfg.data.seq_len = seq_len
    cfg.model.vocab_size = tokenizer.get_vocab_size()
    cfg.model.pad_token_id = special_ids(tokenizer).pad
    cfg.validate()


def start_model(
    cfg: Config,
    objective: Objective,
    tokenizer: Tokenizer,
    init_from: str | Path | None,
    data_dir: str | Path,
) -> tuple[nn.Module, list[str]]:
    """A new model for the objective from cfg.model, or the one in `init_from` (which then sets cfg.model); and
    its notes. ELECTRA from a model without a generator (BERT, an MLM run) keeps its encoder as the discriminator
    and starts a generator of objective.generator_fraction; from an ELECTRA run, both go on. MLM from an ELECTRA
    run continues its discriminator (the encoder that fine-tuning and export use) with a fresh MLM head."""
    notes: list[str] = []
    if init_from is None:
        model = objective.build(cfg.model)
    else:
        electra_to_mlm = objective.architecture == "MaskedLM" and is_electra_model(init_from)
        want = ElectraPreTraining.architecture if electra_to_mlm else objective.architecture
        model, init_tok, minfo = load_model(init_from, architecture=want)
        if electra_to_mlm:
            discriminator = model
            model = objective.build(discriminator.cfg)
            model.encoder.load_state_dict(discriminator.encoder.state_dict())
            minfo.notes.append(
                f"MLM head initialised from scratch: {init_from} is an ELECTRA model, whose discriminator is the "
                "encoder pretraining continues (its generator is what masklm fill-mask answers from)"
            )
        check_init_from_fits(init_from, model.cfg, init_tok, tokenizer, cfg.data.seq_len, data_dir)
        cfg.model = model.cfg
        notes += minfo.notes
        if isinstance(model, ElectraPreTraining):
            model, note = _electra_generator(model, cfg, fresh=minfo.fresh_head is not None)
            notes += [note] if note else []
        for n in notes:
            log(f"note: {n}")
    if isinstance(model, ElectraPreTraining) and (note := _generator_width_note(model)):
        log(f"note: {note}")
        notes.append(note)
    check_seq_len_fits(cfg.data.seq_len, cfg.model)
    return model, notes


def _generator_width_note(model: ElectraPreTraining) -> str | None:
    """What the generator's width is when it is not objective.generator_fraction of the discriminator's: the
    generator keeps the head size, so its width is a whole number of heads (2 heads at 0.25: one, half the width)."""
    width, whole = model.generator.cfg.hidden_size, model.cfg.hidden_size
    if abs(width / whole - model.generator_fraction) < 1e-6:
        return None
    heads, of_heads = model.generator.cfg.num_attention_heads, model.cfg.num_attention_heads
    return (
        f"the generator is {width} wide, {width / whole:.3g} of the discriminator's {whole} (objective."
        f"generator_fraction {model.generator_fraction:g} rounds to whole heads: {heads} of {of_heads})"
    )


def check_seq_len_fits(seq_len: int, model_cfg: ModelConfig) -> None:
    """A UserError when the data's rows are longer than a model with learned positions has positions for."""
    if model_cfg.max_positions is not None and seq_len > model_cfg.max_positions:
        raise UserError(
            f"the data's seq_len ({seq_len}) is above the model's max_position_embeddings "
            f"({model_cfg.max_position_embeddings}); prepare with a smaller --seq-len"
        )


def start_word_embeddings(
    model: nn.Module, train_ds: PackedDataset | Mixture, tokenizer: Tokenizer, cfg: Config, notes: list[str]
) -> float:
    """train.embedding_init ppmi: the fresh model's word embeddings from the training stream's co-occurrences
    (masklm.train.word_vectors), with a note of how many tokens and how long added to `notes`; returns the
    seconds it took. Every process computes the same."""
    started = time.perf_counter()
    sp = special_ids(tokenizer)
    note = init_word_embeddings(
        model.encoder.input_embeddings.word,
        stream_blocks(train_ds, cfg.train.seed),
        skip=[sp.pad, sp.unk, sp.cls, sp.sep, sp.mask],
        vocab_size=tokenizer.get_vocab_size(),
        std=cfg.model.initializer_range,
        seed=cfg.train.seed,
    )
    log(f"note: {note}")
    notes.append(note)
    return time.perf_counter() - started


def check_init_from_fits(
    init_from: str | Path,
    model_cfg: ModelConfig,
    model_tokenizer: Tokenizer,
    data_tokenizer: Tokenizer,
    seq_len: int,
    data_dir: str | Path,
) -> None:
    """--init-from: the data must be tokenized with the model's own tokenizer and its sequences must fit the
    model's positions; a UserError otherwise. `pretrain --input` asks before it prepares anything."""
    if tokenizer_hash(model_tokenizer) != tokenizer_hash(data_tokenizer):
        raise UserError(
            f"--init-from {init_from} uses a different tokenizer than {data_dir}; prepare the data with "
            f"--tokenizer {init_from} so token ids match"
        )
    check_seq_len_fits(seq_len, model_cfg)


def check_same_model(
    saved: ModelConfig, given: ModelConfig, run_dir: str | Path, init_from: str | Path
) -> None:
    """--resume with --init-from: the model the run was saved with must be the one --init-from brings (its
    checkpoints fit no other); a UserError naming the first setting that differs."""
    changed = [f.name for f in dataclasses.fields(saved) if getattr(given, f.name) != getattr(saved, f.name)]
    if changed:
        name = changed[0]
        raise UserError(
            f"--resume continues {run_dir} with the model it started with, but --init-from {init_from} is another "
            f"one (model.{name}: {getattr(given, name)}, not {getattr(saved, name)}); pass the --init-from the run "
            "started from, or leave it out"
        )


def _electra_generator(
    model: ElectraPreTraining, cfg: Config, fresh: bool
) -> tuple[ElectraPreTraining, str | None]:
    """--init-from with ELECTRA: a fresh generator of the configured width, or an ELECTRA run's own generator (whose
    width then decides objective.generator_fraction)."""
    want = cfg.objective.generator_fraction
    if model.generator_fraction == want:
        return model, None
    if fresh:  # the checkpoint had no generator: start one of the configured width around its encoder
        again = ElectraPreTraining(model.cfg, want)
        again.encoder.load_state_dict(model.encoder.state_dict())
        return again, None
    cfg.objective.generator_fraction = model.generator_fraction
    return model, (
        f"objective.generator_fraction is {model.generator_fraction}, the width of the generator in the "
        f"--init-from model, not {want}"
    )


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


def check_pairs_fit(pairs: list[dict[str, Any]], tokenizer: Tokenizer, model: nn.Module, where: str) -> None:
    """A UserError for a minimal pair `model` cannot score (too long, a special token in its text): refused before
    anything is written, not at the first evaluation."""
    if pairs:
        sentences, names = pair_sentences(pairs)
        encode_sentences(tokenizer, sentences, model.cfg.max_positions or NO_LIMIT, where, names)


def with_pair_accuracy(
    evaluate_fn: Callable[[nn.Module], dict[str, float]] | None,
    lm: nn.Module,
    tokenizer: Tokenizer,
    pairs: list[dict[str, Any]],
) -> Callable[[nn.Module], dict[str, float]]:
    """`evaluate_fn` (if any) plus "pairs_accuracy": the minimal-pair accuracy of `lm` (the plain masked LM:
    every process scores all pairs, the same forward passes in the same order)."""

    def evaluate_with_pairs(model: nn.Module) -> dict[str, float]:
        metrics = evaluate_fn(model) if evaluate_fn is not None else {}
        return {**metrics, "pairs_accuracy": Scorer.from_model(lm, tokenizer).pairs(pairs)["accuracy"]}

    return evaluate_with_pairs


def pretrain(
    cfg: Config,
    data_dir: DataArg,
    run_dir: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    init_from: str | Path | None = None,
    command: str | None = None,
    resume_changes: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Pretrain a masked language model on a prepared data folder; returns summary.json's content.

    `data_dir` is a prepared folder, a folder of parts, or several sources ("DIR:WEIGHT") mixed by weight.

    With `resume`, the run's saved config.yaml is used, not `cfg`; `resume_changes` (dotted keys, as the command
    line sets them: {"train.max_steps": 2000}) may change the settings in RESUME_FREE, such as the budget
    (masklm.train.run). `cfg` itself is not changed.
    """
    keep_large_blocks()  # flat memory and few page faults: a step's buffers reuse the last step's (see there)
    # the caller's config stays as it was (the data's sizes are filled in, and all checked, by fit_config_to_data)
    cfg = copy.deepcopy(cfg)
    sources = data_sources(data_dir)
    data_name = " ".join(str(s.path) for s in sources)
    inputs = [("--data", src.path) for src in sources] + ([("--init-from", init_from)] if init_from else [])
    run = Run(run_dir, resume=resume, overwrite=overwrite, inputs=inputs)
    train_ds, val_ds = load_splits(sources)
    cfg = run.resume_config(cfg, resume_changes)
    pairs = read_pairs(cfg.train.eval_pairs) if cfg.train.eval_pairs else []
    device = run.setup(cfg)
    tokenizer = load_data_tokenizer(train_ds, run)
    fit_config_to_data(cfg, tokenizer, int(train_ds.seq_len))
    objective = objective_for(cfg)
    saved_model = dataclasses.replace(cfg.model)
    model, notes = start_model(cfg, objective, tokenizer, init_from, data_name)
    check_pairs_fit(pairs, tokenizer, model, str(cfg.train.eval_pairs))
    if resume and init_from:
        check_same_model(saved_model, cfg.model, run_dir, init_from)
    objective = objective_for(cfg)  # --init-from may have set the ELECTRA generator's width
    resume_from = run.open()
    spent_s = 0.0  # before the first step, counted as training time
    if resume_from is None and init_from is None and cfg.train.embedding_init == "ppmi":
        spent_s = start_word_embeddings(model, train_ds, tokenizer, cfg, notes)
    keep_global_batch(cfg, resume_from)
    data_record = data_state(train_ds, resume_from, cfg.train.seed)
    trainable = run.build(model, cfg, device)

    t, world, sp = cfg.train, dist.world_size(), special_ids(tokenizer)
    specials, vocab = [sp.pad, sp.cls, sp.sep, sp.mask, sp.unk], tokenizer.get_vocab_size()
    global_batch = t.batch_size * t.grad_accum * world
    tokens_per_step = global_batch * cfg.data.seq_len
    budget = compute_budget(cfg, tokens_per_step, max(1, -(-len(train_ds) // global_batch)))
    check_budget_ahead(resume_from, budget.steps)
    run.write_files(cfg.to_dict(), command, {"tokenizer.json": tokenizer.to_str()})
    run.announce(f"pretraining ({objective.name})", model, t, [
        f"{len(train_ds):,} train sequences of {cfg.data.seq_len} tokens",
        f"global batch {global_batch} ({t.batch_size} x {t.grad_accum} accumulation x {world} processes)",
        f"budget {budget.describe()}",
    ])  # fmt: skip
    evaluate_fn = None
    if val_ds is not None:
        val_batches = MaskedBatches(val_ds, cfg, specials, sp.mask, vocab, extras=objective.extras)
        evaluate_fn = partial(
            evaluate,
            objective=objective,
            batches=val_batches,
            limit=t.eval_sequences,
            batch_size=t.batch_size,
            device=device,
        )
    if t.eval_pairs:
        evaluate_fn = with_pair_accuracy(evaluate_fn, objective.fill_mask_model(model), tokenizer, pairs)
    result = run.fit(
        trainable,
        t,
        budget=budget,
        make_batch=MaskedBatches(
            train_ds, cfg, specials, sp.mask, vocab, dist.rank(), world, extras=objective.extras
        ),
        loss_fn=objective.loss,
        evaluate=evaluate_fn,
        tokens_per_step=tokens_per_step,
        loss_items=objective.loss_items,
        extra_state={"global_batch": global_batch, "world_size": world, **data_record},
        log_extra=source_tokens(train_ds, t.seed, global_batch, cfg.data.seq_len),
        spent_s=spent_s,
    )
    if result.stopped_by_signal:
        return run.stopped(result)

    summary = _summary(result, run, model, cfg, data_name, objective.name, notes)
    if val_ds is not None:
        summary["frequency_baseline_accuracy"] = frequency_baseline(val_ds, specials)
    final = full_model(model, lambda: objective.build(cfg.model))
    if dist.rank() == 0:
        extra = {"tokens_seen": result.tokens, "eval": result.last_eval}
        info = ModelInfo(architecture=objective.architecture, task=objective.info())
        save_model(final, run.run_dir / "model", tokenizer, info, extra=extra)
    return run.finish(summary)


def _summary(
    result: FitResult,
    run: Run,
    model: nn.Module,
    cfg: Config,
    data_dir: str | Path,
    objective: str,
    notes: list[str],
) -> dict[str, Any]:
    """summary.json's content (without the frequency baseline, which needs the validation split)."""
    world = dist.world_size()
    return {
        "steps": result.step,
        "tokens": result.tokens,
        "train_time_s": round(result.elapsed_s, 2),
        "wall_time_s_this_session": round(run.wall_s, 2),
        "tokens_per_s": round(result.tokens / max(result.elapsed_s, 1e-9), 1),
        "skipped_steps": result.skipped_steps,
        "eval": result.last_eval,
        "parameters": sum(p.numel() for p in model.parameters()),
        "global_batch": cfg.train.batch_size * cfg.train.grad_accum * world,
        "processes": world,
        "seq_len": cfg.data.seq_len,
        "data": str(data_dir),
        "objective": objective,
        "notes": notes,
    }
