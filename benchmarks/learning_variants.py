"""Which masklm recipe learns fastest on CPU: masking rate and architecture, at a fixed number of steps.

    python -m benchmarks.learning_variants                 # 7 variants x 300 steps (~20 minutes on 2 cores)
    python -m benchmarks.learning_variants --steps 40 --variants bert-0.15,bert-0.3    # a quick look

Each variant trains the L4/H256 model from the same seed on the same packed IMDB rows for --steps optimizer steps
with masklm's loop (bf16, batch 32, WSD schedule over the steps, no dropout) at each peak rate of --lrs
(default 1e-3 alone: give several to see each variant at its own best rate), then is scored on the
held-out set of time_to_accuracy.py (validation rows masked once at 15%, float32). Steps, not minutes, fix the
budget so that the accuracy column is free of machine noise. The variants run one after the other, so their
step times (the median of the training's per-step log, also printed) share no rounds and move with the machine's
load; for what a variant costs per step, compare them in alternating rounds with `ablations.py` (mask-0.3,
modern). Variants:

- bert-0.15: BERT-compatible model, masking rate 0.15 (BERT's)
- bert-0.3:  BERT-compatible model, masking rate 0.3 (masklm's presets)
- bert-0.4:  BERT-compatible model, masking rate 0.4
- preln-0.3:  pre-LayerNorm (plus a final LayerNorm), otherwise BERT's; masking 0.3
- modern-0.15 / modern-0.3 / modern-0.4: pre-LN, GeGLU (2/3 width, same parameter count), no biases; masking
  0.15 / 0.3 / 0.4

Prints a table (and appends it to docs/benchmarks.md unless --no-docs).
"""

from __future__ import annotations

import argparse
import sys
import time

from benchmarks import common
from benchmarks import time_to_accuracy as tta

VARIANTS = {
    "bert-0.15": ("bert", 0.15),
    "bert-0.3": ("bert", 0.3),
    "bert-0.4": ("bert", 0.4),
    "preln-0.3": ("preln", 0.3),
    "modern-0.15": ("modern", 0.15),
    "modern-0.3": ("modern", 0.3),
    "modern-0.4": ("modern", 0.4),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--eval-sequences", type=int, default=512)
    ap.add_argument(
        "--lrs", type=float, nargs="+", default=[1e-3], help="peak learning rates: every variant runs at each"
    )
    common.add_common_args(ap)
    args = ap.parse_args()
    data_dir = common.prepared_imdb()
    inputs, labels = tta.held_out(data_dir, args.eval_sequences)
    rows = []
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    for name, lr in [(n, lr) for n in names for lr in args.lrs]:
        arch, rate = VARIANTS[name]
        ns = argparse.Namespace(
            batch=32,
            precision="bf16",
            lr=lr,
            masklm_warmup=0.05,
            dropout=0.0,
            mask_rate=rate,
            schedule="wsd",
            eval_every=0,
            masklm_arch=arch,
        )
        cfg = tta.masklm_cfg(ns)
        cfg.train.log_every = 1
        side = common.MasklmSide(cfg, data_dir)
        t0 = time.perf_counter()
        result = side.train(steps=args.steps)
        wall = time.perf_counter() - t0
        steps = [r for r in result.history if r.get("split") == "train"]
        step_s = common.median([b["elapsed_s"] - a["elapsed_s"] for a, b in zip(steps, steps[1:])])
        acc = tta.accuracy(side.model, inputs, labels, hf=False)
        params = sum(p.numel() for p in side.model.parameters())
        rows.append([name, f"{lr:g}", f"{params / 1e6:.2f}M", f"{acc:.4f}", f"{step_s * 1000:.0f}"])
        print(
            f"{name} lr {lr:g}: accuracy {acc:.4f}, {step_s * 1000:.0f} ms/step, {wall:.0f}s",
            file=sys.stderr,
            flush=True,
        )
    headers = [
        "variant",
        "peak lr",
        "parameters",
        f"held-out accuracy after {args.steps} steps",
        "ms / step (this run, load-dependent)",
    ]
    tbl = common.table(headers, rows)
    print(tbl)
    if not args.no_docs:
        body = (
            f"- L4 H256 A4 (FFN 1024, or GeGLU 704), batch 32, bf16, peak lr {' / '.join(f'{x:g}' for x in args.lrs)}, WSD over {args.steps} steps, no "
            f"dropout; held-out: {len(inputs)} validation rows masked once at 15%, float32\n\n" + tbl + "\n"
        )
        common.append_docs(
            "masklm recipes: held-out accuracy after a fixed number of steps (CPU)",
            body,
            args.shared,
            f"{common.cores()} threads",
        )


if __name__ == "__main__":
    main()
