"""What each train.batching costs per epoch, counted rather than timed: padded tokens, attention work, batch sizes.

    python -m benchmarks.batching_padding                     # Rotten Tomatoes, WNUT-16, IMDB (seed-0 splits)

Wall times on a shared machine move with the load; the work a batching asks for does not. For each task of
benchmarks/finetune_vs_hf.py (the training split of seed 0, encoded by masklm's task with the MiniLM tokenizer
at the task's maximum length and batch size) and each batching, one epoch's order (seed 0) gives: padded tokens
(the linear layers' work), the sum of batch x longest² (attention's), both relative to random batches, the largest
padded batch (peak memory), and the spread of examples and of loss items (labelled tokens) per batch.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from benchmarks import common
from benchmarks.finetune_vs_hf import TASKS, encoder_dir, run_args


def epoch_costs(task_name: str, batching: str, seed: int = 0) -> dict[str, float]:
    """The counts for one task's seed-0 training split and one batching."""
    import tempfile

    from masklm.config import FinetuneConfig
    from masklm.data.tokenizer import load_tokenizer
    from masklm.tasks import get_task
    from masklm.tasks.batching import epoch_order, epoch_seed

    spec = TASKS[task_name]
    run = run_args(argparse.Namespace(quick=False, epochs=None, lr=None, batch_size=None, max_length=None,
                                      threads=1), spec, seed)  # fmt: skip
    splits = spec.load(seed)
    if spec.sizes:
        splits = tuple(part[:n] for part, n in zip(splits, spec.sizes))
    task = get_task(spec.masklm_task)
    settings = FinetuneConfig().data
    settings.max_length = int(run.max_length)
    tok = load_tokenizer(Path(encoder_dir()))
    with tempfile.TemporaryDirectory() as tmp:
        files = spec.write(Path(tmp), splits)
        examples = task.read(files["train"], settings, labelled=True)
        labels = task.label_set(examples, settings, files["train"])
        feats = task.encode(tok, examples, settings, labels, files["train"], labelled=True)
    lengths = [task.feature_length(f) for f in feats]
    items = [sum(1 for x in f["labels"] if x != -100) if isinstance(f["labels"], list) else 1 for f in feats]
    batches = epoch_order(batching, lengths, int(run.batch_size), epoch_seed(seed, 0))
    longest = [max(lengths[i] for i in b) for b in batches]
    return {
        "padded": sum(len(b) * m for b, m in zip(batches, longest)),
        "real": sum(lengths),
        "attention": sum(len(b) * m * m for b, m in zip(batches, longest)),
        "largest": max(len(b) * m for b, m in zip(batches, longest)),
        "batches": len(batches),
        "examples_sd": statistics.pstdev(len(b) for b in batches),
        "examples_max": max(len(b) for b in batches),
        "items_cv": statistics.pstdev(per := [sum(items[i] for i in b) for b in batches])
        / statistics.mean(per),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", nargs="+", default=["sentiment", "ner", "imdb"])
    args = ap.parse_args(argv)
    rows = []
    for name in args.tasks:
        costs = {b: epoch_costs(name, b) for b in ("random", "bucketed", "tokens")}
        base = costs["random"]
        for batching, c in costs.items():
            rows.append([
                TASKS[name].title, batching, f"{c['batches']}", f"{c['padded']:,} ({c['padded'] / base['padded']:.2f})",
                f"{c['padded'] / c['real']:.2f}", f"{c['attention'] / base['attention']:.2f}",
                f"{c['largest']:,}", f"{c['examples_max']} (sd {c['examples_sd']:.1f})", f"{c['items_cv']:.2f}",
            ])  # fmt: skip
    headers = [
        "task", "batching", "batches", "padded tokens (/ random)", "padded / real", "attention work / random",
        "largest batch (tokens)", "most examples in a batch", "loss items per batch: cv",
    ]  # fmt: skip
    print(common.table(headers, rows))


if __name__ == "__main__":
    main()
