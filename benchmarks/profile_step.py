"""Profile masklm training steps on CPU with torch.profiler: the operators that take the time, as a Markdown table.

    python -m benchmarks.profile_step                        # L4/H256, batch 32, bf16, dropout 0.1
    python -m benchmarks.profile_step --precision fp32 --dropout 0 --top 20

One step is what masklm's loop (`fit`) does per optimizer step: build the masked batch (`MaskedBatches`, which fit
runs in a background thread), forward under autocast, `mlm_loss` (the head runs at masked positions only),
backward, gradient clipping, AdamW from `make_optimizer`, zero_grad. After --warmup steps, --steps steps are
profiled; the table gives each operator's self CPU time per step (the time in the operator itself, not in the
operators it calls), sorted, with its share of the total and its calls per step. docs/profile.md holds a copy.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks import common


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", default="small", choices=sorted(common.SIZES))
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--precision", default="bf16", choices=["bf16", "fp32"])
    ap.add_argument("--dropout", type=float, default=0.1)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--top", type=int, default=15)
    args = ap.parse_args()

    from masklm.objectives.mlm import mlm_loss
    from masklm.train.loop import autocast_context
    from masklm.train.optim import make_optimizer

    cfg = common.masklm_config(args.size, args.batch, args.precision, common.Hyper(), dropout=args.dropout)
    side = common.MasklmSide(cfg, common.prepared_imdb(), threads=args.threads)
    model, device = side.model, torch.device("cpu")
    optimizer = make_optimizer(model, cfg.train, device)
    model.train()

    def step(i: int) -> None:
        batch = side.batches(i)
        with autocast_context(device, args.precision):
            loss = mlm_loss(model, batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.clip_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for i in range(args.warmup):
        step(i)
    t0 = time.perf_counter()
    for i in range(args.warmup, args.warmup + args.steps):
        step(i)
    plain = (time.perf_counter() - t0) / args.steps
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for i in range(args.warmup + args.steps, args.warmup + 2 * args.steps):
            step(i)
    rows, total = common.operator_rows(prof, args.steps, args.top)
    print(
        f"{args.size} model, batch {args.batch}, {args.precision}, dropout {args.dropout}, "
        f"{torch.get_num_threads()} threads: {plain * 1000:.0f} ms per step without the profiler, "
        f"{total / 1000 / args.steps:.0f} ms of self CPU time per step under it "
        f"({args.batch * common.SEQ_LEN / plain:,.0f} tokens/s)\n"
    )
    print(common.table(["operator", "self CPU ms / step", "share", "calls / step"], rows))


if __name__ == "__main__":
    main()
