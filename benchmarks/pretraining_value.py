"""The value of pretraining, measured: a pretrained masklm model vs the same architecture from random
initialisation, fine-tuned identically on Rotten Tomatoes sentiment (seeded 80/10/10 split, test accuracy).

    python -m benchmarks.pretraining_value --run runs/demo            # after `masklm pretrain` (the demo)
    python -m benchmarks.pretraining_value --run runs/demo runs/longer   # several budgets, one random twin
    python -m benchmarks.pretraining_value --run runs/demo --epochs 1 --limit 2000   # a quick look

All starts get the same data, seed, epochs, learning rate, batch size and max length; only the starting weights
differ. Several runs (of the same architecture and tokenizer, e.g. the demo and a longer run of the same preset)
show how the gain grows with pretraining. Appends a table to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import add_common_args, append_docs, table
from benchmarks.finetune_vs_hf import rotten_tomatoes, write_csv
from masklm import finetune as ft  # noqa: E402
from masklm.model.heads import MaskedLM  # noqa: E402
from masklm.model.io import load_model, save_model  # noqa: E402

RANDOM = "random init (same architecture and tokenizer)"


def random_twin(run: Path, out: Path, seed: int) -> Path:
    """A model folder with the run's architecture and tokenizer but freshly initialised weights."""
    model, tokenizer, _ = load_model(run, architecture="MaskedLM")
    torch.manual_seed(seed)
    save_model(MaskedLM(model.cfg), out, tokenizer)
    return out


def describe(run: Path) -> str:
    """A row label: the run folder with its pretraining tokens and held-out MLM accuracy (from summary.json)."""
    summary = run / "summary.json"
    if not summary.is_file():
        return f"pretrained: `{run}`"
    info = json.loads(summary.read_text())
    acc = (info.get("eval") or {}).get("accuracy")
    return f"pretrained: `{run}` ({info['tokens'] / 1e6:.1f}M tokens, {info['train_time_s'] / 60:.0f} min" + (
        f", held-out MLM accuracy {acc:.3f})" if acc is not None else ")"
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--run", nargs="+", default=["runs/demo"], help="pretraining run folders (or model folders)"
    )
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, default=None, help="use only this many training rows")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    add_common_args(p)
    args = p.parse_args()

    train, val, test = rotten_tomatoes(args.seed)
    if args.limit:
        train = train[: args.limit]
    overrides = {
        "train.epochs": args.epochs,
        "train.lr": args.lr,
        "train.batch_size": args.batch_size,
        "train.seed": args.seed,
        "train.threads": args.threads,
        "data.max_length": args.max_length,
        "train.precision": "fp32",  # the same numbers on any CPU
    }
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        files = {
            name: write_csv(work / f"{name}.csv", rows)
            for name, rows in (("train", train), ("val", val), ("test", test))
        }
        starts = {describe(Path(run)): Path(run) for run in args.run}
        starts[RANDOM] = random_twin(Path(args.run[0]), work / "random", args.seed)
        for name, model_dir in starts.items():
            t0 = time.perf_counter()
            out = work / f"start{len(results)}"
            ft.finetune(
                ft.build_config(overrides), "classification", model_dir, files["train"], files["val"], out
            )
            test_metrics = ft.evaluate_model(out / "model", files["test"], {"train.threads": args.threads})
            results[name] = (test_metrics["accuracy"], test_metrics["macro_f1"], time.perf_counter() - t0)

    rows = [
        [name, f"{acc * 100:.2f}", f"{f1 * 100:.2f}", f"{wall:.0f} s"]
        for name, (acc, f1, wall) in results.items()
    ]
    body = table(["start", "test accuracy", "test macro-F1", "fine-tune wall"], rows)
    random_acc = results[RANDOM][0]
    gains = ", ".join(
        f"{(acc - random_acc) * 100:+.2f}" for name, (acc, _, _) in results.items() if name != RANDOM
    )
    body += (
        f"\n\nRotten Tomatoes ({len(train)} train / {len(val)} val / {len(test)} test rows), "
        f"{args.epochs} epochs, lr {args.lr}, batch {args.batch_size}, max length {args.max_length}, seed "
        f"{args.seed}. Accuracy points added by pretraining, per run above: {gains}.\n"
    )
    print(body)
    if not args.no_docs:
        append_docs(
            "Value of pretraining: fine-tuning from the demo model vs random init",
            body,
            args.shared,
            f"{args.threads} threads",
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
