"""Pretraining throughput on CPU: masklm against Hugging Face transformers, tokens per second.

    python -m benchmarks.throughput                  # both sizes, 3 alternating rounds (~15 minutes on 2 cores)
    python -m benchmarks.throughput --sizes small --rounds 2 --steps 4 --no-docs     # a quick look

Models (the same shape on both sides, vocab 30,522, seq 128, BERT's dropout 0.1, masking 0.15):
- small: 4 layers, hidden 256, 4 heads, FFN 1024, batch 32
- base:  BERT-base, 12 layers, hidden 768, 12 heads, FFN 3072, batch 8

Three contestants, each trained from the same initial seed on the same packed IMDB rows (see common.py):
- masklm: `MaskedLM` trained by masklm's own loop (`masklm.train.loop.fit`: background batch prefetch, masks,
  clipping, its AdamW from `make_optimizer`) with its best CPU settings: bf16 autocast by default
  (--precision), all cores (--threads);
- HF Trainer: `BertForMaskedLM` (attn_implementation="sdpa", float32) + `DataCollatorForLanguageModeling(0.15)`
  driven by `Trainer` with its defaults (fused AdamW);
- HF loop: the same model and collator in a plain PyTorch loop (DataLoader, fused `torch.optim.AdamW`, linear
  schedule, clipping): the stricter baseline, with none of Trainer's overhead.

Every side uses the same optimisation settings (lr 5e-4, AdamW betas 0.9/0.98, eps 1e-6, weight decay 0.01, clip
1.0, linear schedule). The rounds alternate (masklm, Trainer, loop, masklm, ...) so that machine noise hits all
alike. In each round a side trains `--warmup` steps that are not counted, then `--steps` that are; the figure is
the median over rounds of those steady-state tokens/s (all 128 tokens of every row count, masked or not).
The ratio is masklm over the faster HF variant, of the medians; beside it, the median of the per-round ratios
(masklm over that round's faster HF), which a slow stretch of a shared machine disturbs less. The table is
appended to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from benchmarks import common

DEFAULT_BATCH = {"small": 32, "base": 8}


def hf_trainer_round(
    model, dataset, collator, batch: int, warmup: int, steps: int, hp: common.Hyper, seed: int
):
    from transformers import Trainer

    clock = common.hf_step_clock()
    with common.tempfile.TemporaryDirectory(prefix="hf-bench-") as out:
        args = common.hf_trainer_args(out, batch, warmup + steps, hp, data_seed=seed)
        Trainer(
            model=model, args=args, train_dataset=dataset, data_collator=collator, callbacks=[clock]
        ).train()
    t = clock.times  # t[0] = start, t[i] = end of step i
    return steps * batch * common.SEQ_LEN / (t[warmup + steps] - t[warmup])


def hf_loop_round(model, dataset, collator, batch: int, warmup: int, steps: int, hp: common.Hyper, seed: int):
    from transformers import get_linear_schedule_with_warmup

    total = warmup + steps
    optimizer = common.hf_adamw(model, hp)
    schedule = get_linear_schedule_with_warmup(optimizer, int(hp.warmup * total), total)
    model.train()
    stream = common.hf_batches(dataset, collator, batch, seed)
    times = [common.time.perf_counter()]
    for _ in range(total):
        b = next(stream)
        loss = model(**b).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), hp.clip)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(common.time.perf_counter())
    return steps * batch * common.SEQ_LEN / (times[total] - times[warmup])


def measure(size: str, args: argparse.Namespace, data_dir: Path) -> dict:
    batch = args.batch or DEFAULT_BATCH[size]
    hp = common.Hyper()
    cfg = common.masklm_config(size, batch, args.precision, hp, dropout=args.dropout)
    masklm = common.MasklmSide(cfg, data_dir, threads=args.threads)
    hf_model = common.hf_masked_lm(size, dropout=args.dropout, seed=hp.seed)
    dataset = common.RowsDataset(data_dir, "train")
    collator = common.hf_collator(0.15, seed=hp.seed)
    results: dict[str, list[float]] = {"masklm": [], "trainer": [], "loop": []}
    for r in range(args.rounds):
        result = masklm.train(steps=args.warmup + args.steps)
        results["masklm"].append(common.steady_tokens_per_s(result.history, args.warmup))
        torch.set_num_threads(common.cores())  # HF as users run it: torch's default, all cores
        if "trainer" in args.hf:
            results["trainer"].append(
                hf_trainer_round(hf_model, dataset, collator, batch, args.warmup, args.steps, hp, seed=r)
            )
        if "loop" in args.hf:
            results["loop"].append(
                hf_loop_round(hf_model, dataset, collator, batch, args.warmup, args.steps, hp, seed=r)
            )
        done = ", ".join(f"{k} {v[-1]:,.0f}" for k, v in results.items() if v)
        print(f"[{size}] round {r + 1}/{args.rounds}: tokens/s {done}", file=sys.stderr, flush=True)
    return {"size": size, "batch": batch, **{k: v for k, v in results.items() if v}}


def per_round(res: dict, k: str) -> str:
    return " / ".join(f"{x:,.0f}" for x in res[k]) if k in res else "—"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="small,base", help="comma-separated: small, base")
    ap.add_argument("--batch", type=int, default=None, help="batch size (default: 32 for small, 8 for base)")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds; the median is reported")
    ap.add_argument("--warmup", type=int, default=3, help="steps per round not counted")
    ap.add_argument("--steps", type=int, default=10, help="steps per round counted")
    ap.add_argument("--precision", default="bf16", choices=["bf16", "fp32"], help="masklm's precision")
    ap.add_argument("--threads", type=int, default=None, help="masklm's torch threads (default: all cores)")
    ap.add_argument("--dropout", type=float, default=0.1, help="dropout on both sides (BERT's default 0.1)")
    ap.add_argument("--hf", default="trainer,loop", help="HF variants to run: trainer, loop or both")
    common.add_common_args(ap)
    args = ap.parse_args()
    if args.warmup < 1:
        ap.error("--warmup must be at least 1 (the first step allocates optimizer state)")
    args.hf = [h.strip() for h in args.hf.split(",") if h.strip()]
    data_dir = common.prepared_imdb()
    threads = args.threads or common.cores()

    rows = []
    for size in [s.strip() for s in args.sizes.split(",") if s.strip()]:
        res = measure(size, args, data_dir)
        m = common.median(res["masklm"])
        hf = {k: common.median(res[k]) for k in ("trainer", "loop") if k in res}
        best_name, best = max(hf.items(), key=lambda kv: kv[1])
        L, H, N, Inter = common.SIZES[size]
        hf_rounds = [
            max(res[k][r] for k in ("trainer", "loop") if k in res) for r in range(len(res["masklm"]))
        ]
        paired = common.median([a / b for a, b in zip(res["masklm"], hf_rounds)])

        rows.append(
            [
                f"L{L} H{H} A{N} FFN{Inter}",
                res["batch"],
                f"{m:,.0f}",
                f"{hf['trainer']:,.0f}" if "trainer" in hf else "—",
                f"{hf['loop']:,.0f}" if "loop" in hf else "—",
                f"**{m / best:.2f}x** (vs {best_name})",
                f"{paired:.2f}x",
                per_round(res, "masklm"),
                per_round(res, "trainer"),
                per_round(res, "loop"),
            ]
        )
    headers = [
        "model",
        "batch",
        f"masklm tok/s ({args.precision}, {threads} thr)",
        "HF Trainer tok/s (fp32)",
        "HF loop tok/s (fp32)",
        "masklm / faster HF (medians)",
        "median of per-round ratios",
        "masklm per round",
        "Trainer per round",
        "loop per round",
    ]
    tbl = common.table(headers, rows)
    print(tbl)
    if not args.no_docs:
        body = (
            f"- Settings: seq 128, vocab 30,522, dropout {args.dropout}, masking 0.15, lr 5e-4, AdamW 0.9/0.98, "
            f"clip 1.0; {args.rounds} alternating rounds of {args.warmup} warm-up + {args.steps} measured steps "
            "per side; median of the rounds' steady-state tokens/s (all 128 tokens per row)\n"
            f"- masklm: its own loop (`fit`), {args.precision}, {threads} torch threads; HF: `BertForMaskedLM` "
            "(sdpa, float32) + `DataCollatorForLanguageModeling`, torch's default threads\n\n" + tbl + "\n"
        )
        common.append_docs(
            "Pretraining throughput on CPU: masklm vs transformers", body, args.shared, f"{threads} threads"
        )


if __name__ == "__main__":
    main()
