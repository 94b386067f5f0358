"""The value of pretraining, measured the honest way: pretrained starts against a random-init twin on Rotten
Tomatoes sentiment, for several label budgets, each start at its own best learning rate, several seeds.

    python -m benchmarks.pretraining_value --run runs/demo                      # labels 100 300 1000 all
    python -m benchmarks.pretraining_value --run runs/mlm runs/electra --labels 300 all --seeds 0 1 2
    python -m benchmarks.pretraining_value --run runs/demo --labels 300 --lrs 3e-4 --seeds 0 --no-docs  # a look
    python -m benchmarks.pretraining_value --run runs/demo --labels 1000 --prompt '{text} it was [MASK] .' \
        --label-words '0=bad,1=good'                                   # prompt-based fine-tuning for every start

For every start (each --run, plus `--init random` on the architecture and tokenizer of --random-of, by default the
first run: the CLI's random-init control) and every label budget N, every learning rate of --lrs is fine-tuned
with every seed of --seeds. Seed s draws the N training rows (the same rows for every start) and seeds the
fine-tuning. The learning rate kept for a start is the one with the best mean validation accuracy; the table
reports test accuracy at that rate, mean and sample standard deviation over the seeds. Few labels get more epochs
(at least --min-steps optimizer steps), the same for every start. The validation part is evaluated after every
epoch (and about eight times more when there are more than eight epochs), as the results cached before
`train.eval_epochs` existed were; `--eval-epochs auto` evaluates as `masklm finetune` does by default instead
(fewer evaluations when the validation part outweighs the training rows).

Each fine-tuning result is cached in --results (JSON lines), so an interrupted sweep goes on where it stopped and
a new run folder adds only its own fine-tunings. Writes two plots beside docs/benchmarks.md (accuracy against
labels; points over random init against pretraining tokens and minutes, by objective; named by --plots) and
appends the table.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import math
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import DOCS, add_common_args, append_docs, mean_sd, read_jsonl, table
from benchmarks.finetune_vs_hf import rotten_tomatoes, write_csv
from masklm import finetune as ft
from masklm.demo import fine_tuning_epochs
from masklm.model.io import resolve_model_dir

RANDOM = "random init"


def describe(run: Path) -> dict[str, Any]:
    """What a pretraining run was: objective, tokens, minutes, held-out accuracy (from its summary.json)."""
    info: dict[str, Any] = {"run": str(run), "objective": "mlm", "tokens": None, "minutes": None, "acc": None}
    summary = run / "summary.json"
    if summary.is_file():
        s = json.loads(summary.read_text())
        eval_ = s.get("eval") or {}
        info.update(
            objective=s.get("objective", "mlm"),
            tokens=s.get("tokens"),
            minutes=round(s.get("train_time_s", 0) / 60, 1),
            acc=eval_.get("accuracy", eval_.get("generator_accuracy")),
        )
    return info


def start_label(info: dict[str, Any]) -> str:
    if info["run"] == RANDOM:
        return "random init (same architecture and tokenizer)"
    extra = [info["objective"]]
    if info["tokens"]:
        extra.append(f"{info['tokens'] / 1e6:.1f}M tokens, {info['minutes']:.0f} min")
    if info["acc"] is not None:
        extra.append(f"held-out masked accuracy {info['acc']:.3f}")
    return f"`{info['run']}` ({', '.join(extra)})"


def epochs_for(n: int, args: argparse.Namespace) -> int:
    """At least --epochs passes and at least --min-steps optimizer steps (as the demo's check counts them)."""
    return fine_tuning_epochs(n, args.batch_size, args.epochs, args.min_steps)


def finetune_once(
    model: Path, init: str, rows: dict[str, list[dict]], lr: float, seed: int, args: argparse.Namespace
) -> dict[str, float]:
    """One fine-tuning: best validation accuracy and the test accuracy of that checkpoint."""
    epochs = epochs_for(len(rows["train"]), args)
    overrides = {
        "train.epochs": epochs,
        "train.lr": lr,
        "train.batch_size": args.batch_size,
        "train.seed": seed,
        "train.threads": args.threads,
        "train.precision": args.precision,
        "data.max_length": args.max_length,
        "train.layer_decay": args.layer_decay,
    }
    task = "classification"
    if (
        args.prompt
    ):  # the MLM head at the template's [MASK] is the classifier: no pooling, no classifier layer
        task = "prompt-classification"
        overrides |= {"data.prompt": args.prompt, "data.label_words": args.label_words}
    else:
        overrides |= {"head.pooling": args.pooling, "head.classifier_dropout": args.dropout}
    overrides["train.eval_epochs"] = args.eval_epochs
    if epochs > 8 and args.eval_epochs == 1:
        # what the results cached before train.eval_epochs existed ran: every epoch, about eight evaluations more
        steps = math.ceil(len(rows["train"]) / args.batch_size) * epochs
        overrides |= {"train.eval_every": max(1, steps // 8), "train.checkpoint_every": 0}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        files = {name: write_csv(work / f"{name}.csv", part) for name, part in rows.items()}
        t0 = time.perf_counter()
        summary = ft.finetune(
            ft.build_config(overrides),
            task,
            model,
            files["train"],
            files["val"],
            work / "out",
            init=init,
        )
        test = ft.evaluate_model(work / "out" / "model", files["test"], {"train.threads": args.threads})
    return {
        "val": summary["accuracy"],
        "test": test["accuracy"],
        "wall_s": time.perf_counter() - t0,
        "epochs": epochs,
    }


# The fine-tuning settings a cached result depends on besides start, labels, lr and seed, with their defaults.
SETTINGS = {
    "epochs": 3, "min_steps": 150, "batch_size": 32, "max_length": 64, "pooling": "mean", "dropout": 0.1,
    "precision": "fp32", "layer_decay": 1.0, "prompt": None, "label_words": None, "eval_epochs": 1,
}  # fmt: skip


def cache_key(args: argparse.Namespace, run: str, n_arg: str, lr: float, seed: int) -> str:
    """One fine-tuning's identity; random init is keyed by the run whose architecture and tokenizer it takes.
    Each start is keyed by its contents too (`start_fingerprint`): a run folder pretrained again, resumed or
    replaced under the same path never reuses the old model's results. Settings left at their defaults are not
    in the key (so results cached before a setting existed stay valid); any other value is, so changing a
    setting never reuses a result it did not produce."""
    if run == RANDOM:
        start = (
            f"random init of {random_source(args)} ({start_fingerprint(random_source(args), weights=False)})"
        )
    else:
        start = f"{run} ({start_fingerprint(run, weights=True)})"
    changed = {k: getattr(args, k) for k, default in SETTINGS.items() if getattr(args, k) != default}
    return json.dumps([start, n_arg, lr, seed, args.tag, *([changed] if changed else [])])


@functools.cache
def start_fingerprint(run: str, weights: bool) -> str:
    """A short hash of what a start is: the model folder's config.json and tokenizer (tokenizer.json or
    vocab.txt), and with `weights` its model.safetensors (random init takes the architecture and tokenizer only)."""
    folder = resolve_model_dir(run)
    names = ["config.json", "tokenizer.json", "vocab.txt"] + (["model.safetensors"] if weights else [])
    digest = hashlib.blake2b(digest_size=6)
    for name in names:
        if not (folder / name).is_file():
            continue
        digest.update(name.encode())
        with open(folder / name, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def random_source(args: argparse.Namespace) -> str:
    """The run whose architecture and tokenizer the random-init twin takes: --random-of, else the first --run."""
    return args.random_of or args.run[0]


def load_cache(path: Path) -> dict[str, dict]:
    return {rec["key"]: rec for rec in read_jsonl(path)} if path.is_file() else {}


def sweep(
    args: argparse.Namespace, starts: list[dict[str, Any]], parts: tuple[list[dict], list[dict], list[dict]]
) -> dict[str, dict]:
    """Every (start, labels, lr, seed) fine-tuning on Rotten Tomatoes `parts` (train, validation, test), from the
    cache when it was run before."""
    cache_path = Path(args.results)
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    cache = load_cache(cache_path)
    first = Path(random_source(args))
    train, val, test = parts
    for n_arg in args.labels:
        for seed in args.seeds:
            n = len(train) if n_arg == "all" else int(n_arg)
            subset = train if n >= len(train) else random.Random(seed).sample(train, n)
            rows = {"train": subset, "val": val, "test": test}
            for info in starts:
                model, init = (
                    (first, "random") if info["run"] == RANDOM else (Path(info["run"]), "pretrained")
                )
                for lr in args.lrs:
                    key = cache_key(args, info["run"], n_arg, lr, seed)
                    if key in cache:
                        continue
                    result = finetune_once(model, init, rows, lr, seed, args)
                    cache[key] = {"key": key, **result}
                    with open(cache_path, "a") as f:
                        f.write(json.dumps(cache[key]) + "\n")
                    print(f"{info['run']} labels={n_arg} lr={lr} seed={seed}: {result}", flush=True)
    return cache


def swept_lrs(cache: dict, run: str, n_arg: str, args: argparse.Namespace) -> list[float]:
    """The lrs of --lrs with a cached result for every seed: all of them after a sweep; with --from-cache, those
    this start was fine-tuned with."""
    return [lr for lr in args.lrs if all(cache_key(args, run, n_arg, lr, s) in cache for s in args.seeds)]


def best_lr(cache: dict, run: str, n_arg: str, args: argparse.Namespace) -> tuple[float, list[dict]]:
    """The lr with the best mean validation accuracy over the seeds (of the lrs swept for this start), and that
    lr's results."""

    def results(lr: float) -> list[dict]:
        return [cache[cache_key(args, run, n_arg, lr, s)] for s in args.seeds]

    lrs = swept_lrs(cache, run, n_arg, args)
    if not lrs:
        raise SystemExit(f"no cached results for {run} at {n_arg} labels with every seed at any of --lrs")
    lr = max(lrs, key=lambda lr: statistics.mean(r["val"] for r in results(lr)))
    return lr, results(lr)


def report(args: argparse.Namespace, starts: list[dict[str, Any]], cache: dict) -> tuple[str, dict]:
    """The table (one row per start, one column per label budget) and {run: {labels: (mean, sd)}}."""
    summary: dict[str, dict[str, tuple[float, float]]] = {}
    rows = []
    for info in starts:
        cells = [start_label(info)]
        for n_arg in args.labels:
            lr, results = best_lr(cache, info["run"], n_arg, args)
            m, sd = mean_sd([r["test"] * 100 for r in results])
            summary.setdefault(info["run"], {})[n_arg] = (m, sd)
            cells.append(f"{m:.2f} ± {sd:.2f} (lr {lr:g})")
        rows.append(cells)
    lift_rows = []
    for info in starts:
        if info["run"] == RANDOM:
            continue
        lifts = [summary[info["run"]][n][0] - summary[RANDOM][n][0] for n in args.labels]
        lift_rows.append([start_label(info), *(f"{x:+.2f}" for x in lifts)])
    headers = ["start", *(f"{n} labels" for n in args.labels)]
    body = "Test accuracy, mean ± sd over seeds, each start at its best lr on validation:\n\n"
    grids = {
        info["run"]: tuple(tuple(swept_lrs(cache, info["run"], n, args)) for n in args.labels)
        for info in starts
    }
    if len(set(grids.values())) > 1:  # --from-cache with starts swept over different lrs: say which
        body = (
            "Learning rates swept per start: "
            + "; ".join(
                f"{Path(run).name if run != RANDOM else RANDOM} "
                + " / ".join(", ".join(f"{lr:g}" for lr in g) for g in grid)
                for run, grid in grids.items()
            )
            + ".\n\n"
            + body
        )
    body += table(headers, rows) + "\n\nPoints over random init:\n\n" + table(headers, lift_rows)
    body += (
        f"\n\nRotten Tomatoes (split seed 0: 6,824 / 853 / 853; seed s draws the N training rows), seeds "
        f"{', '.join(map(str, args.seeds))}, lrs {', '.join(f'{x:g}' for x in args.lrs)}, batch {args.batch_size}, "
        f"max length {args.max_length}, at least {args.epochs} epochs and {args.min_steps} steps, "
        + (
            f"prompt-based: template {args.prompt!r}, label words {args.label_words!r}"
            if args.prompt
            else f"pooling {args.pooling}, classifier dropout {args.dropout}"
        )
        + f", precision {args.precision}"
        + (f", layer-wise lr decay {args.layer_decay:g}" if args.layer_decay != 1 else "")
        + ".\n"
    )
    return body, summary


def plot(
    args: argparse.Namespace, starts: list[dict[str, Any]], summary: dict, train_size: int, out: Path
) -> list[Path]:
    """Accuracy against labels (log scale) per start; lift against pretraining tokens and minutes by objective."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [train_size if n == "all" else int(n) for n in args.labels]
    fig, ax = plt.subplots(figsize=(6, 4))
    for info in starts:
        means = [summary[info["run"]][n][0] for n in args.labels]
        sds = [summary[info["run"]][n][1] for n in args.labels]
        name = "random init" if info["run"] == RANDOM else f"{Path(info['run']).name} ({info['objective']})"
        ax.errorbar(xs, means, yerr=sds, marker="o", capsize=3, label=name)
    ax.set(xscale="log", xlabel="Rotten Tomatoes training labels", ylabel="test accuracy (%)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    paths = [out.with_name(out.stem + "_labels.png")]
    fig.tight_layout()
    fig.savefig(paths[0], dpi=120)
    plt.close(fig)

    # lift against pretraining tokens and against pretraining minutes (the runs' own train time: compare minutes
    # only between runs measured alone on the same machine)
    pretrained = sorted((i for i in starts if i["run"] != RANDOM and i["tokens"]), key=lambda i: i["tokens"])
    by_objective = {
        o: [i for i in pretrained if i["objective"] == o]
        for o in sorted({i["objective"] for i in pretrained})
    }
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, (x_of, x_label) in zip(
        axes,
        [
            (lambda i: i["tokens"] / 1e6, "pretraining tokens (millions)"),
            (lambda i: i["minutes"], "pretraining minutes (train time)"),
        ],
    ):
        for objective, runs in by_objective.items():
            for n in args.labels:
                lifts = [summary[i["run"]][n][0] - summary[RANDOM][n][0] for i in runs]
                ax.plot([x_of(i) for i in runs], lifts, marker="o", label=f"{objective}, {n} labels")
        ax.axhline(0, color="grey", lw=0.8)
        ax.set(xlabel=x_label, ylabel="points over random init")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    paths.append(out.with_name(out.stem + "_lift.png"))
    fig.tight_layout()
    fig.savefig(paths[1], dpi=120)
    plt.close(fig)
    return paths


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--run", nargs="+", default=["runs/demo"], help="pretraining run folders (same architecture)"
    )
    p.add_argument("--labels", nargs="+", default=["100", "300", "1000", "all"])
    p.add_argument("--lrs", nargs="+", type=float, default=[1e-4, 3e-4, 1e-3])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=SETTINGS["epochs"])
    p.add_argument(
        "--min-steps",
        type=int,
        default=SETTINGS["min_steps"],
        help="few labels get more epochs, up to this many steps",
    )
    p.add_argument("--batch-size", type=int, default=SETTINGS["batch_size"])
    p.add_argument("--max-length", type=int, default=SETTINGS["max_length"])
    p.add_argument("--pooling", choices=["cls", "mean"], default=SETTINGS["pooling"])
    p.add_argument("--dropout", type=float, default=SETTINGS["dropout"], help="classifier dropout")
    p.add_argument("--precision", default=SETTINGS["precision"], help="fp32: the same numbers on any CPU")
    p.add_argument(
        "--layer-decay",
        type=float,
        default=SETTINGS["layer_decay"],
        help="train.layer_decay for every start (1: off)",
    )
    p.add_argument(
        "--eval-epochs",
        type=lambda v: None if v == "auto" else int(v),
        default=SETTINGS["eval_epochs"],
        help="train.eval_epochs: 1 (every epoch, what the cached results used) or auto (masklm's default: "
        "fewer evaluations when the validation set outweighs the training set)",
    )
    p.add_argument(
        "--prompt",
        default=SETTINGS["prompt"],
        help="fine-tune every start with --task prompt-classification and this template (e.g. '{text} it was "
        "[MASK] .'); --pooling and --dropout then do not apply",
    )
    p.add_argument(
        "--label-words",
        default=SETTINGS["label_words"],
        help="with --prompt: the label words ('0=bad,1=good')",
    )
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument(
        "--results",
        default="runs/pretraining_value.jsonl",
        help="cache of every fine-tuning result (runs/ is left out of git)",
    )
    p.add_argument(
        "--from-cache",
        action="store_true",
        help="fine-tune nothing: report the cached results, each start at its best of the --lrs it was swept over",
    )
    p.add_argument(
        "--random-of",
        help="the run whose architecture and tokenizer the random-init twin takes (default: the first --run); "
        "every --run must share them",
    )
    p.add_argument(
        "--random-only",
        action="store_true",
        help="fine-tune the random-init twin alone (of --random-of, else the first --run): the bar a label-"
        "efficiency reading compares with, when the pretrained runs' budgets are swept separately",
    )
    p.add_argument(
        "--tag",
        default="",
        help="kept in the cache key (the settings above are keyed when not at their default)",
    )
    p.add_argument(
        "--plots",
        default="pretraining_value",
        help="the plots' file names beside docs/benchmarks.md: PLOTS_labels.png and PLOTS_lift.png (a new name "
        "keeps the images an earlier section shows)",
    )
    add_common_args(p)
    args = p.parse_args()
    if bool(args.prompt) != bool(args.label_words):
        p.error("--prompt and --label-words go together")

    starts = [] if args.random_only else [describe(Path(run)) for run in args.run]
    starts.append({"run": RANDOM, "objective": "none", "tokens": None})
    parts = rotten_tomatoes(0)  # read once: every label budget and seed draws from the same split
    cache = load_cache(Path(args.results)) if args.from_cache else sweep(args, starts, parts)
    body, summary = report(args, starts, cache)
    print(body)
    if not args.no_docs:
        images = plot(args, starts, summary, len(parts[0]), DOCS.with_name(f"{args.plots}.png"))
        body += "\n" + "\n".join(f"![{img.stem}]({img.name})" for img in images) + "\n"
        append_docs(
            "Value of pretraining: pretrained vs random init by labels",
            body,
            args.shared,
            f"{args.threads} threads",
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
