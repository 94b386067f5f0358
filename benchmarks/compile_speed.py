"""torch.compile against eager for a preset's pretraining step on CPU: time per step, compile time, gradients.

    python -m benchmarks.compile_speed                       # the small preset on the demo's data (prepared once)
    python -m benchmarks.compile_speed --data runs/demo/data --rounds 12

Two copies of the preset's MaskedLM from the same seed, one eager and one wrapped in torch.compile (what
`train.compile` does), each with its own AdamW from `make_optimizer`, take fit's step (masked batch, forward under
the preset's autocast, `mlm_loss`, backward, clipping, optimizer step) on the same batches. The compiled copy's
first steps compile it (the warm-up column: wall seconds of the warm-up steps, compilation included); then the two
alternate in rounds of --steps steps, and the figure is the median over rounds, so a machine whose speed drifts
moves both alike. Before any training, one batch's gradients are compared: all finite, and the largest relative
difference of a parameter's gradient (bf16 rounds differently in fused kernels; a wrong gradient is off by far
more). Compilation caches to TORCHINDUCTOR_CACHE_DIR (default: a folder under /tmp); point it at an empty
folder to time a cold start.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from benchmarks import common


def demo_data() -> Path:
    """The README demo's prepared data (IMDB reviews, an 8,192-token WordPiece vocabulary, 128-token rows), cached."""
    from masklm.config import load_config
    from masklm.data.prepare import prepare

    out = common.cache_dir() / "demo-imdb-small"
    if not (out / "meta.json").is_file():
        cfg = load_config("small", overrides={"data.where": "source=imdb"})
        prepare([common.reviews_csv()], out, cfg.data, seed=0, progress=False)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="small")
    ap.add_argument("--data", type=Path, default=None, help="a prepared folder (default: the demo's data)")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--steps", type=int, default=5, help="steps per side per round")
    ap.add_argument(
        "--warmup", type=int, default=12, help="steps per side before timing (compilation included)"
    )
    ap.add_argument("--threads", type=int, default=None)
    common.add_common_args(ap)
    args = ap.parse_args()

    from masklm.config import load_config
    from masklm.objectives.mlm import mlm_loss
    from masklm.train.loop import autocast_context, resolve_precision
    from masklm.train.optim import make_optimizer

    cfg = load_config(args.preset)
    device = torch.device("cpu")
    precision = resolve_precision(cfg.train.precision, device)
    data = args.data or demo_data()
    sides = {
        name: common.MasklmSide(cfg, data, threads=args.threads, compile=name == "compiled")
        for name in ("eager", "compiled")
    }
    optimizers = {name: make_optimizer(s.model, cfg.train, device) for name, s in sides.items()}

    def loss_of(name: str, i: int) -> torch.Tensor:
        side = sides[name]
        with autocast_context(device, cfg.train.precision):
            return mlm_loss(side.train_model, side.batches(i))

    # gradients of one batch, before any step (both copies hold the same weights)
    grads = {}
    for name, side in sides.items():
        loss_of(name, 0).backward()
        grads[name] = {
            n: p.grad.float().clone() for n, p in side.model.named_parameters() if p.grad is not None
        }
        side.model.zero_grad(set_to_none=True)
    finite = all(bool(torch.isfinite(g).all()) for g in grads["compiled"].values())
    rel = max(
        float((g - grads["eager"][n]).norm() / grads["eager"][n].norm().clamp_min(1e-12))
        for n, g in grads["compiled"].items()
    )

    def step(name: str, i: int) -> float:
        loss = loss_of(name, i)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(sides[name].model.parameters(), cfg.train.clip_norm)
        optimizers[name].step()
        optimizers[name].zero_grad(set_to_none=True)
        return float(loss.detach())

    warm = {}
    for name in sides:
        t0 = time.perf_counter()
        for i in range(args.warmup):
            step(name, i)
        warm[name] = time.perf_counter() - t0
    per_step: dict[str, list[float]] = {name: [] for name in sides}
    losses: dict[str, list[float]] = {name: [] for name in sides}
    i = args.warmup
    for r in range(args.rounds):
        for name in list(sides) if r % 2 == 0 else list(sides)[::-1]:
            t0 = time.perf_counter()
            losses[name] += [step(name, i + j) for j in range(args.steps)]
            per_step[name].append((time.perf_counter() - t0) / args.steps)
        i += args.steps
    tokens = cfg.train.batch_size * cfg.data.seq_len
    med = {name: statistics.median(v) for name, v in per_step.items()}
    rows = [
        [
            name,
            f"{warm[name]:.1f}",
            f"{med[name] * 1000:.0f}",
            f"{min(per_step[name]) * 1000:.0f}-{max(per_step[name]) * 1000:.0f}",
            f"{tokens / med[name]:,.0f}",
            f"{med['eager'] / med[name]:.2f}x",
            f"{statistics.mean(losses[name]):.3f}",
        ]
        for name in sides
    ]
    headers = [
        "side",
        "warm-up s",
        "ms / step (median)",
        "range over rounds",
        "tokens/s",
        "vs eager",
        "mean training loss",
    ]
    body = "\n".join(
        [
            f"- Preset `{args.preset}` ({precision}), batch {cfg.train.batch_size} x {cfg.data.seq_len} tokens, "
            f"data {data}; {args.warmup} warm-up steps per side, then {args.rounds} alternating rounds of "
            f"{args.steps} steps",
            f"- Gradients of one batch, compiled against eager: all finite: {finite}; largest relative "
            f"difference of a parameter's gradient {rel:.4f}",
            "",
            common.table(headers, rows),
        ]
    )
    print(body)
    if not args.no_docs:
        threads = f"{args.threads or common.cores()} torch thread(s)"
        common.append_docs(
            "torch.compile against eager: a pretraining step of the preset", body, args.shared, threads
        )


if __name__ == "__main__":
    main()
