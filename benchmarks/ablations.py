"""One change at a time: how much each CPU setting or optimisation is worth to a masklm training step.

    python -m benchmarks.ablations                       # L4/H256, batch 32, 3 alternating rounds
    python -m benchmarks.ablations --compile --rounds 2  # also torch.compile (slow to warm up)

The baseline is masklm's step as shipped: bf16 autocast, the MLM head at masked positions only, vocabulary rows
padded to a multiple of 64, the written-out attention for CPU training, AdamW from `make_optimizer`, all cores,
dropout 0.1. Each variant changes one thing:

- fp32: no autocast                         - dense-head: the head on every position (as BertForMaskedLM)
- fused-adamw: AdamW(fused=True)            - loop-adamw: AdamW(foreach=False)
- no-vocab-pad: pad_vocab_multiple=1        - sdpa-attention: SDPA for every attention (the code before)
- 1-thread: torch.set_num_threads(1)        - compile: torch.compile(model) (with --compile)
- no-dropout: dropout 0 (what masklm's small preset uses)
- mask-0.3: masking rate 0.3 (masklm's presets)  - modern: pre-LN, GeGLU (2/3 width), no biases

A step is fit's: masked batch, forward, loss, backward, clipping, optimizer step (batch building is timed too; fit
does it in a background thread). Variants alternate within each round; the figure is the median over rounds of
tokens/s, and the change against the baseline. docs/profile.md discusses the results.
"""

from __future__ import annotations

import argparse
import sys
import time
import types
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks import common

VARIANTS = [
    "baseline",
    "fp32",
    "fused-adamw",
    "loop-adamw",
    "dense-head",
    "no-vocab-pad",
    "sdpa-attention",
    "1-thread",
    "no-dropout",
    "mask-0.3",
    "modern",
]


def sdpa_forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None) -> torch.Tensor:
    """SelfAttention.forward as it was: SDPA for every call (its math fallback on CPU with dropout)."""
    B, T, H = x.shape
    N = self.num_heads
    q, k, v = self.qkv(x).view(B, T, 3, N, H // N).permute(2, 0, 3, 1, 4).unbind(0)
    p = self.dropout_p if self.training else 0.0
    y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=p)
    return self.out(y.transpose(1, 2).reshape(B, T, H))


def dense_loss(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The loss as BertForMaskedLM computes it: vocabulary logits at every position, then ignore_index."""
    logits = model(batch["input_ids"], batch.get("attention_mask"), None, None)  # (B, T, V)
    return F.cross_entropy(logits.float().flatten(0, 1), batch["labels"].flatten(), ignore_index=-100)


def make_step(name: str, data_dir: Path, batch: int):
    from masklm.objectives.mlm import mlm_loss
    from masklm.train.loop import autocast_context
    from masklm.train.optim import make_optimizer, param_groups

    precision = "fp32" if name == "fp32" else "bf16"
    dropout = 0.0 if name == "no-dropout" else 0.1
    rate = 0.3 if name == "mask-0.3" else 0.15
    cfg = common.masklm_config("small", batch, precision, common.Hyper(), dropout=dropout, mask_rate=rate)
    if name == "modern":
        cfg.model.norm, cfg.model.ffn, cfg.model.bias = "pre", "geglu", False
        cfg.model.intermediate_size = 704  # 2/3 of 1024, rounded to 64: the same parameter count
    if name == "no-vocab-pad":
        cfg.model.pad_vocab_multiple = 1
    threads = 1 if name == "1-thread" else common.cores()
    side = common.MasklmSide(cfg, data_dir, threads=threads)
    model, device = side.model, torch.device("cpu")
    model.train()
    if name == "sdpa-attention":
        for block in model.encoder.layers:
            block.attn.forward = types.MethodType(sdpa_forward, block.attn)
    if name in ("fused-adamw", "loop-adamw"):
        kind = {"fused": True} if name == "fused-adamw" else {"foreach": False}
        t = cfg.train
        groups = param_groups(model, t.weight_decay)
        optimizer = torch.optim.AdamW(groups, lr=t.lr, betas=(t.beta1, t.beta2), eps=t.eps, **kind)
    else:
        optimizer = make_optimizer(model, cfg.train, device)
    fwd = torch.compile(model) if name == "compile" else model
    loss_fn = dense_loss if name == "dense-head" else mlm_loss
    counter = [0]

    def step() -> None:
        torch.set_num_threads(threads)
        b = side.batches(counter[0])
        counter[0] += 1
        with autocast_context(device, precision):
            loss = loss_fn(fwd, b)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.clip_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--compile", action="store_true", help="add the torch.compile variant")
    args = ap.parse_args()
    data_dir = common.prepared_imdb()
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    if "baseline" not in names:
        names.insert(0, "baseline")
    if args.compile:
        names.append("compile")
    steps = {}
    for n in names:
        steps[n] = make_step(n, data_dir, args.batch)
        t0 = time.perf_counter()
        for _ in range(args.warmup):
            steps[n]()
        print(f"{n}: warm-up {time.perf_counter() - t0:.1f}s", file=sys.stderr, flush=True)
    results: dict[str, list[float]] = {n: [] for n in names}
    for r in range(args.rounds):
        for n in names:
            t0 = time.perf_counter()
            for _ in range(args.steps):
                steps[n]()
            results[n].append(args.steps * args.batch * common.SEQ_LEN / (time.perf_counter() - t0))
        print(
            f"round {r + 1}: " + ", ".join(f"{n} {v[-1]:,.0f}" for n, v in results.items()), file=sys.stderr
        )
    base = common.median(results["baseline"])
    rows = [
        [
            n,
            f"{common.median(v):,.0f}",
            "—" if n == "baseline" else f"{common.median(v) / base - 1:+.0%}",
            " / ".join(f"{x:,.0f}" for x in v),
        ]
        for n, v in results.items()
    ]
    print(common.table(["variant", "tokens/s (median)", "vs baseline", "per round"], rows))


if __name__ == "__main__":
    main()
