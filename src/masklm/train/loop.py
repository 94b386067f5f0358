"""fit(): the optimisation loop shared by pretraining and fine-tuning.

One optimizer step = `grad_accum` micro-batches: make_batch(micro_step) → forward under autocast → loss → backward;
then clip, check for non-finite values, optimizer step, learning-rate schedule. Around it: logging to
metrics.jsonl, evaluation every N steps, checkpoints every N steps, a step / token / wall-clock budget, and
graceful stops on SIGTERM / SIGINT.

Everything random is a function of the step number (batches and masks are built by `make_batch(micro_step)`) or
lives in the saved RNG state (dropout), so a resumed run continues exactly where it stopped without replaying data.
The model passed in may already be wrapped (DDP, FSDP, torch.compile); `fit` never wraps it itself.

With several processes (see masklm.dist) every process runs this loop on its own share of each batch. They agree
once per step on what must be the same everywhere: the gradient norm (global under FSDP), whether the step is
skipped (a non-finite value on any process), whether to stop (a signal on any process) and, under a time
budget, the elapsed time (the slowest process's), so they never diverge.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import queue
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from masklm import dist
from masklm.config import TrainConfig
from masklm.errors import UserError
from masklm.train import checkpoint as ckpt
from masklm.train.optim import lr_factor, set_lr
from masklm.utils import atomic_write_text, log, native_bf16, rank

Batch = dict[str, torch.Tensor]


@dataclass
class Budget:
    """When training ends. Exactly one of steps / minutes drives the schedule (steps when known)."""

    steps: int | None = None
    minutes: float | None = None

    def progress(self, step: int, elapsed_s: float) -> float:
        if self.steps is not None:
            return step / self.steps
        assert self.minutes is not None
        return elapsed_s / (60.0 * self.minutes)

    def done(self, step: int, elapsed_s: float) -> bool:
        if self.steps is not None and step >= self.steps:
            return True
        return self.minutes is not None and elapsed_s >= 60.0 * self.minutes


@dataclass
class FitResult:
    step: int = 0
    tokens: int = 0
    elapsed_s: float = 0.0
    skipped_steps: int = 0
    stopped_by_signal: bool = False
    last_eval: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)


class _StopFlag:
    """SIGTERM / SIGINT → finish this step, checkpoint, exit. A second signal exits at once."""

    def __init__(self) -> None:
        self.requested = False
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _StopFlag:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise SystemExit(128 + signum)
        self.requested = True
        log(
            f"\nreceived {signal.Signals(signum).name}: finishing this step and saving a checkpoint "
            "(send it again to exit at once)"
        )

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


class _Prefetcher:
    """Builds upcoming batches in a background thread (tokens → masks) while the model trains."""

    def __init__(self, make_batch: Callable[[int], Batch], start: int, depth: int = 3) -> None:
        self._make = make_batch
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._next = start
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        i = self._next
        while not self._stop.is_set():
            try:
                item: Any = (i, self._make(i))
            except BaseException as e:  # hand the error to the training thread
                item = (i, e)
            while not self._stop.is_set():
                try:
                    self._queue.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            i += 1

    def get(self) -> Batch:
        i, item = self._queue.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def autocast_context(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if precision == "fp16":
        return torch.autocast(device.type, dtype=torch.float16)
    return contextlib.nullcontext()


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision != "auto":
        if precision == "fp16" and device.type == "cpu":
            raise UserError("train.precision=fp16 needs a GPU; use bf16 or fp32 on CPU")
        return precision
    # bf16 autocast where the hardware multiplies bf16 natively (2x per CPU step here, docs/profile.md);
    # the master weights, the optimizer and the loss stay float32.
    return "bf16" if native_bf16(device) else "fp32"


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        with contextlib.suppress(Exception):
            torch.cuda.set_rng_state_all(state["cuda"])


def fit(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    cfg: TrainConfig,
    *,
    run_dir: Path,
    budget: Budget,
    make_batch: Callable[[int], Batch],
    loss_fn: Callable[[nn.Module, Batch], torch.Tensor],
    evaluate: Callable[[nn.Module], dict[str, float]] | None,
    tokens_per_step: int,
    device: torch.device,
    resume_from: Path | None = None,
    eval_every_epoch: int | None = None,
    on_eval: Callable[[dict[str, float], int], None] | None = None,
    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
    no_sync: Callable[[], contextlib.AbstractContextManager] | None = None,
    loss_items: Callable[[Batch], int] | None = None,
    extra_state: dict[str, Any] | None = None,
) -> FitResult:
    """Train `model` until the budget is spent (or a stop signal); returns where it ended.

    make_batch(micro_step) returns CPU tensors; loss_fn(model, batch) returns the mean loss of that micro-batch.
    tokens_per_step counts the training tokens of one optimizer step (all processes), for tokens/s and budgets.
    eval_every_epoch (steps per epoch), when given, evaluates at each epoch end as well.
    reduce averages a scalar tensor across processes (distributed runs); no_sync() skips gradient synchronisation
    on the micro-batches before the last (by default masklm.dist.no_sync(model): DDP's or FSDP2's).
    loss_items(batch), when given, counts what loss_fn averages over (e.g. masked tokens): each micro-batch's
    loss is then weighted by its share of the items of the whole step on all processes, so the step's loss is
    the mean over all of them and any split of the global batch into processes × micro-batches × accumulation
    trains the same. Without it each micro-batch's mean loss weighs 1 / grad_accum.
    extra_state is saved with every checkpoint's trainer state (e.g. the global batch).
    """
    precision = resolve_precision(cfg.precision, device)
    accum = cfg.grad_accum
    if no_sync is None:
        no_sync = dist.no_sync(model)
    res = FitResult()
    window: list[float] = [0.0, 0]  # train-loss sum and steps since the last log line (restored on resume)
    metrics_path = run_dir / "metrics.jsonl"
    ckpt_dir = run_dir / "checkpoints"
    if resume_from is None and dist.world_size() > 1:
        torch.manual_seed(_process_seed(cfg.seed, dist.rank(), 0))  # each process its own dropout masks
    if resume_from is not None:
        state = ckpt.load_checkpoint(resume_from, _unwrap(model), optimizer)  # every process
        res.step, res.tokens = int(state["step"]), int(state["tokens"])
        res.elapsed_s, res.skipped_steps = float(state["elapsed_s"]), int(state.get("skipped_steps", 0))
        res.last_eval = dict(state.get("last_eval", {}))
        window = list(state.get("log_window", window))
        by_rank = state.get("rng_by_rank")
        if by_rank is not None and len(by_rank) == dist.world_size():
            set_rng_state(by_rank[dist.rank()])
        else:
            set_rng_state(state["rng"])
            if dist.world_size() > 1:  # another number of processes: fresh per-process streams
                torch.manual_seed(_process_seed(cfg.seed, dist.rank(), res.step))
        log(f"resumed from {resume_from} at step {res.step} ({res.tokens:,} tokens)")

    def trainer_state() -> dict[str, Any]:
        return {
            "step": res.step,
            "tokens": res.tokens,
            "elapsed_s": res.elapsed_s,
            "skipped_steps": res.skipped_steps,
            "last_eval": {k: float(v) for k, v in res.last_eval.items()},
            "rng": rng_state(),
            **({"rng_by_rank": dist.all_gather_object(rng_state())} if dist.world_size() > 1 else {}),
            # every process calls save(): the window's loss is averaged over processes like a log line's
            "log_window": [float(reduce(loss_sum) if reduce is not None else loss_sum), n_loss],
            **(extra_state or {}),
        }

    def save() -> None:  # every process: rank 0 alone writes, or all write their shards (FSDP)
        ckpt.save(ckpt_dir, res.step, _unwrap(model), optimizer, trainer_state(), cfg.keep_last)

    def write_metrics(record: dict[str, Any]) -> None:
        res.history.append(record)
        if rank() == 0:
            with open(metrics_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")

    def run_eval() -> None:
        if evaluate is None:
            return
        model.eval()
        with torch.no_grad(), autocast_context(device, precision):
            metrics = evaluate(model)
        model.train()
        res.last_eval = metrics
        write_metrics({"step": res.step, "tokens": res.tokens, "split": "val", **metrics})
        log("  eval @ step {}: {}".format(res.step, ", ".join(f"{k} {v:.4g}" for k, v in metrics.items())))
        if on_eval is not None:
            on_eval(metrics, res.step)

    model.train()
    prefetch = _Prefetcher(make_batch, start=res.step * accum)
    bar = tqdm(
        total=budget.steps,
        initial=res.step,
        disable=rank() != 0,
        unit="step",
        dynamic_ncols=True,
        desc="train",
        bar_format=None if budget.steps else "{desc}: {n} steps [{elapsed}{postfix}]",
    )
    window_tokens, window_start = 0, time.perf_counter()
    loss_sum = torch.full((), window[0], device=device)
    n_loss = int(window[1])
    try:
        with _StopFlag() as stop:
            while not budget.done(res.step, res.elapsed_s):
                t0 = time.perf_counter()
                lr = cfg.lr * lr_factor(budget.progress(res.step + 1, res.elapsed_s), cfg, budget.steps)
                set_lr(optimizer, lr)
                step_loss = torch.zeros((), device=device)
                micro_batches = [prefetch.get() for _ in range(accum)]
                weights = _loss_weights(micro_batches, loss_items, reduce, device)
                for micro, cpu_batch in enumerate(micro_batches):
                    batch = {k: v.to(device, non_blocking=True) for k, v in cpu_batch.items()}
                    sync = contextlib.nullcontext() if (no_sync is None or micro == accum - 1) else no_sync()
                    with sync:
                        with autocast_context(device, precision):
                            loss = loss_fn(model, batch)
                            loss = loss / accum if weights is None else loss * weights[micro]
                        loss.backward()
                    step_loss += loss.detach()
                grad_norm = dist.clip_grad_norm_(model, cfg.clip_norm)  # the global norm, on every process
                # One small all-reduce: skip if any process saw a non-finite value, stop if any was signalled,
                # so every process takes the same branch.
                agreed = dist.all_reduce_max(
                    torch.tensor(
                        [
                            float(not (torch.isfinite(step_loss) and torch.isfinite(grad_norm))),
                            float(stop.requested),
                        ],
                        dtype=torch.float64,
                        device=device,
                    )
                ).tolist()
                finite, stop_now = agreed[0] == 0.0, agreed[1] > 0.0
                if finite:
                    optimizer.step()
                else:
                    res.skipped_steps += 1
                    if cfg.nonfinite == "stop":
                        optimizer.zero_grad(set_to_none=True)
                        raise UserError(
                            f"loss or gradients became non-finite at step {res.step + 1}; the last good "
                            f"checkpoint is in {ckpt_dir}. Lower train.lr or use train.precision=fp32"
                        )
                    log(
                        f"step {res.step + 1}: non-finite loss or gradients, step skipped ({res.skipped_steps} so far)"
                    )
                optimizer.zero_grad(set_to_none=True)
                res.step += 1
                res.tokens += tokens_per_step
                res.elapsed_s += time.perf_counter() - t0
                if budget.minutes is not None:  # the slowest clock, so every process stops at the same step
                    res.elapsed_s = float(
                        dist.all_reduce_max(torch.tensor(res.elapsed_s, dtype=torch.float64, device=device))
                    )
                window_tokens += tokens_per_step
                if finite:
                    loss_sum += step_loss
                    n_loss += 1

                if res.step % cfg.log_every == 0 or budget.done(res.step, res.elapsed_s):
                    mean_loss = loss_sum / max(1, n_loss)
                    if reduce is not None:
                        mean_loss = reduce(mean_loss)
                    now = time.perf_counter()
                    tps = window_tokens / max(1e-9, now - window_start)
                    record = {
                        "step": res.step,
                        "tokens": res.tokens,
                        "split": "train",
                        "loss": float(mean_loss),
                        "lr": lr,
                        "grad_norm": float(grad_norm),
                        "tokens_per_s": tps,
                        "elapsed_s": res.elapsed_s,
                    }
                    write_metrics(record)
                    bar.set_postfix(loss=f"{record['loss']:.3f}", tok_s=f"{tps:,.0f}", refresh=False)
                    loss_sum.zero_()
                    n_loss, window_tokens, window_start = 0, 0, now
                bar.update(1)

                at_end = budget.done(res.step, res.elapsed_s)
                epoch_end = eval_every_epoch is not None and res.step % eval_every_epoch == 0
                if not at_end and ((cfg.eval_every and res.step % cfg.eval_every == 0) or epoch_end):
                    run_eval()
                if not at_end and cfg.checkpoint_every and res.step % cfg.checkpoint_every == 0:
                    save()
                if stop_now:
                    res.stopped_by_signal = True
                    save()
                    log(
                        f"stopped at step {res.step}; checkpoint saved. Continue with the same command plus --resume"
                    )
                    return res
            run_eval()
            save()
    finally:
        prefetch.close()
        bar.close()
    return res


def _process_seed(seed: int, process: int, step: int) -> int:
    """The RNG seed (dropout) of one process of a multi-process run, from the run's seed."""
    digest = hashlib.blake2b(f"process:{seed}:{process}:{step}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def _loss_weights(
    micro_batches: list[Batch],
    loss_items: Callable[[Batch], int] | None,
    reduce: Callable[[torch.Tensor], torch.Tensor] | None,
    device: torch.device,
) -> list[float] | None:
    """Each micro-batch's share of the items of the whole step on all processes (None: 1 / grad_accum each).

    Data-parallel gradients are averaged over processes, so a share is count / (total / world size), which is
    count / mean(per-process total).
    """
    if loss_items is None:
        return None
    counts = [float(loss_items(b)) for b in micro_batches]
    total = torch.tensor(sum(counts), dtype=torch.float64, device=device)
    mean_total = float(reduce(total)) if reduce is not None else float(total)
    return [c / max(mean_total, 1e-12) for c in counts]


def _unwrap(model: nn.Module) -> nn.Module:
    """The plain module under DDP / torch.compile wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        else:
            return model


def perplexity(loss: float) -> float:
    return math.exp(min(loss, 50.0))


def write_run_results(run_dir: Path, summary: dict[str, Any]) -> None:
    """The end of a run (rank 0): summary.json, then curves.png from metrics.jsonl. A failed plot never loses
    the finished run."""
    atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    try:
        from masklm.plots import plot_curves

        plot_curves(run_dir / "metrics.jsonl", run_dir / "curves.png")
    except Exception as e:
        log(f"note: curves.png not written ({type(e).__name__}: {e})")
