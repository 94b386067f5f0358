"""Peak memory of pretraining on CPU: masklm against Hugging Face transformers, resident set size.

    python -m benchmarks.memory                      # small model (L4/H256), batch 32, 2 rounds
    python -m benchmarks.memory --size base --batch 32 --no-docs

Each side trains a few steps in a process of its own (this script started again with --worker), so nothing one
side allocates counts against the other; the figure is that process's peak resident set (getrusage ru_maxrss:
everything it ever held in RAM at once: Python, torch, the model, optimizer state, activations, the data pages
it touched). The sides alternate (masklm, Trainer, loop, masklm, ...) and the median over rounds is reported.

- masklm: `MaskedLM` trained by masklm's loop (`fit`) with its best CPU settings (bf16 autocast), no
  transformers import (a masklm user has no need of it);
- HF Trainer / HF loop: `BertForMaskedLM` (sdpa, float32) + `DataCollatorForLanguageModeling(0.15)`, by Trainer
  or by a plain loop with `torch.optim.AdamW`, as in throughput.py.

Both read the same packed IMDB rows from masklm's memory-mapped shards (see common.py). Same settings as
throughput.py (dropout 0.1, lr 5e-4, ...). The ratio is masklm's peak over the smaller HF peak.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys

import torch

from benchmarks import common

SIDES = ("masklm", "trainer", "loop")


def rss_mib() -> float:
    """Current resident set (MiB), from /proc."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def worker(args: argparse.Namespace) -> None:
    data_dir = common.prepared_imdb(log=False)
    hp = common.Hyper()
    before = 0.0
    if args.worker == "masklm":
        cfg = common.masklm_config(args.size, args.batch, args.precision, hp, dropout=args.dropout)
        side = common.MasklmSide(cfg, data_dir)
        before = rss_mib()
        side.train(steps=args.steps)
    else:
        from transformers import Trainer

        model = common.hf_masked_lm(args.size, dropout=args.dropout, seed=hp.seed)
        dataset = common.RowsDataset(data_dir, "train")
        collator = common.hf_collator(0.15, seed=hp.seed)
        before = rss_mib()
        if args.worker == "trainer":
            with common.tempfile.TemporaryDirectory(prefix="hf-bench-") as out:
                targs = common.hf_trainer_args(out, args.batch, args.steps, hp)
                Trainer(model=model, args=targs, train_dataset=dataset, data_collator=collator).train()
        else:
            optimizer = common.hf_adamw(model, hp)
            model.train()
            stream = common.hf_batches(dataset, collator, args.batch, hp.seed)
            for _ in range(args.steps):
                loss = model(**next(stream)).loss
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), hp.clip)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
    print(json.dumps({"side": args.worker, "peak_mib": peak_mib(), "before_train_mib": before}))


def run_worker(side: str, args: argparse.Namespace) -> dict:
    argv = ["--worker", side, "--size", args.size, "--batch", str(args.batch), "--steps", str(args.steps)]
    argv += ["--precision", args.precision, "--dropout", str(args.dropout)]
    out = common.run_module("benchmarks.memory", argv)
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", default="small", choices=sorted(common.SIZES))
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=4, help="training steps per process")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--precision", default="bf16", choices=["bf16", "fp32"], help="masklm's precision")
    ap.add_argument("--dropout", type=float, default=0.1)
    ap.add_argument("--worker", choices=SIDES, help=argparse.SUPPRESS)
    common.add_common_args(ap)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return
    common.prepared_imdb()  # once, here, not inside a measured process
    results: dict[str, list[dict]] = {s: [] for s in SIDES}
    for r in range(args.rounds):
        for side in SIDES:
            results[side].append(run_worker(side, args))
            print(f"round {r + 1}: {side} peak {results[side][-1]['peak_mib']:,.0f} MiB", file=sys.stderr)
    peak = {s: common.median([x["peak_mib"] for x in v]) for s, v in results.items()}
    before = {s: common.median([x["before_train_mib"] for x in v]) for s, v in results.items()}
    best_name = min(("trainer", "loop"), key=lambda s: peak[s])
    L, H, N, Inter = common.SIZES[args.size]
    names = {
        "masklm": f"masklm ({args.precision}, fit)",
        "trainer": "HF Trainer (fp32)",
        "loop": "HF loop (fp32)",
    }
    rows = [
        [
            names[s],
            f"{peak[s]:,.0f}",
            f"{before[s]:,.0f}",
            f"{peak[s] - before[s]:,.0f}",
            f"**{peak[s] / peak[best_name]:.2f}**" if s == "masklm" else "",
        ]
        for s in SIDES
    ]
    headers = [
        "side",
        "peak RSS MiB",
        "RSS before training MiB",
        "added by training MiB",
        f"masklm / {names[best_name]}",
    ]
    tbl = common.table(headers, rows)
    print(tbl)
    if not args.no_docs:
        body = (
            f"- Model L{L} H{H} A{N} FFN{Inter}, vocab 30,522, seq 128, batch {args.batch}, dropout {args.dropout}; "
            f"{args.steps} training steps per process, each side in its own process, {args.rounds} alternating "
            "rounds, median peak resident set (ru_maxrss)\n\n" + tbl + "\n"
        )
        common.append_docs(
            "Peak memory of CPU pretraining: masklm vs transformers", body, args.shared, "default threads"
        )


if __name__ == "__main__":
    main()
